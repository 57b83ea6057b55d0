"""A 12-step agent run for the effect ledger's crash and resume tests: each step is a
wrapped tool that appends "STEP KEY" to a side-effect log (the external system), so a
test counts how often each step really ran.

As a process (`python tests/harness/effect_agent.py ADDRESS NAMESPACE RUN LOG TTL
CRASH_AT`), it takes a lease of TTL seconds and runs the steps; at step CRASH_AT it applies
the side effect, prints "applied CRASH_AT" and hangs before recording the outcome, for
the test to SIGKILL it. Tests import `plan` to resume the run in-process.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from accord.client import AsyncClient, EffectRun, FoundOutcome

STEPS = 12


def applied(log: Path) -> list[tuple[int, str]]:
    """The side effects so far: (step, effect key), in the order applied."""
    if not log.exists():
        return []
    lines = [line.split() for line in log.read_text().splitlines() if line.strip()]
    return [(int(step), key) for step, key in lines]


def reconcile_from(log: Path) -> Callable[[str], FoundOutcome | None]:
    """The external system's answer for an in-doubt step: its side effect, if applied."""

    def reconcile(key: str) -> FoundOutcome | None:
        for step, applied_key in applied(log):
            if applied_key == key:
                return FoundOutcome({"step": step, "reconciled": True})
        return None

    return reconcile


def plan(
    run: EffectRun, log: Path, hang_at: int | None = None
) -> Callable[[int], Awaitable[object]]:
    """The run's tool: step n appends its line (then, at hang_at, hangs)."""

    @run.tool(name="write-step")
    async def write_step(n: int, effect_key: str = "") -> dict[str, object]:
        with log.open("a") as out:  # O_APPEND: one line per write, whoever writes
            out.write(f"{n} {effect_key}\n")
            out.flush()
            os.fsync(out.fileno())
        if n == hang_at:
            print(f"applied {n}", flush=True)
            await asyncio.Event().wait()  # killed here, before the outcome is recorded
        return {"step": n}

    return write_step


async def main(address: str, namespace: str, run_id: str, log: Path, ttl: int, crash: int) -> None:
    async with AsyncClient([address], agent_id="crashing-agent", namespace=namespace) as accord:
        lease = await accord.leases.grant(ttl=ttl)
        run = EffectRun(accord.effects, run_id, lease)
        write_step = plan(run, log, hang_at=crash)
        for n in range(1, STEPS + 1):
            await write_step(n)


if __name__ == "__main__":
    address, namespace, run_id, log, ttl, crash = sys.argv[1:7]
    asyncio.run(main(address, namespace, run_id, Path(log), int(ttl), int(crash)))
