"""Bad input in a call's trace context: it is untrusted, so a malformed or oversized one is
dropped (the write succeeds and records none, or only its valid parts), in metadata or
named by a batch operation; a write without one records no bytes of it; and a recorded
context counts in a transaction's size."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from accord.v1 import common_pb2, kv_pb2, records_pb2
from tests.harness import Coordinator, EtcdMember, Stubs, identity

GOOD = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

DROPPED: dict[str, tuple[tuple[tuple[str, str], ...], common_pb2.TraceContext]] = {
    "oversized traceparent": ((("traceparent", GOOD + "0"),), common_pb2.TraceContext()),
    "malformed traceparent": (
        (("traceparent", GOOD.upper()), ("tracestate", "a=b")),
        common_pb2.TraceContext(),
    ),
    "zero trace id": (
        (("traceparent", "00-" + "0" * 32 + "-b7ad6b7169203331-01"),),
        common_pb2.TraceContext(),
    ),
    "oversized tracestate": (
        (("traceparent", GOOD), ("tracestate", "a=" + "x" * 254 + ",b=" + "y" * 254)),
        common_pb2.TraceContext(traceparent=GOOD),
    ),
    "oversized baggage": (
        (("traceparent", GOOD), ("baggage", "k=" + "v" * 2047), ("tracestate", "a=b")),
        common_pb2.TraceContext(traceparent=GOOD, tracestate="a=b"),
    ),
    "malformed baggage": (
        (("traceparent", GOOD), ("baggage", 'k="quoted",x')),
        common_pb2.TraceContext(traceparent=GOOD),
    ),
}


@pytest.mark.parametrize("case", sorted(DROPPED))
async def test_an_invalid_trace_context_is_dropped_and_the_write_succeeds(
    case: str, replicas: list[Coordinator], namespace: str, etcd: EtcdMember
) -> None:
    sent, kept = DROPPED[case]
    async with Stubs(replicas[0].address) as stubs:
        metadata = (*identity(namespace, "agent-a"), *sent)
        await stubs.kv.Put(kv_pb2.PutRequest(key="k", value=b"v"), metadata=metadata, timeout=10)
        got = await stubs.kv.Get(kv_pb2.GetRequest(key="k"), metadata=metadata, timeout=10)
    assert got.kv.value == b"v"
    assert got.kv.written_by.trace_context == kept
    assert got.kv.written_by.HasField("trace_context") == bool(kept.traceparent)


async def test_a_write_without_trace_context_stores_no_bytes_of_it(
    replicas: list[Coordinator], namespace: str, etcd: EtcdMember
) -> None:
    async with Stubs(replicas[0].address) as stubs:
        plain = identity(namespace, "agent-a")
        for key, metadata in (("plain", plain), ("traced", (*plain, ("traceparent", GOOD)))):
            request = kv_pb2.PutRequest(key=key, value=b"v")
            await stubs.kv.Put(request, metadata=metadata, timeout=10)
    (stored_plain,) = etcd.kvs(f"accord/ns/{namespace}/kv/plain")
    (stored_traced,) = etcd.kvs(f"accord/ns/{namespace}/kv/traced")
    plain_record = records_pb2.StoredValue.FromString(stored_plain.value)
    traced_record = records_pb2.StoredValue.FromString(stored_traced.value)
    assert traced_record.written_by.trace_context.traceparent == GOOD
    assert not plain_record.written_by.HasField("trace_context")
    assert GOOD.encode() not in stored_plain.value


async def test_a_recorded_trace_context_counts_in_a_transactions_size(
    replicas: list[Coordinator], namespace: str, etcd: EtcdMember
) -> None:
    """Each value a Txn stores records the context beside it: a Txn just under the byte
    limit is refused once its context would take it over, and stores nothing."""
    limit, value_limit = 1024 * 1024, 256 * 1024
    ops = [kv_pb2.TxnOp(put=kv_pb2.TxnPut(key=f"k{i}", value=b"x" * value_limit)) for i in range(3)]
    last = limit - 3 * (value_limit + 2) - 2 - 8  # 8 bytes under the limit in all
    ops.append(kv_pb2.TxnOp(put=kv_pb2.TxnPut(key="k3", value=b"x" * last)))
    request = kv_pb2.TxnRequest(ops=ops)
    plain = identity(namespace, "agent-a")
    async with Stubs(replicas[0].address) as stubs:
        before = etcd.stored(namespace)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stubs.kv.Txn(request, metadata=(*plain, ("traceparent", GOOD)), timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _reason_and_fields(refused.value) == ("INVALID_ARGUMENT", ["ops"])
        assert etcd.stored(namespace) == before
        await stubs.kv.Txn(request, metadata=plain, timeout=10)  # fits without one


def _reason_and_fields(error: grpc.aio.AioRpcError) -> tuple[str, list[str]]:
    status = rpc_status.from_call(error)
    assert status is not None
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    for detail in status.details:
        detail.Unpack(info) or detail.Unpack(bad)
    return info.reason, [v.field for v in bad.field_violations]


async def test_an_invalid_context_named_by_a_batch_operation_is_dropped(
    replicas: list[Coordinator], namespace: str
) -> None:
    """A batch operation's own context is checked as metadata is: an invalid one records
    none (not the call's); the operation still runs."""
    other = "00-11111111111111111111111111111111-2222222222222222-01"
    named = {
        "own": common_pb2.TraceContext(traceparent=other, baggage="k=" + "v" * 2047),
        "malformed": common_pb2.TraceContext(traceparent=other[:-1]),
        "empty": common_pb2.TraceContext(),
    }
    ops = [kv_pb2.BatchOp(put=kv_pb2.PutRequest(key="call", value=b"v"))]
    for key, context_ in named.items():
        put = kv_pb2.PutRequest(key=key, value=b"v")
        ops.append(kv_pb2.BatchOp(put=put, trace_context=context_))
    metadata = (*identity(namespace, "agent-a"), ("traceparent", GOOD))
    async with Stubs(replicas[0].address) as stubs:
        done = await stubs.kv.Batch(kv_pb2.BatchRequest(ops=ops), metadata=metadata, timeout=10)
        assert [o.WhichOneof("outcome") for o in done.outcomes] == ["put"] * 4
        recorded = {}
        for key in ("call", *named):
            got = await stubs.kv.Get(kv_pb2.GetRequest(key=key), metadata=metadata, timeout=10)
            recorded[key] = got.kv.written_by.trace_context
    assert recorded == {
        "call": common_pb2.TraceContext(traceparent=GOOD),
        "own": common_pb2.TraceContext(traceparent=other),  # its oversized baggage dropped
        "malformed": common_pb2.TraceContext(),
        "empty": common_pb2.TraceContext(),
    }
