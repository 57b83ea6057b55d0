"""Calls to the coordinator replicas: spreading, failover, retries, deadlines, identity.

Each call goes to a replica chosen by `accord.client.replicas` (in turn among those up,
the less loaded of two; a replica that failed is down for a backoff, probed again, and
used again once it answers). Only calls declared safe to repeat (`accord.client.calls`)
are retried after UNAVAILABLE: at once on another replica that is up, else when the first
one is due a probe or comes back, until the caller's deadline (`RetryPolicy`); the typed
error is raised at once when no replica would be tried before the deadline. Every call has
a deadline and carries the agent's identity metadata, when the client has one its token
(`authorization: Bearer <token>`), and the caller's OpenTelemetry context when it has one
(`accord.client.propagation`).

Pushback: a refusal carrying google.rpc.RetryInfo (a quota or rate refused the call before
it ran, so any call may be sent again) is retried after at least the delay the server
asked for, plus up to a tenth more to spread a fleet, spending the retry budget like any
retry; when the caller's deadline would pass before then, or the budget or attempts are
spent, the typed error (QuotaExceededError) is raised at once instead of waiting.

Ambient deadline (`accord.client.deadlines`): a unary call's deadline is also bounded by
the one its caller set, retries and failover included; once it has passed, the call
fails at once with DeadlineExceededError without being sent. While one is set, calls
carry it as W3C baggage (accord.deadline). Streams are not bounded by it (see there).

Streams: a stream that answers at a known pace (a lease's keep-alive) passes `stall=`,
and a replica that sends nothing for that long is given up (down, if it answered nothing
else meanwhile), as a frozen replica keeps its connection open and answers nothing.

Error handling: every failed call surfaces as the typed error of `accord.client.errors`
(from the last attempt), chained to the gRPC error; a deadline that passes before a call
could be sent is DeadlineExceededError.
"""

from __future__ import annotations

import asyncio
import copy
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence

import grpc

from accord.client import deadlines
from accord.client.calls import BidiStream, Req, Resp, ServerStream, Stubs, Unary
from accord.client.errors import (
    AccordError,
    DeadlineExceededError,
    QuotaExceededError,
    UnavailableError,
    from_rpc_error,
    retry_after,
)
from accord.client.propagation import outgoing
from accord.client.replicas import Pick, Replica, Replicas
from accord.client.retry import RetryBudget, RetryPolicy

# Codes that say nothing of whether the replica is up (the caller's deadline or cancel).
_UNANSWERED = {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}


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
        self.agent_id = agent_id
        self.timeout = timeout
        self.retry = retry
        self._budget = RetryBudget(policy=retry)
        self.replicas = Replicas(self.addresses, credentials, retry)
        self.metadata: tuple[tuple[str, str], ...] = (
            ("accord-namespace", namespace),
            *((("accord-agent-id", agent_id),) if agent_id else ()),
            *((("authorization", f"Bearer {token}"),) if token else ()),
        )

    def as_agent(self, agent_id: str) -> Transport:
        """This transport acting as another agent: the same channels, credentials and
        retry budget; only the accord-agent-id metadata differs."""
        other = copy.copy(self)
        other.agent_id = agent_id
        other.metadata = (
            *(pair for pair in self.metadata if pair[0] != "accord-agent-id"),
            *((("accord-agent-id", agent_id),) if agent_id else ()),
        )
        return other

    async def close(self) -> None:
        await self.replicas.close()

    async def unary(
        self, call: Unary[Req, Resp], request: Req, *, timeout: float | None = None
    ) -> Resp:
        # Bounded by the ambient deadline too (accord.client.deadlines), retries included.
        seconds = deadlines.cap(timeout if timeout is not None else self.timeout)
        if seconds <= 0:
            raise DeadlineExceededError("the ambient deadline had passed: the call was not sent")
        deadline = time.monotonic() + seconds
        metadata = outgoing(self.metadata, deadlines.otel_context())
        attempt = 0
        chosen = await self._first(call, deadline)
        while True:
            replica, pick = chosen
            sent = time.monotonic()
            remaining = deadline - sent
            if remaining <= 0:
                raise DeadlineExceededError("the call's deadline expired before it could be sent")
            replica.in_flight += 1
            try:
                response = await call.method(replica.stubs)(
                    request, timeout=remaining, metadata=metadata
                )
            except grpc.aio.AioRpcError as exc:
                error = self._outcome(replica, pick, exc, sent)
                attempt += 1
                again = await self._again(call, exc.code(), error, attempt, deadline)
                if again is None:
                    raise error from exc
                chosen = again
                continue
            finally:
                replica.in_flight -= 1
            self.replicas.answered(replica)
            self._budget.refill()
            return response

    async def _first(self, call: Unary[Req, Resp], deadline: float) -> tuple[Replica, Pick]:
        """Where to send a call first: a replica up (or due a probe) now, else the first
        one back before deadline."""
        chosen = await self.replicas.pick(deadline, probe=call.safe)
        if chosen is None:
            chosen = await self.replicas.acquire(deadline)
        if chosen is None:
            raise UnavailableError(
                "no replica answered its health check before the call's deadline",
                code=grpc.StatusCode.UNAVAILABLE,
            )
        return chosen

    def _outcome(
        self, replica: Replica, pick: Pick, exc: grpc.aio.AioRpcError, sent: float | None
    ) -> AccordError:
        """What a failed call says of its replica, and the typed error it becomes.
        UNAVAILABLE: down. The call's deadline (sent at sent) with no answer from the
        replica since: down, as silent. Cancelled, or a deadline while it answered
        others: nothing. Any other answer, the replica's own DEADLINE_EXCEEDED included
        (it carries a reason): up."""
        error = from_rpc_error(exc)
        code = exc.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            self.replicas.failed(replica, pick)
        elif code in _UNANSWERED and not error.reason:
            # The caller's deadline or cancel says nothing, unless the replica answered
            # nothing since the call was sent (frozen with its connection open).
            deadline = code == grpc.StatusCode.DEADLINE_EXCEEDED
            if deadline and sent is not None and replica.last_answer < sent:
                self.replicas.failed(replica, pick, silent=True)
        else:
            self.replicas.answered(replica)
        return error

    async def _again(
        self,
        call: Unary[Req, Resp],
        code: grpc.StatusCode,
        error: AccordError,
        attempt: int,
        deadline: float,
    ) -> tuple[Replica, Pick] | None:
        """Where (and, having waited, when) to send a failed call again; None: do not."""
        pushback = retry_after(error)
        # A quota refused the call before it ran: any call may go again.
        refused = isinstance(error, QuotaExceededError)
        unavailable = code == grpc.StatusCode.UNAVAILABLE
        if not (refused or (call.safe and (unavailable or pushback is not None))):
            return None
        if self.retry.max_attempts is not None and attempt >= self.retry.max_attempts:
            return None
        if pushback is None and unavailable:
            # Another replica at once, or the first one back; out of budget, not before
            # about max_backoff (slowed down, not ended).
            spent = self._budget.try_spend()
            pause = 0.0 if spent else self.retry.max_backoff * random.uniform(0.5, 1.0)
            return await self.replicas.acquire(deadline, not_before=time.monotonic() + pause)
        pause = (
            self.retry.backoff(attempt)
            if pushback is None
            else pushback * random.uniform(1.0, 1.1)  # at least what was asked
        )
        if deadline - time.monotonic() <= pause or not self._budget.try_spend():
            return None
        await asyncio.sleep(pause)
        return await self.replicas.pick(deadline, probe=call.safe) or await self.replicas.acquire(
            deadline
        )

    def stream(self, call: ServerStream[Req, Resp], request: Req) -> AsyncGenerator[Resp, None]:
        """One server stream on a replica chosen as for a call (by the streams each has
        open), opened when first read; reconnecting is the caller's to do. It carries the
        trace context current when stream() is called."""
        metadata = outgoing(self.metadata)
        return self._read(lambda stubs: call.method(stubs)(request, metadata=metadata))

    def bidi(
        self,
        call: BidiStream[Req, Resp],
        requests: AsyncIterator[Req],
        *,
        stall: float | None = None,
    ) -> AsyncGenerator[Resp, None]:
        """One bidirectional stream on a replica chosen as for stream(), fed from requests.
        stall: for a stream that answers at a known pace, the longest wait for the next
        response; past it the stream ends with UnavailableError, and the replica, if it
        answered nothing else meanwhile (frozen with its connection open), is down."""
        metadata = outgoing(self.metadata)
        return self._read(lambda stubs: call.method(stubs)(requests, metadata=metadata), stall)

    async def _read(
        self,
        start: Callable[
            [Stubs], grpc.aio.UnaryStreamCall[Req, Resp] | grpc.aio.StreamStreamCall[Req, Resp]
        ],
        stall: float | None = None,
    ) -> AsyncGenerator[Resp, None]:
        chosen = await self.replicas.pick(None, lambda r: r.streams, probe=False)
        if chosen is None:
            raise UnavailableError(
                "no replica answered its health check", code=grpc.StatusCode.UNAVAILABLE
            )
        replica, pick = chosen
        replica.streams += 1
        rpc = start(replica.stubs)
        responses = aiter(rpc)
        watchdog = _Watchdog(rpc, stall)
        try:
            while True:
                watchdog.arm()
                try:
                    response = await anext(responses)
                except StopAsyncIteration:
                    return
                except (grpc.aio.AioRpcError, asyncio.CancelledError):
                    if watchdog.fired is None or _cancelled_by_caller():
                        raise
                    if replica.last_answer < watchdog.fired:
                        self.replicas.failed(replica, pick, silent=True)
                    raise UnavailableError(
                        f"replica {replica.address} sent nothing on the stream for {stall:g}s",
                        code=grpc.StatusCode.UNAVAILABLE,
                    ) from None
                finally:
                    watchdog.disarm()
                self.replicas.answered(replica)
                yield response
        except grpc.aio.AioRpcError as exc:
            raise self._outcome(replica, pick, exc, None) from exc
        finally:
            replica.streams -= 1
            rpc.cancel()


def _cancelled_by_caller() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class _Watchdog:
    """Cancels a stream's call when no response comes within `stall` seconds of being
    armed (grpc's own cancel: a read cancelled from asyncio may never finish). `fired`:
    when the wait it ended began (monotonic), None while it has not fired."""

    def __init__(self, rpc: grpc.aio.Call, stall: float | None) -> None:
        self._rpc, self._stall = rpc, stall
        self._timer: asyncio.TimerHandle | None = None
        self._armed = 0.0
        self.fired: float | None = None

    def arm(self) -> None:
        if self._stall is not None:
            self._armed = time.monotonic()
            self._timer = asyncio.get_running_loop().call_later(self._stall, self._fire)

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self.fired = self._armed
        self._rpc.cancel()
