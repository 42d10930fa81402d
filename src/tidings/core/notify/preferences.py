"""Subscriber preferences as JSON: the stored form, the API form, and the merge a PATCH applies.

The document (every key optional; what is left out takes its default)::

    {
      "enabled": true,                    # all notifications; default true
      "channels": {"sms": false},         # per channel, for every workflow
      "workflows": {                      # per workflow key
        "comment.created": {"enabled": null, "channels": {"email": false}}
      },
      "commercial_consent": false,        # commercial workflows need it; default false
      "quiet_hours": [
        {"start": "22:00", "end": "07:00", "days": ["mon", "tue"], "channels": ["push"]}
      ]
    }

`channels` map channel names (``in_app email sms push webpush webhook``) to booleans; a
workflow's ``enabled`` is true, false or null (no choice). Quiet hours take the format of
:func:`~tidings.core.notify.schedule.parse_quiet_hours` (``days`` default to every day,
``channels`` to push, web push and SMS). A workflow entry that chooses nothing is dropped.

Unknown keys, unknown channel names and values of the wrong type are refused with an
``InvalidInput`` whose ``field`` is the exact path, dot-separated, with workflow keys and list
indexes as segments: ``workflows.comment.created.channels.sms``, ``quiet_hours.0.start``.

:func:`preferences_to_json` writes the canonical document: every key present, channels in
the order of :class:`Channel`, workflows sorted by key, quiet hours with their days and
channels spelled out (so stored rows never change meaning if a default does), and
``preferences_from_json(preferences_to_json(p)) == p``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from tidings.core.notify.decisions import Preferences, WorkflowPreference
from tidings.core.notify.fields import channel, check_bool, check_known
from tidings.core.notify.model import KEY_RE, KEY_RULE
from tidings.core.notify.schedule import DAY_NAMES, QuietHours, parse_quiet_hours
from tidings.core.notify.types import Channel
from tidings.errors import InvalidInput

MAX_WORKFLOWS: Final = 500
MAX_QUIET_HOURS: Final = 20
_TOP: Final = frozenset({"enabled", "channels", "workflows", "commercial_consent", "quiet_hours"})
_WORKFLOW: Final = frozenset({"enabled", "channels"})


def preferences_to_json(prefs: Preferences) -> dict[str, Any]:
    """The canonical JSON document of ``prefs``."""
    return {
        "enabled": prefs.enabled,
        "channels": _channels_to_json(prefs.channels),
        "workflows": {
            key: {"enabled": wp.enabled, "channels": _channels_to_json(wp.channels)}
            for key, wp in sorted(prefs.workflows.items())
        },
        "commercial_consent": prefs.commercial_consent,
        "quiet_hours": [quiet_hours_to_json(q) for q in prefs.quiet_hours],
    }


def quiet_hours_to_json(q: QuietHours) -> dict[str, Any]:
    return {
        "start": _clock(q.start),
        "end": _clock(q.end),
        "days": [DAY_NAMES[d] for d in sorted(q.days)],
        "channels": [c.value for c in Channel if c in q.channels],
    }


def preferences_from_json(value: Any) -> Preferences:
    """Validated :class:`Preferences` from a JSON document (see the module docstring)."""
    if not isinstance(value, Mapping):
        raise InvalidInput("preferences must be a JSON object")
    check_known(value, _TOP, "")
    workflows = value.get("workflows", {})
    if not isinstance(workflows, Mapping):
        raise InvalidInput("must be an object of workflow keys", field="workflows")
    if len(workflows) > MAX_WORKFLOWS:
        raise InvalidInput(f"at most {MAX_WORKFLOWS} workflows", field="workflows")
    parsed: dict[str, WorkflowPreference] = {}
    for key, spec in workflows.items():
        wp = _workflow(key, spec)
        if wp.enabled is not None or wp.channels:
            parsed[key] = wp
    quiet = value.get("quiet_hours", [])
    if not isinstance(quiet, list):
        raise InvalidInput("must be a list", field="quiet_hours")
    if len(quiet) > MAX_QUIET_HOURS:
        raise InvalidInput(f"at most {MAX_QUIET_HOURS} quiet periods", field="quiet_hours")
    return Preferences(
        enabled=check_bool(value.get("enabled", True), "enabled"),
        channels=_channels(value.get("channels", {}), "channels"),
        workflows=parsed,
        commercial_consent=check_bool(value.get("commercial_consent", False), "commercial_consent"),
        quiet_hours=tuple(parse_quiet_hours(q, f"quiet_hours.{i}") for i, q in enumerate(quiet)),
    )


def merge_preferences(prefs: Preferences, patch: Any) -> Preferences:
    """``prefs`` changed by ``patch``, a JSON Merge Patch (RFC 7396) of the document:

    - objects merge key by key, recursively: ``channels`` per channel, ``workflows`` per
      workflow key, and within a workflow ``enabled`` and ``channels`` per channel, so
      ``{"workflows": {"comment.created": {"channels": {"sms": false}}}}`` changes that one
      switch and nothing else;
    - ``null`` removes a key, which then takes its default: a channel or workflow choice is
      forgotten (the workflow's default applies again), ``"enabled": null`` is on again,
      ``"quiet_hours": null`` clears them;
    - anything else replaces, lists included: ``quiet_hours`` given is the whole new list.

    The result is validated as a whole, so errors name the field as a PUT would.
    """
    if not isinstance(patch, Mapping):
        raise InvalidInput("a preferences patch must be a JSON object")
    _patched_channels(patch.get("channels"), "channels")
    workflows = patch.get("workflows")
    if isinstance(workflows, Mapping):
        for key, spec in workflows.items():
            if isinstance(spec, Mapping):
                _patched_channels(spec.get("channels"), f"workflows.{key}.channels")
    return preferences_from_json(_merge_patch(preferences_to_json(prefs), patch))


def _patched_channels(value: Any, where: str) -> None:
    """A patch's channel names are channels even where it removes them (`"fax": null`
    would otherwise remove nothing and pass)."""
    if isinstance(value, Mapping):
        for name in value:
            channel(name, f"{where}.{name}")


def _merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, Mapping):
        return patch
    out = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge_patch(out.get(key), value)
    return out


def _workflow(key: Any, spec: Any) -> WorkflowPreference:
    where = f"workflows.{key}"
    if not isinstance(key, str) or not KEY_RE.fullmatch(key):
        raise InvalidInput(KEY_RULE, field=where)
    if not isinstance(spec, Mapping):
        raise InvalidInput("must be an object with enabled and/or channels", field=where)
    check_known(spec, _WORKFLOW, where)
    enabled = spec.get("enabled")
    if enabled is not None and not isinstance(enabled, bool):
        raise InvalidInput("must be true, false or null", field=f"{where}.enabled")
    return WorkflowPreference(enabled, _channels(spec.get("channels", {}), f"{where}.channels"))


def _channels(value: Any, where: str) -> dict[Channel, bool]:
    if not isinstance(value, Mapping):
        raise InvalidInput("must be an object of channel names to true or false", field=where)
    out: dict[Channel, bool] = {}
    for name, on in value.items():
        out[channel(name, f"{where}.{name}")] = check_bool(on, f"{where}.{name}")
    return out


def _channels_to_json(channels: Mapping[Channel, bool]) -> dict[str, bool]:
    return {c.value: channels[c] for c in Channel if c in channels}


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"
