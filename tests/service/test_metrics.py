"""/metrics on a real replica (--metrics-listen): it parses with Prometheus's text parser,
the gRPC server metrics move by exactly the calls made (unary, server stream,
stream-stream, and a refusal under its code), namespaces beyond the cap are `_other`,
refusals are counted (an unauthenticated one never by namespace), every other path is
404, and under --workers each worker serves its own on port + i."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from accord.v1 import kv_pb2, leases_pb2
from tests.harness import (
    Coordinator,
    EtcdMember,
    Scrape,
    Stubs,
    eventually,
    fetch,
    free_port,
    identity,
    scrape,
    start_coordinator,
    stubs_by_replica,
)


@pytest.fixture(scope="module")
def measured(replicas: list[Coordinator], etcd: EtcdMember, workdir: Path) -> Iterator[Coordinator]:
    """A replica of its own serving /metrics: only these tests' calls move its counters
    (after the session replicas, so that under auth its credentials exist)."""
    replica = start_coordinator(workdir, "metrics", [etcd.endpoint], ws=False, metrics=True)
    yield replica
    replica.terminate()


def _port(replica: Coordinator) -> int:
    assert replica.metrics_port
    return replica.metrics_port


def _grpc(kind: str, service: str, method: str, **more: str) -> dict[str, str]:
    return {"grpc_type": kind, "grpc_service": service, "grpc_method": method, **more}


def _moved(before: Scrape, after: Scrape, name: str, labels: dict[str, str]) -> float:
    return after.value(name, labels) - before.value(name, labels)


async def test_unary_calls_are_counted_with_their_codes(
    measured: Coordinator, namespace: str
) -> None:
    put = _grpc("unary", "accord.v1.KV", "Put")
    async with Stubs(measured.address) as stubs:
        meta = identity(namespace, "tester")
        await stubs.kv.Put(kv_pb2.PutRequest(key="warm", value=b"x"), metadata=meta)
        before = await scrape(_port(measured))
        for i in range(3):
            await stubs.kv.Put(kv_pb2.PutRequest(key=f"k{i}", value=b"x"), metadata=meta)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stubs.kv.Put(kv_pb2.PutRequest(key="", value=b"x"), metadata=meta)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    after = await scrape(_port(measured))

    assert after.types["grpc_server_handling_seconds"] == "histogram"
    assert after.types["grpc_server_handled"] == "counter"
    assert _moved(before, after, "grpc_server_started_total", put) == 4
    assert _moved(before, after, "grpc_server_msg_received_total", put) == 4
    assert _moved(before, after, "grpc_server_msg_sent_total", put) == 3  # none for the refusal
    handled = "grpc_server_handled_total"
    assert _moved(before, after, handled, {**put, "grpc_code": "OK"}) == 3
    assert _moved(before, after, handled, {**put, "grpc_code": "InvalidArgument"}) == 1
    assert _moved(before, after, handled, put) == 4  # under no other code
    assert _moved(before, after, "grpc_server_handling_seconds_count", put) == 4
    assert after.value("accord_inflight_calls") == 0
    # the process collector rides along
    assert after.value("process_resident_memory_bytes") > 0


async def test_a_server_stream_counts_each_message_sent(
    measured: Coordinator, namespace: str
) -> None:
    watch = _grpc("server_stream", "accord.v1.KV", "Watch")
    before = await scrape(_port(measured))
    meta = identity(namespace, "tester")
    async with Stubs(measured.address) as stubs, Stubs(measured.address) as writer:
        stream = stubs.kv.Watch(kv_pb2.WatchRequest(key="", prefix=True), metadata=meta)
        started = await eventually(
            lambda: scrape(_port(measured)),
            lambda s: _moved(before, s, "grpc_server_started_total", watch) == 1,
        )
        assert _moved(before, started, "grpc_server_started_total", watch) == 1
        keys = {f"w{i}" for i in range(3)}
        for key in sorted(keys):
            await writer.kv.Put(kv_pb2.PutRequest(key=key, value=b"x"), metadata=meta)
        messages, seen = 0, set()
        async for response in stream:
            messages += 1
            seen |= {event.kv.key for event in response.events}
            if seen >= keys:
                break
        stream.cancel()
    after = await eventually(
        lambda: scrape(_port(measured)),
        lambda s: _moved(before, s, "grpc_server_handled_total", watch) == 1,
    )
    assert _moved(before, after, "grpc_server_msg_sent_total", watch) == messages
    assert _moved(before, after, "grpc_server_msg_received_total", watch) == 1
    assert (
        _moved(before, after, "grpc_server_handled_total", {**watch, "grpc_code": "Canceled"}) == 1
    )
    assert after.value("accord_inflight_calls") == 0


async def test_a_stream_stream_call_counts_each_message_each_way(
    measured: Coordinator, namespace: str
) -> None:
    keepalive = _grpc("bidi_stream", "accord.v1.Leases", "KeepAlive")
    meta = identity(namespace, "tester")
    async with Stubs(measured.address) as stubs:
        lease = await stubs.leases.Grant(leases_pb2.GrantRequest(ttl_seconds=30), metadata=meta)
        before = await scrape(_port(measured))
        stream = stubs.leases.KeepAlive(metadata=meta)
        for _ in range(3):
            await stream.write(leases_pb2.KeepAliveRequest(lease_id=lease.lease.id))
            answer = await stream.read()
            assert answer.lease_id == lease.lease.id
        await stream.done_writing()
        assert await stream.read() == grpc.aio.EOF
        assert await stream.code() == grpc.StatusCode.OK
    after = await eventually(
        lambda: scrape(_port(measured)),
        lambda s: _moved(before, s, "grpc_server_handled_total", keepalive) == 1,
    )
    assert _moved(before, after, "grpc_server_started_total", keepalive) == 1
    assert _moved(before, after, "grpc_server_msg_received_total", keepalive) == 3
    assert _moved(before, after, "grpc_server_msg_sent_total", keepalive) == 3
    assert _moved(before, after, "grpc_server_handled_total", {**keepalive, "grpc_code": "OK"}) == 1


async def test_a_stream_stream_call_the_client_cancels_is_counted_canceled(
    measured: Coordinator, namespace: str
) -> None:
    keepalive = _grpc("bidi_stream", "accord.v1.Leases", "KeepAlive")
    meta = identity(namespace, "tester")
    async with Stubs(measured.address) as stubs:
        lease = await stubs.leases.Grant(leases_pb2.GrantRequest(ttl_seconds=30), metadata=meta)
        before = await scrape(_port(measured))
        stream = stubs.leases.KeepAlive(metadata=meta)
        for _ in range(2):
            await stream.write(leases_pb2.KeepAliveRequest(lease_id=lease.lease.id))
            await stream.read()
        stream.cancel()
    after = await eventually(
        lambda: scrape(_port(measured)),
        lambda s: _moved(before, s, "grpc_server_handled_total", keepalive) == 1,
    )
    # Counted once, when gRPC has sent the status: Canceled, or OK when the method saw its
    # requests end and returned before gRPC knew the client had gone (a race: README).
    codes = after.label_values("grpc_server_handled_total", "grpc_code")
    moved = {
        code: _moved(before, after, "grpc_server_handled_total", {**keepalive, "grpc_code": code})
        for code in codes
    }
    assert {code for code, n in moved.items() if n} <= {"Canceled", "OK"}
    assert _moved(before, after, "grpc_server_msg_received_total", keepalive) == 2
    assert after.value("accord_inflight_calls") == 0


@pytest.fixture(scope="module")
def capped(replicas: list[Coordinator], etcd: EtcdMember, workdir: Path) -> Iterator[Coordinator]:
    """A replica labelling 2 namespaces by name, refusing every stream (a quota refusal
    labelled by namespace on demand), under a root of its own: a replica labels the
    namespace of every open vote it finds as it starts, which the suite's other tests may
    have left under the shared root."""
    replica = start_coordinator(
        workdir,
        "metrics-capped",
        [etcd.endpoint],
        [
            "--metrics-max-namespaces",
            "2",
            "--quota",
            "streams=0",
            "--root",
            f"capped-{uuid.uuid4().hex[:8]}",
        ],
        ws=False,
        metrics=True,
    )
    yield replica
    replica.terminate()


async def test_namespaces_beyond_the_cap_are_other(capped: Coordinator, namespace: str) -> None:
    namespaces = [f"{namespace}-{i}" for i in range(4)]
    async with Stubs(capped.address) as stubs:
        for each in namespaces:
            stream = stubs.kv.Watch(
                kv_pb2.WatchRequest(key="", prefix=True), metadata=identity(each, "tester")
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stream.read()
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    after = await scrape(_port(capped))
    refusals = "accord_quota_refusals_total"
    assert after.label_values(refusals, "namespace") == {*namespaces[:2], "_other"}
    assert after.value(refusals, {"namespace": "_other", "limit": "streams"}) == 2
    for each in namespaces[:2]:
        assert after.value(refusals, {"namespace": each, "limit": "streams"}) == 1
    assert not any(each in after.text for each in namespaces[2:])


@pytest.fixture(scope="module")
def guarded(replicas: list[Coordinator], etcd: EtcdMember, workdir: Path) -> Iterator[Coordinator]:
    """A replica requiring a token on every call, whatever the suite's mode."""
    replica = start_coordinator(
        workdir, "metrics-auth", [etcd.endpoint], ["--auth", "required"], ws=False, metrics=True
    )
    yield replica
    replica.terminate()


async def test_an_unauthenticated_call_is_counted_by_code_not_namespace(
    guarded: Coordinator, namespace: str, etcd: EtcdMember
) -> None:
    before = await scrape(_port(guarded))
    async with Stubs(guarded.address) as stubs:
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stubs.kv.Put(
                    kv_pb2.PutRequest(key="k", value=b"x"),
                    metadata=identity(namespace, "intruder", token="not-a-token"),
                )
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    after = await scrape(_port(guarded))
    code = {"code": "Unauthenticated"}
    assert _moved(before, after, "accord_auth_refusals_total", code) == 2
    put = _grpc("unary", "accord.v1.KV", "Put", grpc_code="Unauthenticated")
    assert _moved(before, after, "grpc_server_handled_total", put) == 2
    assert namespace not in after.text  # an unauthenticated call names no namespace
    assert etcd.stored(namespace) == []  # nothing written (the refusal's audit aside)


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/"), ("GET", "/metrics/x"), ("GET", "/favicon.ico"), ("POST", "/metrics"),
     ("PUT", "/metrics"), ("HEAD", "/metrics")],
)  # fmt: skip
async def test_only_get_metrics_is_served(measured: Coordinator, method: str, path: str) -> None:
    status, _ = await asyncio.to_thread(fetch, _port(measured), path, method)
    assert status == 404
    status, body = await asyncio.to_thread(fetch, _port(measured), "/metrics")
    assert status == 200
    assert "grpc_server_started_total" in body or "accord_inflight_calls" in body


@pytest.fixture(scope="module")
def two_workers(
    replicas: list[Coordinator], etcd: EtcdMember, workdir: Path
) -> Iterator[Coordinator]:
    """`accord serve --workers 2 --metrics-listen 127.0.0.1:PORT` (auth off whatever the
    suite's mode: the workers test's own way)."""
    coordinator = Coordinator(
        name="metrics-workers",
        log=workdir / "metrics-workers.log",
        port=free_port(),
        etcd_endpoints=[etcd.endpoint],
        extra_args=["--workers", "2"],
        ws=False,
        metrics_port=free_port(),
    )
    coordinator.start()
    yield coordinator
    coordinator.terminate()


async def test_each_worker_serves_its_own_metrics_on_port_plus_its_index(
    two_workers: Coordinator, namespace: str
) -> None:
    port = _port(two_workers)
    replicas = ("metrics-workers-w0", "metrics-workers-w1")
    meta = (("accord-namespace", namespace), ("accord-agent-id", "tester"))
    put = _grpc("unary", "accord.v1.KV", "Put")
    found = await stubs_by_replica(two_workers.address, replicas, meta)
    try:
        before = [await scrape(port + i) for i in range(2)]
        for i, replica in enumerate(replicas):
            for n in range(i + 1):  # one Put to worker 0, two to worker 1
                await found[replica].kv.Put(
                    kv_pb2.PutRequest(key=f"w{i}-{n}", value=b"x"), metadata=meta
                )
        after = [await scrape(port + i) for i in range(2)]
    finally:
        for stubs in found.values():
            await stubs.close()
    for i in range(2):
        assert _moved(before[i], after[i], "grpc_server_handled_total", put) == i + 1


@pytest.fixture(scope="module")
def rated(replicas: list[Coordinator], etcd: EtcdMember, workdir: Path) -> Iterator[Coordinator]:
    """A replica allowing each namespace 1 request a second (a burst of 2), labelling up
    to 10,000 namespaces (it labels every open vote's namespace as it starts: however
    many the suite's earlier tests left)."""
    replica = start_coordinator(
        workdir,
        "metrics-rated",
        [etcd.endpoint],
        [
            "--quota",
            "requests_per_second=1",
            "--rate-refusal-hold",
            "0",
            "--metrics-max-namespaces",
            "10000",
        ],
        ws=False,
        metrics=True,
    )
    yield replica
    replica.terminate()


async def test_a_batch_operation_refused_by_a_quota_is_counted(
    rated: Coordinator, namespace: str
) -> None:
    before = await scrape(_port(rated))
    ops = [kv_pb2.BatchOp(put=kv_pb2.PutRequest(key=f"b{i}", value=b"x")) for i in range(8)]
    async with Stubs(rated.address) as stubs:
        answer = await stubs.kv.Batch(
            kv_pb2.BatchRequest(ops=ops), metadata=identity(namespace, "tester")
        )
    refused = [o for o in answer.outcomes if o.WhichOneof("outcome") == "error"]
    assert refused  # the call took a token, its 8 operations one each: 2 in the bucket
    assert all(o.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] for o in refused)
    after = await scrape(_port(rated))
    rate = {"namespace": namespace, "limit": "requests_per_second"}
    assert _moved(before, after, "accord_quota_refusals_total", rate) == len(refused)
    batch = _grpc("unary", "accord.v1.KV", "Batch", grpc_code="OK")
    assert _moved(before, after, "grpc_server_handled_total", batch) == 1
