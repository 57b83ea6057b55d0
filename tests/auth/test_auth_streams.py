"""Open streams end when their credential stops allowing them, on every replica and
within a second: a revoked token ends Watch and KeepAlive streams (UNAUTHENTICATED), a
role taken back ends a Watch (PERMISSION_DENIED), and an expired token ends its stream
at expiry. Streams are opened over raw stubs, as any client would."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc

from accord.client import AccordError, PermissionDeniedError, Role, UnauthenticatedError
from accord.client.errors import from_rpc_error
from accord.v1 import kv_pb2, leases_pb2
from tests.auth.conftest import AuthCluster, Mint, unique
from tests.harness import Stubs, make_client


def bearer(namespace: str, token: str) -> tuple[tuple[str, str], ...]:
    return (("accord-namespace", namespace), ("authorization", f"Bearer {token}"))


async def ended_with(stream: grpc.aio.UnaryStreamCall | grpc.aio.StreamStreamCall) -> AccordError:  # type: ignore[type-arg]
    """Read stream until it fails; the error it ended with."""
    try:
        while await stream.read() is not grpc.aio.EOF:
            pass
    except grpc.aio.AioRpcError as exc:
        return from_rpc_error(exc)
    raise AssertionError("the stream ended without an error")


async def test_revoking_a_token_ends_its_watches_on_both_replicas(
    auth_cluster: AuthCluster, admin: object, mint: Mint, namespace: str
) -> None:
    token = await mint(unique("watcher"), Role.READ)
    stubs = [Stubs(a) for a in auth_cluster.addresses]
    try:
        watches = [
            s.kv.Watch(kv_pb2.WatchRequest(key="", prefix=True), metadata=bearer(namespace, token))
            for s in stubs
        ]
        for watch in watches:
            await watch.read()  # registered: the stream is open and authorized
        async with make_client(
            auth_cluster.addresses, namespace, agent="", token=auth_cluster.admin_token
        ) as root:
            await root.auth.revoke_token(token.split(".")[1])
        revoked_at = time.monotonic()
        errors = await asyncio.wait_for(asyncio.gather(*(ended_with(w) for w in watches)), 10)
        assert time.monotonic() - revoked_at < 1.0
        for error in errors:
            assert isinstance(error, UnauthenticatedError), error
            assert "revoked" in error.message
    finally:
        for s in stubs:
            await s.close()


async def test_revoking_a_token_ends_its_keepalive_stream(
    auth_cluster: AuthCluster, mint: Mint, namespace: str
) -> None:
    token = await mint(unique("keeper"), Role.WRITE)
    outbox: asyncio.Queue[leases_pb2.KeepAliveRequest | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[leases_pb2.KeepAliveRequest]:
        while (request := await outbox.get()) is not None:
            yield request

    async with Stubs(auth_cluster.addresses[1]) as stubs:
        granted = await stubs.leases.Grant(
            leases_pb2.GrantRequest(ttl_seconds=30), metadata=bearer(namespace, token)
        )
        stream = stubs.leases.KeepAlive(requests(), metadata=bearer(namespace, token))
        outbox.put_nowait(leases_pb2.KeepAliveRequest(lease_id=granted.lease.id))
        assert (await stream.read()).ttl_seconds > 0
        async with make_client(
            auth_cluster.addresses, namespace, agent="", token=auth_cluster.admin_token
        ) as root:
            await root.auth.revoke_token(token.split(".")[1])
        revoked_at = time.monotonic()
        try:
            error = await asyncio.wait_for(ended_with(stream), 10)
        finally:
            outbox.put_nowait(None)  # the request side ends too
            stream.cancel()
        assert time.monotonic() - revoked_at < 1.0
        assert isinstance(error, UnauthenticatedError), error


async def test_taking_back_a_role_ends_a_watch_that_needed_it(
    auth_cluster: AuthCluster, mint: Mint, namespace: str
) -> None:
    name = unique("reader")
    token = await mint(name, Role.READ)
    async with Stubs(auth_cluster.addresses[0]) as stubs:
        watch = stubs.kv.Watch(kv_pb2.WatchRequest(key="k"), metadata=bearer(namespace, token))
        await watch.read()
        async with make_client(
            auth_cluster.addresses, namespace, agent="", token=auth_cluster.admin_token
        ) as root:
            await root.auth.revoke(name, Role.READ)
        error = await asyncio.wait_for(ended_with(watch), 10)
        assert isinstance(error, PermissionDeniedError), error
        assert (error.role, error.namespace) == ("READ", namespace)


async def test_a_stream_ends_when_its_token_expires(
    auth_cluster: AuthCluster, namespace: str
) -> None:
    async with make_client(
        auth_cluster.addresses, namespace, agent="", token=auth_cluster.admin_token
    ) as root:
        made = await root.auth.create_token(unique("brief"), ttl=2)
        await root.auth.grant(made.info.principal, Role.READ)
    async with Stubs(auth_cluster.addresses[1]) as stubs:
        watch = stubs.kv.Watch(
            kv_pb2.WatchRequest(key="k"), metadata=bearer(namespace, made.secret)
        )
        await watch.read()
        error = await asyncio.wait_for(ended_with(watch), 10)
        assert isinstance(error, UnauthenticatedError), error
        assert time.time() >= made.info.expires_at.seconds
