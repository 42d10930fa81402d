"""A small, safe condition language over an event's payload, the subscriber and earlier steps.

Conditions are data, never code: nothing is evaluated with ``eval`` and evaluation cannot
raise. The written form is a mapping (YAML/JSON):

``{"payload.amount": {"gt": 100}}``
    a field path and one or more operators, all of which must hold;
``{"subscriber.data.plan": "pro"}``
    a literal instead of an operator mapping is shorthand for ``eq``;
``{"and": [...]}``, ``{"or": [...]}``, ``{"not": {...}}``
    logic; a mapping with several keys is the ``and`` of its entries.

Operators: ``eq ne gt gte lt lte in contains exists``. Paths are dot separated and start at
one of the roots in :data:`ROOTS`; a numeric segment indexes a list (``payload.items.0.id``).

Evaluation is total: a missing field makes every operator false except ``exists: false``;
comparing values of different kinds (a number with a string, anything with null) is false;
``gt``/``gte``/``lt``/``lte`` compare numbers with numbers and strings with strings only.
Booleans are not numbers. ``not`` inverts whatever its operand gives, so
``{"not": {"payload.x": {"eq": 1}}}`` is true when ``payload.x`` is missing.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from tidings.errors import InvalidInput
from tidings.records import record

ROOTS: Final = frozenset({"payload", "subscriber", "actor", "event", "steps", "digest"})
MAX_DEPTH: Final = 32
_SEGMENT_RE = re.compile(r"[A-Za-z0-9_$@-]+")


class Op(enum.StrEnum):
    EQ = "eq"
    NE = "ne"
    GT = "gt"
    GTE = "gte"
    LT = "lt"
    LTE = "lte"
    IN = "in"
    CONTAINS = "contains"
    EXISTS = "exists"


_LOGIC = frozenset({"and", "or", "not"})


@record
class Compare:
    path: tuple[str, ...]
    op: Op
    value: Any


@record
class All:
    items: tuple[Condition, ...]


@record
class AnyOf:
    items: tuple[Condition, ...]


@record
class Not:
    item: Condition


Condition = Compare | All | AnyOf | Not

TRUE: Final[Condition] = All(())


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()


def parse_condition(spec: Any, field: str = "if") -> Condition:
    """Parse the written form; :class:`InvalidInput` names the exact path of a bad part."""
    return _parse(spec, field, 0)


def _parse(spec: Any, field: str, depth: int) -> Condition:
    if depth > MAX_DEPTH:
        raise InvalidInput(f"nested deeper than {MAX_DEPTH} levels", field=field)
    if isinstance(spec, Condition):
        return spec
    if not isinstance(spec, Mapping) or not spec:
        raise InvalidInput(
            'must be a non-empty mapping such as {"payload.x": {"eq": 1}}', field=field
        )
    parts: list[Condition] = []
    for key, value in spec.items():
        if not isinstance(key, str):
            raise InvalidInput("keys must be strings", field=field)
        where = f"{field}.{key}"
        if key in ("and", "or"):
            if not isinstance(value, list) or not value:
                raise InvalidInput(f"{key!r} takes a non-empty list of conditions", field=where)
            items = tuple(_parse(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value))
            parts.append(All(items) if key == "and" else AnyOf(items))
        elif key == "not":
            parts.append(Not(_parse(value, where, depth + 1)))
        else:
            parts.extend(_parse_field(key, value, where))
    return parts[0] if len(parts) == 1 else All(tuple(parts))


def parse_path(text: str, field: str) -> tuple[str, ...]:
    """Split and check a dotted field path such as ``payload.post.id``."""
    segments = tuple(text.split("."))
    if segments[0] not in ROOTS:
        raise InvalidInput(
            f"unknown field {text!r}: paths start with one of {', '.join(sorted(ROOTS))}",
            field=field,
        )
    for segment in segments[1:]:
        if not _SEGMENT_RE.fullmatch(segment):
            raise InvalidInput(f"bad path segment {segment!r} in {text!r}", field=field)
    return segments


def _parse_field(key: str, value: Any, where: str) -> list[Condition]:
    path = parse_path(key, where)
    is_ops = isinstance(value, Mapping) and value and all(isinstance(k, str) for k in value)
    if not is_ops:
        return [Compare(path, Op.EQ, _literal(value, where))]
    assert isinstance(value, Mapping)
    out: list[Condition] = []
    for op_name, operand in value.items():
        try:
            op = Op(op_name)
        except ValueError:
            known = ", ".join(o.value for o in Op)
            raise InvalidInput(
                f"unknown operator {op_name!r} (known: {known}; write {{eq: {{...}}}} to compare"
                " with a mapping)",
                field=f"{where}.{op_name}",
            ) from None
        out.append(Compare(path, op, _operand(op, operand, f"{where}.{op_name}")))
    return out


def _operand(op: Op, operand: Any, where: str) -> Any:
    if op is Op.EXISTS:
        if not isinstance(operand, bool):
            raise InvalidInput("exists takes true or false", field=where)
        return operand
    if op is Op.IN:
        if not isinstance(operand, list):
            raise InvalidInput("in takes a list of values", field=where)
        return tuple(_literal(v, f"{where}[{i}]") for i, v in enumerate(operand))
    if op in (Op.GT, Op.GTE, Op.LT, Op.LTE) and not (
        _is_number(operand) or isinstance(operand, str)
    ):
        raise InvalidInput(f"{op.value} compares with a number or a string", field=where)
    return _literal(operand, where)


def _literal(value: Any, where: str) -> Any:
    """Check a literal is plain JSON data and freeze it (lists become tuples)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInput("numbers must be finite", field=where)
        return value
    if isinstance(value, list | tuple):
        return tuple(_literal(v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(value, Mapping):
        return frozenset((str(k), _literal(v, f"{where}.{k}")) for k, v in value.items())
    raise InvalidInput(f"unsupported literal of type {type(value).__name__}", field=where)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def resolve(path: Sequence[str], context: Mapping[str, Any]) -> Any:
    """The value at ``path`` in ``context`` or :data:`MISSING`. Never raises."""
    current: Any = context
    for segment in path:
        if isinstance(current, Mapping):
            if segment not in current:
                return MISSING
            current = current[segment]
        elif isinstance(current, list | tuple) and segment.isdigit():
            index = int(segment)
            if index >= len(current):
                return MISSING
            current = current[index]
        else:
            return MISSING
    return current


def evaluate(condition: Condition, context: Mapping[str, Any]) -> bool:
    """Whether ``condition`` holds for ``context``; total (see the module docstring)."""
    if isinstance(condition, All):
        return all(evaluate(c, context) for c in condition.items)
    if isinstance(condition, AnyOf):
        return any(evaluate(c, context) for c in condition.items)
    if isinstance(condition, Not):
        return not evaluate(condition.item, context)
    return _compare(condition, resolve(condition.path, context))


def _compare(c: Compare, actual: Any) -> bool:
    if c.op is Op.EXISTS:
        return (actual is not MISSING) is c.value
    if actual is MISSING:
        return False
    try:
        frozen = _freeze(actual)
    except (TypeError, ValueError, RecursionError):  # unhashable oddities, cycles
        return False
    if frozen is MISSING:
        return False
    if c.op is Op.EQ:
        return _equal(frozen, c.value)
    if c.op is Op.NE:
        return _comparable(frozen, c.value) and not _equal(frozen, c.value)
    if c.op is Op.IN:
        return any(_equal(frozen, v) for v in c.value)
    if c.op is Op.CONTAINS:
        if isinstance(frozen, str):
            return isinstance(c.value, str) and c.value in frozen
        if isinstance(frozen, tuple):
            return any(_equal(item, c.value) for item in frozen)
        if isinstance(frozen, frozenset):
            return isinstance(c.value, str) and any(k == c.value for k, _ in frozen)
        return False
    return _order(c.op, frozen, c.value)


def _freeze(value: Any) -> Any:
    """Plain data in a hashable form: lists become tuples, mappings frozensets of pairs."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else MISSING
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, Mapping):
        return frozenset((str(k), _freeze(v)) for k, v in value.items())
    return MISSING


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if _is_number(value):
        return "number"
    if isinstance(value, str):
        return "string"
    if value is MISSING:
        return "missing"
    if isinstance(value, frozenset):
        return "mapping"
    return "list"


def _comparable(a: Any, b: Any) -> bool:
    return _kind(a) == _kind(b)


def _equal(a: Any, b: Any) -> bool:
    return _comparable(a, b) and bool(a == b)


def _order(op: Op, a: Any, b: Any) -> bool:
    kind = _kind(a)
    if kind not in ("number", "string") or kind != _kind(b):
        return False
    if op is Op.GT:
        return bool(a > b)
    if op is Op.GTE:
        return bool(a >= b)
    if op is Op.LT:
        return bool(a < b)
    return bool(a <= b)


def step_references(condition: Condition) -> set[str]:
    """Step ids a condition reads (``steps.<id>...``), to check they name earlier steps."""
    return {path[1] for path in paths(condition) if path[0] == "steps" and len(path) > 1}


def paths(condition: Condition) -> set[tuple[str, ...]]:
    """Every field path a condition reads."""
    if isinstance(condition, All | AnyOf):
        return set().union(*(paths(c) for c in condition.items))
    if isinstance(condition, Not):
        return paths(condition.item)
    return {tuple(condition.path)}
