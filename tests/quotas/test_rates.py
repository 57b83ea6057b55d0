"""Request rates: a namespace (and each agent in it) over its token bucket is refused
with RetryInfo saying when a token is back; the client waits at least that long and
retries (any call: nothing ran), and stops early, raising the typed error, when its
deadline cannot be met. Open streams are counted per namespace."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from accord.client import AsyncClient, QuotaExceededError, RetryPolicy, VoteStateEvent
from accord.v1 import kv_pb2
from tests.harness import AUTH_REQUIRED, Coordinator, EtcdMember, Stubs, identity, make_client
from tests.quotas.helpers import assert_pushback, namespace_keys, set_quota, usage_reaches


def no_retries(address: str, namespace: str, agent: str = "tester") -> AsyncClient:
    client = make_client([address], namespace, agent=agent)
    client._transport.retry = RetryPolicy(max_attempts=1)
    return client


async def test_namespace_rate_refuses_with_retry_info(
    replicas: list[Coordinator], namespace: str, etcd: EtcdMember
) -> None:
    await set_quota(replicas, namespace, requests_per_second=1.0, burst_seconds=2.0)
    async with Stubs(replicas[0].address) as stubs:
        meta = identity(namespace, "flood")
        await stubs.kv.Get(kv_pb2.GetRequest(key="k"), metadata=meta)
        await stubs.kv.Get(kv_pb2.GetRequest(key="k"), metadata=meta)
        before = namespace_keys(etcd, namespace)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stubs.kv.Put(kv_pb2.PutRequest(key="k", value=b"v"), metadata=meta)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        status = rpc_status.from_call(refused.value)
        assert status is not None
        found = {d.TypeName(): d for d in status.details}
        retry, failure = error_details_pb2.RetryInfo(), error_details_pb2.QuotaFailure()
        found["google.rpc.RetryInfo"].Unpack(retry)
        found["google.rpc.QuotaFailure"].Unpack(failure)
        assert 0 < retry.retry_delay.ToNanoseconds() <= 1_000_000_000  # one token at 1/s
        assert failure.violations[0].subject == f"namespace:{namespace}"
        assert failure.violations[0].description == "requests_per_second"
        assert namespace_keys(etcd, namespace) == before
    # Another namespace on the same replica, with the same limit, has its own bucket.
    neighbour_namespace = f"{namespace}-b"
    await set_quota(replicas, neighbour_namespace, requests_per_second=1.0, burst_seconds=2.0)
    neighbour = no_retries(replicas[0].address, neighbour_namespace)
    try:
        await neighbour.kv.put("k1", b"v")
        await neighbour.kv.put("k2", b"v")
    finally:
        await neighbour.close()


async def test_agent_rate_is_per_agent(replicas: list[Coordinator], namespace: str) -> None:
    await set_quota(replicas, namespace, agent_requests_per_second=0.5, burst_seconds=2.0)
    hasty = no_retries(replicas[0].address, namespace, agent="hasty")
    calm = no_retries(replicas[0].address, namespace, agent="calm")
    try:
        await hasty.kv.get("k")
        sent = time.monotonic()
        with pytest.raises(QuotaExceededError) as refused:
            await hasty.kv.get("k")
        kind = "principal" if AUTH_REQUIRED else "agent"  # under auth: its own principal
        assert_pushback(refused.value, "agent_requests_per_second", f"{kind}:{namespace}/hasty")
        # The next token in ~2 s: the answer held (up to 1 s), its RetryInfo the rest.
        assert refused.value.retry_after is not None
        assert time.monotonic() - sent + refused.value.retry_after > 1.5
        await calm.kv.get("k")
    finally:
        await hasty.close()
        await calm.close()


async def test_client_waits_as_told_and_retries_even_unsafe_calls(
    replicas: list[Coordinator], namespace: str
) -> None:
    rate = 4.0
    await set_quota(replicas, namespace, requests_per_second=rate, burst_seconds=0.25)
    async with make_client([replicas[0].address], namespace) as client:
        started = time.monotonic()
        # Leases.Grant is never resent after an ambiguous failure; a quota refusal is not
        # ambiguous (nothing ran), so it is retried after the pushback.
        leases = [await client.leases.grant(ttl=30, keepalive=False) for _ in range(5)]
        elapsed = time.monotonic() - started
        # One token at a time at 4/s: the last four each waited for theirs.
        assert elapsed >= 4 / rate * 0.9
        assert len({lease.id for lease in leases}) == 5
        await usage_reaches(client, "leases", 5)  # each granted once


async def test_client_stops_early_when_the_deadline_cannot_be_met(
    replicas: list[Coordinator], namespace: str
) -> None:
    await set_quota(replicas, namespace, requests_per_second=0.05, burst_seconds=20.0)
    async with make_client([replicas[0].address], namespace, timeout=5.0) as client:
        await client.kv.get("k")  # the bucket's one token
        started = time.monotonic()
        with pytest.raises(QuotaExceededError) as refused:
            await client.kv.get("k")  # next token in ~20 s: past the 5 s deadline
        assert refused.value.retry_after is not None and refused.value.retry_after > 5.0
        # Raised instead of sleeping into the deadline (which would be DeadlineExceeded).
        assert time.monotonic() - started < 5.0


async def test_client_retry_budget_bounds_the_retries(
    replicas: list[Coordinator], namespace: str
) -> None:
    await set_quota(replicas, namespace, requests_per_second=2.0, burst_seconds=0.5)
    async with make_client([replicas[0].address], namespace, timeout=30.0) as client:
        client._transport._budget.tokens = 0  # spent by earlier retries
        await client.kv.get("k")
        with pytest.raises(QuotaExceededError):
            await client.kv.get("k")


async def test_open_streams_are_limited_per_namespace(
    replicas: list[Coordinator], namespace: str
) -> None:
    await set_quota(replicas, namespace, streams=1)
    async with (
        Stubs(replicas[0].address) as stubs,
        make_client([replicas[0].address], namespace) as client,
    ):
        meta = identity(namespace, "watcher")
        first = stubs.kv.Watch(kv_pb2.WatchRequest(key="k"), metadata=meta)
        await usage_reaches(client, "streams", 1)
        second = stubs.kv.Watch(kv_pb2.WatchRequest(key="k"), metadata=meta)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await asyncio.wait_for(second.read(), 10)  # refused at once, not left open
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        first.cancel()
        await usage_reaches(client, "streams", 0)
        third = stubs.kv.Watch(kv_pb2.WatchRequest(key="k"), metadata=meta)
        await usage_reaches(client, "streams", 1)
        third.cancel()


async def test_large_writes_take_more_of_the_rate(
    replicas: list[Coordinator], namespace: str, etcd: EtcdMember
) -> None:
    # A bucket of 10 tokens refilled at 2/s: a 200 KiB write takes 4 (1 + one per 64 KiB).
    await set_quota(replicas, namespace, requests_per_second=2.0, burst_seconds=5.0)
    client = no_retries(replicas[0].address, namespace)
    try:
        await client.kv.put("a", b"x" * 200 * 1024)
        await client.kv.put("b", b"x" * 200 * 1024)
        before = namespace_keys(etcd, namespace)
        with pytest.raises(QuotaExceededError) as refused:
            await client.kv.put("c", b"x" * 200 * 1024)  # 4 tokens wanted, 2 left
        assert_pushback(refused.value, "requests_per_second", f"namespace:{namespace}")
        assert namespace_keys(etcd, namespace) == before
        await client.kv.get("a")  # a small call still fits
    finally:
        await client.close()


async def test_a_lease_is_kept_alive_when_no_stream_is_left(
    replicas: list[Coordinator], namespace: str
) -> None:
    await set_quota(replicas, namespace, streams=0)
    async with make_client([replicas[0].address], namespace) as client:
        lease = await client.leases.grant(ttl=2)  # kept alive in the background
        try:
            await asyncio.sleep(5)  # past two TTLs: only refreshes kept it
            assert lease.lost_reason is None
            assert await client.leases.keepalive_once(lease.id) > 0
        finally:
            await lease.revoke()


async def test_streams_refused_for_rate_open_when_the_server_says(
    replicas: list[Coordinator], namespace: str
) -> None:
    await set_quota(replicas, namespace, requests_per_second=1.0, burst_seconds=1.0)
    async with make_client([replicas[0].address], namespace) as client:
        await client.kv.get("k")  # the bucket's one token: the watch is refused at first
        watch = client.kv.watch("k")
        try:
            await asyncio.wait_for(watch.start(), 10)  # opened after the pushback
            await client.kv.put("k", b"v")  # waits for its own token, as told
            event = await asyncio.wait_for(watch.__anext__(), 10)
            assert event.kv.value == b"v"
        finally:
            await watch.aclose()
        await client.kv.get("k")  # the bucket's next token, for the session's subscription
        async with client.sessions.synced("doc") as live:  # refused at first too
            await asyncio.wait_for(live.flush(), 10)
            assert live.error is None
        vote = await client.votes.propose("go?", ["yes", "no"], voters=["a"], voting_period=60)
        await client.kv.get("k")  # and once more, for the vote's watch
        events = client.votes.watch(vote.id)
        try:
            first = await asyncio.wait_for(events.__anext__(), 10)
            assert isinstance(first, VoteStateEvent)
        finally:
            await events.aclose()
