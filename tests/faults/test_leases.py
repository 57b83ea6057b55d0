"""The lease workload under faults (issue 16, workload 6), see
tests/faults/workloads/leases.py: an agent holding locks, presence and keys under one
lease is paused past its TTL, then resumed: everything attached is gone, and it is told.
On a fault cluster (3 etcd members, 2 replicas, proxied links), each seed chooses the
fault made during the pause (none, its replica killed, an etcd member killed, its
replica cut off etcd): a fixed seed list covering each, plus one random seed (printed;
ACCORD_FAULT_SEED forces it). A replica with fencing deliberately broken lets the
resumed agent's fenced write through, which the checker flags."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.cluster import FaultCluster, fault_cluster
from tests.faults.nemesis import (
    Events,
    KillEtcdMember,
    kill_replica,
    partition_from_etcd,
    pause_replica,
)
from tests.faults.seeds import random_seed
from tests.faults.workloads.leases_run import TTL, pause_past_lease
from tests.harness import EtcdMember, make_client, start_coordinator

pytestmark = pytest.mark.faults

SEEDS = [3, 4, 6, random_seed()]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultCluster]:
    with fault_cluster(tmp_path_factory.mktemp("leases")) as started:
        yield started


@pytest.mark.parametrize("seed", SEEDS)
async def test_paused_agent_loses_everything_and_is_told(
    cluster: FaultCluster, namespace: str, seed: int
) -> None:
    """By seed, while the agent is paused: nothing more, the replica it talks to first
    killed, an etcd member killed, or that replica cut off etcd."""
    print(f"seed={seed}")
    rng = random.Random(seed)
    first = rng.randrange(len(cluster.replicas))
    addresses = cluster.client_addresses()
    addresses.insert(0, addresses.pop(first))
    events = Events()
    fault = rng.choice(
        [
            None,
            kill_replica(events, cluster, first),
            KillEtcdMember(events, cluster, rng=rng),
            partition_from_etcd(events, cluster, first),
        ]
    )
    started = time.perf_counter()
    run = await pause_past_lease(addresses, namespace, cluster.members[0].stored, fault, events)
    run.events = [(e.began, e.nemesis, f"{e.action} {e.target}") for e in events.events]
    print(
        f"leases seed={seed}: {events.count()} nemesis events {[e[1:] for e in run.events]}, "
        f"told {run.report}, {time.perf_counter() - started:.1f} s: "
        + ("valid" if not run.problems else "INVALID: " + "; ".join(run.problems))
    )
    assert run.problems == []
    assert run.stored[0] == run.stored[1]  # the refused calls changed nothing in etcd


async def test_a_live_agent_keeps_its_lease_while_a_replica_is_frozen(
    cluster: FaultCluster, namespace: str
) -> None:
    """Each replica in turn is paused for 2.5 TTLs while a live agent keeps its lease
    alive over both: the keep-alive stream on the frozen one is given up (it answers
    nothing) and the lease refreshed through the other, never lapsing. Before, the client
    waited on the frozen stream and the lease expired under a running agent."""
    events = Events()
    addresses = cluster.client_addresses()
    async with make_client(addresses, namespace, agent="live") as agent:
        lease = await agent.leases.grant(ttl=TTL)
        for frozen in range(len(cluster.replicas)):
            other = addresses[1 - frozen]
            async with make_client([other], namespace, agent="observer") as observer:
                pause = pause_replica(events, cluster, frozen)
                await pause.start()
                try:
                    end = time.monotonic() + 2.5 * TTL
                    while time.monotonic() < end:
                        await observer.leases.time_to_live(lease.id)  # LeaseNotFoundError
                        assert not lease.lost.is_set(), lease.lost_reason
                        await asyncio.sleep(0.25)
                finally:
                    await pause.stop()
        await lease.revoke()
    print([(e.nemesis, e.action, e.target) for e in events.events])


async def test_checker_flags_a_replica_that_skips_the_fence(
    etcd: EtcdMember, workdir: Path, namespace: str
) -> None:
    broken = start_coordinator(
        workdir,
        "broken-fencing-leases",
        [etcd.endpoint],
        env={"ACCORD_TEST_BREAK": "fencing.skip_compare"},
    )
    try:
        run = await pause_past_lease([broken.address], namespace, etcd.stored, None, Events())
    finally:
        broken.terminate()
    print(run.problems)
    assert run.problems == ["fenced_write after the lease ended: ok"]
    assert run.stored[0] != run.stored[1]  # the stale write landed
