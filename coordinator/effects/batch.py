"""Effects.BeginMany and Effects.CompleteMany: many Begins (or Completes) in one message,
each with its own outcome.

The tool calls of one runtime's agents pay one call for all their Begins and one for all
their Completes. Each operation runs through the same method as its unary call, in its
own task, under its own deadline and agent, after the same gate (batch_gate.py); their
etcd transactions meet in group commit. An effect is still claimed once: operations of
one batch are as concurrent as separate calls, and each Begin's own conditional write
settles races. A Begin that would wait for a holder (wait_ms > 0) is refused here, so a
batch is never held up by one effect's executor: the client sends such a Begin alone.

Error handling: more than MAX_OPS operations is InvalidArgument for the whole batch, and
none runs; a waiting Begin is InvalidArgument for that Begin; anything else is one
operation's outcome (its Status), never the batch's.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from accord.coordinator.auth.roles import method_name
from accord.coordinator.batch_gate import Operation, OpGate, each
from accord.coordinator.substrate import calls
from accord.coordinator.substrate.errors import invalid
from accord.coordinator.substrate.limits import require_counts
from accord.v1 import effects_pb2

MAX_OPS = 256
BEGIN = method_name(effects_pb2, "Effects", "Begin")
COMPLETE = method_name(effects_pb2, "Effects", "Complete")


async def begin_many(
    request: effects_pb2.BeginManyRequest,
    begin: Callable[[effects_pb2.BeginRequest], Awaitable[effects_pb2.BeginResponse]],
    gate: OpGate,
) -> tuple[list[effects_pb2.BeginManyOutcome], int]:
    """Every Begin's outcome, in order, and the highest revision any of them saw."""
    require_counts(("begins", len(request.begins), MAX_OPS))
    call = calls.current.get()
    arrived = time.monotonic()

    async def one(index: int) -> effects_pb2.BeginManyOutcome:
        op = request.begins[index]
        field = f"begins[{index}]"
        traced = op.trace_context if op.HasField("trace_context") else None
        gate.enter(
            Operation(call, arrived, field, op.timeout_ms, op.agent_id, traced), BEGIN, op.begin
        )
        if op.begin.wait_ms:
            raise invalid(
                f"{field}.begin.wait_ms", "a Begin that waits is sent alone, not in a BeginMany"
            )
        return effects_pb2.BeginManyOutcome(begin=await begin(op.begin))

    outcomes = await each(
        len(request.begins), one, lambda status: effects_pb2.BeginManyOutcome(error=status)
    )
    revision = max((o.begin.header.revision for o in outcomes if o.HasField("begin")), default=0)
    return outcomes, revision


async def complete_many(
    request: effects_pb2.CompleteManyRequest,
    complete: Callable[[effects_pb2.CompleteRequest], Awaitable[effects_pb2.CompleteResponse]],
    gate: OpGate,
) -> tuple[list[effects_pb2.CompleteManyOutcome], int]:
    """Every Complete's outcome, in order, and the highest revision any of them saw."""
    require_counts(("completes", len(request.completes), MAX_OPS))
    call = calls.current.get()
    arrived = time.monotonic()

    async def one(index: int) -> effects_pb2.CompleteManyOutcome:
        op = request.completes[index]
        traced = op.trace_context if op.HasField("trace_context") else None
        envelope = Operation(
            call, arrived, f"completes[{index}]", op.timeout_ms, op.agent_id, traced
        )
        gate.enter(envelope, COMPLETE, op.complete)
        return effects_pb2.CompleteManyOutcome(complete=await complete(op.complete))

    outcomes = await each(
        len(request.completes), one, lambda status: effects_pb2.CompleteManyOutcome(error=status)
    )
    revision = max(
        (o.complete.header.revision for o in outcomes if o.HasField("complete")), default=0
    )
    return outcomes, revision
