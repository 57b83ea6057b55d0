"""Fair exclusive/shared locks and semaphores, held by leases, that fence their writes.

Each lease has at most one entry in a lock's queue; the queue is ordered by the
entries' etcd create revisions (FIFO), and an entry's create revision is its fencing
token, monotonic per lock. An exclusive entry holds the lock when it is first; a shared
entry when no exclusive entry is ahead of it; a semaphore entry when fewer than
`permits` entries are ahead. Entries hang on their lease, so a lease that ends leaves
every queue, and a dead lease is never granted anything.

An entry holds while it is first or marked `granted`; each stays true until the entry is
deleted (entries join behind it; a mark is never taken back). An entry created on an
empty queue is created marked (an uncontended acquire is one etcd transaction). An
exclusive entry holds exactly when first, so a woken exclusive waiter only reads that
(one read-only transaction) and a hand-off costs one write, the release; a shared or
semaphore entry may hold behind others, so it is marked once when it comes to hold. A
grant is answered only after etcd showed its entry holding, so its lease alive (the
entry hangs on it). Fencing (fencing.py) requires the same of the entry, then that it
still exists; losing the lock (lease end, release, `locks break`, deadlock victim)
deletes it, so every later fenced write with its token fails with FENCED.

A waiter watches only what it waits behind (its predecessor, or for a shared entry the
last exclusive one ahead) and its own entry; a semaphore waiter counts the deletions of
entries ahead of it and looks again only when it may hold. Neither joining nor waking
reads the whole queue (looks.py reads its head and the entry or few just ahead), and
only a lease queued for another lock too has the namespace's wait-for graph searched, so
a waiter's cost does not grow with the queue. Acquire is idempotent per (lock, lease): a
retry on another replica finds the same entry and keeps its place in the queue.

Layout: keyspace.lock_entry, a LockEntryRecord attached to the entry's lease.

Error handling: bad input is INVALID_ARGUMENT; a lease that is gone is LEASE_NOT_FOUND;
no_wait on a taken lock is WOULD_BLOCK, and a wait that runs out is LOCK_TIMEOUT, both
with the holders, the head of the queue and its length (explain.refusal_status); a wait
chosen to end a deadlock is DEADLOCK, with the cycle; an entry that vanished otherwise
(released, broken) is NOT_HELD; asking for a lock in another mode than its queue uses is
LOCK_CONFLICT.
"""

from __future__ import annotations

import contextlib
import time
from functools import partial
from typing import Protocol

from google.protobuf import timestamp_pb2

from accord.coordinator import logs
from accord.coordinator.leases.store import LeaseStore
from accord.coordinator.locks import handoffs
from accord.coordinator.locks.explain import refusal_status
from accord.coordinator.locks.holds import HoldTimes
from accord.coordinator.locks.looks import FirstLook, Look, Looker, ahead_ops, head_op
from accord.coordinator.locks.queue import (
    EXCLUSIVE,
    SHARED,
    Entry,
    check_name,
    entry_of,
    grant_of,
    holds_by_place,
    mode_name,
)
from accord.coordinator.locks.queue_feeds import QueueFeeds
from accord.coordinator.observability import accord_metrics
from accord.coordinator.substrate import Substrate, calls
from accord.coordinator.substrate.errors import (
    AccordError,
    Deadlocked,
    FieldViolation,
    InvalidArgument,
    LeaseNotFound,
    LockConflict,
    LockTimeout,
    NotHeld,
    WouldBlock,
)
from accord.coordinator.substrate.txn import (
    Compare,
    Op,
    absent,
    alive,
    created_after,
    created_at,
    delete,
    get,
    mod_is,
    nested,
    prefix_empty,
    put,
    read,
    txn,
)
from accord.v1 import locks_pb2, records_pb2

_log = logs.get("accord.locks")
MAX_PERMITS = 10_000
MAX_DEADLINE_MARGIN = 2.0  # seconds; a fifth of the call's time when that is less


class DeadlockChecker(Protocol):
    """What lock waits need of deadlock detection (deadlocks.DeadlockDetector)."""

    async def check(self, namespace: str, lease_id: int | None = None) -> int: ...

    async def verdict(self, namespace: str, entry: Entry) -> locks_pb2.Deadlock | None: ...


class LockStore:
    def __init__(self, substrate: Substrate, leases: LeaseStore) -> None:
        self._s = substrate
        self._leases = leases
        self._feeds = QueueFeeds(substrate.etcd.watch_hub)
        self.holds = HoldTimes(substrate)  # typical holds seen here: a wait may fail fast
        # Set by the server once the detector (which reads these queues) exists.
        self.deadlocks: DeadlockChecker | None = None

    # --- reading queues -------------------------------------------------------------

    async def queue(self, namespace: str, name: str) -> tuple[int, list[Entry]]:
        """(revision, the lock's entries in token order)."""
        return await self._entries(namespace, self._s.keys.lock_queue(namespace, name))

    async def all_entries(
        self, namespace: str, name_prefix: str = "", *, revision: int = 0
    ) -> tuple[int, dict[str, list[Entry]]]:
        """(revision, queues by lock name), every queue in token order; at revision (0:
        now)."""
        prefix = self._s.keys.locks_prefix(namespace) + name_prefix.encode()
        revision, entries = await self._entries(namespace, prefix, revision)
        queues: dict[str, list[Entry]] = {}
        for entry in entries:
            queues.setdefault(entry.lock, []).append(entry)
        return revision, queues

    async def _entries(
        self, namespace: str, prefix: bytes, revision: int = 0
    ) -> tuple[int, list[Entry]]:
        """Every entry under prefix, at one revision (0: now), oldest token first."""
        response = await self._s.etcd.range(
            read(prefix, prefix=True, by_creation=True, revision=revision)
        )
        return revision or response.header.revision, [
            entry_of(self._s.keys, namespace, kv) for kv in response.kvs
        ]

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
    ) -> tuple[locks_pb2.Grant, bool]:
        """The grant, and whether this call created the queue entry (rather than finding
        one this lease already had)."""
        violations = check_name("name", name)
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
        # Auth required: only the lease's principal (or an admin) queues with it. Its
        # record never changes and the enqueue requires it alive, so this holds there.
        await self._leases.check_owned(lease_id)
        call = calls.current.get()
        ns = call.namespace
        # Stop waiting before the caller's deadline, by enough to answer even when many
        # waits time out at once, so it hears LOCK_TIMEOUT (with who holds the lock)
        # rather than a bare DEADLINE_EXCEEDED.
        give_up = None
        if call.deadline is not None:
            left = call.deadline - time.monotonic()
            give_up = call.deadline - min(MAX_DEADLINE_MARGIN, max(0.1, left * 0.2))
        if timeout_ms:
            mine = time.monotonic() + timeout_ms / 1000
            give_up = mine if give_up is None else min(give_up, mine)

        entry, created, first_look = await self._enqueue(
            ns, name, lease_id, mode, permits, priority
        )
        kind = accord_metrics.lock_kind(mode, permits)
        if entry.record.granted:
            if created:  # not a retry finding its grant
                accord_metrics.lock_granted(ns, kind, None)
            return grant_of(entry), created
        wait = accord_metrics.LockWait()
        try:
            with accord_metrics.Open(accord_metrics.LOCK_WAIT):
                grant = await self._await_grant(
                    ns, entry, wait, no_wait=no_wait, give_up=give_up, first_look=first_look
                )
            accord_metrics.lock_granted(ns, kind, wait.since())
            return grant, created
        except WouldBlock:
            # An entry found, not made, belongs to another call still waiting.
            if created and await self._leave(entry):
                accord_metrics.lock_granted(ns, kind, None)
                return grant_of(entry), created
            raise
        except (LockTimeout, LockConflict) as stopped:
            # The caller's own decision to stop waiting: leave the queue. Cancellation is
            # not one (it may be a failover: the client resumes elsewhere, keeping its
            # place); a client that gives up releases, and a dead one's lease ends.
            if await self._leave(entry):
                accord_metrics.lock_granted(ns, kind, wait.since())
                return grant_of(entry), created
            if isinstance(stopped, LockTimeout):
                accord_metrics.lock_timed_out(ns)
            raise

    async def _enqueue(
        self, ns: str, name: str, lease_id: int, mode: int, permits: int, priority: int
    ) -> tuple[Entry, bool, FirstLook | None]:
        """Join the queue in one etcd transaction: already holding if the queue was empty,
        waiting otherwise, or the entry this lease already has (a retried acquire). Returns
        the entry, whether this call made it, and what it read of the queue when it waits."""
        key = self._s.keys.lock_entry(ns, name, lease_id)
        queue = self._s.keys.lock_queue(ns, name)
        lease = self._s.keys.lease(ns, lease_id)
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
        wait_in_line = txn(
            when=[alive(lease), absent(key)],
            then=[  # the first look: the queue's head and what is ahead, before the put
                head_op(queue),
                *ahead_ops(queue, mode, permits),
                put(key, record.SerializeToString(), lease=lease_id),
            ],
            otherwise=[get(lease, keys_only=True), get(key)],
        )
        enqueue = txn(
            when=[alive(lease), absent(key), prefix_empty(queue)],
            then=[put(key, holding.SerializeToString(), lease=lease_id)],
            otherwise=[nested(wait_in_line)],
        )
        # The queue prefix is touched by every enqueue: two on one lock never share an
        # etcd transaction, so each gets its own revision (a unique, ordered token) and
        # sees the other in its "queue empty" compare.
        committed = await self._s.committer.commit(enqueue, retry=True)
        response = committed.response
        if response.succeeded:
            return Entry(name, lease_id, key, committed.revision, holding), True, None
        inner = response.responses[0].response_txn
        if inner.succeeded:
            found = inner.responses[0].response_range.kvs
            head = [entry_of(self._s.keys, ns, kv) for kv in found]
            return (
                Entry(name, lease_id, key, committed.revision, record),
                True,
                (committed.revision, head, list(inner.responses[1:-1])),
            )
        if not inner.responses[0].response_range.kvs:
            raise LeaseNotFound(
                f"lease {lease_id} does not exist in namespace {ns!r}: it expired, was revoked, "
                "or was never granted here",
                metadata={"lease_id": str(lease_id)},
            )
        entry = entry_of(self._s.keys, ns, inner.responses[1].response_range.kvs[0])
        if (entry.mode, entry.record.permits) != (mode, permits):
            raise LockConflict(
                f"lease {lease_id} is already queued for {name!r} as "
                f"{mode_name(entry.mode, entry.record.permits)}; release it first",
                metadata={"lock": name},
            )
        return entry, False, None

    async def _await_grant(
        self,
        ns: str,
        entry: Entry,
        wait: accord_metrics.LockWait,
        *,
        no_wait: bool,
        give_up: float | None,
        first_look: FirstLook | None,
    ) -> locks_pb2.Grant:
        with contextlib.closing(Looker(self._s, ns, entry, self._feeds)) as looker:
            grant = await self._wait_in_line(
                ns, entry, looker, wait, no_wait, give_up, first_look
            )
        self.holds.granted(ns, entry)
        return grant

    async def _wait_in_line(
        self,
        ns: str,
        entry: Entry,
        looker: Looker,
        wait: accord_metrics.LockWait,
        no_wait: bool,
        give_up: float | None,
        first_look: FirstLook | None,
    ) -> locks_pb2.Grant:
        look = None if first_look is None else await looker.first(*first_look)
        checked_deadlocks = False
        # An exclusive lock is held by the first entry, which etcd can test by itself: a
        # woken exclusive waiter asks it in one read-only transaction, which also reads
        # the queue in case it does not hold yet.
        exclusive = holds_by_place(entry)
        while True:
            if look is None and exclusive:
                grant, look = await self._holds_if_first(ns, entry, looker)
                if grant is not None:
                    return grant
            elif look is None:
                look = await looker.look()
            if look.entry is None:
                raise await self._why_gone(ns, entry)
            head = look.head.record if look.head is not None else entry.record
            if head.permits != entry.record.permits:
                raise LockConflict(
                    f"{entry.lock!r} is used as {mode_name(head.mode, head.permits)}; this "
                    f"request asked for {mode_name(entry.mode, entry.record.permits)}",
                    metadata={"lock": entry.lock},
                )
            if look.holds:
                return await self._granted(ns, look.entry)
            if no_wait:
                status, held = await refusal_status(self._s, ns, entry)
                raise WouldBlock(
                    f"{entry.lock!r} is taken: {held}",
                    details=[status],
                    metadata={"lock": entry.lock},
                )
            if not checked_deadlocks:  # once, before the first wait
                checked_deadlocks = True
                await self.holds.check_wait(ns, entry, give_up)  # LockTimeout if too slow
                if self.deadlocks is not None and await self.deadlocks.check(ns, entry.lease_id):
                    look = None
                    continue  # waits were ended, perhaps this very one: look again
            remaining = None if give_up is None else give_up - time.monotonic()
            if remaining is not None and remaining <= 0:
                status, held = await refusal_status(self._s, ns, entry)
                raise LockTimeout(
                    f"gave up waiting for {entry.lock!r} at position {status.position} "
                    f"of the queue: {held}",
                    details=[status],
                    metadata={"lock": entry.lock},
                )
            wait.followed = True
            await looker.follow(look, remaining)
            look = None

    async def _holds_if_first(
        self, ns: str, entry: Entry, looker: Looker
    ) -> tuple[locks_pb2.Grant | None, Look]:
        """The grant, if the exclusive entry is first in its queue (every entry there was
        created at or after its token): it then holds, and is not rewritten. Otherwise a
        look at the queue as it is now. One read-only etcd transaction either way."""
        queue = self._s.keys.lock_queue(ns, entry.lock)
        first = txn(
            when=[created_at(entry.key, entry.token), created_after(queue, entry.token - 1)],
            then=[handoffs.read(self._s.keys, ns, entry.lock)],  # who handed it over
            otherwise=looker.look_ops(),
        )
        # Sent at once, not batched: a hand-off waits on it. It writes nothing, so etcd
        # answers it without a log entry of its own.
        response = await self._s.etcd.txn(first, retry=True)
        revision = response.header.revision
        if response.succeeded:
            return handoffs.grant(entry, response.responses[0]), Look(
                revision, entry, None, True, None
            )
        return None, await looker.parse(revision, list(response.responses))

    def _mark(self, ns: str, entry: Entry) -> tuple[list[Compare], Op]:
        """The compares under which a waiting entry may be marked as holding, and the put
        that marks it."""
        granted = records_pb2.LockEntryRecord()
        granted.CopyFrom(entry.record)
        granted.granted = True
        compares = [
            created_at(entry.key, entry.token),  # this incarnation
            mod_is(entry.key, entry.token),  # not yet marked by a resumed call elsewhere
            alive(self._s.keys.lease(ns, entry.lease_id)),  # never to a dead lease
        ]
        return compares, put(entry.key, granted.SerializeToString(), keep_lease=True)

    async def _granted(self, ns: str, entry: Entry) -> locks_pb2.Grant:
        """The grant of an entry a look found holding (a shared or semaphore one: an
        exclusive one is found holding by _holds_if_first, which writes nothing), marked
        as holding unless its lease died meanwhile: a lock never goes to a dead lease
        (its record is attached to the lease and gone with it)."""
        if entry.record.granted:
            return grant_of(entry)
        compares, mark = self._mark(ns, entry)
        handed_off = handoffs.read(self._s.keys, ns, entry.lock)
        committed = await self._s.committer.commit(
            txn(when=compares, then=[mark, handed_off], otherwise=[get(entry.key)]),
            retry=True,
            # Written once, when the lease was granted, before any acquire with it.
            stable=[self._s.keys.lease(ns, entry.lease_id)],
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
            return grant_of(entry)
        return handoffs.grant(entry, committed.response.responses[1])

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
            await self._leases.find(entry.lease_id)
        except LeaseNotFound as gone:
            return gone
        return NotHeld(
            f"the queue entry of lease {entry.lease_id} for {entry.lock!r} was "
            "removed (released or broken by an admin)",
            metadata={"lock": entry.lock},
        )

    async def _leave(self, entry: Entry) -> bool:
        """Remove our entry if it is still the one we made and neither first nor marked
        (best effort, own deadline): a holding entry is only ever removed by a release.
        True when it is first: it came to hold since the wait last looked, and the
        caller takes the grant instead of its error."""
        token = calls.current.set(
            calls.Call(namespace="", agent_id="", trace_id="leave", deadline=time.monotonic() + 5)
        )
        try:
            first = [
                created_at(entry.key, entry.token),
                created_after(entry.queue, entry.token - 1),
            ]
            never_granted = [created_at(entry.key, entry.token), mod_is(entry.key, entry.token)]
            leave = txn(when=never_granted, then=[delete(entry.key)])
            response = await self._s.etcd.txn(
                txn(when=first, otherwise=[nested(leave)]), retry=True
            )
            return bool(response.succeeded)
        except AccordError as exc:
            _log.info("could not leave a lock queue; the lease's end will", error=exc.message)
            return False
        finally:
            calls.current.reset(token)

    # --- release, inspection, break ---------------------------------------------

    async def release(
        self, name: str, lease_id: int, *, token: int = 0, missing_ok: bool = False
    ) -> bool:
        """Leave the queue; with a token, only if the entry is that grant's."""
        violations = check_name("name", name)
        if lease_id <= 0:
            violations.append(FieldViolation("lease_id", "must be a lease id (> 0)"))
        if token < 0:
            violations.append(FieldViolation("token", "must not be negative"))
        if violations:
            raise InvalidArgument(violations)
        await self._leases.check_owned(lease_id)  # only the holder's principal releases
        ns = calls.current.get().namespace
        key = self._s.keys.lock_entry(ns, name, lease_id)
        same_grant = [created_at(key, token)] if token else []
        # The queue's head before the delete: an entry that was first held the lock.
        release = [head_op(self._s.keys.lock_queue(ns, name)), delete(key, prev_kv=True)]
        traced = calls.current.get().trace_context
        if traced is None:
            response = await self._s.etcd.txn(txn(when=same_grant, then=release), retry=True)
        else:  # the waiter this hands the lock to learns what set it off
            handoff = partial(handoffs.record, self._s.keys, ns, name, traced)
            committed = await self._s.writes.commit(
                lambda lease: txn(when=same_grant, then=[*release, handoff(lease)]),
                retained=True,
                batched=False,
                retry=True,
            )
            response = committed.response
        prev = response.responses[1].response_delete_range.prev_kvs if response.succeeded else []
        if not prev:
            if missing_ok:
                return False
            which = f"the grant with token {token} of " if token else ""
            raise NotHeld(
                f"lease {lease_id} neither holds nor waits for {which}{name!r}",
                metadata={"lock": name},
            )
        head = response.responses[0].response_range.kvs
        was_first = bool(head) and head[0].create_revision == prev[0].create_revision
        held = was_first or records_pb2.LockEntryRecord.FromString(prev[0].value).granted
        self.holds.ended(ns, name, prev[0], held)
        return held
