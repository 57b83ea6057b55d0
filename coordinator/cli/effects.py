"""Admin commands for the effect ledger: `accord effects ls|show` and `accord runs show`,
and how effects and runs are rendered for people.

`effects ls` lists a namespace's effects in key order, or a run's in journal order (the
order they began), filtered by state;
`effects show KEY` one effect whole: its intent, state, outcome, who began, claimed and
completed it and when, its compensation; `runs show RUN` a run's status and progress
and its journal, in the order the effects began. With -o json each prints the contract's
messages in their standard JSON mapping (bytes, such as arguments and results, in
base64; int64 values as strings).

Error handling: as every admin command (common.py): an unknown key or run is exit code
1 with the server's message; an unreachable service is exit code 3.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType

from accord.client import AsyncClient, EffectState
from accord.coordinator.cli.common import (
    ADDR,
    AGENT,
    NAMESPACE,
    AddrOpt,
    AgentOpt,
    NamespaceOpt,
    Output,
    OutputOpt,
    TokenOpt,
    as_dict,
    call,
    emit,
    fields_table,
    table_of,
    when,
)
from accord.v1 import effects_pb2

effects_app = typer.Typer(
    help="Inspect the effect ledger: tool calls and their outcomes.", no_args_is_help=True
)
runs_app = typer.Typer(
    help="Inspect runs: their status, progress and journal.", no_args_is_help=True
)

# The server's largest page.
_PAGE = 1000


class StateFilter(StrEnum):
    running = "running"
    in_doubt = "in-doubt"
    aborted = "aborted"
    succeeded = "succeeded"
    failed = "failed"


_STATES = {
    StateFilter.running: EffectState.RUNNING,
    StateFilter.in_doubt: EffectState.IN_DOUBT,
    StateFilter.aborted: EffectState.ABORTED,
    StateFilter.succeeded: EffectState.SUCCEEDED,
    StateFilter.failed: EffectState.FAILED,
}
_STATE_NAMES: dict[int, str] = {
    v: n.removeprefix("EFFECT_STATE_").lower().replace("_", "-")
    for n, v in effects_pb2.EffectState.items()
}
_RUN_STATUS_NAMES: dict[int, str] = {
    v: n.removeprefix("RUN_STATUS_").lower() for n, v in effects_pb2.RunStatus.items()
}


def _short(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _json_text(blob: bytes, limit: int) -> str:
    """A JSON blob for people: as written when it is UTF-8, else its size."""
    if not blob:
        return "-"
    try:
        return _short(blob.decode("utf-8"), limit)
    except UnicodeDecodeError:
        return f"<{len(blob)} bytes, not UTF-8>"


def state_name(state: int) -> str:
    return _STATE_NAMES.get(state, str(state))


def _outcome(effect: effects_pb2.Effect, limit: int) -> str:
    which = effect.outcome.WhichOneof("result")
    if which == "success":
        return f"ok {_json_text(effect.outcome.success, limit)}"
    if which == "failure":
        return f"failed: {_short(effect.outcome.failure, limit)}"
    return "-"


def _actor(actor: effects_pb2.EffectActor) -> str:
    if not actor.agent_id and not actor.lease_id and not actor.HasField("at"):
        return "-"
    who = actor.agent_id or "-"
    if actor.principal and actor.principal != actor.agent_id:
        who += f" ({actor.principal})"
    lease = f", lease {actor.lease_id:x}" if actor.lease_id else ""
    trace = (
        f", trace {actor.trace_context.traceparent}"
        if actor.HasField("trace_context") and actor.trace_context.traceparent
        else ""
    )
    return f"{who}{lease}, {when(actor.at)}{trace}"


def _intent(intent: effects_pb2.Intent) -> str:
    text = f"{intent.tool} {_json_text(intent.arguments, 200)}"
    return text + (f" ({_short(intent.summary, 100)})" if intent.summary else "")


def effect_tables(effect: effects_pb2.Effect) -> RenderableType:
    pairs: list[tuple[str, object]] = [
        ("run", effect.run_id),
        ("tool", effect.intent.tool),
        ("arguments", _json_text(effect.intent.arguments, 2000)),
        ("summary", effect.intent.summary or "-"),
        ("state", state_name(effect.state)),
        ("outcome", _outcome(effect, 2000)),
        ("began", _actor(effect.began)),
        ("journal position", f"revision {effect.began_revision}"),
        ("claimed", _actor(effect.claimed)),
        ("claim (fencing token)", effect.claim or "-"),
        ("attempts", effect.attempts),
        ("completed", _actor(effect.completed)),
        ("abort reason", effect.abort_reason or "-"),
        ("compensation", _intent(effect.compensation) if effect.HasField("compensation") else "-"),
    ]
    if effect.compensates:
        pairs.append(("compensates", effect.compensates))
    return fields_table(f"effect {effect.key}: {state_name(effect.state)}", pairs)


def _progress(run: effects_pb2.Run) -> str:
    counts = [
        (run.succeeded, "succeeded"),
        (run.failed, "failed"),
        (run.running, "running"),
        (run.in_doubt, "in doubt"),
    ]
    parts = [f"{n} {what}" for n, what in counts if n]
    others = run.effects - sum(n for n, _ in counts)
    if others > 0:
        parts.append(f"{others} aborted")
    return f"{run.effects} effects" + (f": {', '.join(parts)}" if parts else "")


def run_tables(run: effects_pb2.Run, journal: Sequence[effects_pb2.Effect], more: bool) -> Group:
    summary = fields_table(
        f"run {run.run_id}: {_RUN_STATUS_NAMES.get(run.status, str(run.status))}",
        [
            ("progress", _progress(run)),
            ("resume at", run.resume_at or "- (every effect completed)"),
            (
                "compensations",
                f"{run.compensated} of {run.compensations} done" if run.compensations else "none",
            ),
            ("created", _actor(run.created)),
            ("updated", _actor(run.updated)),
        ],
    )
    rows = [
        (
            i,
            e.key,
            e.intent.tool,
            state_name(e.state),
            e.attempts,
            e.began.agent_id or "-",
            when(e.began.at),
            _outcome(e, 60),
        )
        for i, e in enumerate(journal, 1)
    ]
    title = "journal, in the order the effects began"
    if more:
        title += f" (the first {len(journal)}; --limit for more)"
    table = table_of(
        title, ["#", "KEY", "TOOL", "STATE", "ATTEMPTS", "BEGAN BY", "BEGAN", "OUTCOME"], rows
    )
    return Group(summary, "", table)


@effects_app.command("ls")
def effects_ls(
    run: Annotated[str, typer.Option(help="only the effects of this run")] = "",
    state: Annotated[
        list[StateFilter] | None, typer.Option(help="only effects in this state (repeatable)")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="at most this many effects")] = 100,
    output: OutputOpt = Output.table,
    addr: AddrOpt = ADDR,
    namespace: NamespaceOpt = NAMESPACE,
    agent: AgentOpt = AGENT,
    token: TokenOpt = "",
) -> None:
    """Effects: key, run, tool, state, attempts, who began it, outcome.

    In key order; with --run, that run's in the order they began.
    """
    states = [_STATES[s] for s in state or []]

    async def work(client: AsyncClient) -> tuple[list[effects_pb2.Effect], bool]:
        found: list[effects_pb2.Effect] = []
        token = ""
        while True:
            page = await client.effects.list(
                states=states, run_id=run, limit=min(_PAGE, limit - len(found)), page_token=token
            )
            found += page.effects
            token = page.next_page_token
            if not token or len(found) >= limit:
                return found[:limit], bool(token)

    effects, more = call(addr, namespace, agent, work, token)
    rows = [
        (
            e.key,
            e.run_id,
            e.intent.tool,
            state_name(e.state),
            e.attempts,
            e.began.agent_id or "-",
            when(e.began.at),
            _outcome(e, 40),
        )
        for e in effects
    ]
    title = f"effects in {namespace}" + (f", run {run}" if run else "")
    if more:
        title += f" (the first {limit}; --limit for more)"
    table = table_of(
        title, ["KEY", "RUN", "TOOL", "STATE", "ATTEMPTS", "BEGAN BY", "BEGAN", "OUTCOME"], rows
    )
    emit(output, [as_dict(e) for e in effects], table)


@effects_app.command("show")
def effects_show(
    key: Annotated[str, typer.Argument(metavar="KEY", help="the effect's key")],
    output: OutputOpt = Output.table,
    addr: AddrOpt = ADDR,
    namespace: NamespaceOpt = NAMESPACE,
    agent: AgentOpt = AGENT,
    token: TokenOpt = "",
) -> None:
    """An effect: intent, state, outcome, who began, claimed and completed it, when."""
    effect = call(addr, namespace, agent, lambda c: c.effects.get(key), token)
    emit(output, as_dict(effect), effect_tables(effect))


@runs_app.command("show")
def runs_show(
    run_id: Annotated[str, typer.Argument(metavar="RUN", help="the run's id")],
    limit: Annotated[int, typer.Option(min=1, help="journal entries to show at most")] = 1000,
    output: OutputOpt = Output.table,
    addr: AddrOpt = ADDR,
    namespace: NamespaceOpt = NAMESPACE,
    agent: AgentOpt = AGENT,
    token: TokenOpt = "",
) -> None:
    """A run: status, progress, where to resume, compensations, and its journal."""

    async def work(
        client: AsyncClient,
    ) -> tuple[effects_pb2.Run, list[effects_pb2.Effect], bool]:
        page = await client.effects.get_run(run_id, limit=min(_PAGE, limit))
        run, journal = page.run, list(page.journal)
        while page.next_page_token and len(journal) < limit:
            page = await client.effects.get_run(
                run_id, limit=min(_PAGE, limit - len(journal)), page_token=page.next_page_token
            )
            journal += page.journal
        return run, journal[:limit], bool(page.next_page_token)

    run, journal, more = call(addr, namespace, agent, work, token)
    data: dict[str, Any] = {"run": as_dict(run), "journal": [as_dict(e) for e in journal]}
    emit(output, data, run_tables(run, journal, more))
