"""Locks and semaphores as an agent uses them.

``async with accord.locks.hold("repo/main", lease, wait=30) as grant:`` waits in FIFO order,
then pass ``fence=grant`` to the KV writes the lock protects: if the lease is lost
meanwhile (a long stall, an admin break), those writes fail with FencedError instead of
overwriting the next holder's work. Acquire is idempotent per (lock, lease), so the
client retries it on another replica without losing its place in the queue.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum

from accord.client import calls, deadlines, deprecation
from accord.client.errors import AccordError, NotHeldError, WouldBlockError, reason_name
from accord.client.leases import Lease
from accord.client.trace_context import TraceContext
from accord.client.transport import Transport
from accord.v1 import common_pb2, locks_pb2

# Admin views are the contract's own messages (typed through their .pyi stubs).
LockState = locks_pb2.LockState
LockEntry = locks_pb2.LockEntry
WaitEdge = locks_pb2.WaitEdge
Deadlock = locks_pb2.Deadlock
DEFAULT_WAIT_SECONDS = 60.0
# Time the server may take beyond the wait itself before the client stops listening.
_WAIT_MARGIN_SECONDS = 5.0
# Failed acquires after which the server has already removed (or never made) the entry;
# after any other failure, or a cancellation, the client leaves the queue itself.
_ENTRY_ALREADY_GONE = {
    reason_name(reason)
    for reason in (
        common_pb2.ERROR_REASON_DEADLOCK,
        common_pb2.ERROR_REASON_NOT_HELD,
        common_pb2.ERROR_REASON_LEASE_NOT_FOUND,
        common_pb2.ERROR_REASON_WOULD_BLOCK,
        common_pb2.ERROR_REASON_LOCK_TIMEOUT,
        common_pb2.ERROR_REASON_LOCK_CONFLICT,
        common_pb2.ERROR_REASON_INVALID_ARGUMENT,
        common_pb2.ERROR_REASON_BAD_IDENTITY,
    )
}


class LockMode(IntEnum):
    EXCLUSIVE = locks_pb2.LOCK_MODE_EXCLUSIVE
    SHARED = locks_pb2.LOCK_MODE_SHARED


@dataclass(frozen=True, slots=True)
class Grant:
    """A held lock. Pass it as `fence=` to the writes it protects."""

    name: str
    token: int
    mode: LockMode
    lease_id: int
    permits: int
    # After a hand-off: the trace context of the release that handed the lock over.
    handed_off_by: TraceContext | None = None

    def fence(self) -> common_pb2.Fence:
        return common_pb2.Fence(lock=self.name, token=self.token)

    @property
    def trace_context(self) -> TraceContext | None:
        """What set this grant off (handed_off_by), for link()."""
        return self.handed_off_by

    @staticmethod
    def _from(msg: locks_pb2.Grant) -> Grant:
        return Grant(
            msg.name,
            msg.token,
            LockMode(msg.mode or locks_pb2.LOCK_MODE_EXCLUSIVE),
            msg.lease_id,
            msg.permits,
            TraceContext._from(msg.handed_off_by),
        )


class DeadlockPage(builtins.list[Deadlock]):
    """A list of deadlocks, as deadlocks() always returned, that also says where the next,
    older page starts: pass next_page_token as page_token ("": this is the last page)."""

    def __init__(self, deadlocks: Iterable[Deadlock], next_page_token: str) -> None:
        super().__init__(deadlocks)
        self.next_page_token = next_page_token


class WaitGraphPage(builtins.list[WaitEdge]):
    """A page of the wait-for graph's edges, as wait_graph() returned them all before
    graphs outgrew one message: next_page_token ("" on the last page) continues it in
    the same snapshot, and total_edges says how many the whole graph has."""

    def __init__(self, edges: Iterable[WaitEdge], next_page_token: str, total_edges: int) -> None:
        super().__init__(edges)
        self.next_page_token = next_page_token
        self.total_edges = total_edges


@dataclass(frozen=True, slots=True)
class LockSpec:
    name: str
    mode: LockMode = LockMode.EXCLUSIVE
    permits: int = 0


def _mode(mode: LockMode) -> locks_pb2.LockMode.ValueType:
    return locks_pb2.LockMode.ValueType(int(mode))


def _lease_id(lease: Lease | int) -> int:
    return lease.id if isinstance(lease, Lease) else lease


class AsyncLocks:
    """Every method takes `timeout=`, the call's deadline in seconds (None: the client's
    default), except the waiting ones: `acquire`, `acquire_many` and `hold` wait up to
    `wait=` seconds and give the call that long plus a margin. There, `timeout=` is the
    deprecated name of `wait=` and keeps that meaning until it is removed."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    @deprecation.renamed(timeout="wait")
    async def acquire(
        self,
        name: str,
        lease: Lease | int,
        *,
        mode: LockMode = LockMode.EXCLUSIVE,
        permits: int = 0,
        wait: float = DEFAULT_WAIT_SECONDS,
        priority: int = 0,
        timeout: float | None = None,
    ) -> Grant:
        """Wait (FIFO) up to `wait` seconds. Raises LockTimeoutError (with who holds the
        lock), DeadlockError (with the cycle) or LeaseNotFoundError."""
        request = locks_pb2.AcquireRequest(
            name=name,
            lease_id=_lease_id(lease),
            mode=_mode(mode),
            permits=permits,
            timeout_ms=int(wait * 1000),
            priority=priority,
        )
        try:
            response = await self._t.unary(
                calls.LOCKS_ACQUIRE, request, timeout=wait + _WAIT_MARGIN_SECONDS
            )
        except AccordError as exc:
            if exc.reason not in _ENTRY_ALREADY_GONE:
                await self._leave(name, lease)  # nobody is left waiting for this grant
            raise
        except BaseException:  # cancelled: leave the queue even so
            await asyncio.shield(self._leave(name, lease))
            raise
        return Grant._from(response.grant)

    async def try_acquire(
        self,
        name: str,
        lease: Lease | int,
        *,
        mode: LockMode = LockMode.EXCLUSIVE,
        permits: int = 0,
        timeout: float | None = None,
    ) -> Grant | None:
        """The lock if it is free now, else None (never waits)."""
        request = locks_pb2.AcquireRequest(
            name=name, lease_id=_lease_id(lease), mode=_mode(mode), permits=permits, no_wait=True
        )
        try:
            response = await self._t.unary(calls.LOCKS_ACQUIRE, request, timeout=timeout)
        except WouldBlockError:
            return None
        return Grant._from(response.grant)

    @deprecation.renamed(timeout="wait")
    async def acquire_many(
        self,
        locks: Sequence[LockSpec | str],
        lease: Lease | int,
        *,
        wait: float = DEFAULT_WAIT_SECONDS,
        priority: int = 0,
        timeout: float | None = None,
    ) -> builtins.list[Grant]:
        """All of them or none, taken in name order, waiting up to `wait` seconds in all."""
        specs = [LockSpec(s) if isinstance(s, str) else s for s in locks]
        request = locks_pb2.AcquireManyRequest(
            locks=[
                locks_pb2.LockSpec(name=s.name, mode=_mode(s.mode), permits=s.permits)
                for s in specs
            ],
            lease_id=_lease_id(lease),
            timeout_ms=int(wait * 1000),
            priority=priority,
        )
        response = await self._t.unary(
            calls.LOCKS_ACQUIRE_MANY, request, timeout=wait + _WAIT_MARGIN_SECONDS
        )
        return [Grant._from(g) for g in response.grants]

    async def release(
        self, name: str | Grant, lease: Lease | int | None = None, *, timeout: float | None = None
    ) -> bool:
        """Leave the lock's queue; True if the lease was holding it."""
        token = 0
        if isinstance(name, Grant):  # release exactly this grant, never a later one
            lease, token, name = lease or name.lease_id, name.token, name.name
        if lease is None:
            raise ValueError("release needs the lease (or a Grant)")
        request = locks_pb2.ReleaseRequest(name=name, lease_id=_lease_id(lease), token=token)
        with deadlines.unbounded():  # giving back is never cut short by an ambient deadline
            response = await self._t.unary(calls.LOCKS_RELEASE, request, timeout=timeout)
        return bool(response.was_holding)

    async def _leave(self, name: str, lease: Lease | int) -> None:
        with contextlib.suppress(AccordError):
            await self.release(name, lease)

    @deprecation.renamed(timeout="wait")
    @contextlib.asynccontextmanager
    async def hold(
        self,
        name: str,
        lease: Lease | int,
        *,
        mode: LockMode = LockMode.EXCLUSIVE,
        permits: int = 0,
        wait: float = DEFAULT_WAIT_SECONDS,
        priority: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[Grant]:
        """The lock for the body of an ``async with``: acquired (waiting up to `wait`
        seconds) on entry, released on exit."""
        grant = await self.acquire(
            name, lease, mode=mode, permits=permits, wait=wait, priority=priority
        )
        try:
            yield grant
        finally:
            with contextlib.suppress(NotHeldError):
                await self.release(grant)

    async def describe(
        self, name: str, lease: Lease | int = 0, *, timeout: float | None = None
    ) -> tuple[LockState, int]:
        """The lock's holders and queue, and the lease's position (-1 holding,
        -2 not queued)."""
        request = locks_pb2.DescribeRequest(name=name, lease_id=_lease_id(lease))
        response = await self._t.unary(calls.LOCKS_DESCRIBE, request, timeout=timeout)
        return response.state, response.position

    async def list(
        self, prefix: str = "", *, timeout: float | None = None
    ) -> builtins.list[LockState]:
        request = locks_pb2.LocksListRequest(prefix=prefix)
        response = await self._t.unary(calls.LOCKS_LIST, request, timeout=timeout)
        return list(response.locks)

    async def wait_graph(
        self, limit: int = 0, *, page_token: str = "", timeout: float | None = None
    ) -> WaitGraphPage:
        """Who waits for whom: a page of up to limit edges (0: the server's default, 1000;
        at most 10000, and under 1 MiB), after the page whose next_page_token is
        page_token, every page from one snapshot."""
        request = locks_pb2.WaitGraphRequest(limit=limit, page_token=page_token)
        response = await self._t.unary(calls.LOCKS_WAIT_GRAPH, request, timeout=timeout)
        return WaitGraphPage(response.edges, response.next_page_token, response.total_edges)

    async def break_lock(
        self, name: str, *, timeout: float | None = None
    ) -> builtins.list[LockEntry]:
        """Forced release of the current holders (admin)."""
        request = locks_pb2.BreakRequest(name=name)
        response = await self._t.unary(calls.LOCKS_BREAK, request, timeout=timeout)
        return list(response.broken)

    async def deadlocks(
        self, limit: int = 20, *, page_token: str = "", timeout: float | None = None
    ) -> DeadlockPage:
        """Resolved deadlocks, newest first: up to limit of them, after the page whose
        next_page_token is page_token."""
        request = locks_pb2.ListDeadlocksRequest(limit=limit, page_token=page_token)
        response = await self._t.unary(calls.LOCKS_LIST_DEADLOCKS, request, timeout=timeout)
        return DeadlockPage(response.deadlocks, response.next_page_token)
