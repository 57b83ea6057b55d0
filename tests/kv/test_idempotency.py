"""A request_id makes a write apply at most once, whichever replica the retry reaches."""

from __future__ import annotations

import asyncio

import pytest

from accord.client import (
    AsyncClient,
    ConditionFailedError,
    Delete,
    Expect,
    Put,
    RequestIdReusedError,
)
from accord.v1.records_pb2 import IdempotencyRecord
from tests.harness import Coordinator, EtcdMember, make_client, until


async def test_retry_on_other_replica_returns_first_result(pinned: list[AsyncClient]) -> None:
    a, b = pinned
    first = await a.kv.put("k", b"v", request_id="req-1")
    retry = await b.kv.put("k", b"v", request_id="req-1")
    assert not first.replayed and retry.replayed
    assert retry.revision == first.revision
    assert retry.kv == first.kv
    current = await a.kv.get("k")
    assert current is not None and current.version == 1  # applied once


async def test_retry_after_later_writes_still_answers_as_first_time(client: AsyncClient) -> None:
    first = await client.kv.put("k", b"mine", request_id="req-2")
    await client.kv.put("k", b"someone else")
    retry = await client.kv.put("k", b"mine", request_id="req-2")
    assert retry.replayed and retry.revision == first.revision
    assert retry.kv is not None and retry.kv.value == b"mine"
    current = await client.kv.get("k")
    assert current is not None and current.value == b"someone else"


async def test_failed_condition_replays_as_failure(pinned: list[AsyncClient]) -> None:
    a, b = pinned
    await a.kv.put("k", b"1")
    with pytest.raises(ConditionFailedError) as first:
        await a.kv.put("k", b"2", expect=Expect(absent=True), request_id="req-3")
    await a.kv.delete("k")  # now the condition would hold...
    with pytest.raises(ConditionFailedError) as retry:
        await b.kv.put("k", b"2", expect=Expect(absent=True), request_id="req-3")
    # ...but the retry gets the first call's answer, and nothing is written.
    assert (
        retry.value.failures[0].current_mod_revision == first.value.failures[0].current_mod_revision
    )
    assert await a.kv.get("k") is None


async def test_request_id_reused_for_a_different_request(client: AsyncClient) -> None:
    await client.kv.put("k", b"v", request_id="req-4")
    with pytest.raises(RequestIdReusedError):
        await client.kv.put("k", b"other value", request_id="req-4")
    current = await client.kv.get("k")
    assert current is not None and current.value == b"v" and current.version == 1


async def test_txn_and_delete_replay(pinned: list[AsyncClient]) -> None:
    a, b = pinned
    await a.kv.put("x", b"old")
    first = await a.kv.txn(
        {"y": Expect(absent=True)}, [Put("y", b"1"), Delete("x")], request_id="t1"
    )
    retry = await b.kv.txn(
        {"y": Expect(absent=True)}, [Put("y", b"1"), Delete("x")], request_id="t1"
    )
    assert retry.replayed and retry.revision == first.revision
    assert retry.kvs[1] is not None and retry.kvs[1].value == b"old"
    gone = await a.kv.delete("y", request_id="d1")
    again = await b.kv.delete("y", request_id="d1")
    assert gone.deleted and again.deleted and again.replayed and again.revision == gone.revision


async def test_request_ids_are_scoped_per_agent(
    replicas: list[Coordinator], namespace: str
) -> None:
    async with (
        make_client([replicas[0].address], namespace, agent="one") as one,
        make_client([replicas[1].address], namespace, agent="two") as two,
    ):
        await one.kv.put("k", b"1", request_id="same")
        second = await two.kv.put("k", b"2", request_id="same")
        assert not second.replayed
        current = await one.kv.get("k")
        assert current is not None and current.version == 2


async def test_agent_ids_with_slashes_do_not_collide(
    replicas: list[Coordinator], namespace: str
) -> None:
    async with (
        make_client([replicas[0].address], namespace, agent="x/y") as xy,
        make_client([replicas[0].address], namespace, agent="x") as x,
    ):
        first = await xy.kv.put("a", b"from x/y", request_id="z")
        second = await x.kv.put("b", b"from x", request_id="y/z")
        assert not first.replayed and not second.replayed
        b = await x.kv.get("b")
        assert b is not None and b.value == b"from x"


async def stored_answers(etcd: EtcdMember, namespace: str, agent: str) -> set[str]:
    """The agent's request_ids whose idempotency record holds its answer (added to the
    record in the background, just after the commit)."""
    return {
        request_id
        for request_id, kv in etcd.idempotency_records(namespace, agent).items()
        if IdempotencyRecord.FromString(kv.value).answer
    }


async def test_a_cas_with_request_id_is_one_etcd_write(
    client: AsyncClient, etcd: EtcdMember, namespace: str
) -> None:
    """A put's answer follows from its record's revision, so the record is written once,
    with the effect, and nothing is added to it afterwards."""
    created = await client.kv.put("k", b"1", expect=Expect(absent=True), request_id="create")
    swapped = await client.kv.put(
        "k", b"2", expect=Expect(mod_revision=created.revision), request_id="swap"
    )
    # A background write of an answer would be queued before this one is sent.
    await client.kv.put("after", b"x")
    records = etcd.idempotency_records(namespace, "tester")
    for request_id, first in (("create", created), ("swap", swapped)):
        record = records[request_id]
        assert (record.version, record.mod_revision) == (1, first.revision), request_id
        assert not IdempotencyRecord.FromString(record.value).answer
    retry = await client.kv.put(
        "k", b"2", expect=Expect(mod_revision=created.revision), request_id="swap"
    )
    assert retry.replayed and retry.kv == swapped.kv


async def test_replay_after_compaction_gives_the_first_answer(
    client: AsyncClient, etcd: EtcdMember, namespace: str
) -> None:
    await client.kv.put("gone", b"old value")
    deleted = await client.kv.delete("gone", request_id="del-1")
    written = await client.kv.put("k", b"v", request_id="put-1")
    kept = await client.kv.put("kept", b"v", request_id="put-2")  # unchanged since
    await client.kv.put("k", b"later")
    with pytest.raises(ConditionFailedError) as refused:
        await client.kv.put("k", b"x", expect=Expect(absent=True), request_id="cas-1")
    await client.kv.delete("k")
    await until(  # the answers are stored just after the commits
        lambda: stored_answers(etcd, namespace, "tester"),
        lambda stored: {"del-1", "cas-1"} <= stored,
        "the two answers in their records",
    )
    etcd.compact()
    again = await client.kv.delete("gone", request_id="del-1")
    assert again.replayed and again.deleted and again.prev == deleted.prev
    assert again.revision == deleted.revision
    # A put's answer is rebuilt: exactly while the key is unchanged; once it changed and
    # history is compacted, less detailed (no version) but never wrong.
    replayed = await client.kv.put("kept", b"v", request_id="put-2")
    assert replayed.replayed and replayed.kv == kept.kv
    replayed = await client.kv.put("k", b"v", request_id="put-1")
    assert replayed.replayed and replayed.revision == written.revision
    assert replayed.kv is not None and written.kv is not None
    assert (replayed.kv.key, replayed.kv.value) == (written.kv.key, written.kv.value)
    assert replayed.kv.mod_revision == written.kv.mod_revision
    with pytest.raises(ConditionFailedError) as refused_again:
        await client.kv.put("k", b"x", expect=Expect(absent=True), request_id="cas-1")
    assert refused_again.value.failures == refused.value.failures


async def test_concurrent_duplicates_apply_once(pinned: list[AsyncClient]) -> None:
    a, b = pinned
    results = await asyncio.gather(*(c.kv.put("k", b"v", request_id="dup") for c in (a, b, a, b)))
    assert sum(not r.replayed for r in results) == 1
    assert len({r.revision for r in results}) == 1
    current = await a.kv.get("k")
    assert current is not None and current.version == 1


async def test_update_after_a_stall_applies_once(
    live_replicas: list[Coordinator], etcd: EtcdMember, namespace: str
) -> None:
    async with make_client([live_replicas[0].address], namespace, timeout=1.0) as c:
        await c.kv.put("counter", b"0")
        paused = False

        def increment_then_stall_etcd(value: bytes | None) -> bytes:
            nonlocal paused
            if not paused:  # the write goes out to a frozen etcd: its answer comes too late
                etcd.pause()
                paused = True
                asyncio.get_running_loop().call_later(1.5, etcd.resume)
            return str(int(value or b"0") + 1).encode()

        try:
            result = await c.kv.update("counter", increment_then_stall_etcd)
        finally:
            etcd.resume()
        final = await c.kv.get("counter")
        assert final is not None and final.value == b"1" and final.version == 2
        assert result.revision == final.mod_revision


async def test_writes_survive_their_retention_lease_being_revoked(
    client: AsyncClient, pinned: list[AsyncClient], etcd: EtcdMember, namespace: str
) -> None:
    for i, c in enumerate(pinned):  # both replicas hold one now
        await c.kv.put("warm", b"x", request_id=f"warm-up-{i}")
    # only this namespace's: the session etcd is shared, and other tests' records (the
    # auth cluster's bootstrap audit entry) hang on leases of their own
    assert etcd.revoke_leases_of(namespace) == len(pinned)
    written = await client.kv.put("k", b"v", request_id="after-revoke")
    assert not written.replayed
    deleted = await client.kv.delete("k", request_id="delete-after-revoke")  # a tombstone too
    assert deleted.deleted
    again = await client.kv.put("k", b"v", request_id="after-revoke")
    assert again.replayed and again.revision == written.revision
