"""Fencing: a write protected by a lock carries its grant (lock name and token), and the
write's own etcd transaction checks that the grant still holds.

An entry holds while it is first in its queue or marked granted (store.py), and each of
these, once true, stays true until the entry is deleted: entries only ever join a queue
behind it, and a mark is never taken back. Losing the lock (lease expiry, release,
`locks break`, deadlock victim) deletes the entry. So once a read has shown the entry
holding, "the entry created at the token still exists" holds exactly while the grant
holds, and etcd tests that in the same transaction as the write. kv, sessions and votes
fence their writes through Fencing.

Error handling: a fence whose grant is already gone is refused with FENCED before any
write is built; one lost between that check and the commit makes the write's
transaction fail, and FenceGuard.broken tells FENCED apart from the write's other
conditions by the entries the failure branch read back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from accord.coordinator.locks.looks import head_op
from accord.coordinator.locks.queue import check_name, entry_of, holders
from accord.coordinator.observability import accord_metrics
from accord.coordinator.substrate import Substrate, calls, failpoints
from accord.coordinator.substrate.errors import Fenced, FieldViolation, InvalidArgument
from accord.coordinator.substrate.txn import (
    Compare,
    KeyValue,
    Op,
    Response,
    created_at,
    get,
    get_prefix,
    read,
    txn,
)
from accord.v1 import common_pb2, records_pb2

# A deliberately broken replica for the fault suite (failpoints.broken): fences unchecked.
_SKIP_COMPARE = failpoints.broken("fencing.skip_compare")


@dataclass(frozen=True, slots=True)
class FenceGuard:
    """What a write's transaction adds for its fences: compares for its condition and one
    read per fence for its failure branch, in the fences' order."""

    fences: list[common_pb2.Fence] = field(default_factory=list)
    compares: list[Compare] = field(default_factory=list)
    reads: list[Op] = field(default_factory=list)

    def broken(self, read_back: Sequence[Response]) -> common_pb2.Fence | None:
        """The first fence whose grant no longer held, given the failure branch's
        responses from the first of `reads` on (what follows them is ignored)."""
        for fence, response in zip(self.fences, read_back[: len(self.fences)], strict=True):
            kvs = response.response_range.kvs
            if not kvs or kvs[0].create_revision != fence.token:
                return fence
        return None


def fence_bytes(fences: Sequence[common_pb2.Fence]) -> list[bytes]:
    """The fences as parts of a request's fingerprint (idempotency.fingerprint)."""
    return [f.SerializeToString(deterministic=True) for f in fences]


class Fencing:
    def __init__(self, substrate: Substrate) -> None:
        self._s = substrate

    async def guard(
        self, fences: Sequence[common_pb2.Fence], *, field: str = "fences", counted: bool = True
    ) -> FenceGuard:
        """The compares that hold exactly while every fence's grant holds. FENCED at once
        if one holds nothing now. field: the request's name for them ("fence" for one).
        counted: False for a caller that may yet answer instead (a retry's first answer),
        and counts the rejection itself when it does refuse."""
        guard = FenceGuard()
        if not fences or _SKIP_COMPARE:
            return guard
        ns = calls.current.get().namespace
        for i, fence in enumerate(fences):
            name = field if field == "fence" else f"{field}[{i}]"
            violations = check_name(f"{name}.lock", fence.lock)
            if fence.token <= 0:
                violations.append(FieldViolation(f"{name}.token", "must be a grant's token"))
            if violations:
                raise InvalidArgument(violations)
            raw = await self._holding(ns, fence)
            if raw is None:
                raise await self.fenced(fence, counted=counted)
            guard.fences.append(fence)
            guard.compares.append(created_at(raw.key, fence.token))  # that grant still holds
            guard.reads.append(get(raw.key))
        return guard

    async def fenced(self, fence: common_pb2.Fence, *, counted: bool = True) -> Fenced:
        """FENCED for fence, saying who holds its lock now. Every refused fenced write is
        worded here, so it is counted here (unless counted is False: guard)."""
        ns = calls.current.get().namespace
        if counted:
            accord_metrics.fence_rejected(ns)
        queue_key = self._s.keys.lock_queue(ns, fence.lock)
        found = await self._s.etcd.range(read(queue_key, prefix=True, by_creation=True))
        queue = [entry_of(self._s.keys, ns, raw) for raw in found.kvs]
        holding = [e.token for e in holders(queue)]
        now = f"it is held by token(s) {holding}" if holding else "nobody holds it now"
        return Fenced(
            f"token {fence.token} no longer holds lock {fence.lock!r} ({now}); the write was "
            "not applied: re-acquire the lock and re-read before writing again",
            details=[
                common_pb2.FenceFailure(lock=fence.lock, token=fence.token, current_tokens=holding)
            ],
            metadata={"lock": fence.lock, "token": str(fence.token)},
        )

    async def _holding(self, ns: str, fence: common_pb2.Fence) -> KeyValue | None:
        """The entry of fence's lock created at its token, if it holds now: it is first
        in its queue or marked granted. One read-only etcd transaction."""
        queue = self._s.keys.lock_queue(ns, fence.lock)
        entry = get_prefix(queue)
        entry.request_range.min_create_revision = fence.token
        entry.request_range.max_create_revision = fence.token
        entry.request_range.limit = 1
        found = await self._s.etcd.txn(txn(then=[entry, head_op(queue)]), retry=True)
        kvs, head = (r.response_range.kvs for r in found.responses)
        if not kvs:
            return None
        if head and head[0].create_revision == fence.token:
            return kvs[0]
        return kvs[0] if records_pb2.LockEntryRecord.FromString(kvs[0].value).granted else None
