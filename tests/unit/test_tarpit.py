"""The tarpit (quotas.tarpit) on its own: how long a rate refusal is held (its RetryInfo,
capped, before the caller's deadline), the RetryInfo it is answered with, and the bounds
past which refusals are answered at once."""

from __future__ import annotations

import asyncio
import time

import pytest

from accord.coordinator.quotas.tarpit import DEADLINE_MARGIN_SECONDS, Tarpit
from accord.coordinator.substrate.errors import RateExceeded


def refusal(retry_after: float, request_bytes: int = 0) -> RateExceeded:
    return RateExceeded(
        "namespace 'n' is over its rate",
        subject="namespace:n",
        limit="requests_per_second",
        retry_after=retry_after,
        namespace="n",
        request_bytes=request_bytes,
    )


def test_a_refusal_is_held_for_its_retry_info_capped_and_before_the_deadline() -> None:
    tarpit = Tarpit(max_hold=1.0)
    assert tarpit.hold_seconds(refusal(0.3), None, now=0.0) == pytest.approx(0.3)
    assert tarpit.hold_seconds(refusal(20.0), None, now=0.0) == pytest.approx(1.0)
    deadline = 0.5
    assert tarpit.hold_seconds(refusal(20.0), deadline, now=0.0) == pytest.approx(
        deadline - DEADLINE_MARGIN_SECONDS
    )
    assert tarpit.hold_seconds(refusal(20.0), DEADLINE_MARGIN_SECONDS, now=0.0) == 0.0
    assert tarpit.hold_seconds(refusal(0.0001), None, now=0.0) == 0.0  # not worth a timer


async def test_a_held_refusal_is_answered_with_the_retry_info_left() -> None:
    tarpit = Tarpit(max_hold=0.05)
    held = refusal(0.2)
    started = time.monotonic()
    answer = await tarpit.answer(held, "n", None)
    assert time.monotonic() - started >= 0.05
    assert 0.001 <= answer.retry_after <= 0.15 + 1e-9  # 0.2 less what was held
    assert answer.metadata["subject"] == "namespace:n" and answer.what == held.what
    whole = await Tarpit(max_hold=1.0).answer(refusal(0.02), "n", None)
    assert whole.retry_after == 0.001  # all of it was held: come back now
    assert tarpit.held == 0 and tarpit.held_bytes == 0


async def test_refusals_past_the_bounds_are_answered_at_once() -> None:
    tarpit = Tarpit(max_hold=0.2, per_namespace=2, total=3, max_bytes=10 * 1024)
    first = [asyncio.create_task(tarpit.answer(refusal(1.0), "a", None)) for _ in range(3)]
    await asyncio.sleep(0)
    assert tarpit.held == 2  # the third, past the namespace's two, answered at once
    assert first[2].done() and first[2].result().retry_after == 1.0
    other = [asyncio.create_task(tarpit.answer(refusal(1.0), "b", None)) for _ in range(2)]
    await asyncio.sleep(0)
    assert tarpit.held == 3 and other[1].done()  # the replica's three
    await asyncio.gather(*first, *other)
    assert tarpit.held == 0
    big = asyncio.create_task(tarpit.answer(refusal(1.0, request_bytes=9 * 1024), "a", None))
    bigger = asyncio.create_task(tarpit.answer(refusal(1.0, request_bytes=2 * 1024), "a", None))
    await asyncio.sleep(0)
    assert tarpit.held == 1 and tarpit.held_bytes == 9 * 1024  # 11 KiB would pass 10 KiB
    assert bigger.done() and tarpit.answered_at_once == 3
    await big


async def test_a_cancelled_hold_frees_its_place() -> None:
    tarpit = Tarpit(max_hold=5.0)
    held = asyncio.create_task(tarpit.answer(refusal(5.0, request_bytes=4096), "n", None))
    await asyncio.sleep(0)
    assert tarpit.held == 1
    held.cancel()
    with pytest.raises(asyncio.CancelledError):
        await held
    assert tarpit.held == 0 and tarpit.held_bytes == 0


async def test_no_hold_answers_at_once() -> None:
    tarpit = Tarpit(max_hold=0.0)  # accord serve --rate-refusal-hold 0
    assert tarpit.hold_seconds(refusal(0.5), None, now=0.0) == 0.0
    told = refusal(0.5)
    assert await tarpit.answer(told, "n", None) is told and tarpit.held == 0
