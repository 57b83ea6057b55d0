"""`accord mcp` starts over stdio and names itself; over HTTP it serves sessions."""

from __future__ import annotations

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS

from tests.harness import Coordinator, token_for
from tests.mcp.conftest import DEV_TOKEN
from tests.mcp.harness import HttpServer, http_session, stdio_session, structured


async def test_stdio_server_starts(replicas: list[Coordinator], namespace: str) -> None:
    async with stdio_session([r.address for r in replicas], namespace) as mcp:
        assert mcp.server_info is not None and mcp.server_info.name == "accord"
        await mcp.list_tools()


async def test_http_clients_get_a_session_and_sessionless_calls_are_refused(
    http_server: HttpServer, http_namespace: str
) -> None:
    """An SDK client in its default mode falls back to the handshake (a session); one
    pinned to the sessionless 2026-07-28 envelope is refused with NEEDS_SESSION."""
    token = token_for(http_namespace, "alice") or DEV_TOKEN
    async with http_session(http_server.url, token, "alice") as mcp:
        assert mcp.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS
        read = await mcp.call_tool("accord_memory_get", {"key": "any"})
        assert not read.is_error
    headers = {"Authorization": f"Bearer {token}", "Accord-Agent-Id": "alice"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30.0) as http,
        Client(
            streamable_http_client(http_server.url, http_client=http),
            mode=MODERN_PROTOCOL_VERSIONS[-1],
        ) as sessionless,
    ):
        refused = await sessionless.call_tool("accord_memory_get", {"key": "any"})
        assert refused.is_error
        assert structured(refused)["reason"] == "NEEDS_SESSION"
