"""The async client: one object per agent, holding its identity and its channels."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from pycrdt import Doc

from accord.client.auth import AsyncAuth
from accord.client.batching import (
    BatchPolicy,
    BeginBatches,
    CastBatches,
    CompleteBatches,
    KVBatches,
)
from accord.client.effects import AsyncEffects
from accord.client.kv import AsyncKV
from accord.client.leases import AsyncLeases
from accord.client.locks import AsyncLocks
from accord.client.quotas import AsyncQuotas
from accord.client.retry import RetryPolicy
from accord.client.sessions import AsyncSessions, RootKind
from accord.client.status import AsyncReplicas
from accord.client.transport import Transport
from accord.client.votes import AsyncVotes


def tls_credentials(
    ca: str | Path, cert: str | Path | None = None, key: str | Path | None = None
) -> grpc.ChannelCredentials:
    """Channel credentials for replicas serving TLS: the CA that signed their certificate
    and, for mutual TLS, this client's certificate and key (its CN names the principal
    when the client sends no token). Pass as ``AsyncClient(..., credentials=...)``."""
    return grpc.ssl_channel_credentials(
        root_certificates=Path(ca).read_bytes(),
        private_key=Path(key).read_bytes() if key else None,
        certificate_chain=Path(cert).read_bytes() if cert else None,
    )


class AsyncClient:
    """Talks to the given coordinator replicas, spreading calls over those that are up
    and retrying safe calls on another one (or the same one back) until their deadline.

    ``async with AsyncClient(["127.0.0.1:50051"], agent_id="planner-1") as accord:``
    then ``await accord.kv.put("plan", b"...")``. Against a replica with auth required,
    pass ``token=`` (default: the ACCORD_TOKEN environment variable); it is sent on
    every call.
    """

    agent_id: str
    namespace: str
    auth: AsyncAuth
    effects: AsyncEffects
    kv: AsyncKV
    leases: AsyncLeases
    locks: AsyncLocks
    quotas: AsyncQuotas
    replicas: AsyncReplicas
    sessions: AsyncSessions
    votes: AsyncVotes

    def __init__(
        self,
        addresses: Sequence[str] | str,
        *,
        agent_id: str = "",
        namespace: str = "default",
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        batching: BatchPolicy | bool = True,
    ) -> None:
        """batching: how KV operations made while others are in flight share KV.Batch
        calls (client/batching.py): True for the default BatchPolicy; False sends every
        operation as its own call."""
        if isinstance(addresses, str):
            addresses = [a.strip() for a in addresses.split(",") if a.strip()]
        self.agent_id = agent_id
        self.namespace = namespace
        self._transport = Transport(
            addresses,
            namespace=namespace,
            agent_id=agent_id,
            timeout=timeout,
            retry=retry or RetryPolicy(),
            credentials=credentials,
            token=os.environ.get("ACCORD_TOKEN", "") if token is None else token,
        )
        self.auth = AsyncAuth(self._transport)
        policy = BatchPolicy() if batching is True else batching or None
        self._coalescer = KVBatches(policy)
        self._casts = CastBatches(policy)
        self._begins = BeginBatches(policy)
        self._completes = CompleteBatches(policy)
        self.kv = AsyncKV(self._transport, self._coalescer)
        self.leases = AsyncLeases(self._transport)
        self.locks = AsyncLocks(self._transport)
        self.quotas = AsyncQuotas(self._transport)
        self.replicas = AsyncReplicas(self._transport)
        self.sessions = AsyncSessions(self._transport)
        self.votes = AsyncVotes(self._transport, self._casts)
        self.effects = AsyncEffects(self._transport, self._begins, self._completes)

    @contextlib.asynccontextmanager
    async def session(
        self,
        name: str,
        *,
        create: bool = True,
        roots: Mapping[str, RootKind | str] | None = None,
    ) -> AsyncIterator[Doc[Any]]:
        """A local pycrdt Doc kept in sync with session name, current on entry; local
        changes are pushed in the background and flushed on exit.
        ``await accord.sessions.flush(doc)`` waits until they are durable."""
        async with self.sessions.synced(name, create=create, roots=roots) as live:
            yield live.doc

    async def close(self) -> None:
        await self._coalescer.close()
        await self._casts.close()
        await self._begins.close()
        await self._completes.close()
        await self._transport.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
