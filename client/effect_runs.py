"""A run as an agent drives it: numbered steps, tool decorators, resume, compensation.

``run = EffectRun(accord.effects, "order-42", lease)`` numbers the run's steps 1, 2, ...
in the order the agent makes them. A tool function decorated with ``@run.tool()`` (or
``run.tool(fn)``) is begun under its step's key on every call, runs only when told
PROCEED, and records its result; on DONE it returns the recorded result instead of
running. It receives the key as its keyword argument `effect_key` (when it declares
one), to hand to the external API as that API's own idempotency key. An agent that
restarts and makes the same calls in the same order gets the same keys, so steps that
completed are answered from the journal and only the rest run.

``await run.progress()`` reads the run's journal (GetRun, page by page): the effects
that completed, where to resume (the first that did not) and the step to resume at when
the steps were made one at a time. ``await run.compensate({"charge": refund, ...})``
runs the registered compensations, newest first, each exactly once however many agents
compensate the run at once: each is an effect begun under the key Compensate gives, so
only one agent is told PROCEED; the others wait for it (BUSY) and move on.

Error handling: a step's errors are those of client/effect_tools.py (EffectInDoubtError,
EffectBusyError, IntentMismatchError, NotHeldError, NotJSONError). A step that completed
with a failure raises EffectFailedError from the decorated tool. `compensate` raises the
server's NotFoundError (unknown run) and NothingToCompensateError (nothing registered:
nothing changed); a compensation whose tool has no handler raises KeyError before any
compensation is begun; a handler that raises releases its claim (Abort), so the
compensation runs again on the next `compensate`, and the error propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, ParamSpec, Protocol, TypeAlias, cast

from accord.client.effect_keys import JSON, canonical_json, effect_key
from accord.client.effect_tools import (
    DEFAULT_BUSY_WAIT_SECONDS,
    EffectCalls,
    Reconcile,
    StepCall,
    Undo,
    decode_result,
    run_intent,
    run_step,
)
from accord.client.kv import _Fencing, _HasId
from accord.v1 import common_pb2, effects_pb2

P = ParamSpec("P")
# Journal entries read per GetRun call by default (the server's most).
JOURNAL_PAGE = 1000
_FINAL = (effects_pb2.EFFECT_STATE_SUCCEEDED, effects_pb2.EFFECT_STATE_FAILED)

# What registers a compensation: called with a step's result and its arguments.
UndoOf: TypeAlias = Callable[[JSON, dict[str, JSON]], Undo | None]
# A compensation handler: called with the compensation's arguments (as keywords when
# they are a JSON object) and effect_key=; returns the result to record.
Handler: TypeAlias = Callable[..., Awaitable[JSON] | JSON]


class RunCalls(EffectCalls, Protocol):
    """What runs need of the thin client, beyond Begin/Complete/Abort."""

    async def get_run(
        self, run_id: str, *, limit: int = 0, page_token: str = ""
    ) -> _JournalPage: ...

    async def compensate(self, run_id: str) -> _Compensating: ...


class _JournalPage(Protocol):
    @property
    def run(self) -> effects_pb2.Run: ...
    @property
    def journal(self) -> list[effects_pb2.Effect]: ...
    @property
    def next_page_token(self) -> str: ...


class _Compensating(Protocol):
    @property
    def compensations(self) -> list[effects_pb2.Compensation]: ...


@dataclass(frozen=True, slots=True)
class RunProgress:
    """A run's journal as read at one moment."""

    run: effects_pb2.Run
    # Every effect of the run in the order they began.
    journal: list[effects_pb2.Effect]
    _by_key: dict[str, effects_pb2.Effect] = field(repr=False)

    @property
    def done(self) -> list[effects_pb2.Effect]:
        """The effects that completed (succeeded or failed), in journal order."""
        return [e for e in self.journal if e.state in _FINAL]

    @property
    def resume_at(self) -> effects_pb2.Effect | None:
        """The first effect in journal order that did not complete (None: all did)."""
        return next((e for e in self.journal if e.state not in _FINAL), None)

    @property
    def next_step(self) -> int:
        """For a run whose steps were numbered 1, 2, ... and made one at a time (as
        EffectRun numbers them): the step to resume at, the first not completed."""
        resume = self.resume_at
        return (self.journal.index(resume) if resume is not None else len(self.journal)) + 1

    def effect_of(self, step: int | str, tool: str, arguments: JSON) -> effects_pb2.Effect | None:
        """The journal's effect for this call (None: never begun)."""
        return self._by_key.get(effect_key(self.run.run_id, step, tool, arguments))

    def is_done(self, step: int | str, tool: str, arguments: JSON) -> bool:
        effect = self.effect_of(step, tool, arguments)
        return effect is not None and effect.state in _FINAL

    def result_of(self, step: int | str, tool: str, arguments: JSON) -> JSON:
        """The call's recorded result; KeyError when it did not complete,
        EffectFailedError when it failed."""
        effect = self.effect_of(step, tool, arguments)
        if effect is None or effect.state not in _FINAL:
            raise KeyError(f"step {step!r} ({tool}) of run {self.run.run_id} did not complete")
        return decode_result(effect)


async def read_progress(
    effects: RunCalls, run_id: str, page_size: int = JOURNAL_PAGE
) -> RunProgress:
    """The run and its whole journal, page_size entries per call (NotFoundError for an
    unknown run)."""
    answer = await effects.get_run(run_id, limit=page_size)
    run, journal = answer.run, list(answer.journal)
    while answer.next_page_token:
        answer = await effects.get_run(run_id, limit=page_size, page_token=answer.next_page_token)
        journal += answer.journal
    return RunProgress(run, journal, {e.key: e for e in journal})


async def compensate_run(
    effects: RunCalls,
    run_id: str,
    handlers: Mapping[str, Handler],
    lease: int,
    *,
    reconcile: Reconcile | None = None,
    busy_wait: float = DEFAULT_BUSY_WAIT_SECONDS,
) -> list[effects_pb2.Effect]:
    """Run the run's compensations, newest first, each exactly once (see the module
    docstring); returns their effects as completed, in the order run."""
    answer = await effects.compensate(run_id)
    pending = [c for c in answer.compensations if c.state not in _FINAL]
    missing = sorted({c.intent.tool for c in pending} - set(handlers))
    if missing:
        raise KeyError(f"no compensation handler for tool(s) {', '.join(missing)}")
    finished: list[effects_pb2.Effect] = []
    for comp in answer.compensations:
        handler = handlers.get(comp.intent.tool)
        async with run_intent(
            effects,
            comp.key,
            run_id,
            comp.intent,
            lease,
            None,
            reconcile,
            busy_wait,
            (BaseException,),  # a handler that raised may run again: it did not finish
        ) as call:
            if not call.done:
                assert handler is not None  # a state read as final may since have changed
                call.succeed(await _invoke(handler, comp.intent.arguments, comp.key))
        finished.append(call.effect)
    return finished


class EffectRun:
    """One run's steps, as one agent makes them (see the module docstring)."""

    def __init__(
        self,
        effects: RunCalls,
        run_id: str,
        lease: _HasId | int,
        *,
        fence: _Fencing | common_pb2.Fence | None = None,
        reconcile: Reconcile | None = None,
        busy_wait: float = DEFAULT_BUSY_WAIT_SECONDS,
        first_step: int = 1,
    ) -> None:
        """reconcile: called with the key of a step found in doubt (see effect_tools);
        without one, such a step raises EffectInDoubtError. first_step: the number the
        next step takes (RunProgress.next_step to skip what completed)."""
        self.effects = effects
        self.run_id = run_id
        self.lease_id = _lease_id(lease)
        self.fence = _fence_of(fence)
        self.reconcile = reconcile
        self.busy_wait = busy_wait
        self._next = first_step

    def next_step(self) -> int:
        """Take the next step number."""
        step, self._next = self._next, self._next + 1
        return step

    def step(
        self,
        tool: str,
        arguments: JSON,
        *,
        step: int | str | None = None,
        key: str | None = None,
        summary: str = "",
        not_applied: tuple[type[BaseException], ...] = (),
    ) -> contextlib.AbstractAsyncContextManager[StepCall]:
        """The step context manager (effect_tools.run_step) for this run, at the next
        step unless given one."""
        return run_step(
            self.effects,
            self.run_id,
            self.next_step() if step is None else step,
            tool,
            arguments,
            self.lease_id,
            key=key,
            summary=summary,
            fence=self.fence,
            reconcile=self.reconcile,
            busy_wait=self.busy_wait,
            not_applied=not_applied,
        )

    def tool(
        self,
        *,
        name: str | None = None,
        summary: Callable[[dict[str, JSON]], str] | None = None,
        undo: UndoOf | None = None,
        not_applied: tuple[type[BaseException], ...] = (),
    ) -> Callable[[Callable[P, Any]], EffectTool[P]]:
        """Decorate a tool function (async, or plain: then run in a worker thread): each
        call is one step (see the module docstring). name: the tool's name (default: the
        function's). summary: the journal's summary of a call, from its arguments. undo:
        the compensation to register from a successful call's result and arguments."""

        def wrap(fn: Callable[P, Any]) -> EffectTool[P]:
            return EffectTool(self, fn, name or fn.__name__, summary, undo, not_applied)

        return wrap

    async def progress(self, page_size: int = JOURNAL_PAGE) -> RunProgress:
        return await read_progress(self.effects, self.run_id, page_size)

    async def compensate(self, handlers: Mapping[str, Handler]) -> list[effects_pb2.Effect]:
        return await compensate_run(
            self.effects,
            self.run_id,
            handlers,
            self.lease_id,
            reconcile=self.reconcile,
            busy_wait=self.busy_wait,
        )


class EffectTool(Generic[P]):
    """A tool function wrapped by EffectRun.tool: awaiting it makes one step."""

    def __init__(
        self,
        run: EffectRun,
        fn: Callable[P, Any],
        name: str,
        summary: Callable[[dict[str, JSON]], str] | None,
        undo: UndoOf | None,
        not_applied: tuple[type[BaseException], ...],
    ) -> None:
        self.run = run
        self.fn = fn
        self.name = name
        self._summary = summary
        self._undo = undo
        self._not_applied = not_applied
        self._signature = inspect.signature(fn)
        self._takes_key = "effect_key" in self._signature.parameters
        functools.update_wrapper(self, fn)

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> JSON:
        """Make the call as the run's next step; its result as recorded (decoded JSON)."""
        return await self._call(self.run.next_step(), None, args, kwargs)

    def at(self, step: int | str, *, key: str | None = None) -> Callable[P, Awaitable[JSON]]:
        """The call at a step of the caller's choosing (or under a key of its own)."""

        async def call(*args: P.args, **kwargs: P.kwargs) -> JSON:
            return await self._call(step, key, args, kwargs)

        return call

    def arguments(self, *args: object, **kwargs: object) -> dict[str, JSON]:
        """The call's arguments as recorded: every parameter by name, defaults applied,
        without effect_key."""
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        named = {k: v for k, v in bound.arguments.items() if k != "effect_key"}
        decoded: dict[str, JSON] = json.loads(canonical_json(named))
        return decoded

    async def _call(
        self, step: int | str, key: str | None, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> JSON:
        arguments = self.arguments(*args, **kwargs)
        async with self.run.step(
            self.name,
            arguments,
            step=step,
            key=key,
            summary=self._summary(arguments) if self._summary else "",
            not_applied=self._not_applied,
        ) as call:
            if call.done:
                return call.result
            if self._takes_key:
                kwargs = {**kwargs, "effect_key": call.key}
            if inspect.iscoroutinefunction(self.fn):
                returned = await self.fn(*args, **kwargs)
            else:  # a plain function runs in a worker thread, the loop carrying on
                returned = await asyncio.to_thread(self.fn, *args, **kwargs)
            result = json.loads(canonical_json(returned))
            call.succeed(result, self._undo(result, arguments) if self._undo else None)
        return call.result


async def _invoke(handler: Handler, arguments: bytes, key: str) -> JSON:
    """Call a compensation handler; a plain function runs in a worker thread (it may
    block, even on Accord's blocking client)."""
    decoded = json.loads(arguments) if arguments else None
    args, kwargs = ((), {**decoded}) if isinstance(decoded, dict) else ((decoded,), {})
    kwargs["effect_key"] = key
    if inspect.iscoroutinefunction(handler):
        result = await handler(*args, **kwargs)
    else:
        result = await asyncio.to_thread(handler, *args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
    checked: JSON = json.loads(canonical_json(result))
    return checked


class EffectSteps:
    """The wrappers as methods of the thin client, mixed into AsyncEffects:
    ``accord.effects.step(...)``, ``.progress(run_id)``, ``.run_compensations(...)``.
    The blocking client gets them too (`step` as a ``with`` block)."""

    def _ledger(self) -> RunCalls:
        return cast("RunCalls", self)  # AsyncEffects, which this is mixed into

    @contextlib.asynccontextmanager
    async def step(
        self,
        run_id: str,
        step: int | str,
        tool: str,
        arguments: JSON,
        lease: _HasId | int,
        *,
        key: str | None = None,
        summary: str = "",
        fence: _Fencing | common_pb2.Fence | None = None,
        reconcile: Reconcile | None = None,
        busy_wait: float = DEFAULT_BUSY_WAIT_SECONDS,
        not_applied: tuple[type[BaseException], ...] = (),
    ) -> AsyncIterator[StepCall]:
        """Begin the tool call at step of run_id; the block runs it unless `call.done`
        (then `call.result` is the recorded result). See client/effect_tools.py."""
        async with run_step(
            self._ledger(),
            run_id,
            step,
            tool,
            arguments,
            _lease_id(lease),
            key=key,
            summary=summary,
            fence=_fence_of(fence),
            reconcile=reconcile,
            busy_wait=busy_wait,
            not_applied=not_applied,
        ) as call:
            yield call

    async def progress(self, run_id: str, page_size: int = JOURNAL_PAGE) -> RunProgress:
        """The run and its whole journal: what completed, where to resume."""
        return await read_progress(self._ledger(), run_id, page_size)

    async def run_compensations(
        self,
        run_id: str,
        handlers: Mapping[str, Handler],
        lease: _HasId | int,
        *,
        reconcile: Reconcile | None = None,
        busy_wait: float = DEFAULT_BUSY_WAIT_SECONDS,
    ) -> list[effects_pb2.Effect]:
        """Compensate the run: each registered compensation once, newest first, by the
        handler of its tool (called with its arguments and effect_key=)."""
        return await compensate_run(
            self._ledger(),
            run_id,
            handlers,
            _lease_id(lease),
            reconcile=reconcile,
            busy_wait=busy_wait,
        )


def _lease_id(lease: _HasId | int) -> int:
    return lease if isinstance(lease, int) else lease.id


def _fence_of(fence: _Fencing | common_pb2.Fence | None) -> common_pb2.Fence | None:
    return fence if fence is None or isinstance(fence, common_pb2.Fence) else fence.fence()
