"""The fenced-counter workload under faults (issue 16, workload 2), checked by
tests/faults/workloads/locks_check.py: a fixed seed list plus one random seed (printed;
ACCORD_FAULT_SEED forces it), each a short run against the session's two replicas while
a replica is killed and restarted or paused, and a holder is paused past its lease.
Then the same workload against a replica with fencing deliberately broken must be
flagged."""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path

import pytest

from tests.faults.workloads import locks
from tests.harness import Coordinator, EtcdMember, start_coordinator

pytestmark = pytest.mark.faults

SEEDS = [1, 2, int(os.environ.get("ACCORD_FAULT_SEED", random.randrange(1 << 30)))]
DURATION = 8.0


def replica_faults(replicas: list[Coordinator]) -> locks.Nemesis:
    """Every ~2 s one replica is killed and restarted, or paused and resumed (never both
    at once: one replica always serves)."""

    async def run(
        rng: random.Random, events: list[tuple[float, str, str]], duration: float
    ) -> None:
        end = time.monotonic() + duration
        while time.monotonic() + 2 < end:
            await asyncio.sleep(rng.uniform(0.5, 1.5))
            replica = rng.choice(replicas)
            if rng.random() < 0.5:
                replica.kill()
                events.append((time.monotonic(), "kill", replica.name))
                await asyncio.sleep(rng.uniform(0.2, 1.0))
                await asyncio.to_thread(replica.start)
                events.append((time.monotonic(), "restart", replica.name))
            else:
                replica.pause()
                events.append((time.monotonic(), "pause", replica.name))
                try:
                    await asyncio.sleep(rng.uniform(0.5, 2.0))
                finally:
                    replica.resume()
                events.append((time.monotonic(), "resume", replica.name))

    return run


@pytest.mark.parametrize("seed", SEEDS)
async def test_counter_under_replica_faults_and_paused_holders(
    live_replicas: list[Coordinator], namespace: str, seed: int
) -> None:
    print(f"seed={seed}")
    report = await locks.run(
        [r.address for r in live_replicas],
        namespace,
        seed=seed,
        duration=DURATION,
        nemesis=replica_faults(live_replicas),
    )
    print(report.summary())
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
