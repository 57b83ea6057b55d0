"""The tarpit, against a real replica: a caller that ignores RetryInfo (a raw stub
calling again the moment it is refused) gets each rate refusal only when it may come
back, as RESOURCE_EXHAUSTED with QuotaFailure and RetryInfo, so the replica paces its loop;
a refusal is never held past the caller's deadline, and nothing is written. A replica
started with --rate-refusal-hold 0 answers at once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from accord.v1 import kv_pb2
from tests.harness import (
    AUTH_REQUIRED,
    Coordinator,
    EtcdMember,
    Stubs,
    identity,
    start_coordinator,
)
from tests.quotas.helpers import namespace_keys, set_quota


def _pushback(error: grpc.aio.AioRpcError) -> tuple[str, float]:
    """A refusal's QuotaFailure description (the limit) and its RetryInfo in seconds."""
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    status = rpc_status.from_call(error)
    assert status is not None
    found = {d.TypeName(): d for d in status.details}
    retry, failure = error_details_pb2.RetryInfo(), error_details_pb2.QuotaFailure()
    found["google.rpc.RetryInfo"].Unpack(retry)
    found["google.rpc.QuotaFailure"].Unpack(failure)
    return failure.violations[0].description, retry.retry_delay.ToNanoseconds() / 1e9


async def test_a_caller_ignoring_retry_info_is_paced_by_the_replica(
    replicas: list[Coordinator], namespace: str, etcd: EtcdMember
) -> None:
    rate = 4.0  # a token every 0.25 s, a bucket of one
    await set_quota(replicas, namespace, requests_per_second=rate, burst_seconds=0.25)
    refusals: list[tuple[float, float]] = []  # (seconds to the answer, RetryInfo)
    served = 0
    async with Stubs(replicas[0].address) as stubs:
        meta = identity(namespace, "hasty")
        before = namespace_keys(etcd, namespace)
        until = time.monotonic() + 3.0
        while time.monotonic() < until:
            sent = time.monotonic()
            try:
                await stubs.kv.Get(kv_pb2.GetRequest(key="k"), metadata=meta, timeout=10.0)
                served += 1
            except grpc.aio.AioRpcError as refused:  # DEADLINE_EXCEEDED fails _pushback
                limit, retry = _pushback(refused)
                assert limit == "requests_per_second"
                refusals.append((time.monotonic() - sent, retry))
        assert namespace_keys(etcd, namespace) == before
    # Without the tarpit this loop makes a refusal every millisecond or two (thousands);
    # held, each refusal after the first arrives about when the next token is there.
    assert refusals, "the loop outran a bucket of one token at 4/s"
    assert len(refusals) <= 3.0 * rate + 2
    for answered_after, retry in refusals[1:]:
        assert answered_after >= 0.5 / rate  # the retry delay was ~1/rate: held for it
        assert retry <= 1.0 / rate  # what is left of it (1 ms when all of it was held)
    assert served <= 3.0 * rate + 2  # and the replica still serves the loop at its rate


async def test_a_refusal_is_held_no_longer_than_the_callers_deadline(
    replicas: list[Coordinator], namespace: str, etcd: EtcdMember
) -> None:
    # A token every 10 s: a refused caller is told to come back ~10 s later.
    await set_quota(replicas, namespace, requests_per_second=0.1, burst_seconds=10.0)
    async with Stubs(replicas[0].address) as stubs:
        meta = identity(namespace, "patient")
        await stubs.kv.Get(kv_pb2.GetRequest(key="k"), metadata=meta)  # the one token
        before = namespace_keys(etcd, namespace)
        for deadline in (1.0, 0.19):  # held up to ~0.8 s; within the margin: at once
            sent = time.monotonic()
            try:
                await stubs.kv.Put(
                    kv_pb2.PutRequest(key="k", value=b"v"), metadata=meta, timeout=deadline
                )
                raise AssertionError("a Put past the rate was admitted")
            except grpc.aio.AioRpcError as refused:  # DEADLINE_EXCEEDED fails _pushback
                limit, retry = _pushback(refused)
            answered_after = time.monotonic() - sent
            assert limit == "requests_per_second"
            assert retry > 5.0  # the rest of the ~10 s still to wait
            if deadline == 1.0:
                assert answered_after >= 0.4  # held (up to the margin before the deadline)
        assert namespace_keys(etcd, namespace) == before


async def test_a_stream_refused_for_rate_is_held_too(
    replicas: list[Coordinator], namespace: str
) -> None:
    await set_quota(replicas, namespace, requests_per_second=0.1, burst_seconds=10.0)
    async with Stubs(replicas[0].address) as stubs:
        meta = identity(namespace, "watcher")
        await stubs.kv.Get(kv_pb2.GetRequest(key="k"), metadata=meta)  # the one token
        sent = time.monotonic()
        watch = stubs.kv.Watch(kv_pb2.WatchRequest(key="k"), metadata=meta, timeout=10.0)
        try:
            await watch.read()
            raise AssertionError("a Watch past the rate was opened")
        except grpc.aio.AioRpcError as refused:
            limit, retry = _pushback(refused)
        assert limit == "requests_per_second" and retry > 5.0
        assert time.monotonic() - sent >= 0.5  # held (1 s), not answered at once


@pytest.fixture(scope="module")
def untarpitted(etcd: EtcdMember, workdir: Path) -> Iterator[Coordinator]:
    replica = start_coordinator(
        workdir, "no-tarpit", [etcd.endpoint], extra_args=["--rate-refusal-hold", "0"]
    )
    yield replica
    replica.terminate()


@pytest.mark.skipif(AUTH_REQUIRED, reason="a replica of its own, auth off")
async def test_no_hold_answers_rate_refusals_at_once(
    untarpitted: Coordinator, namespace: str
) -> None:
    await set_quota([untarpitted], namespace, requests_per_second=0.5, burst_seconds=2.0)
    async with Stubs(untarpitted.address) as stubs:
        meta = identity(namespace, "hasty")
        await stubs.kv.Get(kv_pb2.GetRequest(key="k"), metadata=meta)  # the one token
        try:
            await stubs.kv.Get(kv_pb2.GetRequest(key="k"), metadata=meta, timeout=10.0)
            raise AssertionError("a Get past the rate was admitted")
        except grpc.aio.AioRpcError as refused:
            limit, retry = _pushback(refused)
        # Told the whole ~2 s wait: nothing was held (held, it would be the last ~1 s).
        assert limit == "requests_per_second" and retry > 1.5
