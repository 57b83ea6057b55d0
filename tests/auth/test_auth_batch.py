"""KV.Batch under auth required: a batch lets no caller do what it could not do one call
at a time. Each operation is held to its own unary call's role (a reader's Put in a
batch is refused and audited, its Get is served); a batch without a valid credential, or
in a namespace where the principal holds nothing, is refused whole; nothing refused
changes etcd."""

from __future__ import annotations

import time
import uuid

import grpc

from accord.client import AsyncClient, Role
from accord.client.errors import from_status
from accord.v1 import kv_pb2
from tests.auth.conftest import AuthCluster, Mint, unique
from tests.auth.test_auth_refusal_audit import refusals_since
from tests.harness import Stubs, identity, until


def batch_of_get_and_put() -> kv_pb2.BatchRequest:
    return kv_pb2.BatchRequest(
        ops=[
            kv_pb2.BatchOp(get=kv_pb2.GetRequest(key="shared")),
            kv_pb2.BatchOp(
                put=kv_pb2.PutRequest(key="shared", value=b"x", request_id=uuid.uuid4().hex)
            ),
            kv_pb2.BatchOp(delete=kv_pb2.DeleteRequest(key="shared", request_id=uuid.uuid4().hex)),
        ]
    )


async def test_each_operation_is_held_to_its_own_role_and_refusals_are_audited(
    auth_cluster: AuthCluster, admin: AsyncClient, mint: Mint, namespace: str
) -> None:
    started = time.time_ns()
    reader = unique("reader")
    token = await mint(reader, Role.READ)
    await admin.kv.put("shared", b"admin's")
    before = auth_cluster.stored(namespace)
    async with Stubs(auth_cluster.addresses[0]) as raw:
        response = await raw.kv.Batch(
            batch_of_get_and_put(), metadata=identity(namespace, reader, token)
        )
    got, put, delete = response.outcomes
    assert got.get.found and got.get.kv.value == b"admin's"  # reading is allowed
    for outcome, method in ((put, "Put"), (delete, "Delete")):
        error = from_status(outcome.error)
        assert error.code == grpc.StatusCode.PERMISSION_DENIED, method
        assert error.reason == "PERMISSION_DENIED"
        assert (error.metadata["role"], error.metadata["namespace"]) == ("WRITE", namespace)
    assert auth_cluster.stored(namespace) == before

    async def logged() -> set[str]:
        found = await refusals_since(admin, started)
        return {e.target for e in found if e.principal == reader}

    await until(
        logged,
        lambda targets: targets == {"/accord.v1.KV/Put", "/accord.v1.KV/Delete"},
        "both refused operations audited",
        10,
    )


async def test_a_batch_without_a_valid_credential_is_refused_whole(
    auth_cluster: AuthCluster, mint: Mint, namespace: str
) -> None:
    writer = unique("writer")
    token = await mint(writer, Role.WRITE)
    before = auth_cluster.stored()
    cases = {
        "no token": (("accord-namespace", namespace), ("accord-agent-id", writer)),
        "forged token": identity(namespace, writer, "acc1.AAAAAAAAAAAAAAAA.forged"),
        "another's agent id": identity(namespace, "someone-else", token),
        "another namespace": identity(f"{namespace}-other", writer, token),
    }
    async with Stubs(auth_cluster.addresses[1]) as raw:
        for case, metadata in cases.items():
            try:
                await raw.kv.Batch(batch_of_get_and_put(), metadata=metadata, timeout=5)
                raise AssertionError(f"{case}: the batch was served")
            except grpc.aio.AioRpcError as refused:
                expected = (
                    grpc.StatusCode.UNAUTHENTICATED
                    if "token" in case
                    else grpc.StatusCode.PERMISSION_DENIED
                )
                assert refused.code() == expected, case
    assert auth_cluster.stored() == before


async def test_a_writer_batch_is_served_with_provenance(
    auth_cluster: AuthCluster, mint: Mint, namespace: str
) -> None:
    writer = unique("writer")
    token = await mint(writer, Role.WRITE)
    request = batch_of_get_and_put()
    request.ops[1].put.key = "written"  # operations of a batch are unordered: other keys
    request.ops[2].delete.key = "never-there"
    async with Stubs(auth_cluster.addresses[0]) as raw:
        response = await raw.kv.Batch(request, metadata=identity(namespace, writer, token))
    got, put, delete = response.outcomes
    assert not got.get.found
    assert put.put.kv.written_by.principal == writer
    assert not delete.delete.deleted
    assert not any(o.HasField("error") for o in response.outcomes)


async def test_a_runtime_acts_only_as_the_agents_it_hosts(
    auth_cluster: AuthCluster, admin: AsyncClient, mint: Mint, namespace: str
) -> None:
    started = time.time_ns()
    runtime = unique("runtime")
    token = await mint(runtime, Role.WRITE, agents=("agent-a", "agent-b"))
    before = auth_cluster.stored(namespace)

    def put_as(agent: str) -> kv_pb2.BatchOp:
        return kv_pb2.BatchOp(
            put=kv_pb2.PutRequest(key=f"by/{agent}", value=b"x", request_id=uuid.uuid4().hex),
            agent_id=agent,
        )

    async with Stubs(auth_cluster.addresses[0]) as raw:
        response = await raw.kv.Batch(
            kv_pb2.BatchRequest(ops=[put_as("agent-b"), put_as("agent-c"), put_as(runtime)]),
            metadata=identity(namespace, "agent-a", token),
        )
    hosted, stranger, itself = response.outcomes
    assert hosted.put.kv.written_by.agent_id == "agent-b"
    assert hosted.put.kv.written_by.principal == runtime
    for outcome in (stranger, itself):  # a service principal is not its agents
        error = from_status(outcome.error)
        assert error.code == grpc.StatusCode.PERMISSION_DENIED
        assert error.metadata["agents"] == "agent-a,agent-b"
    after = auth_cluster.stored(namespace)
    assert len(after) == len(before) + 2  # agent-b's value and its request's record
    assert not {b"by/agent-c", f"by/{runtime}".encode()} & {k.key.split(b"/kv/")[-1] for k in after}

    async def logged() -> int:
        found = await refusals_since(admin, started)
        return sum(1 for e in found if e.principal == runtime)

    await until(logged, lambda n: n == 2, "both refused operations audited", 10)
