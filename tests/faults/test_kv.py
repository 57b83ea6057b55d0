"""The KV register workload under replica and etcd faults, checked for linearizability;
and the checker catching a replica that answers reads from a stale cache.

Each seed runs the workload (tests/faults/workloads/kv.py) over both session replicas
while a schedule kills and restarts a replica, pauses and resumes one, and kills and
restarts etcd (the session's single member: a full outage), one kind per fixed seed and
two for the random one (tests/faults/runs.py). Run with -s to see each run's report.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.faults.recorder import Recorder
from tests.faults.replica_faults import Schedule
from tests.faults.runs import counts, faults_for, seeds
from tests.faults.workloads.kv import KvWorkload
from tests.harness import Coordinator, EtcdMember, start_coordinator
from tests.linearizability import KvRegister, check

pytestmark = pytest.mark.faults


async def _run(
    workload: KvWorkload, recorder: Recorder, schedule: Schedule | None, duration: float = 0
) -> None:
    stop = asyncio.Event()
    running = asyncio.create_task(workload.run(recorder, stop))
    try:
        if schedule is not None:
            await schedule.run()
        await asyncio.sleep(duration)
    finally:
        stop.set()
        await running


@pytest.mark.parametrize("seed", seeds())
async def test_kv_is_linearizable_under_faults(
    seed: int,
    live_replicas: list[Coordinator],
    etcd: EtcdMember,
    namespace: str,
    tmp_path: Path,
) -> None:
    print(f"seed={seed}")
    schedule = Schedule(live_replicas, [etcd], faults_for(seed), seed)
    workload = KvWorkload([r.address for r in live_replicas], namespace, seed)
    recorder = Recorder()
    origin = time.monotonic()
    await _run(workload, recorder, schedule)
    started = time.monotonic()
    result = check(recorder.operations, KvRegister(), timeout=60)
    checked = time.monotonic() - started
    print(
        f"kv seed={seed}: {counts(recorder)}; faults: {schedule.timeline(origin)}; "
        f"checker {checked:.2f}s; verdict "
        f"{'linearizable' if result.ok else 'NOT LINEARIZABLE' if result.ok is False else '?'}"
    )
    if not result.ok:
        recorder.save(tmp_path / "history.jsonl")
    assert recorder.counts["ok"] > 50, "the workload made too little progress to mean much"
    assert result.ok, result.failures


async def test_checker_catches_stale_reads(
    etcd: EtcdMember, replicas: list[Coordinator], workdir: Path, namespace: str
) -> None:
    """A replica with kv.stale_reads (ACCORD_TEST_BREAK) answers gets from what it last
    read: the same workload through it and a sound replica is not linearizable."""
    broken = start_coordinator(
        workdir, "broken-stale-reads", [etcd.endpoint], env={"ACCORD_TEST_BREAK": "kv.stale_reads"}
    )
    try:
        workload = KvWorkload([broken.address, replicas[0].address], namespace, seed=7)
        recorder = Recorder()
        await _run(workload, recorder, None, duration=4)
    finally:
        broken.terminate()
    result = check(recorder.operations, KvRegister(), timeout=60)
    print(f"kv stale reads: {counts(recorder)}; verdict {result.ok}")
    assert result.ok is False
