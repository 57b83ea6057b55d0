"""`accord status` against the two live replicas, as a user runs it (a subprocess): both
are listed with their etcd endpoints and leader; calls in flight and the namespaces'
load reflect calls this test makes; a replica that does not answer is shown as down."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from typing import Any

import pytest

from tests.harness import (
    Coordinator,
    EtcdMember,
    cluster_admin_token,
    free_port,
    make_client,
    queued,
)
from tests.sessions.test_y_websocket import _greeted, ws_auth

WAIT = 20.0
PUTS = 8


async def accord_status(*args: str) -> subprocess.CompletedProcess[str]:
    """`accord status ARGS...` (as the cluster admin under auth), in a thread so that
    this test's event loop keeps its leases and waits going meanwhile."""
    token = cluster_admin_token()
    argv = [sys.executable, "-m", "accord.coordinator", "status", *args]
    return await asyncio.to_thread(
        subprocess.run,
        [*argv, *(["--token", token] if token else [])],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )


async def status_json(*addresses: str, top: int = 100) -> list[dict[str, Any]]:
    done = await accord_status(*addresses, "-o", "json", "--top", str(top))
    assert done.returncode == 0, done.stderr
    found: list[dict[str, Any]] = json.loads(done.stdout)
    return found


async def test_both_replicas_are_listed_with_etcd_and_its_leader(
    replicas: list[Coordinator], etcd: EtcdMember
) -> None:
    seen = await status_json(",".join(r.address for r in replicas))

    assert [s["address"] for s in seen] == [r.address for r in replicas]
    assert [s["up"] for s in seen] == [True, True]
    assert [s["status"]["replica"] for s in seen] == [r.name for r in replicas]
    for entry in seen:
        status = entry["status"]
        assert status["health"] == "HEALTH_SERVING"
        assert status["version"] and float(status["uptime_seconds"]) > 0
        [endpoint] = status["etcd"]["endpoints"]
        assert endpoint["endpoint"] == etcd.endpoint
        assert endpoint["healthy"] is True and endpoint["error"] == ""
        # One member: it is the leader, and the replica names it by its endpoint.
        assert int(endpoint["member_id"]) != 0
        assert endpoint["leader_id"] == endpoint["member_id"] == status["etcd"]["leader_id"]
        assert status["etcd"]["leader_endpoint"] == etcd.endpoint
        assert int(status["etcd"]["raft_term"]) >= 1
        assert int(status["connections"]["grpc"]) >= 1  # this very call's connection
        assert int(status["calls_in_flight"]) >= 1  # this very call

    table = await accord_status(*(r.address for r in replicas))
    assert table.returncode == 0, table.stderr
    for replica in replicas:
        row = next(line for line in _lines(table.stdout) if line.startswith(replica.address))
        assert replica.name in row and "SERVING" in row and f"leader {etcd.endpoint}" in row


async def test_in_flight_calls_and_namespace_load_follow_real_calls(
    replicas: list[Coordinator], namespace: str
) -> None:
    """A lock wait held open on replica 0 is a call in flight there; 2N calls in one
    namespace and N in another rank them in that order, with at least those counts; a
    KV.Batch of puts shows as a group-commit batch of several writes."""
    address = replicas[0].address
    busy, quieter, n = f"{namespace}-busy", f"{namespace}-quiet", 15
    async with contextlib.AsyncExitStack() as stack:
        holder, waiter = [
            await stack.enter_async_context(make_client([address], namespace, agent=name))
            for name in ("holder", "waiter")
        ]
        held = await stack.enter_async_context(await holder.leases.grant(10))
        waiting = await stack.enter_async_context(await waiter.leases.grant(10))
        await holder.locks.acquire("status/lock", held)
        wait = asyncio.create_task(waiter.locks.acquire("status/lock", waiting, wait=WAIT))
        stack.push_async_callback(_cancel, wait)
        await queued(holder, "status/lock", 1, WAIT)

        for name, calls in ((busy, 2 * n), (quieter, n)):
            async with make_client([address], name) as c:
                # Made together, the puts share KV.Batch calls and etcd transactions.
                await asyncio.gather(*(c.kv.put(f"k{i}", "v") for i in range(PUTS)))
                for _ in range(calls - 1):
                    await c.kv.get("k")  # one call each: sequential calls are not batched

        [entry] = await status_json(address)
        status = entry["status"]
        # The status call itself and the wait, at least.
        assert int(status["calls_in_flight"]) >= 2, status
        ranked = [t["namespace"] for t in status["top_namespaces"]]
        assert busy in ranked and quieter in ranked, ranked
        assert ranked.index(busy) < ranked.index(quieter), ranked
        counts = {t["namespace"]: int(t["calls"]) for t in status["top_namespaces"]}
        assert counts[busy] >= 2 * n and counts[quieter] >= n, counts
        assert int(status["window_seconds"]) == 60
        group_commit = status["group_commit"]
        assert int(group_commit["batches"]) >= 1 and int(group_commit["recent_max"]) >= 2

        table = await accord_status(address, "--top", "100")
        assert table.returncode == 0, table.stderr
        assert any(busy in line and f"{counts[busy]:,}" in line for line in _lines(table.stdout))


async def test_an_open_y_websocket_socket_is_counted(
    replicas: list[Coordinator], namespace: str
) -> None:
    async with make_client([replicas[0].address], namespace) as c:
        await c.sessions.open("room")
    socket = await _greeted(f"{replicas[0].ws_url}/{namespace}/room", **ws_auth(namespace))
    try:
        [entry] = await status_json(replicas[0].address)
        assert int(entry["status"]["connections"]["websocket"]) >= 1
    finally:
        await socket.close()


async def test_a_replica_that_does_not_answer_is_shown_as_down(
    replicas: list[Coordinator],
) -> None:
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens there
    done = await accord_status(replicas[0].address, nobody, "-o", "json")

    assert done.returncode == 3, done.stderr  # some replica is down; all are printed
    up, down = json.loads(done.stdout)
    assert up["address"] == replicas[0].address and up["up"] is True
    assert up["status"]["replica"] == replicas[0].name
    assert down == {"address": nobody, "up": False, "error": down["error"]}
    assert down["error"]

    table = await accord_status(replicas[0].address, nobody)
    assert table.returncode == 3
    row = next(line for line in _lines(table.stdout) if line.startswith(nobody))
    assert "DOWN" in row
    assert f"{nobody} is down: " in table.stdout
    assert "Traceback" not in table.stderr


@pytest.mark.parametrize("top", ["0", "101"])
async def test_top_out_of_range_is_a_usage_error(replicas: list[Coordinator], top: str) -> None:
    done = await accord_status(replicas[0].address, "--top", top)
    assert done.returncode == 2 and "--top" in done.stderr


def _lines(table: str) -> list[str]:
    return [line.strip() for line in table.splitlines()]


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
