"""Every method of every Accord service, called over a generic gRPC channel (as any
language could): without a token each is UNAUTHENTICATED; with a principal that lacks
the role the method needs, each is PERMISSION_DENIED naming that role and namespace.
Either way the refusal comes before the method runs, and etcd is unchanged."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from accord.client import AccordError, PermissionDeniedError, Role, UnauthenticatedError
from accord.client.errors import from_rpc_error
from accord.coordinator.auth import roles
from tests.auth.conftest import AuthCluster, Mint, unique
from tests.auth.expected_roles import ANYONE, EXPECTED, READ

METHODS = [
    (f"/{service.full_name}/{method.name}", method.client_streaming, method.server_streaming)
    for module, name in roles.SERVICES
    for service in [module.DESCRIPTOR.services_by_name[name]]
    for method in service.methods
]
# From the hand-written expectations, not from the table under test.
BEYOND_READ = [m for m in METHODS if EXPECTED[m[0]] not in (READ, ANYONE)]
NEEDS_A_ROLE = [m for m in METHODS if EXPECTED[m[0]] != ANYONE]


async def _no_requests() -> AsyncIterator[bytes]:
    return
    yield b""  # an async generator that sends nothing


async def call_raw(
    address: str, method: tuple[str, bool, bool], metadata: tuple[tuple[str, str], ...]
) -> AccordError:
    """Call method with an empty request (bytes, no stubs); the error it was refused with."""
    path, client_streaming, server_streaming = method
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            if client_streaming:
                stream = channel.stream_stream(path)(_no_requests(), metadata=metadata, timeout=5)
                async for _ in stream:
                    pass
            elif server_streaming:
                async for _ in channel.unary_stream(path)(b"", metadata=metadata, timeout=5):
                    pass
            else:
                await channel.unary_unary(path)(b"", metadata=metadata, timeout=5)
        except grpc.aio.AioRpcError as exc:
            return from_rpc_error(exc)
    raise AssertionError(f"{path} was served; it should have been refused")


@pytest.mark.parametrize("method", NEEDS_A_ROLE, ids=lambda m: m[0])
async def test_no_token_is_unauthenticated(
    auth_cluster: AuthCluster, namespace: str, method: tuple[str, bool, bool]
) -> None:
    error = await call_raw(auth_cluster.addresses[0], method, (("accord-namespace", namespace),))
    assert isinstance(error, UnauthenticatedError), error


async def test_a_reader_is_refused_everything_beyond_reading(
    auth_cluster: AuthCluster, mint: Mint, namespace: str
) -> None:
    reader = unique("reader")
    token = await mint(reader, Role.READ)
    metadata = (("accord-namespace", namespace), ("authorization", f"Bearer {token}"))
    before = auth_cluster.stored()
    for i, method in enumerate(BEYOND_READ):
        address = auth_cluster.addresses[i % 2]
        error = await call_raw(address, method, metadata)
        assert isinstance(error, PermissionDeniedError), (method[0], error)
        assert error.role == EXPECTED[method[0]], method[0]
        assert error.metadata["principal"] == reader
    assert auth_cluster.stored() == before


async def test_a_principal_without_roles_may_only_ask_who_it_is(
    auth_cluster: AuthCluster, mint: Mint, namespace: str
) -> None:
    token = await mint(unique("nobody"))
    metadata = (("accord-namespace", namespace), ("authorization", f"Bearer {token}"))
    before = auth_cluster.stored()
    for i, method in enumerate(NEEDS_A_ROLE):
        error = await call_raw(auth_cluster.addresses[i % 2], method, metadata)
        assert isinstance(error, PermissionDeniedError), (method[0], error)
    assert auth_cluster.stored() == before
