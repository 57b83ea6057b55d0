"""The substrate's write path against a real etcd: group commit's batching within etcd's
limits, and the one at-most-once write (Writes.apply) with its retention-lease retry."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from accord.coordinator.substrate import Substrate, calls
from accord.coordinator.substrate.errors import (
    BackendUnavailable,
    ConditionFailed,
    EtcdRefused,
    RequestIdReused,
)
from accord.coordinator.substrate.etcd import Etcd
from accord.coordinator.substrate.group_commit import Committed
from accord.coordinator.substrate.idempotency import Prior, fingerprint
from accord.coordinator.substrate.limits import Limits
from accord.coordinator.substrate.txn import (
    absent,
    exists,
    get,
    nested,
    put,
    read,
    txn,
    weight,
)
from accord.v1 import common_pb2
from tests.harness import EtcdMember


@pytest.fixture
async def substrate(etcd: EtcdMember) -> AsyncIterator[Substrate]:
    client = Etcd([etcd.endpoint])
    root = f"test-{uuid.uuid4().hex[:12]}"
    s = Substrate.over(client, root=root, limits=Limits(), retention_ttl=60)
    calls.current.set(
        calls.Call(namespace="ns", agent_id="agent", trace_id="t", deadline=time.monotonic() + 30)
    )
    try:
        yield s
    finally:
        await s.close()
        await client.close()


def _puts(s: Substrate, n: int, tag: str) -> list[object]:
    return [put(s.keys.kv("ns", f"{tag}/{i}"), b"v") for i in range(n)]


async def test_weight_is_etcds_own_limit(substrate: Substrate) -> None:
    """etcd takes a transaction whose path weighs 128 and refuses 129: group commit's
    arithmetic is etcd's, not a guess with a margin."""
    at_limit = txn(when=[absent(b"x")], then=[nested(txn(then=_puts(substrate, 127, "a")))])
    over = txn(when=[absent(b"x")], then=[nested(txn(then=_puts(substrate, 128, "b")))])
    assert (weight(at_limit), weight(over)) == (128, 129)
    assert (await substrate.etcd.txn(at_limit)).succeeded
    with pytest.raises(EtcdRefused):
        await substrate.etcd.txn(over)


async def test_group_commit_fills_batches_up_to_etcds_limit(substrate: Substrate) -> None:
    """150 concurrent writes of weight 30 share batches of at most 98 (98 + 30 = 128)
    without etcd refusing one (a refused batch would be resent one write at a time)."""
    writes = [txn(then=_puts(substrate, 30, f"w{i}")) for i in range(150)]
    done = await asyncio.gather(*(substrate.committer.commit(w, retry=False) for w in writes))
    assert all(c.response.succeeded for c in done)
    assert substrate.committer.batches <= 4, substrate.committer.batches


async def test_a_write_sees_every_earlier_write_to_a_key_it_touches(
    substrate: Substrate,
) -> None:
    """Both writes queue behind an unrelated one in flight. The second only compares the
    first one's key: in one batch its compare would be evaluated before the first write's
    put and wrongly hold."""
    key, other = substrate.keys.kv("ns", "same"), substrate.keys.kv("ns", "other")
    unrelated = substrate.keys.kv("ns", "unrelated")
    _, first, second = await asyncio.gather(
        substrate.committer.commit(txn(then=[put(unrelated, b"0")]), retry=False),
        substrate.committer.commit(txn(then=[put(key, b"1")]), retry=False),
        substrate.committer.commit(txn(when=[absent(key)], then=[put(other, b"2")]), retry=False),
    )
    assert first.response.succeeded
    assert not second.response.succeeded
    assert not (await substrate.etcd.range(read(other))).kvs


async def test_keys_no_batched_write_changes_do_not_keep_readers_apart(
    substrate: Substrate,
) -> None:
    """Two writes that both compare one stable key (a session's alive key, say) share a
    batch when the writer names it stable, and are sent one after the other otherwise."""
    alive = substrate.keys.kv("ns", "alive")
    await substrate.committer.commit(txn(then=[put(alive, b"")]), retry=False)

    async def two_readers(stable: list[bytes], tag: str) -> tuple[int, int]:
        unrelated = substrate.keys.kv("ns", f"{tag}-unrelated")  # keeps the next two queued
        writes = [
            txn(when=[exists(alive)], then=[put(substrate.keys.kv("ns", f"{tag}{i}"), b"v")])
            for i in range(2)
        ]
        _, first, second = await asyncio.gather(
            substrate.committer.commit(txn(then=[put(unrelated, b"")]), retry=False),
            *(substrate.committer.commit(w, retry=False, stable=stable) for w in writes),
        )
        assert first.response.succeeded and second.response.succeeded
        return first.revision, second.revision

    shared = await two_readers([alive], "s")
    assert shared[0] == shared[1]
    apart = await two_readers([], "a")
    assert apart[0] != apart[1]


class _Probe:
    """A mutation for Writes.apply that counts how it was answered."""

    def __init__(
        self, s: Substrate, key: str, refuse: bool = False, outage: bool = False
    ) -> None:
        self.key = s.keys.kv("ns", key)
        self.refuse = refuse
        self.outage = outage
        self.acted = 0
        self.replayed: list[Prior] = []

    def build(self, lease: int) -> object:
        return txn(when=[absent(self.key)], then=[put(self.key, b"v")], otherwise=[get(self.key)])

    async def act(self, committed: Committed) -> int:
        self.acted += 1
        if self.refuse:
            raise ConditionFailed("refused on purpose")
        if self.outage:  # etcd went away while the refusal was being worded
            raise BackendUnavailable("etcd is unavailable")
        return committed.revision

    async def replay(self, prior: Prior) -> int:
        self.replayed.append(prior)
        return -prior.revision

    @staticmethod
    def answer(revision: int) -> common_pb2.ResponseHeader:
        return common_pb2.ResponseHeader(revision=revision)


async def _apply(s: Substrate, probe: _Probe, request_id: str, digest: bytes) -> int:
    return await s.writes.apply(
        probe.build,
        request_id=request_id,
        digest=digest,
        act=probe.act,
        replay=probe.replay,
        answer=probe.answer,
    )


async def _eventually_answered(s: Substrate, request_id: str) -> Prior:
    digest = fingerprint(b"probe")
    deadline = time.monotonic() + 10
    while True:
        prior = await s.writes.prior(request_id, digest)
        assert prior is not None
        if prior.record.answer or time.monotonic() > deadline:
            return prior
        await asyncio.sleep(0.02)


async def test_a_retry_is_answered_from_the_record_and_applies_nothing(
    substrate: Substrate,
) -> None:
    probe = _Probe(substrate, "once")
    digest = fingerprint(b"probe")
    revision = await _apply(substrate, probe, "r1", digest)
    assert probe.acted == 1 and revision > 0
    stored = await _eventually_answered(substrate, "r1")
    assert common_pb2.ResponseHeader.FromString(stored.record.answer).revision == revision
    again = await _apply(substrate, probe, "r1", digest)
    assert probe.acted == 1 and len(probe.replayed) == 1 and again < 0
    assert probe.replayed[0].record.applied
    found = await substrate.etcd.range(read(probe.key))
    assert found.kvs[0].version == 1  # written once


async def test_a_request_id_reused_for_other_content_is_refused(substrate: Substrate) -> None:
    probe = _Probe(substrate, "reuse")
    await _apply(substrate, probe, "r2", fingerprint(b"probe"))
    with pytest.raises(RequestIdReused):
        await _apply(substrate, _Probe(substrate, "other"), "r2", fingerprint(b"other"))
    assert not (await substrate.etcd.range(read(substrate.keys.kv("ns", "other")))).kvs


async def test_a_refusal_is_recorded_and_a_retry_gets_it_again(substrate: Substrate) -> None:
    probe = _Probe(substrate, "refused", refuse=True)
    with pytest.raises(ConditionFailed):
        await _apply(substrate, probe, "r3", fingerprint(b"probe"))
    stored = await _eventually_answered(substrate, "r3")
    assert not stored.record.applied and stored.record.answer
    await _apply(substrate, probe, "r3", fingerprint(b"probe"))
    assert probe.acted == 1 and len(probe.replayed) == 1


async def test_an_outage_while_answering_is_not_recorded_as_the_answer(
    substrate: Substrate,
) -> None:
    probe = _Probe(substrate, "outage", outage=True)
    with pytest.raises(BackendUnavailable):
        await _apply(substrate, probe, "r5", fingerprint(b"probe"))
    await substrate.writes.drain(5)  # any answer being stored is stored by now
    prior = await substrate.writes.prior("r5", fingerprint(b"probe"))
    assert prior is not None and prior.record.applied and not prior.record.answer
    await _apply(substrate, probe, "r5", fingerprint(b"probe"))
    assert probe.acted == 1 and len(probe.replayed) == 1  # rebuilt through replay


async def test_a_lost_retention_lease_costs_one_more_attempt_not_the_write(
    substrate: Substrate,
) -> None:
    lost = await substrate.retention.current()
    await substrate.etcd.lease_revoke(lost)
    probe = _Probe(substrate, "retained")
    assert await _apply(substrate, probe, "r4", fingerprint(b"probe")) > 0
    assert probe.acted == 1
    fresh = await substrate.retention.current()
    assert fresh != lost
    found = await substrate.etcd.range(read(substrate.keys.idem("ns", "agent", "r4")))
    assert found.kvs[0].lease == fresh
