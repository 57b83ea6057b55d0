"""Lease tools: the session lease, which the façade keeps alive (the Accord client's
keep-alive stream) for as long as the MCP session lives, and revokes when it ends.

Locks an agent takes hang on this lease, and so do ephemeral memory keys: if the agent's
process stalls or dies, keep-alives stop, the lease runs out after its TTL and the locks
pass to the next waiter -- the stale-lock problem of file reservations, solved by
expiry. accord_locks_acquire starts the lease itself if the session has none.

accord_leases_start starts it (or returns the live one), accord_leases_status says
whether it is alive, how long it has left and which locks it holds, accord_leases_end
revokes it (releasing its locks and deleting its ephemeral keys at once).

Error handling: refusals are tool results (refusals.py). A lease found lost (its TTL ran
out while the process stalled, or it was revoked from outside) is reported by status as
alive false with the reason; start then grants a new one. Ending a session without a
lease is not an error (ended false).
"""

from __future__ import annotations

from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult
from pydantic import BaseModel, Field

from accord.client import AccordError, Lease, LeaseNotFoundError
from accord.mcpserver import hints
from accord.mcpserver.context import AgentSession, Facade

DEFAULT_TTL_SECONDS = 30


class LeaseOut(BaseModel):
    lease_id: str = Field(description="hexadecimal, as `accord leases` shows it")
    ttl_seconds: int = Field(description="the TTL it was granted: renewed every third of it")
    started: bool = Field(description="false: the session's live lease was returned as is")


class LeaseStatus(BaseModel):
    has_lease: bool
    lease_id: str | None
    alive: bool
    lost_reason: str | None = Field(description="why it was lost, if it was")
    ttl_left_seconds: int | None
    locks: list[str] = Field(description="locks held under it")


class LeaseEnded(BaseModel):
    ended: bool = Field(description="false: the session had no lease")
    lease_id: str | None
    released_locks: list[str]


def lease_id(lease: Lease) -> str:
    return f"{lease.id:x}"


async def ensure_lease(session: AgentSession, facade: Facade, ttl: int) -> tuple[Lease, bool]:
    """The session's live lease, started (kept alive in the background) if it has none
    or lost it; and whether it was started now."""
    lease = session.lease
    if lease is not None and not lease.lost.is_set():
        return lease, False
    lease = await session.client.leases.grant(ttl)
    session.lease = lease
    facade.lease_started(session, lease)
    return lease, True


async def start(session: AgentSession, facade: Facade, ttl: int) -> LeaseOut:
    lease, started = await ensure_lease(session, facade, ttl)
    return LeaseOut(lease_id=lease_id(lease), ttl_seconds=lease.ttl, started=started)


async def status(session: AgentSession) -> LeaseStatus:
    lease = session.lease
    if lease is None:
        return LeaseStatus(
            has_lease=False, lease_id=None, alive=False, lost_reason=None,
            ttl_left_seconds=None, locks=[],
        )  # fmt: skip
    lost = lease.lost_reason.message if lease.lost_reason is not None else None
    try:
        info = await session.client.leases.time_to_live(lease.id)
    except LeaseNotFoundError as gone:
        return LeaseStatus(
            has_lease=True, lease_id=lease_id(lease), alive=False,
            lost_reason=lost or gone.message, ttl_left_seconds=0, locks=[],
        )  # fmt: skip
    return LeaseStatus(
        has_lease=True, lease_id=lease_id(lease), alive=lost is None, lost_reason=lost,
        ttl_left_seconds=info.ttl, locks=sorted(info.locks),
    )  # fmt: skip


async def end(session: AgentSession) -> LeaseEnded:
    lease, session.lease = session.lease, None
    if lease is None:
        return LeaseEnded(ended=False, lease_id=None, released_locks=[])
    held = sorted(name for name, g in session.grants.items() if g.lease_id == lease.id)
    for name in held:
        del session.grants[name]
    try:
        await lease.revoke()
    except AccordError:
        session.lease = lease  # not ended: the agent may try again
        raise
    return LeaseEnded(ended=True, lease_id=lease_id(lease), released_locks=held)


def register(server: MCPServer[Any], facade: Facade) -> None:
    @server.tool(
        name="accord_leases_start",
        description=(
            "Start this session's lease: the server renews it for you as long as this MCP "
            "session lives, and it ends ttl_seconds after renewals stop (your process "
            "stalled or died) or when the session ends. Locks you acquire and ephemeral "
            "memory keys hang on it, so they never outlive you. Calling it again returns "
            "the live lease (started false). accord_locks_acquire starts one by itself."
        ),
        annotations=hints.writes("Start the session lease", destructive=False, idempotent=True),
    )
    async def accord_leases_start(
        ctx: Context[Any, Any],
        ttl_seconds: Annotated[
            int,
            Field(ge=2, le=3600, description="how long the lease outlives its last renewal"),
        ] = DEFAULT_TTL_SECONDS,
    ) -> Annotated[CallToolResult, LeaseOut]:
        return await facade.run(ctx, lambda s: start(s, facade, ttl_seconds))

    @server.tool(
        name="accord_leases_status",
        description=(
            "Whether this session's lease is alive, the seconds it has left, and the locks "
            "held under it. alive false with lost_reason means your locks are gone: "
            "re-acquire them (and re-read what they protect) before writing again."
        ),
        annotations=hints.read_only("Session lease status"),
    )
    async def accord_leases_status(
        ctx: Context[Any, Any],
    ) -> Annotated[CallToolResult, LeaseStatus]:
        return await facade.run(ctx, status)

    @server.tool(
        name="accord_leases_end",
        description=(
            "End this session's lease now: every lock it holds is released and its "
            "ephemeral memory keys are deleted, at once. Use it when your work is done; "
            "ending the MCP session does the same."
        ),
        annotations=hints.writes("End the session lease", destructive=True, idempotent=True),
    )
    async def accord_leases_end(ctx: Context[Any, Any]) -> Annotated[CallToolResult, LeaseEnded]:
        return await facade.run(ctx, end)
