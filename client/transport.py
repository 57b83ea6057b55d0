"""Channels to the coordinator replicas: failover, retries, deadlines, identity.

One channel per replica address, used in turn: when a replica stops answering, calls
move on to the next. Only calls declared safe to repeat (`accord.client.calls`) are
retried; every call has a deadline and carries the agent's identity metadata and, when
the client has one, its token (`authorization: Bearer <token>`).

Pushback: a refusal carrying google.rpc.RetryInfo (a quota or rate refused the call before
it ran, so any call may be sent again) is retried after at least the delay the server
asked for, plus up to a tenth more to spread a fleet, spending the retry budget like any
retry; when the caller's deadline would pass before then, or the budget or attempts are
spent, the typed error (QuotaExceededError) is raised at once instead of waiting.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence

import grpc

from accord.client.calls import BidiStream, Req, Resp, ServerStream, Stubs, Unary
from accord.client.errors import (
    DeadlineExceededError,
    QuotaExceededError,
    from_rpc_error,
    retry_after,
)
from accord.client.retry import RetryBudget, RetryPolicy

_RETRYABLE = {grpc.StatusCode.UNAVAILABLE}
_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    # No message-size option: every answer fits gRPC's default 4 MiB (the replica pages,
    # summarises or refuses whatever would not), as for any other gRPC client.
]


class _Replica:
    def __init__(self, address: str, credentials: grpc.ChannelCredentials | None) -> None:
        if credentials is None:
            self.channel = grpc.aio.insecure_channel(address, options=_OPTIONS)
        else:
            self.channel = grpc.aio.secure_channel(address, credentials, options=_OPTIONS)
        self.stubs = Stubs(self.channel)


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
        token: str = "",
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
            *((("authorization", f"Bearer {token}"),) if token else ()),
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
        self, call: Unary[Req, Resp], request: Req, *, timeout: float | None = None
    ) -> Resp:
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        attempt = 0
        while True:
            index, replica = self.replica()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceededError("the call's deadline expired before it could be sent")
            try:
                response = await call.method(replica.stubs)(
                    request, timeout=remaining, metadata=self.metadata
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    self.failover(index)
                error = from_rpc_error(exc)
                pushback = retry_after(error)
                # A quota refused the call before it ran: any call may go again.
                refused = isinstance(error, QuotaExceededError)
                if not (refused or (call.safe and (exc.code() in _RETRYABLE or pushback))):
                    raise error from exc
                attempt += 1
                pause = (
                    self.retry.backoff(attempt)
                    if pushback is None
                    else pushback * random.uniform(1.0, 1.1)  # at least what was asked
                )
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

    def stream(self, call: ServerStream[Req, Resp], request: Req) -> AsyncGenerator[Resp, None]:
        """One server stream on the current replica, opened when first read;
        reconnecting elsewhere is the caller's to do."""
        return self._read(lambda stubs: call.method(stubs)(request, metadata=self.metadata))

    def bidi(
        self, call: BidiStream[Req, Resp], requests: AsyncIterator[Req]
    ) -> AsyncGenerator[Resp, None]:
        """One bidirectional stream on the current replica, fed from requests."""
        return self._read(lambda stubs: call.method(stubs)(requests, metadata=self.metadata))

    async def _read(
        self,
        start: Callable[
            [Stubs], grpc.aio.UnaryStreamCall[Req, Resp] | grpc.aio.StreamStreamCall[Req, Resp]
        ],
    ) -> AsyncGenerator[Resp, None]:
        index, replica = self.replica()
        rpc = start(replica.stubs)
        try:
            async for response in rpc:
                yield response
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                self.failover(index)
            raise from_rpc_error(exc) from exc
        finally:
            rpc.cancel()
