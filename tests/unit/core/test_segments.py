"""Segment filters: the workflow condition language over subscriber profile fields only, and
which filters the SQL adapter states exactly."""

from __future__ import annotations

from typing import Any

import pytest

from tests.contract.test_segments import FILTERS
from tidings.adapters.sql.segments import compile_where
from tidings.core import segments as rules
from tidings.errors import InvalidInput
from tidings.ports.subscribers import Subscriber


def holds(spec: dict[str, Any], **profile: Any) -> bool:
    return rules.matches(rules.parse_filter(spec), Subscriber("u1", **profile))


def test_unset_fields_are_missing_so_exists_means_has_one() -> None:
    assert holds({"subscriber.email": {"exists": True}}, email="a@x.org")
    assert not holds({"subscriber.email": {"exists": True}}, email=None)
    assert holds({"subscriber.phone": {"exists": False}})
    assert not holds({"subscriber.locale": {"ne": "de"}})  # missing: every operator false
    assert holds({"not": {"subscriber.locale": "de"}})
    assert holds({"subscriber.data": {"exists": True}})  # custom data is always an object


def test_data_fields_compare_by_kind() -> None:
    data = {"plan": "pro", "orders": 4, "vip": True, "address": {"country": "DE"}}
    assert holds({"subscriber.data.plan": {"in": ["pro", "team"]}}, data=data)
    assert holds({"subscriber.data.orders": {"gte": 3, "lt": 5}}, data=data)
    assert not holds({"subscriber.data.orders": "4"}, data=data)
    assert not holds({"subscriber.data.vip": 1}, data=data)
    assert holds({"subscriber.data.address.country": "DE"}, data=data)
    assert holds({"subscriber.locale": "de", "subscriber.id": "u1"}, locale="de")


def test_no_filter_holds_everyone() -> None:
    assert rules.matches(None, Subscriber("u1"))


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"payload.x": 1}, "filter.payload.x"),
        ({"subscriber.plan": "pro"}, "filter.subscriber.plan"),
        ({"subscriber.email.domain": "x"}, "filter.subscriber.email.domain"),
        ({"subscriber": {"exists": True}}, "filter.subscriber"),
        ({"or": [{"subscriber.locale": "de"}, {"event.type": "x"}]}, "filter.event.type"),
        ({"subscriber.locale": {"like": "de%"}}, "filter.subscriber.locale.like"),
        ({"subscriber.data.n": {"gt": [1]}}, "filter.subscriber.data.n.gt"),
        ({"subscriber.data.n": {"exists": "yes"}}, "filter.subscriber.data.n.exists"),
        ({}, "filter"),
        ([{"subscriber.locale": "de"}], "filter"),
    ],
)
def test_bad_filters_name_the_part(spec: Any, field: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        rules.parse_filter(spec)
    assert exc.value.field == field


@pytest.mark.parametrize(("spec", "exact"), FILTERS)
def test_sql_states_exactly_the_filters_it_can(spec: dict[str, Any], exact: bool) -> None:
    """The SQL clause of a filter is exact where SQL can say it, on both dialects; the
    contract suite checks the clauses against the stores."""
    for postgres in (False, True):
        assert compile_where(rules.parse_filter(spec), postgres=postgres)[1] is exact
