"""Deadlock detection across replicas: one victim per cycle, the whole cycle explained,
no false positives."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from accord.client import AsyncClient, DeadlockError, Lease, LockMode
from tests.harness import Coordinator, eventually, make_client, queued


@dataclass
class Agent:
    name: str
    client: AsyncClient
    lease: Lease


@pytest.fixture
async def agents(replicas: list[Coordinator], namespace: str) -> AsyncIterator[list[Agent]]:
    """Eight agents, alternating between the two replicas."""
    made: list[Agent] = []
    for i in range(8):
        client = make_client([replicas[i % 2].address], namespace, agent=f"agent-{i}")
        made.append(Agent(f"agent-{i}", client, await client.leases.grant(ttl=15)))
    yield made
    for agent in made:
        await agent.lease.revoke()
        await agent.client.close()


async def run_cycle(agents: list[Agent], priorities: list[int] | None = None) -> list[str]:
    """Agent i holds lock i, then all at once agent i waits for lock i+1. A victim gives
    up its lock, so the others proceed. Returns each agent's outcome."""
    n = len(agents)
    for i, agent in enumerate(agents):
        await agent.client.locks.acquire(f"L{i}", agent.lease)

    async def second_lock(i: int) -> str:
        agent = agents[i]
        try:
            grant = await agent.client.locks.acquire(
                f"L{(i + 1) % n}",
                agent.lease,
                wait=30,
                priority=priorities[i] if priorities else 0,
            )
        except DeadlockError as victim:
            assert victim.deadlock is not None
            await agent.client.locks.release(f"L{i}", agent.lease)
            return f"victim:{len(victim.deadlock.cycle)}"
        await agent.client.locks.release(grant)
        await agent.client.locks.release(f"L{i}", agent.lease)
        return "proceeded"

    return list(await asyncio.wait_for(asyncio.gather(*(second_lock(i) for i in range(n))), 60))


@pytest.mark.parametrize("length", [2, 3, 5])
async def test_cycle_across_replicas_has_exactly_one_victim(
    agents: list[Agent], length: int
) -> None:
    outcomes = await run_cycle(agents[:length])
    assert sorted(outcomes) == ["proceeded"] * (length - 1) + [f"victim:{length}"]
    recent = await agents[0].client.locks.deadlocks()
    assert len(recent) == 1
    cycle_agents = {e.waiter_agent for e in recent[0].cycle}
    assert cycle_agents == {a.name for a in agents[:length]}
    assert "youngest wait" in recent[0].policy


async def test_priority_protects_an_agent(agents: list[Agent]) -> None:
    pair = agents[:2]
    for i, agent in enumerate(pair):
        await agent.client.locks.acquire(f"P{i}", agent.lease)
    first = asyncio.create_task(pair[0].client.locks.acquire("P1", pair[0].lease, wait=30))
    await queued(pair[1].client, "P1", 1)  # agent-0 waits first: agent-1's would be the youngest...
    with pytest.raises(DeadlockError):  # ...but agent-1 is protected by its priority
        await asyncio.gather(
            pair[1].client.locks.acquire("P0", pair[1].lease, wait=30, priority=10),
            first,
        )
    assert first.done() and isinstance(first.exception(), DeadlockError)
    deadlock = first.exception().deadlock  # type: ignore[union-attr]
    assert deadlock is not None and deadlock.victim_agent == "agent-0"


async def test_shared_holders_only_deadlock_an_exclusive_waiter(agents: list[Agent]) -> None:
    a, b = agents[:2]
    await a.client.locks.acquire("S1", a.lease, mode=LockMode.SHARED)
    await b.client.locks.acquire("S2", b.lease)
    waiting = asyncio.create_task(a.client.locks.acquire("S2", a.lease, wait=30))
    await queued(b.client, "S2", 1)  # a waits for b
    # A shared request is compatible with a's shared hold: granted, no deadlock.
    shared = await b.client.locks.acquire("S1", b.lease, mode=LockMode.SHARED, wait=5)
    await b.client.locks.release(shared)
    # An exclusive one closes a real cycle.
    with pytest.raises(DeadlockError):
        await b.client.locks.acquire("S1", b.lease, wait=30)
    await b.client.locks.release("S2", b.lease)
    await asyncio.wait_for(waiting, 10)


async def test_many_waiters_without_a_cycle_are_left_alone(agents: list[Agent]) -> None:
    holders, waiters = agents[:3], agents[3:]
    for i, agent in enumerate(holders):
        await agent.client.locks.acquire(f"Q{i}", agent.lease)

    async def take_and_release(agent: Agent, name: str) -> None:
        grant = await agent.client.locks.acquire(name, agent.lease, wait=30)
        await agent.client.locks.release(grant)

    waits = [asyncio.create_task(take_and_release(w, f"Q{j % 3}")) for j, w in enumerate(waiters)]
    # A chain of waits that is not a cycle: holder 0 waits for holder 1's lock.
    chain = asyncio.create_task(take_and_release(holders[0], "Q1"))
    for name, count in (("Q0", 2), ("Q1", 3), ("Q2", 1)):  # every wait has begun
        await queued(agents[0].client, name, count)
    assert not any(t.done() for t in [*waits, chain])
    for i, agent in enumerate(holders[1:], start=1):
        await agent.client.locks.release(f"Q{i}", agent.lease)
    await asyncio.wait_for(chain, 30)
    await holders[0].client.locks.release("Q0", holders[0].lease)
    await asyncio.wait_for(asyncio.gather(*waits), 30)  # every wait ends in a grant
    assert await agents[0].client.locks.deadlocks() == []


async def test_semaphore_knot_across_replicas_has_exactly_one_victim(agents: list[Agent]) -> None:
    """S has 2 permits, held by a and b; c holds L and waits for S; a waits for L. While b
    waits for nothing it will free a permit: no deadlock, nobody is a victim. When b also
    waits for L, no one can finish: exactly b's wait (the youngest) ends, the rest
    proceed."""
    a, b, c = agents[:3]  # replicas 0, 1, 0
    for agent in (a, b):
        await agent.client.locks.acquire("S", agent.lease, permits=2)
    await c.client.locks.acquire("L", c.lease)
    c_waits = asyncio.create_task(c.client.locks.acquire("S", c.lease, permits=2, wait=30))
    a_waits = asyncio.create_task(a.client.locks.acquire("L", a.lease, wait=30))

    async def waiters() -> int:
        states = [(await a.client.locks.describe(name))[0] for name in ("S", "L")]
        return min(len(state.waiters) for state in states)

    assert await eventually(waiters, lambda n: n == 1) == 1  # both waits have begun
    assert not c_waits.done() and not a_waits.done()  # a cycle a -> c -> a, but no knot
    assert await a.client.locks.deadlocks() == []

    with pytest.raises(DeadlockError) as victim:
        await b.client.locks.acquire("L", b.lease, wait=30)
    deadlock = victim.value.deadlock
    assert deadlock is not None and deadlock.victim_agent == b.name
    assert {e.waiter_agent for e in deadlock.cycle} == {a.name, b.name, c.name}
    assert "knot" in deadlock.policy
    assert not c_waits.done() and not a_waits.done()

    await b.client.locks.release("S", b.lease)  # the victim gives up its permit
    await c.client.locks.release(await asyncio.wait_for(c_waits, 10))
    await c.client.locks.release("L", c.lease)
    await a.client.locks.release(await asyncio.wait_for(a_waits, 10))
    assert len(await a.client.locks.deadlocks()) == 1
