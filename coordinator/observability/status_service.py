"""gRPC servicer for accord.v1.Replicas: this replica's status (observability/status.py).

The interceptor has authenticated the caller and, with auth required, checked that it is
a cluster admin (the status names every namespace that called); admission never refuses
it. It reads etcd only for each endpoint's Maintenance Status.

Error handling: none of its own; an unreachable etcd shows as unhealthy endpoints.
"""

from __future__ import annotations

from typing import Any

import grpc

from accord.coordinator.observability.status import StatusSources, snapshot
from accord.v1 import replicas_pb2, replicas_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class ReplicasService(replicas_pb2_grpc.ReplicasServicer):
    def __init__(self, sources: StatusSources) -> None:
        self._sources = sources

    async def Status(
        self, request: replicas_pb2.ReplicasStatusRequest, context: Context
    ) -> replicas_pb2.ReplicasStatusResponse:
        return await snapshot(self._sources, request.top_namespaces)
