"""The KV register workload under faults, checked for linearizability; and the checker
catching a replica that answers reads from a stale cache.

The runs share one fault cluster (tests/faults/cluster.py: 3 etcd members, 2 replicas,
every link through a proxy). Each seed runs the workload (tests/faults/workloads/kv.py)
through the client links while its plan's faults (tests/faults/runs.py) are injected in
turn: a replica killed and restarted, a replica paused and resumed, an etcd member killed
and restarted (the quorum kept), a replica cut off etcd, the clients cut off a replica.
Run with -s to see each run's report.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.cluster import FaultCluster, fault_cluster
from tests.faults.nemesis import Events
from tests.faults.recorder import Recorder
from tests.faults.runs import (
    counts,
    inject_in_turn,
    kinds_for,
    nemeses,
    run_during,
    seeds,
    timeline,
)
from tests.faults.workloads.kv import KvWorkload
from tests.harness import start_coordinator
from tests.linearizability import KvRegister, check

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultCluster]:
    with fault_cluster(tmp_path_factory.mktemp("kv-faults")) as started:
        yield started


@pytest.mark.parametrize("seed", seeds())
async def test_kv_is_linearizable_under_faults(
    seed: int, cluster: FaultCluster, namespace: str, tmp_path: Path
) -> None:
    print(f"seed={seed}")
    events = Events()
    faults = nemeses(kinds_for(seed), cluster, events, seed)
    workload = KvWorkload(cluster.client_addresses(), namespace, seed)
    recorder = Recorder()
    origin = time.monotonic()
    await run_during(workload.run, recorder, inject_in_turn(faults, seed))
    started = time.monotonic()
    result = check(recorder.operations, KvRegister(), timeout=60)
    checked = time.monotonic() - started
    verdict = {True: "linearizable", False: "NOT LINEARIZABLE", None: "unknown (timeout)"}
    print(
        f"kv seed={seed}: {counts(recorder)}; faults: {timeline(events, origin)}; "
        f"checker {checked:.2f}s; verdict {verdict[result.ok]}"
    )
    if not result.ok:
        recorder.save(tmp_path / "history.jsonl")
        print(f"history: {tmp_path / 'history.jsonl'}")
    assert events.count("start") == len(faults), "a fault was skipped"
    assert recorder.counts["ok"] > 50, "the workload made too little progress to mean much"
    assert result.ok, result.failures


async def test_checker_catches_stale_reads(cluster: FaultCluster, namespace: str) -> None:
    """A replica with kv.stale_reads (ACCORD_TEST_BREAK) answers gets from what it last
    read: the same workload through it and a sound replica is not linearizable."""
    broken = start_coordinator(
        cluster.base,
        "broken-stale-reads",
        cluster.etcd_endpoints(),
        env={"ACCORD_TEST_BREAK": "kv.stale_reads"},
        ws=False,
    )
    try:
        addresses = [broken.address, cluster.direct_addresses()[0]]
        workload = KvWorkload(addresses, namespace, seed=7)
        recorder = Recorder()
        await run_during(workload.run, recorder, asyncio.sleep(4))
    finally:
        broken.kill()
    result = check(recorder.operations, KvRegister(), timeout=60)
    print(f"kv stale reads: {counts(recorder)}; verdict {result.ok}")
    assert result.ok is False
