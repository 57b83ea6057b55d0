"""Exactly-once tool calls for agents, on top of the thin effects client.

``async with accord.effects.step(run_id, step, "send_email", args, lease) as call:`` begins
the effect (its key derived from run, step, tool and canonical arguments: see
client/effect_keys.py). If `call.done`, the effect already completed: `call.result` is
its recorded result and the body must not run the tool again. Otherwise the caller is
the executor: the body runs the tool, passing `call.key` to the external API as its own
idempotency key, and `call.succeed(result)` records the result on leaving the block
(leaving without a call records success with result None).

`EffectRun` (client/effect_runs.py) adds a decorator that numbers the steps of a run,
and the resume and compensation helpers.

How the block ends decides what the ledger records:
- normally: Complete with success (the result as canonical JSON);
- `call.fail(error)`: Complete with that failure. A failure is final: a retry of the
  same key is told DONE with it (EffectFailedError from `call.result`);
- an exception that says the tool did not take effect (EffectNotApplied, or one of the
  step's `not_applied` types), or `call.abort(reason)`: Abort, so the next Begin of the
  key is told PROCEED and runs it;
- any other exception (a timeout, a cancellation: the tool may or may not have taken
  effect): Complete with a failure naming the exception, then the exception propagates.
  Recording "failed" rather than releasing the claim is what keeps a retry from running
  the tool twice; a tool that can tell "did not happen" says so with EffectNotApplied.
  If that record cannot be written (the claim lapsed meanwhile), the body's exception
  still propagates, and the effect is in doubt once the lease ends.

An outcome whose Complete got no answer (UnavailableError, DeadlineExceededError: no
replica answered in time) is kept by the client, and the next step of the same key
sends it again instead of beginning: a Begin from the same live lease would be told
PROCEED (a retried Begin) and run the tool twice.

Error handling: Begin's answers other than PROCEED and DONE become errors: IN_DOUBT
raises EffectInDoubtError (with the intent and who began it) unless a `reconcile`
callback was given: it is called with the key, and returns the outcome it found in the
external system (FoundOutcome: recorded as is, and the block sees `call.done`) or None
(nothing happened there: the block runs the tool). BUSY is waited on (the server waits
for the executor, up to `busy_wait` seconds in all) and answered as a fresh Begin; still
BUSY then raises EffectBusyError. A key begun with another intent raises the server's
IntentMismatchError; a lapsed claim at Complete raises NotHeldError (with the effect
and its new holder). Arguments or results without an exact JSON form raise NotJSONError
before anything is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeAlias

from accord.client.effect_keys import JSON, canonical_json, effect_key
from accord.client.errors import (
    AccordError,
    DeadlineExceededError,
    EffectBusyError,
    EffectFailedError,
    EffectInDoubtError,
    NotHeldError,
    UnavailableError,
)
from accord.v1 import common_pb2, effects_pb2

# How long a step waits in all for a live executor of its effect (BUSY) by default.
DEFAULT_BUSY_WAIT_SECONDS = 60.0
# One Begin waits at most this long server-side (the server's own bound is 60 s): under
# the client's call deadline, with room for the answer.
_WAIT_PER_CALL_SECONDS = 5.0


class EffectNotApplied(Exception):
    """Raise from a step's body when the tool certainly did not take effect (refused
    before it acted, e.g. a 4xx answer): the claim is released, not marked failed, so a
    retry of the same key runs the tool."""


@dataclass(frozen=True, slots=True)
class Undo:
    """A compensation to register with a successful effect: the tool call that undoes
    it, run if its run is compensated."""

    tool: str
    arguments: JSON
    summary: str = ""

    def intent(self) -> effects_pb2.Intent:
        return effects_pb2.Intent(
            tool=self.tool, arguments=canonical_json(self.arguments), summary=self.summary
        )


@dataclass(frozen=True, slots=True)
class FoundOutcome:
    """What a reconcile callback found in the external system for an in-doubt effect:
    a result (success) or, with failure set, a failure."""

    result: JSON = None
    failure: str | None = None


# Called with the effect key of an in-doubt effect; returns what happened, or None
# (nothing happened: run the tool). A plain function runs in a worker thread.
Reconcile: TypeAlias = Callable[[str], Awaitable[FoundOutcome | None] | FoundOutcome | None]


class EffectCalls(Protocol):
    """What the wrappers need of the thin client (client/effects.py, AsyncEffects)."""

    async def begin(
        self,
        key: str,
        run_id: str,
        what: effects_pb2.Intent,
        *,
        lease: int,
        fence: common_pb2.Fence | None = None,
        wait: float = 0.0,
        reconciled: bool = False,
    ) -> _Began: ...

    async def complete(
        self,
        key: str,
        claim: int,
        *,
        lease: int,
        result: bytes | None = None,
        error: str | None = None,
        compensation: effects_pb2.Intent | None = None,
        fence: common_pb2.Fence | None = None,
    ) -> _Completed: ...

    async def abort(
        self, key: str, claim: int, *, lease: int, reason: str = ""
    ) -> effects_pb2.Effect: ...


class _Began(Protocol):
    @property
    def outcome(self) -> int: ...
    @property
    def effect(self) -> effects_pb2.Effect: ...


class _Completed(Protocol):
    @property
    def effect(self) -> effects_pb2.Effect: ...


class StepCall:
    """One step as its block sees it. `done`: the effect already completed (read
    `result`); otherwise the block is the executor and records its outcome with
    `succeed`, `fail` or `abort` (or by how it ends: see the module docstring)."""

    def __init__(self, key: str, effect: effects_pb2.Effect, done: bool) -> None:
        self.key = key
        # The effect as the ledger last answered (after the block: as completed).
        self.effect = effect
        self.done = done
        self._outcome: effects_pb2.EffectOutcome | None = None
        self._undo: Undo | None = None
        self._abort_reason: str | None = None

    @property
    def result(self) -> JSON:
        """The recorded result of a completed effect (decoded JSON); EffectFailedError
        when it completed with a failure."""
        if not self.effect.outcome.HasField("success") and not self.effect.outcome.HasField(
            "failure"
        ):
            raise RuntimeError(f"effect {self.key} has no recorded outcome yet")
        return decode_result(self.effect)

    def succeed(self, result: JSON = None, undo: Undo | None = None) -> None:
        """Record result (JSON) on leaving the block, with undo as its compensation."""
        self._record(effects_pb2.EffectOutcome(success=canonical_json(result)))
        self._undo = undo

    def fail(self, error: str) -> None:
        """Record a failure on leaving the block: final for this key."""
        self._record(effects_pb2.EffectOutcome(failure=error))

    def abort(self, reason: str = "") -> None:
        """Release the claim on leaving the block, recording no outcome: the next Begin
        of the key runs the tool."""
        self._check_executor()
        self._abort_reason = reason

    def _record(self, outcome: effects_pb2.EffectOutcome) -> None:
        self._check_executor()
        self._outcome = outcome

    def _check_executor(self) -> None:
        if self.done:
            raise RuntimeError(
                f"effect {self.key} was already done: the block must check call.done "
                "and not run the tool again"
            )


def decode_result(effect: effects_pb2.Effect) -> JSON:
    """A completed effect's result, decoded; EffectFailedError for a failure."""
    if effect.outcome.HasField("failure"):
        raise EffectFailedError(
            f"effect {effect.key} ({effect.intent.tool}) failed: {effect.outcome.failure}",
            effect,
        )
    result: JSON = json.loads(effect.outcome.success) if effect.outcome.success else None
    return result


@contextlib.asynccontextmanager
async def run_step(
    effects: EffectCalls,
    run_id: str,
    step: int | str,
    tool: str,
    arguments: JSON,
    lease: int,
    *,
    key: str | None = None,
    summary: str = "",
    fence: common_pb2.Fence | None = None,
    reconcile: Reconcile | None = None,
    busy_wait: float = DEFAULT_BUSY_WAIT_SECONDS,
    not_applied: tuple[type[BaseException], ...] = (),
) -> AsyncIterator[StepCall]:
    """The step context manager (see the module docstring). key: the effect key, when
    the caller names the call itself; by default derived with effect_key."""
    intent = effects_pb2.Intent(tool=tool, arguments=canonical_json(arguments), summary=summary)
    key = key or effect_key(run_id, step, tool, arguments)
    async with run_intent(
        effects, key, run_id, intent, lease, fence, reconcile, busy_wait, not_applied
    ) as call:
        yield call


@contextlib.asynccontextmanager
async def run_intent(
    effects: EffectCalls,
    key: str,
    run_id: str,
    intent: effects_pb2.Intent,
    lease: int,
    fence: common_pb2.Fence | None,
    reconcile: Reconcile | None,
    busy_wait: float,
    not_applied: tuple[type[BaseException], ...],
) -> AsyncIterator[StepCall]:
    """run_step for an intent already encoded, under a given key."""
    call = await claim(effects, key, run_id, intent, lease, fence, reconcile, busy_wait)
    if call.done:
        yield call
        return
    released: tuple[type[BaseException], ...] = (EffectNotApplied, *not_applied)
    try:
        yield call
    except GeneratorExit:
        raise
    except released as exc:
        with contextlib.suppress(AccordError):  # the claim lapsed: the effect is in doubt
            await _abort(effects, call, lease, f"{type(exc).__name__}: {exc}")
        raise
    except BaseException as exc:
        failure = effects_pb2.EffectOutcome(failure=clip(f"{type(exc).__name__}: {exc}", 4000))
        with contextlib.suppress(AccordError):  # as above: the body's error is the news
            await asyncio.shield(_complete(effects, call, lease, failure, None, fence))
        raise
    if call._abort_reason is not None:
        await _abort(effects, call, lease, call._abort_reason)
        return
    outcome = call._outcome or effects_pb2.EffectOutcome(success=canonical_json(None))
    undo = call._undo.intent() if call._undo is not None else None
    await _complete(effects, call, lease, outcome, undo, fence)


async def claim(
    effects: EffectCalls,
    key: str,
    run_id: str,
    intent: effects_pb2.Intent,
    lease: int,
    fence: common_pb2.Fence | None,
    reconcile: Reconcile | None,
    busy_wait: float,
) -> StepCall:
    """Begin the effect until the answer is PROCEED (a StepCall to run) or DONE (a
    StepCall that is done): waits out BUSY, reconciles IN_DOUBT (see the module
    docstring)."""
    sent = await _redeliver(effects, key)
    if sent is not None:
        return StepCall(key, sent, done=True)
    give_up = time.monotonic() + busy_wait
    reconciled = False
    while True:
        wait = max(0.0, min(_WAIT_PER_CALL_SECONDS, give_up - time.monotonic()))
        answer = await effects.begin(
            key, run_id, intent, lease=lease, fence=fence, wait=wait, reconciled=reconciled
        )
        outcome, effect = answer.outcome, answer.effect
        if outcome == effects_pb2.BEGIN_OUTCOME_PROCEED:
            return StepCall(key, effect, done=False)
        if outcome == effects_pb2.BEGIN_OUTCOME_DONE:
            return StepCall(key, effect, done=True)
        if outcome == effects_pb2.BEGIN_OUTCOME_IN_DOUBT:
            if reconcile is None or reconciled:
                raise EffectInDoubtError(_in_doubt_message(effect), effect)
            found = await _call(reconcile, key)
            reconciled = True
            if found is None:
                continue  # nothing happened out there: claim it and run the tool
            recorded = (  # encoded first: a result JSON cannot carry fails before the claim
                effects_pb2.EffectOutcome(failure=found.failure)
                if found.failure is not None
                else effects_pb2.EffectOutcome(success=canonical_json(found.result))
            )
            taken = await effects.begin(
                key, run_id, intent, lease=lease, fence=fence, reconciled=True
            )
            if taken.outcome != effects_pb2.BEGIN_OUTCOME_PROCEED:
                continue  # someone else settled it meanwhile: answer as they left it
            call = StepCall(key, taken.effect, done=False)
            await _complete(effects, call, lease, recorded, None, fence)
            call.done = True
            return call
        if time.monotonic() >= give_up:
            who = effect.claimed.agent_id or "another executor"
            raise EffectBusyError(
                f"effect {key} ({intent.tool}) is still being run by {who} "
                f"(lease {effect.claimed.lease_id}) after waiting {busy_wait:g}s",
                effect,
            )


@dataclass(frozen=True, slots=True)
class _Outcome:
    """An outcome to record, with what Complete needs to send it."""

    claim: int
    lease: int
    outcome: effects_pb2.EffectOutcome
    undo: effects_pb2.Intent | None
    fence: common_pb2.Fence | None


# Outcomes whose Complete got no answer (no replica answered in time), by the thin client
# they went through and the effect key. The next step of that key sends its outcome
# again instead of beginning: a Begin from the same live lease would be told PROCEED (a
# retried Begin) and run the tool twice.
_UNDELIVERED: weakref.WeakKeyDictionary[EffectCalls, dict[str, _Outcome]] = (
    weakref.WeakKeyDictionary()
)
# Errors after which whether Complete was applied is unknown.
_NO_ANSWER = (UnavailableError, DeadlineExceededError)


async def _complete(
    effects: EffectCalls,
    call: StepCall,
    lease: int,
    outcome: effects_pb2.EffectOutcome,
    undo: effects_pb2.Intent | None,
    fence: common_pb2.Fence | None,
) -> None:
    call.effect = await _deliver(
        effects, call.key, _Outcome(call.effect.claim, lease, outcome, undo, fence)
    )


async def _deliver(effects: EffectCalls, key: str, record: _Outcome) -> effects_pb2.Effect:
    """Complete with record; kept in _UNDELIVERED while no answer came."""
    failed = record.outcome.HasField("failure")
    try:
        answer = await effects.complete(
            key,
            record.claim,
            lease=record.lease,
            result=None if failed else record.outcome.success,
            error=record.outcome.failure if failed else None,
            compensation=record.undo,
            fence=record.fence,
        )
    except _NO_ANSWER:
        _UNDELIVERED.setdefault(effects, {})[key] = record
        raise
    except AccordError:
        _UNDELIVERED.get(effects, {}).pop(key, None)
        raise
    _UNDELIVERED.get(effects, {}).pop(key, None)
    return answer.effect


async def _redeliver(effects: EffectCalls, key: str) -> effects_pb2.Effect | None:
    """The effect as completed by an outcome of ours that got no answer before (None:
    there is none, or its claim no longer holds: Begin says what is known now)."""
    record = _UNDELIVERED.get(effects, {}).get(key)
    if record is None:
        return None
    try:
        return await _deliver(effects, key, record)
    except NotHeldError:
        return None


async def _abort(effects: EffectCalls, call: StepCall, lease: int, reason: str) -> None:
    call.effect = await asyncio.shield(
        effects.abort(call.key, call.effect.claim, lease=lease, reason=clip(reason, 1000))
    )


async def _call(reconcile: Reconcile, key: str) -> FoundOutcome | None:
    """A callback, async or plain (a plain one in a worker thread, so that it may make
    blocking calls, even to Accord's blocking client)."""
    if inspect.iscoroutinefunction(reconcile):
        found: FoundOutcome | None = await reconcile(key)
        return found
    result = await asyncio.to_thread(reconcile, key)
    if inspect.isawaitable(result):
        return await result
    return result


def clip(text: str, limit: int) -> str:
    """text cut to at most limit bytes of UTF-8 (an error's text may be any size)."""
    encoded = text.encode("utf-8", "replace")
    return text if len(encoded) <= limit else encoded[: limit - 3].decode(errors="ignore") + "..."


def _in_doubt_message(effect: effects_pb2.Effect) -> str:
    began = effect.claimed if effect.HasField("claimed") else effect.began
    at = began.at.ToDatetime().isoformat() if began.HasField("at") else "an unknown time"
    return (
        f"effect {effect.key} ({effect.intent.tool}) is in doubt: {began.agent_id or '-'} "
        f"(lease {began.lease_id}) claimed it at {at} and its lease ended before it "
        "recorded an outcome; look it up in the external system by its key, then run the "
        "step with a reconcile callback"
    )


__all__ = [
    "DEFAULT_BUSY_WAIT_SECONDS",
    "EffectCalls",
    "EffectNotApplied",
    "FoundOutcome",
    "Reconcile",
    "StepCall",
    "Undo",
    "claim",
    "decode_result",
    "run_intent",
    "run_step",
]
