"""The fenced-counter workload (issue 16, workload 2): agents take one lock, read a
counter and a set from KV, and write the counter plus one and the set plus their own
element in one KV transaction fenced by their grant; then release.

In-process agents (one AsyncClient each, over every replica) run rounds until told to
stop, recording each write with tests.faults.recorder. One more agent runs in its own
process (`python -m tests.faults.workloads.locks ADDRESSES NAMESPACE TTL`) so that a
nemesis can pause it: `ProcessAgent.stall_past_lease` makes it take the lock and read,
freezes it (SIGSTOP) while it holds, waits until its lease has ended and another holder
has written, resumes it, and lets it make its now stale write, which must be refused.
Every run has such a write: one whose faults kept the agent from the lock goes on past
its schedule, healed, until it had one (STALL_GRACE at most). The checker
(locks_check.py) reads what etcd holds afterwards: the counter's history and the final
set.

The process agent speaks one JSON object a line: "round" makes one whole round, "stall"
takes the lock and reads, then answers {"holding": token} and writes on the next line;
each write's outcome comes back as {"op", "token", "outcome", "revision", "reason",
"call", "ret"} (time.monotonic(), which every process on the machine shares).

Error handling: a round that cannot get the lock (a timeout, a lost lease, a replica
down) makes no write and records nothing; a lost lease is replaced before the next
round. A write's error is classified by tests.faults.recorder (refused: no effect;
ambiguous: indeterminate).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from accord.client import AccordError, AsyncClient, Lease, LeaseNotFoundError, Put
from accord.client.locks import Grant
from tests.faults.nemesis import Events, Nemesis, run_schedule
from tests.faults.recorder import Recorder, ambiguous
from tests.faults.workloads.locks_check import StaleAttempt, Verdict, Version, check, encode
from tests.harness import make_client
from tests.linearizability import INDETERMINATE, Operation

LOCK = "counter-lock"
COUNTER = "counter"
SET = "set"
# Agents' leases: long enough that a replica killed or paused does not end them.
LEASE_TTL = 6
# Seconds a run goes on after its schedule, at most, until the process agent has made
# its stale write (the one a run exists for).
STALL_GRACE = 30.0


@dataclass
class Held:
    """A grant and what its holder read under it."""

    grant: Grant
    count: int
    elements: list[str]


async def take(client: AsyncClient, lease: Lease, wait: float = 5) -> Held:
    """The lock, then the counter and the set as they are now."""
    grant = await client.locks.acquire(LOCK, lease, wait=wait)
    counter, members = await asyncio.gather(client.kv.get(COUNTER), client.kv.get(SET))
    count = Version.decode(0, counter.value).count if counter else 0
    elements = members.value.decode().split(",") if members and members.value else []
    return Held(grant, count, elements)


async def write(client: AsyncClient, held: Held, op: str) -> int:
    """The fenced write of count + 1 and the set plus op; the revision it applied at."""
    value = encode(held.count + 1, held.grant.token, op)
    done = await client.kv.txn(
        {}, [Put(COUNTER, value), Put(SET, ",".join([*held.elements, op]))], fences=[held.grant]
    )
    return int(done.revision)


async def release(client: AsyncClient, held: Held) -> None:
    with contextlib.suppress(AccordError, asyncio.TimeoutError):
        await client.locks.release(held.grant)


async def live_lease(
    client: AsyncClient, lease: Lease | None, ttl: int, *, gone: bool = False
) -> Lease:
    """lease while it lives (gone: a call said it ended), else a new one."""
    if lease is not None and not lease.lost.is_set() and not gone:
        return lease
    if lease is not None:
        with contextlib.suppress(AccordError):
            await lease.revoke()  # stops its keep-alive task
    return await client.leases.grant(ttl=ttl)


async def agent_loop(
    client: AsyncClient, index: int, recorder: Recorder, stop: asyncio.Event
) -> None:
    """One in-process agent's rounds until stop is set."""
    lease: Lease | None = None
    name = f"a{index}"
    gone = False
    while not stop.is_set():
        try:
            lease = await live_lease(client, lease, LEASE_TTL, gone=gone)
            held = await take(client, lease)
        except AccordError as error:
            gone = isinstance(error, LeaseNotFoundError)
            await asyncio.sleep(0.1)
            continue
        gone = False
        op = f"{name}-{uuid.uuid4().hex[:8]}"
        try:
            async with recorder.op(index, ("incr", op, name, held.grant.token), COUNTER) as done:
                done.output = await write(client, held, op)
        finally:
            await release(client, held)
    if lease is not None:
        with contextlib.suppress(AccordError):
            await lease.revoke(timeout=5)


@dataclass
class ProcessAgent:
    """The agent in its own process, driven line by line (see the module docstring)."""

    addresses: list[str]
    namespace: str
    index: int
    ttl: int = 2
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[str] | None = None

    def start(self) -> None:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
        self.popen = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.faults.workloads.locks",
                ",".join(self.addresses),
                self.namespace,
                str(self.ttl),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=root,
            env={**os.environ, "PYTHONPATH": root, **self.env},
        )

    def stop(self) -> None:
        if self.popen is not None:
            self.popen.kill()
            self.popen.wait(10)

    async def _ask(self, line: str, timeout: float = 60) -> dict[str, Any]:
        assert self.popen is not None and self.popen.stdin and self.popen.stdout
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()
        answer = await asyncio.wait_for(asyncio.to_thread(self.popen.stdout.readline), timeout)
        if not answer:
            raise RuntimeError("the agent process ended")
        found: dict[str, Any] = json.loads(answer)
        return found

    def _record(self, recorder: Recorder, answer: dict[str, Any]) -> None:
        outcome = answer["outcome"]
        recorder.counts[outcome] += 1
        if outcome == "failed":
            return
        ok = outcome == "ok"
        recorder.operations.append(
            Operation(
                self.index,
                ("incr", answer["op"], "process", answer["token"]),
                answer["revision"] if ok else INDETERMINATE,
                answer["call"],
                answer["ret"] if ok else None,
                COUNTER,
            )
        )

    async def round(self, recorder: Recorder) -> None:
        answer = await self._ask("round")
        if "outcome" in answer:
            self._record(recorder, answer)

    async def stall_past_lease(
        self, observer: AsyncClient, recorder: Recorder, events: Events
    ) -> StaleAttempt | None:
        """Pause the agent while it holds the lock, until its lease is gone and another
        holder has written; then resume it for its stale write (None: it got no lock)."""
        assert self.popen is not None
        holding = await self._ask("stall")
        if "holding" not in holding:
            return None
        token = int(holding["holding"])
        began = time.monotonic()
        os.kill(self.popen.pid, signal.SIGSTOP)
        events.note(began, "pause-holder", "start", f"process-agent (token {token})")
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # until another holder wrote after us
                with contextlib.suppress(AccordError):
                    counter = await observer.kv.get(COUNTER)
                    if counter and Version.decode(0, counter.value).token > token:
                        break
                await asyncio.sleep(0.2)
            else:
                raise AssertionError("no other holder wrote while the holder was paused")
        finally:
            began = time.monotonic()
            os.kill(self.popen.pid, signal.SIGCONT)
            events.note(began, "pause-holder", "stop", "process-agent")
        answer = await self._ask("write")
        self._record(recorder, answer)
        return StaleAttempt(
            answer["op"], token, answer["outcome"] != "failed", answer.get("reason", "")
        )


async def _serve(addresses: list[str], namespace: str, ttl: int) -> None:
    """The process agent's side: answer each line of stdin (see the module docstring)."""
    loop = asyncio.get_running_loop()
    lease: Lease | None = None
    gone = False
    async with AsyncClient(addresses, agent_id="process-agent", namespace=namespace) as client:
        while line := (await loop.run_in_executor(None, sys.stdin.readline)).strip():
            answer: dict[str, Any] = {}
            try:
                lease = await live_lease(client, lease, ttl, gone=gone)
                held = await take(client, lease)
                gone = False
            except AccordError as error:
                gone = isinstance(error, LeaseNotFoundError)
                answer = {"error": type(error).__name__}
            else:
                if line == "stall":
                    print(json.dumps({"holding": held.grant.token}), flush=True)
                    await loop.run_in_executor(None, sys.stdin.readline)
                answer = await _timed_write(client, held)
                await release(client, held)
            print(json.dumps(answer), flush=True)


async def _timed_write(client: AsyncClient, held: Held) -> dict[str, Any]:
    op = f"p-{uuid.uuid4().hex[:8]}"
    answer: dict[str, Any] = {"op": op, "token": held.grant.token, "call": time.monotonic()}
    try:
        answer["revision"] = await write(client, held, op)
        answer["outcome"] = "ok"
    except AccordError as error:
        answer["outcome"] = "indeterminate" if ambiguous(error) else "failed"
        answer["reason"] = error.reason
    answer["ret"] = time.monotonic()
    return answer


async def read_back(client: AsyncClient) -> tuple[list[Version], set[str]]:
    """Every applied version of the counter (KV history, all pages) and the final set."""
    versions: list[Version] = []
    before = 0
    while True:
        page = await client.kv.history(COUNTER, limit=500, before_revision=before)
        if page.truncated_by_compaction:
            raise AssertionError("the counter's history was compacted: cannot check it")
        versions += [Version.decode(e.revision, e.kv.value) for e in page.entries]
        if not page.next_before_revision:
            break
        before = page.next_before_revision
    members = await client.kv.get(SET)
    elements = members.value.decode().split(",") if members and members.value else []
    return versions, set(elements)


@dataclass
class Report:
    seed: int
    recorder: Recorder
    stale: list[StaleAttempt]
    events: Events
    verdict: Verdict
    check_seconds: float

    def summary(self) -> str:
        c = self.recorder.counts
        return (
            f"locks seed={self.seed}: {len(self.recorder.operations) + c['failed']} writes, "
            f"ok={c['ok']} failed={c['failed']} indeterminate={c['indeterminate']}, "
            f"{len(self.stale)} stale holder writes, {self.events.count()} nemesis events, "
            f"applied={self.verdict.applied}, checked in {self.check_seconds * 1000:.1f} ms: "
            + ("valid" if self.verdict.ok else "INVALID: " + "; ".join(self.verdict.problems))
        )


async def run(
    addresses: list[str],
    namespace: str,
    *,
    seed: int,
    duration: float,
    nemeses: Sequence[Nemesis] = (),
    events: Events | None = None,
    interval: float = 1.5,
    agents: int = 3,
    stall_chance: float = 0.3,
    agent_env: dict[str, str] | None = None,
) -> Report:
    """Agents and the process agent for `duration` seconds while tests.faults.nemesis's
    run_schedule toggles `nemeses` (same seed, every ~`interval` seconds; all healed at
    the end), then the checker."""
    rng = random.Random(seed)
    events = events if events is not None else Events()
    recorder, stale = Recorder(), list[StaleAttempt]()
    # The process agent's driver stops first: a holder it has just paused needs the
    # other agents to take the lock after it before it may resume.
    stop_driver, stop_agents = asyncio.Event(), asyncio.Event()
    stalled = asyncio.Event()  # the process agent has been paused past its lease once
    clients = [make_client(addresses, namespace, agent=f"a{i}", timeout=2) for i in range(agents)]
    process = ProcessAgent(addresses, namespace, agents, env=agent_env or {})
    process.start()

    async def drive_process() -> None:
        while not stop_driver.is_set():
            if not stalled.is_set() or rng.random() < stall_chance:
                attempt = await process.stall_past_lease(clients[0], recorder, events)
                stale.extend([attempt] if attempt else [])
                if attempt is not None:
                    stalled.set()
            else:
                await process.round(recorder)

    loops: list[asyncio.Task[None]] = []
    driver = asyncio.create_task(drive_process())
    try:
        loops += [
            asyncio.create_task(agent_loop(c, i, recorder, stop_agents))
            for i, c in enumerate(clients)
        ]
        if nemeses:
            await run_schedule(nemeses, seed, duration, interval)
        else:
            await asyncio.sleep(duration)
        # A schedule may keep the process agent from the lock for the whole run (seed
        # 787209365: both replicas out of reach of etcd for ~3 s, longer than its lease,
        # while it waited for its first grant), so it gets its stale holder's turn on the
        # healed cluster, the other agents still taking the lock.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stalled.wait(), STALL_GRACE)
        stop_driver.set()
        await driver
        stop_agents.set()
        await asyncio.gather(*loops)
        versions, final_set = await read_back(clients[0])
    finally:
        for task in [*loops, driver]:
            task.cancel()
        await asyncio.gather(*loops, driver, return_exceptions=True)
        process.stop()
        for c in clients:
            await c.close()
    started = time.perf_counter()
    verdict = check(recorder.operations, stale, versions, final_set)
    return Report(seed, recorder, stale, events, verdict, time.perf_counter() - started)


if __name__ == "__main__":
    asyncio.run(_serve(sys.argv[1].split(","), sys.argv[2], int(sys.argv[3])))
