"""The effect ledger when processes die or stall: a real executor process (see
tests/harness/effect_executor.py) SIGKILLed or SIGSTOPped between Begin and Complete,
and a replica SIGKILLed while Begins are in flight.

- A killed executor's lease ends, and the next caller is told IN_DOUBT with the intent,
  who began it and when; it reconciles and claims it with a higher claim.
- A paused executor outlived by its lease cannot record an outcome once a successor
  claimed the effect: its Complete is refused (NOT_HELD, naming the successor's lease)
  and the successor's outcome stands.
- Begins of the same keys by several agents while a replica dies (SIGKILL) or freezes
  (SIGSTOP, until every Begin is answered elsewhere): over every answer and every retry,
  exactly one agent is told PROCEED per key (with one claim; its own retries are told
  PROCEED again), and every other answer is BUSY naming that claim.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from accord.client import (
    AsyncClient,
    DeadlineExceededError,
    Lease,
    UnavailableError,
)
from accord.client.effects import Began
from accord.v1 import effects_pb2 as E
from tests.harness import REPO, Coordinator, EtcdMember, make_client, token_env, until
from tests.harness.effect_executor import ARGUMENTS, RESULT, SUMMARY, TOOL

pytestmark = pytest.mark.faults

EXECUTOR_TTL = 2  # seconds: the executor's lease, outlived by a kill or a pause
RUN = "run-faults"


@dataclass
class Executor:
    process: subprocess.Popen[str]
    claim: int
    lease_id: int

    async def line(self) -> str:
        assert self.process.stdout is not None
        return (await asyncio.wait_for(asyncio.to_thread(self.process.stdout.readline), 20)).strip()

    async def complete(self) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write("complete\n")
        self.process.stdin.flush()
        return await self.line()


@pytest.fixture
async def executor(replicas: list[Coordinator], namespace: str) -> AsyncIterator[Executor]:
    """An executor process that began "charge-1" (through the first replica) and holds it."""
    process = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "tests" / "harness" / "effect_executor.py"),
            replicas[0].address,
            namespace,
            "charge-1",
            RUN,
            str(EXECUTOR_TTL),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), **token_env(namespace, "executor")},
    )
    try:
        found = Executor(process, 0, 0)
        line = await found.line()
        assert line.startswith("proceed "), line
        found.claim, found.lease_id = (int(w) for w in line.split()[1:])
        yield found
    finally:
        process.kill()
        process.wait(10)


@pytest.fixture
async def successor(replicas: list[Coordinator], namespace: str) -> AsyncIterator[AsyncClient]:
    """The next caller, through the other replica."""
    async with make_client([replicas[1].address], namespace, agent="successor") as client:
        yield client


INTENT = E.Intent(tool=TOOL, arguments=ARGUMENTS, summary=SUMMARY)


async def begin(client: AsyncClient, lease: Lease, *, reconciled: bool = False) -> Began:
    return await client.effects.begin("charge-1", RUN, INTENT, lease=lease, reconciled=reconciled)


async def until_in_doubt(client: AsyncClient, lease: Lease) -> Began:
    """Begin until the answer is no longer BUSY (the executor's lease has ended): each
    answer before is BUSY."""
    seen: list[int] = []

    async def probe() -> Began:
        answer = await begin(client, lease)
        seen.append(answer.outcome)
        return answer

    answer = await until(
        probe, lambda a: a.outcome != E.BEGIN_OUTCOME_BUSY, "the executor's lease to end", 30
    )
    assert set(seen[:-1]) <= {E.BEGIN_OUTCOME_BUSY}, seen
    return answer


def assert_began_by_executor(effect: E.Effect, executor: Executor) -> None:
    """The intent as the executor recorded it, and who began it."""
    assert (effect.intent.tool, effect.intent.arguments, effect.intent.summary) == (
        TOOL,
        ARGUMENTS,
        SUMMARY,
    )
    assert effect.run_id == RUN
    assert effect.began.agent_id == "executor"
    assert effect.began.lease_id == executor.lease_id
    assert effect.began.HasField("at")
    assert effect.claimed.lease_id == executor.lease_id
    assert not effect.HasField("outcome")


async def test_killed_executor_leaves_its_effect_in_doubt(
    executor: Executor, successor: AsyncClient
) -> None:
    executor.process.send_signal(signal.SIGKILL)  # between Begin and Complete
    executor.process.wait(10)
    lease = await successor.leases.grant(ttl=30)
    answer = await until_in_doubt(successor, lease)
    assert answer.outcome == E.BEGIN_OUTCOME_IN_DOUBT
    effect = answer.effect
    assert effect.state == E.EFFECT_STATE_IN_DOUBT
    assert (effect.claim, effect.attempts) == (executor.claim, 1)
    assert_began_by_executor(effect, executor)
    # The run shows where to resume: this effect, in doubt.
    run = await successor.effects.get_run(RUN)
    assert (run.run.in_doubt, run.run.running, run.run.resume_at) == (1, 0, "charge-1")
    # Reconciled (the charge was not found at the payment provider): claimed again.
    claimed = await begin(successor, lease, reconciled=True)
    assert claimed.outcome == E.BEGIN_OUTCOME_PROCEED
    assert claimed.effect.claim > executor.claim
    assert (claimed.effect.attempts, claimed.effect.claimed.lease_id) == (2, lease.id)
    done = await successor.effects.complete(
        "charge-1", claimed.effect.claim, lease=lease, result=b"ok"
    )
    assert done.effect.state == E.EFFECT_STATE_SUCCEEDED


async def test_paused_executor_cannot_complete_over_its_successor(
    executor: Executor, successor: AsyncClient, etcd: EtcdMember, namespace: str
) -> None:
    executor.process.send_signal(signal.SIGSTOP)  # a long stall: its keep-alives stop
    try:
        lease = await successor.leases.grant(ttl=30)
        answer = await until_in_doubt(successor, lease)
        assert answer.outcome == E.BEGIN_OUTCOME_IN_DOUBT
        assert_began_by_executor(answer.effect, executor)
        claimed = await begin(successor, lease, reconciled=True)
        assert claimed.outcome == E.BEGIN_OUTCOME_PROCEED
        assert claimed.effect.claim > executor.claim
    finally:
        executor.process.send_signal(signal.SIGCONT)
    before = etcd.stored(namespace)
    # The executor wakes up and records its outcome: refused, naming the successor.
    assert await executor.complete() == f"refused NOT_HELD {lease.id}"
    assert etcd.stored(namespace) == before
    done = await successor.effects.complete(
        "charge-1", claimed.effect.claim, lease=lease, result=b'{"charge":"by the successor"}'
    )
    assert (done.effect.state, done.replayed) == (E.EFFECT_STATE_SUCCEEDED, False)
    # The executor tries again, now that the effect is complete: the successor's
    # outcome still stands, whatever the executor is told.
    assert (await executor.complete()).split()[0] in {"refused", "replayed"}
    for client in (successor,):
        stored = await client.effects.get("charge-1")
        assert stored.outcome.success == b'{"charge":"by the successor"}'
        assert stored.completed.agent_id == "successor"
        assert stored.claim == claimed.effect.claim
    assert RESULT not in {kv.value for kv in etcd.stored(namespace)}


async def test_paused_executor_cannot_complete_once_in_doubt(
    executor: Executor, successor: AsyncClient, etcd: EtcdMember, namespace: str
) -> None:
    """Woken after its lease ended and before anyone claimed the effect: its Complete is
    refused all the same (its claim ended with its lease), and the effect stays in doubt
    for whoever reconciles it."""
    executor.process.send_signal(signal.SIGSTOP)
    try:
        lease = await successor.leases.grant(ttl=30)
        answer = await until_in_doubt(successor, lease)
        assert answer.outcome == E.BEGIN_OUTCOME_IN_DOUBT
    finally:
        executor.process.send_signal(signal.SIGCONT)
    before = etcd.stored(namespace)
    assert await executor.complete() == f"refused NOT_HELD {executor.lease_id}"
    assert etcd.stored(namespace) == before
    stored = await successor.effects.get("charge-1")
    assert (stored.state, stored.claim) == (E.EFFECT_STATE_IN_DOUBT, executor.claim)


# --- a replica killed while Begins are in flight ---------------------------------------

CONTENDERS = 3
KEYS = 40


@dataclass(frozen=True)
class Answered:
    agent: int
    key: str
    outcome: int
    claim: int
    claimed_lease: int
    attempt: int  # 0: the first Begin answered at once; more: after retries


@pytest.mark.parametrize("fault", ["kill", "pause"])
async def test_begins_through_a_dying_replica_proceed_once_per_key(
    live_replicas: list[Coordinator], namespace: str, fault: str
) -> None:
    """kill: SIGKILL (calls in flight there fail at once and are sent again elsewhere);
    pause: SIGSTOP until every Begin is answered (calls in flight there reach their
    deadline with no answer, then go to the other replica), then SIGCONT: whatever the
    frozen replica had begun resumes after the others answered."""
    addresses = [r.address for r in live_replicas]
    clients = [make_client(addresses, namespace, agent=f"c{i}") for i in range(CONTENDERS)]
    answers: list[Answered] = []
    errors: list[str] = []
    in_flight = 0
    try:
        leases = [await c.leases.grant(ttl=30) for c in clients]
        started = asyncio.Event()

        async def begin_until_answered(agent: int, key: str, gate: asyncio.Semaphore) -> None:
            """Begin the key until answered (the client resends a Begin that got no
            answer; this resends what it gave up on), then once more: a retry."""
            nonlocal in_flight
            async with gate:
                for ask in range(2):
                    for attempt in range(20):
                        in_flight += 1
                        try:
                            answer = await clients[agent].effects.begin(
                                key, RUN, INTENT, lease=leases[agent]
                            )
                        except (UnavailableError, DeadlineExceededError) as error:
                            errors.append(f"c{agent} {key} attempt {attempt}: {error!r}")
                            continue
                        finally:
                            in_flight -= 1
                        answers.append(
                            Answered(
                                agent, key, answer.outcome, answer.effect.claim,
                                answer.effect.claimed.lease_id, ask + attempt,
                            )
                        )  # fmt: skip
                        if len(answers) >= KEYS * CONTENDERS // 4:
                            started.set()
                        break
                    else:
                        raise AssertionError(f"c{agent} got no answer for {key}: {errors[-3:]}")

        async def contend(agent: int) -> None:
            # Every contender walks the keys in the same order, 8 at a time, so Begins
            # of a key from all of them meet.
            gate = asyncio.Semaphore(8)
            await asyncio.gather(
                *(begin_until_answered(agent, f"step-{k}", gate) for k in range(KEYS))
            )

        racing = [asyncio.create_task(contend(a)) for a in range(CONTENDERS)]
        await asyncio.wait_for(started.wait(), 60)
        if fault == "kill":
            live_replicas[0].kill()  # with Begins in flight through it
        else:
            live_replicas[0].pause()
        in_flight_at_kill, answered_at_kill = in_flight, len(answers)
        try:
            await asyncio.wait_for(asyncio.gather(*racing), 120)
        finally:
            if fault == "pause":
                live_replicas[0].resume()
        assert len(answers) == 2 * KEYS * CONTENDERS
        assert in_flight_at_kill > 0 and answered_at_kill < len(answers)

        lease_of = {leases[a].id: a for a in range(CONTENDERS)}
        for k in range(KEYS):
            key = f"step-{k}"
            mine = [a for a in answers if a.key == key]
            proceeds = {(a.agent, a.claim) for a in mine if a.outcome == E.BEGIN_OUTCOME_PROCEED}
            assert len(proceeds) == 1, f"{key}: PROCEED to {proceeds}; all answers {mine}"
            ((winner, claim),) = proceeds
            for a in mine:
                # The winner's own Begins (its retry, and a resend of a Begin whose answer
                # was lost with the replica) are told PROCEED again; the others BUSY.
                told = E.BEGIN_OUTCOME_PROCEED if a.agent == winner else E.BEGIN_OUTCOME_BUSY
                assert a.outcome == told, a
                assert (lease_of[a.claimed_lease], a.claim) == (winner, claim), a
            stored = await clients[winner].effects.get(key)
            assert (stored.state, stored.claim, stored.attempts) == (
                E.EFFECT_STATE_RUNNING,
                claim,
                1,
            )
            # The winner's claim is good: its Complete records the outcome.
            done = await clients[winner].effects.complete(
                key, claim, lease=leases[winner], result=b"1"
            )
            assert done.effect.state == E.EFFECT_STATE_SUCCEEDED
        run = await clients[0].effects.get_run(RUN)
        assert (run.run.effects, run.run.succeeded) == (KEYS, KEYS)
    finally:
        for c in clients:
            await c.close()
