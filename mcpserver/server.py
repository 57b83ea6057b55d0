"""Builds the `accord mcp` server: an SDK MCPServer whose tools each tools_*.py module
registers, served over stdio (one local agent host) or streamable HTTP (shared).

Accord's state in the façade -- a session lease kept alive while the session lives, the
lock grants whose fences go with its writes -- belongs to an MCP session. Over stdio the
session is the process, whichever protocol era the host speaks. Over HTTP it is a
stateful streamable-HTTP session, which only the initialize-handshake era has (the
2026-07-28 per-request envelope has none): there the façade answers `server/discover`
with METHOD_NOT_FOUND, which SDK clients in their default "auto" mode take as the cue to
fall back to the handshake.

Error handling: tool errors (Accord refusals included) are tool results with isError set,
never protocol errors (refusals.py gives them a shape an LLM can act on). On HTTP a
request without a bearer token is refused 401 by the SDK's bearer middleware before any
MCP handling. Stopping the server ends every session (leases revoked, clients closed).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from mcp.server.auth.settings import AuthSettings
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types import METHOD_NOT_FOUND
from starlette.applications import Starlette

from accord.mcpserver import (
    notifications,
    resources,
    tools_effects,
    tools_leases,
    tools_locks,
    tools_memory,
    tools_sessions,
    tools_votes,
)
from accord.mcpserver.context import Facade, Transport
from accord.mcpserver.identity import PassThroughVerifier

INSTRUCTIONS = (
    "Accord coordinates agents that share work: versioned shared memory (compare-and-set "
    "writes), leases and locks with fencing tokens, and more. Take a lock before changing "
    "what others may change, and pass its name as `lock` on memory writes: a write made "
    "after the lock was lost is refused instead of silently clobbering another agent's "
    "work. Refusals come back as tool results that say what happened and what to do next."
)

HTTP_PATH = "/mcp"
DEFAULT_SESSION_IDLE_SECONDS = 300.0


@dataclass(frozen=True)
class HttpOptions:
    host: str = "127.0.0.1"
    port: int = 8765
    # A session with no request in flight and no open GET stream ends after this many
    # seconds, and its lease is revoked: how long a client that vanished without ending
    # its session (a crash) keeps its locks.
    session_idle_timeout: float = DEFAULT_SESSION_IDLE_SECONDS


async def _no_discover(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
    if ctx.method == "server/discover":
        raise MCPError(
            code=METHOD_NOT_FOUND,
            message="accord mcp is session-scoped: use the initialize handshake",
        )
    return await call_next(ctx)


def build(facade: Facade, *, http: HttpOptions | None = None) -> MCPServer[None]:
    """The MCPServer with every tool registered; http: how it is served over HTTP."""

    @asynccontextmanager
    async def lifespan(_: MCPServer[None]) -> AsyncIterator[None]:
        try:
            yield None
        finally:
            await facade.close()

    auth: dict[str, Any] = {}
    if facade.transport is Transport.http:
        options = http or HttpOptions()
        # Only the bearer middleware is used: no OAuth routes are served or advertised
        # (no provider, no resource_server_url); the issuer URL is inert.
        auth = {
            "auth": AuthSettings(
                issuer_url=f"http://{options.host}:{options.port}",  # type: ignore[arg-type]
                resource_server_url=None,
            ),
            "token_verifier": PassThroughVerifier(),
        }
    server: MCPServer[None] = MCPServer(
        "accord",
        title="Accord",
        instructions=INSTRUCTIONS,
        version="0.1.0",
        lifespan=lifespan,
        middleware=[_no_discover] if facade.transport is Transport.http else [],
        subscriptions=facade.events,
        **auth,
    )
    register_all(server, facade)
    return server


def register_all(server: MCPServer[Any], facade: Facade) -> None:
    """Every tools module's register(server, facade)."""
    for module in (
        tools_memory,
        tools_leases,
        tools_locks,
        tools_sessions,
        tools_votes,
        tools_effects,
        resources,
        notifications,
    ):
        module.register(server, facade)


async def serve_stdio(facade: Facade) -> None:
    await build(facade).run_stdio_async()


def http_app(facade: Facade, http: HttpOptions) -> Starlette:
    return build(facade, http=http).streamable_http_app(
        streamable_http_path=HTTP_PATH,
        host=http.host,
        session_idle_timeout=http.session_idle_timeout,
    )


async def serve_http(facade: Facade, http: HttpOptions) -> None:
    config = uvicorn.Config(
        http_app(facade, http), host=http.host, port=http.port, log_level="warning"
    )
    await uvicorn.Server(config).serve()
