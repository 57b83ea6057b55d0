"""The agent-facing wrappers (client/effect_tools.py, client/effect_runs.py) against the
real ledger, through both replicas: a wrapped tool runs once however often it is called,
a retry anywhere gets the recorded result, the tool gets its effect key, and how a
step's block ends decides what is recorded."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest

from accord.client import (
    AsyncClient,
    Client,
    EffectBusyError,
    EffectFailedError,
    EffectInDoubtError,
    EffectNotApplied,
    EffectRun,
    FencedError,
    FoundOutcome,
    IntentMismatchError,
    Lease,
    NotJSONError,
    Undo,
    effect_key,
)
from accord.v1 import effects_pb2
from tests.harness import Coordinator, make_client, token_for

RUN = "order-42"


@pytest.fixture
async def agents(
    replicas: list[Coordinator], namespace: str
) -> AsyncIterator[tuple[AsyncClient, AsyncClient]]:
    """Two agents, each pinned to its own replica."""
    async with (
        make_client([replicas[0].address], namespace, agent="agent-a") as a,
        make_client([replicas[1].address], namespace, agent="agent-b") as b,
    ):
        yield a, b


async def grant(client: AsyncClient, ttl: int = 30) -> Lease:
    return await client.leases.grant(ttl=ttl)


async def test_a_retried_tool_runs_once_and_retries_get_its_result(
    agents: tuple[AsyncClient, AsyncClient],
) -> None:
    a, b = agents
    sent: list[dict[str, Any]] = []

    async def send_email(to: str, body: str, effect_key: str = "") -> dict[str, Any]:
        sent.append({"to": to, "body": body, "key": effect_key})
        return {"message_id": f"m-{len(sent)}", "to": to}

    first = EffectRun(a.effects, RUN, await grant(a))
    tool = first.tool()(send_email)
    result = await tool("ana@example.com", body="hello")
    assert result == {"message_id": "m-1", "to": "ana@example.com"}
    # The same call again (a retry: same run, same step) from the same agent ...
    assert await tool.at(1)("ana@example.com", body="hello") == result
    # ... and from another agent through the other replica, keywords in another order.
    again = EffectRun(b.effects, RUN, await grant(b)).tool()(send_email)
    assert await again(body="hello", to="ana@example.com") == result
    assert len(sent) == 1
    # The tool was given the key the ledger knows the call by, derived from the call.
    key = effect_key(RUN, 1, "send_email", {"to": "ana@example.com", "body": "hello"})
    assert sent[0]["key"] == key
    effect = await b.effects.get(key)
    assert effect.state == effects_pb2.EFFECT_STATE_SUCCEEDED
    assert effect.intent.tool == "send_email" and effect.attempts == 1
    # The next call of the run is the next step: it runs.
    assert await tool("ben@example.com", body="hello") == {
        "message_id": "m-2",
        "to": "ben@example.com",
    }
    assert [s["to"] for s in sent] == ["ana@example.com", "ben@example.com"]


async def test_one_of_two_racing_agents_runs_the_tool(
    agents: tuple[AsyncClient, AsyncClient],
) -> None:
    a, b = agents
    calls: list[str] = []
    started = asyncio.Event()
    release = asyncio.Event()

    async def charge(amount: int, effect_key: str = "") -> dict[str, Any]:
        calls.append(effect_key)
        started.set()
        await release.wait()
        return {"charged": amount}

    runs = [EffectRun(c.effects, RUN, await grant(c)) for c in (a, b)]
    first = asyncio.create_task(runs[0].tool()(charge)(5))
    await started.wait()
    second = asyncio.create_task(runs[1].tool()(charge)(5))  # BUSY: waits for the first
    await asyncio.sleep(0.5)
    assert not second.done()
    release.set()
    assert await first == await second == {"charged": 5}
    assert len(calls) == 1


async def test_a_plain_function_tool_runs_in_a_thread(client: AsyncClient) -> None:
    run = EffectRun(client.effects, RUN, await grant(client))
    threads: list[str] = []

    @run.tool(name="resize")
    def resize(image: str, width: int = 640, effect_key: str = "") -> dict[str, Any]:
        threads.append(threading.current_thread().name)
        return {"image": image, "width": width, "key": effect_key}

    result = await resize("cat.png")
    assert result == {
        "image": "cat.png",
        "width": 640,
        "key": effect_key(RUN, 1, "resize", {"image": "cat.png", "width": 640}),
    }
    assert await resize.at(1)("cat.png", width=640) == result
    assert len(threads) == 1 and threads[0] != threading.main_thread().name


async def test_the_block_decides_what_is_recorded(client: AsyncClient) -> None:
    run = EffectRun(client.effects, RUN, await grant(client))
    # A tool that says it did not happen: the claim is released, a retry runs it.
    with pytest.raises(EffectNotApplied):
        async with run.step("pay", {"amount": 1}, step=1) as call:
            assert not call.done
            raise EffectNotApplied("card declined before charging")
    effect = await client.effects.get(call.key)
    assert effect.state == effects_pb2.EFFECT_STATE_ABORTED
    async with run.step("pay", {"amount": 1}, step=1) as call:
        assert not call.done
        call.succeed({"paid": 1})
    assert call.effect.state == effects_pb2.EFFECT_STATE_SUCCEEDED and call.effect.attempts == 2
    # Any other exception: the outcome is unknown, so it is recorded as failed (final).
    with pytest.raises(TimeoutError):
        async with run.step("pay", {"amount": 2}, step=2) as call:
            raise TimeoutError("no answer from the payment API")
    async with run.step("pay", {"amount": 2}, step=2) as retry:
        assert retry.done
        with pytest.raises(EffectFailedError) as failed:
            _ = retry.result
    assert failed.value.failure == "TimeoutError: no answer from the payment API"
    # A done call refuses to be recorded again: the block must check call.done.
    async with run.step("pay", {"amount": 1}, step=1) as done:
        assert done.done and done.result == {"paid": 1}
        with pytest.raises(RuntimeError, match=r"check call\.done"):
            done.succeed({"paid": 1})


async def test_same_key_other_intent_is_refused(client: AsyncClient) -> None:
    run = EffectRun(client.effects, RUN, await grant(client))
    async with run.step("pay", {"amount": 1}, key="payment-1") as call:
        call.succeed(None)
    with pytest.raises(IntentMismatchError) as refused:
        async with run.step("pay", {"amount": 2}, key="payment-1"):
            pytest.fail("the body must not run")
    assert (
        refused.value.effect is not None
        and refused.value.effect.intent.arguments == b'{"amount":1}'
    )


async def test_arguments_without_json_are_refused_before_anything_is_sent(
    client: AsyncClient,
) -> None:
    run = EffectRun(client.effects, RUN, await grant(client))

    async def store(blob: object) -> None: ...

    with pytest.raises(NotJSONError):
        await run.tool()(store)(b"raw bytes")
    with pytest.raises(NotJSONError):
        await run.tool()(store)(float("nan"))
    assert await client.effects.list() is not None
    listed = await client.effects.list()
    assert list(listed.effects) == []


async def test_in_doubt_raises_unless_reconciled(
    agents: tuple[AsyncClient, AsyncClient],
) -> None:
    a, b = agents
    lost = await a.leases.grant(ttl=30)
    run = EffectRun(a.effects, RUN, lost)
    with pytest.raises(asyncio.CancelledError):
        async with run.step("deploy", {"version": 7}, step=1) as call:
            await lost.revoke()  # the executor's lease ends before it records an outcome
            raise asyncio.CancelledError
    other = EffectRun(b.effects, RUN, await grant(b))
    with pytest.raises(EffectInDoubtError) as doubt:
        async with other.step("deploy", {"version": 7}, step=1):
            pytest.fail("the body must not run")
    effect = doubt.value.effect
    assert effect.key == call.key and effect.intent.tool == "deploy"
    assert effect.began.agent_id == "agent-a" and effect.state == effects_pb2.EFFECT_STATE_IN_DOUBT
    # A found outcome JSON cannot carry is refused before the effect is claimed.
    unusable = EffectRun(
        b.effects, RUN, await grant(b), reconcile=lambda key: FoundOutcome({"raw": b"\x00"})
    )
    with pytest.raises(NotJSONError):
        async with unusable.step("deploy", {"version": 7}, step=1):
            pytest.fail("the body must not run")
    effect = await b.effects.get(call.key)
    assert effect.state == effects_pb2.EFFECT_STATE_IN_DOUBT and effect.attempts == 1
    # Reconciled: the external system says it happened; recorded without running.
    asked: list[str] = []

    async def found(key: str) -> FoundOutcome | None:
        asked.append(key)
        return FoundOutcome({"deployed": 7})

    reconciled = EffectRun(b.effects, RUN, await grant(b), reconcile=found)
    async with reconciled.step("deploy", {"version": 7}, step=1) as again:
        assert again.done and again.result == {"deployed": 7}
    assert asked == [call.key]
    effect = await b.effects.get(call.key)
    assert effect.state == effects_pb2.EFFECT_STATE_SUCCEEDED and effect.attempts == 2


def test_blocking_client_steps_and_compensates(replicas: list[Coordinator], namespace: str) -> None:
    """The blocking client has `step` as a `with` block, and runs plain compensation
    handlers (in a worker thread, so they may call it too)."""
    ran: list[str] = []
    token = token_for(namespace, "sync") or ""
    addresses = [r.address for r in replicas]
    with Client(addresses, agent_id="sync", namespace=namespace, token=token) as accord:
        lease = accord.leases.grant(ttl=30)
        for attempt in range(2):
            with accord.effects.step(RUN, 1, "book", {"room": 12}, lease) as call:
                if not call.done:
                    ran.append(call.key)
                    call.succeed({"booking": "b-12"}, Undo("cancel", {"booking": "b-12"}))
            assert call.result == {"booking": "b-12"}, attempt
        assert ran == [effect_key(RUN, 1, "book", {"room": 12})]

        def cancel(booking: str, effect_key: str) -> str:
            assert accord.effects.get(effect_key).state == effects_pb2.EFFECT_STATE_RUNNING
            ran.append(booking)
            return "cancelled"

        done = accord.effects.run_compensations(RUN, {"cancel": cancel}, lease)
        assert [e.outcome.success for e in done] == [b'"cancelled"']
        assert ran[1:] == ["b-12"]
        progress = accord.effects.progress(RUN)
        assert progress.run.status == effects_pb2.RUN_STATUS_COMPENSATED


async def test_busy_past_the_wait_says_who_holds_it(
    agents: tuple[AsyncClient, AsyncClient],
) -> None:
    a, b = agents
    holder = EffectRun(a.effects, RUN, await grant(a))
    waiter = EffectRun(b.effects, RUN, await grant(b), busy_wait=1.0)
    async with holder.step("migrate", {"table": "orders"}, step=1) as held:
        with pytest.raises(EffectBusyError) as busy:
            async with waiter.step("migrate", {"table": "orders"}, step=1):
                pytest.fail("the body must not run")
        held.succeed("migrated")
    assert busy.value.effect.claimed.agent_id == "agent-a"
    assert busy.value.effect.key == held.key
    async with waiter.step("migrate", {"table": "orders"}, step=1) as after:
        assert after.done and after.result == "migrated"


async def test_a_fenced_step_needs_its_lock(client: AsyncClient) -> None:
    lease = await grant(client)
    lock = await client.locks.acquire("deploys", lease)
    run = EffectRun(client.effects, RUN, lease, fence=lock)
    async with run.step("deploy", {"version": 8}) as call:
        call.succeed("deployed")
    await client.locks.release(lock)
    with pytest.raises(FencedError):
        async with run.step("deploy", {"version": 9}):
            pytest.fail("the body must not run")
    listed = await client.effects.list(run_id=RUN)
    assert [e.key for e in listed.effects] == [call.key]  # the fenced Begin wrote nothing
