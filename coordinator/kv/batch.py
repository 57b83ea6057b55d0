"""KV.Batch: many independent Gets, Puts, Deletes and Txns in one message.

The per-message cost of a gRPC call is most of what a small KV operation costs here
(facts.md); a batch pays it once for all of its operations. The operations run
concurrently, each under its own copy of the call (its own deadline), through the same
method its unary call uses, after the same per-operation gate (batch_gate.py: role,
quota, audit). Their writes meet in group commit, so a batch of n CASes is typically one
etcd transaction.

An operation's outcome is what its unary call would have answered, or that call's error
as a google.rpc.Status with the same details. The response stays under 3 MiB, so a
standard client can always read it: past that, values are left out (value_omitted),
last operations first; each is one the caller can read back (the client does).

Error handling: more than MAX_OPS operations is InvalidArgument for the whole batch, and
none runs; anything else is one operation's outcome, never the batch's: an unset or
unknown operation, a negative timeout, a refusal, an unexpected failure (Internal,
logged).
"""

from __future__ import annotations

import time
from typing import Protocol

from accord.coordinator.auth.roles import method_name
from accord.coordinator.batch_gate import Operation, OpGate, each
from accord.coordinator.substrate import calls
from accord.coordinator.substrate.errors import invalid
from accord.coordinator.substrate.limits import require_counts
from accord.coordinator.substrate.pages import MAX_PAGE_BYTES
from accord.v1 import kv_pb2

MAX_OPS = 256
GET, PUT, DELETE, TXN = (method_name(kv_pb2, "KV", m) for m in ("Get", "Put", "Delete", "Txn"))


class Answers(Protocol):
    """The unary answers a batch reuses (KVService)."""

    async def get(self, request: kv_pb2.GetRequest) -> kv_pb2.GetResponse: ...
    async def put(self, request: kv_pb2.PutRequest) -> kv_pb2.PutResponse: ...
    async def delete(self, request: kv_pb2.DeleteRequest) -> kv_pb2.DeleteResponse: ...
    async def txn(self, request: kv_pb2.TxnRequest) -> kv_pb2.TxnResponse: ...


async def run(
    request: kv_pb2.BatchRequest, answers: Answers, gate: OpGate
) -> tuple[list[kv_pb2.BatchOutcome], int]:
    """Every operation's outcome, in order, and the highest revision any of them saw."""
    require_counts(("ops", len(request.ops), MAX_OPS))
    call = calls.current.get()
    arrived = time.monotonic()

    async def one(index: int) -> kv_pb2.BatchOutcome:
        op = request.ops[index]
        kind = op.WhichOneof("op")
        traced = op.trace_context if op.HasField("trace_context") else None
        envelope = Operation(call, arrived, f"ops[{index}]", op.timeout_ms, op.agent_id, traced)
        if kind == "get":
            gate.enter(envelope, GET, op.get)
            return kv_pb2.BatchOutcome(get=await answers.get(op.get))
        if kind == "put":
            gate.enter(envelope, PUT, op.put)
            return kv_pb2.BatchOutcome(put=await answers.put(op.put))
        if kind == "delete":
            gate.enter(envelope, DELETE, op.delete)
            return kv_pb2.BatchOutcome(delete=await answers.delete(op.delete))
        if kind == "txn":
            gate.enter(envelope, TXN, op.txn)
            return kv_pb2.BatchOutcome(txn=await answers.txn(op.txn))
        raise invalid(f"ops[{index}]", "must be one of get, put, delete, txn")

    outcomes = await each(len(request.ops), one, lambda status: kv_pb2.BatchOutcome(error=status))
    fit(outcomes)
    return outcomes, max((_revision(o) for o in outcomes), default=0)


def _revision(outcome: kv_pb2.BatchOutcome) -> int:
    kind = outcome.WhichOneof("outcome")
    if kind == "get":
        return outcome.get.header.revision
    if kind == "put":
        return outcome.put.header.revision
    if kind == "delete":
        return outcome.delete.header.revision
    if kind == "txn":
        return outcome.txn.header.revision
    return 0


def fit(outcomes: list[kv_pb2.BatchOutcome], limit: int = MAX_PAGE_BYTES) -> None:
    """Leave values out, last operations first, until the outcomes fit limit bytes (errors
    and everything but values always stay: at most 256 of each, far below the limit)."""
    total = sum(o.ByteSize() for o in outcomes)
    for outcome in reversed(outcomes):
        if total <= limit:
            return
        before = outcome.ByteSize()
        if _leave_values_out(outcome):
            outcome.value_omitted = True
            total -= before - outcome.ByteSize()


def _leave_values_out(outcome: kv_pb2.BatchOutcome) -> bool:
    """Empty the outcome's values; whether there was any."""
    kind = outcome.WhichOneof("outcome")
    if kind == "txn":
        emptied = False
        for result in outcome.txn.results:
            if result.kv.value:
                result.kv.value = b""
                result.value_omitted = emptied = True
        return emptied
    kv = (
        outcome.get.kv
        if kind == "get"
        else outcome.put.kv
        if kind == "put"
        else outcome.delete.prev_kv
        if kind == "delete"
        else None
    )
    if kv is None or not kv.value:
        return False
    kv.value = b""
    return True
