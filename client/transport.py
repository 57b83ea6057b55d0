"""Channels to the coordinator replicas: failover, retries, deadlines, identity.

One channel per replica address, used in turn: when a replica stops answering, calls
move on to the next. Only calls that are safe to repeat are retried (reads, and writes
that carry a request_id); every call has a deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import grpc

from accord.client.errors import DeadlineExceededError, from_rpc_error
from accord.client.retry import RetryBudget, RetryPolicy
from accord.v1 import (
    kv_pb2_grpc,
    leases_pb2_grpc,
    locks_pb2_grpc,
    sessions_pb2_grpc,
    votes_pb2_grpc,
)

_RETRYABLE = {grpc.StatusCode.UNAVAILABLE}
_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


class _Replica:
    def __init__(self, address: str, credentials: grpc.ChannelCredentials | None) -> None:
        if credentials is None:
            self.channel = grpc.aio.insecure_channel(address, options=_OPTIONS)
        else:
            self.channel = grpc.aio.secure_channel(address, credentials, options=_OPTIONS)
        self.kv = kv_pb2_grpc.KVStub(self.channel)
        self.leases = leases_pb2_grpc.LeasesStub(self.channel)
        self.locks = locks_pb2_grpc.LocksStub(self.channel)
        self.sessions = sessions_pb2_grpc.SessionsStub(self.channel)
        self.votes = votes_pb2_grpc.VotesStub(self.channel)


class Transport:
    def __init__(
        self,
        addresses: Sequence[str],
        *,
        namespace: str,
        agent_id: str,
        timeout: float,
        retry: RetryPolicy,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        if not addresses:
            raise ValueError("at least one coordinator address is needed")
        self.addresses = list(addresses)
        self.timeout = timeout
        self.retry = retry
        self._budget = RetryBudget(policy=retry)
        self._credentials = credentials
        self._replicas: list[_Replica | None] = [None] * len(addresses)
        self._current = 0
        self.metadata: tuple[tuple[str, str], ...] = (
            ("accord-namespace", namespace),
            *((("accord-agent-id", agent_id),) if agent_id else ()),
        )

    def replica(self) -> tuple[int, _Replica]:
        index = self._current
        replica = self._replicas[index]
        if replica is None:
            replica = self._replicas[index] = _Replica(self.addresses[index], self._credentials)
        return index, replica

    def failover(self, index: int) -> None:
        """The replica at index failed: later calls go to the next one."""
        if self._current == index:
            self._current = (index + 1) % len(self.addresses)

    async def close(self) -> None:
        for replica in self._replicas:
            if replica is not None:
                await replica.channel.close()

    async def unary(
        self, service: str, method: str, request: Any, *, safe: bool, timeout: float | None = None
    ) -> Any:
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        attempt = 0
        while True:
            index, replica = self.replica()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceededError("the call's deadline expired before it could be sent")
            try:
                response = await getattr(getattr(replica, service), method)(
                    request, timeout=remaining, metadata=self.metadata
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    self.failover(index)
                error = from_rpc_error(exc)
                if not (safe and exc.code() in _RETRYABLE):
                    raise error from exc
                attempt += 1
                pause = self.retry.backoff(attempt)
                if (
                    attempt >= self.retry.max_attempts
                    or deadline - time.monotonic() <= pause
                    or not self._budget.try_spend()
                ):
                    raise error from exc
                await asyncio.sleep(pause)
                continue
            self._budget.refill()
            return response

    async def stream(self, service: str, method: str, request: Any) -> AsyncGenerator[Any, None]:
        """One server (or bidi, given an iterator of requests) stream on the current
        replica; reconnecting elsewhere is the caller's to do."""
        index, replica = self.replica()
        call = getattr(getattr(replica, service), method)(request, metadata=self.metadata)
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                self.failover(index)
            raise from_rpc_error(exc) from exc
        finally:
            call.cancel()
