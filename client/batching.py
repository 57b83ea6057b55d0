"""Client-side coalescing of KV operations into KV.Batch calls.

A call's cost here is mostly per message, not per operation (facts.md), so many agents
sharing one client should share messages too. A KV operation made while nothing waits
goes out at once as its own unary call: nothing is ever held back for a timer. While
`max_in_flight` calls are already out, further operations queue; each time one comes
back, everything queued (up to `max_ops` operations and `max_bytes`) leaves together in
one KV.Batch. Under load, batches grow by themselves; alone, an agent sees the unary
call's latency.

Each operation keeps its unary semantics: its own deadline (sent along as the
operation's timeout; the caller is answered DeadlineExceededError at that time even if
the batch is still out), its own typed error (the batch answers a google.rpc.Status per
operation), retries (an operation refused with UNAVAILABLE, or with pushback, goes again
alone through Transport.unary, which retries it as any unary call), and cancellation (a
cancelled caller's queued operation is dropped before sending; once sent, like a unary
call, it may still apply). Every write the client sends carries a request_id, so a whole
batch is safe to send again after a replica failed to answer.

A replica that does not know KV.Batch (UNIMPLEMENTED) turns coalescing off for this
client: its operations are then sent one by one.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from accord.client import calls
from accord.client.calls import Req, Resp, Unary
from accord.client.errors import (
    AccordError,
    DeadlineExceededError,
    QuotaExceededError,
    from_status,
)
from accord.client.transport import Transport
from accord.v1 import kv_pb2


@dataclass(frozen=True, kw_only=True)
class BatchPolicy:
    """How KV operations share KV.Batch calls (AsyncClient(batching=...); None: never)."""

    # Operations per batch (a replica takes at most 256).
    max_ops: int = 128
    # Request bytes per batch: well under the 4 MiB a replica accepts in one message.
    max_bytes: int = 2 * 1024 * 1024
    # Calls out at once before operations queue: two keep the client, the replica and etcd
    # busy together while a batch is being answered.
    max_in_flight: int = 2


@dataclass(slots=True)
class _Queued:
    op: kv_pb2.BatchOp
    size: int
    deadline: float
    via: Transport  # whose identity the operation carries
    future: asyncio.Future[kv_pb2.BatchOutcome] = field(repr=False)


class Coalescer:
    def __init__(self, policy: BatchPolicy | None) -> None:
        self.enabled = policy is not None
        policy = policy or BatchPolicy()
        self._max_ops = max(1, min(policy.max_ops, 256))
        self._max_bytes = policy.max_bytes
        self._max_in_flight = max(1, policy.max_in_flight)
        self._queue: deque[_Queued] = deque()
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0  # KV.Batch calls sent (tests and benchmarks read it)

    async def get(
        self, request: kv_pb2.GetRequest, timeout: float | None, via: Transport
    ) -> kv_pb2.GetResponse:
        response = await self._send(
            via, calls.KV_GET, request, lambda: kv_pb2.BatchOp(get=request), _pick_get, timeout
        )
        if not isinstance(response, kv_pb2.BatchOutcome):
            return response
        if response.value_omitted:  # too large for the batch: read alone, same revision
            alone = kv_pb2.GetRequest(key=request.key, revision=response.get.kv.mod_revision)
            return await via.unary(calls.KV_GET, alone, timeout=timeout)
        return response.get

    async def put(
        self, request: kv_pb2.PutRequest, timeout: float | None, via: Transport
    ) -> kv_pb2.PutResponse:
        response = await self._send(
            via, calls.KV_PUT, request, lambda: kv_pb2.BatchOp(put=request), _pick_put, timeout
        )
        if not isinstance(response, kv_pb2.BatchOutcome):
            return response
        if response.value_omitted:
            response.put.kv.value = request.value  # the value sent
        return response.put

    async def delete(
        self, request: kv_pb2.DeleteRequest, timeout: float | None, via: Transport
    ) -> kv_pb2.DeleteResponse:
        response = await self._send(
            via,
            calls.KV_DELETE,
            request,
            lambda: kv_pb2.BatchOp(delete=request),
            _pick_delete,
            timeout,
        )
        if not isinstance(response, kv_pb2.BatchOutcome):
            return response
        deleted = response.delete
        if response.value_omitted:  # read the deleted value as of just before
            before = kv_pb2.GetRequest(key=request.key, revision=deleted.header.revision - 1)
            try:
                found = await via.unary(calls.KV_GET, before, timeout=timeout)
            except AccordError:
                return deleted  # compacted since: the value stays out
            if found.found and found.kv.mod_revision == deleted.prev_kv.mod_revision:
                deleted.prev_kv.value = found.kv.value
        return deleted

    async def txn(
        self, request: kv_pb2.TxnRequest, timeout: float | None, via: Transport
    ) -> kv_pb2.TxnResponse:
        # A Txn's results say themselves which values were left out (the caller fills them).
        response = await self._send(
            via, calls.KV_TXN, request, lambda: kv_pb2.BatchOp(txn=request), _pick_txn, timeout
        )
        return response if not isinstance(response, kv_pb2.BatchOutcome) else response.txn

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for queued in self._queue:
            if not queued.future.done():
                queued.future.cancel()
        self._queue.clear()

    async def _send(
        self,
        via: Transport,
        call: Unary[Req, Resp],
        request: Req,
        op: Callable[[], kv_pb2.BatchOp],
        pick: Callable[[kv_pb2.BatchOutcome], bool],
        timeout: float | None,
    ) -> Resp | kv_pb2.BatchOutcome:
        """request alone as call (its response), or queued into a batch (its outcome)."""
        seconds = via.timeout if timeout is None else timeout
        if not self.enabled or (not self._queue and self._in_flight < self._max_in_flight):
            self._in_flight += 1
            try:
                return await via.unary(call, request, timeout=seconds)
            finally:
                self._in_flight -= 1
                self._flush()
        deadline = time.monotonic() + seconds
        queued = _Queued(op(), 0, deadline, via, asyncio.get_running_loop().create_future())
        queued.size = queued.op.ByteSize()
        self._queue.append(queued)
        expiry = asyncio.get_running_loop().call_later(seconds, _expire, queued.future)
        try:
            outcome = await queued.future
        except AccordError:
            if self.enabled or deadline <= time.monotonic():
                raise
            # The replica turned out to have no KV.Batch: this one goes alone.
            return await via.unary(call, request, timeout=deadline - time.monotonic())
        finally:
            expiry.cancel()
        if outcome.HasField("error"):
            error = from_status(outcome.error)
            if _again_alone(error):  # retried as a unary call is, within the deadline
                left = deadline - time.monotonic()
                if left > 0:
                    return await via.unary(call, request, timeout=left)
            raise error
        if not pick(outcome):  # the replica answered another kind of outcome
            raise AccordError("the replica's batch answered the wrong kind of outcome")
        return outcome

    def _flush(self) -> None:
        """Send what is queued, while there is room in flight."""
        while self._queue and self._in_flight < self._max_in_flight:
            batch = self._take()
            if not batch:
                return
            self._in_flight += 1
            task = asyncio.create_task(self._batch(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[_Queued]:
        """The next batch: the first operation queued sends it as its agent; others name
        theirs (an operation acting as the default agent only shares a batch sent so)."""
        batch: list[_Queued] = []
        kept: deque[_Queued] = deque()
        size = 0
        while self._queue and len(batch) < self._max_ops:
            queued = self._queue.popleft()
            if queued.future.done():  # its caller went away, or its deadline passed
                continue
            if batch and (
                size + queued.size > self._max_bytes
                or (not queued.via.agent_id and batch[0].via.agent_id)
            ):
                kept.append(queued)
                if size + queued.size > self._max_bytes:
                    break
                continue
            batch.append(queued)
            size += queued.size
        kept.extend(self._queue)
        self._queue = kept
        return batch

    async def _batch(self, batch: list[_Queued]) -> None:
        try:
            now = time.monotonic()
            lead = batch[0].via
            for queued in batch:
                queued.op.timeout_ms = max(1, int((queued.deadline - now) * 1000))
                if queued.via.agent_id != lead.agent_id:
                    queued.op.agent_id = queued.via.agent_id
            request = kv_pb2.BatchRequest(ops=[q.op for q in batch])
            timeout = max(q.deadline for q in batch) - now
            try:
                response = await lead.unary(calls.KV_BATCH, request, timeout=timeout)
            except AccordError as error:
                if error.code == grpc.StatusCode.UNIMPLEMENTED:
                    self.enabled = False  # an older replica: one call per operation
                for queued in batch:
                    if not queued.future.done():
                        queued.future.set_exception(copy.copy(error))
                return
            self.batches += 1
            for queued, outcome in zip(batch, response.outcomes, strict=False):
                if not queued.future.done():
                    queued.future.set_result(outcome)
            for queued in batch[len(response.outcomes) :]:
                if not queued.future.done():
                    queued.future.set_exception(AccordError("the batch's answer lacked it"))
        finally:
            self._in_flight -= 1
            self._flush()


def _expire(future: asyncio.Future[kv_pb2.BatchOutcome]) -> None:
    if not future.done():
        future.set_exception(
            DeadlineExceededError("the call's deadline expired before its batch was answered")
        )


def _again_alone(error: AccordError) -> bool:
    """An operation the replica could not run now, which the unary path retries."""
    return error.code == grpc.StatusCode.UNAVAILABLE or isinstance(error, QuotaExceededError)


def _pick_get(outcome: kv_pb2.BatchOutcome) -> bool:
    return outcome.HasField("get")


def _pick_put(outcome: kv_pb2.BatchOutcome) -> bool:
    return outcome.HasField("put")


def _pick_delete(outcome: kv_pb2.BatchOutcome) -> bool:
    return outcome.HasField("delete")


def _pick_txn(outcome: kv_pb2.BatchOutcome) -> bool:
    return outcome.HasField("txn")
