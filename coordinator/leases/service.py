"""gRPC servicer for accord.v1.Leases: unpack, call the lease and lock primitives, pack."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from accord.coordinator.leases.store import LeaseStore
from accord.coordinator.locks.admin import LockAdmin
from accord.coordinator.observability import accord_metrics
from accord.coordinator.substrate import calls
from accord.v1 import common_pb2, leases_pb2, leases_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class LeasesService(leases_pb2_grpc.LeasesServicer):
    def __init__(self, leases: LeaseStore, locks: LockAdmin, replica: str) -> None:
        self._leases = leases
        self._locks = locks
        self._replica = replica

    def _header(self, revision: int = 0) -> common_pb2.ResponseHeader:
        return common_pb2.ResponseHeader(revision=revision, replica=self._replica)

    async def Grant(
        self, request: leases_pb2.GrantRequest, context: Context
    ) -> leases_pb2.GrantResponse:
        lease = await self._leases.grant(request.ttl_seconds, request.labels)
        return leases_pb2.GrantResponse(header=self._header(), lease=lease)

    async def KeepAlive(
        self, request_iterator: AsyncIterator[leases_pb2.KeepAliveRequest], context: Context
    ) -> AsyncIterator[leases_pb2.KeepAliveResponse]:
        with accord_metrics.Open(accord_metrics.KEEPALIVE):
            async for lease_id, ttl in self._leases.keepalive_stream(request_iterator):
                yield leases_pb2.KeepAliveResponse(
                    header=self._header(), lease_id=lease_id, ttl_seconds=ttl
                )

    async def KeepAliveOnce(
        self, request: leases_pb2.KeepAliveOnceRequest, context: Context
    ) -> leases_pb2.KeepAliveOnceResponse:
        await self._leases.owned(request.lease_id)
        ttl = await self._leases.keepalive(request.lease_id)
        return leases_pb2.KeepAliveOnceResponse(header=self._header(), ttl_seconds=ttl)

    async def Revoke(
        self, request: leases_pb2.RevokeRequest, context: Context
    ) -> leases_pb2.RevokeResponse:
        await self._leases.revoke(request.lease_id)
        return leases_pb2.RevokeResponse(header=self._header())

    async def TimeToLive(
        self, request: leases_pb2.TimeToLiveRequest, context: Context
    ) -> leases_pb2.TimeToLiveResponse:
        info, keys = await self._leases.info(request.lease_id)
        info.locks.extend(self._locks.names_from_keys(calls.current.get().namespace, keys))
        return leases_pb2.TimeToLiveResponse(header=self._header(), lease=info)

    async def List(
        self, request: leases_pb2.LeasesListRequest, context: Context
    ) -> leases_pb2.LeasesListResponse:
        page = await self._leases.list_page(request.limit, request.page_token)
        return leases_pb2.LeasesListResponse(
            header=self._header(page.revision),
            leases=page.leases,
            next_page_token=page.next_page_token,
            locks_omitted=page.locks_omitted,
        )
