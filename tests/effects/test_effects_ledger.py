"""The effect ledger against the live replicas and etcd: Begin's four answers, exactly one
PROCEED for agents racing through different replicas, Complete fenced by the claim and
replayed, IN_DOUBT after the executor's lease ends, Abort, a BUSY Begin that waits."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from accord.client import (
    BeginOutcome,
    EffectState,
    IntentMismatchError,
    NotFoundError,
    intent,
)
from accord.client.errors import (
    ConditionFailedError,
    FencedError,
    NotHeldError,
)
from accord.v1 import effects_pb2
from tests.effects.conftest import Agent
from tests.harness import EtcdMember

SEND = intent("send_email", b'{"to":"a@example.com"}', "mail Alice")


def held_effect(error: NotHeldError) -> effects_pb2.Effect:
    return next(d for d in error.details if isinstance(d, effects_pb2.Effect))


async def test_proceed_complete_then_done_on_the_other_replica(agents: Agent) -> None:
    a, b = await agents("alice", 0), await agents("bob", 1)
    lease = await a.leases.grant(10)
    began = await a.effects.begin("mail-1", "run-1", SEND, lease=lease)
    assert began.outcome is BeginOutcome.PROCEED
    assert began.claim > 0 and began.effect.began_revision == began.claim
    assert began.effect.began.agent_id == "alice" and began.effect.attempts == 1
    done = await a.effects.complete("mail-1", began.claim, lease=lease, result=b'{"id":7}')
    assert not done.replayed and done.effect.state == EffectState.SUCCEEDED
    other = await b.leases.grant(10)
    again = await b.effects.begin("mail-1", "run-1", SEND, lease=other)
    assert again.outcome is BeginOutcome.DONE
    assert again.effect.outcome.success == b'{"id":7}'
    assert again.effect.completed.agent_id == "alice"
    # A reworded summary is the same tool call.
    reworded = intent(SEND.tool, SEND.arguments, "send the mail to Alice")
    assert (await b.effects.begin("mail-1", "run-1", reworded, lease=other)).done


async def test_racing_begins_through_two_replicas_get_exactly_one_proceed(
    agents: Agent,
) -> None:
    a, b = await agents("alice", 0), await agents("bob", 1)
    la, lb = await a.leases.grant(10), await b.leases.grant(10)
    for i in range(30):
        key = f"race-{i}"
        first, second = await asyncio.gather(
            a.effects.begin(key, "race", SEND, lease=la),
            b.effects.begin(key, "race", SEND, lease=lb),
        )
        outcomes = sorted([first.outcome, second.outcome])
        assert outcomes == [BeginOutcome.PROCEED, BeginOutcome.BUSY], (i, outcomes)
        winner = first if first.proceed else second
        loser = second if first.proceed else first
        assert loser.effect.claimed.lease_id == winner.effect.claimed.lease_id


async def test_a_retried_begin_from_the_same_lease_proceeds_with_the_same_claim(
    agents: Agent,
) -> None:
    a = await agents("alice")
    lease = await a.leases.grant(10)
    first = await a.effects.begin("k", "run", SEND, lease=lease)
    again = await a.effects.begin("k", "run", SEND, lease=lease)
    assert again.proceed and again.claim == first.claim and again.effect.attempts == 1


async def test_complete_twice_is_replayed_and_a_wrong_claim_is_not_held(
    agents: Agent, etcd: EtcdMember, namespace: str
) -> None:
    a, b = await agents("alice", 0), await agents("bob", 1)
    lease, other = await a.leases.grant(10), await b.leases.grant(10)
    began = await a.effects.begin("pay", "run", SEND, lease=lease)
    before = etcd.stored(namespace)
    with pytest.raises(NotHeldError) as wrong:
        await a.effects.complete("pay", began.claim + 1, lease=lease, result=b"x")
    assert held_effect(wrong.value).claimed.agent_id == "alice"
    with pytest.raises(NotHeldError) as stranger:  # the right claim, another lease
        await b.effects.complete("pay", began.claim, lease=other, result=b"x")
    assert held_effect(stranger.value).claimed.lease_id == lease.id
    assert etcd.stored(namespace) == before
    first = await a.effects.complete("pay", began.claim, lease=lease, result=b"first")
    again = await a.effects.complete("pay", began.claim, lease=lease, error="again")
    late = await b.effects.complete("pay", began.claim, lease=other, error="second")
    assert not first.replayed and again.replayed and late.replayed
    assert again.effect.outcome.success == late.effect.outcome.success == b"first"
    assert (await b.effects.get("pay")).outcome.success == b"first"


async def test_a_dead_executor_leaves_the_effect_in_doubt(agents: Agent) -> None:
    a, b = await agents("alice", 0), await agents("bob", 1)
    lease = await a.leases.grant(10)
    began = await a.effects.begin("charge", "run", SEND, lease=lease)
    await lease.revoke()
    other = await b.leases.grant(10)
    doubt = await b.effects.begin("charge", "run", SEND, lease=other)
    assert doubt.outcome is BeginOutcome.IN_DOUBT
    assert doubt.effect.intent.arguments == SEND.arguments
    assert doubt.effect.began.agent_id == "alice" and doubt.effect.began.at.seconds > 0
    assert (await b.effects.get("charge")).state == EffectState.IN_DOUBT
    # The dead executor cannot record an outcome: its claim ended with its lease.
    with pytest.raises(NotHeldError):
        await a.effects.complete("charge", began.claim, lease=lease, result=b"zombie")
    assert (await b.effects.get("charge")).state == EffectState.IN_DOUBT
    claimed = await b.effects.begin("charge", "run", SEND, lease=other, reconciled=True)
    assert claimed.proceed and claimed.claim > began.claim and claimed.effect.attempts == 2
    with pytest.raises(NotHeldError):
        await a.effects.complete("charge", began.claim, lease=lease, result=b"zombie")
    done = await b.effects.complete("charge", claimed.claim, lease=other, result=b"found it")
    assert done.effect.outcome.success == b"found it" and done.effect.completed.agent_id == "bob"


async def test_abort_lets_the_next_begin_proceed(agents: Agent) -> None:
    a, b = await agents("alice", 0), await agents("bob", 1)
    lease, other = await a.leases.grant(10), await b.leases.grant(10)
    began = await a.effects.begin("hook", "run", SEND, lease=lease)
    aborted = await a.effects.abort("hook", began.claim, lease=lease, reason="rate limited")
    assert aborted.state == EffectState.ABORTED and aborted.abort_reason == "rate limited"
    again = await a.effects.abort("hook", began.claim, lease=lease)  # idempotent
    assert again.state == EffectState.ABORTED
    next_ = await b.effects.begin("hook", "run", SEND, lease=other)
    assert next_.proceed and next_.claim > began.claim and next_.effect.attempts == 2
    await b.effects.complete("hook", next_.claim, lease=other, result=b"ok")
    with pytest.raises(ConditionFailedError):
        await b.effects.abort("hook", next_.claim, lease=other)


async def test_a_busy_begin_waits_for_the_outcome(agents: Agent) -> None:
    a, b = await agents("alice", 0), await agents("bob", 1)
    lease, other = await a.leases.grant(10), await b.leases.grant(10)
    began = await a.effects.begin("slow", "run", SEND, lease=lease)
    waiting = asyncio.create_task(b.effects.begin("slow", "run", SEND, lease=other, wait=20))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    await a.effects.complete("slow", began.claim, lease=lease, result=b"sent")
    answer = await asyncio.wait_for(waiting, 20)
    assert answer.done and answer.effect.outcome.success == b"sent"


async def test_a_busy_begin_learns_the_executor_died_while_it_waited(agents: Agent) -> None:
    a, b = await agents("alice", 0), await agents("bob", 1)
    lease, other = await a.leases.grant(10), await b.leases.grant(10)
    await a.effects.begin("dies", "run", SEND, lease=lease)
    waiting = asyncio.create_task(b.effects.begin("dies", "run", SEND, lease=other, wait=20))
    await asyncio.sleep(0.3)
    await lease.revoke()
    # Woken by the claim's deletion, long before its 20 s wait would end.
    answer = await asyncio.wait_for(waiting, 10)
    assert answer.in_doubt


async def test_a_busy_begin_without_wait_answers_at_once(agents: Agent) -> None:
    a, b = await agents("alice", 0), await agents("bob", 1)
    lease, other = await a.leases.grant(10), await b.leases.grant(10)
    await a.effects.begin("held", "run", SEND, lease=lease)
    busy = await b.effects.begin("held", "run", SEND, lease=other)
    assert busy.busy and busy.effect.claimed.agent_id == "alice"


async def test_another_tool_call_under_the_same_key_is_an_intent_mismatch(
    agents: Agent, etcd: EtcdMember, namespace: str
) -> None:
    a = await agents("alice")
    lease = await a.leases.grant(10)
    await a.effects.begin("k", "run", SEND, lease=lease)
    before = etcd.stored(namespace)
    other_args = intent(SEND.tool, b'{"to":"mallory@example.com"}')
    with pytest.raises(IntentMismatchError) as mismatch:
        await a.effects.begin("k", "run", other_args, lease=lease)
    assert mismatch.value.effect is not None
    assert mismatch.value.effect.intent.arguments == SEND.arguments
    with pytest.raises(IntentMismatchError):
        await a.effects.begin("k", "run", intent("another_tool", SEND.arguments), lease=lease)
    assert etcd.stored(namespace) == before


async def test_unknown_keys_and_runs_are_not_found(agents: Agent) -> None:
    a = await agents("alice")
    lease = await a.leases.grant(10)
    with pytest.raises(NotFoundError):
        await a.effects.get("nothing")
    with pytest.raises(NotFoundError):
        await a.effects.complete("nothing", 5, lease=lease, result=b"")
    with pytest.raises(NotFoundError):
        await a.effects.get_run(f"run-{uuid.uuid4().hex}")


async def test_a_fenced_complete_after_the_lock_is_lost(agents: Agent) -> None:
    a = await agents("alice")
    lease = await a.leases.grant(10)
    holder = await a.leases.grant(10, keepalive=False)
    grant = await a.locks.acquire("payments", holder)
    began = await a.effects.begin("pay", "run", SEND, lease=lease, fence=grant)
    assert began.proceed
    await a.locks.release(grant, holder)
    with pytest.raises(FencedError):
        await a.effects.complete("pay", began.claim, lease=lease, result=b"x", fence=grant)
    assert (await a.effects.get("pay")).state == EffectState.RUNNING


async def test_a_fenced_begin_after_the_lock_is_lost_writes_nothing(
    agents: Agent, etcd: EtcdMember, namespace: str
) -> None:
    a = await agents("alice")
    lease = await a.leases.grant(10)
    holder = await a.leases.grant(10, keepalive=False)
    grant = await a.locks.acquire("payments", holder)
    await a.locks.release(grant, holder)
    before = etcd.stored(namespace)
    with pytest.raises(FencedError):
        await a.effects.begin("pay", "run", SEND, lease=lease, fence=grant)
    assert etcd.stored(namespace) == before
