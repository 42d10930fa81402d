"""Preferences as JSON: the canonical document, validation naming the exact field, and the
merge patch rules."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.core.notify.decisions import Preferences, WorkflowPreference
from tidings.core.notify.preferences import (
    MAX_QUIET_HOURS,
    MAX_WORKFLOWS,
    merge_preferences,
    preferences_from_json,
    preferences_to_json,
)
from tidings.core.notify.schedule import QuietHours
from tidings.core.notify.types import Channel
from tidings.errors import InvalidInput

DOC: dict[str, Any] = {
    "enabled": True,
    "channels": {"sms": False, "email": True},
    "workflows": {
        "comment.created": {"enabled": None, "channels": {"sms": True, "push": False}},
        "digest:weekly": {"enabled": False},
    },
    "commercial_consent": True,
    "quiet_hours": [
        {"start": "22:00", "end": "07:00", "days": ["fri", "mon"]},
        {"start": "12:30", "end": "24:00", "channels": ["email"]},
    ],
}


def test_parses_every_field() -> None:
    assert preferences_from_json(DOC) == Preferences(
        enabled=True,
        channels={Channel.SMS: False, Channel.EMAIL: True},
        workflows={
            "comment.created": WorkflowPreference(None, {Channel.SMS: True, Channel.PUSH: False}),
            "digest:weekly": WorkflowPreference(False),
        },
        commercial_consent=True,
        quiet_hours=(
            QuietHours(22 * 60, 7 * 60, frozenset({0, 4})),
            QuietHours(12 * 60 + 30, 1440, channels=frozenset({Channel.EMAIL})),
        ),
    )


def test_the_empty_document_is_the_defaults() -> None:
    assert preferences_from_json({}) == Preferences()


def test_canonical_document_spells_everything_out() -> None:
    assert preferences_to_json(preferences_from_json(DOC)) == {
        "enabled": True,
        "channels": {"email": True, "sms": False},  # in Channel order
        "workflows": {
            "comment.created": {"enabled": None, "channels": {"sms": True, "push": False}},
            "digest:weekly": {"enabled": False, "channels": {}},
        },
        "commercial_consent": True,
        "quiet_hours": [
            {
                "start": "22:00",
                "end": "07:00",
                "days": ["mon", "fri"],
                "channels": ["sms", "push", "webpush"],  # the default, written down
            },
            {
                "start": "12:30",
                "end": "24:00",
                "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                "channels": ["email"],
            },
        ],
    }
    assert preferences_to_json(Preferences()) == {
        "enabled": True,
        "channels": {},
        "workflows": {},
        "commercial_consent": False,
        "quiet_hours": [],
    }


def test_workflow_entries_that_choose_nothing_are_dropped() -> None:
    prefs = preferences_from_json({"workflows": {"a": {}, "b": {"enabled": None, "channels": {}}}})
    assert prefs.workflows == {}


channels = st.dictionaries(st.sampled_from(list(Channel)), st.booleans(), max_size=6)
quiet = st.builds(
    lambda start, length, days, chans: QuietHours(
        start, (start + length) % 1440 or 1440, frozenset(days), frozenset(chans)
    ),
    st.integers(0, 1439),
    st.integers(1, 1439),
    st.sets(st.integers(0, 6), min_size=1),
    st.sets(st.sampled_from(list(Channel)), min_size=1),
)
workflow = st.builds(WorkflowPreference, st.none() | st.booleans(), channels).filter(
    lambda w: w.enabled is not None or bool(w.channels)
)
preferences = st.builds(
    Preferences,
    st.booleans(),
    channels,
    st.dictionaries(st.from_regex(r"[a-z0-9][a-z0-9._:-]{0,20}", fullmatch=True), workflow),
    st.booleans(),
    st.lists(quiet, max_size=4).map(tuple),
)


@given(preferences)
def test_the_json_form_round_trips(prefs: Preferences) -> None:
    doc = preferences_to_json(prefs)
    assert preferences_from_json(doc) == prefs
    assert merge_preferences(prefs, {}) == prefs
    assert merge_preferences(Preferences(), doc) == prefs


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"enabled": "yes"}, "enabled"),
        ({"enabled": None}, "enabled"),
        ({"commercial_consent": 1}, "commercial_consent"),
        ({"nope": 1}, "nope"),
        ({"channels": []}, "channels"),
        ({"channels": {"fax": True}}, "channels.fax"),
        ({"channels": {"sms": "off"}}, "channels.sms"),
        ({"workflows": []}, "workflows"),
        ({"workflows": {"bad key!": {}}}, "workflows.bad key!"),
        ({"workflows": {"comment.created": True}}, "workflows.comment.created"),
        ({"workflows": {"comment.created": {"on": True}}}, "workflows.comment.created.on"),
        ({"workflows": {"comment.created": {"enabled": 0}}}, "workflows.comment.created.enabled"),
        (
            {"workflows": {"comment.created": {"channels": {"sms": None}}}},
            "workflows.comment.created.channels.sms",
        ),
        (
            {"workflows": {"comment.created": {"channels": {"fax": True}}}},
            "workflows.comment.created.channels.fax",
        ),
        ({"workflows": {"w": {"channels": ["sms"]}}}, "workflows.w.channels"),
        ({"quiet_hours": {"start": "22:00"}}, "quiet_hours"),
        ({"quiet_hours": ["22-07"]}, "quiet_hours.0"),
        ({"quiet_hours": [{"start": "25:00", "end": "07:00"}]}, "quiet_hours.0.start"),
        ({"quiet_hours": [{"end": "07:00"}]}, "quiet_hours.0.start"),
        (
            {
                "quiet_hours": [
                    {"start": "01:00", "end": "02:00"},
                    {"start": "22:00", "end": "22:00"},
                ]
            },
            "quiet_hours.1.end",
        ),
        ({"quiet_hours": [{"start": "22:00", "end": "07:00", "x": 1}]}, "quiet_hours.0.x"),
        (
            {"quiet_hours": [{"start": "22:00", "end": "07:00", "days": ["mon", "funday"]}]},
            "quiet_hours.0.days[1]",
        ),
        (
            {"quiet_hours": [{"start": "22:00", "end": "07:00", "channels": ["fax"]}]},
            "quiet_hours.0.channels[0]",
        ),
        (
            {"workflows": {f"w{i}": {"enabled": False} for i in range(MAX_WORKFLOWS + 1)}},
            "workflows",
        ),
        (
            {"quiet_hours": [{"start": "01:00", "end": "02:00"}] * (MAX_QUIET_HOURS + 1)},
            "quiet_hours",
        ),
    ],
)
def test_refusals_name_the_field(doc: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        preferences_from_json(doc)
    assert caught.value.field == field


def test_a_document_must_be_an_object() -> None:
    with pytest.raises(InvalidInput, match="JSON object"):
        preferences_from_json([])
    with pytest.raises(InvalidInput, match="JSON object"):
        merge_preferences(Preferences(), ["enabled"])


# --- merge -----------------------------------------------------------------------------------

BASE = preferences_from_json(DOC)


def test_merge_sets_one_workflow_channel_and_keeps_the_rest() -> None:
    merged = merge_preferences(
        BASE, {"workflows": {"comment.created": {"channels": {"email": False}}}}
    )
    assert merged.workflows["comment.created"] == WorkflowPreference(
        None, {Channel.SMS: True, Channel.PUSH: False, Channel.EMAIL: False}
    )
    assert merged.workflows["digest:weekly"] == BASE.workflows["digest:weekly"]
    assert (merged.channels, merged.quiet_hours) == (BASE.channels, BASE.quiet_hours)
    assert merged.commercial_consent is True


def test_merge_adds_a_new_workflow_and_a_global_channel() -> None:
    merged = merge_preferences(
        BASE, {"channels": {"push": False}, "workflows": {"new.one": {"enabled": False}}}
    )
    assert merged.channels == {Channel.SMS: False, Channel.EMAIL: True, Channel.PUSH: False}
    assert merged.workflows["new.one"] == WorkflowPreference(False)
    assert len(merged.workflows) == 3


def test_null_forgets_a_choice() -> None:
    merged = merge_preferences(
        BASE,
        {
            "channels": {"sms": None},
            "workflows": {
                "comment.created": {"channels": {"sms": None, "push": None}},
                "digest:weekly": None,
            },
            "enabled": None,
            "quiet_hours": None,
        },
    )
    assert merged == Preferences(
        enabled=True, channels={Channel.EMAIL: True}, commercial_consent=True
    )  # the emptied workflow entry is dropped


def test_lists_are_replaced_whole() -> None:
    merged = merge_preferences(BASE, {"quiet_hours": [{"start": "23:00", "end": "06:00"}]})
    assert merged.quiet_hours == (QuietHours(23 * 60, 6 * 60),)


def test_merge_errors_name_the_field_of_the_patch() -> None:
    with pytest.raises(InvalidInput) as caught:
        merge_preferences(BASE, {"workflows": {"comment.created": {"channels": {"sms": "no"}}}})
    assert caught.value.field == "workflows.comment.created.channels.sms"
    with pytest.raises(InvalidInput) as caught:
        merge_preferences(BASE, {"quiet_hours": [{"start": "7", "end": "08:00"}]})
    assert caught.value.field == "quiet_hours.0.start"
    # an unknown channel is refused where the patch removes it too
    with pytest.raises(InvalidInput) as caught:
        merge_preferences(BASE, {"channels": {"fax": None}})
    assert caught.value.field == "channels.fax"
    with pytest.raises(InvalidInput) as caught:
        merge_preferences(BASE, {"workflows": {"comment.created": {"channels": {"fax": None}}}})
    assert caught.value.field == "workflows.comment.created.channels.fax"
    assert merge_preferences(BASE, {"channels": {"sms": None}}) is not None
