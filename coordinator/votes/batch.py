"""Votes.CastMany: many Casts in one message, each with its own outcome.

The agents of one runtime (or one agent voting in many votes) pay one call for all their
ballots. Each Cast runs through the same method as a lone Cast, in its own task, under
its own deadline and agent, after the same gate (batch_gate.py); the ballots meet in
group commit. A vote is still decided exactly once: casts of one batch are as
concurrent as separate calls, and the decision's own transaction settles races.

Error handling: more than MAX_CASTS is InvalidArgument for the whole batch, and none is
cast; anything else is one Cast's outcome (its Status), never the batch's.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from accord.coordinator.auth.roles import method_name
from accord.coordinator.batch_gate import Operation, OpGate, each
from accord.coordinator.substrate import calls
from accord.coordinator.substrate.limits import require_counts
from accord.v1 import votes_pb2

MAX_CASTS = 256
CAST = method_name(votes_pb2, "Votes", "Cast")


async def run(
    request: votes_pb2.CastManyRequest,
    cast: Callable[[votes_pb2.CastRequest], Awaitable[votes_pb2.CastResponse]],
    gate: OpGate,
) -> tuple[list[votes_pb2.CastOutcome], int]:
    """Every Cast's outcome, in order, and the highest revision any of them saw."""
    require_counts(("casts", len(request.casts), MAX_CASTS))
    call = calls.current.get()
    arrived = time.monotonic()

    async def one(index: int) -> votes_pb2.CastOutcome:
        op = request.casts[index]
        traced = op.trace_context if op.HasField("trace_context") else None
        envelope = Operation(call, arrived, f"casts[{index}]", op.timeout_ms, op.agent_id, traced)
        gate.enter(envelope, CAST, op.cast)
        return votes_pb2.CastOutcome(cast=await cast(op.cast))

    outcomes = await each(
        len(request.casts), one, lambda status: votes_pb2.CastOutcome(error=status)
    )
    revision = max((o.cast.header.revision for o in outcomes if o.HasField("cast")), default=0)
    return outcomes, revision
