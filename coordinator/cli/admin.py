"""Admin commands of `accord`: inspect locks, leases, deadlocks and votes, break a lock,
follow a vote to its decision.

Each command makes one or two calls with the async client under a short deadline and
prints a table (`-o table`, the default) or JSON (`-o json`: proto messages in their
standard JSON mapping with proto field names, so int64 values such as lease ids and
tokens are strings). Exit codes: 0 done, 1 an Accord error, 2 bad usage or a refused
break, 3 the service could not be reached.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from enum import StrEnum
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from google.protobuf import timestamp_pb2
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Column, Table
from rich.text import Text

from accord.client import (
    AccordError,
    AsyncClient,
    BallotEvent,
    DeadlineExceededError,
    DecisionEvent,
    LeaseInfo,
    RetryPolicy,
    Rule,
    UnavailableError,
    VoteEvent,
    VoteStatus,
)
from accord.v1 import leases_pb2, locks_pb2, votes_pb2

T = TypeVar("T")

CALL_TIMEOUT_SECONDS = 5.0
_RETRY = RetryPolicy(max_attempts=4, initial_backoff=0.05, max_backoff=0.5)
EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3
# Piped table output is not cut to 80 columns.
_PIPE_WIDTH = 1000


class Output(StrEnum):
    table = "table"
    json = "json"


class VoteFilter(StrEnum):
    open = "open"
    decided = "decided"
    all = "all"


class GraphFormat(StrEnum):
    text = "text"
    dot = "dot"
    json = "json"


OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="table or json")]
AddrOpt = Annotated[
    str, typer.Option(envvar="ACCORD_ADDR", help="coordinator host:port[,host:port...]")
]
NamespaceOpt = Annotated[str, typer.Option(envvar="ACCORD_NAMESPACE", help="namespace")]
AgentOpt = Annotated[str, typer.Option(envvar="ACCORD_AGENT_ID", help="agent id to call as")]
ADDR, NAMESPACE, AGENT = "127.0.0.1:50051", "default", "accord-cli"

locks_app = typer.Typer(help="Inspect and break locks.", no_args_is_help=True)
leases_app = typer.Typer(help="Inspect leases.", no_args_is_help=True)
deadlocks_app = typer.Typer(help="Inspect resolved deadlocks.", no_args_is_help=True)
votes_app = typer.Typer(help="Inspect votes and follow them.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(locks_app, name="locks")
    app.add_typer(leases_app, name="leases")
    app.add_typer(deadlocks_app, name="deadlocks")
    app.add_typer(votes_app, name="votes")


# --- the two helpers: run calls, print results ------------------------------------


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"accord: {' '.join(message.split())}", err=True)
    raise typer.Exit(code)


def _call(addr: str, namespace: str, agent: str, work: Callable[[AsyncClient], Awaitable[T]]) -> T:
    """Run work with a client to addr; Accord errors become one line on stderr and an
    exit code."""
    addresses = [a.strip() for a in addr.split(",") if a.strip()]
    if not addresses:
        _fail("--addr names no coordinator address", EXIT_USAGE)

    async def main() -> T:
        async with AsyncClient(
            addresses,
            agent_id=agent,
            namespace=namespace,
            timeout=CALL_TIMEOUT_SECONDS,
            retry=_RETRY,
        ) as client:
            return await work(client)

    unreachable = f"cannot reach the Accord service at {addr}"
    try:
        return asyncio.run(main())
    except UnavailableError as exc:
        if exc.reason:  # a replica answered, but its etcd did not
            _fail(f"the Accord service at {addr} is unavailable: {exc.message}", EXIT_UNREACHABLE)
        _fail(f"{unreachable}: {exc.message}", EXIT_UNREACHABLE)
    except DeadlineExceededError as exc:
        if exc.reason:  # the service itself gave up
            _fail(exc.message, EXIT_ERROR)
        _fail(f"{unreachable}: no answer within {CALL_TIMEOUT_SECONDS:g}s", EXIT_UNREACHABLE)
    except AccordError as exc:
        _fail(exc.message, EXIT_ERROR)


def _emit(output: Output, data: Any, table: RenderableType) -> None:
    """data as JSON, or table, on stdout."""
    if output is Output.json:
        typer.echo(json.dumps(data, indent=2))
    else:
        console = Console(width=None if sys.stdout.isatty() else _PIPE_WIDTH)
        with console.capture() as captured:
            console.print(table)
        typer.echo("\n".join(line.rstrip() for line in captured.get().splitlines()))


# --- formatting ---------------------------------------------------------------------


def _dict(message: Message) -> dict[str, Any]:
    return MessageToDict(
        message, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
    )


def _table(title: str, headers: Sequence[str], rows: Iterable[Sequence[object]]) -> Table:
    columns = [Column(h, overflow="fold") for h in headers]  # ids are folded, never cut
    table = Table(*columns, title=title, title_justify="left", box=box.SIMPLE, show_edge=False)
    for row in rows:
        table.add_row(*(Text(str(cell)) for cell in row))  # Text: names are not markup
    if not table.row_count:
        table.caption, table.caption_justify = "none", "left"
    return table


def _mode(mode: int) -> str:
    return "shared" if mode == locks_pb2.LOCK_MODE_SHARED else "exclusive"


def _kind(state: locks_pb2.LockState) -> str:
    if state.permits:
        return f"semaphore ({len(state.holders)}/{state.permits} permits)"
    return _mode(state.holders[0].mode) if state.holders else "exclusive"


def _node(agent: str, lease: int) -> str:
    """A lease, named by its agent: the detector's nodes (one agent may hold several)."""
    return f"{agent or 'agent'}#{lease:x}"


def _holder(entry: locks_pb2.LockEntry) -> str:
    return f"{entry.agent_id or f'lease {entry.lease_id}'} (token {entry.token})"


def _duration(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _ago(ts: timestamp_pb2.Timestamp) -> str:
    return f"{_duration(max(0, int(time.time()) - ts.seconds))} ago" if ts.seconds else "-"


def _when(ts: timestamp_pb2.Timestamp) -> str:
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts.seconds))
    return f"{at} ({_ago(ts)})" if ts.seconds else "-"


# --- locks --------------------------------------------------------------------------


@locks_app.command("ls")
def locks_ls(
    prefix: Annotated[str, typer.Option(help="only locks whose name starts with this")] = "",
    output: OutputOpt = Output.table,
    addr: AddrOpt = ADDR,
    namespace: NamespaceOpt = NAMESPACE,
    agent: AgentOpt = AGENT,
) -> None:
    """Every lock and semaphore: mode, holders (agent, token), number waiting."""
    states = _call(addr, namespace, agent, lambda c: c.locks.list(prefix))
    rows = [
        (s.name, _kind(s), "\n".join(_holder(h) for h in s.holders), len(s.waiters)) for s in states
    ]
    table = _table(f"locks in {namespace}", ["LOCK", "MODE", "HOLDERS", "WAITING"], rows)
    _emit(output, [_dict(s) for s in states], table)


@locks_app.command("show")
def locks_show(
    name: Annotated[str, typer.Argument(help="the lock's name")],
    output: OutputOpt = Output.table,
    addr: AddrOpt = ADDR,
    namespace: NamespaceOpt = NAMESPACE,
    agent: AgentOpt = AGENT,
) -> None:
    """A lock's holders (lease, token, TTL left) and its waiters in queue order."""
    state, _ = _call(addr, namespace, agent, lambda c: c.locks.describe(name))
    holders = _table(
        f"{name}: {_kind(state)}, held by",
        ["AGENT", "LEASE", "TOKEN", "MODE", "SINCE", "LEASE TTL LEFT"],
        [
            (
                h.agent_id,
                h.lease_id,
                h.token,
                _mode(h.mode),
                _ago(h.since),
                f"{h.lease_ttl_seconds}s",
            )
            for h in state.holders
        ],
    )
    waiters = _table(
        "waiting, in order",
        ["POS", "AGENT", "LEASE", "MODE", "SINCE", "PRIORITY"],
        [
            (i, w.agent_id, w.lease_id, _mode(w.mode), _ago(w.since), w.priority)
            for i, w in enumerate(state.waiters)
        ],
    )
    _emit(output, _dict(state), Group(holders, "", waiters))


def _dot_id(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _graph_text(edges: Sequence[locks_pb2.WaitEdge], fmt: GraphFormat) -> str:
    if fmt is GraphFormat.dot:
        nodes = sorted(
            {_node(e.waiter_agent, e.waiter_lease) for e in edges}
            | {_node(e.holder_agent, e.holder_lease) for e in edges}
        )
        lines = ["digraph waits {", *(f"  {_dot_id(n)};" for n in nodes)]
        for e in edges:
            style = "" if e.holder_holding else ", style=dashed"
            lines.append(
                f"  {_dot_id(_node(e.waiter_agent, e.waiter_lease))} -> "
                f"{_dot_id(_node(e.holder_agent, e.holder_lease))} "
                f"[label={_dot_id(e.lock)}{style}];"
            )
        return "\n".join([*lines, "}"])
    return "\n".join(
        f"{_node(e.waiter_agent, e.waiter_lease)} -> {_node(e.holder_agent, e.holder_lease)} "
        f"on {e.lock} ({_mode(e.waiter_mode)}{'' if e.holder_holding else ', queued ahead'})"
        for e in edges
    )


@locks_app.command("graph")
def locks_graph(
    fmt: Annotated[
        GraphFormat, typer.Option("--format", help="text, dot (Graphviz) or json")
    ] = GraphFormat.text,
    output: OutputOpt = Output.table,
    addr: AddrOpt = ADDR,
    namespace: NamespaceOpt = NAMESPACE,
    agent: AgentOpt = AGENT,
) -> None:
    """The wait-for graph: who waits for whom, on which lock.

    An edge goes from each waiting agent to each agent it waits for; "queued ahead"
    (dashed in DOT) marks one that is itself waiting, ahead in the queue. -o json is
    --format json.
    """
    edges = _call(addr, namespace, agent, lambda c: c.locks.wait_graph())
    if output is Output.json or fmt is GraphFormat.json:
        typer.echo(json.dumps([_dict(e) for e in edges], indent=2))
    elif edges or fmt is GraphFormat.dot:
        typer.echo(_graph_text(edges, fmt))


@locks_app.command("break")
def locks_break(
    name: Annotated[str, typer.Argument(help="the lock's name")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    output: OutputOpt = Output.table,
    addr: AddrOpt = ADDR,
    namespace: NamespaceOpt = NAMESPACE,
    agent: AgentOpt = AGENT,
) -> None:
    """Forced release of a lock's holders: their later fenced writes fail with FENCED."""
    if not yes:
        if not sys.stdin.isatty():
            _fail(
                f"refusing to break {name!r} without --yes (no terminal to confirm on)", EXIT_USAGE
            )
        state, _ = _call(addr, namespace, agent, lambda c: c.locks.describe(name))
        if state.holders:
            who = ", ".join(_holder(h) for h in state.holders)
            typer.confirm(f"Break {name!r}, held by {who}?", abort=True, err=True)
    broken = _call(addr, namespace, agent, lambda c: c.locks.break_lock(name))
    table = _table(
        f"broke {name}" if broken else f"nobody held {name}: nothing broken",
        ["AGENT", "LEASE", "TOKEN", "MODE", "SINCE"],
        [(b.agent_id, b.lease_id, b.token, _mode(b.mode), _ago(b.since)) for b in broken],
    )
    _emit(output, [_dict(b) for b in broken], table)


# --- leases and deadlocks -------------------------------------------------------------


def _lease_proto(info: LeaseInfo) -> leases_pb2.LeaseInfo:
    msg = leases_pb2.LeaseInfo(
        id=info.id,
        agent_id=info.agent_id,
        granted_ttl_seconds=info.granted_ttl,
        ttl_seconds=info.ttl,
        labels=info.labels,
        locks=info.locks,
    )
    if info.granted_at is not None:
        msg.granted_at.FromDatetime(info.granted_at)
    return msg


@leases_app.command("ls")
def leases_ls(
    output: OutputOpt = Output.table,
    addr: AddrOpt = ADDR,
    namespace: NamespaceOpt = NAMESPACE,
    agent: AgentOpt = AGENT,
) -> None:
    """Every live lease: agent, TTL left of the granted TTL, labels, locks."""
    leases = _call(addr, namespace, agent, lambda c: c.leases.list())
    rows = [
        (
            lease.id,
            lease.agent_id,
            f"{lease.ttl}s / {lease.granted_ttl}s",
            ",".join(f"{k}={v}" for k, v in sorted(lease.labels.items())),
            "\n".join(lease.locks),
        )
        for lease in leases
    ]
    table = _table(f"leases in {namespace}", ["ID", "AGENT", "TTL", "LABELS", "LOCKS"], rows)
    _emit(output, [_dict(_lease_proto(lease)) for lease in leases], table)


def _cycle_text(cycle: Sequence[locks_pb2.WaitEdge]) -> str:
    if not cycle:
        return "-"
    steps = [f"-[{e.lock}]-> {_node(e.holder_agent, e.holder_lease)}" for e in cycle]
    return " ".join([_node(cycle[0].waiter_agent, cycle[0].waiter_lease), *steps])


@deadlocks_app.command("ls")
def deadlocks_ls(
    limit: Annotated[int, typer.Option(min=1, max=100, help="at most this many")] = 20,
    output: OutputOpt = Output.table,
    addr: AddrOpt = ADDR,
    namespace: NamespaceOpt = NAMESPACE,
    agent: AgentOpt = AGENT,
) -> None:
    """Recently resolved deadlocks, newest first: the victim, the cycle, why that victim."""
    deadlocks = _call(addr, namespace, agent, lambda c: c.locks.deadlocks(limit))
    rows = [
        (
            d.id,
            _when(d.detected_at),
            f"{_node(d.victim_agent, d.victim_lease)} on {d.victim_lock}",
            _cycle_text(d.cycle),
            d.policy,
        )
        for d in deadlocks
    ]
    table = _table(f"deadlocks in {namespace}", ["ID", "WHEN", "VICTIM", "CYCLE", "POLICY"], rows)
    _emit(output, [_dict(d) for d in deadlocks], table)


# --- votes ----------------------------------------------------------------------------

_VOTE_STATUS = {
    VoteFilter.open: VoteStatus.OPEN,
    VoteFilter.decided: VoteStatus.DECIDED,
    VoteFilter.all: None,
}
_OUTCOMES = {v: n.removeprefix("OUTCOME_") for n, v in votes_pb2.Outcome.items()}
_DECIDED_BY = {
    votes_pb2.DECIDED_BY_CERTAINTY: "certain before the deadline",
    votes_pb2.DECIDED_BY_ALL_CAST: "every ballot cast",
    votes_pb2.DECIDED_BY_DEADLINE: "at the deadline",
    votes_pb2.DECIDED_BY_CANCEL: "cancelled",
}


def _short(text: str, limit: int) -> str:
    """One line, at most limit characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _num(value: float) -> str:
    return f"{value:g}"


def _relative(ts: timestamp_pb2.Timestamp) -> str:
    """When ts is, from now: "in 4m10s" or "3s ago"."""
    if not ts.seconds:
        return "-"
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts.seconds))
    left = ts.seconds - int(time.time())
    return f"{at} (in {_duration(left)})" if left > 0 else f"{at} ({_ago(ts)})"


def _outcome(decision: votes_pb2.Decision) -> str:
    name = _OUTCOMES.get(decision.outcome, str(decision.outcome))
    return f"{name} {decision.option!r}" if decision.option else name


def _vote_status(vote: votes_pb2.Vote) -> str:
    return _outcome(vote.decision) if vote.HasField("decision") else "open"


def _participation(vote: votes_pb2.Vote) -> str:
    """Ballots cast of the electorate: "2/5" ("-/5" for an open vote listed without its
    tally)."""
    if vote.HasField("tally"):
        return f"{vote.tally.participated}/{vote.tally.electorate_size}"
    if vote.HasField("decision"):
        return f"{vote.decision.tally.participated}/{vote.decision.tally.electorate_size}"
    return f"-/{len(vote.voters)}"


def _turnout(tally: votes_pb2.Tally) -> str:
    text = (
        f"{tally.participated} of {tally.electorate_size} voters "
        f"(weight {_num(tally.participated_weight)} of {_num(tally.electorate_weight)}), "
        f"{tally.abstained} abstaining"
    )
    return text + (f", vetoed by {', '.join(tally.vetoed_by)}" if tally.vetoed_by else "")


def _ballot_text(ballot: votes_pb2.Ballot) -> str:
    parts = [ballot.choice] if ballot.choice else []
    if ballot.abstain:
        parts.append("abstain")
    if ballot.veto:
        parts.append("VETO")
    return " + ".join(parts) or "no veto"  # a veto holder outside the electorate


def _electorate(vote: votes_pb2.Vote) -> str:
    weight = sum(v.weight for v in vote.voters)
    text = f"{len(vote.voters)} voters, weight {_num(weight)}"
    if vote.spec.electorate.WhichOneof("source") == "lease_labels":
        labels = vote.spec.electorate.lease_labels.labels
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        text += f" (live leases labelled {selector})"
    return text


def _quorum(quorum: votes_pb2.Quorum) -> str:
    parts = []
    if quorum.min_voters:
        parts.append(f"{quorum.min_voters} voters")
    if quorum.min_weight:
        parts.append(f"weight {_num(quorum.min_weight)}")
    return " and ".join(parts) or "none"


def _fields(title: str, pairs: Sequence[tuple[str, object]]) -> Table:
    table = Table(
        Column(style="bold"),
        Column(overflow="fold"),
        title=title,
        title_justify="left",
        box=box.SIMPLE,
        show_edge=False,
        show_header=False,
    )
    for name, value in pairs:
        table.add_row(Text(name), Text(str(value)))
    return table


def _vote_tables(vote: votes_pb2.Vote) -> Group:
    spec = vote.spec
    rule = Rule.from_proto(spec.rule)
    tie = "escalate" if spec.on_tie == votes_pb2.TIE_POLICY_ESCALATE else "no decision"
    summary = _fields(
        f"vote {vote.id}: {_vote_status(vote)}",
        [
            ("question", spec.question),
            ("options", ", ".join(spec.options)),
            ("rule", rule.describe(len(vote.voters))),
            ("electorate", _electorate(vote)),
            ("quorum", _quorum(spec.quorum)),
            ("veto holders", ", ".join(spec.veto_holders) or "-"),
            ("deadline", _relative(spec.deadline)),
            (
                "abstain / change",
                f"{'allowed' if spec.allow_abstain else 'not allowed'} / "
                f"{'allowed' if spec.allow_change else 'not allowed'}",
            ),
            ("on a tie", tie),
            (
                "proposed by",
                f"{vote.proposed_by.agent_id or '-'}, "
                f"{_when(vote.proposed_by.written_at)}, revision {vote.created_revision}",
            ),
            ("participation", _turnout(vote.tally)),
        ],
    )
    ballots = _table(
        "ballots, in the order cast",
        ["VOTER", "BALLOT", "WEIGHT", "CONFIDENCE", "CAST AT", "REVISION", "RATIONALE"],
        [
            (
                b.voter,
                _ballot_text(b),
                _num(b.weight),
                _num(b.confidence) if b.confidence else "-",
                _when(b.cast_at),
                b.revision,
                _short(b.rationale, 60) or "-",
            )
            for b in vote.ballots
        ],
    )
    tally = vote.tally
    options = _table(
        "tally",
        ["OPTION", "VOTERS", "WEIGHT", "MEAN CONFIDENCE"],
        [
            (o.option, o.voters, _num(o.weight), _num(o.mean_confidence) if o.voters else "-")
            for o in tally.options
        ],
    )
    parts: list[RenderableType] = [summary, "", ballots, "", options]
    if vote.HasField("decision"):
        d = vote.decision
        pairs: list[tuple[str, object]] = [
            ("outcome", _outcome(d)),
            ("decided by", _DECIDED_BY.get(d.decided_by, str(d.decided_by))),
            ("decided at", f"{_when(d.decided_at)}, revision {d.revision}"),
            ("quorum met", "yes" if d.quorum_met else "no"),
        ]
        if d.cancelled_by or d.cancel_reason:
            pairs.append(("cancelled by", f"{d.cancelled_by or '-'}: {d.cancel_reason or '-'}"))
        pairs.append(("explanation", " ".join(d.explanation.split())))
        parts += ["", _fields("decision", pairs)]
    return Group(*parts)


def _event_line(event: VoteEvent) -> str:
    """One line per watch event, for people."""
    if isinstance(event, BallotEvent):
        b = event.ballot
        confidence = f", confidence {_num(b.confidence)}" if b.confidence else ""
        rationale = f": {_short(b.rationale, 100)}" if b.rationale else ""
        return (
            f"ballot    {b.voter} -> {_ballot_text(b)} (weight {_num(b.weight)}{confidence}, "
            f"revision {b.revision}){rationale}"
        )
    if isinstance(event, DecisionEvent):
        d = event.decision
        by = _DECIDED_BY.get(d.decided_by, str(d.decided_by))
        return (
            f"decision  {_outcome(d)} ({by}, revision {d.revision}): "
            f"{' '.join(d.explanation.split())}"
        )
    vote = event.vote
    return (
        f"state     {vote.id}: {_vote_status(vote)}, {_participation(vote)} voted, "
        f"deadline {_relative(vote.spec.deadline)}: {_short(vote.spec.question, 80)}"
    )


def _event_json(event: VoteEvent) -> str:
    """One line per watch event: the contract's VotesWatchResponse, without its header."""
    if isinstance(event, BallotEvent):
        message = votes_pb2.VotesWatchResponse(ballot=event.ballot)
    elif isinstance(event, DecisionEvent):
        message = votes_pb2.VotesWatchResponse(decision=event.decision)
    else:
        message = votes_pb2.VotesWatchResponse(state=event.vote)
    return json.dumps(_dict(message), separators=(",", ":"))


@votes_app.command("ls")
def votes_ls(
    status: Annotated[VoteFilter, typer.Option(help="open, decided or all")] = VoteFilter.all,
    output: OutputOpt = Output.table,
    addr: AddrOpt = ADDR,
    namespace: NamespaceOpt = NAMESPACE,
    agent: AgentOpt = AGENT,
) -> None:
    """Votes, newest first: status or outcome, question, ballots cast, deadline."""

    async def work(client: AsyncClient) -> list[votes_pb2.Vote]:
        return [v async for v in client.votes.scan(_VOTE_STATUS[status], page_size=1000)]

    votes = _call(addr, namespace, agent, work)
    votes.sort(key=lambda v: v.created_revision, reverse=True)
    rows = [
        (
            v.id,
            _vote_status(v),
            _short(v.spec.question, 60),
            _participation(v),
            _relative(v.spec.deadline),
        )
        for v in votes
    ]
    table = _table(f"votes in {namespace}", ["ID", "STATUS", "QUESTION", "VOTED", "DEADLINE"], rows)
    _emit(output, [_dict(v) for v in votes], table)


@votes_app.command("show")
def votes_show(
    vote_id: Annotated[str, typer.Argument(metavar="ID", help="the vote's id")],
    output: OutputOpt = Output.table,
    addr: AddrOpt = ADDR,
    namespace: NamespaceOpt = NAMESPACE,
    agent: AgentOpt = AGENT,
) -> None:
    """A vote: what it asks and how it decides, every ballot, the tally, the decision."""
    vote = _call(addr, namespace, agent, lambda c: c.votes.get(vote_id))
    _emit(output, _dict(vote), _vote_tables(vote))


@votes_app.command("watch")
def votes_watch(
    vote_id: Annotated[str, typer.Argument(metavar="ID", help="the vote's id")],
    output: OutputOpt = Output.table,
    addr: AddrOpt = ADDR,
    namespace: NamespaceOpt = NAMESPACE,
    agent: AgentOpt = AGENT,
) -> None:
    """Follow a vote: its state, each ballot as it is cast, then the decision (and exit).

    One line per event; with -o json, one JSON object per line ({"state": ...},
    {"ballot": ...} or {"decision": ...}). Carries on across replica failures.
    """

    async def work(client: AsyncClient) -> None:
        await client.votes.get(vote_id)  # an unknown vote or a dead service fails fast
        async for event in client.votes.watch(vote_id):
            typer.echo(_event_json(event) if output is Output.json else _event_line(event))

    try:
        _call(addr, namespace, agent, work)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
