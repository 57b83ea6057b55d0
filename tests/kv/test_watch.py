"""Watches: order, prefixes, replay from a revision, resume across a replica's death,
and the explicit compaction error."""

from __future__ import annotations

import asyncio

import pytest

from accord.client import AsyncClient, CompactedError, EventType, WatchEvent
from accord.client.kv import Watch
from tests.harness import Coordinator, EtcdMember, make_client


async def take(watch: Watch, n: int, timeout: float = 10) -> list[WatchEvent]:
    async def collect() -> list[WatchEvent]:
        return [await watch.__anext__() for _ in range(n)]

    return await asyncio.wait_for(collect(), timeout)


async def test_watch_delivers_puts_and_deletes_in_order(client: AsyncClient) -> None:
    watch = client.kv.watch("k", prev_kv=True)
    await watch.start()
    await client.kv.put("k", b"1")
    await client.kv.put("other", b"ignored")
    await client.kv.put("k", b"2")
    await client.kv.delete("k")
    events = await take(watch, 3)
    assert [(e.type, e.kv.value) for e in events] == [
        (EventType.PUT, b"1"),
        (EventType.PUT, b"2"),
        (EventType.DELETE, b""),
    ]
    assert events[1].prev is not None and events[1].prev.value == b"1"
    assert events[0].kv.written_by.agent_id == "tester"
    assert events[0].revision < events[1].revision < events[2].revision
    await watch.aclose()


async def test_prefix_watch_stays_in_prefix_and_namespace(
    client: AsyncClient, replicas: list[Coordinator], namespace: str
) -> None:
    watch = client.kv.watch("jobs/", prefix=True)
    await watch.start()
    async with make_client([replicas[1].address], namespace + "-other") as stranger:
        await stranger.kv.put("jobs/1", b"not yours")
    await client.kv.put("jobsx", b"outside the prefix")
    await client.kv.put("jobs/2", b"mine")
    events = await take(watch, 1)
    assert [e.kv.key for e in events] == ["jobs/2"]
    await watch.aclose()


async def test_watch_from_past_revision_replays(client: AsyncClient) -> None:
    first = await client.kv.put("k", b"1")
    await client.kv.put("k", b"2")
    watch = client.kv.watch("k", start_revision=first.revision)
    events = await take(watch, 2)
    assert [e.kv.value for e in events] == [b"1", b"2"]
    await watch.aclose()


async def test_watch_resumes_on_other_replica_without_loss_or_duplicates(
    live_replicas: list[Coordinator], namespace: str
) -> None:
    first, second = live_replicas
    async with (
        make_client([first.address, second.address], namespace) as watcher,
        make_client([second.address], namespace, agent="writer") as writer,
    ):
        watch = watcher.kv.watch("log/", prefix=True)
        await watch.start()
        for i in range(10):
            await writer.kv.put(f"log/{i:02d}", str(i))
        received = await take(watch, 5)
        first.kill()  # the watcher's replica dies mid-stream
        for i in range(10, 20):
            await writer.kv.put(f"log/{i:02d}", str(i))
        received += await take(watch, 15, timeout=30)
        assert [e.kv.key for e in received] == [f"log/{i:02d}" for i in range(20)]
        with pytest.raises(TimeoutError):  # and nothing more: no duplicates
            await take(watch, 1, timeout=0.5)
        await watch.aclose()


async def test_saved_resume_revision_continues_exactly(client: AsyncClient) -> None:
    watch = client.kv.watch("k")
    await watch.start()
    await client.kv.put("k", b"1")
    await take(watch, 1)
    saved = watch.resume_revision
    await watch.aclose()
    await client.kv.put("k", b"2")  # written while nobody watched
    resumed = client.kv.watch("k", start_revision=saved)
    events = await take(resumed, 1)
    assert [e.kv.value for e in events] == [b"2"]
    await resumed.aclose()


async def test_compacted_start_revision_is_explicit(client: AsyncClient, etcd: EtcdMember) -> None:
    old = await client.kv.put("k", b"1")
    await client.kv.put("k", b"2")
    compacted_at = etcd.compact()
    watch = client.kv.watch("k", start_revision=old.revision)
    with pytest.raises(CompactedError) as err:
        await take(watch, 1)
    assert err.value.compact_revision == compacted_at
    assert "compacted" in err.value.message
    # Reads of compacted revisions are explicit too; history says it was cut short.
    with pytest.raises(CompactedError):
        await client.kv.get("k", revision=old.revision)
    history = await client.kv.history("k")
    assert history.truncated_by_compaction
    assert [e.kv.value for e in history.entries] == [b"2"]


async def test_resume_inside_a_transaction_neither_loses_nor_repeats(client: AsyncClient) -> None:
    from accord.client import Put

    watch = client.kv.watch("t/", prefix=True)
    await watch.start()
    await client.kv.txn({}, [Put("t/a", b"1"), Put("t/b", b"1"), Put("t/c", b"1")])
    first = await take(watch, 1)
    saved = watch.resume_revision
    assert saved == first[0].revision  # still inside that transaction's revision
    await watch.aclose()
    # A fresh watch from a point saved inside a transaction replays that transaction
    # whole: a revision is etcd's unit of resumption (documented on Watch).
    replay = client.kv.watch("t/", prefix=True, start_revision=saved)
    assert [e.kv.key for e in await take(replay, 3)] == ["t/a", "t/b", "t/c"]
    await replay.aclose()
