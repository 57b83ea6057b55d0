"""A lock's queue as read from etcd, and who holds it: pure functions, no I/O.

The queue is every entry under keyspace.lock_queue(ns, lock), in create-revision order
(FIFO); an entry's create revision is its fencing token. An exclusive entry holds the
lock when it is first; a shared entry when no exclusive entry is ahead of it; a
semaphore entry when fewer than `permits` entries are ahead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from accord.coordinator.substrate.errors import FieldViolation
from accord.coordinator.substrate.keyspace import Keyspace
from accord.coordinator.substrate.limits import Limits, check_key
from accord.coordinator.substrate.txn import KeyValue
from accord.v1 import locks_pb2, records_pb2

MAX_NAME_BYTES = 256
EXCLUSIVE = locks_pb2.LOCK_MODE_EXCLUSIVE
SHARED = locks_pb2.LOCK_MODE_SHARED
_NAME_LIMITS = Limits(max_key_bytes=MAX_NAME_BYTES)


@dataclass(frozen=True, slots=True)
class Entry:
    """A queue entry as read from etcd."""

    lock: str
    lease_id: int
    key: bytes
    token: int  # create revision
    record: records_pb2.LockEntryRecord

    @property
    def mode(self) -> locks_pb2.LockMode.ValueType:
        return locks_pb2.LockMode.ValueType(self.record.mode or EXCLUSIVE)

    @property
    def queue(self) -> bytes:
        """Its queue's prefix (keyspace.lock_queue)."""
        return self.key[: self.key.rindex(b"\x00") + 1]


def entry_of(keys: Keyspace, namespace: str, raw: KeyValue) -> Entry:
    parsed = keys.parse_lock_entry(namespace, raw.key)
    assert parsed is not None
    return Entry(
        parsed[0],
        parsed[1],
        raw.key,
        raw.create_revision,
        records_pb2.LockEntryRecord.FromString(raw.value),
    )


def is_granted(queue: Sequence[Entry], index: int) -> bool:
    """Whether queue[index] holds, the queue being in token order."""
    entry = queue[index]
    if entry.record.permits:
        return index < entry.record.permits
    if entry.mode == SHARED:
        return all(e.mode == SHARED for e in queue[:index])
    return index == 0


def holds_by_place(entry: Entry) -> bool:
    """Whether the entry holds exactly while it is first (an exclusive lock), so that
    nothing marks it: a shared or semaphore entry may hold behind others."""
    return entry.mode == EXCLUSIVE and not entry.record.permits


def blockers(queue: Sequence[Entry], index: int) -> list[Entry]:
    """The entries queue[index] waits for (empty when it holds). For a semaphore any one
    of them leaving may do, so these are not all needed (a knot, not a cycle)."""
    if is_granted(queue, index):
        return []
    entry = queue[index]
    if entry.record.permits or entry.mode == EXCLUSIVE:
        return list(queue[:index])
    return [e for e in queue[:index] if e.mode == EXCLUSIVE]


def holders(queue: Sequence[Entry]) -> list[Entry]:
    return [e for i, e in enumerate(queue) if is_granted(queue, i)]


def grant_of(entry: Entry) -> locks_pb2.Grant:
    return locks_pb2.Grant(
        name=entry.lock,
        token=entry.token,
        mode=entry.mode,
        lease_id=entry.lease_id,
        permits=entry.record.permits,
    )


def holders_text(queue: Sequence[Entry]) -> str:
    held = holders(queue)
    if not held:
        return "nobody holds it"
    who = ", ".join(
        f"{e.record.agent_id or 'lease ' + str(e.lease_id)} (token {e.token})" for e in held
    )
    waiting = len(queue) - len(held)
    return f"held by {who}; {waiting} waiting"


def mode_name(mode: int, permits: int) -> str:
    if permits:
        return f"a semaphore of {permits} permits"
    return "shared" if mode == SHARED else "exclusive"


def check_name(field: str, name: str) -> list[FieldViolation]:
    return check_key(field, name, _NAME_LIMITS)
