"""One client across replicas: its calls and streams are spread over every replica it is
given, a replica that died is left alone and used again once it is back, and a safe call
made while the only replica restarts is retried until its deadline, not a fixed count."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from accord.client import AsyncClient, DeadlineExceededError, RetryPolicy, calls
from accord.v1 import kv_pb2
from tests.harness import Coordinator, make_client, until


async def served_by(client: AsyncClient, count: int) -> Counter[str]:
    """Which replica answered each of count sequential reads."""
    served: Counter[str] = Counter()
    for _ in range(count):
        response = await client._transport.unary(calls.KV_GET, kv_pb2.GetRequest(key="k"))
        served[response.header.replica] += 1
    return served


async def test_calls_and_streams_from_one_client_use_every_replica(
    replicas: list[Coordinator], namespace: str
) -> None:
    names = {r.name for r in replicas}
    async with make_client([r.address for r in replicas], namespace) as client:
        served = await served_by(client, 20)
        assert set(served) == names, served
        assert min(served.values()) >= 5, served  # spread, not one call elsewhere by chance
        # Concurrent calls too.
        answers = await asyncio.gather(
            *(client._transport.unary(calls.KV_GET, kv_pb2.GetRequest(key="k")) for _ in range(20))
        )
        assert {a.header.replica for a in answers} == names
        # Two streams open at once are on different replicas.
        streams = [
            client._transport.stream(calls.KV_WATCH, kv_pb2.WatchRequest(key="k")) for _ in range(2)
        ]
        firsts = [await anext(s) for s in streams]
        assert {f.header.replica for f in firsts} == names
        for s in streams:
            await s.aclose()


async def test_calls_go_on_while_a_replica_is_down_and_return_to_it(
    live_replicas: list[Coordinator], namespace: str
) -> None:
    first, second = live_replicas
    async with make_client([first.address, second.address], namespace) as client:
        assert set(await served_by(client, 4)) == {first.name, second.name}
        second.kill()
        assert set(await served_by(client, 20)) == {first.name}  # each one answered
        await asyncio.to_thread(second.start)

        async def back() -> Counter[str]:
            return await served_by(client, 4)

        await until(back, lambda s: second.name in s, f"a call served by {second.name}", 30)


async def test_a_safe_call_outlasts_the_restart_of_the_only_replica(
    live_replicas: list[Coordinator], namespace: str
) -> None:
    """The default policy retries UNAVAILABLE until the deadline: the replica comes back
    only after the call was sent (and failed) six times, as many as the client once tried
    before giving up, and the call is answered by it. (A 20 s deadline: a restart takes
    2-3 s here, more on a loaded machine.)"""
    replica = live_replicas[0]
    async with make_client([replica.address], namespace, retry=RetryPolicy()) as client:
        await client.kv.put("k", b"v")
        replica.kill()
        call = asyncio.create_task(
            client._transport.unary(calls.KV_GET, kv_pb2.GetRequest(key="k"), timeout=20)
        )
        (down,) = client._transport.replicas.all

        async def failures() -> int:
            assert not call.done(), call  # still trying while its only replica is down
            return down.failures

        await until(failures, lambda n: n >= 6, "six failed attempts", 10)
        await asyncio.to_thread(replica.start)
        answer = await call
        assert answer.header.replica == replica.name and answer.kv.value == b"v"


async def test_a_spent_retry_budget_slows_failover_but_does_not_fail_calls(
    live_replicas: list[Coordinator], namespace: str
) -> None:
    first, second = live_replicas
    async with make_client([first.address, second.address], namespace) as client:
        await served_by(client, 2)  # a channel to each
        client._transport._budget.tokens = 0  # spent by earlier retries
        second.kill()
        assert set(await served_by(client, 6)) == {first.name}


async def test_a_frozen_replica_costs_one_call_its_deadline_then_is_left_alone(
    live_replicas: list[Coordinator], namespace: str
) -> None:
    """A stopped replica keeps its connection open, so nothing fails: a call there waits
    until its deadline. Having answered nothing since, the replica is left alone, checked
    by health checks, not by calls (two at least, each failing), and every later call is
    answered by the other, until it runs again and calls return to it."""
    first, second = live_replicas
    async with make_client([first.address, second.address], namespace) as client:
        assert set(await served_by(client, 4)) == {first.name, second.name}
        frozen = client._transport.replicas.all[1]
        second.pause()
        try:
            timed_out = 0
            served: Counter[str] = Counter()
            started = time.monotonic()
            while frozen.failures < 3 and time.monotonic() - started < 30:
                try:
                    answer = await client._transport.unary(
                        calls.KV_GET, kv_pb2.GetRequest(key="k"), timeout=2
                    )
                    served[answer.header.replica] += 1
                except DeadlineExceededError:
                    timed_out += 1
            assert frozen.failures >= 3, "its health checks failed twice"
            assert timed_out == 1 and set(served) == {first.name}, (timed_out, served)
        finally:
            second.resume()

        async def back() -> Counter[str]:
            return await served_by(client, 4)

        await until(back, lambda s: second.name in s, f"a call served by {second.name}", 30)
