"""Admin commands for locks, leases and deadlocks: `accord locks ls|show|graph|break`,
`accord leases ls`, `accord deadlocks ls`."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Group

from accord.client import AsyncClient, DeadlockPage, LeaseInfo, WaitGraphPage
from accord.coordinator.cli.common import (
    ADDR,
    AGENT,
    EXIT_USAGE,
    NAMESPACE,
    AddrOpt,
    AgentOpt,
    NamespaceOpt,
    Output,
    OutputOpt,
    TokenOpt,
    ago,
    as_dict,
    call,
    emit,
    fail,
    table_of,
    when,
)
from accord.v1 import leases_pb2, locks_pb2


class GraphFormat(StrEnum):
    text = "text"
    dot = "dot"
    json = "json"


locks_app = typer.Typer(help="Inspect and break locks.", no_args_is_help=True)
leases_app = typer.Typer(help="Inspect leases.", no_args_is_help=True)
deadlocks_app = typer.Typer(help="Inspect resolved deadlocks.", no_args_is_help=True)
MAX_PAGE = 100  # the most deadlocks the service returns per call
MAX_EDGES = 10_000  # the most wait-for edges it returns per call


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


# --- locks --------------------------------------------------------------------------


@locks_app.command("ls")
def locks_ls(
    prefix: Annotated[str, typer.Option(help="only locks whose name starts with this")] = "",
    output: OutputOpt = Output.table,
    addr: AddrOpt = ADDR,
    namespace: NamespaceOpt = NAMESPACE,
    agent: AgentOpt = AGENT,
    token: TokenOpt = "",
) -> None:
    """Every lock and semaphore: mode, holders (agent, token), number waiting."""
    states = call(addr, namespace, agent, lambda c: c.locks.list(prefix), token)
    rows = [
        (s.name, _kind(s), "\n".join(_holder(h) for h in s.holders), len(s.waiters)) for s in states
    ]
    table = table_of(f"locks in {namespace}", ["LOCK", "MODE", "HOLDERS", "WAITING"], rows)
    emit(output, [as_dict(s) for s in states], table)


@locks_app.command("show")
def locks_show(
    name: Annotated[str, typer.Argument(help="the lock's name")],
    output: OutputOpt = Output.table,
    addr: AddrOpt = ADDR,
    namespace: NamespaceOpt = NAMESPACE,
    agent: AgentOpt = AGENT,
    token: TokenOpt = "",
) -> None:
    """A lock's holders (lease, token, TTL left) and its waiters in queue order."""
    state, _ = call(addr, namespace, agent, lambda c: c.locks.describe(name), token)
    holders = table_of(
        f"{name}: {_kind(state)}, held by",
        ["AGENT", "LEASE", "TOKEN", "MODE", "SINCE", "LEASE TTL LEFT"],
        [
            (
                h.agent_id,
                h.lease_id,
                h.token,
                _mode(h.mode),
                ago(h.since),
                f"{h.lease_ttl_seconds}s",
            )
            for h in state.holders
        ],
    )
    waiters = table_of(
        "waiting, in order",
        ["POS", "AGENT", "LEASE", "MODE", "SINCE", "PRIORITY"],
        [
            (i, w.agent_id, w.lease_id, _mode(w.mode), ago(w.since), w.priority)
            for i, w in enumerate(state.waiters)
        ],
    )
    emit(output, as_dict(state), Group(holders, "", waiters))


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
    limit: Annotated[
        int, typer.Option(min=1, max=MAX_EDGES, help="at most this many edges (a page)")
    ] = 1000,
    page_token: Annotated[
        str, typer.Option(help="start after the page that printed this token")
    ] = "",
    every: Annotated[
        bool, typer.Option("--all", help="every edge, read --limit at a time")
    ] = False,
    output: OutputOpt = Output.table,
    addr: AddrOpt = ADDR,
    namespace: NamespaceOpt = NAMESPACE,
    agent: AgentOpt = AGENT,
    token: TokenOpt = "",
) -> None:
    """The wait-for graph: who waits for whom, on which lock.

    An edge goes from each waiting agent to each agent it waits for; "queued ahead"
    (dashed in DOT) marks one that is itself waiting, ahead in the queue. -o json is
    --format json. A long queue has many edges (n waiters for one lock: n(n-1)/2), so
    they come a page at a time, all from one snapshot; when more exist than were shown,
    a line on stderr says how many and how to see them.
    """

    async def work(client: AsyncClient) -> WaitGraphPage:
        page = await client.locks.wait_graph(limit, page_token=page_token)
        found = list(page)
        while every and page.next_page_token:
            page = await client.locks.wait_graph(limit, page_token=page.next_page_token)
            found += page
        return WaitGraphPage(found, page.next_page_token, page.total_edges)

    edges = call(addr, namespace, agent, work, token)
    if output is Output.json or fmt is GraphFormat.json:
        typer.echo(json.dumps([as_dict(e) for e in edges], indent=2))
    elif edges or fmt is GraphFormat.dot:
        typer.echo(_graph_text(edges, fmt))
    if edges.next_page_token:
        typer.echo(
            f"showing {len(edges)} of {edges.total_edges} edges: --page-token "
            f"{edges.next_page_token} for the next {limit}, --all for all",
            err=True,
        )


@locks_app.command("break")
def locks_break(
    name: Annotated[str, typer.Argument(help="the lock's name")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    output: OutputOpt = Output.table,
    addr: AddrOpt = ADDR,
    namespace: NamespaceOpt = NAMESPACE,
    agent: AgentOpt = AGENT,
    token: TokenOpt = "",
) -> None:
    """Forced release of a lock's holders: their later fenced writes fail with FENCED."""
    if not yes:
        if not sys.stdin.isatty():
            fail(
                f"refusing to break {name!r} without --yes (no terminal to confirm on)", EXIT_USAGE
            )
        state, _ = call(addr, namespace, agent, lambda c: c.locks.describe(name), token)
        if state.holders:
            who = ", ".join(_holder(h) for h in state.holders)
            typer.confirm(f"Break {name!r}, held by {who}?", abort=True, err=True)
    broken = call(addr, namespace, agent, lambda c: c.locks.break_lock(name), token)
    table = table_of(
        f"broke {name}" if broken else f"nobody held {name}: nothing broken",
        ["AGENT", "LEASE", "TOKEN", "MODE", "SINCE"],
        [(b.agent_id, b.lease_id, b.token, _mode(b.mode), ago(b.since)) for b in broken],
    )
    emit(output, [as_dict(b) for b in broken], table)


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
    token: TokenOpt = "",
) -> None:
    """Every live lease: agent, granted TTL, labels, locks (TTL left: `accord locks show`
    or Leases.TimeToLive; listing does not ask etcd per lease)."""
    leases = call(addr, namespace, agent, lambda c: c.leases.list(), token)
    rows = [
        (
            lease.id,
            lease.agent_id,
            f"{lease.granted_ttl}s",
            ",".join(f"{k}={v}" for k, v in sorted(lease.labels.items())),
            "\n".join(lease.locks),
        )
        for lease in leases
    ]
    table = table_of(
        f"leases in {namespace}", ["ID", "AGENT", "GRANTED TTL", "LABELS", "LOCKS"], rows
    )
    emit(output, [as_dict(_lease_proto(lease)) for lease in leases], table)


def _cycle_text(cycle: Sequence[locks_pb2.WaitEdge]) -> str:
    if not cycle:
        return "-"
    steps = [f"-[{e.lock}]-> {_node(e.holder_agent, e.holder_lease)}" for e in cycle]
    return " ".join([_node(cycle[0].waiter_agent, cycle[0].waiter_lease), *steps])


@deadlocks_app.command("ls")
def deadlocks_ls(
    limit: Annotated[
        int, typer.Option(min=1, max=MAX_PAGE, help="at most this many (a page)")
    ] = 20,
    page_token: Annotated[
        str, typer.Option(help="start after the page that printed this token")
    ] = "",
    every: Annotated[bool, typer.Option("--all", help="every one, read --limit at a time")] = False,
    output: OutputOpt = Output.table,
    addr: AddrOpt = ADDR,
    namespace: NamespaceOpt = NAMESPACE,
    agent: AgentOpt = AGENT,
    token: TokenOpt = "",
) -> None:
    """Recently resolved deadlocks, newest first: the victim, the cycle, why that victim.

    When more exist than were shown, a last line says so and how to see them; -o json
    gives {"deadlocks": [...], "next_page_token": ...} ("" on the last page).
    """

    async def work(client: AsyncClient) -> DeadlockPage:
        page = await client.locks.deadlocks(limit, page_token=page_token)
        found = list(page)
        while every and page.next_page_token:
            page = await client.locks.deadlocks(limit, page_token=page.next_page_token)
            found += page
        return DeadlockPage(found, page.next_page_token)

    deadlocks = call(addr, namespace, agent, work, token)
    token = deadlocks.next_page_token
    rows = [
        (
            d.id,
            when(d.detected_at),
            f"{_node(d.victim_agent, d.victim_lease)} on {d.victim_lock}",
            _cycle_text(d.cycle),
            d.policy,
        )
        for d in deadlocks
    ]
    table = table_of(f"deadlocks in {namespace}", ["ID", "WHEN", "VICTIM", "CYCLE", "POLICY"], rows)
    listed = locks_pb2.ListDeadlocksResponse(deadlocks=deadlocks, next_page_token=token)
    emit(output, as_dict(listed), table)
    if token and output is Output.table:
        typer.echo(f"more deadlocks: --page-token {token} for the next {limit}, --all for all")
