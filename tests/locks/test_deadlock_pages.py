"""Resolved deadlocks listed a page at a time, through the client and `accord deadlocks ls`:
every record exactly once, newest first, an empty token on the last page, and a token the
service did not issue refused."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from accord.client import AsyncClient, DeadlockError, InvalidArgumentError, Lease
from tests.conftest import make_client
from tests.harness import Coordinator, token_args

WAIT = 20.0  # seconds any one wait in these tests may take
DEADLOCKS = 7
PAGE = 3  # so the pages hold 3, 3 and 1


@dataclass
class Agent:
    client: AsyncClient
    lease: Lease


async def wait_for(agent: Agent, held: str, wanted: str) -> bool:
    """Wait for wanted while holding held, then let both go. True when this agent was the
    deadlock's victim."""
    try:
        grant = await agent.client.locks.acquire(wanted, agent.lease, wait=WAIT)
    except DeadlockError:
        await agent.client.locks.release(held, agent.lease)
        return True
    await agent.client.locks.release(grant)
    await agent.client.locks.release(held, agent.lease)
    return False


async def deadlock(a: Agent, b: Agent, tag: str) -> None:
    """One two-agent cycle on the locks {tag}-a and {tag}-b; one victim resolves it."""
    await a.client.locks.acquire(f"{tag}-a", a.lease)
    await b.client.locks.acquire(f"{tag}-b", b.lease)
    victims = await asyncio.gather(
        wait_for(a, f"{tag}-a", f"{tag}-b"), wait_for(b, f"{tag}-b", f"{tag}-a")
    )
    assert sorted(victims) == [False, True]


@pytest.fixture
async def resolved(replicas: list[Coordinator], namespace: str) -> AsyncIterator[AsyncClient]:
    """A namespace with DEADLOCKS resolved deadlocks (tags d0, d1, ...), made by agents
    on both replicas, four cycles at a time; yields a client of the namespace."""
    agents = []
    for i in range(8):
        client = make_client([replicas[i % 2].address], namespace, agent=f"agent-{i}")
        agents.append(Agent(client, await client.leases.grant(ttl=15)))
    try:
        for first in range(0, DEADLOCKS, 4):
            tags = range(first, min(first + 4, DEADLOCKS))
            await asyncio.wait_for(
                asyncio.gather(
                    *(
                        deadlock(agents[2 * j], agents[2 * j + 1], f"d{t}")
                        for j, t in enumerate(tags)
                    )
                ),
                WAIT,
            )
        yield agents[0].client
    finally:
        for agent in agents:
            await agent.lease.revoke()
            await agent.client.close()


def tag(victim_lock: str) -> str:
    """The cycle a deadlock record belongs to, from its victim's lock."""
    return victim_lock.split("-", maxsplit=1)[0]


async def test_pages_hold_every_deadlock_once(resolved: AsyncClient) -> None:
    sizes, seen, token = [], [], ""
    while True:
        page = await resolved.locks.deadlocks(PAGE, page_token=token)
        sizes.append(len(page))
        seen += page
        if not page.next_page_token:
            break
        token = page.next_page_token
    assert sizes == [3, 3, 1]
    assert sorted(tag(d.victim_lock) for d in seen) == [f"d{t}" for t in range(DEADLOCKS)]

    whole = await resolved.locks.deadlocks(100)
    assert [d.id for d in seen] == [d.id for d in whole]  # the same order: newest first
    assert whole.next_page_token == ""
    exact = await resolved.locks.deadlocks(DEADLOCKS)  # a full last page: no empty one after
    assert len(exact) == DEADLOCKS and exact.next_page_token == ""


@pytest.mark.parametrize("token", ["garbage", "-5", "1", "0", "99999999999999999999", "12 "])
async def test_a_token_not_issued_is_refused(client: AsyncClient, token: str) -> None:
    with pytest.raises(InvalidArgumentError) as refused:
        await client.locks.deadlocks(page_token=token)
    assert [field for field, _ in refused.value.field_violations] == ["page_token"]


async def test_a_negative_limit_is_refused(client: AsyncClient) -> None:
    with pytest.raises(InvalidArgumentError) as refused:
        await client.locks.deadlocks(-1)
    assert [field for field, _ in refused.value.field_violations] == ["limit"]


async def run(
    replicas: list[Coordinator], namespace: str, *args: str
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "accord.coordinator", "deadlocks", "ls", *args]
    argv += ["--addr", ",".join(r.address for r in replicas), "--namespace", namespace]
    argv += token_args(namespace)
    return await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, timeout=WAIT
    )


async def cli(replicas: list[Coordinator], namespace: str, *args: str) -> str:
    done = await run(replicas, namespace, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_cli_says_when_there_is_more(
    resolved: AsyncClient, replicas: list[Coordinator], namespace: str
) -> None:
    first = json.loads(await cli(replicas, namespace, "--limit", str(PAGE), "-o", "json"))
    assert len(first["deadlocks"]) == PAGE and first["next_page_token"]
    token = first["next_page_token"]

    table = await cli(replicas, namespace, "--limit", str(PAGE))
    assert sum(d["id"] in table for d in first["deadlocks"]) == PAGE
    last = table.strip().splitlines()[-1]
    assert last == f"more deadlocks: --page-token {token} for the next {PAGE}, --all for all"

    second = json.loads(
        await cli(replicas, namespace, "--limit", str(PAGE), "--page-token", token, "-o", "json")
    )
    assert len(second["deadlocks"]) == PAGE
    assert not {d["id"] for d in first["deadlocks"]} & {d["id"] for d in second["deadlocks"]}

    every = json.loads(await cli(replicas, namespace, "--all", "--limit", "1", "-o", "json"))
    assert sorted(tag(d["victim_lock"]) for d in every["deadlocks"]) == [
        f"d{t}" for t in range(DEADLOCKS)
    ]
    assert every["next_page_token"] == ""
    assert "more deadlocks" not in await cli(replicas, namespace, "--all")

    refused = await run(replicas, namespace, "--page-token", "garbage")
    assert refused.returncode == 1 and refused.stdout == ""
    assert "page_token: is not a token this service issued" in refused.stderr
