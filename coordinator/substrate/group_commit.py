"""Group commit: concurrent independent writes share one etcd transaction.

Each write is an etcd sub-transaction (its own compares, success and failure ops). While
a batch is in flight, new writes queue, and so do the writes arriving in one pass of the
event loop (a KV.Batch's operations, started together); the next batch carries every
queued write whose keys are disjoint from the rest of the batch, as nested
sub-transactions of one outer Txn with no compare. etcd evaluates each sub-transaction
on its own, so every write keeps its own outcome and its own semantics; they merely
commit at the same revision.

Two writes that touch the same key never share a batch (etcd forbids two puts of one
key, and a compare must see the writes that came before it), nor is a write sent while
an earlier write touching one of its keys is in flight: per-key order is arrival order.
What a write touches is read off the transaction itself (txn.touched): every key it
writes, compares or reads, a range standing as its first key (a lock's queue prefix,
say), since every compare in a batch is evaluated before any of the batch's writes. The
one exception is named by the writer: keys no batched write changes (`stable`), which
many writes may read in one batch.
etcd limits the operations along any path of nested transactions (128): a batch of n
writes costs n plus its heaviest write's weight (txn.weight), and stays within that.

Traced (traces exported): a batch is one span, linked to the span of each write in it.

Only a refusal that etcd gives before applying anything (EtcdRefused, an unknown lease)
makes the batch's
writes go again one by one; any other failure is reported to every write in the batch.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.trace import SpanContext

from accord.coordinator.observability import accord_metrics, tracing
from accord.coordinator.substrate import calls
from accord.coordinator.substrate.errors import (
    AccordError,
    DeadlineExceeded,
    EtcdRefused,
    Internal,
    LeaseNotFound,
)
from accord.coordinator.substrate.etcd import Etcd
from accord.coordinator.substrate.txn import Txn, batch_of, shape


@dataclass(frozen=True, slots=True)
class Committed:
    """One sub-transaction's outcome and the revision of the batch it was part of."""

    response: Any  # etcd TxnResponse of the sub-transaction
    revision: int


ETCD_MAX_TXN_OPS = 128
RECENT_BATCHES = 1_000


@dataclass(slots=True)
class _Pending:
    txn: Txn
    keys: frozenset[bytes]
    size: int
    weight: int
    retry: bool
    deadline: float | None
    future: asyncio.Future[Committed] = field(repr=False)
    link: SpanContext | None = None  # the writing call's span (traces exported only)


class GroupCommitter:
    def __init__(
        self,
        etcd: Etcd,
        *,
        max_batch: int = 100,
        max_batch_bytes: int = 1024 * 1024,
        max_in_flight: int = 1,
    ) -> None:
        self._etcd = etcd
        self._max_batch = max_batch
        self._max_bytes = max_batch_bytes
        self._max_in_flight = max_in_flight
        self._queue: deque[_Pending] = deque()
        self._in_flight = 0
        self._in_flight_keys: set[bytes] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._kick_pending = False
        self.batches = 0
        self.writes = 0
        # The sizes of the most recent batches (`accord status`).
        self.recent_sizes: deque[int] = deque(maxlen=RECENT_BATCHES)

    async def commit(self, request: Txn, *, retry: bool, stable: Iterable[bytes] = ()) -> Committed:
        """Commit one sub-transaction. retry: repeating it after an ambiguous failure is
        safe (it is idempotent, or guarded by its request_id record). stable: keys it only
        compares or reads that no batched write ever changes (a session's alive key, a
        vote's record, a lease's record: written only by transactions sent straight to
        etcd), so they need not keep it apart from other writes that read them too."""
        call = calls.current.get()
        future: asyncio.Future[Committed] = asyncio.get_running_loop().create_future()
        keys, heaviest_path = shape(request)
        pending = _Pending(
            request,
            frozenset(keys.difference(stable)),
            request.ByteSize(),
            heaviest_path,
            retry,
            call.deadline,
            future,
            None if tracing.STATE.tracer is None else tracing.current_link(),
        )
        self._queue.append(pending)
        self._soon()
        return await future

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(Internal("coordinator is shutting down"))
        self._queue.clear()

    def _soon(self) -> None:
        """Kick once every write arriving in this pass of the event loop has queued: the
        operations of one KV.Batch, started together, then share one etcd transaction
        instead of the first going alone."""
        if not self._kick_pending:
            self._kick_pending = True
            asyncio.get_running_loop().call_soon(self._kick_now)

    def _kick_now(self) -> None:
        self._kick_pending = False
        self._kick()

    def _kick(self) -> None:
        while self._queue and self._in_flight < self._max_in_flight:
            batch = self._take_batch()
            if not batch:
                return
            self._in_flight += 1
            for pending in batch:
                self._in_flight_keys |= pending.keys
            task = asyncio.create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take_batch(self) -> list[_Pending]:
        now = time.monotonic()
        batch: list[_Pending] = []
        taken: set[bytes] = set()
        # Keys of writes in flight or left behind: later writes to them must wait too.
        blocked: set[bytes] = set(self._in_flight_keys)
        size = 0
        heaviest = 0
        kept: deque[_Pending] = deque()
        while self._queue:
            pending = self._queue.popleft()
            if pending.future.done():  # the caller went away
                continue
            if pending.deadline is not None and pending.deadline <= now:
                pending.future.set_exception(
                    DeadlineExceeded("the call's deadline expired before its write was sent")
                )
                continue
            heavier = max(heaviest, pending.weight)
            fits = not batch or (
                len(batch) < self._max_batch
                and size + pending.size <= self._max_bytes
                and len(batch) + 1 + heavier <= ETCD_MAX_TXN_OPS
            )
            if fits and taken.isdisjoint(pending.keys) and blocked.isdisjoint(pending.keys):
                batch.append(pending)
                taken |= pending.keys
                size += pending.size
                heaviest = heavier
            else:
                kept.append(pending)
                blocked |= pending.keys
        self._queue = kept
        return batch

    async def _send(self, batch: list[_Pending]) -> None:
        try:
            if tracing.STATE.tracer is None:
                await self._send_batch(batch)
            else:
                with tracing.batch_span([p.link for p in batch], len(batch)):
                    await self._send_batch(batch)
        finally:
            self._in_flight -= 1
            for pending in batch:
                self._in_flight_keys -= pending.keys
            self._kick()

    async def _send_batch(self, batch: list[_Pending]) -> None:
        if len(batch) == 1:
            await self._send_one(batch[0])
        else:
            await self._send_many(batch)

    async def _send_one(self, pending: _Pending) -> None:
        token = calls.current.set(_call_for([pending]))
        try:
            response = await self._etcd.txn(pending.txn, retry=pending.retry)
        except AccordError as exc:
            _fail(pending, exc)
            return
        finally:
            calls.current.reset(token)
        self.batches += 1
        self.writes += 1
        self.recent_sizes.append(1)
        accord_metrics.batch_committed(1)
        if not pending.future.done():
            pending.future.set_result(Committed(response, response.header.revision))

    async def _send_many(self, batch: list[_Pending]) -> None:
        outer = batch_of([p.txn for p in batch])
        token = calls.current.set(_call_for(batch))
        try:
            response = await self._etcd.txn(outer, retry=all(p.retry for p in batch))
        except AccordError as exc:
            if isinstance(exc, EtcdRefused | LeaseNotFound):
                # Refused whole before anything applied: give each write its own verdict.
                await asyncio.gather(*(self._send_one(p) for p in batch))
                return
            for pending in batch:
                _fail(pending, exc)
            return
        finally:
            calls.current.reset(token)
        self.batches += 1
        self.writes += len(batch)
        self.recent_sizes.append(len(batch))
        accord_metrics.batch_committed(len(batch))
        revision = response.header.revision
        for pending, op in zip(batch, response.responses, strict=True):
            if not pending.future.done():
                pending.future.set_result(Committed(op.response_txn, revision))


def _call_for(batch: list[_Pending]) -> calls.Call:
    """A batch may take as long as its most patient member allows."""
    deadlines = [p.deadline for p in batch]
    deadline = (
        None if any(d is None for d in deadlines) else max(d for d in deadlines if d is not None)
    )
    return calls.Call(namespace="", agent_id="", trace_id="group-commit", deadline=deadline)


def _fail(pending: _Pending, exc: AccordError) -> None:
    if not pending.future.done():
        pending.future.set_exception(exc)
