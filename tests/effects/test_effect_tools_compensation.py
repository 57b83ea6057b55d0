"""Compensation as agents run it (EffectRun.compensate): two agents compensating the same
run at once, through different replicas, run each compensation exactly once, newest
first; a handler that fails leaves its compensation to run again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from accord.client import (
    AsyncClient,
    EffectRun,
    NotFoundError,
    NothingToCompensateError,
    Undo,
    effect_key,
)
from accord.v1 import effects_pb2
from tests.harness import Coordinator, make_client

RUN = "trip-booking"


@pytest.fixture
async def agents(
    replicas: list[Coordinator], namespace: str
) -> AsyncIterator[tuple[AsyncClient, AsyncClient]]:
    async with (
        make_client([replicas[0].address], namespace, agent="agent-a") as a,
        make_client([replicas[1].address], namespace, agent="agent-b") as b,
    ):
        yield a, b


async def book_four(accord: AsyncClient) -> list[str]:
    """A run of five steps: four bookings that register their cancellation, and a
    notification that registers none. Returns the bookings' effect keys."""
    run = EffectRun(accord.effects, RUN, await accord.leases.grant(ttl=30))

    @run.tool(undo=lambda result, args: Undo("cancel", {"booking": result}, "cancel booking"))
    async def book(item: str) -> str:
        return f"booking-{item}"

    @run.tool()
    async def notify(text: str) -> None:
        return None

    items = ("flight", "hotel", "car", "tour")
    for item in items:
        await book(item)
    await notify("booked")
    return [effect_key(RUN, step, "book", {"item": item}) for step, item in enumerate(items, 1)]


async def test_two_agents_compensate_each_once_newest_first(
    agents: tuple[AsyncClient, AsyncClient],
) -> None:
    a, b = agents
    keys = await book_four(a)
    ran: list[tuple[str, str, str]] = []  # (agent, booking, effect key), in order run
    events: list[tuple[str, str]] = []  # ("start" | "end", booking)

    def handler_of(agent: str) -> Any:
        async def cancel(booking: str, effect_key: str) -> dict[str, str]:
            ran.append((agent, booking, effect_key))
            events.append(("start", booking))
            await asyncio.sleep(0.2)  # long enough for the other agent to find it BUSY
            events.append(("end", booking))
            return {"cancelled": booking}

        return cancel

    runs = [EffectRun(c.effects, RUN, await c.leases.grant(ttl=30)) for c in (a, b)]
    done_a, done_b = await asyncio.gather(
        runs[0].compensate({"cancel": handler_of("agent-a")}),
        runs[1].compensate({"cancel": handler_of("agent-b")}),
    )
    bookings = [booking for _, booking, _ in ran]
    assert bookings == ["booking-tour", "booking-car", "booking-hotel", "booking-flight"]
    # Each began only once the one before it had ended, whichever agent ran it.
    assert events == [(edge, b) for b in bookings for edge in ("start", "end")]
    assert [key for _, _, key in ran] == [f"compensate:{k}" for k in reversed(keys)]
    # Both agents saw every compensation completed, in the same order.
    assert [e.key for e in done_a] == [e.key for e in done_b] == [key for _, _, key in ran]
    assert all(e.state == effects_pb2.EFFECT_STATE_SUCCEEDED for e in done_a + done_b)
    assert [e.compensates for e in done_a] == list(reversed(keys))
    progress = await runs[1].progress()
    assert progress.run.status == effects_pb2.RUN_STATUS_COMPENSATED
    assert (progress.run.compensations, progress.run.compensated) == (4, 4)
    # Compensating again runs nothing.
    assert len(await runs[0].compensate({"cancel": handler_of("late")})) == 4
    assert len(ran) == 4


async def test_a_failed_handler_runs_again_later(client: AsyncClient) -> None:
    keys = await book_four(client)
    run = EffectRun(client.effects, RUN, await client.leases.grant(ttl=30))
    ran: list[str] = []

    async def flaky(booking: str, effect_key: str) -> None:
        ran.append(booking)
        if booking == "booking-car" and ran.count(booking) == 1:
            raise ConnectionError("rental API down")

    with pytest.raises(ConnectionError):
        await run.compensate({"cancel": flaky})
    car = await client.effects.get(f"compensate:{keys[2]}")
    assert car.state == effects_pb2.EFFECT_STATE_ABORTED
    await run.compensate({"cancel": flaky})
    assert ran == ["booking-tour", "booking-car", "booking-car", "booking-hotel", "booking-flight"]


async def test_compensate_refusals(client: AsyncClient) -> None:
    run = EffectRun(client.effects, "no-such-run", await client.leases.grant(ttl=30))
    with pytest.raises(NotFoundError):
        await run.compensate({})
    plain = EffectRun(client.effects, "plain", await client.leases.grant(ttl=30))
    async with plain.step("notify", {"text": "hi"}) as call:
        call.succeed(None)
    with pytest.raises(NothingToCompensateError):
        await plain.compensate({})
    keys = await book_four(client)
    booked = EffectRun(client.effects, RUN, await client.leases.grant(ttl=30))
    with pytest.raises(KeyError, match="cancel"):
        await booked.compensate({"refund": lambda **_: None})
    for key in keys:  # nothing was begun
        assert (await client.effects.get(key)).state == effects_pb2.EFFECT_STATE_SUCCEEDED
    progress = await booked.progress()
    assert len(progress.journal) == 5
    paged = await booked.progress(page_size=2)  # three GetRun pages
    assert [e.key for e in paged.journal] == [e.key for e in progress.journal]
