"""The ambient deadline against real replicas: it bounds a lock wait whatever the call's
own timeout, nested ones take the earlier, a call made once it has passed is never sent,
the blocking client carries it to its loop thread, giving back and background work are
not cut short by it. The rules alone are tests/unit/test_deadlines.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid

import grpc
import pytest
from pycrdt import Text

from accord.client import (
    AsyncClient,
    Client,
    DeadlineExceededError,
    LeaseNotFoundError,
    LockTimeoutError,
    deadline,
    deadline_from,
    remaining,
)
from tests.harness import Coordinator, make_client, queued, token_for, until, wall_clock_past
from tests.harness.metrics import scrape

HELD_ELSEWHERE = 60.0  # the per-call wait: far longer than any ambient budget here


async def _held(client: AsyncClient, lock: str) -> None:
    holder = await client.leases.grant(ttl=30)
    await client.locks.acquire(lock, holder)


async def _nobody_waits(client: AsyncClient, lock: str) -> None:
    state, _ = await client.locks.describe(lock)
    assert list(state.waiters) == []


async def test_ambient_deadline_bounds_a_lock_wait(client: AsyncClient) -> None:
    await _held(client, "bounded")
    waiter = await client.leases.grant(ttl=30)
    started = time.monotonic()
    with deadline(1.5), pytest.raises(LockTimeoutError) as refused:
        await client.locks.acquire("bounded", waiter, wait=HELD_ELSEWHERE)
    assert time.monotonic() - started < HELD_ELSEWHERE / 2  # the budget, not the 60 s wait
    assert refused.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert refused.value.status is not None and refused.value.status.holders_total == 1
    await _nobody_waits(client, "bounded")


async def test_nested_deadlines_take_the_earlier_on_the_wire(client: AsyncClient) -> None:
    await _held(client, "nested")
    waiter = await client.leases.grant(ttl=30)
    started = time.monotonic()
    with deadline(1.5), deadline(HELD_ELSEWHERE), pytest.raises(LockTimeoutError):
        await client.locks.acquire("nested", waiter, wait=HELD_ELSEWHERE)
    assert time.monotonic() - started < HELD_ELSEWHERE / 2
    await _nobody_waits(client, "nested")


def _refusals_logged(replicas: list[Coordinator], namespace: str, agent: str) -> list[str]:
    """The methods of the calls the replicas logged as failed for this agent."""
    found = []
    for replica in replicas:
        for line in replica.log.read_text(errors="replace").splitlines():
            if namespace in line and agent in line:
                record = json.loads(line)
                if record.get("agent_id") == agent and record.get("namespace") == namespace:
                    found.append(str(record.get("method")))
    return found


async def _keepalives_started(replicas: list[Coordinator]) -> float:
    """Leases.KeepAliveOnce calls the replicas have started (their /metrics)."""
    method = {"grpc_service": "accord.v1.Leases", "grpc_method": "KeepAliveOnce"}
    total = 0.0
    for replica in replicas:
        assert replica.metrics_port is not None
        total += (await scrape(replica.metrics_port)).value("grpc_server_started_total", method)
    return total


async def test_a_call_past_the_deadline_is_never_sent(
    replicas: list[Coordinator], namespace: str
) -> None:
    """Neither replica starts it (grpc_server_started_total), nor logs its refusal (the
    access log logs every refused call): the same call made after it shows in both."""
    unsent, sent = f"unsent-{uuid.uuid4().hex[:6]}", f"sent-{uuid.uuid4().hex[:6]}"
    addresses = [r.address for r in replicas]
    async with (
        make_client(addresses, namespace, unsent) as late,
        make_client(addresses, namespace, sent) as marker,
    ):
        before = await _keepalives_started(replicas)
        with deadline(at=time.time() - 0.5), pytest.raises(DeadlineExceededError):
            await late.leases.keepalive_once(424242)  # refused as LEASE_NOT_FOUND if sent
        assert await _keepalives_started(replicas) == before
        with pytest.raises(LeaseNotFoundError):
            await marker.leases.keepalive_once(424242)
        assert await _keepalives_started(replicas) == before + 1

        async def logged() -> list[str]:
            return _refusals_logged(replicas, namespace, sent)

        await until(logged, bool, "the marker call's refusal in a replica's log")
    assert _refusals_logged(replicas, namespace, unsent) == []


def test_the_blocking_client_carries_it_to_its_loop_thread(
    replicas: list[Coordinator], namespace: str
) -> None:
    with Client(
        [r.address for r in replicas],
        agent_id="blocking",
        namespace=namespace,
        token=token_for(namespace, "blocking") or "",
    ) as accord:
        holder = accord.leases.grant(ttl=30)
        accord.locks.acquire("blocking", holder)
        waiter = accord.leases.grant(ttl=30)
        started = time.monotonic()
        with deadline(1.5), pytest.raises(LockTimeoutError):
            accord.locks.acquire("blocking", waiter, wait=HELD_ELSEWHERE)
        assert time.monotonic() - started < HELD_ELSEWHERE / 2
        state, _ = accord.locks.describe("blocking")
        assert list(state.waiters) == []


async def test_giving_back_is_not_cut_short(client: AsyncClient) -> None:
    lease = await client.leases.grant(ttl=30)
    grant = await client.locks.acquire("give-back", lease)
    with deadline(at=time.time() - 1):
        assert await client.locks.release(grant) is True
        await lease.revoke()
    state, _ = await client.locks.describe("give-back")
    assert list(state.holders) == []


async def test_a_lease_granted_inside_is_kept_alive_past_it(client: AsyncClient) -> None:
    with deadline(0.5):
        lease = await client.leases.grant(ttl=2)
    await asyncio.sleep(3.5)  # past the deadline and the lease's TTL: only keep-alive saves it
    assert not lease.lost.is_set()
    info = await client.leases.time_to_live(lease.id)
    assert info.ttl > 0
    await lease.revoke()


async def test_waiters_queued_elsewhere_are_untouched(client: AsyncClient) -> None:
    """A bounded waiter leaves only its own place: a patient one behind the same holder
    stays queued."""
    await _held(client, "shared-queue")
    patient = await client.leases.grant(ttl=30)
    waiting = asyncio.create_task(
        client.locks.acquire("shared-queue", patient, wait=HELD_ELSEWHERE)
    )
    await queued(client, "shared-queue", 1)
    hurried = await client.leases.grant(ttl=30)
    with deadline(1.0), pytest.raises(LockTimeoutError):
        await client.locks.acquire("shared-queue", hurried, wait=HELD_ELSEWHERE)
    state, _ = await client.locks.describe("shared-queue")
    assert [w.lease_id for w in state.waiters] == [patient.id]
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)


async def test_a_session_synced_inside_keeps_syncing_past_it(client: AsyncClient) -> None:
    """Its background pushes run without the ambient deadline of the call that opened it."""
    async with contextlib.AsyncExitStack() as stack:
        with deadline(1.0):
            live = await stack.enter_async_context(client.sessions.synced("notes"))
        await wall_clock_past(time.time() + 1.5)  # past the deadline
        live.doc.get("t", type=Text).insert(0, "late")
        await live.flush(10)
    assert (await client.sessions.read("notes")).json == {"t": "late"}


async def test_a_reacting_agent_inherits_the_writers_budget(
    pinned: list[AsyncClient],
) -> None:
    """The writer (no tracing, only a deadline) puts through one replica; the reader
    watches through the other, and its calls inside deadline_from(event) get what was
    left of the writer's budget: the wire carried accord.deadline, the write recorded it,
    and it bounds the reader's lock wait."""
    writer, reader = pinned
    await _held(reader, "downstream")
    waiter = await reader.leases.grant(ttl=30)
    watch = reader.kv.watch("handoff/", prefix=True)
    await watch.start()
    with deadline(4) as budget:
        await writer.kv.put("handoff/task", b"do it")
    event = await anext(aiter(watch))
    await watch.aclose()
    assert event.trace_context is not None
    assert event.trace_context.baggage == f"accord.deadline={int(budget * 1000)}"
    started = time.monotonic()
    with deadline_from(event) as inherited, pytest.raises(LockTimeoutError):
        assert inherited == pytest.approx(budget, abs=0.001)
        await reader.locks.acquire("downstream", waiter, wait=HELD_ELSEWHERE)
    assert time.monotonic() - started < HELD_ELSEWHERE / 2
    assert remaining() is None  # gone on leaving the block
