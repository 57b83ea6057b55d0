"""A step whose tool ran but whose Complete got no answer (its only replica died after
the tool ran): the step raises, and the next step of the same key, from the same lease,
sends the outcome again instead of running the tool a second time (a Begin from that
live lease would be told PROCEED, as a retried Begin)."""

from __future__ import annotations

import asyncio

import pytest

from accord.client import (
    DeadlineExceededError,
    EffectRun,
    RetryPolicy,
    UnavailableError,
    effect_key,
)
from accord.v1 import effects_pb2
from tests.harness import Coordinator, make_client, until

RUN = "newsletter"


async def test_a_lost_complete_is_sent_again_not_run_again(
    live_replicas: list[Coordinator], namespace: str
) -> None:
    first, second = live_replicas
    async with make_client(
        [first.address],
        namespace,
        agent="mailer",
        timeout=3,
        retry=RetryPolicy(max_attempts=3, initial_backoff=0.05, max_backoff=0.2),
    ) as mailer:
        lease = await mailer.leases.grant(ttl=60)
        run = EffectRun(mailer.effects, RUN, lease)
        sent: list[str] = []

        @run.tool()
        async def send(to: str) -> str:
            sent.append(to)
            if len(sent) == 1:  # the tool acted; its replica dies before the outcome is recorded
                first.kill()
            return "queued"

        with pytest.raises((UnavailableError, DeadlineExceededError)):
            await send("ana@example.com")
        await asyncio.to_thread(first.start)

        async def retry() -> object:
            """The agent retries the step until the replica answers it again."""
            try:
                return await send.at(1)("ana@example.com")
            except (UnavailableError, DeadlineExceededError) as exc:
                return exc

        answered = await until(retry, lambda r: isinstance(r, str), "the replica to answer")
        assert answered == "queued" and sent == ["ana@example.com"]  # not run again

    async with make_client([second.address], namespace) as reader:
        effect = await reader.effects.get(effect_key(RUN, 1, "send", {"to": "ana@example.com"}))
    assert effect.state == effects_pb2.EFFECT_STATE_SUCCEEDED and effect.attempts == 1
    assert effect.completed.agent_id == "mailer" and effect.outcome.success == b'"queued"'
