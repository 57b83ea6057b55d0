"""The replica's shared watch stream (coordinator/watch_hub.py) against a real etcd.

A one-key wait is watched from "now" (etcd would otherwise deliver a behind-start
watcher's events only after its 100 ms catch-up loop), so a change between the caller's
read and the watcher's creation must be caught by the hub's start-gap check. These tests
make that change happen before the wait starts: only the check can see it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aetcd.rpc import rpc_pb2 as rpc

from accord.coordinator.substrate.etcd import Etcd
from tests.harness import EtcdMember

NOPUT = rpc.WatchCreateRequest.NOPUT
LONG = 30.0  # a wait that times out instead of waking fails the elapsed-time assertion


@pytest.fixture
async def etcd_client(etcd: EtcdMember) -> AsyncIterator[Etcd]:
    client = Etcd([etcd.endpoint])
    try:
        yield client
    finally:
        await client.close()


async def _put(client: Etcd, key: bytes, value: bytes = b"v") -> int:
    response = await client.txn(
        rpc.TxnRequest(success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value))])
    )
    return int(response.header.revision)


async def _delete(client: Etcd, key: bytes) -> int:
    response = await client.txn(
        rpc.TxnRequest(
            success=[rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))]
        )
    )
    return int(response.header.revision)


async def _wait(client: Etcd, keys: list[bytes], since: int, timeout: float) -> float:
    """Seconds until the hub's wait on keys (from revision since) returned."""
    creates = [rpc.WatchCreateRequest(key=k, filters=[NOPUT], start_revision=since) for k in keys]
    started = time.monotonic()
    await client.watch_hub.first_change(creates, timeout)
    return time.monotonic() - started


async def test_deletion_before_the_wait_starts_wakes_it(etcd_client: Etcd, namespace: str) -> None:
    key, other = f"hub/{namespace}/a".encode(), f"hub/{namespace}/other".encode()
    read_at = await _put(etcd_client, key)
    await _delete(etcd_client, key)  # after the caller's read, before its watcher exists
    await _put(etcd_client, other)
    assert await _wait(etcd_client, [other, key], read_at + 1, LONG) < LONG / 2


async def test_overwrite_in_the_gap_wakes_a_wait_without_a_filter(
    etcd_client: Etcd, namespace: str
) -> None:
    key = f"hub/{namespace}/b".encode()
    read_at = await _put(etcd_client, key)
    await _put(etcd_client, key, b"changed")
    creates = [rpc.WatchCreateRequest(key=key, start_revision=read_at + 1)]
    started = time.monotonic()
    await etcd_client.watch_hub.first_change(creates, LONG)
    assert time.monotonic() - started < LONG / 2


async def test_unchanged_keys_do_not_wake_although_the_revision_moved(
    etcd_client: Etcd, namespace: str
) -> None:
    keys = [f"hub/{namespace}/c{i}".encode() for i in range(2)]
    for key in keys:
        read_at = await _put(etcd_client, key)
    await _put(etcd_client, f"hub/{namespace}/unrelated".encode())  # the gap holds a change
    assert await _wait(etcd_client, keys, read_at + 1, 0.5) >= 0.5  # timed out: no wake


async def test_deletion_during_the_wait_wakes_it(etcd_client: Etcd, namespace: str) -> None:
    key = f"hub/{namespace}/d".encode()
    read_at = await _put(etcd_client, key)
    waiting = asyncio.create_task(_wait(etcd_client, [key], read_at + 1, LONG))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    await _delete(etcd_client, key)
    assert await asyncio.wait_for(waiting, LONG) < LONG / 2


async def test_a_key_that_never_existed_wakes_at_once(etcd_client: Etcd, namespace: str) -> None:
    key = f"hub/{namespace}/never".encode()
    read_at = await _put(etcd_client, f"hub/{namespace}/e".encode())
    await _put(etcd_client, f"hub/{namespace}/f".encode())
    assert await _wait(etcd_client, [key], read_at + 1, LONG) < LONG / 2


async def test_wants_sees_each_event_and_decides_when_the_wait_ends(
    etcd_client: Etcd, namespace: str
) -> None:
    prefix = f"hub/{namespace}/q/".encode()
    keys = [prefix + bytes([ord("a") + i]) for i in range(3)]
    for key in keys:
        start = await _put(etcd_client, key)
    for key in keys:
        await _delete(etcd_client, key)
    seen: list[bytes] = []

    def two_deletions(events: object) -> bool:
        seen.extend(e.prev_kv.key for e in events)  # type: ignore[attr-defined]
        return len(seen) >= 2

    deletions = rpc.WatchCreateRequest(
        key=prefix,
        range_end=prefix[:-1] + b"0",
        filters=[NOPUT],
        prev_kv=True,
        start_revision=start + 1,
    )
    assert await etcd_client.watch_hub.first_change([deletions], LONG, two_deletions)
    assert seen[:2] == keys[:2]  # in order, with what each deletion removed
    # A wait that wants only the last sees every one before it, none missed.
    seen.clear()

    def all_three(events: object) -> bool:
        seen.extend(e.prev_kv.key for e in events)  # type: ignore[attr-defined]
        return len(seen) >= 3

    deletions.start_revision = start + 1
    assert await etcd_client.watch_hub.first_change([deletions], LONG, all_three) is True
    assert seen == keys


async def test_a_compacted_start_says_events_may_have_been_missed(
    etcd_client: Etcd, etcd: EtcdMember, namespace: str
) -> None:
    prefix = f"hub/{namespace}/gone/".encode()
    start = await _put(etcd_client, prefix + b"x")
    await _delete(etcd_client, prefix + b"x")
    await _put(etcd_client, prefix + b"y")
    etcd.compact()  # past the deletion the wait would start from
    deletions = rpc.WatchCreateRequest(
        key=prefix, range_end=prefix[:-1] + b"0", filters=[NOPUT], start_revision=start + 1
    )
    assert await etcd_client.watch_hub.first_change([deletions], LONG, lambda e: False) is False


async def test_a_failing_filter_ends_its_wait_and_spares_the_others(
    etcd_client: Etcd, namespace: str
) -> None:
    prefix = f"hub/{namespace}/bad/".encode()
    start = await _put(etcd_client, prefix + b"x")
    await _delete(etcd_client, prefix + b"x")

    def broken(events: object) -> bool:
        raise ValueError("a bug in a waiter")

    deletions = rpc.WatchCreateRequest(
        key=prefix, range_end=prefix[:-1] + b"0", filters=[NOPUT], start_revision=start + 1
    )
    # It ends at once, as one that may have missed events (its waiter looks again).
    assert await etcd_client.watch_hub.first_change([deletions], 10, broken) is False
    # The shared stream still serves the next wait.
    assert await _wait(etcd_client, [prefix + b"x"], start + 1, LONG) < LONG / 2
