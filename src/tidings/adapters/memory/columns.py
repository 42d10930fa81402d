"""What the memory stores share with the SQL stores' columns."""

from __future__ import annotations

import json
from typing import Any


def json_copy(value: Any) -> Any:
    """The value as a JSON column gives it back: a deep copy with lists for tuples and string
    keys; raises what serialising it raises (TypeError for what JSON cannot take)."""
    return json.loads(json.dumps(value))
