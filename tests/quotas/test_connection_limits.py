"""Per-connection limits, on a replica of their own started with low ones: y-websocket
sockets per session and per address are closed at once with 1013 (try again later),
and a socket that closes frees its place; gRPC's maximum_concurrent_rpcs refuses calls
beyond it with RESOURCE_EXHAUSTED; an idle connection is closed (and the client
reconnects); the admin CLI shows and sets quotas."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from accord.v1 import kv_pb2
from tests.harness import AUTH_REQUIRED, Coordinator, EtcdMember, Stubs, identity, start_coordinator

pytestmark = pytest.mark.skipif(AUTH_REQUIRED, reason="a replica of its own, auth off")
WAIT = 10.0
SYNC_STEP1_EMPTY = b"\x00\x00\x01\x00"


@pytest.fixture(scope="module")
def limited(etcd: EtcdMember, workdir: Path) -> Iterator[Coordinator]:
    replica = start_coordinator(
        workdir,
        "limited-replica",
        [etcd.endpoint],
        extra_args=[
            "--ws-sockets-per-session", "2",
            "--ws-sockets-per-address", "3",
            "--max-concurrent-rpcs", "4",
            "--idle-connection-timeout", "1",
        ],
    )  # fmt: skip
    yield replica
    replica.terminate()


async def _open(url: str) -> ClientConnection:
    """A socket past the greeting (our sync step 1, answered by step 2 and step 1)."""
    socket = await connect(url, open_timeout=WAIT)
    await socket.send(SYNC_STEP1_EMPTY)
    for _ in range(2):
        await asyncio.wait_for(socket.recv(), WAIT)
    return socket


async def _refused(url: str) -> tuple[int, str]:
    socket = await connect(url, open_timeout=WAIT)
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(WAIT):
            while True:
                await socket.recv()
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def test_sockets_per_session_and_per_address(limited: Coordinator, namespace: str) -> None:
    doc = f"{limited.ws_url}/{namespace}/doc"
    first, second = await _open(doc), await _open(doc)
    code, reason = await _refused(doc)
    assert code == 1013 and "limit 2" in reason
    third = await _open(f"{limited.ws_url}/{namespace}/other")  # 3 from this address
    code, reason = await _refused(f"{limited.ws_url}/{namespace}/another")
    assert code == 1013 and "limit 3" in reason
    await first.close()
    await first.wait_closed()

    async def reopened() -> ClientConnection | None:
        try:
            return await _open(doc)
        except ConnectionClosed:
            return None

    again = None
    for _ in range(50):  # the server counts the socket out when its handler ends
        again = await reopened()
        if again is not None:
            break
        await asyncio.sleep(0.1)
    assert again is not None, "a closed socket's place was never freed"
    for socket in (second, third, again):
        await socket.close()


async def test_calls_beyond_max_concurrent_rpcs_are_refused(
    limited: Coordinator, namespace: str
) -> None:
    async with Stubs(limited.address) as stubs:
        meta = identity(namespace, "watcher")
        # More long calls than the replica allows at once (4; a health watch the harness
        # opened may still hold a slot): those beyond the limit are refused at once.
        watches = [stubs.kv.Watch(kv_pb2.WatchRequest(key="k"), metadata=meta) for _ in range(6)]
        refused: list[tuple[grpc.StatusCode, str]] = []
        for _ in range(300):  # a busy machine may take a while to open them all
            refused = [(await w.code(), await w.details()) for w in watches if w.done()]
            if len(refused) >= 2:  # six calls, at most four at once
                break
            await asyncio.sleep(0.1)
        assert len(refused) >= 2, f"six long calls, four allowed, refused: {refused}"
        assert all(code == grpc.StatusCode.RESOURCE_EXHAUSTED for code, _ in refused), refused
        assert len(refused) <= 3  # four served (three, if a harness health watch lingers)
        with pytest.raises(grpc.aio.AioRpcError) as more:
            await stubs.kv.Get(kv_pb2.GetRequest(key="k"), metadata=meta, timeout=WAIT)
        assert more.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for watch in watches:
            watch.cancel()
        # The replica frees the slots as it learns of the cancellations (a moment on a busy
        # machine): the next test finds them free.
        for _ in range(150):
            try:
                await stubs.kv.Get(kv_pb2.GetRequest(key="k"), metadata=meta, timeout=WAIT)
                break
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("the cancelled watches' slots were never freed")


async def test_an_idle_connection_is_closed(limited: Coordinator, namespace: str) -> None:
    async with Stubs(limited.address) as stubs:
        await stubs.kv.Get(kv_pb2.GetRequest(key="k"), metadata=identity(namespace, "idle"))
        assert stubs.channel.get_state() == grpc.ChannelConnectivity.READY
        state = stubs.channel.get_state()
        for _ in range(100):  # the server closes it after 1 s without a call
            state = stubs.channel.get_state()
            if state != grpc.ChannelConnectivity.READY:
                break
            await asyncio.sleep(0.1)
        assert state == grpc.ChannelConnectivity.IDLE
        # The client reconnects on its next call.
        await stubs.kv.Get(kv_pb2.GetRequest(key="k"), metadata=identity(namespace, "idle"))


def accord(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "accord.coordinator", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_sets_and_shows_quotas(replicas: list[Coordinator], namespace: str) -> None:
    where = ["--addr", replicas[0].address, "--namespace", namespace]
    made = accord("quota", "set", "keys=7", "requests_per_second=12.5", *where)
    assert made.returncode == 0, made.stderr
    shown = accord("quota", "show", "-o", "json", *where)
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert status["overrides"] == {"keys": "7", "requests_per_second": 12.5}
    assert status["limits"]["keys"] == "7" and status["limits"]["leases"] == "10000"
    table = accord("quota", "show", *where)
    assert "keys" in table.stdout and "override" in table.stdout and "default" in table.stdout
    bad = accord("quota", "set", "keys=-1", *where)
    assert bad.returncode == 2 and "keys=-1" in bad.stderr
    unknown = accord("quota", "set", "kees=1", *where)
    assert unknown.returncode == 2 and "NAME one of" in unknown.stderr
