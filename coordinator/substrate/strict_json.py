"""The one JSON parser for text Accord accepts from callers (presence states, session
operation values): standard JSON only, as JavaScript's JSON.parse reads it.

Python's json.loads also accepts NaN, Infinity and -Infinity, and turns numbers too large
for a double (1e999) into infinity. A value like that, stored and relayed, crashes every
JavaScript peer that parses it (JSON.parse throws), on every reconnect. Here each is
refused.

Error handling: loads raises ValueError (json.JSONDecodeError for malformed text) with a
message fit for a FieldViolation; nesting too deep for the parser raises ValueError too,
never RecursionError.
"""

from __future__ import annotations

import json
import math
from typing import Any


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (numbers must be finite)")


def _number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is out of range (numbers must be finite)")
    return value


_DECODER = json.JSONDecoder(parse_constant=_constant, parse_float=_number)


def loads(text: str) -> Any:
    """text as a JSON value; ValueError unless it is standard JSON with finite numbers."""
    try:
        return _DECODER.decode(text)
    except RecursionError:
        raise ValueError("nests too deeply") from None
