"""Test-send: render one template version for a sample payload and hand that one message to
a real destination, so its authors see it where it will land.

This lives beside `TemplateService` rather than in it: the template service manages versions
and renders, with nothing but its store behind it, and the orchestrator depends on it. A
test-send needs the delivery side as well (the provider registry, webhook endpoints, the
inbox, the subscriber directory, the From address), which would make template management
depend on every channel. Here the delivery side is used through its public services only.

What a test-send does, in order:

1. resolves the version (the given one, a draft included; default the published one), so an
   unknown template or version is `NotFound`;
2. picks the delivery channel: the template's own, or `webhook` for any template (the
   rendered fields go to a webhook endpoint the way a webhook step would carry them), or
   `webpush` for a push template;
3. refuses with `InvalidInput(field="channel")` when no provider serves that channel (SMS,
   push and Web Push have none yet; email has one only when SMTP is configured), and with
   `InvalidInput(field="to")` when the destination is wrong for it (an email address, a
   webhook endpoint id, a subscriber id);
4. renders through `TemplateService.render`, exactly as the preview does; a payload that
   breaks the variable contract, or a result that breaks the channel's rules, is the
   preview's `RenderError`/`InvalidInput`, naming the field;
5. sends one message, marked as a test: an email's subject starts with ``[Test] `` and it
   carries ``X-Tidings-Test: 1``; a webhook's data has ``"test": true`` (event type
   ``template.test``); an in-app item's title starts with ``[Test] `` and its data has
   ``"test": true``.

A destination that refuses (an SMTP 550, a webhook 500, an open circuit, a disabled
endpoint) is not an error: the result carries the failure class and the reason.

The sample subscriber context is the one given, as in the preview; it is never loaded from
the destination subscriber. A webhook test-send goes straight to the endpoint (its
event-type filter does not apply: it was named) and does not count toward the endpoint's
failure streak, so probing a broken endpoint cannot hasten its disabling; a 410 Gone still
disables it, as the receiver asked.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from tidings.core import subscribers as subscriber_rules
from tidings.core.delivery.email import address
from tidings.core.delivery.messages import (
    DeliveryChannel,
    DeliveryResult,
    EmailMessage,
)
from tidings.core.retry import FailureClass
from tidings.core.templates import Channel, Rendered
from tidings.errors import InvalidInput, NotFound
from tidings.ports.clock import Clock
from tidings.ports.providers import WebhookEndpoint
from tidings.ports.subscribers import SubscriberStore
from tidings.records import record
from tidings.services.inbox import InboxService
from tidings.services.providers import ProviderRegistry, WebhookService
from tidings.services.templates import TemplateService

TEST_PREFIX = "[Test] "
TEST_HEADER = "X-Tidings-Test"
WEBHOOK_EVENT_TYPE = "template.test"

# The channels a template of each channel can be test-sent on.
SEND_CHANNELS: dict[Channel, tuple[str, ...]] = {
    Channel.EMAIL: ("email", "webhook"),
    Channel.SMS: ("sms", "webhook"),
    Channel.PUSH: ("push", "webpush", "webhook"),
    Channel.IN_APP: ("in_app", "webhook"),
}
# The send channels served by a provider in the registry (in-app goes to the inbox).
_PROVIDED = {"email": DeliveryChannel.EMAIL, "webhook": DeliveryChannel.WEBHOOK}


@record
class TemplateTestResult:
    """One test-send: what was rendered (before the test mark), where it went and what the
    destination answered. `provider` is `smtp`, `webhook` or `inbox`."""

    rendered: Rendered
    channel: str
    to: str
    provider: str
    result: DeliveryResult

    @property
    def sent(self) -> bool:
        return self.result.delivered


class TemplateTestSender:
    def __init__(
        self,
        templates: TemplateService,
        providers: ProviderRegistry,
        webhooks: WebhookService,
        inbox: InboxService,
        subscribers: SubscriberStore,
        clock: Clock,
        *,
        sender: str,
    ) -> None:
        self.templates = templates
        self.providers = providers
        self.webhooks = webhooks
        self.inbox = inbox
        self.subscribers = subscribers
        self.clock = clock
        self.sender = sender

    async def send(
        self,
        template_id: str,
        *,
        to: str,
        payload: Mapping[str, Any],
        version: int | None = None,
        locale: str | None = None,
        timezone: str = "UTC",
        variant: str | None = None,
        subscriber: Mapping[str, Any] | None = None,
        channel: str | None = None,
    ) -> TemplateTestResult:
        """Render `template_id` (version `version`, default the published one) and send it
        to `to` on `channel` (default the template's). Raises `NotFound` for an unknown
        template or version and `InvalidInput` naming the field for anything it cannot send;
        a refusal by the destination is a result with its failure."""
        core = await self.templates.resolve(template_id, version)
        send_on = self._channel(core.channel, channel)
        provider = "inbox"
        if send_on != "in_app":
            delivery = _PROVIDED.get(send_on)
            found = None if delivery is None else self.providers.get(delivery)
            if found is None:
                hint = " (set smtp.host)" if send_on == "email" else ""
                raise InvalidInput(
                    f"no provider configured for channel {send_on}{hint}", field="channel"
                )
            provider = found.name
        endpoint: WebhookEndpoint | None = None
        if send_on == "email":
            address(to, "to")
        elif send_on == "webhook":
            endpoint = await self._endpoint(to)
        else:
            await self._check_subscriber(to)
        rendered = self.templates.render(
            core, payload, locale=locale, timezone=timezone, variant=variant, subscriber=subscriber
        )
        if endpoint is not None:
            result = await self._webhook(rendered, endpoint, payload)
        elif send_on == "email":
            result = await self._email(rendered, to)
        else:
            result = await self._in_app(rendered, to)
        return TemplateTestResult(rendered, send_on, to, provider, result)

    @staticmethod
    def _channel(template_channel: Channel, asked: str | None) -> str:
        allowed = SEND_CHANNELS[template_channel]
        if asked is None:
            return template_channel.value
        if asked not in allowed:
            raise InvalidInput(
                f"a {template_channel.value} template is sent on {', '.join(allowed)}",
                field="channel",
            )
        return asked

    async def _check_subscriber(self, to: str) -> None:
        subscriber_rules.subscriber_id(to, field="to")
        try:
            await self.subscribers.get(to)
        except NotFound:
            raise InvalidInput(f"no subscriber {to!r}", field="to") from None

    async def _endpoint(self, endpoint_id: str) -> WebhookEndpoint:
        try:
            return await self.webhooks.get(endpoint_id)
        except NotFound:
            raise InvalidInput(f"no webhook endpoint {endpoint_id!r}", field="to") from None

    async def _email(self, rendered: Rendered, to: str) -> DeliveryResult:
        fields = rendered.fields
        return await self.providers.send(
            EmailMessage(
                sender=self.sender,
                to=to,
                subject=TEST_PREFIX + fields.get("subject", ""),
                text=fields.get("text", ""),
                html=fields.get("html"),
                headers={
                    TEST_HEADER: "1",
                    "X-Tidings-Template": f"{rendered.template}@{rendered.version}",
                },
            )
        )

    async def _webhook(
        self, rendered: Rendered, endpoint: WebhookEndpoint, payload: Mapping[str, Any]
    ) -> DeliveryResult:
        if not endpoint.enabled:
            return DeliveryResult.failed(
                FailureClass.POLICY,
                f"endpoint disabled: {endpoint.disabled_reason}",
                attempted=False,
            )
        data = {
            "test": True,
            "template": rendered.template,
            "version": rendered.version,
            "channel": rendered.channel.value,
            "locale": rendered.locale,
            "variant": rendered.variant,
            "fields": dict(rendered.fields),
            "payload": dict(payload),
        }
        result = await self.providers.send(
            self.webhooks.message(
                endpoint,
                WEBHOOK_EVENT_TYPE,
                data,
                message_id=f"test_{uuid.uuid4().hex}",
                occurred_at=self.clock.now(),
            )
        )
        if result.disable:
            await self.webhooks.disable(endpoint.id, result.reason)
        return result

    async def _in_app(self, rendered: Rendered, subscriber: str) -> DeliveryResult:
        fields = rendered.fields
        item, _ = await self.inbox.add(
            subscriber,
            title=TEST_PREFIX + (fields.get("title") or rendered.template),
            body=fields.get("body", ""),
            action_url=fields.get("action_url") or None,
            data={"test": True, "template": rendered.template, "version": rendered.version},
        )
        return DeliveryResult.ok(item.id)
