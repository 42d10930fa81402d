from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.core.notify.conditions import (
    TRUE,
    All,
    AnyOf,
    Compare,
    Not,
    Op,
    evaluate,
    parse_condition,
    step_references,
)
from tidings.errors import InvalidInput

CTX: dict[str, Any] = {
    "payload": {
        "amount": 150,
        "price": 9.5,
        "kind": "reply",
        "tags": ["urgent", "billing"],
        "items": [{"id": "a"}, {"id": "b"}],
        "nothing": None,
        "flag": True,
        "meta": {"region": "eu"},
    },
    "subscriber": {"id": "u1", "data": {"plan": "pro"}, "email": None},
    "actor": "u2",
    "event": {"id": "e1", "type": "comment.created"},
    "steps": {"inapp": {"seen": False, "sent": True, "status": "delivered"}},
}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"payload.amount": {"gt": 100}}, True),
        ({"payload.amount": {"gt": 150}}, False),
        ({"payload.amount": {"gte": 150}}, True),
        ({"payload.amount": {"lt": 200, "gt": 100}}, True),
        ({"payload.amount": {"lte": 149}}, False),
        ({"payload.price": {"lt": 10}}, True),
        ({"payload.kind": "reply"}, True),
        ({"payload.kind": {"ne": "like"}}, True),
        ({"payload.kind": {"in": ["reply", "mention"]}}, True),
        ({"payload.kind": {"in": ["like"]}}, False),
        ({"payload.kind": {"contains": "epl"}}, True),
        ({"payload.tags": {"contains": "urgent"}}, True),
        ({"payload.tags": {"contains": "spam"}}, False),
        ({"payload.meta": {"contains": "region"}}, True),
        ({"payload.meta": {"eq": {"region": "eu"}}}, True),
        ({"payload.tags": ["urgent", "billing"]}, True),
        ({"payload.items.1.id": "b"}, True),
        ({"payload.items.5.id": "b"}, False),
        ({"payload.nothing": None}, True),
        ({"payload.nothing": {"exists": True}}, True),
        ({"payload.absent": {"exists": False}}, True),
        ({"payload.absent": {"exists": True}}, False),
        ({"subscriber.data.plan": {"in": ["pro", "team"]}}, True),
        ({"steps.inapp.seen": False}, True),
        ({"not": {"steps.inapp.seen": True}}, True),
        ({"and": [{"payload.kind": "reply"}, {"actor": "u2"}]}, True),
        ({"or": [{"payload.kind": "like"}, {"event.type": "comment.created"}]}, True),
        ({"payload.kind": "reply", "actor": "nobody"}, False),  # several keys: and
    ],
)
def test_evaluate(spec: dict[str, Any], expected: bool) -> None:
    assert evaluate(parse_condition(spec), CTX) is expected


@pytest.mark.parametrize(
    "spec",
    [
        {"payload.absent": {"eq": 1}},
        {"payload.absent": {"ne": 1}},  # missing: every operator false...
        {"payload.absent": {"gt": 1}},
        {"payload.absent": {"in": [1]}},
        {"payload.absent": {"contains": "x"}},
        {"payload.kind": {"gt": 5}},  # string vs number
        {"payload.amount": {"gt": "100"}},
        {"payload.amount": {"ne": "150"}},  # different kinds are not comparable
        {"payload.nothing": {"lt": 3}},
        {"payload.flag": 1},  # booleans are not numbers
        {"payload.flag": {"gt": 0}},
        {"payload.amount.deeper": 1},
        {"payload.tags.x": "urgent"},
        {"subscriber.email": {"contains": "@"}},
    ],
)
def test_total_false(spec: dict[str, Any]) -> None:
    assert evaluate(parse_condition(spec), CTX) is False


def test_not_of_missing_is_true() -> None:
    assert evaluate(parse_condition({"not": {"payload.absent": {"eq": 1}}}), CTX) is True


def test_empty_all_is_true() -> None:
    assert evaluate(TRUE, {}) is True


def test_parse_structure() -> None:
    cond = parse_condition(
        {"or": [{"payload.a": {"gt": 1, "lt": 3}}, {"not": {"steps.push.read": True}}]}
    )
    assert cond == AnyOf(
        (
            All((Compare(("payload", "a"), Op.GT, 1), Compare(("payload", "a"), Op.LT, 3))),
            Not(Compare(("steps", "push", "read"), Op.EQ, True)),
        )
    )
    assert step_references(cond) == {"push"}


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ("payload.x == 1", "if"),
        ({}, "if"),
        ({"payloads.x": 1}, "if.payloads.x"),
        ({"payload.x": {"like": 1}}, "if.payload.x.like"),
        ({"payload.x": {"in": "abc"}}, "if.payload.x.in"),
        ({"payload.x": {"exists": "yes"}}, "if.payload.x.exists"),
        ({"payload.x": {"gt": [1]}}, "if.payload.x.gt"),
        ({"payload.x": {"eq": float("nan")}}, "if.payload.x.eq"),
        ({"and": []}, "if.and"),
        ({"and": [{"payload.x": 1}, "nope"]}, "if.and[1]"),
        ({"or": {"payload.x": 1}}, "if.or"),
        ({"not": {"payload.a..b": 1}}, "if.not.payload.a..b"),
        ({"payload.x": {"eq": object()}}, "if.payload.x.eq"),
    ],
)
def test_parse_errors_name_the_path(spec: Any, field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_condition(spec, "if")
    assert info.value.field == field


def test_depth_is_bounded() -> None:
    spec: dict[str, Any] = {"payload.x": 1}
    for _ in range(40):
        spec = {"not": spec}
    with pytest.raises(InvalidInput, match="nested deeper"):
        parse_condition(spec)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(["a", "b", "0", "x"]), children, max_size=3)
    ),
    max_leaves=12,
)
paths = st.lists(st.sampled_from(["a", "b", "0", "1", "x"]), min_size=1, max_size=4).map(
    lambda segs: "payload." + ".".join(segs)
)
literals = st.none() | st.booleans() | st.integers() | st.text(max_size=3)
comparisons = (
    st.builds(
        lambda path, op, value: {path: {op: value}},
        paths,
        st.sampled_from(["eq", "ne", "gt", "gte", "lt", "lte", "contains"]),
        st.integers() | st.text(max_size=3),
    )
    | st.builds(lambda path, v: {path: {"in": v}}, paths, st.lists(literals, max_size=3))
    | st.builds(lambda path, b: {path: {"exists": b}}, paths, st.booleans())
)
conditions = st.recursive(
    comparisons,
    lambda children: (
        st.builds(lambda c: {"not": c}, children)
        | st.builds(lambda cs: {"and": cs}, st.lists(children, min_size=1, max_size=3))
        | st.builds(lambda cs: {"or": cs}, st.lists(children, min_size=1, max_size=3))
    ),
    max_leaves=8,
)


@given(conditions, json_values)
def test_evaluation_never_raises(spec: dict[str, Any], payload: Any) -> None:
    result = evaluate(parse_condition(spec), {"payload": payload})
    assert isinstance(result, bool)


@given(conditions, json_values)
def test_not_inverts(spec: dict[str, Any], payload: Any) -> None:
    ctx = {"payload": payload}
    assert evaluate(parse_condition({"not": spec}), ctx) is not evaluate(parse_condition(spec), ctx)
