"""Traces: a replica exporting OTLP/HTTP to a receiver in the test process (tests.harness
.otlp), and agents tracing with the OpenTelemetry SDK in the test process. The client
injects its span's context on every call; the replica's server span is its child, with
the RPC attributes; etcd calls are the server span's children; a group-commit batch links
to the writes it carries; streams (server and bidirectional) and y-websocket connections
get spans with the right parent; a bad traceparent starts a new trace; a replica without
OTEL_* configuration exports nothing."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from accord.client import AsyncClient, Client, ConditionFailedError, Expect
from accord.v1 import kv_pb2
from tests.harness import (
    Coordinator,
    EtcdMember,
    Stubs,
    identity,
    make_client,
    start_coordinator,
    token_for,
    until,
)
from tests.harness.otlp import OtlpReceiver, ReceivedSpan

SERVER, CLIENT = 2, 3  # OTLP span kinds
UNSET, ERROR = 0, 2


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    received = OtlpReceiver()
    yield received
    received.close()


@pytest.fixture(scope="module")
def traced(
    replicas: list[Coordinator], etcd: EtcdMember, workdir: Path, receiver: OtlpReceiver
) -> Iterator[Coordinator]:
    """A replica exporting its spans to the receiver (after the session replicas, so that
    under auth its credentials exist)."""
    replica = start_coordinator(workdir, "traced", [etcd.endpoint], env=receiver.env())
    yield replica
    replica.terminate()


@pytest.fixture
def agent() -> Iterator[tuple[Tracer, InMemorySpanExporter]]:
    """An agent's tracer (the SDK, in memory) and what it exported."""
    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    yield provider.get_tracer("agent"), exported
    provider.shutdown()


def _ids(span: ReadableSpan) -> tuple[int, int]:
    context = span.get_span_context()
    assert context is not None
    return context.trace_id, context.span_id


async def _trace(receiver: OtlpReceiver, trace_id: int, *names: str) -> list[ReceivedSpan]:
    """The replica's spans of one trace, once spans of every name given have arrived."""
    return await _where(
        receiver,
        lambda s: s.trace_id == trace_id,
        lambda spans: set(names) <= {s.name for s in spans},
        f"spans {names} of trace {trace_id:032x} exported",
    )


async def _where(
    receiver: OtlpReceiver,
    keep: Callable[[ReceivedSpan], bool],
    done: Callable[[list[ReceivedSpan]], bool],
    what: str,
) -> list[ReceivedSpan]:
    """The exported spans kept by keep, once done says they are all there."""
    return await until(lambda: asyncio.sleep(0, [s for s in receiver.spans if keep(s)]), done, what)


async def _batches_of(
    receiver: OtlpReceiver, traces: set[int]
) -> tuple[dict[tuple[int, int], ReceivedSpan], list[ReceivedSpan]]:
    """The server spans of the writes of traces (by id), and the batches linking to them,
    once every write's is exported."""
    writes = await _where(
        receiver,
        lambda s: s.trace_id in traces and s.name == "accord.v1.KV/Put",
        lambda found: len(found) == len(traces),
        "every write's server span exported",
    )
    by_id = {(s.trace_id, s.span_id): s for s in writes}
    batches = await _where(
        receiver,
        lambda s: s.name == "accord.group_commit" and bool(set(s.links) & by_id.keys()),
        lambda found: sum(len(s.links) for s in found) >= len(traces),
        "the batches of every write exported",
    )
    return by_id, batches


def _one(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


async def test_a_call_is_a_child_of_the_agents_span_with_rpc_attributes_and_etcd_children(
    traced: Coordinator,
    receiver: OtlpReceiver,
    namespace: str,
    agent: tuple[Tracer, InMemorySpanExporter],
) -> None:
    tracer, exported = agent
    async with make_client([traced.address], namespace, agent="planner") as client:
        await client.kv.put("plan", "v1")
        with tracer.start_as_current_span("plan step"):
            await client.kv.get("plan")
    (step,) = exported.get_finished_spans()
    trace_id, step_id = _ids(step)
    spans = await _trace(receiver, trace_id, "accord.v1.KV/Get", "etcd Range")
    server = _one(spans, "accord.v1.KV/Get")
    assert server.parent_id == step_id and server.kind == SERVER
    assert server.attributes["rpc.system"] == "grpc"
    assert server.attributes["rpc.service"] == "accord.v1.KV"
    assert server.attributes["rpc.method"] == "Get"
    assert server.attributes["rpc.grpc.status_code"] == 0
    assert server.attributes["accord.namespace"] == namespace
    assert server.attributes["accord.agent_id"] == "planner"
    assert server.attributes["network.peer.address"] == "127.0.0.1"
    assert server.status == UNSET
    assert server.resource["service.name"] == "accord"
    assert server.resource["service.instance.id"] == "traced"
    etcd = _one(spans, "etcd Range")
    assert etcd.parent_id == server.span_id and etcd.kind == CLIENT


async def test_the_blocking_client_carries_the_calling_threads_span(
    traced: Coordinator,
    receiver: OtlpReceiver,
    namespace: str,
    agent: tuple[Tracer, InMemorySpanExporter],
) -> None:
    tracer, exported = agent

    def blocking() -> None:
        token = token_for(namespace, "sync") or ""
        with (
            Client([traced.address], agent_id="sync", namespace=namespace, token=token) as accord,
            tracer.start_as_current_span("sync step"),
        ):
            accord.kv.get("k")

    await asyncio.to_thread(blocking)
    (step,) = exported.get_finished_spans()
    trace_id, step_id = _ids(step)
    server = _one(await _trace(receiver, trace_id, "accord.v1.KV/Get"), "accord.v1.KV/Get")
    assert server.parent_id == step_id


async def test_a_kv_batch_carries_its_first_operations_span(
    traced: Coordinator,
    receiver: OtlpReceiver,
    namespace: str,
    agent: tuple[Tracer, InMemorySpanExporter],
) -> None:
    """Ten gets made at once, each in its own span, by one client: the first two go alone
    (two calls in flight), the other eight queue and leave as one KV.Batch, which carries
    the span of the first one queued (the third)."""
    tracer, _ = agent
    async with make_client([traced.address], namespace) as client:

        async def get(i: int) -> tuple[int, int]:
            with tracer.start_as_current_span(f"get {i}") as span:
                await client.kv.get(f"k{i}")
                context = span.get_span_context()
                return context.trace_id, context.span_id

        spans = await asyncio.gather(*(get(i) for i in range(10)))
    third_trace, third_span = spans[2]
    batch = _one(await _trace(receiver, third_trace, "accord.v1.KV/Batch"), "accord.v1.KV/Batch")
    assert batch.parent_id == third_span


async def test_a_refused_compare_is_recorded_but_is_not_a_server_error(
    traced: Coordinator,
    receiver: OtlpReceiver,
    namespace: str,
    agent: tuple[Tracer, InMemorySpanExporter],
) -> None:
    tracer, exported = agent
    async with make_client([traced.address], namespace, batching=False) as client:
        await client.kv.put("k", "v")
        with tracer.start_as_current_span("cas"), pytest.raises(ConditionFailedError):
            await client.kv.put("k", "w", expect=Expect(absent=True))
    (cas,) = exported.get_finished_spans()
    server = _one(await _trace(receiver, _ids(cas)[0], "accord.v1.KV/Put"), "accord.v1.KV/Put")
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert server.status == UNSET


async def test_a_group_commit_batch_links_to_the_writes_it_carries(
    traced: Coordinator,
    receiver: OtlpReceiver,
    namespace: str,
    agent: tuple[Tracer, InMemorySpanExporter],
) -> None:
    """Concurrent writers, each in its own trace: some batch carries two or more of them
    (one round nearly always suffices; a few are allowed) and links to each one's server
    span."""
    tracer, _ = agent
    clients = [make_client([traced.address], namespace, batching=False) for _ in range(12)]

    async def write(client: AsyncClient, i: int) -> int:
        with tracer.start_as_current_span(f"writer {i}") as span:
            await client.kv.put(f"w/{i}", "x")
            return span.get_span_context().trace_id

    try:
        for _ in range(5):
            traces = set(await asyncio.gather(*(write(c, i) for i, c in enumerate(clients))))
            by_id, batches = await _batches_of(receiver, traces)
            shared = [b for b in batches if len(b.links) >= 2]
            if shared:
                break
        else:
            pytest.fail("no two of 60 concurrent writes shared a group-commit batch")
    finally:
        for client in clients:
            await client.close()
    batch = shared[0]
    assert batch.parent_id == 0 and batch.trace_id not in traces  # its own trace
    assert set(batch.links) <= by_id.keys()
    assert batch.attributes["accord.batch.writes"] == len(batch.links)
    txn = _one([s for s in receiver.spans if s.trace_id == batch.trace_id], "etcd Txn")
    assert txn.parent_id == batch.span_id


async def test_server_and_bidirectional_streams_are_children_of_the_agents_span(
    traced: Coordinator,
    receiver: OtlpReceiver,
    namespace: str,
    agent: tuple[Tracer, InMemorySpanExporter],
) -> None:
    tracer, exported = agent
    async with make_client([traced.address], namespace) as client:
        with tracer.start_as_current_span("watching"):
            watch = client.kv.watch("w/", prefix=True)
            await watch.start()
            await watch.aclose()
        with tracer.start_as_current_span("holding"):
            lease = await client.leases.grant(ttl=30)  # kept alive over a bidi stream
            granted = lease._expires_at
            await until(  # the stream's first answer moved the lease's expiry
                lambda: asyncio.sleep(0, lease._expires_at),
                lambda expires: expires > granted,
                "the KeepAlive stream's first answer",
            )
            await lease.revoke()  # ends the stream, and so its span
    watching, holding = sorted(exported.get_finished_spans(), key=lambda s: s.name, reverse=True)
    watch_span = _one(
        await _trace(receiver, _ids(watching)[0], "accord.v1.KV/Watch"), "accord.v1.KV/Watch"
    )
    assert watch_span.parent_id == _ids(watching)[1]
    keepalive = await until(
        lambda: asyncio.sleep(
            0,
            [
                s
                for s in receiver.spans
                if s.trace_id == _ids(holding)[0] and s.name == "accord.v1.Leases/KeepAlive"
            ],
        ),
        lambda found: len(found) == 1,
        "the KeepAlive stream's span",
    )
    assert keepalive[0].parent_id == _ids(holding)[1]
    assert keepalive[0].kind == SERVER
    # Ended by the client (revoke stops the stream): not a server error. Its code is
    # CANCELLED or OK, as the client's cancel or the end of its requests reaches gRPC first.
    assert keepalive[0].status == UNSET


async def _puts_in(receiver: OtlpReceiver, namespace: str) -> list[ReceivedSpan]:
    """The one Put span of namespace, once exported."""
    return await _where(
        receiver,
        lambda s: (
            s.name == "accord.v1.KV/Put" and s.attributes.get("accord.namespace") == namespace
        ),
        lambda found: len(found) == 1,
        "the Put's server span",
    )


TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.mark.parametrize(
    "traceparent",
    [
        f"00-{TRACE_ID}-{PARENT_ID}",  # flags missing
        f"00-{TRACE_ID.upper()}-{PARENT_ID}-01",  # upper case
        f"ff-{TRACE_ID}-{PARENT_ID}-01",  # a forbidden version
        f"01-{TRACE_ID}-{PARENT_ID}-01-" + "x" * 40,  # a later version, past 55 characters
        f"00-{'0' * 32}-{PARENT_ID}-01",  # the invalid all-zero trace id
        "garbage",
    ],
)
async def test_a_bad_traceparent_is_ignored_and_the_call_starts_a_new_trace(
    traced: Coordinator, receiver: OtlpReceiver, namespace: str, traceparent: str
) -> None:
    marker = f"bad-{abs(hash(traceparent))}"
    metadata = (
        *identity(namespace, "tester"),
        ("traceparent", traceparent),
        ("tracestate", "k=v"),
    )
    async with Stubs(traced.address) as stubs:
        answer = await stubs.kv.Put(kv_pb2.PutRequest(key=marker, value=b"x"), metadata=metadata)
    assert answer.header.revision > 0
    found = await _puts_in(receiver, namespace)
    assert found[0].parent_id == 0
    assert found[0].trace_id != int(TRACE_ID, 16)


# 20 well-formed members, 599 bytes: within W3C's 32 members, past Accord's 512 bytes.
LONG_STATE = ",".join(f"vendor{i:02d}=" + "v" * 20 for i in range(20))


@pytest.mark.parametrize(("tracestate", "kept"), [("k=v", "k=v"), (LONG_STATE, "")])
async def test_an_oversized_tracestate_is_dropped_and_the_parent_kept(
    traced: Coordinator, receiver: OtlpReceiver, namespace: str, tracestate: str, kept: str
) -> None:
    metadata = (
        *identity(namespace, "tester"),
        ("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),
        ("tracestate", tracestate),
    )
    async with Stubs(traced.address) as stubs:
        await stubs.kv.Put(kv_pb2.PutRequest(key="state", value=b"x"), metadata=metadata)
    spans = await _puts_in(receiver, namespace)
    assert spans[0].trace_id == int(TRACE_ID, 16) and spans[0].parent_id == int(PARENT_ID, 16)
    assert spans[0].trace_state == kept


async def test_a_y_websocket_connection_is_a_span_parented_to_its_url_traceparent(
    traced: Coordinator, receiver: OtlpReceiver, namespace: str
) -> None:
    trace_id = "5bf92f3577b34da6a3ce929d0e0e4737"
    url = (
        f"{traced.ws_url}/{namespace}/doc?agent=app"
        f"&traceparent=00-{trace_id}-{PARENT_ID}-01&tracestate=app%3D1"
    )
    token = token_for(namespace, "app")
    auth = {} if token is None else {"subprotocols": [Subprotocol(token)]}
    async with connect(url, open_timeout=15, **auth) as ws:
        await ws.send(b"\x00\x00\x01\x00")  # sync step 1: answered, so the connection is up
        await asyncio.wait_for(ws.recv(), 15)
    spans = await _trace(receiver, int(trace_id, 16), "accord.y-websocket")
    connection = _one(spans, "accord.y-websocket")
    assert connection.parent_id == int(PARENT_ID, 16) and connection.kind == SERVER


def test_a_call_refused_for_its_credentials_names_no_namespace(
    replicas: list[Coordinator],
    etcd: EtcdMember,
    workdir: Path,
    receiver: OtlpReceiver,
    namespace: str,
) -> None:
    """An unauthenticated caller's claimed namespace is not put on its span."""
    root = f"traced-auth-{uuid.uuid4().hex[:8]}"
    replica = start_coordinator(
        workdir,
        "traced-auth",
        [etcd.endpoint],
        ["--auth", "required", "--root", root],
        env=receiver.env(),
        ws=False,
    )

    async def refused() -> None:
        metadata = (
            ("accord-namespace", namespace),
            ("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),
        )
        async with Stubs(replica.address) as stubs:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stubs.kv.Get(kv_pb2.GetRequest(key="k"), metadata=metadata)
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        spans = await _where(
            receiver,
            lambda s: (
                s.resource.get("service.instance.id") == "traced-auth"
                and s.name == "accord.v1.KV/Get"
            ),
            lambda found: len(found) == 1,
            "the refused Get's span",
        )
        assert (
            spans[0].attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
        )
        assert "accord.namespace" not in spans[0].attributes
        assert spans[0].status == UNSET

    try:
        asyncio.run(refused())
    finally:
        replica.terminate()


def test_each_worker_exports_as_its_own_instance(
    replicas: list[Coordinator],
    etcd: EtcdMember,
    workdir: Path,
    receiver: OtlpReceiver,
    namespace: str,
) -> None:
    """serve --workers 2: calls over fresh connections reach both workers, and each
    worker's spans name it (service.instance.id REPLICA-wI)."""
    replica = start_coordinator(
        workdir, "traced-workers", [etcd.endpoint], ["--workers", "2"], env=receiver.env(), ws=False
    )

    async def calls() -> set[str]:
        for _ in range(40):
            async with make_client([replica.address], namespace) as client:  # a new connection
                await client.kv.put("k", "v")
        spans = await _where(
            receiver,
            lambda s: (
                s.name == "accord.v1.KV/Put" and s.attributes.get("accord.namespace") == namespace
            ),
            lambda found: len(found) == 40,
            "the 40 Puts' spans",
        )
        return {s.resource["service.instance.id"] for s in spans}

    try:
        instances = asyncio.run(calls())
    finally:
        replica.terminate()
    assert instances == {"traced-workers-w0", "traced-workers-w1"}


def test_a_stopping_replica_exports_the_spans_still_queued(
    replicas: list[Coordinator],
    etcd: EtcdMember,
    workdir: Path,
    receiver: OtlpReceiver,
    namespace: str,
    agent: tuple[Tracer, InMemorySpanExporter],
) -> None:
    """Export every 10 minutes: only the flush on shutdown can deliver the span now."""
    env = {**receiver.env(), "OTEL_BSP_SCHEDULE_DELAY": "600000"}
    replica = start_coordinator(workdir, "flushed", [etcd.endpoint], env=env, ws=False)
    tracer, exported = agent

    async def call() -> None:
        async with make_client([replica.address], namespace) as client:
            with tracer.start_as_current_span("before stop"):
                await client.kv.put("k", "v")

    try:
        asyncio.run(call())
    finally:
        replica.terminate()
    (step,) = exported.get_finished_spans()
    trace_id = _ids(step)[0]
    names = {s.name for s in receiver.spans if s.trace_id == trace_id}
    assert "accord.v1.KV/Put" in names


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_a_replica_without_otel_configuration_exports_nothing(
    replicas: list[Coordinator], etcd: EtcdMember, workdir: Path, namespace: str
) -> None:
    """Listening where the OTLP exporter sends by default (localhost:4318): a replica
    with OTEL_* settings that ask for no export, traced calls made to it, then stopped
    (which flushes any span queued): nothing arrived."""
    if not _port_free(4318):
        pytest.skip("port 4318 (the OTLP default) is taken on this machine")
    receiver = OtlpReceiver(4318)
    replica = start_coordinator(
        workdir,
        "untraced",
        [etcd.endpoint],
        env={"OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_SERVICE_NAME": "accord-test"},
        ws=False,
    )
    tracer = TracerProvider().get_tracer("agent")

    async def calls() -> None:
        async with make_client([replica.address], namespace) as client:
            with tracer.start_as_current_span("agent"):
                await client.kv.put("k", "v")
                await client.kv.get("k")

    try:
        asyncio.run(calls())
    finally:
        replica.terminate()
        receiver.close()
    assert receiver.requests == 0 and receiver.spans == []
