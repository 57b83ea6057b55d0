"""What a tool gets from the MCP session that calls it: `Facade.session(ctx)` returns that
session's `AgentSession` -- its Accord client (the session's own token), the agent id the
service knows it by, its session lease if it started one, the lock grants it holds (their
fences go with its writes) and a `Notifier` that pushes messages to its MCP client.

An MCP session is the stdio process (one agent host, one session, ended when the process
stops) or one stateful streamable-HTTP session (Mcp-Session-Id; ended when the client
deletes it, it idles out, or the server stops). When a session ends, its lease is revoked
(so its locks are released at once, not when a TTL runs out), the callbacks tools
registered with `at_end` run, and its hold on its token's Accord client is let go.

A tool runs its work with `Facade.run(ctx, work)`: work gets the AgentSession and returns a
pydantic model (the tool's structured output); refusals.answer turns refusals into tool
results. A grant stays remembered until released, even after its lease was lost: its
fence still goes with the session's writes, and the service, not the façade, refuses
them (FENCED), saying who holds the lock now.

Error handling: a session whose token the service refuses gets that refusal
(UNAUTHENTICATED) as the result of every call, and is not remembered. `AgentSession.fence`
raises a FacadeRefusal (NOT_HOLDING) for a lock the session never held; an HTTP request
without a session raises one too (NEEDS_SESSION). Errors from a session's end callbacks
are logged, never raised: ending must finish.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from mcp.server.connection import Connection
from mcp.server.mcpserver import Context
from mcp.server.subscriptions import InMemorySubscriptionBus, SubscriptionBus
from mcp.shared.subscriptions import ResourceUpdated
from mcp_types import CallToolResult
from pydantic import BaseModel

from accord.client import AccordError, AsyncClient, Grant, Lease
from accord.mcpserver.identity import Identities, Identity
from accord.mcpserver.refusals import FacadeRefusal, answer
from accord.v1 import common_pb2

log = logging.getLogger("accord.mcp")

EndCallback = Callable[[], Awaitable[None]]
# Called when a session's lease starts / a lock is granted to it (e.g. to push their loss
# to the MCP client: lease.on_lost).
LeaseHook = Callable[["AgentSession", Lease], None]
GrantHook = Callable[["AgentSession", Grant], None]


class Transport(StrEnum):
    stdio = "stdio"
    http = "http"


class Notifier:
    """Pushes notifications to one session's MCP client over the session's standalone
    channel (stdio's pipe; streamable HTTP's GET stream, where the client opened one).
    Sending is best effort: a client that is gone or never listened loses the message."""

    def __init__(self, events: SubscriptionBus | None = None) -> None:
        self._connection: Connection | None = None
        self._events = events

    def attach(self, connection: Connection) -> None:
        self._connection = connection

    async def notify(self, method: str, params: Mapping[str, Any] | None = None) -> bool:
        """Send one notification; False when there was no channel or sending failed."""
        if self._connection is None or not self._connection.has_standalone_channel:
            return False
        try:
            await self._connection.notify(method, params)
        except Exception:  # a closed stream, a client that went away: best effort
            log.debug("notification %s not delivered", method, exc_info=True)
            return False
        return True

    async def message(self, level: str, data: Any) -> bool:
        """A `notifications/message` (what hosts show as a server log line)."""
        return await self.notify("notifications/message", {"level": level, "data": data})

    async def resource_updated(self, uri: str) -> None:
        """`notifications/resources/updated` for uri: on the server's subscriptions/listen
        streams that name it (2026-07-28 clients; the SDK keeps it off the standalone
        channel there) and on the standalone channel (clients of earlier versions)."""
        if self._events is not None:
            await self._events.publish(ResourceUpdated(uri=uri))
        await self.notify("notifications/resources/updated", {"uri": uri})


@dataclass(eq=False)
class AgentSession:
    """One MCP session as Accord sees it."""

    key: str
    identity: Identity
    client: AsyncClient
    agent_id: str
    namespace: str
    notifier: Notifier
    lease: Lease | None = None
    grants: dict[str, Grant] = field(default_factory=dict)
    _at_end: list[EndCallback] = field(default_factory=list)
    ended: bool = False

    def at_end(self, callback: EndCallback) -> None:
        """callback runs once when the session ends (before its lease is revoked)."""
        self._at_end.append(callback)

    def fence(self, lock: str) -> common_pb2.Fence:
        """The fence of this session's grant of lock, for a fenced write."""
        grant = self.grants.get(lock)
        if grant is None:
            raise FacadeRefusal(
                "NOT_HOLDING",
                f"this session holds no grant of lock {lock!r}; nothing was written",
                "Acquire the lock with accord_locks_acquire first, then write with it.",
            )
        return grant.fence()

    async def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        for callback in reversed(self._at_end):
            try:
                await callback()
            except Exception:
                log.exception("an end callback of MCP session %s failed", self.key)
        lease, self.lease = self.lease, None
        self.grants.clear()
        if lease is not None:
            try:
                await lease.revoke(timeout=5.0)
            except AccordError as exc:  # gone already, or the service is unreachable
                log.info("revoking lease %x of MCP session %s: %s", lease.id, self.key, exc)


class Facade:
    """The sessions of one `accord mcp` server, and how a tool finds its own."""

    def __init__(self, identities: Identities, *, namespace: str, transport: Transport) -> None:
        self.identities = identities
        self.namespace = namespace
        self.transport = transport
        # Where resource-updated events go to subscriptions/listen streams (server.py
        # hands it to the MCPServer).
        self.events: SubscriptionBus = InMemorySubscriptionBus()
        self._sessions: dict[str, AgentSession] = {}
        self._opening: dict[str, asyncio.Lock] = {}
        self.lease_hooks: list[LeaseHook] = []
        self.grant_hooks: list[GrantHook] = []

    def lease_started(self, session: AgentSession, lease: Lease) -> None:
        for hook in self.lease_hooks:
            hook(session, lease)

    def granted(self, session: AgentSession, grant: Grant) -> None:
        session.grants[grant.name] = grant
        for hook in self.grant_hooks:
            hook(session, grant)

    async def run(
        self, ctx: Context[Any, Any], work: Callable[[AgentSession], Awaitable[BaseModel]]
    ) -> CallToolResult:
        """A tool's answer: work(the calling session)'s model, or the refusal it met."""
        client: list[AsyncClient] = []

        async def guarded() -> BaseModel:
            session = await self.session(ctx)
            client.append(session.client)
            return await work(session)

        return await answer(guarded(), lambda: client[0] if client else None)

    async def session(self, ctx: Context[Any, Any]) -> AgentSession:
        """The calling MCP session's AgentSession, opened on its first tool call."""
        connection = _connection_of(ctx)
        key = self._key(ctx, connection)
        found = self._sessions.get(key)
        if found is None:
            lock = self._opening.setdefault(key, asyncio.Lock())
            async with lock:
                found = self._sessions.get(key)
                if found is None:
                    found = await self._open(key, ctx, connection)
        if connection is not None:
            found.notifier.attach(connection)
        return found

    def _key(self, ctx: Context[Any, Any], connection: Connection | None) -> str:
        if self.transport is Transport.stdio:
            return "stdio"
        session_id = connection.session_id if connection is not None else None
        if not session_id:
            raise FacadeRefusal(
                "NEEDS_SESSION",
                "this request has no MCP session (Mcp-Session-Id); Accord's session state "
                "-- leases, lock grants -- lives as long as a session",
                "Connect with the initialize handshake (a stateful streamable-HTTP session).",
            )
        return session_id

    async def _open(
        self, key: str, ctx: Context[Any, Any], connection: Connection | None
    ) -> AgentSession:
        who = self.identities.of(ctx.headers)
        client = await self.identities.hold(who)
        try:
            me = await client.auth.whoami()
        except BaseException:
            await self.identities.let_go(who)
            raise
        session = AgentSession(
            key=key,
            identity=who,
            client=client,
            agent_id=me.agent_id or client.agent_id,
            namespace=self.namespace,
            notifier=Notifier(self.events),
        )
        self._sessions[key] = session
        if connection is not None and self.transport is Transport.http:
            connection.exit_stack.push_async_callback(self._end, key)
        return session

    async def _end(self, key: str) -> None:
        session = self._sessions.pop(key, None)
        self._opening.pop(key, None)
        if session is None:
            return
        try:
            await session.end()
        finally:
            await self.identities.let_go(session.identity)

    async def close(self) -> None:
        """End every session (the server is stopping)."""
        for key in list(self._sessions):
            await self._end(key)
        await self.identities.close()


def _connection_of(ctx: Context[Any, Any]) -> Connection | None:
    """The SDK's per-connection state (its exit_stack runs when the session ends). 2.3.0
    documents pushing cleanup there from handlers but exposes the Connection to a tool's
    Context only through its ServerSession."""
    connection = getattr(ctx.request_context.session, "_connection", None)
    return connection if isinstance(connection, Connection) else None
