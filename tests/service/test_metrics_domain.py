"""Accord's own metrics move by what real calls did: two replicas serving /metrics over
the session etcd, scraped and parsed with prometheus_client's text parser
(tests.harness.metrics). Each test
uses its own namespace, so a namespace-labelled figure starts at 0 and is read as is;
figures without a namespace are compared before and after."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from accord.client import AsyncClient, DeadlockError, FencedError, LockMode, LockTimeoutError
from accord.v1 import kv_pb2
from tests.harness import (
    Coordinator,
    EtcdMember,
    Scrape,
    Stubs,
    eventually,
    identity,
    make_client,
    queued,
    scrape,
    start_coordinator,
    start_etcd,
)
from tests.sessions.test_sessions import text_update
from tests.sessions.test_y_websocket import ws_auth
from tests.substrate.test_etcd_cluster import _leader, _script


@dataclass
class Metered:
    replica: Coordinator

    @property
    def address(self) -> str:
        return self.replica.address

    async def scrape(self) -> Scrape:
        assert self.replica.metrics_port is not None
        return await scrape(self.replica.metrics_port)

    async def value(self, name: str, **labels: str) -> float:
        """The sum of name's samples whose labels include labels."""
        return total(await self.scrape(), name, **labels)


def total(scraped: Scrape, name: str, **labels: str) -> float:
    return scraped.value(name, labels)


async def both(metered: list[Metered], name: str, **labels: str) -> float:
    """name summed over both replicas."""
    return sum([await m.value(name, **labels) for m in metered])


def start_metered(workdir: Path, name: str, endpoint: str) -> Metered:
    """A replica of this module's own, labelling up to 10,000 namespaces by name (the cap,
    --metrics-max-namespaces, counts every namespace a process labelled, and a replica
    labels the namespace of every open vote in etcd as it starts: the suite's, in whatever
    order it ran)."""
    return Metered(
        start_coordinator(
            workdir, name, [endpoint], ["--metrics-max-namespaces", "10000"], metrics=True
        )
    )


@pytest.fixture(scope="module")
def metered(
    replicas: list[Coordinator], etcd: EtcdMember, workdir: Path
) -> Iterator[list[Metered]]:
    """Two replicas serving /metrics (after the session replicas: under auth, those
    bootstrap the credentials these use)."""
    started = [
        start_metered(workdir, f"metered-{i}-{uuid.uuid4().hex[:6]}", etcd.endpoint)
        for i in range(2)
    ]
    yield started
    for m in started:
        m.replica.terminate()


@pytest.fixture
async def clients(metered: list[Metered], namespace: str) -> AsyncIterator[list[AsyncClient]]:
    """Agents a and b on the first replica, c on the second."""
    made = [
        make_client([metered[0].address], namespace, agent="a"),
        make_client([metered[0].address], namespace, agent="b"),
        make_client([metered[1].address], namespace, agent="c"),
    ]
    yield made
    for c in made:
        await c.close()


async def test_a_contended_lock_counts_two_grants_one_hand_off_and_one_wait(
    metered: list[Metered], clients: list[AsyncClient], namespace: str
) -> None:
    a, b, _ = clients
    lease_a, lease_b = await a.leases.grant(ttl=15), await b.leases.grant(ttl=15)
    grant = await a.locks.acquire("L", lease_a)
    waiting = asyncio.create_task(b.locks.acquire("L", lease_b, wait=30))
    await queued(a, "L", 1)
    assert await metered[0].value("accord_streams_open", kind="lock_wait") == 1
    await a.locks.release(grant)
    await b.locks.release(await waiting)

    r0 = await metered[0].scrape()
    assert total(r0, "accord_lock_grants_total", namespace=namespace, kind="exclusive") == 2
    assert total(r0, "accord_lock_handoffs_total", namespace=namespace) == 1
    waited = {"namespace": namespace, "kind": "exclusive"}
    assert total(r0, "accord_lock_wait_seconds_count", **waited) == 1
    assert total(r0, "accord_lock_wait_seconds_sum", **waited) > 0
    assert total(r0, "accord_lock_timeouts_total", namespace=namespace) == 0
    assert total(r0, "accord_streams_open", kind="lock_wait") == 0
    assert total(r0, "accord_leases_granted_total", namespace=namespace) == 2
    for lease in (lease_a, lease_b):
        await lease.revoke()


async def test_a_wait_that_runs_out_is_a_timeout(
    metered: list[Metered], clients: list[AsyncClient], namespace: str
) -> None:
    a, b, _ = clients
    lease_a, lease_b = await a.leases.grant(ttl=15), await b.leases.grant(ttl=15)
    await a.locks.acquire("T", lease_a, mode=LockMode.SHARED)
    with pytest.raises(LockTimeoutError):
        await b.locks.acquire("T", lease_b, wait=0.3)
    r0 = await metered[0].scrape()
    assert total(r0, "accord_lock_timeouts_total", namespace=namespace) == 1
    assert total(r0, "accord_lock_grants_total", namespace=namespace, kind="shared") == 1
    assert total(r0, "accord_lock_handoffs_total", namespace=namespace) == 0
    for lease in (lease_a, lease_b):
        await lease.revoke()


async def test_a_deadlock_is_counted_once_by_its_policy(
    metered: list[Metered], clients: list[AsyncClient], namespace: str
) -> None:
    a, _, c = clients  # one on each replica
    leases = [await a.leases.grant(ttl=15), await c.leases.grant(ttl=15)]
    await a.locks.acquire("D0", leases[0])
    await c.locks.acquire("D1", leases[1])
    second = [
        asyncio.create_task(a.locks.acquire("D1", leases[0], wait=30)),
        asyncio.create_task(c.locks.acquire("D0", leases[1], wait=30)),
    ]
    first, _ = await asyncio.wait(second, return_when=asyncio.FIRST_COMPLETED)
    victim = second.index(first.pop())
    await leases[victim].revoke()  # its first lock goes: the other wait is granted now
    done = await asyncio.gather(*second, return_exceptions=True)
    assert sum(isinstance(d, DeadlockError) for d in done) == 1
    assert isinstance(done[victim], DeadlockError)
    assert await both(metered, "accord_deadlocks_total", namespace=namespace, policy="cycle") == 1
    assert await both(metered, "accord_deadlocks_total", namespace=namespace) == 1
    await leases[1 - victim].revoke()


async def test_a_write_with_a_stale_fence_is_a_fence_rejection(
    metered: list[Metered], clients: list[AsyncClient], namespace: str
) -> None:
    a, _, c = clients
    lease = await a.leases.grant(ttl=15)
    grant = await a.locks.acquire("F", lease)
    await c.kv.put("guarded", b"1", fence=grant, request_id="fenced-1")
    await a.locks.release(grant)
    # A retry of the write that applied gets its first answer: a replay, not a rejection.
    await c.kv.put("guarded", b"1", fence=grant, request_id="fenced-1")
    assert await both(metered, "accord_idempotent_replays_total", namespace=namespace) == 1
    assert await both(metered, "accord_fence_rejections_total", namespace=namespace) == 0
    with pytest.raises(FencedError):
        await c.kv.put("guarded", b"2", fence=grant)
    assert await both(metered, "accord_fence_rejections_total", namespace=namespace) == 1
    await lease.revoke()


async def test_a_retried_put_is_one_replay_and_writes_go_in_batches(
    metered: list[Metered], clients: list[AsyncClient], namespace: str
) -> None:
    a = clients[0]
    before = await metered[0].scrape()
    await a.kv.put("k", b"v", request_id="req-1")
    async with make_client([metered[1].address], namespace, agent="a") as again:
        await again.kv.put("k", b"v", request_id="req-1")  # the retry, on the other replica
    assert await both(metered, "accord_idempotent_replays_total", namespace=namespace) == 1

    # Twenty puts of one Batch share one group-commit transaction (kv/test_batch.py).
    async with Stubs(metered[0].address) as raw:
        ops = [
            kv_pb2.BatchOp(put=kv_pb2.PutRequest(key=f"together/{i}", value=b"x"))
            for i in range(20)
        ]
        await raw.kv.Batch(kv_pb2.BatchRequest(ops=ops), metadata=identity(namespace, "a"))
    after = await metered[0].scrape()

    def grew(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    batches = grew("accord_group_commit_batch_size_count")
    assert batches >= 2  # the first put and the batch, at least
    assert batches - grew("accord_group_commit_batch_size_bucket", le="16.0") >= 1
    assert grew("accord_group_commit_batch_size_sum") >= 21
    assert grew("accord_etcd_txn_seconds_count") >= batches


async def test_votes_open_and_decided(
    metered: list[Metered], clients: list[AsyncClient], namespace: str
) -> None:
    a, _, c = clients
    vote = await a.votes.propose("ship it?", ["yes", "no"], voters=["c"], voting_period=60)

    async def open_on_each() -> list[float]:
        return [await m.value("accord_votes_open", namespace=namespace) for m in metered]

    # Every replica follows every vote's close timer, so each counts it.
    assert await eventually(open_on_each, lambda found: found == [1, 1]) == [1, 1]
    await c.votes.cast(vote.id, "yes")
    assert await eventually(open_on_each, lambda found: found == [0, 0]) == [0, 0]
    decided = {"namespace": namespace, "outcome": "approved"}
    assert await both(metered, "accord_votes_decided_total", **decided) == 1
    assert await both(metered, "accord_votes_decided_total", namespace=namespace) == 1


async def test_streams_sessions_and_update_delivery(
    metered: list[Metered], clients: list[AsyncClient], namespace: str
) -> None:
    a, _, c = clients
    r0, r1 = metered
    loaded = await r1.value("accord_sessions_loaded")
    delivered = await r1.value("accord_session_update_delivery_seconds_count")
    await a.sessions.open("notes")
    events = c.sessions.subscribe("notes")
    await anext(events)  # the state it starts from: not an update that arrived
    assert await r1.value("accord_streams_open", kind="subscribe") == 1
    assert await r1.value("accord_sessions_loaded") == loaded + 1
    await a.sessions.push("notes", text_update("hello"))
    await anext(events)
    assert await r1.value("accord_session_update_delivery_seconds_count") == delivered + 1
    await events.aclose()

    watch = a.kv.watch("w")
    await watch.start()
    assert await r0.value("accord_streams_open", kind="watch") == 1
    await watch.aclose()

    socket = await connect(
        f"{r1.replica.ws_url}/{namespace}/notes?agent=ws-app",
        open_timeout=15,
        **ws_auth(namespace, "ws-app"),
    )

    async def sockets() -> float:
        return await r1.value("accord_streams_open", kind="y_websocket")

    assert await eventually(sockets, lambda n: n == 1) == 1
    await socket.close()

    async def open_streams() -> list[float]:
        return [
            await r1.value("accord_streams_open", kind="subscribe"),
            await r0.value("accord_streams_open", kind="watch"),
            await sockets(),
        ]

    assert await eventually(open_streams, lambda found: found == [0, 0, 0]) == [0, 0, 0]


async def test_a_lease_that_ends_under_its_keep_alive_is_counted_expired(
    metered: list[Metered], clients: list[AsyncClient], namespace: str
) -> None:
    a, _, c = clients
    lease = await a.leases.grant(ttl=15)  # kept alive by a stream to the first replica

    async def keepalives() -> float:
        return await metered[0].value("accord_streams_open", kind="keepalive")

    assert await eventually(keepalives, lambda n: n >= 1) >= 1  # the stream starts after
    await c.leases.revoke(lease.id)  # ended by someone else while kept alive
    await asyncio.wait_for(lease.lost.wait(), 15)

    async def expired() -> float:
        return await metered[0].value("accord_leases_expired_total", namespace=namespace)

    assert await eventually(expired, lambda n: n == 1) == 1
    assert await both(metered, "accord_leases_granted_total", namespace=namespace) == 1


@pytest.mark.faults
async def test_etcd_up_follows_etcd(workdir: Path, replicas: list[Coordinator]) -> None:
    """A replica over an etcd of its own, which is killed and started again."""
    own = start_etcd(workdir, f"etcd-{uuid.uuid4().hex[:6]}")
    m = start_metered(workdir, f"metered-etcd-{uuid.uuid4().hex[:6]}", own.endpoint)
    try:

        async def up() -> float:
            return await m.value("accord_etcd_up")

        assert await eventually(up, lambda v: v == 1) == 1
        own.kill()
        assert await eventually(up, lambda v: v == 0, timeout=30) == 0
        own.start()
        assert await eventually(up, lambda v: v == 1, timeout=30) == 1
        assert await m.value("accord_etcd_leader_changes_total") == 0  # one member
    finally:
        m.replica.terminate()
        own.kill()


async def test_a_semaphore_knot_is_counted_as_a_knot(
    metered: list[Metered], clients: list[AsyncClient], namespace: str
) -> None:
    """S has 2 permits, held by a and b; c holds L and waits for S; a waits for L; then b
    waits for L too: no one can finish, and b's wait ends (locks/test_deadlocks.py)."""
    a, b, c = clients  # replicas 0, 0, 1
    lease_a, lease_b, lease_c = [await x.leases.grant(ttl=15) for x in clients]
    for client, lease in ((a, lease_a), (b, lease_b)):
        await client.locks.acquire("S", lease, permits=2)
    await c.locks.acquire("L", lease_c)
    c_waits = asyncio.create_task(c.locks.acquire("S", lease_c, permits=2, wait=30))
    a_waits = asyncio.create_task(a.locks.acquire("L", lease_a, wait=30))
    await queued(a, "L", 1)
    await queued(a, "S", 1)
    with pytest.raises(DeadlockError):
        await b.locks.acquire("L", lease_b, wait=30)
    assert await both(metered, "accord_deadlocks_total", namespace=namespace, policy="knot") == 1
    assert await both(metered, "accord_deadlocks_total", namespace=namespace) == 1
    await b.locks.release("S", lease_b)  # the victim gives up its permit
    await c.locks.release(await asyncio.wait_for(c_waits, 10))
    await c.locks.release("L", lease_c)
    await a.locks.release(await asyncio.wait_for(a_waits, 10))
    semaphore = {"namespace": namespace, "kind": "semaphore"}
    assert await both(metered, "accord_lock_grants_total", **semaphore) == 3
    for lease in (lease_a, lease_b, lease_c):
        await lease.revoke()


@pytest.mark.faults
async def test_losing_the_etcd_leader_is_one_leader_change(
    workdir: Path, replicas: list[Coordinator]
) -> None:
    """A replica over deploy/local-cluster.sh's three etcd members, whose leader is killed:
    the survivors elect another, and the health probe sees the leader change."""
    directory = workdir / f"cluster-{uuid.uuid4().hex[:6]}"
    directory.mkdir()
    for _ in range(3):  # another process may hold one of the ports: try another base
        base = random.randrange(30000, 60000, 200)
        up = _script("up", directory, base)
        if up.returncode == 0:
            break
    else:
        raise AssertionError(f"local-cluster.sh up failed: {up.stderr}")
    env = dict(line.split("=", 1) for line in (directory / "endpoints.env").read_text().split())
    endpoints = env["ACCORD_ETCD"]
    m = start_metered(workdir, f"metered-leader-{uuid.uuid4().hex[:6]}", endpoints)
    try:

        async def changes() -> float:
            return await m.value("accord_etcd_leader_changes_total")

        assert await eventually(lambda: m.value("accord_etcd_up"), lambda v: v == 1) == 1
        assert await changes() == 0
        leader = _leader(endpoints)
        os.kill(int((directory / f"etcd-{leader}.pid").read_text()), signal.SIGKILL)
        assert await eventually(changes, lambda n: n >= 1, timeout=30) >= 1
        assert await m.value("accord_etcd_up") == 1  # the survivors answer
    finally:
        m.replica.terminate()
        _script("down", directory, base)
