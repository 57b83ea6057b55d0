"""The façade under auth required: it holds no credentials of its own, so a session
without a token, with a token the service does not know, or with one whose role does not
allow the call is refused -- over HTTP without a token by the façade itself (401), the
rest by Accord as a tool result naming the reason -- and etcd holds what it held."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import httpx2
import pytest
from mcp import Client

from accord.client import Role
from tests.auth.conftest import AuthCluster, Mint, admin, auth_cluster, mint, unique  # noqa: F401  (fixtures)
from tests.mcp.harness import HttpServer, http_session, stdio_session, structured


@pytest.fixture
def auth_http(auth_cluster: AuthCluster, namespace: str, workdir: Path) -> Iterator[HttpServer]:  # noqa: F811
    server = HttpServer(auth_cluster.addresses, namespace, workdir / "mcp-auth-http.log")
    yield server
    server.stop()


INITIALIZE = {
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {},
               "clientInfo": {"name": "t", "version": "0"}},
}  # fmt: skip


async def test_http_without_a_token_is_refused_401(auth_http: HttpServer) -> None:
    initialize = INITIALIZE
    headers = {"Accept": "application/json, text/event-stream"}
    async with httpx2.AsyncClient(timeout=10) as http:
        answer = await http.post(auth_http.url, json=initialize, headers=headers)
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"].lower().startswith("bearer")
        malformed = await http.post(
            auth_http.url, json=initialize, headers={**headers, "Authorization": "Basic eA=="}
        )
        assert malformed.status_code == 401


async def test_a_session_answers_only_the_token_that_opened_it(auth_http: HttpServer) -> None:
    headers = {"Accept": "application/json, text/event-stream"}
    async with httpx2.AsyncClient(timeout=10) as http:
        opened = await http.post(
            auth_http.url, json=INITIALIZE, headers={**headers, "Authorization": "Bearer one"}
        )
        assert opened.status_code == 200
        session = {"Mcp-Session-Id": opened.headers["mcp-session-id"]}
        listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
        other = await http.post(
            auth_http.url,
            json=listing,
            headers={**headers, **session, "Authorization": "Bearer two"},
        )
        assert other.status_code == 404


async def test_an_unknown_token_gets_the_unauthenticated_refusal(
    auth_cluster: AuthCluster,  # noqa: F811
    auth_http: HttpServer,
    namespace: str,
) -> None:
    before = auth_cluster.stored()
    async with http_session(auth_http.url, "not-a-real-token") as mcp:
        result = await mcp.call_tool("accord_memory_put", {"key": "k", "value": "v"})
        assert result.is_error
        refusal = structured(result)
        assert refusal["reason"] == "UNAUTHENTICATED"
        assert "token" in refusal["what_to_do"]
    assert auth_cluster.stored() == before


async def test_stdio_without_a_token_gets_the_unauthenticated_refusal(
    auth_cluster: AuthCluster,  # noqa: F811
    namespace: str,
) -> None:
    before = auth_cluster.stored()
    async with stdio_session(auth_cluster.addresses, namespace) as mcp:
        for tool, args in [
            ("accord_memory_put", {"key": "k", "value": "v"}),
            ("accord_locks_acquire", {"name": "l"}),
        ]:
            result = await mcp.call_tool(tool, args)
            assert result.is_error and structured(result)["reason"] == "UNAUTHENTICATED"
    assert auth_cluster.stored() == before


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_a_reader_cannot_write_through_mcp(
    transport: str,
    auth_cluster: AuthCluster,  # noqa: F811
    auth_http: HttpServer,
    mint: Mint,  # noqa: F811
    namespace: str,
) -> None:
    writer = await mint(unique("writer"), Role.WRITE)
    reader = await mint(unique("reader"), Role.READ)

    def session(token: str) -> AbstractAsyncContextManager[Client]:
        if transport == "stdio":
            return stdio_session(auth_cluster.addresses, namespace, token=token)
        return http_session(auth_http.url, token)

    async with session(writer) as mcp:
        made = await mcp.call_tool("accord_memory_put", {"key": "doc", "value": "v1"})
        assert not made.is_error, structured(made)  # the setup allows a write
    before = auth_cluster.stored(namespace)
    async with session(reader) as mcp:
        read = structured(await mcp.call_tool("accord_memory_get", {"key": "doc"}))
        assert read["value"]["value"] == "v1"
        for tool, args in [
            ("accord_memory_put", {"key": "doc", "value": "v2"}),
            ("accord_memory_delete", {"key": "doc"}),
        ]:
            result = await mcp.call_tool(tool, args)
            assert result.is_error
            refusal = structured(result)
            assert refusal["reason"] == "PERMISSION_DENIED"
            assert refusal["missing_role"] == "WRITE"
    assert auth_cluster.stored(namespace) == before
