"""The service around the primitives: health, reflection, deadlines, graceful shutdown,
and the embedded etcd default."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from accord.client import AsyncClient, DeadlineExceededError, UnavailableError
from tests.harness import (
    Coordinator,
    EtcdMember,
    free_port,
    health,
    make_client,
    not_serving,
    until,
    wait_serving,
)


def test_health_and_reflection(replicas: list[Coordinator]) -> None:
    with grpc.insecure_channel(replicas[0].address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service="accord.v1.KV"), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = list(reflection.ServerReflectionInfo(iter([request]), timeout=5))
        names = {s.name for s in responses[0].list_services_response.service}
        assert {"accord.v1.KV", "grpc.health.v1.Health"} <= names


async def test_health_says_not_serving_while_etcd_is_frozen(
    live_replicas: list[Coordinator], etcd: EtcdMember
) -> None:
    """A frozen etcd answers nothing though its port accepts: the replica's connection to
    it is found dead by gRPC's keepalive, and health goes NOT_SERVING (a probe that is
    merely slow on a live connection does not), then SERVING once etcd is back."""
    replica = live_replicas[0]
    etcd.pause()
    try:
        await not_serving(replica.address, timeout=60)
    finally:
        etcd.resume()

    async def status() -> int:
        return await health(replica.address)

    await until(status, lambda s: s == health_pb2.HealthCheckResponse.SERVING, "SERVING", 30)


async def test_caller_deadline_bounds_the_etcd_wait(
    live_replicas: list[Coordinator], etcd: EtcdMember, namespace: str
) -> None:
    async with make_client([live_replicas[0].address], namespace, timeout=1.0) as c:
        await c.kv.put("k", b"v")
        etcd.pause()  # etcd hangs: the coordinator must give up when the caller does
        try:
            started = time.monotonic()
            with pytest.raises((DeadlineExceededError, UnavailableError)):
                await c.kv.get("k")
            elapsed = time.monotonic() - started
        finally:
            etcd.resume()
        assert elapsed < 5, f"the call took {elapsed:.1f}s despite a 1s deadline"
        value = await c.kv.get("k")  # and the replica is fine afterwards
        assert value is not None and value.value == b"v"


async def test_sigterm_drains_and_exits_cleanly(
    etcd: EtcdMember, workdir: Path, namespace: str
) -> None:
    replica = Coordinator(
        name="graceful",
        log=workdir / "graceful.log",
        port=free_port(),
        etcd_endpoints=[etcd.endpoint],
    )
    replica.start()
    async with make_client([replica.address], namespace) as c:
        await c.kv.put("k", b"v")
    assert replica.terminate() == 0
    assert '"coordinator stopped"' in replica.log.read_text()


def _etcd_processes_for(data_dir: Path) -> list[str]:
    out = subprocess.run(
        ["pgrep", "-af", f"data-dir {data_dir}/etcd"], capture_output=True, text=True, check=False
    )
    return [line for line in out.stdout.splitlines() if "pgrep" not in line]


async def test_embedded_etcd_starts_keeps_data_and_stops(workdir: Path, namespace: str) -> None:
    data_dir = workdir / "embedded"
    replica = Coordinator(
        name="embedded",
        log=workdir / "embedded.log",
        port=free_port(),
        extra_args=["--data-dir", str(data_dir)],
    )
    replica.start()
    try:
        assert _etcd_processes_for(data_dir), "accord serve without --etcd starts its own etcd"
        async with make_client([replica.address], namespace) as c:
            written = await c.kv.put("survives", b"restart")
    finally:
        assert replica.terminate() == 0
    assert _etcd_processes_for(data_dir) == [], "the private etcd stops with the coordinator"

    replica.start()  # same data dir: the data is still there
    try:
        async with make_client([replica.address], namespace) as c:
            kv = await c.kv.get("survives")
            assert kv is not None and kv.value == b"restart"
            assert kv.mod_revision == written.revision
    finally:
        replica.kill()  # a crash: the private etcd must not outlive its coordinator
    deadline = time.monotonic() + 10
    while _etcd_processes_for(data_dir) and time.monotonic() < deadline:  # noqa: ASYNC110 - another process; nothing to await on
        await asyncio.sleep(0.1)
    assert _etcd_processes_for(data_dir) == []

    replica.start()  # and a restart after the crash serves the same data
    try:
        async with make_client([replica.address], namespace) as c:
            kv = await c.kv.get("survives")
            assert kv is not None and kv.value == b"restart"
    finally:
        assert replica.terminate() == 0


async def test_two_replicas_behave_as_one_service(pinned: list[AsyncClient]) -> None:
    a, b = pinned
    watch = b.kv.watch("shared")
    await watch.start()
    written = await a.kv.put("shared", b"from a")
    seen = await asyncio.wait_for(watch.__anext__(), 10)
    assert seen.revision == written.revision
    read = await b.kv.get("shared")
    assert read is not None and read.mod_revision == written.revision
    await watch.aclose()


def test_unreachable_service_fails_fast_with_typed_error() -> None:
    async def call() -> None:
        async with make_client([f"127.0.0.1:{free_port()}"], "default", timeout=2) as c:
            await c.kv.get("k")

    with pytest.raises(UnavailableError):
        asyncio.run(call())


def test_wait_serving_rejects_dead_address() -> None:
    with pytest.raises(grpc.FutureTimeoutError):
        wait_serving(f"127.0.0.1:{free_port()}", 0.5)
