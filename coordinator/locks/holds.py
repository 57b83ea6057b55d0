"""How long a lock is typically held, as this replica saw holds end; and the wait that
fails fast because its caller's time is shorter than that evidence says it would take.

A hold ends when a release this replica serves deletes an entry that held. It began when
this replica answered the entry's grant after a wait, or, for an entry created holding
(an uncontended acquire: never modified, marked granted), at the time its record says it
was made. Other holds (granted elsewhere and released here after a wait, ended by a
lease's end or a break) teach nothing. Each lock's typical hold is an exponentially
weighted mean of its samples; locks are kept in an LRU of MAX_LOCKS, grants awaiting
their release in one of MAX_GRANTS, so memory is bounded whatever callers do. It is a
hint: never written to etcd, lost on restart, and each replica learns its own.

The check (`check_wait`): an exclusive or semaphore waiter whose caller has a deadline,
on a lock with at least MIN_SAMPLES samples here, reads the keys ahead of it (one etcd
read of at most as many keys as would show the wait too slow, MAX_AHEAD at most). The
waiters ahead must each be granted and release before it can be: at least (waiters
ahead // permits) typical holds, counting nothing for the current holders' remaining
time, so the estimate errs short. When the time left is shorter than that, the wait
fails at once instead of timing out. Shared waiters are not checked (what they wait for
is the exclusive entries ahead, not a queue position).

Error handling: a wait that fails fast raises LockTimeout (DEADLINE_EXCEEDED, reason
LOCK_TIMEOUT: what the caller would have heard at its deadline, only sooner, so a
caller that handles a timed-out wait handles this one) with the queue's state
(LockWaitStatus) and ErrorInfo metadata fail_fast="expected_wait", position,
typical_hold_ms, expected_wait_ms, remaining_ms and samples. etcd failures of the count
propagate as AccordErrors.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

from accord.coordinator.locks.explain import refusal_status
from accord.coordinator.locks.looks import ahead_op
from accord.coordinator.locks.queue import SHARED, Entry
from accord.coordinator.substrate import Substrate
from accord.coordinator.substrate.errors import LockTimeout
from accord.coordinator.substrate.txn import KeyValue
from accord.v1 import records_pb2

MIN_SAMPLES = 3  # holds seen end before a lock's typical hold is trusted
WEIGHT = 0.3  # of the newest sample in the mean
MAX_LOCKS = 10_000
MAX_GRANTS = 10_000
MAX_AHEAD = 1024  # keys a check reads at most
FAIL_FAST = "expected_wait"  # ErrorInfo metadata fail_fast of such a refusal


@dataclass(slots=True)
class _Typical:
    seconds: float
    samples: int


class HoldTimes:
    def __init__(self, substrate: Substrate) -> None:
        self._s = substrate
        self._typical: OrderedDict[tuple[str, str], _Typical] = OrderedDict()
        # (namespace, lock, token) -> time.monotonic() when this replica answered the grant.
        self._grants: OrderedDict[tuple[str, str, int], float] = OrderedDict()

    def granted(self, ns: str, entry: Entry) -> None:
        """This replica answered entry's grant after a wait (now)."""
        key = (ns, entry.lock, entry.token)
        if key not in self._grants:
            self._grants[key] = time.monotonic()
            while len(self._grants) > MAX_GRANTS:
                self._grants.popitem(last=False)

    def ended(self, ns: str, lock: str, prev: KeyValue, held: bool) -> None:
        """A release here deleted prev, an entry of lock (held: it was holding)."""
        began = self._grants.pop((ns, lock, prev.create_revision), None)
        if not held:
            return
        if began is not None:
            self.sample(ns, lock, time.monotonic() - began)
            return
        record = records_pb2.LockEntryRecord.FromString(prev.value)
        if record.granted and prev.mod_revision == prev.create_revision and record.since.seconds:
            self.sample(ns, lock, time.time() - record.since.ToNanoseconds() / 1e9)

    def sample(self, ns: str, lock: str, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        key = (ns, lock)
        typical = self._typical.get(key)
        if typical is None:
            self._typical[key] = _Typical(seconds, 1)
            while len(self._typical) > MAX_LOCKS:
                self._typical.popitem(last=False)
            return
        self._typical.move_to_end(key)
        typical.seconds += WEIGHT * (seconds - typical.seconds)
        typical.samples += 1

    def typical(self, ns: str, lock: str) -> tuple[float, int] | None:
        """(typical hold in seconds, samples) once trusted (MIN_SAMPLES), else None."""
        typical = self._typical.get((ns, lock))
        if typical is None or typical.samples < MIN_SAMPLES:
            return None
        return typical.seconds, typical.samples

    async def check_wait(self, ns: str, entry: Entry, give_up: float | None) -> None:
        """Raise LockTimeout now if entry's wait would outlast give_up (time.monotonic())
        by the evidence; return otherwise (no deadline, no trusted hint, a shared entry)."""
        if give_up is None or entry.mode == SHARED:
            return
        known = self.typical(ns, entry.lock)
        if known is None or known[0] <= 0 or not await self._too_slow(entry, give_up, known[0]):
            return
        status, held = await refusal_status(self._s, ns, entry)
        typical, samples = known
        # The whole queue ahead, now that it is read (the check counted only what it needed).
        expected = (status.position // max(entry.record.permits, 1)) * typical
        remaining = give_up - time.monotonic()
        raise LockTimeout(
            f"failed fast waiting for {entry.lock!r}: {status.position} waiter(s) ahead, "
            f"each about {typical:.3g}s (a typical hold here), is {expected:.3g}s at least, "
            f"more than the {max(remaining, 0):.3g}s left: {held}",
            details=[status],
            metadata={
                "lock": entry.lock,
                "fail_fast": FAIL_FAST,
                "position": str(status.position),
                "typical_hold_ms": str(round(typical * 1000)),
                "expected_wait_ms": str(round(expected * 1000)),
                "remaining_ms": str(max(0, round(remaining * 1000))),
                "samples": str(samples),
            },
        )

    async def _too_slow(self, entry: Entry, give_up: float, typical: float) -> bool:
        """Whether the waiters ahead of entry take longer than the time left, from the keys
        ahead: only as many as could show that (MAX_AHEAD at most: a longer queue is not
        counted, and the wait goes on)."""
        remaining = give_up - time.monotonic()
        slots = max(entry.record.permits, 1)  # entries that hold at once
        enough = slots * (int(max(remaining, 0.0) / typical) + 2)  # ahead, if too slow
        if enough > MAX_AHEAD:
            return False
        ahead = ahead_op(entry.queue, entry.token, enough, newest_first=False)
        ahead.request_range.keys_only = True
        found = len((await self._s.etcd.range(ahead.request_range)).kvs)
        expected = (max(found - slots, 0) // slots) * typical
        return expected > 0 and give_up - time.monotonic() < expected
