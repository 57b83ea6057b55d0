"""Where the effect ledger's keys hang and what bounds a run, read straight from etcd:
records, journals, markers and runs on a retention lease of --effects-ttl (re-attached by
each write), claims on the executor's lease; a run holds at most --effects-max-per-run
effects (QUOTA_EXCEEDED beyond it, nothing written)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from accord.client import QuotaExceededError, intent
from tests.effects.conftest import Agent
from tests.harness import Coordinator, EtcdMember, StoredKey, make_client, start_coordinator

WEEK = 7 * 24 * 3600


def granted_ttl(etcd: EtcdMember, lease: int) -> int:
    found = json.loads(etcd.ctl("lease", "timetolive", f"{lease:x}", "-w", "json"))
    return int(found["granted-ttl"])


def by_kind(stored: list[StoredKey], namespace: str) -> dict[str, list[StoredKey]]:
    """The namespace's keys by what they are: effects/, or a run's r, j, c, o, s, x, k..."""
    out: dict[str, list[StoredKey]] = {}
    base = f"accord/ns/{namespace}/".encode()
    for kv in stored:
        tail = kv.key[len(base) :]
        kind, _, rest = tail.partition(b"/")
        if kind == b"runs":
            kind = rest.split(b"\x00")[1][:1]
        out.setdefault(kind.decode(), []).append(kv)
    return out


async def test_records_hang_on_the_retention_lease_and_claims_on_the_executors(
    agents: Agent, etcd: EtcdMember, namespace: str
) -> None:
    a = await agents("alice")
    lease = await a.leases.grant(10)
    began = await a.effects.begin("k", "run", intent("t", b"{}"), lease=lease)
    kinds = by_kind(etcd.stored(namespace), namespace)
    (claim,) = kinds["c"]
    assert claim.lease == lease.id and claim.create_revision == began.claim
    retained = [kv for kind in ("effects", "r", "j", "o") for kv in kinds[kind]]
    assert len(retained) == 4 and all(kv.lease for kv in retained)
    assert {granted_ttl(etcd, kv.lease) for kv in retained} == {WEEK}
    await a.effects.complete("k", began.claim, lease=lease, result=b"", compensation=intent("u"))
    kinds = by_kind(etcd.stored(namespace), namespace)
    assert "c" not in kinds and "o" not in kinds  # the claim and the open marker are gone
    written = [kv for kind in ("effects", "j", "s", "x", "k") for kv in kinds[kind]]
    assert {granted_ttl(etcd, kv.lease) for kv in written} == {WEEK}


@pytest.fixture(scope="module")
def small_runs(etcd: EtcdMember, workdir: Path) -> Iterator[Coordinator]:
    """A replica whose runs hold 3 effects, kept for an hour."""
    replica = start_coordinator(
        workdir,
        "effects-small-runs",
        [etcd.endpoint],
        extra_args=["--effects-max-per-run", "3", "--effects-ttl", "3600"],
    )
    yield replica
    replica.terminate()


async def test_a_full_run_refuses_another_effect(
    small_runs: Coordinator, etcd: EtcdMember, namespace: str
) -> None:
    async with make_client([small_runs.address], namespace, agent="alice") as a:
        lease = await a.leases.grant(10)
        for i in range(3):
            began = await a.effects.begin(f"k{i}", "run", intent("t", b"%d" % i), lease=lease)
            assert began.proceed
        ttl = {
            granted_ttl(etcd, kv.lease) for kv in etcd.stored(namespace) if kv.key.endswith(b"k0")
        }
        assert 3600 in ttl  # the record's retention lease, from --effects-ttl
        before = etcd.stored(namespace)
        with pytest.raises(QuotaExceededError) as full:
            await a.effects.begin("k3", "run", intent("t", b"3"), lease=lease)
        assert full.value.metadata["limit"] == "effects_max_per_run"
        assert etcd.stored(namespace) == before
        # What the run holds is still served, and another run has room.
        assert (await a.effects.begin("k0", "run", intent("t", b"0"), lease=lease)).proceed
        assert (await a.effects.begin("k3", "other", intent("t", b"3"), lease=lease)).proceed
