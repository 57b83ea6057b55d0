"""Leases as an agent uses them: grant one, and a background task keeps it alive.

``async with await accord.leases.grant(ttl=10) as lease:`` keeps the lease alive over
one stream (moving to another replica if one dies; refreshing it with one call at a
time while the namespace's stream quota has no stream to spare) and revokes it on exit.
When the lease is lost anyway (expired during a long stall, revoked by an admin),
`lease.lost` is set and `on_lost` callbacks run: whatever the agent held under it is
gone, and fenced writes made with its grants will fail. `lease.lost_reason` is the
server's LeaseNotFoundError whenever a replica could say so (also after a stall past
the TTL: the client asks once before giving up); an UnavailableError with reason
LEASE_NOT_FOUND only when the TTL passed by the client's clock and no replica answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType

from accord.client import calls, deadlines, deprecation
from accord.client.errors import (
    AccordError,
    LeaseNotFoundError,
    QuotaExceededError,
    UnavailableError,
    reason_name,
)
from accord.client.transport import Transport
from accord.v1 import common_pb2, leases_pb2


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    id: int
    agent_id: str
    granted_ttl: int
    ttl: int
    granted_at: datetime | None
    labels: dict[str, str]
    locks: list[str]

    @staticmethod
    def _from(msg: leases_pb2.LeaseInfo) -> LeaseInfo:
        at = (
            datetime.fromtimestamp(msg.granted_at.seconds, UTC)
            if msg.HasField("granted_at")
            else None
        )
        return LeaseInfo(
            msg.id,
            msg.agent_id,
            msg.granted_ttl_seconds,
            msg.ttl_seconds,
            at,
            dict(msg.labels),
            list(msg.locks),
        )


@dataclass(frozen=True)
class LeasesPage:
    leases: list[LeaseInfo]
    # Empty on the last page.
    next_page_token: str
    # True when the namespace had too many lock entries to report each lease's locks.
    locks_omitted: bool


class Lease:
    """A granted lease, kept alive in the background until revoked or lost."""

    id: int
    # Seconds, as granted.
    ttl: int
    info: LeaseInfo
    # Set once the lease is lost (not when we revoke it); lost_reason says why.
    lost: asyncio.Event
    lost_reason: AccordError | None

    def __init__(self, transport: Transport, info: LeaseInfo, *, keepalive: bool = True) -> None:
        self._t = transport
        self.id = info.id
        self.ttl = info.granted_ttl
        self.info = info
        self.lost = asyncio.Event()
        self.lost_reason = None
        self._callbacks: list[Callable[[AccordError], object]] = []
        self._expires_at = time.monotonic() + self.ttl
        # Kept alive beyond any ambient deadline of the call that granted it.
        self._task = (
            asyncio.create_task(self._keep_alive(), context=deadlines.detached())
            if keepalive
            else None
        )

    def on_lost(self, callback: Callable[[AccordError], object]) -> None:
        """Call callback(reason) once, when the lease is lost (not when revoked by us)."""
        if self.lost_reason is not None:
            callback(self.lost_reason)
        else:
            self._callbacks.append(callback)

    async def revoke(self, *, timeout: float | None = None) -> None:
        """Stop keeping the lease alive and end it (a lease already gone is fine)."""
        await self._stop()
        request = leases_pb2.RevokeRequest(lease_id=self.id)
        # Giving back is never cut short by an ambient deadline.
        with contextlib.suppress(LeaseNotFoundError), deadlines.unbounded():
            await self._t.unary(calls.LEASES_REVOKE, request, timeout=timeout)

    async def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _lose(self, reason: AccordError) -> None:
        if self.lost_reason is None:
            self.lost_reason = reason
            self.lost.set()
            for callback in self._callbacks:
                callback(reason)

    async def _requests(self) -> AsyncIterator[leases_pb2.KeepAliveRequest]:
        while True:
            yield leases_pb2.KeepAliveRequest(lease_id=self.id)
            await asyncio.sleep(self.ttl / 3)

    async def _keep_alive(self) -> None:
        failures = 0
        while True:
            try:
                # A refresh is answered every TTL/3: a replica silent for TTL/2 is frozen,
                # and the rest of the TTL is left to refresh through another.
                stream = self._t.bidi(calls.LEASES_KEEP_ALIVE, self._requests(), stall=self.ttl / 2)
                async for response in stream:
                    failures = 0
                    self._expires_at = time.monotonic() + response.ttl_seconds
            except LeaseNotFoundError as gone:
                self._lose(gone)
                return
            except QuotaExceededError:
                # No stream to spare in the namespace: refresh with one call, and ask for
                # a stream again at the next refresh.
                if await self._refresh_once():
                    failures = 0
                    await asyncio.sleep(self.ttl / 3)
                    continue
                if self.lost_reason is not None:
                    return
            except AccordError as exc:
                if time.monotonic() >= self._expires_at:
                    # Past its TTL by our clock (a stall, say): ask once, so that a lease
                    # that is gone is reported as such (LeaseNotFoundError) and one that
                    # lived on (etcd TTLs are minimums) is kept, not given up.
                    if await self._refresh_once():
                        failures = 0
                        continue
                    if self.lost_reason is not None:
                        return
                    self._lose(
                        UnavailableError(
                            f"lease {self.id} could not be kept alive before it expired: "
                            f"{exc.message}",
                            reason=reason_name(common_pb2.ERROR_REASON_LEASE_NOT_FOUND),
                        )
                    )
                    return
            failures += 1
            await asyncio.sleep(min(self._t.retry.backoff(failures), self.ttl / 6))

    async def _refresh_once(self) -> bool:
        """One KeepAliveOnce call; whether it kept the lease (a lost lease is reported)."""
        request = leases_pb2.KeepAliveOnceRequest(lease_id=self.id)
        try:
            response = await self._t.unary(calls.LEASES_KEEP_ALIVE_ONCE, request)
        except LeaseNotFoundError as gone:
            self._lose(gone)
            return False
        except AccordError:
            return False
        self._expires_at = time.monotonic() + response.ttl_seconds
        return True

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.revoke()


class AsyncLeases:
    """Every method takes `timeout=`, the call's deadline in seconds (None: the client's
    default)."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    async def grant(
        self,
        ttl: int = 10,
        *,
        labels: Mapping[str, str] | None = None,
        keepalive: bool = True,
        timeout: float | None = None,
    ) -> Lease:
        request = leases_pb2.GrantRequest(ttl_seconds=ttl, labels=labels or {})
        response = await self._t.unary(calls.LEASES_GRANT, request, timeout=timeout)
        return Lease(self._t, LeaseInfo._from(response.lease), keepalive=keepalive)

    async def keepalive_once(self, lease_id: int, *, timeout: float | None = None) -> int:
        request = leases_pb2.KeepAliveOnceRequest(lease_id=lease_id)
        response = await self._t.unary(calls.LEASES_KEEP_ALIVE_ONCE, request, timeout=timeout)
        return int(response.ttl_seconds)

    def revoke(
        self, lease_id: int | Lease, *, timeout: float | None = None
    ) -> Coroutine[None, None, None]:
        """End the lease with this id (LeaseNotFoundError if it is gone already).
        Passing the Lease itself is deprecated: call ``lease.revoke()``."""
        if isinstance(lease_id, Lease):
            deprecation.warn("leases.revoke(lease) is deprecated: use lease.revoke()")
            return lease_id.revoke(timeout=timeout)
        return self._revoke(lease_id, timeout)

    async def _revoke(self, lease_id: int, timeout: float | None) -> None:
        request = leases_pb2.RevokeRequest(lease_id=lease_id)
        with deadlines.unbounded():  # giving back is never cut short by an ambient deadline
            await self._t.unary(calls.LEASES_REVOKE, request, timeout=timeout)

    async def time_to_live(self, lease_id: int, *, timeout: float | None = None) -> LeaseInfo:
        request = leases_pb2.TimeToLiveRequest(lease_id=lease_id)
        response = await self._t.unary(calls.LEASES_TIME_TO_LIVE, request, timeout=timeout)
        return LeaseInfo._from(response.lease)

    async def list(self, *, timeout: float | None = None) -> list[LeaseInfo]:
        """Every live lease in the namespace, one page after another (timeout: per page);
        `ttl` is 0 (time_to_live reports it)."""
        out: list[LeaseInfo] = []
        token = ""
        while True:
            page = await self.list_page(limit=250, page_token=token, timeout=timeout)
            out.extend(page.leases)
            if not page.next_page_token:
                return out
            token = page.next_page_token

    async def list_page(
        self, *, limit: int = 0, page_token: str = "", timeout: float | None = None
    ) -> LeasesPage:
        """One page of leases in id order (limit 0: 100, at most 1000); pass
        next_page_token for the next. Pages of one listing read the same revision."""
        request = leases_pb2.LeasesListRequest(limit=limit, page_token=page_token)
        response = await self._t.unary(calls.LEASES_LIST, request, timeout=timeout)
        return LeasesPage(
            [LeaseInfo._from(lease) for lease in response.leases],
            response.next_page_token,
            response.locks_omitted,
        )
