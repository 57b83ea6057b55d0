"""The watch workload under replica and etcd faults: every acknowledged write seen exactly
once, in revision order, across resumes on other replicas; and the validator catching a
replica whose resumed watches lose an event.

Each seed runs the workload (tests/faults/workloads/watches.py) over both session
replicas while a schedule kills and restarts a replica, pauses and resumes one, and kills
and restarts etcd (the session's single member: a full outage), one kind per fixed seed
and two for the random one (tests/faults/runs.py). Run with -s to see
each run's report.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.faults.recorder import Recorder
from tests.faults.replica_faults import Schedule
from tests.faults.runs import counts, faults_for, seeds
from tests.faults.workloads.watches import WatchRun, WatchWorkload, validate
from tests.harness import Coordinator, EtcdMember, start_coordinator

pytestmark = pytest.mark.faults


async def _run(
    workload: WatchWorkload, recorder: Recorder, schedule: Schedule | None, duration: float = 0
) -> WatchRun:
    stop = asyncio.Event()
    running = asyncio.create_task(workload.run(recorder, stop))
    try:
        if schedule is not None:
            await schedule.run()
        await asyncio.sleep(duration)
    finally:
        stop.set()
    return await running


def _report(run: WatchRun) -> str:
    return "; ".join(
        f"watcher {w.index}: {len(w.events)} events, {w.resumes} resumes" for w in run.watchers
    )


@pytest.mark.parametrize("seed", seeds())
async def test_watches_see_every_write_once_under_faults(
    seed: int, live_replicas: list[Coordinator], etcd: EtcdMember, namespace: str
) -> None:
    print(f"seed={seed}")
    schedule = Schedule(live_replicas, [etcd], faults_for(seed), seed)
    workload = WatchWorkload([r.address for r in live_replicas], namespace, seed)
    recorder = Recorder()
    origin = time.monotonic()
    run = await _run(workload, recorder, schedule)
    started = time.monotonic()
    problems = validate(run)
    checked = time.monotonic() - started
    print(
        f"watches seed={seed}: {counts(recorder)}; {_report(run)}; faults: "
        f"{schedule.timeline(origin)}; validator {checked:.3f}s; verdict "
        f"{'valid' if not problems else f'{len(problems)} PROBLEMS'}"
    )
    assert recorder.counts["ok"] > 50, "the workload made too little progress to mean much"
    assert sum(w.resumes for w in run.watchers) > 0
    assert problems == []


async def test_validator_catches_a_resumed_watch_losing_an_event(
    etcd: EtcdMember, replicas: list[Coordinator], workdir: Path, namespace: str
) -> None:
    """A replica with watch.drop_one (ACCORD_TEST_BREAK) loses the first event of every
    watch opened at a start_revision: the watchers resuming through it miss writes."""
    broken = start_coordinator(
        workdir, "broken-drop-one", [etcd.endpoint], env={"ACCORD_TEST_BREAK": "watch.drop_one"}
    )
    try:
        workload = WatchWorkload([replicas[0].address, broken.address], namespace, seed=7)
        recorder = Recorder()
        run = await _run(workload, recorder, None, duration=3)
    finally:
        broken.terminate()
    problems = validate(run)
    print(f"watches drop one: {counts(recorder)}; {_report(run)}; {len(problems)} problems:")
    print("\n".join(problems[:10]))
    assert any("missed" in p for p in problems), problems
