"""gRPC servicer for accord.v1.Quotas: unpack, call the quota store or the usage book, pack.

The interceptor has authenticated the caller and checked its role (Get: READ in the
namespace; Set: cluster admin); admission never refuses these calls. With quotas off
(`--no-quotas`) no replica follows the counts, so Get reads the namespace's keys from etcd
(pages at one revision): an O(namespace) read per call instead of a dict lookup.

Error handling: store errors pass through unchanged (InvalidArgument for a bad limit).
"""

from __future__ import annotations

from typing import Any

import grpc

from accord.coordinator.quotas.admission import Admission
from accord.coordinator.quotas.store import QuotaStore
from accord.coordinator.substrate import calls
from accord.v1 import quotas_pb2, quotas_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class QuotasService(quotas_pb2_grpc.QuotasServicer):
    def __init__(self, store: QuotaStore, admission: Admission) -> None:
        self._store = store
        self._admission = admission

    async def Get(
        self, request: quotas_pb2.QuotasGetRequest, context: Context
    ) -> quotas_pb2.QuotasGetResponse:
        namespace = calls.current.get().namespace
        book = self._admission.book
        if book.counting:
            counts, revision = book.usage(namespace), book.revision
        else:  # quotas off: nothing follows the counts, so read them now
            counts, revision = await book.count(namespace)
        usage = counts.to_proto()
        usage.streams = self._admission.streams(namespace)
        usage.revision = revision
        return quotas_pb2.QuotasGetResponse(
            namespace=namespace,
            limits=book.limits(namespace).to_proto(),
            overrides=book.overrides(namespace),
            usage=usage,
        )

    async def Set(
        self, request: quotas_pb2.QuotasSetRequest, context: Context
    ) -> quotas_pb2.QuotasSetResponse:
        namespace = calls.current.get().namespace
        stored, _ = await self._store.set(namespace, request.limits, clear=request.clear)
        return quotas_pb2.QuotasSetResponse(overrides=stored)
