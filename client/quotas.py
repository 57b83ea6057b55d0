"""Namespace quotas as an admin (or any reader) sees them: limits, overrides and usage.

``await accord.quotas.get()`` gives the client's namespace's limits in force, the
overrides stored for it and its usage (counted by the replica that answered, from etcd).
A cluster admin overrides limits with ``await accord.quotas.set(keys=500_000)``; fields
left out keep their value, ``clear=True`` drops every override first.

Error handling: set without a cluster admin (auth required) raises PermissionDeniedError;
a negative or non-finite limit raises InvalidArgumentError and stores nothing. A call
refused by a quota raises QuotaExceededError (after the client honoured its RetryInfo as
far as the deadline and retry budget allowed).
"""

from __future__ import annotations

from accord.client import calls
from accord.client.transport import Transport
from accord.v1 import quotas_pb2

# The contract's own messages (typed through their .pyi stubs).
QuotaLimits = quotas_pb2.QuotaLimits
QuotaUsage = quotas_pb2.QuotaUsage
QuotaStatus = quotas_pb2.QuotasGetResponse


class AsyncQuotas:
    def __init__(self, transport: Transport) -> None:
        self._t = transport

    async def get(self, *, timeout: float | None = None) -> QuotaStatus:
        """The namespace's limits in force, its stored overrides, and its usage."""
        request = quotas_pb2.QuotasGetRequest()
        return await self._t.unary(calls.QUOTAS_GET, request, timeout=timeout)

    async def set(
        self,
        *,
        keys: int | None = None,
        bytes: int | None = None,
        leases: int | None = None,
        sessions: int | None = None,
        session_bytes: int | None = None,
        votes_open: int | None = None,
        effects: int | None = None,
        streams: int | None = None,
        requests_per_second: float | None = None,
        agent_requests_per_second: float | None = None,
        burst_seconds: float | None = None,
        clear: bool = False,
        timeout: float | None = None,
    ) -> QuotaLimits:
        """Override the given limits for the namespace (None: keep); the overrides now
        stored. Needs a cluster admin."""
        limits = QuotaLimits(
            keys=keys,
            bytes=bytes,
            leases=leases,
            sessions=sessions,
            session_bytes=session_bytes,
            votes_open=votes_open,
            effects=effects,
            streams=streams,
            requests_per_second=requests_per_second,
            agent_requests_per_second=agent_requests_per_second,
            burst_seconds=burst_seconds,
        )
        return await self.set_limits(limits, clear=clear, timeout=timeout)

    async def set_limits(
        self, limits: QuotaLimits, *, clear: bool = False, timeout: float | None = None
    ) -> QuotaLimits:
        """Override the limits set in limits (a QuotaLimits message); the overrides now
        stored. Needs a cluster admin."""
        request = quotas_pb2.QuotasSetRequest(limits=limits, clear=clear)
        response = await self._t.unary(calls.QUOTAS_SET, request, timeout=timeout)
        return response.overrides
