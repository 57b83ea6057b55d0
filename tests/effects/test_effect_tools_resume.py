"""Crash and resume: a 12-step run whose agent process is SIGKILLed at step 7, after the
step's side effect and before its outcome was recorded, is resumed by another agent
from the journal: steps 1-6 are not run again, step 7 comes back in doubt and is
reconciled with the external system (the side-effect log) instead of being repeated,
and steps 8-12 run once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from accord.client import EffectRun, effect_key
from accord.v1 import effects_pb2
from tests.harness import REPO, Coordinator, effect_agent, make_client, token_env

STEPS, applied, plan = effect_agent.STEPS, effect_agent.applied, effect_agent.plan

RUN = "nightly-report"
CRASH_AT = 7
TTL = 2  # the crashed agent's lease: its claim on step 7 ends with it


def step_key(n: int) -> str:
    return effect_key(RUN, n, "write-step", {"n": n})


async def crash_at_step_7(address: str, namespace: str, log: Path) -> None:
    """Run the agent process until it applied step 7's side effect, then SIGKILL it."""
    agent = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "tests" / "harness" / "effect_agent.py"),
            address,
            namespace,
            RUN,
            str(log),
            str(TTL),
            str(CRASH_AT),
        ],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), **token_env(namespace, "crashing-agent")},
    )
    try:
        assert agent.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(agent.stdout.readline), 60)
        assert line.strip() == f"applied {CRASH_AT}", line
    finally:
        os.kill(agent.pid, signal.SIGKILL)
        agent.wait(10)


async def test_a_crashed_run_resumes_from_its_journal(
    replicas: list[Coordinator], namespace: str, tmp_path: Path
) -> None:
    log = tmp_path / "side-effects.log"
    await crash_at_step_7(replicas[0].address, namespace, log)
    assert [step for step, _ in applied(log)] == list(range(1, CRASH_AT + 1))

    async with make_client([replicas[1].address], namespace, agent="resuming-agent") as accord:
        lease = await accord.leases.grant(ttl=30)
        asked: list[str] = []
        reconcile = effect_agent.reconcile_from(log)

        def reconcile_and_count(key: str) -> object:
            asked.append(key)
            return reconcile(key)

        progress = await EffectRun(accord.effects, RUN, lease).progress()
        assert [e.key for e in progress.done] == [step_key(n) for n in range(1, CRASH_AT)]
        assert progress.resume_at is not None and progress.resume_at.key == step_key(CRASH_AT)
        assert progress.next_step == CRASH_AT
        assert progress.result_of(3, "write-step", {"n": 3}) == {"step": 3}

        run = EffectRun(
            accord.effects,
            RUN,
            lease,
            reconcile=reconcile_and_count,  # type: ignore[arg-type]
            first_step=progress.next_step,
        )
        write_step = plan(run, log)
        # Step 7 is BUSY until the crashed agent's lease ends, then IN_DOUBT: reconciled.
        results = [await write_step(n) for n in range(progress.next_step, STEPS + 1)]

    assert asked == [step_key(CRASH_AT)]
    assert results[0] == {"step": CRASH_AT, "reconciled": True}
    assert results[1:] == [{"step": n} for n in range(CRASH_AT + 1, STEPS + 1)]
    counts = Counter(step for step, _ in applied(log))
    assert counts == Counter(range(1, STEPS + 1)), counts  # every step's effect once
    assert [key for _, key in applied(log)] == [step_key(n) for n in range(1, STEPS + 1)]

    async with make_client([r.address for r in replicas], namespace) as accord:
        final = await EffectRun(accord.effects, RUN, 0).progress()
        assert [e.state for e in final.journal] == [effects_pb2.EFFECT_STATE_SUCCEEDED] * STEPS
        assert final.resume_at is None and final.run.resume_at == ""
        seventh = final.journal[CRASH_AT - 1]
        assert seventh.attempts == 2 and seventh.began.agent_id == "crashing-agent"
        assert seventh.completed.agent_id == "resuming-agent"
        # A replay from step 1 by yet another agent runs nothing: every step is DONE.
        lease = await accord.leases.grant(ttl=30)
        replay = plan(EffectRun(accord.effects, RUN, lease), log)
        assert [await replay(n) for n in range(1, CRASH_AT)] == [
            {"step": n} for n in range(1, CRASH_AT)
        ]
    assert len(applied(log)) == STEPS
