"""`accord mcp`: serve Accord's primitives as MCP tools (accord.mcpserver) to an agent host,
over stdio (the host spawns this command) or streamable HTTP (a shared deployment).

Over stdio every call carries ACCORD_TOKEN (or --token); over HTTP each MCP session
carries its own `Authorization: Bearer <accord token>`, and --token is not used. ACCORD_TLS_CA
(and ACCORD_TLS_CERT, ACCORD_TLS_KEY) make it talk TLS to replicas, as the admin commands do.
Nothing is written to stdout but the protocol: logs go to stderr.

Error handling: bad flags exit 2 before anything is served; Accord refusals are tool
results, not exits.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from enum import StrEnum
from typing import Annotated

import typer

from accord.client import tls_credentials
from accord.coordinator.cli.common import (
    ADDR,
    EXIT_USAGE,
    NAMESPACE,
    AddrOpt,
    NamespaceOpt,
    TokenOpt,
    fail,
)


class McpTransport(StrEnum):
    stdio = "stdio"
    http = "http"


def mcp(
    addr: AddrOpt = ADDR,
    transport: Annotated[
        McpTransport,
        typer.Option(envvar="ACCORD_MCP_TRANSPORT", help="stdio (one agent host) or http"),
    ] = McpTransport.stdio,
    listen: Annotated[
        str,
        typer.Option(
            envvar="ACCORD_MCP_LISTEN",
            help="host:port the streamable HTTP endpoint (path /mcp) listens on",
        ),
    ] = "127.0.0.1:8765",
    namespace: NamespaceOpt = NAMESPACE,
    agent: Annotated[
        str,
        typer.Option(
            envvar="ACCORD_AGENT_ID",
            help="agent id to act as (default: the token's principal; without a token over "
            "stdio, mcp-<random>)",
        ),
    ] = "",
    token: TokenOpt = "",
    session_idle_timeout: Annotated[
        float,
        typer.Option(
            envvar="ACCORD_MCP_SESSION_IDLE_TIMEOUT",
            min=1.0,
            help="http: seconds an MCP session may go without a request or an open stream "
            "before it ends and its lease is revoked: how long a crashed client keeps its "
            "locks",
        ),
    ] = 300.0,
) -> None:
    """Serve Accord as MCP tools (memory, leases, locks, ...) for LLM agents."""
    from accord.mcpserver.context import Facade, Transport
    from accord.mcpserver.identity import Identities
    from accord.mcpserver.server import HttpOptions, serve_http, serve_stdio

    addresses = [a.strip() for a in addr.split(",") if a.strip()]
    if not addresses:
        fail("--addr names no coordinator address", EXIT_USAGE)
    stdio = transport is McpTransport.stdio
    if stdio and not token and not agent:
        agent = f"mcp-{uuid.uuid4().hex[:8]}"
    ca = os.environ.get("ACCORD_TLS_CA", "")
    identities = Identities(
        addresses,
        namespace=namespace,
        agent_id=agent,
        stdio_token=token if stdio else None,
        credentials=tls_credentials(
            ca, os.environ.get("ACCORD_TLS_CERT"), os.environ.get("ACCORD_TLS_KEY")
        )
        if ca
        else None,
    )
    facade = Facade(
        identities, namespace=namespace, transport=Transport.stdio if stdio else Transport.http
    )
    if stdio:
        asyncio.run(serve_stdio(facade))
        return
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        fail(f"--listen {listen!r} is not host:port", EXIT_USAGE)
    options = HttpOptions(
        host=host.strip("[]"), port=int(port), session_idle_timeout=session_idle_timeout
    )
    asyncio.run(serve_http(facade, options))
