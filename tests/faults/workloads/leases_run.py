"""One run of the lease workload (tests/faults/workloads/leases.py), shared by its CI test
(tests/faults/test_leases.py) and the soak command (tests/faults/soak.py): the agent
process grants a lease and holds locks, presence and keys under it; it is paused
(SIGSTOP) until the lease is gone, with a fault injected meanwhile if given; an observer
checks that everything attached went with it; the agent is resumed and reports what it
was told. Kept apart from leases.py, which the agent process runs and which imports
nothing of the test harness.

Error handling: an agent that does not print its holdings in 30 s, or its report in
60 s, raises TimeoutError; a lease that outlives 30 s without keep-alives raises
AssertionError; a problem the checkers find is in Run.problems, never raised.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from accord.client import AccordError, AsyncClient, LeaseNotFoundError
from tests.faults.nemesis import Events, Nemesis
from tests.faults.workloads import leases
from tests.harness import REPO, make_client

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
        except AccordError:
            pass  # a replica under a fault: ask again
        await asyncio.sleep(0.2)
    raise AssertionError(f"lease {lease} outlived 30 s without keep-alives")


async def pause_past_lease(
    addresses: list[str],
    namespace: str,
    stored: Callable[[str], list[Any]],
    fault: Nemesis | None,
    events: Events,
) -> Run:
    """The agent paused until its lease is gone, with `fault` injected meanwhile (healed
    before the agent resumes). stored(namespace): what etcd holds in it (e.g.
    EtcdMember.stored), read before and after the resumed agent's calls."""
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
        # The observer talks to the replica the agent does not use first (the one a fault
        # may target), when there are two.
        watching = addresses[1:] or addresses
        async with make_client(watching, namespace, agent="observer") as observer:
            for name, token in held.tokens.items():  # it holds what it says
                state, _ = await observer.locks.describe(name)
                assert [(h.lease_id, h.token) for h in state.holders] == [(held.lease, token)]
            began = time.monotonic()
            os.kill(agent.pid, signal.SIGSTOP)
            events.note(began, "pause-agent", "start", "leased-agent")
            if fault is not None:
                await fault.start()
            try:
                await lease_gone(observer, held.lease)
                run.problems += await leases.lost_everything(observer, held, TTL)
            finally:
                if fault is not None:
                    await fault.stop()
            before = stored(namespace)
            began = time.monotonic()
            os.kill(agent.pid, signal.SIGCONT)
            events.note(began, "pause-agent", "stop", "leased-agent")
            agent.stdin.write("check\n")
            agent.stdin.flush()
            answer = await asyncio.wait_for(asyncio.to_thread(agent.stdout.readline), 60)
            run.report = json.loads(answer)
            run.problems += leases.told(run.report)
            run.stored = (before, stored(namespace))
    finally:
        agent.kill()
        agent.wait(10)
    return run
