"""A replica's status, as `accord status` shows it (accord.v1.Replicas.Status).

``await accord.replicas.status()`` asks the replica the client's next call goes to (give
the client one address to ask one replica): its health, etcd endpoints and leader,
connections, calls in flight, group-commit batch sizes and the namespaces that called it
most in the last minute. Every figure is that replica's own.

Error handling: without a cluster admin (auth required) it raises PermissionDeniedError;
a replica that cannot be reached raises UnavailableError like any call.
"""

from __future__ import annotations

from accord.client import calls
from accord.client.transport import Transport
from accord.v1 import replicas_pb2

# The contract's own message (typed through its .pyi stub).
ReplicaStatus = replicas_pb2.ReplicasStatusResponse


class AsyncReplicas:
    def __init__(self, transport: Transport) -> None:
        self._t = transport

    async def status(
        self, *, top_namespaces: int = 10, timeout: float | None = None
    ) -> ReplicaStatus:
        """The answering replica's status, with its top_namespaces busiest namespaces
        (at most 100). Needs a cluster admin."""
        request = replicas_pb2.ReplicasStatusRequest(top_namespaces=top_namespaces)
        return await self._t.unary(calls.REPLICAS_STATUS, request, timeout=timeout)
