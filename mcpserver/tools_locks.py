"""Lock tools: Accord's fair (FIFO) locks with fencing tokens, under the session lease.

accord_locks_acquire takes a lock now or fails (wait_seconds 0), or waits in the queue up
to wait_seconds (at most MAX_WAIT_SECONDS: a tool call should not hang; a longer wait is
a follow-up call). The grant is remembered by the session: memory writes that name the
lock carry its fence, so once the lock is lost they are refused. accord_locks_release
gives it back; accord_locks_describe shows holders, waiters and the session's place;
accord_locks_why_blocked (read-only) explains what stands between the session and the
lock: who holds it (since when, how long its lease has left), who waits ahead, and
whether the waits form a cycle (a deadlock the service will break by cancelling one).

Error handling: refusals are tool results (refusals.py): WOULD_BLOCK and LOCK_TIMEOUT
with the holders and queue, DEADLOCK with the cycle and what to do. A failed acquire
leaves no entry in the queue (the client withdraws it). Releasing a lock the session does
not hold answers was_holding false.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult
from pydantic import BaseModel, Field

from accord.client import AccordError, LockMode, NotHeldError
from accord.mcpserver import hints
from accord.mcpserver.context import AgentSession, Facade
from accord.mcpserver.refusals import (
    WOULD_BLOCK_ADVICE,
    FacadeRefusal,
    LockHolder,
    LockWait,
    holders_of,
    iso,
)
from accord.mcpserver.tools_leases import DEFAULT_TTL_SECONDS, ensure_lease, lease_id
from accord.v1 import locks_pb2

MAX_WAIT_SECONDS = 60.0
# why_blocked reads at most this many wait-for edges (10 pages): enough for any cycle a
# lock of a sane queue is in; a bigger graph is read in part, and said to be.
MAX_EDGES = 10_000
NOT_QUEUED, HOLDING = -2, -1

LockName = Annotated[str, Field(description="the lock's name (e.g. 'repo/src/app.py')")]
Mode = Literal["exclusive", "shared"]


class Acquired(BaseModel):
    lock: str
    token: int = Field(description="the fencing token: writes naming this lock carry it")
    mode: Mode
    lease_id: str
    lease_started: bool = Field(description="true: the session lease was started for this")


class Released(BaseModel):
    lock: str
    was_holding: bool


class Waiter(BaseModel):
    agent_id: str
    mode: Mode
    since: str | None
    priority: int


class Description(BaseModel):
    lock: str
    permits: int = Field(description="0 for a lock; the number of permits for a semaphore")
    holders: list[LockHolder]
    waiters: list[Waiter] = Field(description="in queue order")
    my_position: int | None = Field(description="your place among waiters (0: next)")
    i_hold_it: bool


class Edge(BaseModel):
    waiter_agent: str
    lock: str
    holder_agent: str
    holder_holding: bool = Field(description="false: the other is itself waiting, ahead")


class Blocked(BaseModel):
    lock: str
    blocked: bool = Field(description="false: you hold it, or it is free for you now")
    i_hold_it: bool
    waiting: bool = Field(description="you are in its queue")
    position: int | None
    holders: list[LockHolder]
    ahead_of_me: list[str] = Field(description="agents waiting before you")
    my_waits: list[Edge] = Field(description="whom your waits are behind, from the wait graph")
    cycle: list[Edge] = Field(description="non-empty: a deadlock through your waits")
    graph_complete: bool = Field(description="false: the wait-for graph was too big to read whole")
    explanation: str


def _mode(mode: locks_pb2.LockMode.ValueType) -> Mode:
    return "shared" if mode == locks_pb2.LOCK_MODE_SHARED else "exclusive"


def _my_lease(session: AgentSession) -> int:
    return session.lease.id if session.lease is not None else 0


async def acquire(
    session: AgentSession, facade: Facade, name: str, mode: Mode, wait: float, ttl: int
) -> Acquired:
    lease, started = await ensure_lease(session, facade, ttl)
    locks = session.client.locks
    kind = LockMode.SHARED if mode == "shared" else LockMode.EXCLUSIVE
    if wait > 0:
        grant = await locks.acquire(name, lease, mode=kind, wait=min(wait, MAX_WAIT_SECONDS))
    else:
        found = await locks.try_acquire(name, lease, mode=kind)
        if found is None:
            state, _ = await locks.describe(name)
            raise FacadeRefusal(
                "WOULD_BLOCK",
                f"lock {name!r} is held; you did not wait (wait_seconds 0)",
                WOULD_BLOCK_ADVICE,
                wait=LockWait(
                    lock=name,
                    holders=holders_of(list(state.holders)),
                    waiters=[w.agent_id for w in state.waiters],
                    position=len(state.waiters),
                    expected_wait_seconds=None,
                ),
            )
        grant = found
    facade.granted(session, grant)
    return Acquired(
        lock=name, token=grant.token, mode=mode, lease_id=lease_id(lease), lease_started=started
    )


async def release(session: AgentSession, name: str) -> Released:
    grant = session.grants.pop(name, None)
    if grant is None and session.lease is None:
        return Released(lock=name, was_holding=False)
    try:
        if grant is not None:
            was = await session.client.locks.release(grant)
        else:  # e.g. a wait that was granted after its tool call gave up
            was = await session.client.locks.release(name, session.lease)
    except NotHeldError:
        was = False
    except AccordError:
        if grant is not None:  # not known to be released: keep it for a retry
            session.grants[name] = grant
        raise
    return Released(lock=name, was_holding=was)


async def describe(session: AgentSession, name: str) -> Description:
    state, position = await session.client.locks.describe(name, _my_lease(session))
    return Description(
        lock=name,
        permits=state.permits,
        holders=holders_of(list(state.holders)),
        waiters=[
            Waiter(agent_id=w.agent_id, mode=_mode(w.mode), since=iso(w.since), priority=w.priority)
            for w in state.waiters
        ],
        my_position=position if position >= 0 else None,
        i_hold_it=position == HOLDING,
    )


def _edge(e: locks_pb2.WaitEdge) -> Edge:
    return Edge(
        waiter_agent=e.waiter_agent, lock=e.lock, holder_agent=e.holder_agent,
        holder_holding=e.holder_holding,
    )  # fmt: skip


def _cycle_through(lease: int, edges: list[locks_pb2.WaitEdge]) -> list[locks_pb2.WaitEdge]:
    """A shortest path of waits from lease back to itself (breadth first), or []."""
    out: dict[int, list[locks_pb2.WaitEdge]] = {}
    for e in edges:
        out.setdefault(e.waiter_lease, []).append(e)
    paths = {lease: list[locks_pb2.WaitEdge]()}
    frontier = [lease]
    while frontier:
        following: list[int] = []
        for at in frontier:
            for e in out.get(at, []):
                if e.holder_lease == lease:
                    return [*paths[at], e]
                if e.holder_lease not in paths:
                    paths[e.holder_lease] = [*paths[at], e]
                    following.append(e.holder_lease)
        frontier = following
    return []


async def wait_edges(session: AgentSession) -> tuple[list[locks_pb2.WaitEdge], bool]:
    """The namespace's wait-for graph (one snapshot), up to MAX_EDGES; and whether whole."""
    edges: list[locks_pb2.WaitEdge] = []
    token = ""
    while True:
        page = await session.client.locks.wait_graph(page_token=token)
        edges.extend(page)
        token = page.next_page_token
        if not token:
            return edges, True
        if len(edges) >= MAX_EDGES:
            return edges, False


async def why_blocked(session: AgentSession, name: str) -> Blocked:
    mine = _my_lease(session)
    state, position = await session.client.locks.describe(name, mine)
    holders = holders_of(list(state.holders))
    edges, whole = await wait_edges(session) if mine else ([], True)
    my_waits = [e for e in edges if e.waiter_lease == mine]
    cycle = _cycle_through(mine, edges) if my_waits else []
    waiting = position >= 0
    ahead = [w.agent_id for w in state.waiters[: max(position, 0)]]
    held = position == HOLDING
    blocked = waiting or (not held and bool(holders))
    if held:
        why = "You hold this lock: nothing blocks you."
    elif cycle:
        why = (
            "Deadlock: your wait and others' form a cycle (see `cycle`). The service breaks "
            "it by cancelling one wait; release what you hold and re-acquire in one order."
        )
    elif waiting:
        names = ", ".join(h.agent_id for h in holders) or "nobody (the queue is moving)"
        why = (
            f"You wait at position {position} behind {len(ahead)} waiter(s); held by {names}. "
            "A holder's lock is freed when it releases or its lease runs out (lease_ttl_"
            "seconds left if it stopped renewing)."
        )
    elif holders:
        names = ", ".join(h.agent_id for h in holders)
        why = f"You are not waiting for it; it is held by {names}: acquiring would wait."
    else:
        why = "Nobody holds it: accord_locks_acquire would get it now."
    return Blocked(
        lock=name, blocked=blocked, i_hold_it=held, waiting=waiting,
        position=position if waiting else None, holders=holders, ahead_of_me=ahead,
        my_waits=[_edge(e) for e in my_waits], cycle=[_edge(e) for e in cycle],
        graph_complete=whole, explanation=why,
    )  # fmt: skip


def register(server: MCPServer[Any], facade: Facade) -> None:
    @server.tool(
        name="accord_locks_acquire",
        description=(
            "Take a lock before changing what it protects. wait_seconds 0 tries once; more "
            f"waits in a fair (FIFO) queue up to that long (at most {MAX_WAIT_SECONDS:g} s; "
            "for longer, call again). The lock hangs on this session's lease (started if "
            "needed): it is released if you stall or disconnect, so pass its name as `lock` "
            "to memory writes -- they are refused (FENCED) once you lost it. Refusals: "
            "WOULD_BLOCK or LOCK_TIMEOUT with who holds it and your place; DEADLOCK with "
            "the cycle (release what you hold, re-acquire in one order)."
        ),
        annotations=hints.writes("Acquire a lock", destructive=False, idempotent=False),
    )
    async def accord_locks_acquire(
        name: LockName,
        ctx: Context[Any, Any],
        wait_seconds: Annotated[
            float, Field(ge=0, le=MAX_WAIT_SECONDS, description="0: try once, do not wait")
        ] = 0.0,
        mode: Annotated[Mode, Field(description="shared: many readers at once")] = "exclusive",
        lease_ttl_seconds: Annotated[
            int, Field(ge=2, le=3600, description="TTL of the session lease if one is started")
        ] = DEFAULT_TTL_SECONDS,
    ) -> Annotated[CallToolResult, Acquired]:
        return await facade.run(
            ctx, lambda s: acquire(s, facade, name, mode, wait_seconds, lease_ttl_seconds)
        )

    @server.tool(
        name="accord_locks_release",
        description=(
            "Give a lock back as soon as your change is written, so the next waiter gets "
            "it. Releases only this session's own grant; was_holding false if it had none."
        ),
        annotations=hints.writes("Release a lock", destructive=False, idempotent=True),
    )
    async def accord_locks_release(
        name: LockName, ctx: Context[Any, Any]
    ) -> Annotated[CallToolResult, Released]:
        return await facade.run(ctx, lambda s: release(s, name))

    @server.tool(
        name="accord_locks_describe",
        description=(
            "Who holds a lock (agent, fencing token, since when, lease seconds left), who "
            "waits for it in queue order, and your own place (i_hold_it, my_position)."
        ),
        annotations=hints.read_only("Describe a lock"),
    )
    async def accord_locks_describe(
        name: LockName, ctx: Context[Any, Any]
    ) -> Annotated[CallToolResult, Description]:
        return await facade.run(ctx, lambda s: describe(s, name))

    @server.tool(
        name="accord_locks_why_blocked",
        description=(
            "Explain what stands between you and a lock: its holders and how long their "
            "leases have left, the waiters ahead of you, whom your waits are behind, and "
            "whether those waits form a deadlock cycle. Changes nothing."
        ),
        annotations=hints.read_only("Why am I blocked on a lock"),
    )
    async def accord_locks_why_blocked(
        name: LockName, ctx: Context[Any, Any]
    ) -> Annotated[CallToolResult, Blocked]:
        return await facade.run(ctx, lambda s: why_blocked(s, name))
