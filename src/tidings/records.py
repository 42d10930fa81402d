"""`record`: an immutable data class that is cheap to build.

A `@dataclass(frozen=True)` makes its instances immutable at run time by raising in
`__setattr__`, so its generated `__init__` has to set each field through
`object.__setattr__`: seven to eight times the plain `__init__` of the same class
(bench/overheads.py: 3.71 against 0.45 us for twenty fields). A bulk send builds some
twenty such objects per recipient (runs, steps, messages, decisions, trail entries, inbox
items), and that cost was about a tenth of the event loop's time.

A `record` is frozen for the type checker (`dataclass_transform(frozen_default=True)`:
mypy rejects any assignment to a field, as it does for a frozen dataclass) and a plain
slotted dataclass at run time, with the field-wise `__hash__` a frozen one has
(`unsafe_hash`). Nothing in the code assigns a record's fields; `dataclasses.replace` makes
changed copies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar, dataclass_transform

_T = TypeVar("_T")


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def record(cls: type[_T]) -> type[_T]:
    """`cls` as a slotted data class, immutable by type, hashable by its fields."""
    return dataclass(slots=True, unsafe_hash=True)(cls)
