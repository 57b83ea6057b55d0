"""The replicas a client may call, which of them are up, and which one takes the next call.

One channel per address, opened on first use. A call goes to a replica that is up: the
next one in turn, unless a second one, drawn at random, has fewer calls in flight (the
power of two choices), so sequential calls alternate between replicas and concurrent ones
drift towards the less loaded. Streams are spread the same way by how many are open.

A replica that fails a call with UNAVAILABLE is down for a backoff that doubles with each
failure in a row (the retry policy's initial_backoff to max_backoff, half of it jittered).
Once that backoff has passed, the next call probes it (and moves its next probe a
backoff later, so concurrent callers do not all probe at once). While another replica is
up, only a first attempt of a call safe to resend probes (when its probe fails it goes
on at once to one that is up); resent calls, streams and other calls go to replicas that
are up. A probe that is
answered, or any call answered there, brings it back up. When the failure was a lost
connection, gRPC's channel reconnects in the background, and a channel READY again brings
the replica back at once. Calls in flight when a replica went down do not lengthen its
backoff.

A replica can also go silent: frozen (a stopped process, a stalled VM) with its
connection open, so calls there wait until their deadline and nothing fails. A call
that reaches its deadline without any answer from its replica since it was sent (no
reply to any call or stream of this client) marks the replica down as silent; such a
replica is probed with a gRPC health check (at most `SILENT_PROBE` seconds), not with a
call: in the background while another replica is up, else by the call that would go
there, so no call waits on it again while it stays frozen.

Error handling: nothing here raises for a replica's failures; `Transport` reports each
outcome (`answered`, `failed`) and decides what the caller sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import time
from collections.abc import Callable, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from accord.client.calls import Stubs
from accord.client.retry import RetryPolicy

_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # gRPC core waits this long for any ping's ack, keepalive's included (default 60 s):
    # without it a watch on a replica cut off silently hears nothing for over a minute
    # (tests/faults/test_nemesis.py).
    ("grpc.http2.ping_timeout_ms", 5_000),
    # gRPC reconnects a lost channel in the background: at least once a second, so a
    # replica that restarts is found back within about a second (one TCP connect each).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
    # No message-size option: every answer fits gRPC's default 4 MiB (the replica pages,
    # summarises or refuses whatever would not), as for any other gRPC client.
]
# How long a health check of a silent replica may take before it counts as failed.
SILENT_PROBE = 1.0
# How often a call waiting for a replica looks at the channels that lost their connection
# (a local check: gRPC reconnects them in the background, by its own backoff).
_RECONNECT_CHECK = 0.25


class Pick(enum.Enum):
    """How a replica was chosen, which decides what its failure means."""

    UP = "up"  # it was up: a failure marks it down
    PROBE = "probe"  # its backoff had passed: a failure doubles the backoff
    FORCED = "forced"  # every replica was down: a failure says nothing new


class Replica:
    """One address: its channel (opened on first use) and what the client knows of it."""

    def __init__(self, address: str, credentials: grpc.ChannelCredentials | None) -> None:
        self.address = address
        self._credentials = credentials
        self._channel: grpc.aio.Channel | None = None
        self._stubs: Stubs | None = None
        self._health: health_pb2_grpc.HealthStub | None = None
        self.in_flight = 0  # unary calls sent and not yet answered
        self.streams = 0  # streams open
        self.failures = 0  # failures in a row; 0 while up
        self.down_until = 0.0  # monotonic time of its next probe, while down
        self.lost_connection = False  # its channel was not READY when it failed
        self.silent = False  # down for answering nothing until a call's deadline
        self.last_answer = 0.0  # monotonic time of its last answer to this client

    @property
    def stubs(self) -> Stubs:
        if self._stubs is None:
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(self.address, options=_OPTIONS)
            else:
                self._channel = grpc.aio.secure_channel(
                    self.address, self._credentials, options=_OPTIONS
                )
            self._stubs = Stubs(self._channel)
            self._health = health_pb2_grpc.HealthStub(self._channel)
        return self._stubs

    async def serving(self, timeout: float) -> bool:
        """Whether its gRPC health check says SERVING within timeout seconds."""
        self.stubs  # noqa: B018 - opens the channel (and its health stub) if not yet open
        assert self._health is not None
        try:
            reply = await self._health.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def connected(self) -> bool:
        """Whether its channel is READY; asks an idle one to connect."""
        if self._channel is None:
            return False
        state = self._channel.get_state(try_to_connect=True)
        return state == grpc.ChannelConnectivity.READY

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


class Replicas:
    """The client's replicas, in the order given."""

    def __init__(
        self,
        addresses: Sequence[str],
        credentials: grpc.ChannelCredentials | None,
        policy: RetryPolicy,
    ) -> None:
        self.all = [Replica(address, credentials) for address in addresses]
        self._policy = policy
        self._turn = 0
        self._changed = asyncio.Event()  # set (and replaced) when a replica comes back
        self._checks: set[asyncio.Task[None]] = set()  # health checks in the background

    async def pick(
        self,
        deadline: float | None,
        load: Callable[[Replica], int] = lambda r: r.in_flight,
        *,
        probe: bool = True,
    ) -> tuple[Replica, Pick] | None:
        """A replica for a call now: one due a probe (when probe: the call may be resent
        elsewhere should it fail) or up; when none is, the one whose backoff ends first
        (its failure then changes nothing). None when that one was silent and its health
        check failed (wait with acquire)."""
        chosen = self._choose(load, probe)
        silent = chosen is not None and chosen[1] is Pick.PROBE and chosen[0].silent
        if chosen is not None and silent and any(not r.failures for r in self.all):
            self._check_aside(chosen[0])  # in the background; this call goes to one up
            chosen = self._choose(load, False)
        if chosen is None:
            forced = min(self.all, key=lambda r: (r.silent, r.down_until))
            chosen = forced, Pick.FORCED
        return chosen if await self._vouched(*chosen, deadline) else None

    async def acquire(
        self, deadline: float, *, not_before: float = 0.0
    ) -> tuple[Replica, Pick] | None:
        """A replica for a resent call, not before not_before: at once when one is up,
        else when the first one is due a probe or comes back. None when no probe is due
        before deadline (monotonic)."""
        if not_before >= deadline:
            return None
        if not_before > time.monotonic():
            await asyncio.sleep(not_before - time.monotonic())
        while True:
            # A resent call probes only when no replica is up: it failed once already.
            chosen = self._choose(lambda r: r.in_flight, False)
            if chosen is not None:
                if await self._vouched(*chosen, deadline):
                    return chosen
                continue  # its next probe is a backoff away: choose again
            wake = min(r.down_until for r in self.all)
            if wake >= deadline:
                return None
            if any(r.lost_connection for r in self.all):  # look at its channel again soon
                wake = min(wake, time.monotonic() + _RECONNECT_CHECK)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), wake - time.monotonic())

    def answered(self, replica: Replica) -> None:
        """A call to replica was answered (with anything but UNAVAILABLE): it is up."""
        replica.last_answer = time.monotonic()
        if replica.failures:
            self._up(replica)

    def failed(self, replica: Replica, pick: Pick, *, silent: bool = False) -> None:
        """A call to replica, chosen as pick, failed with UNAVAILABLE (silent: reached its
        deadline with no answer from replica since it was sent)."""
        if pick is Pick.FORCED or (pick is Pick.UP and replica.failures):
            return  # already down: a call in flight when it went, or one sent anyway
        replica.failures += 1
        replica.down_until = time.monotonic() + self._policy.down_for(replica.failures)
        replica.lost_connection = not replica.connected()
        replica.silent = silent

    def _check_aside(self, replica: Replica) -> None:
        """Health-check a silent replica in the background: back up if SERVING."""

        async def check() -> None:
            if await replica.serving(SILENT_PROBE):
                self._up(replica)
            else:
                self.failed(replica, Pick.PROBE, silent=True)

        task = asyncio.get_running_loop().create_task(check())
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def _vouched(self, replica: Replica, pick: Pick, deadline: float | None) -> bool:
        """Whether a call may go to replica: yes unless it is silent and its health check
        does not say SERVING in time (it then stays down for a longer backoff)."""
        if pick is Pick.UP or not replica.silent:
            return True
        timeout = (
            SILENT_PROBE if deadline is None else min(SILENT_PROBE, deadline - time.monotonic())
        )
        if timeout > 0 and await replica.serving(timeout):
            return True
        self.failed(replica, Pick.PROBE, silent=True)
        return False

    def _choose(self, load: Callable[[Replica], int], probe: bool) -> tuple[Replica, Pick] | None:
        now = time.monotonic()
        count = len(self.all)
        start = self._turn
        self._turn = (start + 1) % count
        ready: list[Replica] = []
        due: Replica | None = None
        for i in range(count):
            replica = self.all[(start + i) % count]
            if replica.failures and replica.lost_connection and replica.connected():
                self._up(replica)  # reconnected in the background
            if not replica.failures:
                ready.append(replica)
            elif due is None and replica.down_until <= now:
                due = replica
        if due is not None and (probe or not ready):
            # Its next probe a backoff later, whatever this one's fate: one probe at a time.
            due.down_until = now + self._policy.down_for(due.failures)
            return due, Pick.PROBE
        if not ready:
            return None
        first = ready[0]
        if len(ready) > 1:
            other = random.choice(ready[1:])
            if load(other) < load(first):
                return other, Pick.UP
        return first, Pick.UP

    def _up(self, replica: Replica) -> None:
        replica.failures = 0
        replica.down_until = 0.0
        replica.lost_connection = False
        replica.silent = False
        self._changed.set()
        self._changed = asyncio.Event()

    async def close(self) -> None:
        checks = list(self._checks)
        for task in checks:
            task.cancel()
        await asyncio.gather(*checks, return_exceptions=True)
        for replica in self.all:
            await replica.close()
