"""Mutual TLS on the gRPC port (`--tls-cert/--tls-key/--tls-client-ca`) with auth
required, tried as an attacker would: plaintext, TLS without a client certificate, and a
certificate from another CA are refused by the handshake (UNAVAILABLE: no call is ever
served); a valid certificate whose CN names no principal is UNAUTHENTICATED; one whose CN
names a principal acts as it, and a token on the call still wins over the certificate."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidMessage

from accord.client import (
    AsyncClient,
    Role,
    UnauthenticatedError,
    UnavailableError,
    tls_credentials,
)
from tests.auth.certs import Issued, issue, make_ca
from tests.auth.conftest import accord_cli, unique
from tests.harness import Coordinator, EtcdMember, make_client, start_coordinator

WRITER = "cert-writer"


@dataclass(frozen=True)
class TlsReplica:
    replica: Coordinator
    ca: Issued
    writer: Issued
    stranger: Issued
    impostor: Issued  # CN=WRITER, signed by another CA
    admin_token: str


@pytest.fixture(scope="module")
def tls_replica(
    etcd: EtcdMember, workdir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TlsReplica]:
    d = tmp_path_factory.mktemp("tls")
    ca, other_ca = make_ca(d, "accord-ca"), make_ca(d, "other-ca")
    server = issue(d, ca, "replica", server=True)
    writer, stranger = issue(d, ca, WRITER), issue(d, ca, "stranger")
    impostor = issue(d, other_ca, WRITER)
    root = f"tls-{unique('r')}"
    made = accord_cli(
        "auth", "bootstrap", "--etcd", etcd.endpoint, "--root", root, "--principal", "ops",
        "-o", "json",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    replica = start_coordinator(
        workdir,
        f"tls-replica-{root}",
        [etcd.endpoint],
        extra_args=[
            *("--auth", "required", "--root", root),
            *("--tls-cert", str(server.cert), "--tls-key", str(server.key)),
            *("--tls-client-ca", str(ca.cert)),
        ],
        tls_client=(ca.cert, stranger.cert, stranger.key),
    )
    yield TlsReplica(replica, ca, writer, stranger, impostor, json.loads(made.stdout)["secret"])
    replica.terminate()


def client(tls: TlsReplica, namespace: str, cert: Issued | None, token: str = "") -> AsyncClient:
    credentials = tls_credentials(
        tls.ca.cert, cert.cert if cert else None, cert.key if cert else None
    )
    return AsyncClient(
        [tls.replica.address], namespace=namespace, token=token, credentials=credentials
    )


async def test_a_certificate_names_its_principal(tls_replica: TlsReplica, namespace: str) -> None:
    async with client(tls_replica, namespace, tls_replica.stranger, tls_replica.admin_token) as ops:
        await ops.auth.create_token(WRITER)  # makes the principal; the token goes unused
        await ops.auth.grant(WRITER, Role.WRITE)
        assert (await ops.auth.whoami()).principal.name == "ops"  # the token wins
    async with client(tls_replica, namespace, tls_replica.writer) as writer:
        me = await writer.auth.whoami()
        assert (me.principal.name, me.agent_id, me.token_id) == (WRITER, WRITER, "")
        await writer.kv.put("k", b"by certificate")
        found = await writer.kv.get("k")
        assert found is not None and found.written_by.principal == WRITER


async def test_no_valid_certificate_is_refused_before_any_call(
    tls_replica: TlsReplica, namespace: str
) -> None:
    plaintext = make_client([tls_replica.replica.address], namespace, timeout=2)
    certless = client(tls_replica, namespace, None, tls_replica.admin_token)
    foreign = client(tls_replica, namespace, tls_replica.impostor)
    for refused in (plaintext, certless, foreign):
        async with refused as c:
            with pytest.raises(UnavailableError):
                await c.kv.get("k", timeout=2)


async def test_a_certificate_that_names_no_principal_is_unauthenticated(
    tls_replica: TlsReplica, namespace: str
) -> None:
    async with client(tls_replica, namespace, tls_replica.stranger) as c:
        with pytest.raises(UnauthenticatedError) as refused:
            await c.kv.get("k")
    assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert "stranger" in refused.value.message


async def test_the_y_websocket_port_speaks_tls_too(tls_replica: TlsReplica, namespace: str) -> None:
    """A token in a y-websocket URL never crosses the network in clear: wss:// with the
    replica's certificate works, plaintext ws:// does not."""
    async with client(tls_replica, namespace, tls_replica.stranger, tls_replica.admin_token) as ops:
        made = await ops.auth.create_token(unique("yjs"))
        await ops.auth.grant(made.info.principal, Role.WRITE)
    path = f"127.0.0.1:{tls_replica.replica.ws_port}/{namespace}/doc?token={made.secret}"
    trust = ssl.create_default_context(cafile=str(tls_replica.ca.cert))
    socket = await connect(f"wss://{path}", ssl=trust, open_timeout=10)
    await socket.send(b"\x00\x00\x01\x00")  # sync step 1: answered with step 2
    assert (await asyncio.wait_for(socket.recv(), 10))[:2] == b"\x00\x01"
    await socket.close()
    with pytest.raises((InvalidMessage, ConnectionError, OSError)):
        await connect(f"ws://{path}", open_timeout=5)


def wss_trusting(tls: TlsReplica, cert: Issued | None) -> ssl.SSLContext:
    """A wss:// client context that trusts the replica, presenting cert if given."""
    context = ssl.create_default_context(cafile=str(tls.ca.cert))
    if cert is not None:
        context.load_cert_chain(cert.cert, cert.key)
    return context


async def test_a_client_certificate_identifies_a_y_websocket_socket(
    tls_replica: TlsReplica, namespace: str
) -> None:
    """On wss:// a client certificate the client CA signed names the socket's principal
    when it brings no token; without a principal behind it the socket is closed 4401, and
    a certificate from another CA fails the handshake."""
    async with client(tls_replica, namespace, tls_replica.stranger, tls_replica.admin_token) as ops:
        await ops.auth.create_token(WRITER)  # makes the principal; the token goes unused
        await ops.auth.grant(WRITER, Role.WRITE)
    address = f"wss://127.0.0.1:{tls_replica.replica.ws_port}/{namespace}/doc"
    socket = await connect(address, ssl=wss_trusting(tls_replica, tls_replica.writer))
    await socket.send(b"\x00\x00\x01\x00")  # sync step 1: answered with step 2
    assert (await asyncio.wait_for(socket.recv(), 10))[:2] == b"\x00\x01"
    await socket.close()

    nobody = await connect(address, ssl=wss_trusting(tls_replica, tls_replica.stranger))
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(10):
            while True:
                await nobody.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    assert "stranger" in closed.value.rcvd.reason

    with pytest.raises((ssl.SSLError, ConnectionError, OSError, InvalidMessage)):
        foreign = await connect(
            address, ssl=wss_trusting(tls_replica, tls_replica.impostor), open_timeout=5
        )
        await foreign.recv()  # TLS 1.3: the server's refusal may arrive after the handshake
