"""KV.Batch from any gRPC client (raw stubs): each operation gets what its unary call
would have answered, or that call's error with the same details; a batch too large is
refused whole and changes nothing; the response always fits a default client."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from accord.v1 import kv_pb2
from tests.harness import Coordinator, EtcdMember, Stubs, identity

BIG = 256 * 1024  # the largest value the replicas take
DEFAULT_MAX_MESSAGE = 4 * 1024 * 1024


def info(outcome: kv_pb2.BatchOutcome) -> error_details_pb2.ErrorInfo:
    for packed in outcome.error.details:
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            found = error_details_pb2.ErrorInfo()
            packed.Unpack(found)
            return found
    raise AssertionError(f"no ErrorInfo in {outcome}")


def condition_failure(packed: list[any_pb2.Any]) -> kv_pb2.ConditionFailure:
    for item in packed:
        if item.Is(kv_pb2.ConditionFailure.DESCRIPTOR):
            found = kv_pb2.ConditionFailure()
            item.Unpack(found)
            return found
    raise AssertionError("no ConditionFailure in the details")


def put(key: str, value: bytes, **fields: object) -> kv_pb2.BatchOp:
    return kv_pb2.BatchOp(
        put=kv_pb2.PutRequest(key=key, value=value, request_id=uuid.uuid4().hex, **fields)
    )


async def test_each_operation_gets_its_own_outcome(
    replicas: list[Coordinator], namespace: str
) -> None:
    async with Stubs(replicas[0].address) as raw:
        meta = identity(namespace, "batcher")
        first = await raw.kv.Put(kv_pb2.PutRequest(key="a", value=b"1"), metadata=meta)
        stale = kv_pb2.Precondition(mod_revision=first.kv.mod_revision - 1)
        response = await raw.kv.Batch(
            kv_pb2.BatchRequest(
                ops=[
                    kv_pb2.BatchOp(get=kv_pb2.GetRequest(key="a")),
                    put("b", b"2"),
                    put("a", b"lost", precondition=stale, return_current_on_failure=True),
                    kv_pb2.BatchOp(delete=kv_pb2.DeleteRequest(key="missing")),
                    kv_pb2.BatchOp(
                        txn=kv_pb2.TxnRequest(
                            checks=[
                                kv_pb2.TxnCheck(
                                    key="c",
                                    precondition=kv_pb2.Precondition(must_not_exist=True),
                                )
                            ],
                            ops=[kv_pb2.TxnOp(put=kv_pb2.TxnPut(key="c", value=b"3"))],
                        )
                    ),
                    kv_pb2.BatchOp(),  # no operation at all
                    put("", b"no key"),
                ]
            ),
            metadata=meta,
        )
        outcomes = list(response.outcomes)
        assert len(outcomes) == 7
        assert outcomes[0].get.found and outcomes[0].get.kv.value == b"1"
        assert outcomes[1].put.kv.value == b"2" and outcomes[1].put.kv.version == 1
        assert outcomes[1].put.kv.written_by.agent_id == "batcher"
        # The failed CAS: CONDITION_FAILED with what is there now, as its unary call says.
        assert outcomes[2].error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        assert info(outcomes[2]).reason == "CONDITION_FAILED"
        failure = condition_failure(list(outcomes[2].error.details))
        assert failure.current_mod_revision == first.kv.mod_revision
        assert failure.current.value == b"1"
        assert not outcomes[3].delete.deleted
        assert outcomes[4].txn.results[0].kv.value == b"3"
        assert info(outcomes[5]).reason == "INVALID_ARGUMENT"
        assert info(outcomes[6]).reason == "INVALID_ARGUMENT"
        assert response.header.revision >= outcomes[4].txn.revision
        # The failed CAS and the refused ops changed nothing; the others applied.
        after = await raw.kv.Get(kv_pb2.GetRequest(key="a"), metadata=meta)
        assert after.kv.value == b"1"
        assert (await raw.kv.Get(kv_pb2.GetRequest(key="b"), metadata=meta)).kv.value == b"2"


async def test_a_retried_batch_is_answered_by_replay_on_the_other_replica(
    replicas: list[Coordinator], namespace: str, etcd: EtcdMember
) -> None:
    request = kv_pb2.BatchRequest(ops=[put(f"idem/{i}", b"once") for i in range(20)])
    async with Stubs(replicas[0].address) as one, Stubs(replicas[1].address) as two:
        meta = identity(namespace, "batcher")
        first = await one.kv.Batch(request, metadata=meta)
        stored = etcd.stored(namespace)
        again = await two.kv.Batch(request, metadata=meta)
    assert all(not o.put.replayed for o in first.outcomes)
    assert all(o.put.replayed for o in again.outcomes)
    assert [o.put.kv.mod_revision for o in again.outcomes] == [
        o.put.kv.mod_revision for o in first.outcomes
    ]
    assert etcd.stored(namespace) == stored  # applied once


async def test_a_batch_over_the_limit_is_refused_whole_and_changes_nothing(
    replicas: list[Coordinator], namespace: str, etcd: EtcdMember
) -> None:
    before = etcd.stored(namespace)
    async with Stubs(replicas[0].address) as raw:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await raw.kv.Batch(
                kv_pb2.BatchRequest(ops=[put(f"k{i}", b"v") for i in range(257)]),
                metadata=identity(namespace, "batcher"),
            )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(refused.value)
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in status.details if d.Is(bad.DESCRIPTOR))
    assert [v.field for v in bad.field_violations] == ["ops"]
    assert etcd.stored(namespace) == before


async def test_a_malformed_timeout_fails_its_operation_alone(
    replicas: list[Coordinator], namespace: str, etcd: EtcdMember
) -> None:
    async with Stubs(replicas[0].address) as raw:
        meta = identity(namespace, "batcher")
        response = await raw.kv.Batch(
            kv_pb2.BatchRequest(
                ops=[
                    kv_pb2.BatchOp(put=kv_pb2.PutRequest(key="late", value=b"x"), timeout_ms=-1),
                    put("on-time", b"x"),
                ]
            ),
            metadata=meta,
            timeout=10,
        )
    assert info(response.outcomes[0]).reason == "INVALID_ARGUMENT"
    assert response.outcomes[1].put.kv.value == b"x"
    assert [k.key.rsplit(b"/", 1)[-1] for k in etcd.stored(namespace) if b"/kv/" in k.key] == [
        b"on-time"
    ]


async def test_the_response_fits_a_default_client_whatever_the_values_weigh(
    replicas: list[Coordinator], namespace: str
) -> None:
    async with Stubs(replicas[0].address) as raw:  # gRPC's default 4 MiB receive limit
        meta = identity(namespace, "batcher")
        values = {f"big/{i:02d}": bytes([i]) * BIG for i in range(20)}
        for key, value in values.items():
            await raw.kv.Put(kv_pb2.PutRequest(key=key, value=value), metadata=meta)
        response = await raw.kv.Batch(
            kv_pb2.BatchRequest(ops=[kv_pb2.BatchOp(get=kv_pb2.GetRequest(key=k)) for k in values]),
            metadata=meta,
        )
    assert response.ByteSize() < DEFAULT_MAX_MESSAGE
    omitted = [o for o in response.outcomes if o.value_omitted]
    assert 0 < len(omitted) < 20
    assert all(not o.get.kv.value and o.get.kv.mod_revision for o in omitted)
    # The first operations keep their values; the last ones lose theirs first.
    kept = [o for o in response.outcomes if not o.value_omitted]
    assert response.outcomes[: len(kept)] == kept
    for outcome in kept:
        assert outcome.get.kv.value == values[outcome.get.kv.key]


async def test_an_operation_may_act_as_another_agent_but_not_a_malformed_one(
    replicas: list[Coordinator], namespace: str, etcd: EtcdMember
) -> None:
    async with Stubs(replicas[0].address) as raw:
        response = await raw.kv.Batch(
            kv_pb2.BatchRequest(
                ops=[
                    kv_pb2.BatchOp(put=kv_pb2.PutRequest(key="mine", value=b"x")),
                    kv_pb2.BatchOp(
                        put=kv_pb2.PutRequest(key="theirs", value=b"x"), agent_id="other"
                    ),
                    kv_pb2.BatchOp(
                        put=kv_pb2.PutRequest(key="bad", value=b"x"), agent_id="has space"
                    ),
                ]
            ),
            metadata=identity(namespace, "batcher"),
        )
    mine, theirs, bad = response.outcomes
    assert mine.put.kv.written_by.agent_id == "batcher"
    assert theirs.put.kv.written_by.agent_id == "other"
    assert info(bad).reason == "BAD_IDENTITY"
    assert info(bad).metadata["field"] == "ops[2].agent_id"
    assert b"bad" not in {k.key.rsplit(b"/", 1)[-1] for k in etcd.stored(namespace)}


async def test_the_writes_of_one_batch_share_one_etcd_transaction(
    replicas: list[Coordinator], namespace: str
) -> None:
    async with Stubs(replicas[1].address) as raw:
        meta = identity(namespace, "batcher")
        # A first write, so the replica has its retention lease (a fresh replica's first
        # writes wait for it to be granted, each resuming on its own).
        await raw.kv.Batch(kv_pb2.BatchRequest(ops=[put("warm", b"x")]), metadata=meta)
        response = await raw.kv.Batch(
            kv_pb2.BatchRequest(ops=[put(f"together/{i}", b"x") for i in range(20)]),
            metadata=meta,
        )
    # One etcd transaction commits at one revision: none went ahead of the others alone.
    assert len({o.put.kv.mod_revision for o in response.outcomes}) == 1
