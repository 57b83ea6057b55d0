"""gRPC servicer for accord.v1.Effects: unpack, call the effect ledger, pack. A Begin or
Complete is answered by one method whether it comes alone or in a BeginMany or
CompleteMany (batch.py)."""

from __future__ import annotations

from typing import Any

import grpc

from accord.coordinator.batch_gate import OpGate
from accord.coordinator.effects import batch
from accord.coordinator.effects.compensation import Compensations
from accord.coordinator.effects.outcomes import Outcomes
from accord.coordinator.effects.runs import Runs
from accord.coordinator.effects.store import EffectStore
from accord.v1 import common_pb2, effects_pb2, effects_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class EffectsService(effects_pb2_grpc.EffectsServicer):
    def __init__(
        self,
        effects: EffectStore,
        outcomes: Outcomes,
        runs: Runs,
        compensations: Compensations,
        replica: str,
        gate: OpGate,
    ) -> None:
        self._effects = effects
        self._outcomes = outcomes
        self._runs = runs
        self._compensations = compensations
        self.replica = replica  # named in every response header
        self._gate = gate

    def _header(self, revision: int) -> common_pb2.ResponseHeader:
        return common_pb2.ResponseHeader(revision=revision, replica=self.replica)

    async def Begin(
        self, request: effects_pb2.BeginRequest, context: Context
    ) -> effects_pb2.BeginResponse:
        return await self.begin(request)

    async def BeginMany(
        self, request: effects_pb2.BeginManyRequest, context: Context
    ) -> effects_pb2.BeginManyResponse:
        outcomes, revision = await batch.begin_many(request, self.begin, self._gate)
        return effects_pb2.BeginManyResponse(header=self._header(revision), outcomes=outcomes)

    async def Complete(
        self, request: effects_pb2.CompleteRequest, context: Context
    ) -> effects_pb2.CompleteResponse:
        return await self.complete(request)

    async def CompleteMany(
        self, request: effects_pb2.CompleteManyRequest, context: Context
    ) -> effects_pb2.CompleteManyResponse:
        outcomes, revision = await batch.complete_many(request, self.complete, self._gate)
        return effects_pb2.CompleteManyResponse(header=self._header(revision), outcomes=outcomes)

    async def begin(self, request: effects_pb2.BeginRequest) -> effects_pb2.BeginResponse:
        began = await self._effects.begin(
            request.key,
            request.run_id,
            request.intent,
            request.lease_id,
            fence=request.fence if request.HasField("fence") else None,
            wait_ms=request.wait_ms,
            reconciled=request.reconciled,
        )
        return effects_pb2.BeginResponse(
            header=self._header(began.revision), outcome=began.outcome, effect=began.effect
        )

    async def complete(self, request: effects_pb2.CompleteRequest) -> effects_pb2.CompleteResponse:
        revision, effect, replayed = await self._outcomes.complete(
            request.key,
            request.claim,
            request.lease_id,
            request.outcome,
            request.compensation if request.HasField("compensation") else None,
            request.fence if request.HasField("fence") else None,
        )
        return effects_pb2.CompleteResponse(
            header=self._header(revision), effect=effect, replayed=replayed
        )

    async def Abort(
        self, request: effects_pb2.AbortRequest, context: Context
    ) -> effects_pb2.AbortResponse:
        revision, effect = await self._outcomes.abort(
            request.key, request.claim, request.lease_id, request.reason
        )
        return effects_pb2.AbortResponse(header=self._header(revision), effect=effect)

    async def Get(
        self, request: effects_pb2.EffectsGetRequest, context: Context
    ) -> effects_pb2.EffectsGetResponse:
        revision, effect = await self._effects.get(request.key)
        return effects_pb2.EffectsGetResponse(header=self._header(revision), effect=effect)

    async def List(
        self, request: effects_pb2.EffectsListRequest, context: Context
    ) -> effects_pb2.EffectsListResponse:
        page = await self._runs.list(
            list(request.states), request.run_id, request.limit, request.page_token
        )
        return effects_pb2.EffectsListResponse(
            header=self._header(page.revision),
            effects=page.effects,
            next_page_token=page.token,
        )

    async def GetRun(
        self, request: effects_pb2.GetRunRequest, context: Context
    ) -> effects_pb2.GetRunResponse:
        revision, run, page = await self._runs.get_run(
            request.run_id, request.limit, request.page_token
        )
        return effects_pb2.GetRunResponse(
            header=self._header(revision),
            run=run,
            journal=page.effects,
            next_page_token=page.token,
        )

    async def SetRunStatus(
        self, request: effects_pb2.SetRunStatusRequest, context: Context
    ) -> effects_pb2.SetRunStatusResponse:
        revision, run = await self._runs.set_status(request.run_id, request.status)
        return effects_pb2.SetRunStatusResponse(header=self._header(revision), run=run)

    async def Compensate(
        self, request: effects_pb2.CompensateRequest, context: Context
    ) -> effects_pb2.CompensateResponse:
        revision, run, compensations = await self._compensations.compensate(request.run_id)
        return effects_pb2.CompensateResponse(
            header=self._header(revision), run=run, compensations=compensations
        )
