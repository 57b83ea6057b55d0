"""JSON that JavaScript cannot parse (NaN, Infinity, numbers beyond a double) is refused
wherever Accord accepts JSON: presence over gRPC and over y-websocket, and operation
values. Nothing is stored, and no other peer ever receives it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from pycrdt import create_awareness_message, write_message, write_var_uint
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from accord.v1 import leases_pb2, sessions_pb2
from tests.harness import Coordinator, EtcdMember, Stubs, identity, token_for

WAIT = 10.0
NOT_JSON = {
    "NaN": '{"x": NaN}',
    "Infinity": '{"x": Infinity}',
    "-Infinity": '{"x": [1, -Infinity]}',
    "overflow": '{"x": 1e999}',
}
SYNC_STEP1_EMPTY = b"\x00\x00\x01\x00"


@pytest.fixture
async def stubs(replicas: list[Coordinator]) -> AsyncIterator[Stubs]:
    async with Stubs(replicas[0].address) as made:
        yield made


def _invalid(error: grpc.aio.AioRpcError) -> str:
    """The refusal's message, once it is known to be INVALID_ARGUMENT with that reason."""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    status = rpc_status.from_call(error)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(info) for d in status.details), status
    assert info.reason == "INVALID_ARGUMENT"
    return error.details() or ""


@pytest.mark.parametrize("case", sorted(NOT_JSON))
async def test_presence_with_non_finite_numbers_is_refused_over_grpc(
    case: str, stubs: Stubs, etcd: EtcdMember, namespace: str
) -> None:
    metadata = identity(namespace, "tester")
    await stubs.sessions.Open(sessions_pb2.SessionsOpenRequest(name="room"), metadata=metadata)
    lease = await stubs.leases.Grant(leases_pb2.GrantRequest(ttl_seconds=30), metadata=metadata)
    before = etcd.stored(namespace)
    request = sessions_pb2.SetPresenceRequest(
        name="room", lease_id=lease.lease.id, state_json=NOT_JSON[case]
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.sessions.SetPresence(request, metadata=metadata, timeout=WAIT)
    assert "state_json" in _invalid(err.value) and "finite" in (err.value.details() or "")
    assert etcd.stored(namespace) == before
    read = await stubs.sessions.Read(
        sessions_pb2.SessionsReadRequest(name="room"), metadata=metadata
    )
    assert not read.presence
    await stubs.leases.Revoke(leases_pb2.RevokeRequest(lease_id=lease.lease.id), metadata=metadata)


@pytest.mark.parametrize("case", sorted(NOT_JSON))
async def test_operation_values_with_non_finite_numbers_are_refused(
    case: str, stubs: Stubs, etcd: EtcdMember, namespace: str
) -> None:
    metadata = identity(namespace, "tester")
    await stubs.sessions.Open(sessions_pb2.SessionsOpenRequest(name="doc"), metadata=metadata)
    before = etcd.stored(namespace)
    op = sessions_pb2.Operation(
        root="board", map_set=sessions_pb2.MapSet(key="k", value_json=NOT_JSON[case])
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.sessions.Apply(
            sessions_pb2.SessionsApplyRequest(name="doc", operations=[op]),
            metadata=metadata,
            timeout=WAIT,
        )
    assert "operations[0]" in _invalid(err.value)
    assert etcd.stored(namespace) == before


def _awareness(client_id: int, clock: int, state: str) -> bytes:
    """A y-protocols awareness message with one client's state."""
    head = [write_var_uint(1), write_var_uint(client_id), write_var_uint(clock)]
    return create_awareness_message(b"".join([*head, write_message(state.encode())]))


async def _greeted(url: str, namespace: str, agent: str) -> ClientConnection:
    token = token_for(namespace, agent)
    auth = {} if token is None else {"subprotocols": [Subprotocol(token)]}
    socket = await connect(f"{url}?agent={agent}", open_timeout=WAIT, **auth)
    await socket.send(SYNC_STEP1_EMPTY)
    for step in (1, 0):
        message = await asyncio.wait_for(socket.recv(), WAIT)
        assert isinstance(message, bytes) and message[:2] == bytes([0, step])
    return socket


async def test_awareness_with_nan_never_reaches_other_peers(
    replicas: list[Coordinator], stubs: Stubs, etcd: EtcdMember, namespace: str
) -> None:
    metadata = identity(namespace, "tester")
    await stubs.sessions.Open(sessions_pb2.SessionsOpenRequest(name="room"), metadata=metadata)
    url = f"{replicas[0].ws_url}/{namespace}/room"
    peer = await _greeted(f"{replicas[1].ws_url}/{namespace}/room", namespace, "peer")
    for agent in ("bad", "good"):  # under ACCORD_TEST_AUTH=required: minted before, not during
        token_for(namespace, agent)
    before = etcd.stored(namespace)
    for case, state in NOT_JSON.items():
        bad = await _greeted(url, namespace, "bad")
        await bad.send(_awareness(5000, 1, state))
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(WAIT):
                while True:
                    await bad.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400, case
        assert "finite" in closed.value.rcvd.reason, closed.value.rcvd.reason
    assert etcd.stored(namespace) == before, "a refused awareness state was stored"
    read = await stubs.sessions.Read(
        sessions_pb2.SessionsReadRequest(name="room"), metadata=metadata
    )
    assert not read.presence

    # A good state sent afterwards reaches the peer; nothing before it carried the bad ones.
    good = await _greeted(url, namespace, "good")
    await good.send(_awareness(6000, 1, '{"ok": 1}'))
    received: list[bytes] = []
    async with asyncio.timeout(WAIT):
        while not any(b'{"ok": 1}' in m for m in received):
            message = await peer.recv()
            assert isinstance(message, bytes)
            received.append(message)
    for message in received:
        assert b"NaN" not in message and b"Infinity" not in message and b"1e999" not in message
    await good.close()
    await peer.close()
