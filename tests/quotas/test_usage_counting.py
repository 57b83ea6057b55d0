"""Who counts usage: with quotas off a replica follows no namespace's writes and
Quotas.Get reads the namespace from etcd at one revision; with quotas on, a namespace that
first appears while the replicas run is counted exactly (keys and bytes after overwrites
and deletes, sessions, leases, open votes, effects), by its own prev_kv watches from the
revision it was first seen."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from accord.client import AsyncClient, Delete, Put, QuotaStatus, intent
from tests.harness import Coordinator, EtcdMember, make_client, start_coordinator, until


@pytest.fixture(scope="module")
def no_quotas(
    replicas: list[Coordinator], etcd: EtcdMember, workdir: Path
) -> Iterator[Coordinator]:
    """A replica serving with --no-quotas over the session etcd (after the session
    replicas, so that under auth its credentials exist)."""
    replica = start_coordinator(workdir, "no-quotas", [etcd.endpoint], ["--no-quotas"], ws=False)
    yield replica
    replica.terminate()


async def _write_and_delete(client: AsyncClient) -> int:
    """Overwrites and a delete; one ~2,000-byte key remains. Returns the last revision."""
    await client.kv.put("k", b"x" * 100)
    await client.kv.put("k", b"x" * 3_000)
    await client.kv.put("k", b"x" * 2_000)
    await client.kv.put("gone", b"x" * 5_000)
    return (await client.kv.delete("gone")).revision


async def test_with_quotas_off_usage_is_read_when_asked(
    no_quotas: Coordinator, namespace: str
) -> None:
    assert "quota usage not counted: quotas are off" in no_quotas.log.read_text()
    async with make_client([no_quotas.address], namespace) as client:
        last = await _write_and_delete(client)
        await client.leases.grant(ttl=30, keepalive=False)
        # Exact at once (no watch lag to wait for): read from etcd at the answer's revision.
        status = await client.quotas.get()
    assert status.usage.revision > last
    assert status.usage.keys == 1
    assert 2_000 < status.usage.bytes < 2_300
    assert status.usage.leases == 1


async def _counted_at(client: AsyncClient, revision: int) -> QuotaStatus:
    """The client's replica's counts once they reflect revision."""
    return await until(
        client.quotas.get,
        lambda s: s.usage.revision >= revision,
        f"the replica's counts reach revision {revision}",
    )


async def _exercise(client: AsyncClient, etcd: EtcdMember, namespace: str) -> int:
    """Writes of every counted kind, with overwrites and removals; what remains: 3 keys
    (~2,000, 10 and 20 bytes of value), 1 lease, 1 session, 1 open vote, 2 effects. Returns
    the last revision."""
    await _write_and_delete(client)
    await client.kv.txn({}, [Put("t1", b"x" * 10), Put("t2", b"x" * 20), Put("t3", b"x")])
    await client.kv.txn({}, [Delete("t3")])
    kept = await client.leases.grant(ttl=30, keepalive=False)
    gone = await client.leases.grant(ttl=30, keepalive=False)
    await client.leases.revoke(gone.id)
    began = await client.effects.begin("e1", "run", intent("t", b"1"), lease=kept)
    await client.effects.begin("e2", "run", intent("t", b"2"), lease=kept)
    await client.effects.complete("e1", began.claim, lease=kept, result=b"ok")  # rewritten
    # A lease record rewritten in place (around Accord) is still one lease.
    record = f"accord/ns/{namespace}/leases/{kept.id:016x}"
    etcd.ctl("put", record, "rewritten")
    await client.sessions.open("s1", roots={"notes": "text"})
    await client.sessions.open("s2")
    await client.sessions.delete("s2")
    await client.votes.propose("a?", ["yes", "no"], voters=["x", "y"], voting_period=600)
    closed = await client.votes.propose("b?", ["yes", "no"], voters=["x", "y"], voting_period=600)
    await client.votes.cancel(closed.id)
    return (await client.kv.put("last", b"")).revision


def _assert_exercised(status: QuotaStatus) -> None:
    assert status.usage.keys == 4  # k, t1, t2, last
    assert 2_030 < status.usage.bytes < 2_600
    assert status.usage.leases == 1
    assert status.usage.sessions == 1
    assert status.usage.votes_open == 1
    assert status.usage.effects == 2


async def test_a_namespace_new_to_the_replicas_is_counted_exactly(
    replicas: list[Coordinator], namespace: str, etcd: EtcdMember
) -> None:
    """The namespace's first write finds it (its prev watches start at that write): the
    counts are exact after overwrites and deletes, on each replica, and agree with a
    fresh count of etcd."""
    async with make_client([replicas[0].address], namespace) as client:
        last = await _exercise(client, etcd, namespace)
        followed = await _counted_at(client, last)
    _assert_exercised(followed)
    async with make_client([replicas[1].address], namespace) as other:
        _assert_exercised(await _counted_at(other, last))


async def test_a_namespace_from_before_the_start_is_counted_exactly(
    replicas: list[Coordinator], etcd: EtcdMember, workdir: Path, namespace: str
) -> None:
    """A replica that starts with the namespace in etcd counts it by its first scan, then
    follows it with watches from the scan's next revision."""
    async with make_client([replicas[0].address], namespace) as client:
        await _write_and_delete(client)
    late = start_coordinator(workdir, "late", [etcd.endpoint], ws=False)
    try:
        async with make_client([late.address], namespace) as client:
            before = await client.quotas.get()
            assert before.usage.keys == 1
            last = await _exercise(client, etcd, namespace)
            _assert_exercised(await _counted_at(client, last))
    finally:
        late.terminate()


async def test_the_revision_waits_for_a_new_namespaces_first_counts(
    replicas: list[Coordinator], namespace: str
) -> None:
    """A new namespace's prev watches start behind etcd (caught up by etcd within ~100 ms),
    while the watch of every write has its first write at once: the answer's revision
    does not pass that write before its key and bytes are counted."""
    async with make_client([replicas[0].address], namespace) as client:
        first = await client.kv.put("first", b"x" * 1_000)
        status = await _counted_at(client, first.revision)
    assert status.usage.keys == 1
    assert status.usage.bytes > 1_000
