"""Fair exclusive/shared locks and semaphores, held by leases, that fence their writes.

Each lease has at most one entry in a lock's queue; the queue is ordered by the
entries' etcd create revisions (FIFO), and an entry's create revision is its fencing
token, monotonic per lock. An exclusive entry holds the lock when it is first; a shared
entry when no exclusive entry is ahead of it; a semaphore entry when fewer than
`permits` entries are ahead. Entries hang on their lease, so a lease that ends leaves
every queue, and a dead lease is never granted anything.

An entry is marked `granted` before its grant is answered: created so when the queue was
empty (one etcd transaction for an uncontended acquire), else rewritten once when it
comes to hold. A granted entry never changes again until it is deleted, so a fenced
write reads the entry, requires the mark, and checks in its own etcd transaction that
the entry with that create revision still exists.
Losing the lock (lease expiry, release, `locks break`, deadlock victim) deletes the
entry, so every later fenced write with its token fails with FENCED.

A waiter watches only what it waits behind (its predecessor, or for a shared entry the
last exclusive one ahead) and its own entry; semaphore waiters watch the queue's
deletions. Acquire is idempotent per (lock, lease): a retry on another replica finds
the same entry and keeps its place in the queue.

Layout: {root}/ns/{namespace}/locks/{name}\\0{lease as 16 hex digits} -> LockEntryRecord.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aetcd.rpc import rpc_pb2 as rpc
from google.protobuf import timestamp_pb2

from accord.coordinator import logs
from accord.coordinator.leases.store import LeaseStore
from accord.coordinator.substrate import calls
from accord.coordinator.substrate.errors import (
    AccordError,
    Deadlocked,
    Fenced,
    FieldViolation,
    InvalidArgument,
    LeaseNotFound,
    LockConflict,
    LockTimeout,
    NotHeld,
    WouldBlock,
)
from accord.coordinator.substrate.etcd import Etcd, prefix_end
from accord.coordinator.substrate.group_commit import GroupCommitter
from accord.coordinator.substrate.limits import Limits, check_key
from accord.v1 import common_pb2, locks_pb2, records_pb2

_log = logs.get("accord.locks")
MAX_NAME_BYTES = 256
MAX_PERMITS = 10_000
DEADLINE_MARGIN_SECONDS = 0.1
BREAK_ATTEMPTS = 5


class DeadlockChecker(Protocol):
    """What lock waits need of deadlock detection (deadlocks.DeadlockDetector)."""

    async def check(self, namespace: str, lease_id: int | None = None) -> int: ...

    async def verdict(self, namespace: str, entry: Entry) -> locks_pb2.Deadlock | None: ...


EXCLUSIVE = locks_pb2.LOCK_MODE_EXCLUSIVE
SHARED = locks_pb2.LOCK_MODE_SHARED


@dataclass(frozen=True, slots=True)
class FenceCheck:
    """The etcd compares that hold exactly while a fence's grant holds its lock."""

    compares: list[Any]
    key: bytes


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


def is_granted(queue: Sequence[Entry], index: int) -> bool:
    """Whether queue[index] holds, the queue being in token order."""
    entry = queue[index]
    if entry.record.permits:
        return index < entry.record.permits
    if entry.mode == SHARED:
        return all(e.mode == SHARED for e in queue[:index])
    return index == 0


def blockers(queue: Sequence[Entry], index: int) -> list[Entry]:
    """The entries queue[index] waits for (empty when it holds). For a semaphore any one
    of them leaving may do, so these are not all needed (a knot, not a cycle)."""
    if is_granted(queue, index):
        return []
    entry = queue[index]
    if entry.record.permits or entry.mode == EXCLUSIVE:
        return list(queue[:index])
    return [e for e in queue[:index] if e.mode == EXCLUSIVE]


class LockStore:
    def __init__(
        self, etcd: Etcd, committer: GroupCommitter, leases: LeaseStore, *, root: str
    ) -> None:
        self._etcd = etcd
        self._committer = committer
        self._leases = leases
        self._root = root
        # Set by the server once the detector (which reads these queues) exists.
        self.deadlocks: DeadlockChecker | None = None

    # --- layout -------------------------------------------------------------------

    def locks_prefix(self, namespace: str) -> bytes:
        return f"{self._root}/ns/{namespace}/locks/".encode()

    def queue_prefix(self, namespace: str, name: str) -> bytes:
        return self.locks_prefix(namespace) + name.encode() + b"\x00"

    def entry_key(self, namespace: str, name: str, lease_id: int) -> bytes:
        return self.queue_prefix(namespace, name) + f"{lease_id:016x}".encode()

    def parse_key(self, namespace: str, key: bytes) -> tuple[str, int] | None:
        prefix = self.locks_prefix(namespace)
        if not key.startswith(prefix) or b"\x00" not in key:
            return None
        name, _, lease = key[len(prefix) :].rpartition(b"\x00")
        return name.decode("utf-8", "replace"), int(lease, 16)

    def _entry(self, namespace: str, raw: Any) -> Entry:
        parsed = self.parse_key(namespace, raw.key)
        assert parsed is not None
        return Entry(
            parsed[0],
            parsed[1],
            raw.key,
            raw.create_revision,
            records_pb2.LockEntryRecord.FromString(raw.value),
        )

    async def queue(self, namespace: str, name: str) -> tuple[int, list[Entry]]:
        """(revision, the lock's entries in token order)."""
        revision, entries = await self._entries(namespace, self.queue_prefix(namespace, name))
        return revision, entries

    async def all_entries(
        self, namespace: str, name_prefix: str = ""
    ) -> tuple[int, dict[str, list[Entry]]]:
        """(revision, queues by lock name), every queue in token order."""
        prefix = self.locks_prefix(namespace) + name_prefix.encode()
        revision, entries = await self._entries(namespace, prefix)
        queues: dict[str, list[Entry]] = {}
        for entry in entries:
            queues.setdefault(entry.lock, []).append(entry)
        return revision, queues

    async def _entries(self, namespace: str, prefix: bytes) -> tuple[int, list[Entry]]:
        """Every entry under prefix, at one revision, oldest token first."""
        response = await self._etcd.range(
            rpc.RangeRequest(
                key=prefix,
                range_end=prefix_end(prefix),
                sort_order=rpc.RangeRequest.ASCEND,
                sort_target=rpc.RangeRequest.CREATE,
            )
        )
        return response.header.revision, [self._entry(namespace, kv) for kv in response.kvs]

    # --- acquire ------------------------------------------------------------------

    async def acquire(
        self,
        name: str,
        lease_id: int,
        *,
        mode: int,
        permits: int,
        no_wait: bool,
        timeout_ms: int,
        priority: int,
    ) -> locks_pb2.Grant:
        grant, _ = await self._acquire(
            name,
            lease_id,
            mode=mode,
            permits=permits,
            no_wait=no_wait,
            timeout_ms=timeout_ms,
            priority=priority,
        )
        return grant

    async def _acquire(
        self,
        name: str,
        lease_id: int,
        *,
        mode: int,
        permits: int,
        no_wait: bool,
        timeout_ms: int,
        priority: int,
    ) -> tuple[locks_pb2.Grant, bool]:
        """The grant, and whether this call created the queue entry (rather than finding
        one this lease already had)."""
        violations = _check_name("name", name)
        if lease_id <= 0:
            violations.append(FieldViolation("lease_id", "must be a lease id (> 0)"))
        if mode not in (0, EXCLUSIVE, SHARED):
            violations.append(FieldViolation("mode", "must be EXCLUSIVE or SHARED"))
        if not 0 <= permits <= MAX_PERMITS:
            violations.append(
                FieldViolation(
                    "permits", f"must be between 0 and {MAX_PERMITS} (0: a lock, not a semaphore)"
                )
            )
        if timeout_ms < 0:
            violations.append(FieldViolation("timeout_ms", "must not be negative"))
        if violations:
            raise InvalidArgument(violations)
        mode = EXCLUSIVE if permits or mode == 0 else mode
        call = calls.current.get()
        ns = call.namespace
        # Stop waiting a little before the caller's deadline, so it hears LOCK_TIMEOUT
        # (with who holds the lock) rather than a bare DEADLINE_EXCEEDED.
        give_up = None if call.deadline is None else call.deadline - DEADLINE_MARGIN_SECONDS
        if timeout_ms:
            mine = time.monotonic() + timeout_ms / 1000
            give_up = mine if give_up is None else min(give_up, mine)

        entry, created, first_look = await self._enqueue(
            ns, name, lease_id, mode, permits, priority
        )
        if entry.record.granted:
            return _grant(entry), created
        try:
            grant = await self._await_grant(
                ns, entry, no_wait=no_wait, give_up=give_up, first_look=first_look
            )
            return grant, created
        except WouldBlock:
            if created:  # an entry found, not made, belongs to another call still waiting
                await self._leave(entry)
            raise
        except (LockTimeout, LockConflict):
            # The caller's own decision to stop waiting: leave the queue. Cancellation is
            # not one (it may be a failover: the client resumes elsewhere, keeping its
            # place); a client that gives up releases, and a dead one's lease ends.
            await self._leave(entry)
            raise

    async def _enqueue(
        self, ns: str, name: str, lease_id: int, mode: int, permits: int, priority: int
    ) -> tuple[Entry, bool, tuple[int, list[Entry]] | None]:
        """Join the queue in one etcd transaction: already holding if the queue was empty,
        waiting otherwise, or the entry this lease already has (a retried acquire). Returns
        the entry, whether this call made it, and the queue as joined when it waits."""
        key = self.entry_key(ns, name, lease_id)
        prefix = self.queue_prefix(ns, name)
        lease_key = self._leases.record_key(ns, lease_id)
        since = timestamp_pb2.Timestamp()
        since.FromNanoseconds(time.time_ns())
        record = records_pb2.LockEntryRecord(
            agent_id=calls.current.get().agent_id,
            mode=mode,
            permits=permits,
            priority=priority,
            since=since,
        )
        holding = records_pb2.LockEntryRecord()
        holding.CopyFrom(record)
        holding.granted = True
        lease_alive = rpc.Compare(
            key=lease_key, target=rpc.Compare.VERSION, result=rpc.Compare.GREATER, version=0
        )
        absent = rpc.Compare(
            key=key, target=rpc.Compare.VERSION, result=rpc.Compare.EQUAL, version=0
        )
        queue_empty = rpc.Compare(
            key=prefix,
            range_end=prefix_end(prefix),
            target=rpc.Compare.VERSION,
            result=rpc.Compare.EQUAL,
            version=0,
        )
        wait_in_line = rpc.TxnRequest(
            compare=[lease_alive, absent],
            success=[
                rpc.RequestOp(
                    request_put=rpc.PutRequest(
                        key=key, value=record.SerializeToString(), lease=lease_id
                    )
                ),
                rpc.RequestOp(  # the queue as joined: the wait's first look, for free
                    request_range=rpc.RangeRequest(
                        key=prefix,
                        range_end=prefix_end(prefix),
                        sort_order=rpc.RangeRequest.ASCEND,
                        sort_target=rpc.RangeRequest.CREATE,
                    )
                ),
            ],
            failure=[
                rpc.RequestOp(request_range=rpc.RangeRequest(key=lease_key, keys_only=True)),
                rpc.RequestOp(request_range=rpc.RangeRequest(key=key)),
            ],
        )
        txn = rpc.TxnRequest(
            compare=[lease_alive, absent, queue_empty],
            success=[
                rpc.RequestOp(
                    request_put=rpc.PutRequest(
                        key=key, value=holding.SerializeToString(), lease=lease_id
                    )
                )
            ],
            failure=[rpc.RequestOp(request_txn=wait_in_line)],
        )
        # The queue prefix is a conflict token: two enqueues on one lock never share an
        # etcd transaction, so each gets its own revision (a unique, ordered token) and
        # sees the other in its "queue empty" compare.
        committed = await self._committer.commit(
            txn, [key, prefix, lease_key], len(key) + 96, retry=True, weight=4
        )
        response = committed.response
        if response.succeeded:
            return Entry(name, lease_id, key, committed.revision, holding), True, None
        inner = response.responses[0].response_txn
        if inner.succeeded:
            queue = [self._entry(ns, kv) for kv in inner.responses[1].response_range.kvs]
            return (
                Entry(name, lease_id, key, committed.revision, record),
                True,
                (committed.revision, queue),
            )
        if not inner.responses[0].response_range.kvs:
            raise LeaseNotFound(
                f"lease {lease_id} does not exist in namespace {ns!r}: it expired, was revoked, "
                "or was never granted here",
                metadata={"lease_id": str(lease_id)},
            )
        entry = self._entry(ns, inner.responses[1].response_range.kvs[0])
        if (entry.mode, entry.record.permits) != (mode, permits):
            raise LockConflict(
                f"lease {lease_id} is already queued for {name!r} as "
                f"{_mode_name(entry.mode, entry.record.permits)}; release it first",
                metadata={"lock": name},
            )
        return entry, False, None

    async def _await_grant(
        self,
        ns: str,
        entry: Entry,
        *,
        no_wait: bool,
        give_up: float | None,
        first_look: tuple[int, list[Entry]] | None,
    ) -> locks_pb2.Grant:
        checked_deadlocks = False
        # An exclusive lock is held by the first entry, which etcd can test by itself: a
        # woken exclusive waiter claims the lock in one transaction instead of reading
        # the queue and then marking its entry.
        claims = entry.mode == EXCLUSIVE and not entry.record.permits
        while True:
            if first_look is not None:
                revision, queue = first_look
                first_look = None
            elif claims:
                claimed, revision, queue = await self._claim_if_first(ns, entry)
                if claimed is not None:
                    return claimed
            else:
                revision, queue = await self.queue(ns, entry.lock)
            index = next((i for i, e in enumerate(queue) if e.token == entry.token), None)
            if index is None:
                raise await self._why_gone(ns, entry)
            head = queue[0].record
            if head.permits != entry.record.permits:
                raise LockConflict(
                    f"{entry.lock!r} is used as {_mode_name(head.mode, head.permits)}; this "
                    f"request asked for {_mode_name(entry.mode, entry.record.permits)}",
                    metadata={"lock": entry.lock},
                )
            if is_granted(queue, index):
                return await self._mark_granted(ns, queue[index])
            if no_wait:
                raise WouldBlock(
                    f"{entry.lock!r} is taken: {_holders_text(queue)}",
                    details=[await self.wait_status(ns, entry.lock, queue, index)],
                    metadata={"lock": entry.lock},
                )
            if not checked_deadlocks and self.deadlocks is not None:
                checked_deadlocks = True
                if await self.deadlocks.check(ns, entry.lease_id):
                    continue  # waits were ended, perhaps this very one: look again
            watched = self._watch_targets(queue, index)
            remaining = None if give_up is None else give_up - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise LockTimeout(
                    f"gave up waiting for {entry.lock!r} at position {index - _holding(queue)} "
                    f"of the queue: {_holders_text(queue)}",
                    details=[await self.wait_status(ns, entry.lock, queue, index)],
                    metadata={"lock": entry.lock},
                )
            await self._wait_for_change(watched, revision + 1, remaining)

    def _watch_targets(self, queue: list[Entry], index: int) -> list[Any]:
        """etcd watch requests for the deletions this waiter cares about."""
        entry = queue[index]
        own = rpc.WatchCreateRequest(key=entry.key, filters=[rpc.WatchCreateRequest.NOPUT])
        if entry.record.permits:
            prefix = entry.key[: entry.key.rindex(b"\x00") + 1]
            ahead = rpc.WatchCreateRequest(
                key=prefix, range_end=prefix_end(prefix), filters=[rpc.WatchCreateRequest.NOPUT]
            )
            return [own, ahead]
        waits_for = blockers(queue, index)
        return [
            own,
            rpc.WatchCreateRequest(key=waits_for[-1].key, filters=[rpc.WatchCreateRequest.NOPUT]),
        ]

    async def _wait_for_change(
        self, creates: list[Any], start: int, remaining: float | None
    ) -> None:
        """Until one of the watched deletions happens (or may have) or time's up. The
        watchers ride the replica's shared etcd watch stream."""
        for create in creates:
            create.start_revision = start
        await self._etcd.watch_hub.first_change(creates, remaining)

    async def _claim_if_first(
        self, ns: str, entry: Entry
    ) -> tuple[locks_pb2.Grant | None, int, list[Entry]]:
        """Mark the exclusive entry as holding if it is first in its queue (every entry
        there was created at or after its token) and its lease lives. Otherwise the queue
        as it is now, for the caller to look at."""
        prefix = self.queue_prefix(ns, entry.lock)
        compares, mark = self._mark(ns, entry)
        txn = rpc.TxnRequest(
            compare=[
                *compares,
                rpc.Compare(  # nobody ahead
                    key=prefix,
                    range_end=prefix_end(prefix),
                    target=rpc.Compare.CREATE,
                    result=rpc.Compare.GREATER,
                    create_revision=entry.token - 1,
                ),
            ],
            success=[mark],
            failure=[
                rpc.RequestOp(
                    request_range=rpc.RangeRequest(
                        key=prefix,
                        range_end=prefix_end(prefix),
                        sort_order=rpc.RangeRequest.ASCEND,
                        sort_target=rpc.RangeRequest.CREATE,
                    )
                )
            ],
        )
        # Sent at once, not batched: a hand-off waits on it, and the queue read in the
        # failure branch must not share a revision with another write to this queue.
        response = await self._etcd.txn(txn, retry=True)
        if response.succeeded:
            return _grant(entry), response.header.revision, []
        kvs = response.responses[0].response_range.kvs
        return None, response.header.revision, [self._entry(ns, kv) for kv in kvs]

    def _mark(self, ns: str, entry: Entry) -> tuple[list[Any], Any]:
        """The compares under which a waiting entry may be marked as holding (this
        incarnation, not yet marked by a resumed call on another replica, its lease
        alive) and the put that marks it."""
        granted = records_pb2.LockEntryRecord()
        granted.CopyFrom(entry.record)
        granted.granted = True
        compares = [
            rpc.Compare(
                key=entry.key,
                target=rpc.Compare.CREATE,
                result=rpc.Compare.EQUAL,
                create_revision=entry.token,
            ),
            rpc.Compare(
                key=entry.key,
                target=rpc.Compare.MOD,
                result=rpc.Compare.EQUAL,
                mod_revision=entry.token,
            ),
            rpc.Compare(
                key=self._leases.record_key(ns, entry.lease_id),
                target=rpc.Compare.VERSION,
                result=rpc.Compare.GREATER,
                version=0,
            ),
        ]
        put = rpc.RequestOp(
            request_put=rpc.PutRequest(
                key=entry.key, value=granted.SerializeToString(), ignore_lease=True
            )
        )
        return compares, put

    async def _mark_granted(self, ns: str, entry: Entry) -> locks_pb2.Grant:
        """Mark the entry as holding, unless its lease died meanwhile: a lock never goes
        to a dead lease (its record is attached to the lease and gone with it)."""
        if entry.record.granted:
            return _grant(entry)
        compares, mark = self._mark(ns, entry)
        txn = rpc.TxnRequest(
            compare=compares,
            success=[mark],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=entry.key))],
        )
        committed = await self._committer.commit(
            txn, [entry.key], len(entry.key) + 64, retry=True, weight=2
        )
        if not committed.response.succeeded:
            now = committed.response.responses[0].response_range.kvs
            marked = (
                now
                and now[0].create_revision == entry.token
                and records_pb2.LockEntryRecord.FromString(now[0].value).granted
            )
            if not marked:
                raise await self._why_gone(ns, entry)
        return _grant(entry)

    async def _why_gone(self, ns: str, entry: Entry) -> AccordError:
        """Our queue entry vanished: a deadlock verdict, or the lease ended, or a break."""
        if self.deadlocks is not None:
            verdict = await self.deadlocks.verdict(ns, entry)
            if verdict is not None:
                return Deadlocked(
                    f"waiting for {entry.lock!r} would deadlock: {verdict.policy}",
                    details=[verdict],
                    metadata={"lock": entry.lock, "deadlock_id": verdict.id},
                )
        try:
            await self._leases.owned(entry.lease_id)
        except LeaseNotFound as gone:
            return gone
        return NotHeld(
            f"the queue entry of lease {entry.lease_id} for {entry.lock!r} was "
            "removed (released or broken by an admin)",
            metadata={"lock": entry.lock},
        )

    async def _leave(self, entry: Entry) -> None:
        """Remove our entry if it is still the one we made and never held (best effort,
        own deadline): a granted entry is only ever removed by a release."""
        token = calls.current.set(
            calls.Call(namespace="", agent_id="", trace_id="leave", deadline=time.monotonic() + 5)
        )
        try:
            await self._etcd.txn(
                rpc.TxnRequest(
                    compare=[
                        rpc.Compare(
                            key=entry.key,
                            target=rpc.Compare.CREATE,
                            result=rpc.Compare.EQUAL,
                            create_revision=entry.token,
                        ),
                        rpc.Compare(  # never rewritten as granted
                            key=entry.key,
                            target=rpc.Compare.MOD,
                            result=rpc.Compare.EQUAL,
                            mod_revision=entry.token,
                        ),
                    ],
                    success=[
                        rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=entry.key))
                    ],
                ),
                retry=True,
            )
        except AccordError as exc:
            _log.info("could not leave a lock queue; the lease's end will", error=exc.message)
        finally:
            calls.current.reset(token)

    async def acquire_many(
        self,
        specs: Sequence[locks_pb2.LockSpec],
        lease_id: int,
        *,
        no_wait: bool,
        timeout_ms: int,
        priority: int,
    ) -> list[locks_pb2.Grant]:
        names = [s.name for s in specs]
        if not specs:
            raise InvalidArgument([FieldViolation("locks", "name at least one lock")])
        if len(set(names)) != len(names):
            raise InvalidArgument([FieldViolation("locks", "a lock appears more than once")])
        grants: list[locks_pb2.Grant] = []
        taken: list[locks_pb2.Grant] = []  # made by this call: the only ones to give back
        give_up = time.monotonic() + timeout_ms / 1000 if timeout_ms else None
        try:
            for spec in sorted(specs, key=lambda s: s.name):  # the canonical order
                left_ms = 0 if give_up is None else max(1, int((give_up - time.monotonic()) * 1000))
                grant, created = await self._acquire(
                    spec.name,
                    lease_id,
                    mode=spec.mode,
                    permits=spec.permits,
                    no_wait=no_wait,
                    timeout_ms=left_ms,
                    priority=priority,
                )
                grants.append(grant)
                if created:
                    taken.append(grant)
        except BaseException:
            for grant in taken:  # locks held before the call stay held
                await self.release(grant.name, lease_id, token=grant.token, missing_ok=True)
            raise
        return grants

    # --- release, inspection, break ---------------------------------------------

    async def release(
        self, name: str, lease_id: int, *, token: int = 0, missing_ok: bool = False
    ) -> bool:
        """Leave the queue; with a token, only if the entry is that grant's."""
        violations = _check_name("name", name)
        if lease_id <= 0:
            violations.append(FieldViolation("lease_id", "must be a lease id (> 0)"))
        if token < 0:
            violations.append(FieldViolation("token", "must not be negative"))
        if violations:
            raise InvalidArgument(violations)
        ns = calls.current.get().namespace
        key = self.entry_key(ns, name, lease_id)
        same_grant = (
            [
                rpc.Compare(
                    key=key,
                    target=rpc.Compare.CREATE,
                    result=rpc.Compare.EQUAL,
                    create_revision=token,
                )
            ]
            if token
            else []
        )
        response = await self._etcd.txn(
            rpc.TxnRequest(
                compare=same_grant,
                success=[
                    rpc.RequestOp(
                        request_delete_range=rpc.DeleteRangeRequest(key=key, prev_kv=True)
                    )
                ],
            ),
            retry=True,
        )
        prev = response.responses[0].response_delete_range.prev_kvs if response.succeeded else []
        if not prev:
            if missing_ok:
                return False
            which = f"the grant with token {token} of " if token else ""
            raise NotHeld(
                f"lease {lease_id} neither holds nor waits for {which}{name!r}",
                metadata={"lock": name},
            )
        return bool(records_pb2.LockEntryRecord.FromString(prev[0].value).granted)

    async def wait_status(
        self, ns: str, name: str, queue: list[Entry], index: int
    ) -> locks_pb2.LockWaitStatus:
        return locks_pb2.LockWaitStatus(
            state=await self.state(ns, name, queue), position=index - _holding(queue)
        )

    async def state(self, ns: str, name: str, queue: list[Entry]) -> locks_pb2.LockState:
        ttls = await asyncio.gather(*(self._etcd.lease_time_to_live(e.lease_id) for e in queue))
        state = locks_pb2.LockState(name=name, permits=queue[0].record.permits if queue else 0)
        for i, (entry, ttl) in enumerate(zip(queue, ttls, strict=True)):
            item = locks_pb2.LockEntry(
                lease_id=entry.lease_id,
                agent_id=entry.record.agent_id,
                mode=entry.mode,
                token=entry.token,
                holding=is_granted(queue, i),
                since=entry.record.since,
                lease_ttl_seconds=max(ttl.TTL, 0),
                priority=entry.record.priority,
            )
            (state.holders if item.holding else state.waiters).append(item)
        return state

    async def describe(self, name: str, lease_id: int) -> tuple[int, locks_pb2.LockState, int]:
        violations = _check_name("name", name)
        if violations:
            raise InvalidArgument(violations)
        ns = calls.current.get().namespace
        revision, queue = await self.queue(ns, name)
        position = -2
        for i, entry in enumerate(queue):
            if entry.lease_id == lease_id:
                position = -1 if is_granted(queue, i) else i - _holding(queue)
        return revision, await self.state(ns, name, queue), position

    async def list_states(self, prefix: str) -> tuple[int, list[locks_pb2.LockState]]:
        ns = calls.current.get().namespace
        revision, queues = await self.all_entries(ns, prefix)
        states = await asyncio.gather(*(self.state(ns, n, q) for n, q in sorted(queues.items())))
        return revision, list(states)

    async def break_lock(self, name: str) -> tuple[int, list[locks_pb2.LockEntry]]:
        """Delete the current holders' entries (admin). Retried while holders change
        under it, a bounded number of times."""
        violations = _check_name("name", name)
        if violations:
            raise InvalidArgument(violations)
        ns = calls.current.get().namespace
        for _ in range(BREAK_ATTEMPTS):
            _, queue = await self.queue(ns, name)
            holders = [queue[i] for i in range(len(queue)) if is_granted(queue, i)]
            if not holders:
                return 0, []
            state = await self.state(ns, name, queue)
            response = await self._etcd.txn(
                rpc.TxnRequest(
                    compare=[
                        rpc.Compare(
                            key=e.key,
                            target=rpc.Compare.CREATE,
                            result=rpc.Compare.EQUAL,
                            create_revision=e.token,
                        )
                        for e in holders
                    ],
                    success=[
                        rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=e.key))
                        for e in holders
                    ],
                ),
                retry=True,
            )
            if response.succeeded:
                _log.warning(
                    "lock broken",
                    lock=name,
                    namespace=ns,
                    holders=[e.record.agent_id for e in holders],
                )
                return response.header.revision, list(state.holders)
        raise LockConflict(
            f"the holders of {name!r} kept changing; nothing was broken", metadata={"lock": name}
        )

    def names_from_keys(self, namespace: str, keys: Sequence[bytes]) -> list[str]:
        names = (self.parse_key(namespace, k) for k in keys)
        return sorted({n[0] for n in names if n is not None})

    # --- fencing ------------------------------------------------------------------

    async def fence_compares(
        self, fences: Sequence[common_pb2.Fence], *, field: str = "fences"
    ) -> list[FenceCheck]:
        """For each fence, the etcd compares that hold exactly while its token holds the
        lock, and the entry key they test. FENCED at once if the token holds nothing.
        field: the request's name for the fences ("fence" for a single one)."""
        ns = calls.current.get().namespace
        out: list[FenceCheck] = []
        for i, fence in enumerate(fences):
            name = field if field == "fence" else f"{field}[{i}]"
            violations = _check_name(f"{name}.lock", fence.lock)
            if fence.token <= 0:
                violations.append(FieldViolation(f"{name}.token", "must be a grant's token"))
            if violations:
                raise InvalidArgument(violations)
            prefix = self.queue_prefix(ns, fence.lock)
            found = await self._etcd.range(
                rpc.RangeRequest(
                    key=prefix,
                    range_end=prefix_end(prefix),
                    min_create_revision=fence.token,
                    max_create_revision=fence.token,
                    limit=1,
                )
            )
            raw = found.kvs[0] if found.kvs else None
            if raw is None or not records_pb2.LockEntryRecord.FromString(raw.value).granted:
                raise await self.fenced(fence)
            out.append(
                FenceCheck(  # that granted entry still exists: it still holds
                    compares=[
                        rpc.Compare(
                            key=raw.key,
                            target=rpc.Compare.CREATE,
                            result=rpc.Compare.EQUAL,
                            create_revision=fence.token,
                        )
                    ],
                    key=raw.key,
                )
            )
        return out

    async def fenced(self, fence: common_pb2.Fence) -> Fenced:
        ns = calls.current.get().namespace
        _, queue = await self.queue(ns, fence.lock)
        holding = [e.token for i, e in enumerate(queue) if is_granted(queue, i)]
        now = f"it is held by token(s) {holding}" if holding else "nobody holds it now"
        return Fenced(
            f"token {fence.token} no longer holds lock {fence.lock!r} ({now}); the write was "
            "not applied: re-acquire the lock and re-read before writing again",
            details=[
                common_pb2.FenceFailure(lock=fence.lock, token=fence.token, current_tokens=holding)
            ],
            metadata={"lock": fence.lock, "token": str(fence.token)},
        )


_NAME_LIMITS = Limits(max_key_bytes=MAX_NAME_BYTES)


def _check_name(field: str, name: str) -> list[FieldViolation]:
    return check_key(field, name, _NAME_LIMITS)


def _grant(entry: Entry) -> locks_pb2.Grant:
    return locks_pb2.Grant(
        name=entry.lock,
        token=entry.token,
        mode=entry.mode,
        lease_id=entry.lease_id,
        permits=entry.record.permits,
    )


def _holding(queue: Sequence[Entry]) -> int:
    return sum(1 for i in range(len(queue)) if is_granted(queue, i))


def _holders_text(queue: Sequence[Entry]) -> str:
    held = [e for i, e in enumerate(queue) if is_granted(queue, i)]
    if not held:
        return "nobody holds it"
    who = ", ".join(
        f"{e.record.agent_id or 'lease ' + str(e.lease_id)} (token {e.token})" for e in held
    )
    waiting = len(queue) - len(held)
    return f"held by {who}; {waiting} waiting"


def _mode_name(mode: int, permits: int) -> str:
    if permits:
        return f"a semaphore of {permits} permits"
    return "shared" if mode == SHARED else "exclusive"
