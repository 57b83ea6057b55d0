"""Quotas apply to each operation of a KV.Batch as to its unary call: a batch does not buy
more than its operations' worth of the namespace's rate, and an operation over it is
refused alone, with RetryInfo, while the ones within it are served."""

from __future__ import annotations

import uuid

import grpc

from accord.client.errors import QuotaExceededError, from_status, retry_after
from accord.v1 import kv_pb2
from tests.harness import Coordinator, EtcdMember, Stubs, identity
from tests.quotas.helpers import namespace_keys, set_quota


async def test_each_operation_takes_its_own_token_and_is_refused_alone(
    replicas: list[Coordinator], namespace: str, etcd: EtcdMember
) -> None:
    # A bucket of 4 tokens, refilling at 1/s: a batch of 12 writes cannot all pass.
    await set_quota(replicas, namespace, requests_per_second=1.0, burst_seconds=4.0)
    ops = [
        kv_pb2.BatchOp(put=kv_pb2.PutRequest(key=f"k{i}", value=b"v", request_id=uuid.uuid4().hex))
        for i in range(12)
    ]
    async with Stubs(replicas[0].address) as raw:
        response = await raw.kv.Batch(
            kv_pb2.BatchRequest(ops=ops), metadata=identity(namespace, "flood")
        )
    served = [o for o in response.outcomes if o.HasField("put")]
    refused = [from_status(o.error) for o in response.outcomes if o.HasField("error")]
    # The batch call itself takes a token too: at most 3 of its operations fit.
    assert 1 <= len(served) <= 3, response
    assert len(served) + len(refused) == 12
    for error in refused:
        assert isinstance(error, QuotaExceededError)
        assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        delay = retry_after(error)
        assert delay is not None and 0 < delay <= 12
    written = {k.rsplit(b"/", 1)[-1] for k, _ in namespace_keys(etcd, namespace) if b"/kv/" in k}
    assert written == {o.put.kv.key.encode() for o in served}
