"""gRPC servicer for accord.v1.KV: unpack the request, call the KV primitive, pack.
Get, Put, Delete and Txn are answered by one method each, whether they come alone or as
operations of a Batch (batch.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from accord.coordinator.batch_gate import OpGate
from accord.coordinator.kv import batch
from accord.coordinator.kv.store import KVStore
from accord.coordinator.observability import accord_metrics
from accord.v1 import common_pb2, kv_pb2, kv_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class KVService(kv_pb2_grpc.KVServicer):
    def __init__(self, store: KVStore, replica: str, gate: OpGate) -> None:
        self._store = store
        self._replica = replica
        self._gate = gate

    def _header(self, revision: int) -> common_pb2.ResponseHeader:
        return common_pb2.ResponseHeader(revision=revision, replica=self._replica)

    async def Get(self, request: kv_pb2.GetRequest, context: Context) -> kv_pb2.GetResponse:
        return await self.get(request)

    async def Put(self, request: kv_pb2.PutRequest, context: Context) -> kv_pb2.PutResponse:
        return await self.put(request)

    async def Delete(
        self, request: kv_pb2.DeleteRequest, context: Context
    ) -> kv_pb2.DeleteResponse:
        return await self.delete(request)

    async def Txn(self, request: kv_pb2.TxnRequest, context: Context) -> kv_pb2.TxnResponse:
        return await self.txn(request)

    async def Batch(self, request: kv_pb2.BatchRequest, context: Context) -> kv_pb2.BatchResponse:
        outcomes, revision = await batch.run(request, self, self._gate)
        return kv_pb2.BatchResponse(header=self._header(revision), outcomes=outcomes)

    async def get(self, request: kv_pb2.GetRequest) -> kv_pb2.GetResponse:
        revision, kv = await self._store.get(request.key, request.consistency, request.revision)
        return kv_pb2.GetResponse(header=self._header(revision), found=kv is not None, kv=kv)

    async def List(self, request: kv_pb2.ListRequest, context: Context) -> kv_pb2.ListResponse:
        page = await self._store.list_keys(
            request.prefix,
            limit=request.limit,
            page_token=request.page_token,
            keys_only=request.keys_only,
            consistency=request.consistency,
            revision=request.revision,
        )
        return kv_pb2.ListResponse(
            header=self._header(page.revision),
            kvs=page.kvs,
            next_page_token=page.next_page_token,
            total=page.total,
        )

    async def put(self, request: kv_pb2.PutRequest) -> kv_pb2.PutResponse:
        done = await self._store.put(
            request.key,
            request.value,
            request.precondition if request.HasField("precondition") else None,
            request_id=request.request_id,
            return_current=request.return_current_on_failure,
            fence=request.fence if request.HasField("fence") else None,
            lease_id=request.lease_id,
        )
        return kv_pb2.PutResponse(
            header=self._header(done.revision), kv=done.results[0].kv, replayed=done.replayed
        )

    async def delete(self, request: kv_pb2.DeleteRequest) -> kv_pb2.DeleteResponse:
        done = await self._store.delete(
            request.key,
            request.precondition if request.HasField("precondition") else None,
            request_id=request.request_id,
            return_current=request.return_current_on_failure,
            fence=request.fence if request.HasField("fence") else None,
        )
        result = done.results[0]
        return kv_pb2.DeleteResponse(
            header=self._header(done.revision),
            deleted=result.deleted,
            prev_kv=result.kv if result.deleted else None,
            replayed=done.replayed,
        )

    async def txn(self, request: kv_pb2.TxnRequest) -> kv_pb2.TxnResponse:
        done = await self._store.txn(
            request.checks,
            request.ops,
            request_id=request.request_id,
            return_current=request.return_current_on_failure,
            fences=request.fences,
        )
        return kv_pb2.TxnResponse(
            header=self._header(done.revision),
            revision=done.revision,
            results=done.results,
            replayed=done.replayed,
        )

    async def Watch(
        self, request: kv_pb2.WatchRequest, context: Context
    ) -> AsyncIterator[kv_pb2.WatchResponse]:
        with accord_metrics.Open(accord_metrics.WATCH):
            async for changes in self._store.watch(
                request.key,
                prefix=request.prefix,
                start_revision=request.start_revision,
                prev_kv=request.prev_kv,
            ):
                yield kv_pb2.WatchResponse(
                    header=self._header(changes.revision),
                    events=changes.events,
                    resume_revision=changes.resume_revision,
                )

    async def History(
        self, request: kv_pb2.HistoryRequest, context: Context
    ) -> kv_pb2.HistoryResponse:
        history = await self._store.history(
            request.key, limit=request.limit, before_revision=request.before_revision
        )
        return kv_pb2.HistoryResponse(
            header=self._header(history.revision),
            entries=history.entries,
            next_before_revision=history.next_before_revision,
            truncated_by_compaction=history.truncated_by_compaction,
        )
