"""`accord serve --workers N`: N replica processes on one gRPC and one y-websocket port
behave as one service, stop together, and outlive the death of one of them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from accord.v1 import kv_pb2, leases_pb2, locks_pb2
from tests.harness import (
    Coordinator,
    EtcdMember,
    Metadata,
    Stubs,
    free_port,
    listening_pids,
    stubs_by_replica,
    until,
)

M = TypeVar("M", bound=Message)
NAME = "workers"
REPLICAS = (f"{NAME}-w0", f"{NAME}-w1")


def _identity(namespace: str, agent: str = "tester") -> Metadata:
    """These workers serve with auth off (whatever the suite's mode): no token."""
    return (("accord-namespace", namespace), ("accord-agent-id", agent))


def _serving_two(workdir: Path, name: str, etcd: EtcdMember | None, *more: str) -> Coordinator:
    """`accord serve --workers 2` over the session etcd, or its own embedded one."""
    coordinator = Coordinator(
        name=name,
        log=workdir / f"{name}.log",
        port=free_port(),
        etcd_endpoints=[etcd.endpoint] if etcd else [],
        extra_args=["--workers", "2", *more],
    )
    coordinator.start()
    return coordinator


@pytest.fixture(scope="module")
def workers(etcd: EtcdMember, workdir: Path) -> Iterator[Coordinator]:
    coordinator = _serving_two(workdir, NAME, etcd)
    yield coordinator
    coordinator.terminate()


@pytest.fixture
async def by_worker(workers: Coordinator, namespace: str) -> AsyncIterator[dict[str, Stubs]]:
    """A channel to each worker, told apart by the replica id it answers with."""
    found = await stubs_by_replica(workers.address, REPLICAS, _identity(namespace))
    yield found
    for stubs in found.values():
        await stubs.close()


def _details(error: grpc.aio.AioRpcError, kind: type[M]) -> list[M]:
    """The error's details of one message type."""
    status = rpc_status.from_call(error)
    assert status is not None
    found = []
    for detail in status.details:
        if detail.Is(kind.DESCRIPTOR):
            found.append(kind())
            detail.Unpack(found[-1])
    return found


def _reason(error: grpc.aio.AioRpcError) -> str:
    (info,) = _details(error, error_details_pb2.ErrorInfo)
    return info.reason


def _logged(log: Path, event: str) -> list[dict[str, object]]:
    """The JSON log lines of one event."""
    found = []
    for line in log.read_text().splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("event") == event:
                found.append(entry)
    return found


def _port_free(port: int) -> bool:
    """Nothing listens on port (bound without SO_REUSEPORT, which any listener refuses)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _alive(pid: int) -> bool:
    """The process runs (a zombie, dead but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _etcd_processes_for(data_dir: Path) -> list[str]:
    out = subprocess.run(
        ["pgrep", "-af", f"data-dir {data_dir}/etcd"], capture_output=True, text=True, check=False
    )
    return [line for line in out.stdout.splitlines() if "pgrep" not in line]


async def test_each_worker_is_a_replica_on_the_shared_ports(
    workers: Coordinator, by_worker: dict[str, Stubs]
) -> None:
    """Fresh connections to the one gRPC port reach both workers, each with its own
    replica id and its own health service; both listen on the y-websocket port too."""
    assert set(by_worker) == set(REPLICAS)
    for stubs in by_worker.values():
        health = health_pb2_grpc.HealthStub(stubs.channel)
        watched = health.Watch(health_pb2.HealthCheckRequest(service="accord.v1.KV"), timeout=10)
        async for update in watched:  # the worker's first etcd probe sets it
            if update.status == health_pb2.HealthCheckResponse.SERVING:
                break
        watched.cancel()
    pids = set(workers.workers().values())
    assert len(pids) == 2
    assert listening_pids(workers.port) == pids
    assert listening_pids(workers.ws_port) == pids


async def test_a_cas_conflict_spans_workers(by_worker: dict[str, Stubs], namespace: str) -> None:
    w0, w1 = (by_worker[r].kv for r in REPLICAS)
    meta = _identity(namespace)

    def cas(revision: int) -> kv_pb2.PutRequest:
        precondition = kv_pb2.Precondition(mod_revision=revision)
        return kv_pb2.PutRequest(key="k", value=b"v", precondition=precondition)

    created = await w0.Put(cas(0), metadata=meta, timeout=10)
    assert created.header.replica == REPLICAS[0]
    moved = await w1.Put(cas(created.kv.mod_revision), metadata=meta, timeout=10)
    assert moved.header.replica == REPLICAS[1]
    with pytest.raises(grpc.aio.AioRpcError) as stale:  # w0 saw the key at its revision
        await w0.Put(cas(created.kv.mod_revision), metadata=meta, timeout=10)
    assert stale.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert _reason(stale.value) == "CONDITION_FAILED"
    (failure,) = _details(stale.value, kv_pb2.ConditionFailure)
    assert failure.current_mod_revision == moved.kv.mod_revision


async def test_a_lock_held_via_one_worker_blocks_the_other(
    by_worker: dict[str, Stubs], namespace: str
) -> None:
    w0, w1 = (by_worker[r] for r in REPLICAS)
    a, b = _identity(namespace, "agent-a"), _identity(namespace, "agent-b")
    lease_a = (await w0.leases.Grant(leases_pb2.GrantRequest(ttl_seconds=30), metadata=a)).lease
    lease_b = (await w1.leases.Grant(leases_pb2.GrantRequest(ttl_seconds=30), metadata=b)).lease
    held = await w0.locks.Acquire(
        locks_pb2.AcquireRequest(name="L", lease_id=lease_a.id), metadata=a, timeout=10
    )
    with pytest.raises(grpc.aio.AioRpcError) as blocked:
        await w1.locks.Acquire(
            locks_pb2.AcquireRequest(name="L", lease_id=lease_b.id, no_wait=True),
            metadata=b,
            timeout=10,
        )
    assert blocked.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert _reason(blocked.value) == "WOULD_BLOCK"
    waiting = asyncio.ensure_future(
        w1.locks.Acquire(
            locks_pb2.AcquireRequest(name="L", lease_id=lease_b.id), metadata=b, timeout=20
        )
    )

    async def queued() -> int:
        state = await w0.locks.Describe(locks_pb2.DescribeRequest(name="L"), metadata=a)
        return len(state.state.waiters)

    await until(queued, lambda n: n == 1, "agent-b's acquire queued behind agent-a")
    assert not waiting.done()
    await w0.locks.Release(
        locks_pb2.ReleaseRequest(name="L", lease_id=lease_a.id, token=held.grant.token),
        metadata=a,
        timeout=10,
    )
    granted = await asyncio.wait_for(waiting, 20)
    assert granted.header.replica == REPLICAS[1]
    assert granted.grant.token > held.grant.token


async def test_a_watch_on_one_worker_sees_a_write_through_the_other(
    by_worker: dict[str, Stubs], namespace: str
) -> None:
    w0, w1 = (by_worker[r].kv for r in REPLICAS)
    meta = _identity(namespace)
    stream = w1.Watch(kv_pb2.WatchRequest(key="shared"), metadata=meta, timeout=20)
    registered = await stream.read()
    assert registered.header.replica == REPLICAS[1]
    written = await w0.Put(kv_pb2.PutRequest(key="shared", value=b"via w0"), metadata=meta)
    assert written.header.replica == REPLICAS[0]
    seen = await stream.read()
    while not seen.events:  # progress notices carry none
        seen = await stream.read()
    stream.cancel()
    assert [(e.kv.value, e.kv.mod_revision) for e in seen.events] == [
        (b"via w0", written.kv.mod_revision)
    ]


async def test_sigterm_stops_every_worker_then_the_one_embedded_etcd(
    workdir: Path, namespace: str
) -> None:
    """Without --etcd the command starts one etcd for all its workers (a write through
    one is read through the other); SIGTERM drains every worker, then stops that etcd,
    and once the command has exited nothing of it is left: no worker, no etcd, both
    ports free."""
    data_dir = workdir / "workers-embedded"
    service = _serving_two(workdir, "workers-embedded", None, "--data-dir", str(data_dir))
    try:
        assert len(_etcd_processes_for(data_dir)) == 1
        replicas = ("workers-embedded-w0", "workers-embedded-w1")
        meta = _identity(namespace)
        found = await stubs_by_replica(service.address, replicas, meta)
        try:
            written = await found[replicas[0]].kv.Put(
                kv_pb2.PutRequest(key="one-etcd", value=b"w0"), metadata=meta
            )
            read = await found[replicas[1]].kv.Get(kv_pb2.GetRequest(key="one-etcd"), metadata=meta)
            assert read.kv.mod_revision == written.kv.mod_revision
        finally:
            for stubs in found.values():
                await stubs.close()
        pids = service.workers()
        assert set(pids) == set(replicas)
    finally:
        code = service.terminate()
    assert code == 0
    stopped = {entry["replica"] for entry in _logged(service.log, "coordinator stopped")}
    assert stopped == set(replicas)
    # Every line a worker logs names it, not only those that say so themselves.
    totals = [entry.get("replica") for entry in _logged(service.log, "group commit totals")]
    assert sorted(map(str, totals)) == sorted(replicas)
    # At once, not eventually: the command exits only after its workers and etcd did.
    assert [pid for pid in pids.values() if _alive(pid)] == []
    assert _etcd_processes_for(data_dir) == []
    assert _port_free(service.port) and _port_free(service.ws_port)


async def _put_on_a_fresh_connection(address: str, meta: Metadata) -> None:
    """One Put on a new connection, sent again on UNAVAILABLE as a client would: the kernel
    resets connections that the killed worker's listener held but had not accepted (with
    net.ipv4.tcp_migrate_req=0, the default), seen here within ~50 ms of a kill."""
    for attempt in range(3):
        async with Stubs(address, [("grpc.use_local_subchannel_pool", 1)]) as fresh:
            try:
                await fresh.kv.Put(
                    kv_pb2.PutRequest(key="k", value=b"v"), metadata=meta, timeout=10
                )
                return
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or attempt == 2:
                    raise


async def test_a_killed_worker_is_started_again_and_the_service_answers_meanwhile(
    etcd: EtcdMember, workdir: Path, namespace: str
) -> None:
    service = _serving_two(workdir, "workers-crash", etcd)
    try:
        replicas = ("workers-crash-w0", "workers-crash-w1")
        meta = _identity(namespace)
        before = service.workers()
        os.kill(before[replicas[0]], signal.SIGKILL)

        async def killed() -> bool:
            return not _alive(before[replicas[0]])

        await until(killed, bool, "the killed worker to be gone (reaped)")
        for _ in range(10):  # fresh connections: each lands on a live worker
            await _put_on_a_fresh_connection(service.address, meta)
        assert service.running()

        async def restarted() -> dict[str, int]:
            return service.workers()

        after = await until(
            restarted,
            lambda now: set(now) == set(replicas) and now[replicas[0]] != before[replicas[0]],
            "the supervisor to start the killed worker again",
        )
        assert after[replicas[1]] == before[replicas[1]]

        async def serving_again() -> list[dict[str, object]]:
            return _logged(service.log, "worker serving again")

        await until(serving_again, bool, "the new worker to serve")
        found = await stubs_by_replica(service.address, replicas, meta)  # on the shared port
        for stubs in found.values():
            await stubs.close()
    finally:
        assert service.terminate() == 0
    (restart,) = _logged(service.log, "worker exited; starting it again")
    assert restart["replica"] == replicas[0] and restart["code"] == -signal.SIGKILL


async def test_workers_do_not_outlive_a_killed_supervisor(etcd: EtcdMember, workdir: Path) -> None:
    """The supervisor killed (kill -9, no chance to stop anything): each worker gets
    SIGTERM from the kernel and drains, so none keeps serving the ports unsupervised."""
    service = _serving_two(workdir, "workers-orphaned", etcd)
    pids = service.workers()
    assert len(pids) == 2
    service.kill()

    async def left() -> list[int]:
        return [pid for pid in pids.values() if _alive(pid)]

    await until(left, lambda running: running == [], "the workers to exit")
    stopped = {entry["replica"] for entry in _logged(service.log, "coordinator stopped")}
    assert stopped == set(pids)  # drained, not killed
    assert _port_free(service.port) and _port_free(service.ws_port)


async def test_port_zero_is_one_free_port_for_every_worker(
    etcd: EtcdMember, workdir: Path, namespace: str
) -> None:
    """--listen and --ws-listen with port 0: the command picks one free port of each for
    all its workers, and says which."""
    log = workdir / "workers-any-port.log"
    with log.open("ab") as out:
        command = subprocess.Popen(
            [sys.executable, "-m", "accord.coordinator", "serve", "--workers", "2",
             "--listen", "127.0.0.1:0", "--ws-listen", "127.0.0.1:0", "--etcd", etcd.endpoint],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:

        async def serving() -> list[dict[str, object]]:
            return _logged(log, "workers serving")

        (started,) = await until(serving, bool, "the workers to serve", timeout=60)
        listen, ws_listen = str(started["listen"]), str(started["ws_listen"])
        port, ws_port = int(listen.rpartition(":")[2]), int(ws_listen.rpartition(":")[2])
        assert port and ws_port
        workers = {int(entry["pid"]) for entry in _logged(log, "worker started")}
        assert len(workers) == 2
        assert listening_pids(port) == workers and listening_pids(ws_port) == workers
        replicas = {f"{socket.gethostname()}:{port}-w{i}" for i in range(2)}
        found = await stubs_by_replica(listen, replicas, _identity(namespace))
        for stubs in found.values():
            await stubs.close()
    finally:
        command.terminate()
        assert command.wait(30) == 0


def test_a_worker_that_cannot_start_stops_the_command(etcd: EtcdMember, workdir: Path) -> None:
    """A configuration error fails every worker the same way: the command says so and
    exits 1, leaving no worker behind, instead of restarting them forever."""
    missing, port = workdir / "no-such-cert.pem", free_port()
    ended = subprocess.run(
        [sys.executable, "-m", "accord.coordinator", "serve", "--workers", "2",
         "--listen", f"127.0.0.1:{port}", "--ws-listen", "", "--etcd", etcd.endpoint,
         "--tls-cert", str(missing), "--tls-key", str(missing)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert ended.returncode == 1, ended.stderr[-2000:]
    assert "a worker could not start; stopping" in ended.stderr
    assert "No such file or directory" in ended.stderr  # the worker's own error
    left = subprocess.run(["pgrep", "-f", f":{port}-w"], capture_output=True, check=False)
    assert left.stdout == b""
    assert _port_free(port)


def test_a_port_another_process_listens_on_is_refused() -> None:
    """gRPC's SO_REUSEPORT would share a port with any other listener of this user; the
    workers' command refuses one that is taken instead, before starting anything."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ended = subprocess.run(
            [sys.executable, "-m", "accord.coordinator", "serve", "--workers", "2",
             "--listen", f"127.0.0.1:{port}", "--etcd", "127.0.0.1:1"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert ended.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in ended.stderr
