"""Runs of the effect ledger against the live replicas: the journal in the order effects
began, counts and resume_at, run status, listings with a state filter and pages, and
compensation (reverse order, derived keys, COMPENSATED once all are done)."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from aetcd.rpc import rpc_pb2 as rpc

from accord.client import (
    EffectState,
    IntentMismatchError,
    NotFoundError,
    NothingToCompensateError,
    RunStatus,
    intent,
)
from accord.client.errors import InvalidArgumentError
from tests.effects.conftest import Agent
from tests.harness import EtcdMember, EtcdStubs


def step(i: int) -> tuple[str, bytes]:
    return f"step-{i}", f'{{"n":{i}}}'.encode()


async def test_the_journal_is_in_begin_order_with_counts_and_resume_point(
    agents: Agent,
) -> None:
    a = await agents("alice")
    lease = await a.leases.grant(10)
    # Keys whose order differs from the order they begin in.
    keys = ["zeta", "alpha", "mid", "beta", "omega"]
    claims = {}
    for key in keys:
        claims[key] = (
            await a.effects.begin(key, "wf", intent("tool", key.encode()), lease=lease)
        ).claim
    for key in ("alpha", "beta"):
        await a.effects.complete(key, claims[key], lease=lease, result=b"ok")
    await a.effects.complete("mid", claims["mid"], lease=lease, error="boom")
    await a.effects.abort("omega", claims["omega"], lease=lease)
    journal = await a.effects.get_run("wf")
    assert [e.key for e in journal.journal] == keys
    assert [e.state for e in journal.journal] == [
        EffectState.RUNNING,
        EffectState.SUCCEEDED,
        EffectState.FAILED,
        EffectState.SUCCEEDED,
        EffectState.ABORTED,
    ]
    run = journal.run
    assert run.status == RunStatus.RUNNING and run.created.agent_id == "alice"
    assert (run.effects, run.succeeded, run.failed, run.running, run.in_doubt) == (5, 2, 1, 1, 0)
    # The first effect in journal order without an outcome (not the first by key).
    assert run.resume_at == "zeta"
    await lease.revoke()
    run = (await a.effects.get_run("wf")).run
    assert (run.running, run.in_doubt) == (0, 1)  # zeta; omega was aborted, not in doubt
    pages, token = [], ""
    while True:
        page = await a.effects.get_run("wf", limit=2, page_token=token)
        pages.append([e.key for e in page.journal])
        token = page.next_page_token
        if not token:
            break
    assert pages == [["zeta", "alpha"], ["mid", "beta"], ["omega"]]


async def test_listing_filters_by_state_and_pages(agents: Agent) -> None:
    a = await agents("alice")
    lease = await a.leases.grant(10)
    for i in range(6):
        key, args = step(i)
        began = await a.effects.begin(key, "list-run", intent("t", args), lease=lease)
        if i % 2 == 0:
            await a.effects.complete(key, began.claim, lease=lease, result=b"")
    done = await a.effects.list(states=[EffectState.SUCCEEDED])
    assert sorted(e.key for e in done.effects) == ["step-0", "step-2", "step-4"]
    seen, token = [], ""
    while True:
        page = await a.effects.list(states=[EffectState.RUNNING], limit=2, page_token=token)
        seen += [e.key for e in page.effects]
        token = page.next_page_token
        if not token:
            break
    assert seen == ["step-1", "step-3", "step-5"]
    in_run = await a.effects.list(run_id="list-run", states=[EffectState.RUNNING])
    assert [e.key for e in in_run.effects] == ["step-1", "step-3", "step-5"]
    with pytest.raises(InvalidArgumentError):
        await a.effects.list(page_token="not a token")
    with pytest.raises(InvalidArgumentError):
        await a.effects.list(limit=1001)


async def test_run_status(agents: Agent) -> None:
    a, b = await agents("alice", 0), await agents("bob", 1)
    lease = await a.leases.grant(10)
    await a.effects.begin("only", "status-run", intent("t"), lease=lease)
    run = await b.effects.set_run_status("status-run", RunStatus.FINISHED)
    assert run.status == RunStatus.FINISHED and run.updated.agent_id == "bob"
    with pytest.raises(InvalidArgumentError):
        await b.effects.set_run_status("status-run", RunStatus.COMPENSATING)
    with pytest.raises(NotFoundError):
        await b.effects.set_run_status("no-such-run", RunStatus.FAILED)
    with pytest.raises(NotFoundError):
        await b.effects.compensate("no-such-run")


async def test_compensation_runs_backwards_with_derived_keys(
    agents: Agent, etcd: EtcdMember, namespace: str
) -> None:
    a, b = await agents("alice", 0), await agents("bob", 1)
    lease = await a.leases.grant(10)
    long_key = "x" * 250
    for key in ["book-flight", "book-hotel", long_key, "no-undo"]:
        began = await a.effects.begin(key, "trip", intent("book", key.encode()), lease=lease)
        undo = intent("cancel", key.encode()) if key != "no-undo" else None
        await a.effects.complete(key, began.claim, lease=lease, result=b"", compensation=undo)
    plan = await b.effects.compensate("trip")
    assert plan.run.status == RunStatus.COMPENSATING
    assert [c.compensates for c in plan.compensations] == [long_key, "book-hotel", "book-flight"]
    assert [c.key for c in plan.compensations] == [
        "compensate:" + hashlib.sha256(long_key.encode()).hexdigest(),
        "compensate:book-hotel",
        "compensate:book-flight",
    ]
    assert all(c.state == 0 for c in plan.compensations)
    assert (plan.run.compensations, plan.run.compensated) == (3, 0)
    before = etcd.stored(namespace)
    again = await a.effects.compensate("trip")  # a second agent: the same list, no write
    assert [c.key for c in again.compensations] == [c.key for c in plan.compensations]
    assert etcd.stored(namespace) == before
    other = await b.leases.grant(10)
    for c in plan.compensations:
        began = await b.effects.begin(c.key, "trip", c.intent, lease=other)
        assert began.proceed and began.effect.compensates == c.compensates
        await b.effects.complete(c.key, began.claim, lease=other, result=b"undone")
        run = (await a.effects.get_run("trip")).run
        if c is not plan.compensations[-1]:
            assert run.status == RunStatus.COMPENSATING
    assert run.status == RunStatus.COMPENSATED and run.compensated == 3
    done = await a.effects.compensate("trip")
    assert all(c.state == EffectState.SUCCEEDED for c in done.compensations)


async def test_a_run_without_compensations_has_nothing_to_compensate(
    agents: Agent, etcd: EtcdMember, namespace: str
) -> None:
    a = await agents("alice")
    lease = await a.leases.grant(10)
    began = await a.effects.begin("read-only", "plain", intent("t"), lease=lease)
    await a.effects.complete("read-only", began.claim, lease=lease, result=b"")
    before = etcd.stored(namespace)
    with pytest.raises(NothingToCompensateError):
        await a.effects.compensate("plain")
    assert etcd.stored(namespace) == before
    assert (await a.effects.get_run("plain")).run.status == RunStatus.RUNNING


async def test_effects_begun_together_each_keep_their_compensation(agents: Agent) -> None:
    """Effects begun at once share etcd revisions (group commit batches them): each still
    has its own place in the journal and its own registered compensation."""
    a = await agents("alice")
    lease = await a.leases.grant(10)
    keys = [f"parallel-{i:02d}" for i in range(24)]
    # The run exists first: Begins that each create it touch one key and never batch.
    await a.effects.begin("parallel-00", "fan-out", intent("t", b"parallel-00"), lease=lease)

    began = await asyncio.gather(
        *(
            a.effects.begin(k, "fan-out", intent("t", k.encode()), lease=lease)
            for k in reversed(keys)
        )
    )
    run = await a.effects.get_run("fan-out", limit=1000)
    journal = run.journal
    revisions = [e.began_revision for e in journal]
    assert len(set(revisions)) < len(keys), "no two began in one batch: nothing was shown"
    assert revisions == sorted(revisions) and sorted(e.key for e in journal) == keys
    assert run.run.resume_at == journal[0].key  # ties broken as the journal breaks them
    await asyncio.gather(
        *(
            a.effects.complete(
                b.effect.key, b.claim, lease=lease, result=b"", compensation=intent("undo")
            )
            for b in began
        )
    )
    plan = await a.effects.compensate("fan-out")
    assert sorted(c.compensates for c in plan.compensations) == keys
    # Newest first: the journal's order reversed (ties broken the same way).
    assert [c.compensates for c in plan.compensations] == [e.key for e in reversed(journal)]


async def test_a_run_whose_record_expired_is_made_again_by_its_next_claim(
    agents: Agent, etcd: EtcdMember, namespace: str
) -> None:
    a = await agents("alice")
    lease = await a.leases.grant(10)
    began = await a.effects.begin("k", "lapsed", intent("t"), lease=lease)
    await a.effects.abort("k", began.claim, lease=lease)
    async with EtcdStubs(etcd.endpoint) as stubs:  # as if its retention had ended
        record = f"accord/ns/{namespace}/runs/lapsed\x00r".encode()
        await stubs.kv.DeleteRange(rpc.DeleteRangeRequest(key=record))
    with pytest.raises(NotFoundError):
        await a.effects.get_run("lapsed")
    again = await a.effects.begin("k", "lapsed", intent("t"), lease=lease)
    assert again.proceed
    run = (await a.effects.get_run("lapsed")).run
    assert run.status == RunStatus.RUNNING and (run.effects, run.running) == (1, 1)


async def test_a_compensation_is_begun_with_the_intent_registered_for_it(
    agents: Agent, etcd: EtcdMember, namespace: str
) -> None:
    a = await agents("alice")
    lease = await a.leases.grant(10)
    began = await a.effects.begin("book", "trip", intent("book", b"1"), lease=lease)
    await a.effects.complete(
        "book", began.claim, lease=lease, result=b"", compensation=intent("cancel", b"1")
    )
    (plan,) = (await a.effects.compensate("trip")).compensations
    before = etcd.stored(namespace)
    with pytest.raises(IntentMismatchError):
        await a.effects.begin(plan.key, "trip", intent("cancel", b"2"), lease=lease)
    assert etcd.stored(namespace) == before
    assert (await a.effects.begin(plan.key, "trip", plan.intent, lease=lease)).proceed


async def test_listings_tell_in_doubt_from_running(agents: Agent) -> None:
    a = await agents("alice")
    dead, alive = await a.leases.grant(10), await a.leases.grant(10)
    await a.effects.begin("dies-1", "doubt", intent("t", b"1"), lease=dead)
    await a.effects.begin("lives", "doubt", intent("t", b"2"), lease=alive)
    await a.effects.begin("dies-2", "doubt", intent("t", b"3"), lease=dead)
    await dead.revoke()
    for run_id in ("", "doubt"):  # the namespace's listing, and the run's journal
        doubt = await a.effects.list(states=[EffectState.IN_DOUBT], run_id=run_id)
        assert sorted(e.key for e in doubt.effects) == ["dies-1", "dies-2"], run_id
        running = await a.effects.list(states=[EffectState.RUNNING], run_id=run_id)
        assert [e.key for e in running.effects] == ["lives"], run_id
