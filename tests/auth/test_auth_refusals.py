"""Auth required, tried as an attacker would, against two real replicas: no token,
garbage, a well-formed unknown token, a revoked one (refused by both replicas within a
second), an expired one, a token used to act as another agent, a reader writing,
another namespace's admin breaking a lock, a non-admin minting tokens or granting
ADMIN, and identity metadata given twice or in binary form. Each is refused with its
gRPC code and ErrorReason, and etcd holds exactly what it held before."""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable

import grpc
import pytest

from accord.client import (
    AccordError,
    AsyncClient,
    BadIdentityError,
    PermissionDeniedError,
    Role,
    UnauthenticatedError,
)
from accord.client.errors import from_rpc_error
from accord.coordinator.auth import tokens
from accord.v1 import kv_pb2
from tests.auth.conftest import AuthCluster, Mint, unique
from tests.harness import Metadata, Stubs, make_client, until, wall_clock_past

RawMetadata = tuple[tuple[str, str | bytes], ...]
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED


async def refused(call: Awaitable[object]) -> AccordError:
    """The error a call was refused with (it must be refused)."""
    try:
        await call
    except AccordError as error:
        return error
    raise AssertionError("the call was served; it should have been refused")


async def raw_put(address: str, metadata: RawMetadata, key: str = "raw") -> AccordError:
    """A Put over a raw stub with exactly this metadata, as a hand-written client sends it."""
    async with Stubs(address) as stubs:
        request = kv_pb2.PutRequest(key=key, value=b"x", request_id=unique("r"))
        try:
            await stubs.kv.Put(request, metadata=metadata, timeout=5)
        except grpc.aio.AioRpcError as exc:
            return from_rpc_error(exc)
    raise AssertionError("the Put was served; it should have been refused")


def client(cluster: AuthCluster, namespace: str, token: str, agent: str = "") -> AsyncClient:
    return make_client(cluster.addresses, namespace, agent=agent, token=token)


@pytest.mark.parametrize(
    "authorization",
    [
        None,  # no credential at all
        "Bearer " + secrets.token_urlsafe(48),  # garbage
        "Bearer acc1." + "A" * 16 + ".!!",  # the right shape, the wrong alphabet
        "Basic dXNlcjpwYXNzd29yZA==",  # another scheme
        "Bearer ",  # a scheme and nothing
        "Bearer " + str(tokens.new()),  # well-formed, unknown
    ],
    # Fixed ids: the random tokens must not name the tests (pytest-xdist's workers each
    # collect, and must collect the same names).
    ids=["none", "garbage", "bad-alphabet", "basic", "empty", "unknown"],
)
async def test_no_valid_token_is_unauthenticated_everywhere(
    auth_cluster: AuthCluster, namespace: str, authorization: str | None
) -> None:
    before = auth_cluster.stored()
    metadata: Metadata = (("accord-namespace", namespace),)
    if authorization is not None:
        metadata += (("authorization", authorization),)
    for address in auth_cluster.addresses:
        error = await raw_put(address, metadata)
        assert isinstance(error, UnauthenticatedError), error
        assert error.code == UNAUTHENTICATED and error.reason == "UNAUTHENTICATED"
        sent = (authorization or "").split(" ", 1)[-1]
        assert not sent or sent not in error.message  # a secret is never echoed
    assert auth_cluster.stored() == before


async def test_a_known_token_id_with_another_secret_is_refused(
    auth_cluster: AuthCluster, mint: Mint, namespace: str
) -> None:
    token = await mint(unique("victim"), Role.WRITE)
    forged = str(tokens.Token(token.split(".")[1], tokens.new().secret))
    before = auth_cluster.stored()
    for address in auth_cluster.addresses:
        error = await raw_put(
            address, (("accord-namespace", namespace), ("authorization", f"Bearer {forged}"))
        )
        assert isinstance(error, UnauthenticatedError) and error.code == UNAUTHENTICATED
    assert auth_cluster.stored() == before


async def test_a_revoked_token_is_refused_by_both_replicas_within_a_second(
    auth_cluster: AuthCluster, admin: AsyncClient, mint: Mint, namespace: str
) -> None:
    token = await mint(unique("leaver"), Role.WRITE)
    pinned = [make_client([a], namespace, agent="", token=token) for a in auth_cluster.addresses]
    try:
        for i, c in enumerate(pinned):
            await c.kv.put(f"before-{i}", b"ok")  # the token works on both
        await admin.auth.revoke_token(token.split(".")[1])
        revoked_at = time.monotonic()

        async def outcome(c: AsyncClient) -> str:
            try:
                await c.kv.get("before-0")  # a read: probing changes nothing
            except UnauthenticatedError:
                return "refused"
            return "served"

        for c in pinned:
            await until(lambda c=c: outcome(c), lambda o: o == "refused", "refusal", timeout=1.0)
        assert time.monotonic() - revoked_at < 1.0
        before = auth_cluster.stored(namespace)
        for c in pinned:
            error = await refused(c.kv.put("after", b"should not land"))
            assert isinstance(error, UnauthenticatedError) and error.code == UNAUTHENTICATED
        assert auth_cluster.stored(namespace) == before
    finally:
        for c in pinned:
            await c.close()


async def test_an_expired_token_is_refused(
    auth_cluster: AuthCluster, admin: AsyncClient, namespace: str
) -> None:
    made = await admin.auth.create_token(unique("brief"), ttl=1)
    await admin.auth.grant(made.info.principal, Role.WRITE)
    await wall_clock_past(made.info.expires_at.seconds)
    before = auth_cluster.stored()
    async with client(auth_cluster, namespace, made.secret) as c:
        error = await refused(c.kv.put("late", b"x"))
    assert isinstance(error, UnauthenticatedError) and error.code == UNAUTHENTICATED
    assert "expired" in error.message and error.metadata["token_id"] == made.info.id
    assert auth_cluster.stored() == before


async def test_a_token_cannot_act_as_another_agent(
    auth_cluster: AuthCluster, mint: Mint, namespace: str
) -> None:
    alice = unique("alice")
    token = await mint(alice, Role.WRITE)
    runtime = unique("runtime")
    hosted = await mint(runtime, Role.WRITE, agents=("agent-a",))
    before = auth_cluster.stored()
    for credential, owner, impostor, allowed in [
        (token, alice, "bob", [alice]),
        (hosted, runtime, "agent-b", ["agent-a"]),
        (hosted, runtime, runtime, ["agent-a"]),  # a service principal is not its agents
    ]:
        async with client(auth_cluster, namespace, credential, agent=impostor) as c:
            error = await refused(c.kv.put("forged", b"x"))
        assert isinstance(error, PermissionDeniedError), (owner, error)
        assert error.code == DENIED and error.reason == "PERMISSION_DENIED"
        assert error.agents == allowed
    assert auth_cluster.stored() == before


async def test_a_reader_cannot_write(auth_cluster: AuthCluster, mint: Mint, namespace: str) -> None:
    token = await mint(unique("reader"), Role.READ)
    before = auth_cluster.stored()
    async with client(auth_cluster, namespace, token) as c:
        assert await c.kv.get("anything") is None  # reading is allowed
        error = await refused(c.kv.put("k", b"x"))
    assert isinstance(error, PermissionDeniedError) and error.code == DENIED
    assert (error.role, error.namespace) == ("WRITE", namespace)
    assert auth_cluster.stored() == before


async def test_another_namespaces_admin_cannot_break_a_lock(
    auth_cluster: AuthCluster, mint: Mint, namespace: str
) -> None:
    holder_name = unique("holder")
    holder = await mint(holder_name, Role.WRITE)
    other = f"{namespace}-other"
    outsider = unique("outsider")
    async with make_client(
        auth_cluster.addresses, other, agent="", token=auth_cluster.admin_token
    ) as other_admin:
        made = await other_admin.auth.create_token(outsider)
        await other_admin.auth.grant(outsider, Role.ADMIN)
    async with (
        client(auth_cluster, namespace, holder) as h,
        await h.leases.grant(ttl=30) as lease,
        h.locks.hold("doc", lease),
    ):
        before = auth_cluster.stored()
        async with client(auth_cluster, namespace, made.secret) as o:
            error = await refused(o.locks.break_lock("doc"))
        assert isinstance(error, PermissionDeniedError) and error.code == DENIED
        assert (error.role, error.namespace) == ("ADMIN", namespace)
        assert auth_cluster.stored() == before
        state, _ = await h.locks.describe("doc")
        assert [e.agent_id for e in state.holders] == [holder_name]


async def test_only_a_cluster_admin_mints_tokens_or_grants_admin(
    auth_cluster: AuthCluster, mint: Mint, namespace: str
) -> None:
    ns_admin = unique("ns-admin")
    token = await mint(ns_admin, Role.ADMIN)
    before = auth_cluster.stored()
    async with client(auth_cluster, namespace, token) as c:
        minted = await refused(c.auth.create_token(unique("mine")))
        assert isinstance(minted, PermissionDeniedError) and minted.role == "CLUSTER_ADMIN"
        raised = await refused(c.auth.grant(unique("crony"), Role.ADMIN))
        assert isinstance(raised, PermissionDeniedError) and raised.code == DENIED
        crowned = await refused(c.auth.grant(ns_admin, cluster_admin=True))
        assert isinstance(crowned, PermissionDeniedError) and crowned.code == DENIED
    async with client(auth_cluster, f"{namespace}-other", token) as c:
        elsewhere = await refused(c.auth.grant(unique("friend"), Role.WRITE))
        assert isinstance(elsewhere, PermissionDeniedError)
        assert elsewhere.namespace == f"{namespace}-other"
    assert auth_cluster.stored() == before


async def test_identity_metadata_twice_or_binary_is_refused(
    auth_cluster: AuthCluster, mint: Mint, namespace: str
) -> None:
    writer = await mint(unique("writer"), Role.WRITE)
    bearer = ("authorization", f"Bearer {writer}")
    admin_bearer = ("authorization", f"Bearer {auth_cluster.admin_token}")
    ns = ("accord-namespace", namespace)
    attempts: list[RawMetadata] = [
        (ns, bearer, admin_bearer),  # which token counts?
        (ns, bearer, bearer),
        (ns, ("accord-namespace", f"{namespace}-other"), bearer),  # which namespace?
        (ns, ("accord-agent-id", "a"), ("accord-agent-id", "b"), bearer),
        (("accord-namespace-bin", namespace.encode()), bearer),  # must not become "default"
        (ns, bearer, ("authorization-bin", secrets.token_bytes(40))),
    ]
    before = auth_cluster.stored()
    default_before = auth_cluster.stored("default")
    for metadata in attempts:
        for address in auth_cluster.addresses:
            error = await raw_put(address, metadata)
            assert isinstance(error, BadIdentityError), (metadata[0][0], error)
            assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert auth_cluster.stored() == before
    assert auth_cluster.stored("default") == default_before
