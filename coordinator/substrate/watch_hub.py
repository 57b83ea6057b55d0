"""One etcd watch stream per replica, shared by every one-shot wait.

Lock waiters and lease-loss watchers only need "wake me when any of these keys changes
after revision R"; opening an etcd stream for each would cost a gRPC stream setup per
wait. Here each wait adds watchers to one long-lived stream and cancels them when done.

etcd answers create requests on a stream in the order they were sent, so the n-th
"created" response carries the watch id of the n-th create. A wait is woken by an event,
and also by anything that may have hidden one (compaction, cancellation, a broken
stream): waiters always re-read the state they care about, so a spurious wake-up costs a
read, and a missed one cannot happen.

A watcher whose start revision is already behind etcd's current one is "unsynced": etcd
catches it up in a background loop that runs every 100 ms, so its first events can come
that late. A wait on single keys therefore watches them from "now" instead, and if etcd's
revision moved past the caller's start meanwhile, reads those keys once (one etcd call for
the wait): unchanged since the start, the watchers (which cover everything after their
creation) miss nothing; changed, the wait wakes at once.

A wait may pass `wants`: it sees each batch of events as it comes (in revision order)
and says whether they end the wait, so a waiter can follow a queue without being woken
by what does not concern it. `first_change` says whether the wait saw everything up to
its end (events or timeout) or was woken by something that may have hidden events.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from aetcd.rpc import rpc_pb2 as rpc

from accord.coordinator import logs
from accord.coordinator.substrate import calls

_log = logs.get("accord.watch_hub")


# Sees a batch of events of a wait's watchers; True ends the wait.
Wants = Callable[[Sequence[Any]], bool]


class _Wait:
    __slots__ = ("gaps", "ids", "reset", "unanswered", "wants", "woken")

    def __init__(self, creates: int, wants: Wants | None = None) -> None:
        self.woken = asyncio.Event()
        self.wants = wants
        self.reset = False  # woken by what may have hidden events
        self.ids: list[int] = []
        self.unanswered = creates
        # Keys watched from "now" whose revision moved past the caller's start meanwhile.
        self.gaps: list[_Pending] = []


class _Pending:
    """A create request sent and not yet answered: its wait, and for a one-key watch sent
    as "from now", the key and the revision the caller wanted to start from."""

    __slots__ = ("key", "since", "wait")

    def __init__(self, wait: _Wait, key: bytes, since: int) -> None:
        self.wait, self.key, self.since = wait, key, since


class WatchHub:
    def __init__(self, watch_stub: Any, txn: Callable[[Any], Awaitable[Any]] | None = None) -> None:
        self._stub = watch_stub  # a callable returning the current member's Watch stub
        self._txn = txn  # an etcd Txn, for the start-gap check (none: never from now)
        self._outbox: asyncio.Queue[Any] = asyncio.Queue()
        self._awaiting_ids: deque[_Pending] = deque()
        self._by_id: dict[int, _Wait] = {}
        self._task: asyncio.Task[None] | None = None
        self._checks: set[asyncio.Task[None]] = set()

    async def first_change(
        self, creates: list[Any], timeout: float | None, wants: Wants | None = None
    ) -> bool:
        """Return when any watched key changes (with wants: when it says so) or may have,
        or after timeout: False when events may have been missed (compaction, a broken
        stream), True otherwise."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        wait = _Wait(len(creates), wants)
        for asked in creates:
            since, create = asked.start_revision, asked
            if since and not asked.range_end and self._txn is not None:
                create = rpc.WatchCreateRequest()
                create.CopyFrom(asked)
                create.start_revision = 0  # from now: synced at once
            else:
                since = 0
            self._awaiting_ids.append(_Pending(wait, create.key, since))
            self._outbox.put_nowait(rpc.WatchRequest(create_request=create))
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wait.woken.wait(), timeout)
        finally:
            wait.woken.set()  # ids still to come are cancelled as they arrive
            for watch_id in wait.ids:
                self._forget(watch_id)
        return not wait.reset

    def _forget(self, watch_id: int) -> None:
        if self._by_id.pop(watch_id, None) is not None:
            self._outbox.put_nowait(
                rpc.WatchRequest(cancel_request=rpc.WatchCancelRequest(watch_id=watch_id))
            )

    async def _requests(self, outbox: asyncio.Queue[Any]) -> AsyncIterator[Any]:
        while True:
            yield await outbox.get()

    async def _run(self) -> None:
        delay = 0.05
        while True:
            stream = self._stub().Watch(self._requests(self._outbox))
            try:
                async for response in stream:
                    delay = 0.05
                    self._dispatch(response)
            except grpc.aio.AioRpcError as exc:
                _log.info("shared watch stream broke; reopening", code=exc.code().name)
            finally:
                stream.cancel()
            self._wake_everyone()  # events may have been missed: everyone looks again
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _dispatch(self, response: Any) -> None:
        if response.created:
            if not self._awaiting_ids:
                return
            pending = self._awaiting_ids.popleft()
            wait = pending.wait
            if wait.woken.is_set():  # its wait already ended: drop the watcher again
                self._by_id[response.watch_id] = wait
                self._forget(response.watch_id)
                return
            wait.ids.append(response.watch_id)
            self._by_id[response.watch_id] = wait
            wait.unanswered -= 1
            if response.canceled:  # refused at creation (compacted start): look again
                _reset(wait)
            elif pending.since and response.header.revision >= pending.since:
                wait.gaps.append(pending)
            if not wait.unanswered and wait.gaps and not wait.woken.is_set():
                check = asyncio.create_task(self._check_gaps(wait))
                self._checks.add(check)
                check.add_done_callback(self._checks.discard)
            return
        watched = self._by_id.get(response.watch_id)
        if watched is None or watched.woken.is_set():
            return
        if response.canceled or response.compact_revision:
            _reset(watched)
        elif response.events and _wanted(watched, response.events):
            watched.woken.set()

    async def _check_gaps(self, wait: _Wait) -> None:
        """The watchers cover what follows their creation; wake the wait unless every key
        watched from "now" is unchanged since the revision the caller started from."""
        assert self._txn is not None
        calls.current.set(calls.BACKGROUND)  # this task's own context: no caller deadline
        reads = [rpc.RequestOp(request_range=rpc.RangeRequest(key=p.key)) for p in wait.gaps]
        try:
            found = await self._txn(rpc.TxnRequest(success=reads))
            if all(
                r.response_range.kvs and r.response_range.kvs[0].mod_revision < p.since
                for r, p in zip(found.responses, wait.gaps, strict=True)
            ):
                return
        except Exception as exc:  # cannot tell: let the waiter look for itself
            _log.info("watch start check failed", error=str(exc))
        _reset(wait)

    def _wake_everyone(self) -> None:
        waits = list(self._by_id.values()) + [p.wait for p in self._awaiting_ids]
        for wait in waits:
            _reset(wait)
        self._by_id.clear()
        self._awaiting_ids.clear()
        self._outbox = asyncio.Queue()  # requests for the dead stream are void

    async def close(self) -> None:
        for check in list(self._checks):
            check.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _wanted(wait: _Wait, events: Sequence[Any]) -> bool:
    if wait.wants is None:
        return True
    try:
        return wait.wants(events)
    except Exception as exc:  # a waiter's bug must not break the stream for the others
        _log.warning("a wait's event filter failed", error=str(exc))
        _reset(wait)
        return True


def _reset(wait: _Wait) -> None:
    if not wait.woken.is_set():
        wait.reset = True
    wait.woken.set()
