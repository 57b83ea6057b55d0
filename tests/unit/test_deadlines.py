"""The ambient deadline's rules (accord.client.deadlines): nesting takes the earlier, the
baggage it puts on the wire, what an inherited value must look like to count, and the
context the client's background tasks run in. Its effect on real calls (a lock wait, a
call never sent, a write's recorded baggage) is tests/client/test_deadlines.py."""

from __future__ import annotations

import asyncio
import time

import pytest
from opentelemetry import baggage
from opentelemetry.context import attach, detach

from accord.client import deadline, deadline_from, remaining
from accord.client.deadlines import cap, current, detached, inherited, otel_context, unbounded
from accord.client.propagation import outgoing
from accord.v1 import common_pb2

IDENTITY = (("accord-namespace", "ns"),)


def test_nested_deadlines_take_the_earlier() -> None:
    assert current() is None and remaining() is None
    with deadline(60) as outer:
        with deadline(1) as inner:
            assert inner < outer
            assert current() == inner
            assert 0 < cap(30) <= 1
        with deadline(120) as later:  # a later one inside never extends the budget
            assert later == outer
        assert current() == outer
    assert current() is None


def test_unbounded_lifts_it_for_the_code_inside() -> None:
    with deadline(1):
        with unbounded():
            assert current() is None and cap(30) == 30
        assert current() is not None


def test_deadline_takes_seconds_or_at() -> None:
    at = time.time() + 5
    with deadline(at=at) as end:
        assert end == at
    with pytest.raises(ValueError), deadline():
        pass
    with pytest.raises(ValueError), deadline(1, at=at):
        pass


def test_baggage_carries_the_deadline_merged_with_otel_baggage() -> None:
    assert outgoing(IDENTITY, otel_context()) is IDENTITY  # nothing without a deadline
    token = attach(baggage.set_baggage("tenant", "acme"))
    try:
        with deadline(at=1_900_000_000.25):
            sent = dict(outgoing(IDENTITY, otel_context()))
    finally:
        detach(token)
    members = dict(m.split("=") for m in sent["baggage"].split(","))
    assert members == {"tenant": "acme", "accord.deadline": "1900000000250"}


def test_deadline_from_inherits_capped_by_the_current_one() -> None:
    soon = time.time() + 20
    carried = common_pb2.TraceContext(baggage=f"accord.deadline={int(soon * 1000)},x=1")
    with deadline_from(carried) as end:
        assert end == pytest.approx(soon, abs=0.002)
    with deadline(5) as mine, deadline_from(carried) as end:
        assert end == mine  # the earlier of the two
    provenance = common_pb2.Provenance(trace_context=carried)
    assert inherited(provenance) == pytest.approx(soon, abs=0.002)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "accord.deadline=",
        "accord.deadline=soon",
        "accord.deadline=-5",
        "accord.deadline=1e12",
        "accord.deadline=99999999999999999999",  # absurdly far
        "accord.deadline=1000",  # 1970: absurdly far in the past
        f"accord.deadline={int((time.time() + 90 * 24 * 3600) * 1000)}",  # 90 days on
        "x=" + "a" * 2100 + f",accord.deadline={int((time.time() + 60) * 1000)}",  # too long
    ],
)
def test_a_malformed_or_absurd_inherited_value_is_ignored(header: str) -> None:
    with deadline_from(header) as end:
        assert end is None and current() is None


def test_a_spent_upstream_budget_is_inherited_as_spent() -> None:
    past = int((time.time() - 60) * 1000)
    with deadline_from(f"accord.deadline={past}"):
        assert cap(30) < 0  # calls inside fail at once


def test_tasks_copy_it_and_background_tasks_run_without_it() -> None:
    async def seen() -> float | None:
        return current()

    async def main() -> tuple[float | None, float | None, float]:
        with deadline(3) as end:
            copied = await asyncio.create_task(seen())
            background = await asyncio.create_task(seen(), context=detached())
        return copied, background, end

    copied, background, end = asyncio.run(main())
    assert copied == end and background is None
