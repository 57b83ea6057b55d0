"""gRPC servicer for accord.v1.Sessions: unpack, call the session store, pack."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from accord.coordinator.observability import accord_metrics
from accord.coordinator.sessions.catalog import SessionCatalog
from accord.coordinator.sessions.store import SessionStore
from accord.v1 import common_pb2, sessions_pb2, sessions_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class SessionsService(sessions_pb2_grpc.SessionsServicer):
    def __init__(self, catalog: SessionCatalog, sessions: SessionStore, replica: str) -> None:
        self._catalog = catalog
        self._sessions = sessions
        self._replica = replica

    def _header(self, revision: int = 0) -> common_pb2.ResponseHeader:
        return common_pb2.ResponseHeader(revision=revision, replica=self._replica)

    async def Open(
        self, request: sessions_pb2.SessionsOpenRequest, context: Context
    ) -> sessions_pb2.SessionsOpenResponse:
        revision, info, created = await self._catalog.open(
            request.name, must_exist=request.must_exist, roots=request.roots
        )
        return sessions_pb2.SessionsOpenResponse(
            header=self._header(revision), session=info, created=created
        )

    async def List(
        self, request: sessions_pb2.SessionsListRequest, context: Context
    ) -> sessions_pb2.SessionsListResponse:
        revision, infos, token = await self._catalog.list_sessions(
            request.prefix, request.limit, request.page_token
        )
        return sessions_pb2.SessionsListResponse(
            header=self._header(revision), sessions=infos, next_page_token=token
        )

    async def Delete(
        self, request: sessions_pb2.SessionsDeleteRequest, context: Context
    ) -> sessions_pb2.SessionsDeleteResponse:
        revision, deleted = await self._catalog.delete(
            request.name,
            expected_created_revision=request.expected_created_revision,
            request_id=request.request_id,
        )
        return sessions_pb2.SessionsDeleteResponse(header=self._header(revision), deleted=deleted)

    async def Sync(
        self, request: sessions_pb2.SessionsSyncRequest, context: Context
    ) -> sessions_pb2.SessionsSyncResponse:
        revision, update, state_vector = await self._sessions.sync(
            request.name, request.state_vector
        )
        return sessions_pb2.SessionsSyncResponse(
            header=self._header(revision), update=update, state_vector=state_vector
        )

    async def Push(
        self, request: sessions_pb2.SessionsPushRequest, context: Context
    ) -> sessions_pb2.SessionsPushResponse:
        revision = await self._sessions.push(
            request.name,
            request.update,
            request_id=request.request_id,
            fence=request.fence if request.HasField("fence") else None,
        )
        return sessions_pb2.SessionsPushResponse(header=self._header(revision))

    async def Subscribe(
        self, request: sessions_pb2.SessionsSubscribeRequest, context: Context
    ) -> AsyncIterator[sessions_pb2.SessionsSubscribeResponse]:
        with accord_metrics.Open(accord_metrics.SUBSCRIBE):
            async for event in self._sessions.subscribe(
                request.name, request.state_vector, request.presence
            ):
                yield event

    async def Read(
        self, request: sessions_pb2.SessionsReadRequest, context: Context
    ) -> sessions_pb2.SessionsReadResponse:
        snap = await self._sessions.read(request.name)
        return sessions_pb2.SessionsReadResponse(
            header=self._header(snap.revision),
            session=snap.info,
            snapshot=snap.update,
            state_vector=snap.state_vector,
            json=snap.json,
            presence=snap.presence,
            snapshot_omitted=snap.snapshot_omitted,
        )

    async def Apply(
        self, request: sessions_pb2.SessionsApplyRequest, context: Context
    ) -> sessions_pb2.SessionsApplyResponse:
        revision, update = await self._sessions.apply(
            request.name,
            request.operations,
            request_id=request.request_id,
            fence=request.fence if request.HasField("fence") else None,
        )
        return sessions_pb2.SessionsApplyResponse(header=self._header(revision), update=update)

    async def SetPresence(
        self, request: sessions_pb2.SetPresenceRequest, context: Context
    ) -> sessions_pb2.SetPresenceResponse:
        revision, presence = await self._sessions.set_presence(
            request.name, request.lease_id, request.client_id, request.state_json
        )
        return sessions_pb2.SetPresenceResponse(header=self._header(revision), presence=presence)
