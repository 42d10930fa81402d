"""Which channel commands a client may issue, from the channel's namespace options."""

from __future__ import annotations

from tidings.core.channels import ChannelError, ChannelResolver, NamespaceOptions, UnknownChannel
from tidings.core.protocol.codes import ErrorCode
from tidings.core.protocol.commands import (
    HistoryCommand,
    PresenceCommand,
    PresenceStatsCommand,
    PublishCommand,
    SubscribeCommand,
)

ChannelCommand = (
    SubscribeCommand | PublishCommand | PresenceCommand | PresenceStatsCommand | HistoryCommand
)


def authorize(
    channels: ChannelResolver, cmd: ChannelCommand, user: str
) -> NamespaceOptions | ErrorCode:
    """The channel's options if `user` may run `cmd`, else the error to reply with.

    - invalid channel name: 107 bad request; namespace not configured: 102 unknown channel;
    - subscribe: a user-limited channel (`name#u1,u2`, if the namespace allows them) admits
      only the listed users; a private channel (namespace `private` or a `$` prefix) needs a
      subscription token, which the I/O layer then verifies; 103 otherwise;
    - publish needs `allow_publish_for_client` (103);
    - presence and presence_stats need `presence` (108) and `allow_presence_for_client` (103);
    - history needs history configured (108) and `allow_history_for_client` (103).
    """
    try:
        name = channels.parse(cmd.channel)
        opts = channels.options_for(name)
    except UnknownChannel:
        return ErrorCode.UNKNOWN_CHANNEL
    except ChannelError:
        return ErrorCode.BAD_REQUEST
    match cmd:
        case SubscribeCommand():
            if name.users is not None and opts.allow_user_limited:
                allowed = user in name.users
            else:
                allowed = bool(cmd.token) or not (opts.private or name.private)
        case PublishCommand():
            allowed = opts.allow_publish_for_client
        case PresenceCommand() | PresenceStatsCommand():
            if not opts.presence:
                return ErrorCode.NOT_AVAILABLE
            allowed = opts.allow_presence_for_client
        case HistoryCommand():
            if not opts.history_enabled:
                return ErrorCode.NOT_AVAILABLE
            allowed = opts.allow_history_for_client
    return opts if allowed else ErrorCode.PERMISSION_DENIED
