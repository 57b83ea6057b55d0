"""The y-websocket endpoint with auth required, tried as an attacker and as an app:
a socket without a token, with garbage, or acting as another agent is closed (4401,
4403) before it sees anything; a browser page from a foreign origin is refused at the
handshake (HTTP 403) even with a valid token, one from the allowed origin works; a
reader may follow a session but not change it; a writer's update is stored; revoking
the token closes an open socket on both replicas within a second. Nothing a refused
socket sent is stored."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from pycrdt import Doc, Text, create_update_message
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin, Subprotocol

from accord.client import Role
from accord.coordinator.auth import tokens
from tests.auth.conftest import ALLOWED_ORIGIN, AuthCluster, Mint, unique
from tests.harness import make_client, until

WAIT = 10.0
SYNC_STEP1_EMPTY = b"\x00\x00\x01\x00"  # sync, step 1, a 1-byte empty state vector


def url(cluster: AuthCluster, replica: int, namespace: str, query: str) -> str:
    return f"{cluster.replicas[replica].ws_url}/{namespace}/doc?{query}"


async def greeted(address: str, **options: object) -> ClientConnection:
    """A socket past the greeting: our sync step 1, answered by step 2 and step 1."""
    socket = await connect(address, open_timeout=WAIT, **options)  # type: ignore[arg-type]
    await socket.send(SYNC_STEP1_EMPTY)
    for step in (1, 0):
        message = await asyncio.wait_for(socket.recv(), WAIT)
        assert isinstance(message, bytes) and message[:2] == bytes([0, step])
    return socket


async def closed_with(socket: ClientConnection) -> tuple[int, str]:
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(WAIT):
            while True:
                await socket.recv()
    assert closed.value.rcvd is not None, "the server closed with a code and reason"
    return closed.value.rcvd.code, closed.value.rcvd.reason


def an_update(text: str) -> bytes:
    doc: Doc = Doc()
    doc["notes"] = Text(text)
    return create_update_message(doc.get_update())


async def test_sockets_without_a_valid_credential_are_closed(
    auth_cluster: AuthCluster, mint: Mint, namespace: str
) -> None:
    writer = unique("writer")
    token = await mint(writer, Role.WRITE)
    before = auth_cluster.stored()
    for query, code, words in [
        ("", 4401, "token"),
        ("token=" + "x" * 60, 4401, "malformed"),
        ("token=" + str(tokens.new()), 4401, "unknown"),
        (f"token={token}&token={token}", 4400, "more than once"),
        (f"token={token}&agent=someone-else", 4403, writer),
    ]:
        socket = await connect(url(auth_cluster, 0, namespace, query), open_timeout=WAIT)
        with contextlib.suppress(ConnectionClosed):  # closed at once, or right after this
            await socket.send(an_update("forged"))
        got, reason = await closed_with(socket)
        assert got == code and words in reason, (query, got, reason)
    assert auth_cluster.stored() == before  # no session created, nothing pushed


async def test_a_foreign_origin_is_refused_even_with_a_token(
    auth_cluster: AuthCluster, mint: Mint, namespace: str
) -> None:
    token = await mint(unique("app"), Role.WRITE)
    address = url(auth_cluster, 1, namespace, f"token={token}")
    with pytest.raises(InvalidStatus) as refused:
        await connect(address, open_timeout=WAIT, origin=Origin("http://evil.example"))
    assert refused.value.response.status_code == 403
    socket = await greeted(address, origin=Origin(ALLOWED_ORIGIN))
    await socket.close()


async def test_a_reader_follows_but_cannot_write_and_a_writer_can(
    auth_cluster: AuthCluster, mint: Mint, namespace: str
) -> None:
    writer_token = await mint(unique("writer"), Role.WRITE)
    reader_token = await mint(unique("reader"), Role.READ)
    missing = await connect(url(auth_cluster, 0, namespace, f"token={reader_token}"))
    assert (await closed_with(missing))[0] == 4404  # a reader cannot create the session

    writer = await greeted(url(auth_cluster, 0, namespace, f"token={writer_token}"))
    await writer.send(an_update("from the writer"))
    async with make_client(auth_cluster.addresses, namespace, agent="", token=reader_token) as c:

        async def text() -> object:
            return (await c.sessions.read("doc")).json.get("notes")

        await until(text, lambda t: t == "from the writer", "the writer's update", WAIT)
        before = auth_cluster.stored(namespace)
        reader = await greeted(url(auth_cluster, 1, namespace, f"token={reader_token}"))
        await reader.send(an_update("from the reader"))
        code, reason = await closed_with(reader)
        assert code == 4403 and "WRITE" in reason
        assert auth_cluster.stored(namespace) == before
        assert await text() == "from the writer"
    await writer.close()


async def test_revoking_a_token_closes_its_sockets_on_both_replicas(
    auth_cluster: AuthCluster, admin: object, mint: Mint, namespace: str
) -> None:
    token = await mint(unique("app"), Role.WRITE)
    sockets = [await greeted(url(auth_cluster, i, namespace, f"token={token}")) for i in (0, 1)]
    async with make_client(
        auth_cluster.addresses, namespace, agent="", token=auth_cluster.admin_token
    ) as root:
        await root.auth.revoke_token(token.split(".")[1])
    revoked_at = time.monotonic()
    closes = await asyncio.gather(*(closed_with(s) for s in sockets))
    assert time.monotonic() - revoked_at < 1.0
    assert all(code == 4401 and "revoked" in reason for code, reason in closes), closes


async def test_the_token_may_come_as_the_websocket_subprotocol(
    auth_cluster: AuthCluster, mint: Mint, namespace: str
) -> None:
    """As a browser sends it with `new WebSocket(url, [token])`, out of the URL: the
    handshake echoes it (browsers require that), and it is checked like ?token=."""
    token = await mint(unique("app"), Role.WRITE)
    address = f"{auth_cluster.replicas[0].ws_url}/{namespace}/doc"
    socket = await greeted(address, subprotocols=[Subprotocol(token)])
    assert socket.subprotocol == token
    await socket.close()
    forged = await connect(address, subprotocols=[Subprotocol(str(tokens.new()))])
    assert (await closed_with(forged))[0] == 4401
