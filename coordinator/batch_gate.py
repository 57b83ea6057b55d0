"""What the interceptor does once per call, done again for each operation of a batch:
the agent it acts as, the operation's own role, its own quota tokens and counts, and the
audit of a refusal.

The batch call itself was identified and authorized by the interceptor (it needs READ,
the least any operation needs); each operation is then held to what its unary call
needs, so a batch never lets a caller do what it could not do one call at a time.

Error handling: a malformed agent id is BadIdentity; one the principal may not act as,
or a missing role, is PermissionDenied (audited like a refused call); a
quota or rate is QuotaExceeded (RetryInfo says when; a rate refusal is answered at once,
not held as a refused call is); either becomes that operation's outcome, not the batch's.
"""

from __future__ import annotations

from dataclasses import replace

from google.protobuf.message import Message

from accord.coordinator.auth import roles
from accord.coordinator.auth.refusals import RefusalLog
from accord.coordinator.quotas.admission import Admission, Rule
from accord.coordinator.substrate import calls
from accord.coordinator.substrate.errors import PermissionDenied


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
        self._admission = admission
        self._refusals = refusals
        self._rules: dict[str, Rule] = {}

    def acting_as(self, call: calls.Call, agent: str, field: str, method: str) -> calls.Call:
        """call, acting as agent for one operation of method (empty: as the call)."""
        try:
            return _acting_as(call, agent, field)
        except PermissionDenied as refused:
            if self._refusals is not None:
                self._refusals.note(call, method, refused)
            raise

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
                raise
        if self._admission is not None:
            rule = self._rules.get(method)
            if rule is None:
                rule = self._rules[method] = self._admission.rule(method)
            self._admission.admit(rule, call, request)
