"""What the KV primitive reads and answers, and how stored bytes become API messages:
pure, no I/O.

Values are stored as StoredValue (the value and who wrote it); a value written around
Accord (straight into etcd) is shown as its bytes.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf import timestamp_pb2
from google.protobuf.message import DecodeError

from accord.coordinator.substrate import preconditions
from accord.coordinator.substrate.errors import ConditionFailed, FieldViolation
from accord.coordinator.substrate.pages import PageBudget
from accord.coordinator.substrate.txn import Event, KeyValue
from accord.v1 import kv_pb2, records_pb2

INT64_MAX = 2**63 - 1
# CONDITION_FAILED details travel in trailers (standard clients: 8 KiB soft limit, and
# base64 adds a third): the failures listed, values included, stay within this.
FAILURE_DETAILS_BYTES = 3 * 1024


@dataclass(frozen=True, slots=True)
class Check:
    key: str
    precondition: kv_pb2.Precondition
    index: int


@dataclass(frozen=True, slots=True)
class Op:
    key: str
    value: bytes | None  # None: delete
    lease: int = 0  # a put attached to this lease: deleted when the lease ends


@dataclass(frozen=True, slots=True)
class Mutation:
    revision: int
    results: list[kv_pb2.TxnOpResult]
    replayed: bool


@dataclass(frozen=True, slots=True)
class Page:
    revision: int
    kvs: list[kv_pb2.KeyValue]
    next_page_token: str
    total: int


@dataclass(frozen=True, slots=True)
class WatchBatch:
    revision: int
    events: list[kv_pb2.WatchEvent]
    resume_revision: int


@dataclass(frozen=True, slots=True)
class History:
    revision: int
    entries: list[kv_pb2.HistoryEntry]
    next_before_revision: int
    truncated_by_compaction: bool


@dataclass(frozen=True, slots=True)
class ListCursor:
    """Where a List page ended: the revision it read at, the total, the last key."""

    revision: int
    total: int
    after_key: str

    def encode(self) -> str:
        raw = f"{self.revision}:{self.total}:{self.after_key}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @staticmethod
    def decode(token: str) -> ListCursor | None:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            revision, total, after_key = raw.split(":", 2)
            cursor = ListCursor(int(revision), int(total), after_key)
        except (ValueError, UnicodeDecodeError):
            return None
        if not (0 < cursor.revision <= INT64_MAX and 0 <= cursor.total <= INT64_MAX):
            return None  # etcd takes int64 revisions; anything else is not ours
        return cursor


def to_kv(prefix: bytes, raw: KeyValue) -> kv_pb2.KeyValue:
    """The API view of a stored key under prefix (the namespace's data prefix)."""
    kv = kv_pb2.KeyValue(
        key=raw.key[len(prefix) :].decode("utf-8", "replace"),
        create_revision=raw.create_revision,
        mod_revision=raw.mod_revision,
        version=raw.version,
    )
    if raw.value:
        try:
            stored = records_pb2.StoredValue.FromString(raw.value)
        except DecodeError:
            kv.value = raw.value  # written around Accord: show the bytes as they are
        else:
            kv.value = stored.value
            kv.written_by.CopyFrom(stored.written_by)
    return kv


def to_event(prefix: bytes, event: Event) -> kv_pb2.WatchEvent:
    """The API view of an etcd watch event."""
    out = kv_pb2.WatchEvent(
        type=kv_pb2.WatchEvent.TYPE_DELETE if event.type == 1 else kv_pb2.WatchEvent.TYPE_PUT,
        kv=to_kv(prefix, event.kv),
    )
    if event.HasField("prev_kv"):
        out.prev_kv.CopyFrom(to_kv(prefix, event.prev_kv))
    return out


def condition_failed(
    prefix: bytes,
    checks: Sequence[Check],
    currents: Sequence[KeyValue | None],
    revision: int,
    return_current: bool,
) -> ConditionFailed:
    """CONDITION_FAILED for the checks that do not hold against currents (the checked
    keys as they were at revision), with each key's current state.

    Errors travel in trailers, which standard clients cap at 8 KiB (soft) / 16 KiB: the
    failures' details stay within FAILURE_DETAILS_BYTES. A current value that does not fit
    is left out (current_value_omitted, with its size and the revision to Get it at), and
    failures past the budget are counted in the metadata, not listed."""
    failed: list[kv_pb2.ConditionFailure] = []
    listed: list[kv_pb2.ConditionFailure] = []
    budget = FAILURE_DETAILS_BYTES
    for check, raw in zip(checks, currents, strict=True):
        if preconditions.holds(check.precondition, raw):
            continue
        failure = kv_pb2.ConditionFailure(
            key=check.key,
            expected=check.precondition,
            exists=raw is not None,
            revision=revision,
            check_index=check.index,
        )
        current = None
        if raw is not None:
            failure.current_mod_revision = raw.mod_revision
            failure.current_version = raw.version
            failure.current_create_revision = raw.create_revision
            current = to_kv(prefix, raw)
            failure.current_value_size = len(current.value)
        failed.append(failure)
        size = failure.ByteSize()
        if listed and size > budget:
            continue  # counted, not listed
        if return_current and current is not None:
            with_value = size + current.ByteSize() + 4
            if with_value <= budget:
                failure.current.CopyFrom(current)
                size = with_value
            else:
                failure.current_value_omitted = True
                size = failure.ByteSize()
        budget -= size
        listed.append(failure)
    if not failed:  # every check holds now: the state moved between attempt and replay
        failed.append(kv_pb2.ConditionFailure(key=checks[0].key, revision=revision))
        listed = failed
    first = failed[0]
    state = (
        f"it is at mod_revision {first.current_mod_revision} (version {first.current_version})"
        if first.exists
        else "it does not exist"
    )
    message = (
        f"condition on key {first.key!r} failed: expected "
        f"{preconditions.describe(first.expected)}, but "
        f"{state} at revision {revision}; read it again and retry with the new revision"
    )
    if len(failed) > 1:
        message += f" ({len(failed)} checks failed"
        message += ")" if len(listed) == len(failed) else f"; {len(listed)} listed)"
    if any(f.current_value_omitted for f in listed):
        message += (
            "; current values too large for an error were left out: Get them at "
            f"revision {revision}"
        )
    metadata = {
        "key": first.key,
        "exists": str(first.exists).lower(),
        "current_mod_revision": str(first.current_mod_revision),
        "current_version": str(first.current_version),
    }
    if len(listed) < len(failed):
        metadata["failed_checks"] = str(len(failed))
        metadata["listed_checks"] = str(len(listed))
    return ConditionFailed(message, details=listed, metadata=metadata)


def fit_results(results: Sequence[kv_pb2.TxnOpResult]) -> None:
    """Leave values out of a Txn's results past the page budget (value_omitted): deleting
    32 keys of 256 KiB would otherwise answer 8 MiB, which a standard client refuses
    after the transaction applied."""
    budget = PageBudget()
    for result in results:
        if result.HasField("kv") and not budget.take(result):
            result.kv.value = b""
            result.value_omitted = True
            budget.take(result)


def now() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(time.time_ns())
    return ts


def single_check(key: str, precondition: kv_pb2.Precondition | None) -> list[Check]:
    if precondition is None or not preconditions.is_set(precondition):
        return []
    return [Check(key, precondition, 0)]


def precondition_bytes(precondition: kv_pb2.Precondition | None) -> bytes:
    return precondition.SerializeToString(deterministic=True) if precondition else b""


def check_revision(field: str, revision: int) -> list[FieldViolation]:
    return [FieldViolation(field, "must not be negative")] if revision < 0 else []
