"""Long lock queues: shared waits past a page of shared entries, the details of a refused
wait within the trailer budget of a default client, the wait-for graph a page at a time,
and many waits timing out at once (each answered with LOCK_TIMEOUT, health unmoved)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from grpc_health.v1 import health_pb2

from accord.client import (
    AsyncClient,
    Grant,
    InvalidArgumentError,
    Lease,
    LockMode,
    LockTimeoutError,
    WouldBlockError,
)
from accord.client import calls as client_calls
from accord.coordinator.locks.looks import PAGE
from accord.coordinator.locks.wait_pages import MAX_PAGE_BYTES
from accord.v1 import locks_pb2
from tests.harness import Coordinator, EtcdMember, health, make_client, queued, until

LONG_AGENT = "a" * 127 + "z"  # the longest agent id: every entry as large as it gets
LONG_LOCK = "L" * 256


@contextlib.asynccontextmanager
async def granted(client: AsyncClient, count: int, ttl: int = 60) -> AsyncIterator[list[Lease]]:
    leases = list(await asyncio.gather(*(client.leases.grant(ttl=ttl) for _ in range(count))))
    try:
        yield leases
    finally:
        await asyncio.gather(*(lease.revoke() for lease in leases), return_exceptions=True)


@pytest.fixture
async def long_client(replicas: list[Coordinator], namespace: str) -> AsyncIterator[AsyncClient]:
    """A client whose agent id is as long as one may be."""
    async with make_client([r.address for r in replicas], namespace, LONG_AGENT) as c:
        yield c


async def settle(tasks: list[asyncio.Task[Grant]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_shared_waits_look_past_a_page_of_shared_entries(client: AsyncClient) -> None:
    run = PAGE + 6  # more shared entries than one page of a shared wait's search
    async with granted(client, 2 * run + 3) as leases:
        readers, writer, late, last = leases[:run], leases[run], leases[run + 1 : -2], leases[-2]
        held = [await client.locks.acquire("rw", r, mode=LockMode.SHARED) for r in readers]
        # A page of shared holders ahead, then nothing exclusive: it holds at once.
        extra = await client.locks.try_acquire("rw", leases[-1], mode=LockMode.SHARED)
        assert extra is not None
        writing = asyncio.create_task(client.locks.acquire("rw", writer, wait=60))
        await queued(client, "rw", 1)
        waiting = [
            asyncio.create_task(client.locks.acquire("rw", r, mode=LockMode.SHARED, wait=60))
            for r in late
        ]
        await queued(client, "rw", 1 + len(late))
        # The exclusive waiter is a page and more ahead of this one, behind shared waiters.
        assert await client.locks.try_acquire("rw", last, mode=LockMode.SHARED) is None
        try:
            for grant in [*held, extra]:
                await client.locks.release(grant)
            write = await asyncio.wait_for(writing, 30)
            assert not any(t.done() for t in waiting)  # still behind the writer
            await client.locks.release(write)
            reads = await asyncio.wait_for(asyncio.gather(*waiting), 60)
            assert sorted(r.lease_id for r in reads) == sorted(r.id for r in late)
        finally:
            await settle([writing, *waiting])


async def test_would_block_on_a_long_queue_fits_a_default_client(
    long_client: AsyncClient,
) -> None:
    """200 waiters with the longest agent ids: the WOULD_BLOCK reaches Accord's own client
    (default trailer limits) as WouldBlockError, with the head of the queue and counts."""
    client = long_client
    async with granted(client, 202) as (holder, *waiters, asker):
        await client.locks.acquire(LONG_LOCK, holder)
        tasks = [asyncio.create_task(client.locks.acquire(LONG_LOCK, w, wait=120)) for w in waiters]
        try:
            in_line = await queued(client, LONG_LOCK, len(waiters), timeout=60)
            assert len(in_line) == len(waiters)
            state, _ = await client.locks.describe(LONG_LOCK)
            request = locks_pb2.AcquireRequest(name=LONG_LOCK, lease_id=asker.id, no_wait=True)
            with pytest.raises(WouldBlockError) as refused:
                await client.locks._t.unary(client_calls.LOCKS_ACQUIRE, request, timeout=10)
        finally:
            await settle(tasks)
    status = refused.value.status
    assert status is not None
    # Counted as it stood when refused: in line behind all 200.
    assert (status.holders_total, status.waiters_total, status.position) == (1, 201, 200)
    assert [h.lease_id for h in status.state.holders] == [holder.id]
    shown = [w.lease_id for w in status.state.waiters]
    assert 0 < len(shown) < 200 and shown == [w.lease_id for w in state.waiters[: len(shown)]]
    # Cut to fit the budget (the generic cut, past the entries the lock error lists),
    # saying what was cut and where the rest is.
    assert "LockWaitStatus.state.waiters: kept" in refused.value.metadata["details_truncated"]
    assert "Locks/Describe" in refused.value.metadata["details_rest"]


async def test_wait_graph_comes_in_pages(long_client: AsyncClient, etcd: EtcdMember) -> None:
    waiters = 64  # 2,080 edges of ~560 bytes: more than one page's bytes
    client = long_client
    async with granted(client, waiters + 1) as (holder, *rest):
        await client.locks.acquire(LONG_LOCK, holder)
        tasks = [asyncio.create_task(client.locks.acquire(LONG_LOCK, w, wait=120)) for w in rest]
        try:
            await queued(client, LONG_LOCK, waiters, timeout=60)
            total = waiters * (waiters + 1) // 2
            first = await client.locks.wait_graph(10_000)
            assert first.total_edges == total and first.next_page_token
            assert 0 < len(first) < total
            size = sum(edge.ByteSize() for edge in first)
            assert size <= MAX_PAGE_BYTES
            # Pages of 500 from the start; a waiter leaving meanwhile changes nothing:
            # every page is read at the first one's revision.
            state, _ = await client.locks.describe(LONG_LOCK)
            order = [e.lease_id for e in [*state.holders, *state.waiters]]
            pages = [await client.locks.wait_graph(500)]
            tasks[0].cancel()

            async def in_line() -> int:
                return len((await client.locks.describe(LONG_LOCK))[0].waiters)

            await until(in_line, lambda n: n == waiters - 1, "a waiter to leave", 30)
            while pages[-1].next_page_token:
                pages.append(
                    await client.locks.wait_graph(500, page_token=pages[-1].next_page_token)
                )
            edges = [(e.waiter_lease, e.holder_lease) for page in pages for e in page]
            assert len(edges) == total and len(set(edges)) == total
            expected = {(order[i], order[j]) for i in range(1, len(order)) for j in range(i)}
            assert set(edges) == expected
            assert all(p.total_edges == total for p in pages)
            await refuses_bad_tokens(client, etcd)
        finally:
            await settle(tasks)


async def refuses_bad_tokens(client: AsyncClient, etcd: EtcdMember) -> None:
    before = etcd.stored(client.namespace)
    for token in ("garbage", "1.5", f"{2**64}.1", "12.0", "12.-3", "12.5.1"):
        with pytest.raises(InvalidArgumentError) as refused:
            await client.locks.wait_graph(page_token=token)
        assert refused.value.reason == "INVALID_ARGUMENT"
        assert [field for field, _ in refused.value.field_violations] == ["page_token"]
    with pytest.raises(InvalidArgumentError):
        await client.locks.wait_graph(-1)
    assert etcd.stored(client.namespace) == before  # a refusal writes nothing


async def test_many_waits_time_out_together_each_with_lock_timeout(
    replicas: list[Coordinator], client: AsyncClient
) -> None:
    """300 waits that time out at the same moment all hear LOCK_TIMEOUT (typed, with the
    queue), none DEADLINE_EXCEEDED or RESOURCE_EXHAUSTED; both replicas stay SERVING."""
    waiters = 300
    async with granted(client, waiters + 1) as (holder, *rest):
        await client.locks.acquire("storm", holder)
        statuses: list[int] = []
        stop = asyncio.Event()

        async def watch_health() -> None:
            while not stop.is_set():
                statuses.extend(await asyncio.gather(*(health(r.address) for r in replicas)))
                await asyncio.sleep(0.2)

        watching = asyncio.create_task(watch_health())

        async def wait(lease: Lease) -> BaseException | Grant:
            try:
                return await client.locks.acquire("storm", lease, wait=8)
            except Exception as exc:  # every outcome is counted below
                return exc

        try:
            outcomes = await asyncio.wait_for(asyncio.gather(*(wait(w) for w in rest)), 90)
        finally:
            stop.set()
            await watching
    kinds = {type(o).__name__ for o in outcomes}
    others = [repr(o)[:200] for o in outcomes if not isinstance(o, LockTimeoutError)]
    assert kinds == {"LockTimeoutError"}, others[:3]
    for outcome in outcomes:
        assert isinstance(outcome, LockTimeoutError)
        assert outcome.status is not None and outcome.status.holders_total == 1
    assert statuses and set(statuses) == {health_pb2.HealthCheckResponse.SERVING}
