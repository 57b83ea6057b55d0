"""Ways in for tests: the Python client (make_client), and raw gRPC stubs as a client in
another language would use them, to Accord (Stubs, with the identity metadata every call
carries) or straight to etcd (EtcdStubs)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, Self

import grpc

from accord.client import AsyncClient, BatchPolicy, RetryPolicy
from accord.v1 import (
    auth_pb2_grpc,
    effects_pb2_grpc,
    kv_pb2,
    kv_pb2_grpc,
    leases_pb2_grpc,
    locks_pb2_grpc,
    quotas_pb2_grpc,
    sessions_pb2_grpc,
    votes_pb2_grpc,
)
from tests.harness.auth import token_for

Metadata = tuple[tuple[str, str], ...]


def make_client(
    addresses: list[str],
    namespace: str,
    agent: str = "tester",
    timeout: float = 10.0,
    token: str | None = None,
    batching: BatchPolicy | bool = True,
    retry: RetryPolicy | None = None,
) -> AsyncClient:
    """A client of the given replicas only, retrying briefly (tests fail fast) unless given
    a retry policy; with a token only when given one (never ACCORD_TOKEN from the
    environment), or under ACCORD_TEST_AUTH=required the agent's own (see
    tests.harness.auth)."""
    if token is None:
        token = (token_for(namespace, agent) if agent else None) or ""
    return AsyncClient(
        addresses,
        agent_id=agent,
        namespace=namespace,
        timeout=timeout,
        retry=retry or RetryPolicy(max_attempts=8, initial_backoff=0.05, max_backoff=0.5),
        token=token,
        batching=batching,
    )


def identity(namespace: str, agent: str | None = None, token: str | None = None) -> Metadata:
    """The metadata of an Accord call: its namespace and, unless None, its agent and its
    bearer token (under ACCORD_TEST_AUTH=required, by default the agent's own)."""
    if token is None and agent:
        token = token_for(namespace, agent)
    out: Metadata = (("accord-namespace", namespace),)
    out += (("accord-agent-id", agent),) if agent is not None else ()
    return out + ((("authorization", f"Bearer {token}"),) if token is not None else ())


class _Channel:
    """One insecure channel, closed by close() or on leaving `async with`."""

    def __init__(self, address: str, options: Sequence[tuple[str, Any]] = ()) -> None:
        self.channel = grpc.aio.insecure_channel(address, options=list(options))

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()


class Stubs(_Channel):
    """Every Accord service's raw stub on one channel to a replica."""

    def __init__(self, address: str, options: Sequence[tuple[str, Any]] = ()) -> None:
        super().__init__(address, options)
        self.kv = kv_pb2_grpc.KVStub(self.channel)
        self.leases = leases_pb2_grpc.LeasesStub(self.channel)
        self.locks = locks_pb2_grpc.LocksStub(self.channel)
        self.sessions = sessions_pb2_grpc.SessionsStub(self.channel)
        self.votes = votes_pb2_grpc.VotesStub(self.channel)
        self.auth = auth_pb2_grpc.AuthStub(self.channel)
        self.quotas = quotas_pb2_grpc.QuotasStub(self.channel)
        self.effects = effects_pb2_grpc.EffectsStub(self.channel)


async def stubs_by_replica(
    address: str, replicas: Collection[str], metadata: Metadata, tries: int = 200
) -> dict[str, Stubs]:
    """A channel to each of the replicas that share address (`serve --workers`): fresh
    connections (no subchannel shared with other channels) until each replica has
    answered on one, found by the replica its Get answers name."""
    found: dict[str, Stubs] = {}
    for _ in range(tries):
        stubs = Stubs(address, [("grpc.use_local_subchannel_pool", 1)])
        try:
            answer = await stubs.kv.Get(kv_pb2.GetRequest(key="-"), metadata=metadata, timeout=10)
        except grpc.aio.AioRpcError:
            await stubs.close()
            raise
        if answer.header.replica in replicas and answer.header.replica not in found:
            found[answer.header.replica] = stubs
            if len(found) == len(replicas):
                return found
        else:
            await stubs.close()
    for stubs in found.values():
        await stubs.close()
    raise AssertionError(f"{tries} connections to {address} reached only {sorted(found)}")


class EtcdStubs(_Channel):
    """etcd's own KV and Watch stubs on one channel to an etcd endpoint."""

    def __init__(self, endpoint: str, options: Sequence[tuple[str, Any]] = ()) -> None:
        # Imported here, not with the harness: the locks benchmark loads python3-etcd3,
        # whose generated etcd protos clash with aetcd's in one process.
        from aetcd.rpc import rpc_pb2_grpc as etcd_grpc

        super().__init__(endpoint, options)
        self.kv = etcd_grpc.KVStub(self.channel)
        self.watch = etcd_grpc.WatchStub(self.channel)
