"""A queue's feed (coordinator/locks/queue_feeds.py) against a real etcd: waiters that
join behind it get the deletions they have not counted, one it can no longer replay for
is refused (it watches for itself), and a feed whose watch may have missed events tells
its waiters they lost track."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from aetcd.rpc import rpc_pb2 as rpc

from accord.coordinator.locks import queue_feeds
from accord.coordinator.locks.queue_feeds import QueueFeeds
from accord.coordinator.substrate.etcd import Etcd
from tests.harness import EtcdMember


@pytest.fixture
async def etcd_client(etcd: EtcdMember) -> AsyncIterator[Etcd]:
    client = Etcd([etcd.endpoint])
    try:
        yield client
    finally:
        await client.close()


async def _write(client: Etcd, op: rpc.RequestOp) -> int:
    response = await client.txn(rpc.TxnRequest(success=[op]))
    return int(response.header.revision)


async def _put(client: Etcd, key: bytes) -> int:
    return await _write(client, rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=b"v")))


async def _delete(client: Etcd, key: bytes) -> int:
    return await _write(client, rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key)))


class Waiter:
    def __init__(self) -> None:
        self.deleted: list[bytes] = []
        self.lost = asyncio.Event()
        self.more = asyncio.Event()

    def on_events(self, events: Sequence[Any]) -> None:
        self.deleted += [e.kv.key for e in events]
        self.more.set()

    async def until(self, count: int) -> list[bytes]:
        while len(self.deleted) < count:
            self.more.clear()
            await asyncio.wait_for(self.more.wait(), 30)
        return self.deleted


async def test_a_waiter_joining_behind_the_feed_gets_what_it_has_not_counted(
    etcd_client: Etcd, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(queue_feeds, "BUFFER", 3)
    queue = f"feed/{namespace}/q\x00".encode()
    keys = [queue + bytes([ord("a") + i]) for i in range(5)]
    for key in keys:
        start = await _put(etcd_client, key)
    feeds = QueueFeeds(etcd_client.watch_hub)
    first = Waiter()
    leave_first = feeds.join(queue, start, first.on_events, first.lost.set)
    assert leave_first is not None
    deleted_at = [await _delete(etcd_client, key) for key in keys[:4]]
    assert await first.until(4) == keys[:4]
    # Counted to the first deletion: the three after it are still held, and replayed.
    second = Waiter()
    leave_second = feeds.join(queue, deleted_at[0], second.on_events, second.lost.set)
    assert leave_second is not None
    assert second.deleted == keys[1:4]
    # Counted to before any: the feed no longer holds the first deletion.
    assert feeds.join(queue, start, Waiter().on_events, lambda: None) is None
    await _delete(etcd_client, keys[4])
    assert await first.until(5) == keys
    assert await second.until(4) == keys[1:]
    leave_first()
    leave_second()
    assert not first.lost.is_set() and not second.lost.is_set()


async def test_a_feed_that_may_have_missed_events_tells_its_waiters(
    etcd_client: Etcd, etcd: EtcdMember, namespace: str
) -> None:
    queue = f"feed/{namespace}/gone\x00".encode()
    start = await _put(etcd_client, queue + b"x")
    await _delete(etcd_client, queue + b"x")
    await _put(etcd_client, queue + b"y")
    etcd.compact()  # past the revision the waiter counted to
    feeds = QueueFeeds(etcd_client.watch_hub)
    waiter = Waiter()
    assert feeds.join(queue, start, waiter.on_events, waiter.lost.set) is not None
    await asyncio.wait_for(waiter.lost.wait(), 30)
    # The next waiter starts a new feed.
    later = Waiter()
    now = await _delete(etcd_client, queue + b"y")
    assert feeds.join(queue, now - 1, later.on_events, later.lost.set) is not None
    assert await later.until(1) == [queue + b"y"]
