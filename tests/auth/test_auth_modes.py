"""How a replica runs without auth: it refuses to listen beyond loopback unless told
--insecure. With auth off, identity metadata given twice or in binary form is still
refused, the Auth service mints nothing, and browser pages from unlisted origins cannot
open y-websocket connections."""

from __future__ import annotations

import grpc
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from accord.client import BadIdentityError, ConditionFailedError
from accord.client.errors import from_rpc_error
from accord.coordinator.settings import Settings, is_loopback
from accord.v1 import kv_pb2
from tests.auth.conftest import accord_cli
from tests.harness import Coordinator, EtcdMember, Stubs, make_client


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--listen", "0.0.0.0:0"], "auth is off"),
        (["--listen", "127.0.0.1:0", "--ws-listen", "[::]:0"], "auth is off"),
    ],
)
def test_serve_refuses_an_exposed_replica(args: list[str], complaint: str) -> None:
    result = accord_cli("serve", "--etcd", "127.0.0.1:1", *args)
    assert result.returncode == 2
    assert complaint in result.stderr and "--insecure" in result.stderr


def test_what_counts_as_loopback() -> None:
    assert is_loopback("127.0.0.1:1") and is_loopback("[::1]:1") and is_loopback("localhost:1")
    assert not is_loopback("0.0.0.0:1") and not is_loopback(":1")
    assert not is_loopback("example.org:1") and not is_loopback("[::]:1")
    assert Settings(listen="0.0.0.0:1", insecure=True).exposure_problem() is None
    assert Settings(listen="0.0.0.0:1", auth_required=True).exposure_problem() is None
    assert Settings().exposure_problem() is None  # the loopback default


async def test_auth_off_still_refuses_duplicate_or_binary_identity(
    replicas: list[Coordinator], etcd: EtcdMember, namespace: str
) -> None:
    ns = ("accord-namespace", namespace)
    before = etcd.kvs("accord/ns/", prefix=True)
    async with Stubs(replicas[0].address) as stubs:
        for metadata in [
            (ns, ("accord-namespace", "default")),
            (ns, ("accord-agent-id", "a"), ("accord-agent-id", "admin")),
            (("accord-namespace-bin", namespace.encode()),),
        ]:
            request = kv_pb2.PutRequest(key="k", value=b"x", request_id="r1")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stubs.kv.Put(request, metadata=metadata, timeout=5)
            error = from_rpc_error(caught.value)
            assert isinstance(error, BadIdentityError), error
    assert etcd.kvs("accord/ns/", prefix=True) == before


async def test_auth_off_mints_nothing(
    replicas: list[Coordinator], etcd: EtcdMember, namespace: str
) -> None:
    async with make_client([replicas[1].address], namespace) as c:
        me = await c.auth.whoami()
        assert not me.auth_required and me.agent_id == "tester" and not me.principal.name
        with pytest.raises(ConditionFailedError) as caught:
            await c.auth.create_token("intruder")
        assert caught.value.metadata["auth"] == "off"
    assert etcd.kvs("accord/auth/", prefix=True) == []


async def test_auth_off_still_refuses_browser_pages_from_unlisted_origins(
    replicas: list[Coordinator], namespace: str
) -> None:
    """The session replicas list no origin: a page anywhere (the user's browser on any
    site) is refused at the handshake; a client without Origin (an agent) is served."""
    url = f"{replicas[0].ws_url}/{namespace}/doc"
    with pytest.raises(InvalidStatus) as refused:
        await connect(url, open_timeout=10, origin=Origin("http://evil.example"))
    assert refused.value.response.status_code == 403
    socket = await connect(url, open_timeout=10)
    await socket.close()
