"""Size limits and input checks shared by every primitive.

Limits sit well under etcd's own (1.5 MiB per request, 128 ops per Txn) so a request
that passes them always fits in one etcd transaction, including inside a group commit.

Repeated fields are counted before any element is looked at: require_counts refuses a
request whose lists are over their caps at once, so a refusal costs the same whether a
list holds a hundred entries or a million, and reports one violation per list, not one
per element.

Error handling: every check returns FieldViolations; require_counts raises
InvalidArgument itself, since nothing after it may run on an oversized list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from google.protobuf.descriptor import EnumDescriptor

from accord.coordinator.substrate.errors import FieldViolation, require

DEFAULT_MAX_VALUE_BYTES = 256 * 1024
# Caps on repeated fields that have no configurable limit of their own.
MAX_SESSION_ROOTS = 128
MAX_PATH_STEPS = 64  # an operation's path into a session's nested maps and arrays
MAX_ARRAY_VALUES = 1024  # values one ArrayInsert adds
MAX_LOCKS_PER_CALL = 64  # locks one AcquireMany takes (each is an etcd write)
_REQUEST_ID_RE = re.compile(r"[\x21-\x7e]{1,128}")


@dataclass(frozen=True, slots=True)
class Limits:
    max_key_bytes: int = 512
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
    max_txn_ops: int = 64
    max_txn_bytes: int = 1024 * 1024


def check_key(
    field: str, key: str, limits: Limits, *, allow_empty: bool = False
) -> list[FieldViolation]:
    """Keys are UTF-8 text without control characters (we reserve those bytes)."""
    if not key:
        return [] if allow_empty else [FieldViolation(field, "must not be empty")]
    size = len(key.encode())
    if size > limits.max_key_bytes:
        return [FieldViolation(field, f"is {size} bytes; the limit is {limits.max_key_bytes}")]
    for ch in key:
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            return [
                FieldViolation(
                    field, f"contains control character U+{ord(ch):04X}, which is reserved"
                )
            ]
    return []


def check_value(field: str, value: bytes, limits: Limits) -> list[FieldViolation]:
    if len(value) > limits.max_value_bytes:
        return [
            FieldViolation(field, f"is {len(value)} bytes; the limit is {limits.max_value_bytes}")
        ]
    return []


def check_request_id(field: str, request_id: str) -> list[FieldViolation]:
    if request_id and not _REQUEST_ID_RE.fullmatch(request_id):
        return [FieldViolation(field, "must be 1-128 printable ASCII characters without spaces")]
    return []


def check_count(field: str, count: int, limit: int) -> list[FieldViolation]:
    """A repeated (or map) field's size against its cap."""
    if count > limit:
        return [FieldViolation(field, f"has {count} entries; the limit is {limit}")]
    return []


def require_counts(*counts: tuple[str, int, int]) -> None:
    """Refuse at once if any (field, count, limit) is over: before per-element work."""
    require([v for field, count, limit in counts for v in check_count(field, count, limit)])


def check_enum(field: str, value: int, enum: EnumDescriptor) -> list[FieldViolation]:
    """value is one the API defines (proto3 keeps unknown enum numbers as they came)."""
    if value in enum.values_by_number:
        return []
    names = ", ".join(v.name for v in enum.values)
    return [FieldViolation(field, f"{value} is not one of {names}")]
