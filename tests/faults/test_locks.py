"""The fenced-counter workload under faults (issue 16, workload 2), checked by
tests/faults/workloads/locks_check.py: a fixed seed list plus one random seed (printed;
ACCORD_FAULT_SEED forces it), each a short run on a fault cluster (3 etcd members, 2
replicas, proxied links: tests.faults.cluster) while tests.faults.nemesis kills and
pauses replicas, kills an etcd member and partitions links, and a holder is paused past
its lease.
Then the same workload against a replica with fencing deliberately broken must be
flagged."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.cluster import FaultCluster, fault_cluster
from tests.faults.nemesis import (
    Events,
    KillEtcdMember,
    Nemesis,
    kill_replica,
    partition_clients,
    partition_from_etcd,
    pause_replica,
)
from tests.faults.seeds import random_seed
from tests.faults.workloads import locks
from tests.harness import EtcdMember, start_coordinator

pytestmark = pytest.mark.faults

# 787209365: its faults ended the process agent's lease while it waited for its first
# grant, leaving it no turn before the schedule ended (the run now goes on until it had one).
SEEDS = [1, 2, 787209365, random_seed()]
DURATION = 6.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultCluster]:
    with fault_cluster(tmp_path_factory.mktemp("locks")) as started:
        yield started


def nemeses(events: Events, cluster: FaultCluster, seed: int) -> list[Nemesis]:
    """Replica crashes and pauses, an etcd member killed (the quorum kept), a replica cut
    off etcd, the clients cut off a replica: toggled at random by run_schedule."""
    return [
        kill_replica(events, cluster, seed=seed),
        pause_replica(events, cluster, 0),
        pause_replica(events, cluster, 1),
        KillEtcdMember(events, cluster, rng=random.Random(seed)),
        partition_from_etcd(events, cluster, 0),
        partition_clients(events, cluster, 1),
    ]


@pytest.mark.parametrize("seed", SEEDS)
async def test_counter_under_faults_and_paused_holders(
    cluster: FaultCluster, namespace: str, seed: int, tmp_path: Path
) -> None:
    print(f"seed={seed}")
    events = Events()
    report = await locks.run(
        cluster.client_addresses(),
        namespace,
        seed=seed,
        duration=DURATION,
        nemeses=nemeses(events, cluster, seed),
        events=events,
    )
    print(report.summary())
    print([(e.nemesis, e.action, e.target) for e in events.events])
    if not report.verdict.ok:
        report.recorder.save(tmp_path / "history.jsonl")
        print(f"history: {tmp_path / 'history.jsonl'}")
    assert report.verdict.ok, report.summary()
    assert report.stale, "the holder was never paused past its lease"
    assert all(s.reason in ("FENCED", "LEASE_NOT_FOUND") for s in report.stale), report.stale
    assert report.recorder.counts["ok"] > 10


async def test_checker_flags_a_replica_that_skips_the_fence(
    etcd: EtcdMember, workdir: Path, namespace: str
) -> None:
    """ACCORD_TEST_BREAK=fencing.skip_compare: the paused holder's stale write is
    accepted, which the checker sees as a stale fence and a lost increment."""
    broken = start_coordinator(
        workdir,
        "broken-fencing",
        [etcd.endpoint],
        env={"ACCORD_TEST_BREAK": "fencing.skip_compare"},
    )
    try:
        report = await locks.run(
            [broken.address], namespace, seed=SEEDS[0], duration=3.0, stall_chance=0.0
        )
    finally:
        broken.terminate()
    print(report.summary())
    assert not report.verdict.ok
    problems = " ".join(report.verdict.problems)
    assert "stale fence accepted" in problems and "lost increment" in problems, problems
    assert "a holder whose lease lapsed wrote" in problems, problems
    assert "acknowledged adds missing from the set" in problems, problems
