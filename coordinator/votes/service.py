"""gRPC servicer for accord.v1.Votes: unpack, call the vote primitives, pack. A Cast is
answered by one method whether it comes alone or in a CastMany (batch.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from accord.coordinator.batch_gate import OpGate
from accord.coordinator.observability import accord_metrics
from accord.coordinator.votes import batch
from accord.coordinator.votes.feeds import VoteFeeds
from accord.coordinator.votes.store import VoteStore
from accord.v1 import common_pb2, votes_pb2, votes_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class VotesService(votes_pb2_grpc.VotesServicer):
    def __init__(self, votes: VoteStore, feeds: VoteFeeds, replica: str, gate: OpGate) -> None:
        self._votes = votes
        self._feeds = feeds
        self._replica = replica
        self._gate = gate

    def _header(self, revision: int) -> common_pb2.ResponseHeader:
        return common_pb2.ResponseHeader(revision=revision, replica=self._replica)

    async def Propose(
        self, request: votes_pb2.ProposeRequest, context: Context
    ) -> votes_pb2.ProposeResponse:
        revision, vote, replayed = await self._votes.propose(
            request.vote_id, request.spec, request.request_id
        )
        return votes_pb2.ProposeResponse(
            header=self._header(revision), vote=vote, replayed=replayed
        )

    async def Cast(
        self, request: votes_pb2.CastRequest, context: Context
    ) -> votes_pb2.CastResponse:
        return await self.cast(request)

    async def CastMany(
        self, request: votes_pb2.CastManyRequest, context: Context
    ) -> votes_pb2.CastManyResponse:
        outcomes, revision = await batch.run(request, self.cast, self._gate)
        return votes_pb2.CastManyResponse(header=self._header(revision), outcomes=outcomes)

    async def cast(self, request: votes_pb2.CastRequest) -> votes_pb2.CastResponse:
        revision, ballot, after, replayed = await self._votes.cast(
            request.vote_id,
            choice=request.choice,
            abstain=request.abstain,
            veto=request.veto,
            rationale=request.rationale,
            confidence=request.confidence,
            request_id=request.request_id,
            fence=request.fence if request.HasField("fence") else None,
        )
        response = votes_pb2.CastResponse(
            header=self._header(revision),
            ballot=ballot,
            status=votes_pb2.VOTE_STATUS_OPEN,
            replayed=replayed,
        )
        if after is not None:
            response.status = after.vote.status
            if after.vote.HasField("decision"):
                response.decision.CopyFrom(after.vote.decision)
        return response

    async def Get(
        self, request: votes_pb2.VotesGetRequest, context: Context
    ) -> votes_pb2.VotesGetResponse:
        revision, vote, token = await self._votes.get(request.vote_id, request.page_token)
        return votes_pb2.VotesGetResponse(
            header=self._header(revision), vote=vote, next_page_token=token
        )

    async def List(
        self, request: votes_pb2.VotesListRequest, context: Context
    ) -> votes_pb2.VotesListResponse:
        revision, votes, more = await self._votes.listing.list_votes(
            request.status, request.limit, request.after
        )
        return votes_pb2.VotesListResponse(header=self._header(revision), votes=votes, more=more)

    async def Watch(
        self, request: votes_pb2.VotesWatchRequest, context: Context
    ) -> AsyncIterator[votes_pb2.VotesWatchResponse]:
        with accord_metrics.Open(accord_metrics.VOTE_WATCH):
            async for event in self._feeds.watch(request.vote_id):
                event.header.replica = self._replica
                yield event

    async def Cancel(
        self, request: votes_pb2.VotesCancelRequest, context: Context
    ) -> votes_pb2.VotesCancelResponse:
        revision, decision = await self._votes.cancel(
            request.vote_id, request.reason, request.request_id
        )
        return votes_pb2.VotesCancelResponse(header=self._header(revision), decision=decision)
