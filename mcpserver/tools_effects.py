"""The effect ledger (#17) as MCP tools: exactly-once side effects for an agent whose tool
calls may be retried, or resumed by another agent.

Before running a tool with a side effect (a payment, an email, a webhook), the agent
calls accord_effects_begin with the run, the step, the tool and its arguments. The
effect's key is derived from those four (client/effect_keys.py), so a retry or a resumed
run names the same call. The answer says what to do:
- PROCEED: this agent is the executor. It runs the tool, then calls accord_effects_complete
  with the claim (a result or an error), or accord_effects_abort if the tool did not take
  effect;
- DONE: it ran already; the recorded result is returned, so the tool is not run again;
- IN_DOUBT: a previous executor's lease ended before it recorded an outcome. The agent
  checks the external system, then begins again with reconciled=true;
- BUSY: another live agent runs it. begin waits at most MAX_WAIT_SECONDS per call
  (wait_seconds) and then answers BUSY with the advice to call again: a bounded wait with
  a follow-up, never a hanging tool call.
Claims hang on the MCP session's lease (accord_leases_start), so an agent that dies
leaves its effect IN_DOUBT, not stuck. accord_effects_journal reads a run: its status,
progress, where to resume, and its effects in the order they began.

Error handling: Accord refusals (NOT_HELD: the claim lapsed; INTENT_MISMATCH: the key was
begun with another call; FENCED; NOT_FOUND; quotas) become tool results through
refusals.py. Beginning without a session lease, or completing with both a result and an
error, is refused by the façade before anything is sent (NO_SESSION_LEASE,
INVALID_ARGUMENT).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult
from pydantic import BaseModel, Field

from accord.client import BeginOutcome, canonical_json, effect_key, intent
from accord.mcpserver import hints, views
from accord.mcpserver.context import AgentSession, Facade
from accord.mcpserver.refusals import FacadeRefusal
from accord.v1 import effects_pb2

MAX_WAIT_SECONDS = 25.0

RunId = Annotated[str, Field(description="The run (workflow, task) the call belongs to")]
Key = Annotated[str, Field(description="The effect's key, as accord_effects_begin returned it")]
Claim = Annotated[int, Field(description="The claim accord_effects_begin returned (PROCEED)")]
LockName = Annotated[
    str | None,
    Field(description="Only while this session holds this lock (else refused: FENCED)"),
]

WHAT_TO_DO = {
    BeginOutcome.PROCEED: (
        "You are the executor: run the tool now (give `key` to the external system as its "
        "idempotency key if it takes one), then call accord_effects_complete with key and "
        "claim and the result (or error); call accord_effects_abort instead if the tool "
        "did not take effect."
    ),
    BeginOutcome.DONE: (
        "Already done: do not run the tool again. effect.result (or effect.failure) is "
        "what happened; continue from there."
    ),
    BeginOutcome.IN_DOUBT: (
        "A previous executor's lease ended before it recorded an outcome: the tool may or "
        "may not have run. Look `key` up in the external system, then call "
        "accord_effects_begin again with reconciled=true to claim it, and complete it with "
        "what you found (or run the tool if it did not happen)."
    ),
    BeginOutcome.BUSY: (
        "Another live agent (effect.claimed_by) is running it now. Call accord_effects_begin "
        "again (wait_seconds waits for it to finish), or do other work and come back."
    ),
}


class IntentView(BaseModel):
    tool: str
    arguments: Any = Field(description="The tool's arguments (JSON)")
    summary: str = ""


class EffectView(BaseModel):
    key: str
    run_id: str
    intent: IntentView
    state: str = Field(description="RUNNING, IN_DOUBT, ABORTED, SUCCEEDED or FAILED")
    result: Any = Field(None, description="SUCCEEDED: the recorded result (JSON)")
    failure: str | None = Field(None, description="FAILED: the recorded error")
    claim: int = Field(description="The current (or last) claim's fencing token")
    attempts: int = Field(description="How many times it was claimed")
    began_by: str = ""
    claimed_by: str = ""
    completed_by: str = ""
    compensation: IntentView | None = None
    compensates: str = Field("", description="For a compensation: the effect it undoes")
    began_revision: int = Field(description="Its place in the run's journal")


class Began(BaseModel):
    outcome: str = Field(description="PROCEED, DONE, IN_DOUBT or BUSY")
    key: str
    claim: int = Field(description="PROCEED: pass to accord_effects_complete / _abort")
    effect: EffectView
    what_to_do: str


class Completed(BaseModel):
    effect: EffectView
    replayed: bool = Field(
        description="True: it had an outcome already; effect shows the first one, which stands"
    )


class RunView(BaseModel):
    run_id: str
    status: str = Field(description="RUNNING, FINISHED, FAILED, COMPENSATING or COMPENSATED")
    effects: int
    running: int
    in_doubt: int
    succeeded: int
    failed: int
    resume_at: str = Field(
        description="The first effect (journal order) not SUCCEEDED or FAILED: resume there"
    )
    journal: list[EffectView] = Field(description="Its effects in the order they began")
    next_page_token: str = Field(description="'' on the last page")


def _json(data: bytes) -> Any:
    try:
        return json.loads(data) if data else None
    except ValueError:  # arguments written by a client that chose another encoding
        return data.decode("utf-8", "replace")


def _intent(msg: effects_pb2.Intent) -> IntentView:
    return IntentView(tool=msg.tool, arguments=_json(msg.arguments), summary=msg.summary)


def effect(msg: effects_pb2.Effect) -> EffectView:
    outcome = msg.outcome
    return EffectView(
        key=msg.key,
        run_id=msg.run_id,
        intent=_intent(msg.intent),
        state=views.enum_name(msg.state, effects_pb2.EffectState, "EFFECT_STATE_"),
        result=_json(outcome.success) if outcome.HasField("success") else None,
        failure=outcome.failure if outcome.HasField("failure") else None,
        claim=msg.claim,
        attempts=msg.attempts,
        began_by=msg.began.agent_id,
        claimed_by=msg.claimed.agent_id,
        completed_by=msg.completed.agent_id,
        compensation=_intent(msg.compensation) if msg.HasField("compensation") else None,
        compensates=msg.compensates,
        began_revision=msg.began_revision,
    )


def _lease(s: AgentSession) -> int:
    if s.lease is None:
        raise FacadeRefusal(
            "NO_SESSION_LEASE",
            "an effect's claim hangs on the session lease, and this session has none",
            "Start one with accord_leases_start, then begin again.",
        )
    return s.lease.id


async def begin(
    s: AgentSession,
    run_id: str,
    step: int | str,
    tool: str,
    arguments: Any,
    *,
    summary: str,
    key: str | None,
    wait_seconds: float,
    reconciled: bool,
    lock: str | None,
) -> Began:
    lease = _lease(s)
    began = await s.client.effects.begin(
        key or effect_key(run_id, step, tool, arguments),
        run_id,
        intent(tool, canonical_json(arguments), summary),
        lease=lease,
        fence=s.fence(lock) if lock else None,
        wait=min(wait_seconds, MAX_WAIT_SECONDS),
        reconciled=reconciled,
    )
    return Began(
        outcome=began.outcome.name,
        key=began.effect.key,
        claim=began.claim,
        effect=effect(began.effect),
        what_to_do=WHAT_TO_DO[began.outcome],
    )


async def complete(
    s: AgentSession,
    key: str,
    claim: int,
    *,
    result: Any,
    error: str | None,
    compensation_tool: str | None,
    compensation_arguments: Any,
    lock: str | None,
) -> Completed:
    if error is not None and result is not None:
        raise FacadeRefusal(
            "INVALID_ARGUMENT",
            "give a result (the tool succeeded) or an error (it failed), not both",
            "Complete again with only one of them.",
        )
    undo = (
        intent(compensation_tool, canonical_json(compensation_arguments))
        if compensation_tool
        else None
    )
    done = await s.client.effects.complete(
        key,
        claim,
        lease=_lease(s),
        result=canonical_json(result) if error is None else None,
        error=error,
        compensation=undo,
        fence=s.fence(lock) if lock else None,
    )
    return Completed(effect=effect(done.effect), replayed=done.replayed)


async def journal(s: AgentSession, run_id: str, limit: int, page_token: str) -> RunView:
    page = await s.client.effects.get_run(run_id, limit=limit, page_token=page_token)
    run = page.run
    return RunView(
        run_id=run.run_id,
        status=views.enum_name(run.status, effects_pb2.RunStatus, "RUN_STATUS_"),
        effects=run.effects,
        running=run.running,
        in_doubt=run.in_doubt,
        succeeded=run.succeeded,
        failed=run.failed,
        resume_at=run.resume_at,
        journal=[effect(e) for e in page.journal],
        next_page_token=page.next_page_token,
    )


def register(server: MCPServer[Any], facade: Facade) -> None:
    @server.tool(
        name="accord_effects_begin",
        description=(
            "Before running a tool with a side effect (payment, email, webhook, deploy), "
            "begin it here so it runs exactly once even if you retry or another agent "
            "resumes your run. The call is named by run_id, step, tool and arguments. "
            "outcome PROCEED: run the tool, then accord_effects_complete with the claim. "
            "DONE: it ran already; effect.result is what happened, do not run it again. "
            "IN_DOUBT: its executor died mid-way; check the external system, then begin "
            "again with reconciled=true. BUSY: another agent runs it; call again later. "
            "Needs a session lease (accord_leases_start). what_to_do says the next step."
        ),
        annotations=hints.writes("Begin a side effect", destructive=False, idempotent=True),
    )
    async def accord_effects_begin(
        ctx: Context[Any, Any],
        run_id: RunId,
        step: Annotated[
            int | str,
            Field(description="The call's place in the run (1, 2, ... or a name)"),
        ],
        tool: Annotated[str, Field(description="The tool about to be run")],
        arguments: Annotated[Any, Field(description="Its arguments (JSON), as you will run it")],
        summary: Annotated[str, Field(description="For people reading the journal")] = "",
        key: Annotated[
            str | None,
            Field(description="An explicit effect key instead of the derived one"),
        ] = None,
        wait_seconds: Annotated[
            float,
            Field(ge=0, description=f"BUSY: wait this long for it (≤ {MAX_WAIT_SECONDS:g})"),
        ] = 0.0,
        reconciled: Annotated[
            bool, Field(description="IN_DOUBT: you checked the external system; claim it")
        ] = False,
        lock: LockName = None,
    ) -> Annotated[CallToolResult, Began]:
        return await facade.run(
            ctx,
            lambda s: begin(
                s,
                run_id,
                step,
                tool,
                arguments,
                summary=summary,
                key=key,
                wait_seconds=wait_seconds,
                reconciled=reconciled,
                lock=lock,
            ),
        )

    @server.tool(
        name="accord_effects_complete",
        description=(
            "Record what the tool you began (PROCEED) did: its result (JSON) on success, or "
            "error on failure; a failure is final for this call. Optionally register the "
            "tool call that undoes it (compensation_tool, compensation_arguments). "
            "Completing again returns the first outcome (replayed). Refusals: NOT_HELD (your "
            "claim lapsed with your lease: another agent may run it; do not retry blindly)."
        ),
        annotations=hints.writes(
            "Record a side effect's outcome", destructive=False, idempotent=True
        ),
    )
    async def accord_effects_complete(
        ctx: Context[Any, Any],
        key: Key,
        claim: Claim,
        result: Annotated[Any, Field(description="The tool's result (JSON)")] = None,
        error: Annotated[str | None, Field(description="The tool's error (it failed)")] = None,
        compensation_tool: Annotated[
            str | None, Field(description="The tool that undoes this one")
        ] = None,
        compensation_arguments: Annotated[Any, Field(description="Its arguments (JSON)")] = None,
        lock: LockName = None,
    ) -> Annotated[CallToolResult, Completed]:
        return await facade.run(
            ctx,
            lambda s: complete(
                s,
                key,
                claim,
                result=result,
                error=error,
                compensation_tool=compensation_tool,
                compensation_arguments=compensation_arguments,
                lock=lock,
            ),
        )

    @server.tool(
        name="accord_effects_abort",
        description=(
            "Give up a claim without an outcome, when the tool did not take effect (it was "
            "refused before doing anything, say): the next accord_effects_begin of the key "
            "is told PROCEED. Never abort after the tool may have acted: complete with an "
            "error instead. Refusals: NOT_HELD (the claim is not yours any more), "
            "CONDITION_FAILED (it has an outcome already)."
        ),
        annotations=hints.writes("Abort a side effect", destructive=False, idempotent=True),
    )
    async def accord_effects_abort(
        ctx: Context[Any, Any],
        key: Key,
        claim: Claim,
        reason: Annotated[str, Field(description="Why, for the journal")] = "",
    ) -> Annotated[CallToolResult, EffectView]:
        async def work(s: AgentSession) -> EffectView:
            aborted = await s.client.effects.abort(key, claim, lease=_lease(s), reason=reason)
            return effect(aborted)

        return await facade.run(ctx, work)

    @server.tool(
        name="accord_effects_journal",
        description=(
            "A run's journal: its status, how many effects succeeded, failed, run or are in "
            "doubt, resume_at (the first effect not finished: where a restarted agent "
            "resumes), and its effects in the order they began, with their results, a page "
            "at a time. Refusals: NOT_FOUND (no such run)."
        ),
        annotations=hints.read_only("Read a run's journal"),
    )
    async def accord_effects_journal(
        ctx: Context[Any, Any],
        run_id: RunId,
        limit: Annotated[int, Field(ge=1, le=1000)] = 100,
        page_token: Annotated[str, Field(description="From the previous page")] = "",
    ) -> Annotated[CallToolResult, RunView]:
        return await facade.run(ctx, lambda s: journal(s, run_id, limit, page_token))
