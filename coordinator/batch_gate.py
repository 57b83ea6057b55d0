"""What the interceptor does once per call, done again for each operation of a batch:
the agent it acts as, its own trace context (when it names one), the operation's own
role, its own quota tokens and counts, and the audit of a refusal (and its count in the
metrics).

The batch call itself was identified and authorized by the interceptor (it needs READ,
the least any operation needs); each operation is then held to what its unary call
needs, so a batch never lets a caller do what it could not do one call at a time.

Error handling: a malformed agent id is BadIdentity; one the principal may not act as,
or a missing role, is PermissionDenied (audited like a refused call); a
quota or rate is QuotaExceeded (RetryInfo says when; a rate refusal is answered at once,
not held as a refused call is); either becomes that operation's outcome, not the batch's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TypeVar

from google.protobuf.message import Message
from google.rpc import status_pb2

from accord.coordinator import logs
from accord.coordinator.auth import roles
from accord.coordinator.auth.refusals import RefusalLog
from accord.coordinator.observability import metrics_calls, trace_context
from accord.coordinator.quotas.admission import Admission, Rule
from accord.coordinator.substrate import calls
from accord.coordinator.substrate.errors import (
    AccordError,
    Internal,
    PermissionDenied,
    QuotaExceeded,
    invalid,
)
from accord.v1 import common_pb2

_log = logs.get("accord.batch")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation of a batch, as its envelope describes it."""

    call: calls.Call  # the batch's own
    arrived: float  # time.monotonic() at the batch's arrival
    field: str  # how errors name it, e.g. "ops[3]"
    timeout_ms: int
    agent_id: str
    # Its own trace context (None: the batch call's).
    trace: common_pb2.TraceContext | None = None


async def each(
    count: int, run: Callable[[int], Awaitable[T]], failed: Callable[[status_pb2.Status], T]
) -> list[T]:
    """run(i) for i in range(count), concurrently, each in its own task (so with its own
    calls.current); a refusal, or an unexpected failure (Internal, logged), becomes
    failed(its status) for that operation alone."""

    async def one(index: int) -> T:
        try:
            return await run(index)
        except AccordError as refused:
            return failed(refused.to_status())
        except Exception as exc:
            _log.exception("unexpected error in a batch operation", index=index)
            return failed(
                Internal(f"unexpected coordinator error: {type(exc).__name__}").to_status()
            )

    return list(await asyncio.gather(*(one(i) for i in range(count))))


def _acting_as(call: calls.Call, agent: str, field: str) -> calls.Call:
    """call, acting as agent for one operation (empty: as the call itself): an agent id
    the principal may act as, like the call's own accord-agent-id."""
    if not agent or agent == call.agent_id:
        return call
    calls.check_agent_id(agent, field, field)
    if call.agents is not None and agent not in call.agents:
        raise PermissionDenied(
            f"principal {call.principal!r} may not act as agent {agent!r}; it may act as: "
            f"{', '.join(sorted(call.agents))}",
            metadata={
                "principal": call.principal,
                "agent_id": agent,
                "agents": ",".join(sorted(call.agents)),
            },
        )
    return replace(call, agent_id=agent)


class OpGate:
    def __init__(self, admission: Admission | None, refusals: RefusalLog | None) -> None:
        self.admission = admission
        self._refusals = refusals
        self._rules: dict[str, Rule] = {}

    def acting_as(self, call: calls.Call, agent: str, field: str, method: str) -> calls.Call:
        """call, acting as agent for one operation of method (empty: as the call)."""
        try:
            return _acting_as(call, agent, field)
        except PermissionDenied as refused:
            if self._refusals is not None:
                self._refusals.note(call, method, refused)
            metrics_calls.refused(call, refused)
            raise

    def enter(self, op: Operation, method: str, request: Message) -> None:
        """Set calls.current to the call op runs as (its own deadline and agent; this
        must run in the operation's own task) and refuse unless it may run request as
        method."""
        call = op.call
        if op.timeout_ms < 0:
            raise invalid(f"{op.field}.timeout_ms", "must not be negative")
        if op.timeout_ms:
            own = op.arrived + op.timeout_ms / 1000
            call = replace(call, deadline=own if call.deadline is None else min(own, call.deadline))
        if op.trace is not None:  # what its writes record
            call = replace(call, trace_context=trace_context.from_record(op.trace))
        calls.current.set(self.acting_as(call, op.agent_id, f"{op.field}.agent_id", method))
        self.check(method, request)

    def check(self, method: str, request: Message) -> None:
        """Refuse unless the current call may run request as method (the full gRPC name
        of its unary twin, e.g. /accord.v1.KV/Put)."""
        call = calls.current.get()
        if call.roles is not None:
            try:
                roles.authorize_held(call.roles, call.principal, method, call.namespace)
            except PermissionDenied as refused:
                if self._refusals is not None:
                    self._refusals.note(call, method, refused)
                metrics_calls.refused(call, refused)
                raise
        if self.admission is not None:
            rule = self._rules.get(method)
            if rule is None:
                rule = self._rules[method] = self.admission.rule(method)
            try:
                self.admission.admit(rule, call, request)
            except QuotaExceeded as refused:
                metrics_calls.refused(call, refused)
                raise
