"""Client-side coalescing: KV operations into KV.Batch calls, Casts into Votes.CastMany,
and effect Begins and Completes into Effects.BeginMany and Effects.CompleteMany (one
generic Coalescer, one Lane per batch call).

A call's cost here is mostly per message, not per operation (facts.md), so many agents
sharing one client should share messages too. An operation made while nothing waits
goes out at once as its own unary call: nothing is ever held back for a timer. While
`max_in_flight` calls are already out, further operations queue; each time one comes
back, everything queued (up to `max_ops` operations and `max_bytes`) leaves together in
one batch. Under load, batches grow by themselves; alone, an agent sees the unary call's
latency. Views of other agents (AsyncKV.as_agent, AsyncVotes.as_agent) share their
client's batches: each operation names its agent (BatchOp.agent_id, CastOp.agent_id,
BeginOp.agent_id, CompleteOp.agent_id).
A batch call carries the OpenTelemetry context its first operation was made in; an
operation made in another names its own (BatchOp.trace_context), so each write records
the context of the code that made it.

Each operation keeps its unary semantics: its own deadline (sent along as the
operation's timeout; the caller is answered DeadlineExceededError at that time even if
the batch is still out), its own typed error (the batch answers a google.rpc.Status per
operation), retries (an operation refused with UNAVAILABLE, or with pushback, goes again
alone through Transport.unary, which retries it as any unary call), and cancellation (a
cancelled caller's queued operation is dropped before sending; once sent, like a unary
call, it may still apply). Every write the client sends carries a request_id, so a whole
batch is safe to send again after a replica failed to answer.

A replica that does not know the batch call (UNIMPLEMENTED) turns that coalescer off for
this client: its operations are then sent one by one.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import grpc
from google.rpc import status_pb2
from opentelemetry import context as otel_context

from accord.client import calls, deadlines
from accord.client.calls import Req, Resp, Unary
from accord.client.errors import (
    AccordError,
    DeadlineExceededError,
    QuotaExceededError,
    from_status,
)
from accord.client.propagation import outgoing
from accord.client.transport import Transport
from accord.v1 import common_pb2, effects_pb2, kv_pb2, votes_pb2


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


Op = TypeVar("Op", kv_pb2.BatchOp, votes_pb2.CastOp, effects_pb2.BeginOp, effects_pb2.CompleteOp)
Out = TypeVar(
    "Out",
    kv_pb2.BatchOutcome,
    votes_pb2.CastOutcome,
    effects_pb2.BeginManyOutcome,
    effects_pb2.CompleteManyOutcome,
)
BatchReq = TypeVar("BatchReq")
BatchResp = TypeVar("BatchResp")


@dataclass(frozen=True, slots=True)
class Lane(Generic[Op, Out, BatchReq, BatchResp]):
    """One batch RPC: how operations go into its request and outcomes come out."""

    call: Unary[BatchReq, BatchResp]
    request: Callable[[list[Op]], BatchReq]
    outcomes: Callable[[BatchResp], Sequence[Out]]
    error: Callable[[Out], status_pb2.Status | None]


@dataclass(slots=True)
class _Queued(Generic[Op, Out]):
    op: Op
    size: int
    deadline: float
    via: Transport  # whose identity the operation carries
    future: asyncio.Future[Out] = field(repr=False)
    # The OpenTelemetry context it was made in, its ambient deadline as baggage
    # (client/deadlines.py): a batch it leads carries it.
    trace: otel_context.Context = field(repr=False, default_factory=deadlines.otel_context)


class Coalescer(Generic[Op, Out, BatchReq, BatchResp]):
    def __init__(
        self, policy: BatchPolicy | None, lane: Lane[Op, Out, BatchReq, BatchResp]
    ) -> None:
        self._lane: Lane[Op, Out, BatchReq, BatchResp] = lane
        self.enabled = policy is not None
        policy = policy or BatchPolicy()
        self._max_ops = max(1, min(policy.max_ops, 256))
        self._max_bytes = policy.max_bytes
        self._max_in_flight = max(1, policy.max_in_flight)
        self._queue: deque[_Queued[Op, Out]] = deque()
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0  # batch calls sent (tests and benchmarks read it)

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
        op: Callable[[], Op],
        timeout: float | None,
    ) -> Resp | Out:
        """request alone as call (its response), or queued into a batch (its outcome)."""
        seconds = deadlines.cap(via.timeout if timeout is None else timeout)
        if seconds <= 0:
            raise DeadlineExceededError("the ambient deadline had passed: the call was not sent")
        if not self.enabled or (not self._queue and self._in_flight < self._max_in_flight):
            self._in_flight += 1
            try:
                return await via.unary(call, request, timeout=seconds)
            finally:
                self._in_flight -= 1
                self._flush()
        deadline = time.monotonic() + seconds
        made = op()
        queued: _Queued[Op, Out] = _Queued(
            made, made.ByteSize(), deadline, via, asyncio.get_running_loop().create_future()
        )
        self._queue.append(queued)
        expiry = asyncio.get_running_loop().call_later(seconds, _expire, queued.future)
        try:
            outcome = await queued.future
        except AccordError:
            if self.enabled or deadline <= time.monotonic():
                raise
            # The replica turned out to have no such batch call: this one goes alone.
            return await via.unary(call, request, timeout=deadline - time.monotonic())
        finally:
            expiry.cancel()
        status = self._lane.error(outcome)
        if status is not None:
            error = from_status(status)
            if _again_alone(error):  # retried as a unary call is, within the deadline
                left = deadline - time.monotonic()
                if left > 0:
                    return await via.unary(call, request, timeout=left)
            raise error
        return outcome

    def _flush(self) -> None:
        """Send what is queued, while there is room in flight."""
        while self._queue and self._in_flight < self._max_in_flight:
            batch = self._take()
            if not batch:
                return
            self._in_flight += 1
            # Each operation's own deadline (the ambient one included) is in the batch: the
            # batch call is not bounded by the ambient deadline of whoever sent it.
            task = asyncio.create_task(self._batch(batch), context=deadlines.detached())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[_Queued[Op, Out]]:
        """The next batch: the first operation queued sends it as its agent; others name
        theirs (an operation acting as the default agent only shares a batch sent so)."""
        batch: list[_Queued[Op, Out]] = []
        kept: deque[_Queued[Op, Out]] = deque()
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

    async def _batch(self, batch: list[_Queued[Op, Out]]) -> None:
        otel_context.attach(batch[0].trace)  # this task's own context: no detach needed
        try:
            now = time.monotonic()
            lead = batch[0].via
            lead_trace = _carried(batch[0].trace)
            for queued in batch:
                queued.op.timeout_ms = max(1, int((queued.deadline - now) * 1000))
                if queued.via.agent_id != lead.agent_id:
                    queued.op.agent_id = queued.via.agent_id
                if queued.trace is not batch[0].trace:  # each write records its own context
                    own = _carried(queued.trace)
                    if own != lead_trace:  # empty: it has none, unlike the call
                        queued.op.trace_context.CopyFrom(own)
            request = self._lane.request([q.op for q in batch])
            timeout = max(q.deadline for q in batch) - now
            try:
                response = await lead.unary(self._lane.call, request, timeout=timeout)
            except AccordError as error:
                if error.code == grpc.StatusCode.UNIMPLEMENTED:
                    self.enabled = False  # an older replica: one call per operation
                for queued in batch:
                    if not queued.future.done():
                        queued.future.set_exception(copy.copy(error))
                return
            self.batches += 1
            outcomes = self._lane.outcomes(response)
            for queued, outcome in zip(batch, outcomes, strict=False):
                if not queued.future.done():
                    queued.future.set_result(outcome)
            for queued in batch[len(outcomes) :]:
                if not queued.future.done():
                    queued.future.set_exception(AccordError("the batch's answer lacked it"))
        finally:
            self._in_flight -= 1
            self._flush()


def _carried(context: otel_context.Context) -> common_pb2.TraceContext:
    """The W3C trace context a call made in context carries (empty: none)."""
    carrier = dict(outgoing((), context))
    return common_pb2.TraceContext(
        traceparent=carrier.get("traceparent", ""),
        tracestate=carrier.get("tracestate", ""),
        baggage=carrier.get("baggage", ""),
    )


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(
            DeadlineExceededError("the call's deadline expired before its batch was answered")
        )


def _again_alone(error: AccordError) -> bool:
    """An operation the replica could not run now, which the unary path retries."""
    return error.code == grpc.StatusCode.UNAVAILABLE or isinstance(error, QuotaExceededError)


def _kv_error(outcome: kv_pb2.BatchOutcome) -> status_pb2.Status | None:
    return outcome.error if outcome.HasField("error") else None


def _cast_error(outcome: votes_pb2.CastOutcome) -> status_pb2.Status | None:
    return outcome.error if outcome.HasField("error") else None


def _begin_error(outcome: effects_pb2.BeginManyOutcome) -> status_pb2.Status | None:
    return outcome.error if outcome.HasField("error") else None


def _complete_error(outcome: effects_pb2.CompleteManyOutcome) -> status_pb2.Status | None:
    return outcome.error if outcome.HasField("error") else None


KV_LANE: Lane[kv_pb2.BatchOp, kv_pb2.BatchOutcome, kv_pb2.BatchRequest, kv_pb2.BatchResponse] = (
    Lane(calls.KV_BATCH, lambda ops: kv_pb2.BatchRequest(ops=ops), lambda r: r.outcomes, _kv_error)
)
CAST_LANE: Lane[
    votes_pb2.CastOp, votes_pb2.CastOutcome, votes_pb2.CastManyRequest, votes_pb2.CastManyResponse
] = Lane(
    calls.VOTES_CAST_MANY,
    lambda ops: votes_pb2.CastManyRequest(casts=ops),
    lambda r: r.outcomes,
    _cast_error,
)

BEGIN_LANE: Lane[
    effects_pb2.BeginOp,
    effects_pb2.BeginManyOutcome,
    effects_pb2.BeginManyRequest,
    effects_pb2.BeginManyResponse,
] = Lane(
    calls.EFFECTS_BEGIN_MANY,
    lambda ops: effects_pb2.BeginManyRequest(begins=ops),
    lambda r: r.outcomes,
    _begin_error,
)
COMPLETE_LANE: Lane[
    effects_pb2.CompleteOp,
    effects_pb2.CompleteManyOutcome,
    effects_pb2.CompleteManyRequest,
    effects_pb2.CompleteManyResponse,
] = Lane(
    calls.EFFECTS_COMPLETE_MANY,
    lambda ops: effects_pb2.CompleteManyRequest(completes=ops),
    lambda r: r.outcomes,
    _complete_error,
)


class KVBatches(
    Coalescer[kv_pb2.BatchOp, kv_pb2.BatchOutcome, kv_pb2.BatchRequest, kv_pb2.BatchResponse]
):
    """Get, Put, Delete and Txn through KV.Batch; a value left out of a full batch is
    filled in (read alone, or the value sent)."""

    def __init__(self, policy: BatchPolicy | None) -> None:
        super().__init__(policy, KV_LANE)

    async def get(
        self, request: kv_pb2.GetRequest, timeout: float | None, via: Transport
    ) -> kv_pb2.GetResponse:
        response = await self._send(
            via, calls.KV_GET, request, lambda: kv_pb2.BatchOp(get=request), timeout
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
            via, calls.KV_PUT, request, lambda: kv_pb2.BatchOp(put=request), timeout
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
            via, calls.KV_DELETE, request, lambda: kv_pb2.BatchOp(delete=request), timeout
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
            via, calls.KV_TXN, request, lambda: kv_pb2.BatchOp(txn=request), timeout
        )
        return response if not isinstance(response, kv_pb2.BatchOutcome) else response.txn


class CastBatches(
    Coalescer[
        votes_pb2.CastOp,
        votes_pb2.CastOutcome,
        votes_pb2.CastManyRequest,
        votes_pb2.CastManyResponse,
    ]
):
    """Votes.Cast through Votes.CastMany."""

    def __init__(self, policy: BatchPolicy | None) -> None:
        super().__init__(policy, CAST_LANE)

    async def cast(
        self, request: votes_pb2.CastRequest, timeout: float | None, via: Transport
    ) -> votes_pb2.CastResponse:
        response = await self._send(
            via, calls.VOTES_CAST, request, lambda: votes_pb2.CastOp(cast=request), timeout
        )
        return response.cast if isinstance(response, votes_pb2.CastOutcome) else response


class BeginBatches(
    Coalescer[
        effects_pb2.BeginOp,
        effects_pb2.BeginManyOutcome,
        effects_pb2.BeginManyRequest,
        effects_pb2.BeginManyResponse,
    ]
):
    """Effects.Begin through Effects.BeginMany (only a Begin that does not wait)."""

    def __init__(self, policy: BatchPolicy | None) -> None:
        super().__init__(policy, BEGIN_LANE)

    async def begin(
        self, request: effects_pb2.BeginRequest, timeout: float | None, via: Transport
    ) -> effects_pb2.BeginResponse:
        if request.wait_ms:  # a BeginMany refuses it: it would hold the batch up
            return await via.unary(calls.EFFECTS_BEGIN, request, timeout=timeout)
        response = await self._send(
            via, calls.EFFECTS_BEGIN, request, lambda: effects_pb2.BeginOp(begin=request), timeout
        )
        return response.begin if isinstance(response, effects_pb2.BeginManyOutcome) else response


class CompleteBatches(
    Coalescer[
        effects_pb2.CompleteOp,
        effects_pb2.CompleteManyOutcome,
        effects_pb2.CompleteManyRequest,
        effects_pb2.CompleteManyResponse,
    ]
):
    """Effects.Complete through Effects.CompleteMany."""

    def __init__(self, policy: BatchPolicy | None) -> None:
        super().__init__(policy, COMPLETE_LANE)

    async def complete(
        self, request: effects_pb2.CompleteRequest, timeout: float | None, via: Transport
    ) -> effects_pb2.CompleteResponse:
        response = await self._send(
            via,
            calls.EFFECTS_COMPLETE,
            request,
            lambda: effects_pb2.CompleteOp(complete=request),
            timeout,
        )
        if isinstance(response, effects_pb2.CompleteManyOutcome):
            return response.complete
        return response
