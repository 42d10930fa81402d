"""`record`: immutable for the type checker, a plain slotted dataclass at run time."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest
from mypy import api as mypy_api

from tidings.records import record


@record
class Point:
    x: int
    y: int = 0
    tags: tuple[str, ...] = dataclasses.field(default=())


def test_fields_defaults_and_equality() -> None:
    p = Point(1)
    assert (p.x, p.y, p.tags) == (1, 0, ())
    assert p == Point(1, 0, ())
    assert p != Point(1, 2)
    assert dataclasses.replace(p, y=5) == Point(1, 5)
    assert [f.name for f in dataclasses.fields(Point)] == ["x", "y", "tags"]


def test_hash_follows_the_fields_as_a_frozen_dataclass_does() -> None:
    assert hash(Point(1, 2)) == hash(Point(1, 2))
    assert len({Point(1, 2), Point(1, 2), Point(2, 1)}) == 2
    assert {Point(3): "a"}[Point(3)] == "a"


def test_slotted() -> None:
    assert not hasattr(Point(1), "__dict__")
    with pytest.raises(AttributeError):
        Point(1).z = 3  # type: ignore[attr-defined]


def test_the_type_checker_rejects_assignment(tmp_path: Path) -> None:
    source = tmp_path / "uses_record.py"
    source.write_text(
        textwrap.dedent(
            """
            from tidings.records import record

            @record
            class Item:
                name: str

            item = Item("a")
            item.name = "b"
            """
        )
    )
    out, _, status = mypy_api.run(
        ["--strict", "--no-incremental", "--cache-dir=/dev/null", str(source)]
    )
    assert status == 1
    assert 'Property "name" defined in "Item" is read-only' in out
