"""Concurrent agents through two replicas: no lost updates, group commit keeps semantics."""

from __future__ import annotations

import asyncio

from accord.client import AsyncClient


async def test_fifty_concurrent_increments_lose_nothing(pinned: list[AsyncClient]) -> None:
    def increment(value: bytes | None) -> bytes:
        return str(int(value or b"0") + 1).encode()

    # 50 agents, half on each replica, all incrementing one counter at once.
    await asyncio.gather(*(pinned[i % 2].kv.update("counter", increment) for i in range(50)))
    final = await pinned[0].kv.get("counter")
    assert final is not None
    assert final.value == b"50"
    assert final.version == 50


async def test_independent_writes_share_commits_without_changing_outcomes(
    client: AsyncClient,
) -> None:
    results = await asyncio.gather(*(client.kv.put(f"k{i}", str(i)) for i in range(200)))
    revisions = [r.revision for r in results]
    # Group commit: concurrent independent writes landed in fewer etcd transactions...
    assert len(set(revisions)) < len(revisions)
    # ...and each one still applied exactly as asked.
    kvs = await client.kv.list_all("k")
    assert {kv.key: kv.value for kv in kvs} == {f"k{i}": str(i).encode() for i in range(200)}
    assert all(kv.version == 1 for kv in kvs)


async def test_a_burst_on_one_key_applies_each_write_once(client: AsyncClient) -> None:
    results = await asyncio.gather(*(client.kv.put("same", str(i)) for i in range(30)))
    versions = sorted(r.kv.version for r in results if r.kv is not None)
    assert versions == list(range(1, 31))  # every write applied once, none merged away
    assert len({r.revision for r in results}) == 30  # one key never shares a commit
