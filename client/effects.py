"""The effect ledger, one method per RPC: exactly-once tool calls, run journals and
compensations.

``began = await accord.effects.begin(key, run_id, intent("send_email", args), lease=lease)``
then, only when ``began.proceed``, run the tool and
``await accord.effects.complete(key, began.claim, lease=lease, result=b"...")`` (or
``error="..."``; or ``abort``). ``began.done`` means it ran already: ``began.effect.outcome``
is what happened. ``began.in_doubt``: its executor died before recording an outcome;
look the key up in the external system, then begin again with ``reconciled=True``.
``began.busy``: someone live runs it now (``wait=`` seconds waits for it).

This is the thin layer, one call per RPC with the contract's messages; key derivation
and the wrapper that runs a tool only on PROCEED are built on top of it. With the
client's batching on, concurrent Begins (those that do not wait) and Completes share
BeginMany and CompleteMany messages (client/batching.py); each keeps its own answer.

Every call is safe to send again: Begin is idempotent by key and lease (a retried Begin
from the same lease is told PROCEED with the same claim), Complete replays the first
outcome, Abort, SetRunStatus and Compensate are naturally idempotent.

Error handling: NotHeldError (the claim does not hold: ``.details`` carries the Effect
whose ``claimed`` says who holds it), IntentMismatchError (``.effect``), FencedError,
NotFoundError (unknown key or run), NothingToCompensateError, ConditionFailedError (abort
of a finished effect), QuotaExceededError (a full run), InvalidArgumentError,
LeaseNotFoundError, PermissionDeniedError.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from accord.client import calls
from accord.client.batching import BeginBatches, CompleteBatches
from accord.client.effect_runs import EffectSteps
from accord.client.kv import _fence, _Fencing, _HasId, _lease
from accord.client.transport import Transport
from accord.v1 import common_pb2, effects_pb2

# The contract's own messages (typed through their .pyi stubs).
Effect = effects_pb2.Effect
Intent = effects_pb2.Intent
EffectActor = effects_pb2.EffectActor
EffectOutcome = effects_pb2.EffectOutcome
Run = effects_pb2.Run
Compensation = effects_pb2.Compensation

# Seconds a Begin's call may take beyond its wait, for the answer to come back.
WAIT_SLACK_SECONDS = 5.0


class BeginOutcome(IntEnum):
    PROCEED = effects_pb2.BEGIN_OUTCOME_PROCEED
    DONE = effects_pb2.BEGIN_OUTCOME_DONE
    IN_DOUBT = effects_pb2.BEGIN_OUTCOME_IN_DOUBT
    BUSY = effects_pb2.BEGIN_OUTCOME_BUSY


class EffectState(IntEnum):
    RUNNING = effects_pb2.EFFECT_STATE_RUNNING
    IN_DOUBT = effects_pb2.EFFECT_STATE_IN_DOUBT
    ABORTED = effects_pb2.EFFECT_STATE_ABORTED
    SUCCEEDED = effects_pb2.EFFECT_STATE_SUCCEEDED
    FAILED = effects_pb2.EFFECT_STATE_FAILED


class RunStatus(IntEnum):
    RUNNING = effects_pb2.RUN_STATUS_RUNNING
    FINISHED = effects_pb2.RUN_STATUS_FINISHED
    FAILED = effects_pb2.RUN_STATUS_FAILED
    COMPENSATING = effects_pb2.RUN_STATUS_COMPENSATING
    COMPENSATED = effects_pb2.RUN_STATUS_COMPENSATED


def intent(tool: str, arguments: bytes = b"", summary: str = "") -> Intent:
    """A tool call: its name, its canonical arguments (bytes as given: the caller chooses
    the encoding, and must encode the same call the same way every time) and an optional
    summary for people."""
    return Intent(tool=tool, arguments=arguments, summary=summary)


@dataclass(frozen=True, slots=True)
class Began:
    """Begin's answer: what to do, and the effect as it stands."""

    outcome: BeginOutcome
    effect: Effect
    revision: int

    @property
    def proceed(self) -> bool:
        """Run the tool now, then complete (or abort) with `claim`."""
        return self.outcome is BeginOutcome.PROCEED

    @property
    def done(self) -> bool:
        return self.outcome is BeginOutcome.DONE

    @property
    def in_doubt(self) -> bool:
        return self.outcome is BeginOutcome.IN_DOUBT

    @property
    def busy(self) -> bool:
        return self.outcome is BeginOutcome.BUSY

    @property
    def claim(self) -> int:
        """The claim token to complete or abort with (on PROCEED)."""
        return self.effect.claim


@dataclass(frozen=True, slots=True)
class Completed:
    effect: Effect
    # True when the effect had an outcome already: `effect.outcome` is that first one.
    replayed: bool
    revision: int


@dataclass(frozen=True, slots=True)
class EffectsPage:
    effects: builtins.list[Effect]
    # "" on the last page; a page may be short (even empty) before the end when a state
    # filter skipped effects.
    next_page_token: str


@dataclass(frozen=True, slots=True)
class RunJournal:
    run: Run
    # This page of the run's effects, in the order they began.
    journal: builtins.list[Effect]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class Compensating:
    run: Run
    # In the order to run them (the newest effect's first); begin each `key` with its
    # `intent` in the run.
    compensations: builtins.list[Compensation]


class AsyncEffects(EffectSteps):
    """One method per RPC, and (from EffectSteps, client/effect_runs.py) the wrappers built
    on them: `step`, `progress`, `run_compensations`."""

    def __init__(
        self,
        transport: Transport,
        begins: BeginBatches | None = None,
        completes: CompleteBatches | None = None,
    ) -> None:
        self._t = transport
        # Begins (that do not wait) and Completes share messages with concurrent callers
        # (client/batching.py).
        self._begins = begins or BeginBatches(None)
        self._completes = completes or CompleteBatches(None)

    async def begin(
        self,
        key: str,
        run_id: str,
        what: Intent,
        *,
        lease: _HasId | int,
        fence: _Fencing | common_pb2.Fence | None = None,
        wait: float = 0.0,
        reconciled: bool = False,
        timeout: float | None = None,
    ) -> Began:
        """Begin (or look up) effect `key` of run `run_id`. wait: seconds to wait when
        another executor runs it (at most 60); reconciled: claim an IN_DOUBT effect."""
        request = effects_pb2.BeginRequest(
            key=key,
            run_id=run_id,
            intent=what,
            lease_id=_lease(lease),
            wait_ms=int(wait * 1000),
            reconciled=reconciled,
        )
        if fence is not None:
            request.fence.CopyFrom(_fence(fence))
        if wait and timeout is None:
            timeout = max(self._t.timeout, wait + WAIT_SLACK_SECONDS)
        response = await self._begins.begin(request, timeout, self._t)
        return Began(BeginOutcome(response.outcome), response.effect, response.header.revision)

    async def complete(
        self,
        key: str,
        claim: int,
        *,
        lease: _HasId | int,
        result: bytes | None = None,
        error: str | None = None,
        compensation: Intent | None = None,
        fence: _Fencing | common_pb2.Fence | None = None,
        timeout: float | None = None,
    ) -> Completed:
        """Record the outcome: `result` (success) or `error` (failure), exactly one;
        optionally the compensation that undoes it."""
        if (result is None) == (error is None):
            raise ValueError("give exactly one of result= and error=")
        outcome = EffectOutcome(success=result) if result is not None else EffectOutcome()
        if error is not None:
            outcome.failure = error
        request = effects_pb2.CompleteRequest(
            key=key, claim=claim, lease_id=_lease(lease), outcome=outcome
        )
        if compensation is not None:
            request.compensation.CopyFrom(compensation)
        if fence is not None:
            request.fence.CopyFrom(_fence(fence))
        response = await self._completes.complete(request, timeout, self._t)
        return Completed(response.effect, response.replayed, response.header.revision)

    async def abort(
        self,
        key: str,
        claim: int,
        *,
        lease: _HasId | int,
        reason: str = "",
        timeout: float | None = None,
    ) -> Effect:
        """Release the claim without an outcome: the next Begin is told PROCEED."""
        request = effects_pb2.AbortRequest(
            key=key, claim=claim, lease_id=_lease(lease), reason=reason
        )
        response = await self._t.unary(calls.EFFECTS_ABORT, request, timeout=timeout)
        return response.effect

    async def get(self, key: str, *, timeout: float | None = None) -> Effect:
        request = effects_pb2.EffectsGetRequest(key=key)
        response = await self._t.unary(calls.EFFECTS_GET, request, timeout=timeout)
        return response.effect

    async def list(
        self,
        *,
        states: Sequence[EffectState] = (),
        run_id: str = "",
        limit: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> EffectsPage:
        """A page of the namespace's effects in key order (with run_id: that run's, in
        journal order), only those in `states` when given."""
        request = effects_pb2.EffectsListRequest(
            states=[effects_pb2.EffectState.ValueType(int(s)) for s in states],
            run_id=run_id,
            limit=limit,
            page_token=page_token,
        )
        response = await self._t.unary(calls.EFFECTS_LIST, request, timeout=timeout)
        return EffectsPage(list(response.effects), response.next_page_token)

    async def get_run(
        self,
        run_id: str,
        *,
        limit: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> RunJournal:
        """The run (status, counts, resume_at) and a page of its journal."""
        request = effects_pb2.GetRunRequest(run_id=run_id, limit=limit, page_token=page_token)
        response = await self._t.unary(calls.EFFECTS_GET_RUN, request, timeout=timeout)
        return RunJournal(response.run, list(response.journal), response.next_page_token)

    async def set_run_status(
        self, run_id: str, status: RunStatus, *, timeout: float | None = None
    ) -> Run:
        """Mark the run FINISHED, FAILED or RUNNING."""
        request = effects_pb2.SetRunStatusRequest(
            run_id=run_id, status=effects_pb2.RunStatus.ValueType(int(status))
        )
        response = await self._t.unary(calls.EFFECTS_SET_RUN_STATUS, request, timeout=timeout)
        return response.run

    async def compensate(self, run_id: str, *, timeout: float | None = None) -> Compensating:
        """Start compensating the run; its compensations in the order to run them."""
        request = effects_pb2.CompensateRequest(run_id=run_id)
        response = await self._t.unary(calls.EFFECTS_COMPENSATE, request, timeout=timeout)
        return Compensating(response.run, list(response.compensations))
