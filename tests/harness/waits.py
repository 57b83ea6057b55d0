"""Waiting on a real condition instead of sleeping for a guessed time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from accord.client import AsyncClient

T = TypeVar("T")


async def _poll(
    probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], timeout: float
) -> tuple[bool, T]:
    """probe() until done(value) or timeout seconds pass: (whether done, last value)."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        value = await probe()
        if done(value):
            return True, value
        if time.monotonic() > deadline:
            return False, value
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.25)


async def eventually(
    probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], timeout: float = 15.0
) -> T:
    """probe() until done(value), for at most timeout seconds; the last value otherwise
    (the caller asserts on it)."""
    _, value = await _poll(probe, done, timeout)
    return value


async def until(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    what: str,
    timeout: float = 15.0,
) -> T:
    """probe() until done(value) and return that value; after timeout seconds, fail with
    what was awaited and the last value seen. For waits that order a test's steps."""
    ok, value = await _poll(probe, done, timeout)
    if not ok:
        raise AssertionError(f"waited {timeout:g}s for {what}; last seen: {value!r}")
    return value


async def queued(client: AsyncClient, lock: str, count: int, timeout: float = 15.0) -> list[str]:
    """Until the lock's queue (as Describe shows it) holds at least count waiters: each
    waiting acquire is in line, and its wait edges exist for the deadlock detector.
    Returns the waiters' agents in queue order."""

    async def waiters() -> list[str]:
        state, _ = await client.locks.describe(lock)
        return [w.agent_id for w in state.waiters]

    return await until(
        waiters, lambda found: len(found) >= count, f"{count} waiter(s) queued on {lock!r}", timeout
    )


async def wall_clock_past(moment: float, timeout: float = 15.0) -> None:
    """Until time.time() is past moment (epoch seconds): a deadline set by a replica on
    this host has passed for it too."""

    async def now() -> float:
        return time.time()

    await until(now, lambda t: t > moment, f"the wall clock to pass {moment:.3f}", timeout)


async def health(address: str) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
    """A replica's overall gRPC health status (UNKNOWN if it does not answer)."""
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2
            )
        except grpc.aio.AioRpcError:
            return health_pb2.HealthCheckResponse.UNKNOWN
        return reply.status


async def not_serving(address: str, timeout: float = 15.0) -> None:
    """Until the replica reports NOT_SERVING: it has found etcd unreachable."""

    async def status() -> str:
        return health_pb2.HealthCheckResponse.ServingStatus.Name(await health(address))

    await until(status, lambda s: s == "NOT_SERVING", f"{address} to report NOT_SERVING", timeout)
