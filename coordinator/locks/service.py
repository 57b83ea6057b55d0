"""gRPC servicer for accord.v1.Locks: unpack, call the lock primitives, pack."""

from __future__ import annotations

from typing import Any

import grpc

from accord.coordinator.locks.admin import LockAdmin
from accord.coordinator.locks.deadlocks import DeadlockDetector
from accord.coordinator.locks.many import acquire_many
from accord.coordinator.locks.store import LockStore
from accord.coordinator.substrate import calls
from accord.coordinator.substrate.pages import snapshot_token
from accord.v1 import common_pb2, locks_pb2, locks_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class LocksService(locks_pb2_grpc.LocksServicer):
    def __init__(
        self, locks: LockStore, admin: LockAdmin, deadlocks: DeadlockDetector, replica: str
    ) -> None:
        self._locks = locks
        self._admin = admin
        self._deadlocks = deadlocks
        self._replica = replica

    def _header(self, revision: int = 0) -> common_pb2.ResponseHeader:
        return common_pb2.ResponseHeader(revision=revision, replica=self._replica)

    async def Acquire(
        self, request: locks_pb2.AcquireRequest, context: Context
    ) -> locks_pb2.AcquireResponse:
        grant, _ = await self._locks.acquire(
            request.name,
            request.lease_id,
            mode=request.mode,
            permits=request.permits,
            no_wait=request.no_wait,
            timeout_ms=request.timeout_ms,
            priority=request.priority,
        )
        return locks_pb2.AcquireResponse(header=self._header(grant.token), grant=grant)

    async def AcquireMany(
        self, request: locks_pb2.AcquireManyRequest, context: Context
    ) -> locks_pb2.AcquireManyResponse:
        grants = await acquire_many(
            self._locks,
            request.locks,
            request.lease_id,
            no_wait=request.no_wait,
            timeout_ms=request.timeout_ms,
            priority=request.priority,
        )
        return locks_pb2.AcquireManyResponse(header=self._header(), grants=grants)

    async def Release(
        self, request: locks_pb2.ReleaseRequest, context: Context
    ) -> locks_pb2.ReleaseResponse:
        was_holding = await self._locks.release(request.name, request.lease_id, token=request.token)
        return locks_pb2.ReleaseResponse(header=self._header(), was_holding=was_holding)

    async def Describe(
        self, request: locks_pb2.DescribeRequest, context: Context
    ) -> locks_pb2.DescribeResponse:
        revision, state, position = await self._admin.describe(request.name, request.lease_id)
        return locks_pb2.DescribeResponse(
            header=self._header(revision), state=state, position=position
        )

    async def List(
        self, request: locks_pb2.LocksListRequest, context: Context
    ) -> locks_pb2.LocksListResponse:
        revision, states = await self._admin.list_states(request.prefix)
        return locks_pb2.LocksListResponse(header=self._header(revision), locks=states)

    async def WaitGraph(
        self, request: locks_pb2.WaitGraphRequest, context: Context
    ) -> locks_pb2.WaitGraphResponse:
        revision, page = await self._deadlocks.graph(
            calls.current.get().namespace, request.limit, request.page_token
        )
        return locks_pb2.WaitGraphResponse(
            header=self._header(revision),
            edges=page.edges,
            next_page_token=snapshot_token(revision, page.next_offset),
            total_edges=page.total,
        )

    async def Break(
        self, request: locks_pb2.BreakRequest, context: Context
    ) -> locks_pb2.BreakResponse:
        revision, broken = await self._admin.break_lock(request.name)
        return locks_pb2.BreakResponse(header=self._header(revision), broken=broken)

    async def ListDeadlocks(
        self, request: locks_pb2.ListDeadlocksRequest, context: Context
    ) -> locks_pb2.ListDeadlocksResponse:
        revision, deadlocks, token = await self._deadlocks.recent(
            calls.current.get().namespace, request.limit, request.page_token
        )
        return locks_pb2.ListDeadlocksResponse(
            header=self._header(revision), deadlocks=deadlocks, next_page_token=token
        )
