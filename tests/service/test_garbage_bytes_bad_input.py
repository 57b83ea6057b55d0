"""Undecodable request bytes: every method of every Accord service (enumerated from the
generated descriptors, so a new method is covered without editing this file) answers
INVALID_ARGUMENT with ErrorInfo, promptly, and nothing changes in etcd. A client stream
whose first or a later message is garbage ends with the same error instead of hanging."""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from google.rpc import error_details_pb2
from grpc_status import rpc_status

import accord.v1
from accord.coordinator.auth import roles
from accord.v1 import leases_pb2
from tests.harness import AUTH_REQUIRED, Coordinator, EtcdMember, Metadata, Stubs, identity

GARBAGE = b"\xff\xff\xff\xff"  # a truncated varint: no message type can parse it
PROMPT = 5.0  # generous: a refusal takes milliseconds; a hang takes the whole deadline


def _methods() -> dict[str, MethodDescriptor]:
    """Every method of every service in the generated accord.v1 modules."""
    found: dict[str, MethodDescriptor] = {}
    for info in pkgutil.iter_modules(accord.v1.__path__):
        if not info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"accord.v1.{info.name}")
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                found[f"{service.full_name}/{method.name}"] = method
    return found


METHODS = _methods()


def _refusal(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo of an INVALID_ARGUMENT refusal."""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    status = rpc_status.from_call(error)
    assert status is not None, "no google.rpc.Status in the trailers"
    info = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(info) for d in status.details), status
    return info


async def _garbage_call(channel: grpc.aio.Channel, name: str, metadata: Metadata) -> None:
    method = METHODS[name]
    path = f"/{name}"
    if method.client_streaming:

        async def one() -> AsyncIterator[bytes]:
            yield GARBAGE
            await asyncio.sleep(3600)  # keeps the stream open: the server must end it

        call = channel.stream_stream(path)(one(), metadata=metadata, timeout=30)
        async for _ in call:
            pass
    elif method.server_streaming:
        async for _ in channel.unary_stream(path)(GARBAGE, metadata=metadata, timeout=30):
            pass
    else:
        await channel.unary_unary(path)(GARBAGE, metadata=metadata, timeout=30)


def test_every_service_is_enumerated() -> None:
    services = {name.split("/")[0] for name in METHODS}
    assert {"accord.v1.KV", "accord.v1.Leases", "accord.v1.Sessions", "accord.v1.Votes"} <= services
    assert len(METHODS) > 30


@pytest.mark.parametrize("name", sorted(METHODS))
async def test_garbage_bytes_are_invalid_argument(
    name: str, replicas: list[Coordinator], etcd: EtcdMember, namespace: str
) -> None:
    if AUTH_REQUIRED and roles.REQUIRED.get(f"/{name}") == roles.Need.CLUSTER_ADMIN:
        pytest.skip("under auth this needs a cluster admin, and is refused before decoding")
    metadata = identity(namespace, "admin")  # under auth, the token is minted here
    before = etcd.stored(namespace)
    async with Stubs(replicas[0].address) as stubs:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(_garbage_call(stubs.channel, name, metadata), PROMPT)
    info = _refusal(err.value)
    assert (info.reason, info.domain) == ("INVALID_ARGUMENT", "accord.v1")
    assert METHODS[name].input_type.full_name in (err.value.details() or "")
    assert etcd.stored(namespace) == before


async def test_keepalive_stream_with_a_later_garbage_message_ends_with_the_error(
    replicas: list[Coordinator], namespace: str
) -> None:
    async with Stubs(replicas[0].address) as stubs:
        metadata = identity(namespace, "admin")
        grant = leases_pb2.GrantRequest(ttl_seconds=30)
        granted = await stubs.leases.Grant(grant, metadata=metadata)
        lease_id = granted.lease.id
        sent_garbage = asyncio.Event()

        async def requests() -> AsyncIterator[bytes]:
            yield leases_pb2.KeepAliveRequest(lease_id=lease_id).SerializeToString()
            await sent_garbage.wait()
            yield GARBAGE
            await asyncio.sleep(3600)

        call = stubs.channel.stream_stream("/accord.v1.Leases/KeepAlive")(
            requests(), metadata=metadata, timeout=30
        )

        async def consume() -> int:
            answered = 0
            async for _ in call:
                answered += 1
                sent_garbage.set()
            return answered

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(consume(), PROMPT)
        _refusal(err.value)
        await stubs.leases.Revoke(leases_pb2.RevokeRequest(lease_id=lease_id), metadata=metadata)
