"""The lease workload under faults (issue 16, workload 6), see
tests/faults/workloads/leases.py: an agent holding locks, presence and keys under one
lease is paused past its TTL (while, by seed, its replica is killed and restarted), then
resumed: everything attached is gone, and it is told. A fixed seed list plus one random
seed (printed; ACCORD_FAULT_SEED forces it). A replica with fencing deliberately broken
lets the resumed agent's fenced write through, which the checker flags."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from accord.client import AsyncClient, LeaseNotFoundError
from tests.faults.workloads import leases
from tests.harness import REPO, Coordinator, EtcdMember, make_client, start_coordinator

pytestmark = pytest.mark.faults

SEEDS = [1, 5, int(os.environ.get("ACCORD_FAULT_SEED", random.randrange(1 << 30)))]
TTL = 2


@dataclass
class Run:
    problems: list[str] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[float, str, str]] = field(default_factory=list)
    # What etcd held in the namespace before and after the resumed agent's calls.
    stored: tuple[list[Any], list[Any]] = ([], [])


async def lease_gone(observer: AsyncClient, lease: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            await observer.leases.time_to_live(lease)
        except LeaseNotFoundError:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"lease {lease} outlived 30 s without keep-alives")


async def pause_past_lease(
    addresses: list[str], namespace: str, etcd: EtcdMember, kill: Coordinator | None
) -> Run:
    run = Run()
    argv = [",".join(addresses), namespace, str(TTL)]
    agent = subprocess.Popen(
        [sys.executable, "-m", "tests.faults.workloads.leases", *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert agent.stdin is not None and agent.stdout is not None
    try:
        line = await asyncio.wait_for(asyncio.to_thread(agent.stdout.readline), 30)
        held = leases.Holdings.parse(line)
        async with make_client(addresses, namespace, agent="observer") as observer:
            for name, token in held.tokens.items():  # it holds what it says
                state, _ = await observer.locks.describe(name)
                assert [(h.lease_id, h.token) for h in state.holders] == [(held.lease, token)]
            os.kill(agent.pid, signal.SIGSTOP)
            run.events.append((time.monotonic(), "pause", "agent"))
            if kill is not None:
                kill.kill()
                run.events.append((time.monotonic(), "kill", kill.name))
            await lease_gone(observer, held.lease)
            run.problems += await leases.lost_everything(observer, held, TTL)
            if kill is not None:
                await asyncio.to_thread(kill.start)
                run.events.append((time.monotonic(), "restart", kill.name))
            before = etcd.stored(namespace)
            os.kill(agent.pid, signal.SIGCONT)
            run.events.append((time.monotonic(), "resume", "agent"))
            agent.stdin.write("check\n")
            agent.stdin.flush()
            answer = await asyncio.wait_for(asyncio.to_thread(agent.stdout.readline), 60)
            run.report = json.loads(answer)
            run.problems += leases.told(run.report)
            run.stored = (before, etcd.stored(namespace))
    finally:
        agent.kill()
        agent.wait(10)
    return run


@pytest.mark.parametrize("seed", SEEDS)
async def test_paused_agent_loses_everything_and_is_told(
    live_replicas: list[Coordinator], etcd: EtcdMember, namespace: str, seed: int
) -> None:
    print(f"seed={seed}")
    rng = random.Random(seed)
    order = rng.sample(live_replicas, len(live_replicas))
    kill = order[0] if rng.random() < 0.5 else None  # the replica it talks to first
    started = time.perf_counter()
    run = await pause_past_lease([r.address for r in order], namespace, etcd, kill)
    print(
        f"leases seed={seed}: {len(run.events)} nemesis events {[e[1:] for e in run.events]}, "
        f"told {run.report}, {time.perf_counter() - started:.1f} s: "
        + ("valid" if not run.problems else "INVALID: " + "; ".join(run.problems))
    )
    assert run.problems == []
    assert run.stored[0] == run.stored[1]  # the refused calls changed nothing in etcd


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
        run = await pause_past_lease([broken.address], namespace, etcd, None)
    finally:
        broken.terminate()
    print(run.problems)
    assert run.problems == ["fenced_write after the lease ended: ok"]
    assert run.stored[0] != run.stored[1]  # the stale write landed
