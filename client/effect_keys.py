"""Effect keys: the name of one tool call, derived from what the call is.

An effect key must name the call, not the attempt: a retry after a timeout, or another
agent resuming the run, must find the first attempt's record. So the key is derived
from the run id, the step, the tool and the tool's arguments in canonical JSON
(`canonical_json`: sorted keys, no spaces, UTF-8), and never from anything that differs
between attempts (a fresh UUID, a timestamp, a process id).

``effect_key(run_id, step, tool, arguments)`` is "fx1-" and the SHA-256 of those four
(68 ASCII characters, whatever their size), the same in every process and Python
version and for any dict order. The "fx1-" prefix names the scheme: a change of scheme
gets a new prefix, so keys written under the old one are never mistaken for the new.

Error handling: arguments that JSON cannot carry exactly (NaN or infinities, bytes,
sets, objects, dict keys that are not strings, strings that are not valid Unicode, more
than MAX_DEPTH levels of nesting) raise NotJSONError naming where in the arguments the
value is, before anything is sent.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import TypeAlias

from accord.client.errors import NotJSONError

# The scheme's name, first in every derived key.
KEY_PREFIX = "fx1-"
# Deeper arguments are refused (json would recurse once per level).
MAX_DEPTH = 64
# What the server allows in a key, a run id or a tool name.
MAX_KEY_BYTES = 256

JSON: TypeAlias = bool | int | float | str | list["JSON"] | dict[str, "JSON"] | None


def canonical_json(value: object) -> bytes:
    """value as canonical JSON: object keys sorted, no spaces, UTF-8 (not \\u escapes).
    Tuples are written as lists. Equal values give equal bytes whatever their dict order."""
    _check(value, "arguments", 0)
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def effect_key(run_id: str, step: int | str, tool: str, arguments: object) -> str:
    """The key of the tool call at step of run run_id (see the module docstring)."""
    if isinstance(step, bool) or not isinstance(step, int | str):
        raise NotJSONError(f"step must be an int or a str, not {type(step).__name__}")
    named = [run_id, step, tool]
    _check(named, "run id, step and tool", 0)
    digest = hashlib.sha256(b"accord-effect-key-v1\n")
    digest.update(canonical_json(named) + b"\n")
    digest.update(canonical_json(arguments))
    return KEY_PREFIX + digest.hexdigest()


def compensation_key(compensated: str) -> str:
    """The key of the effect that runs the compensation of effect compensated, as the
    server derives it (Compensate returns it; this is for reading journals)."""
    key = "compensate:" + compensated
    if len(key.encode("utf-8")) <= MAX_KEY_BYTES:
        return key
    return "compensate:" + hashlib.sha256(compensated.encode("utf-8")).hexdigest()


def _check(value: object, where: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise NotJSONError(f"{where}: nested more than {MAX_DEPTH} levels deep")
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NotJSONError(f"{where}: {value} has no JSON form (NaN and infinities do not)")
        return
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise NotJSONError(f"{where}: not valid Unicode ({exc.reason})") from None
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check(item, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise NotJSONError(
                    f"{where}: key {key!r} is a {type(key).__name__}; JSON keys are strings"
                )
            _check(key, f"{where} key {key[:40]!r}", depth + 1)
            _check(item, f"{where}[{key[:40]!r}]", depth + 1)
        return
    raise NotJSONError(f"{where}: a {type(value).__name__} has no JSON form")
