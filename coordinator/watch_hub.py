"""One etcd watch stream per replica, shared by every one-shot wait.

Lock waiters and lease-loss watchers only need "wake me when any of these keys changes
after revision R"; opening an etcd stream for each would cost a gRPC stream setup per
wait. Here each wait adds watchers to one long-lived stream and cancels them when done.

etcd answers create requests on a stream in the order they were sent, so the n-th
"created" response carries the watch id of the n-th create. A wait is woken by an event,
and also by anything that may have hidden one (compaction, cancellation, a broken
stream): waiters always re-read the state they care about, so a spurious wake-up costs a
read, and a missed one cannot happen.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import grpc
from aetcd.rpc import rpc_pb2 as rpc

from accord.coordinator import logs

_log = logs.get("accord.watch_hub")


class _Wait:
    __slots__ = ("ids", "woken")

    def __init__(self) -> None:
        self.woken = asyncio.Event()
        self.ids: list[int] = []


class WatchHub:
    def __init__(self, watch_stub: Any) -> None:
        self._stub = watch_stub  # a callable returning the current member's Watch stub
        self._outbox: asyncio.Queue[Any] = asyncio.Queue()
        self._awaiting_ids: deque[_Wait] = deque()
        self._by_id: dict[int, _Wait] = {}
        self._task: asyncio.Task[None] | None = None

    async def first_change(self, creates: list[Any], timeout: float | None) -> None:
        """Return when any watched key changes (or may have), or after timeout."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        wait = _Wait()
        for create in creates:
            self._awaiting_ids.append(wait)
            self._outbox.put_nowait(rpc.WatchRequest(create_request=create))
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wait.woken.wait(), timeout)
        finally:
            wait.woken.set()  # ids still to come are cancelled as they arrive
            for watch_id in wait.ids:
                self._forget(watch_id)

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
            wait = self._awaiting_ids.popleft()
            if wait.woken.is_set():  # its wait already ended: drop the watcher again
                self._by_id[response.watch_id] = wait
                self._forget(response.watch_id)
                return
            wait.ids.append(response.watch_id)
            self._by_id[response.watch_id] = wait
            if response.canceled:  # refused at creation (compacted start): look again
                wait.woken.set()
            return
        watched = self._by_id.get(response.watch_id)
        if watched is not None and (
            response.events or response.canceled or response.compact_revision
        ):
            watched.woken.set()

    def _wake_everyone(self) -> None:
        for wait in list(self._by_id.values()) + list(self._awaiting_ids):
            wait.woken.set()
        self._by_id.clear()
        self._awaiting_ids.clear()
        self._outbox = asyncio.Queue()  # requests for the dead stream are void

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
