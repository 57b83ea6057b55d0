"""Ownership with auth required: a lease belongs to the principal that granted it, a
session to the one that created it. Another writer of the namespace, calling over raw
stubs as an attacker would, cannot keep the lease alive, revoke it, hang keys, lock
entries or presence on it, release the lock it holds, or delete the session
(PERMISSION_DENIED naming the owner; etcd unchanged); it may still look. An ADMIN of the
namespace may revoke the lease, cancel a vote it did not propose and delete the session,
and each such act is in the audit log."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from accord.client import AccordError, AsyncClient, PermissionDeniedError, Role
from accord.client.errors import from_rpc_error
from accord.v1 import kv_pb2, leases_pb2, locks_pb2, sessions_pb2, votes_pb2
from tests.auth.conftest import ADMIN, AuthCluster, Mint, unique
from tests.harness import Stubs, make_client


def bearer(namespace: str, token: str) -> tuple[tuple[str, str], ...]:
    return (("accord-namespace", namespace), ("authorization", f"Bearer {token}"))


async def refused(call: Callable[[], Awaitable[object]], what: str = "") -> AccordError:
    try:
        await call()
    except grpc.aio.AioRpcError as exc:
        return from_rpc_error(exc)
    raise AssertionError(f"{what} was served; it should have been refused")


async def test_another_writer_cannot_use_or_end_my_lease(
    auth_cluster: AuthCluster, mint: Mint, namespace: str
) -> None:
    alice, bob = unique("alice"), unique("bob")
    alice_token = await mint(alice, Role.WRITE)
    bob_token = await mint(bob, Role.WRITE)
    async with (
        make_client(auth_cluster.addresses, namespace, agent="", token=alice_token) as a,
        await a.leases.grant(ttl=30) as lease,
        a.locks.hold("doc", lease),
    ):
        await a.sessions.open("board")
        theirs = bearer(namespace, bob_token)
        before = auth_cluster.stored()

        async def keepalive_stream() -> None:
            async def one() -> AsyncIterator[leases_pb2.KeepAliveRequest]:
                yield leases_pb2.KeepAliveRequest(lease_id=lease.id)

            stream = stubs.leases.KeepAlive(one(), metadata=theirs, timeout=5)
            await stream.read()

        async with Stubs(auth_cluster.addresses[1]) as stubs:
            attempts: dict[str, Callable[[], Awaitable[object]]] = {
                "KeepAliveOnce": lambda: stubs.leases.KeepAliveOnce(
                    leases_pb2.KeepAliveOnceRequest(lease_id=lease.id), metadata=theirs
                ),
                "KeepAlive": keepalive_stream,
                "Revoke": lambda: stubs.leases.Revoke(
                    leases_pb2.RevokeRequest(lease_id=lease.id), metadata=theirs
                ),
                "Acquire": lambda: stubs.locks.Acquire(
                    locks_pb2.AcquireRequest(name="other", lease_id=lease.id, no_wait=True),
                    metadata=theirs,
                ),
                "Release": lambda: stubs.locks.Release(
                    locks_pb2.ReleaseRequest(name="doc", lease_id=lease.id), metadata=theirs
                ),
                "Put on the lease": lambda: stubs.kv.Put(
                    kv_pb2.PutRequest(key="k", value=b"x", lease_id=lease.id, request_id="r1"),
                    metadata=theirs,
                ),
                "Delete session": lambda: stubs.sessions.Delete(
                    sessions_pb2.SessionsDeleteRequest(name="board", request_id="d1"),
                    metadata=theirs,
                ),
                "SetPresence": lambda: stubs.sessions.SetPresence(
                    sessions_pb2.SetPresenceRequest(
                        name="board", lease_id=lease.id, client_id=7, state_json="{}"
                    ),
                    metadata=theirs,
                ),
            }
            for what, attempt in attempts.items():
                error = await refused(attempt, what)
                assert isinstance(error, PermissionDeniedError), (what, error)
                assert error.metadata["owner"] == alice, what
            # Looking is reading, which bob may do.
            seen = await stubs.leases.TimeToLive(
                leases_pb2.TimeToLiveRequest(lease_id=lease.id), metadata=theirs
            )
            assert seen.lease.agent_id == alice
        assert auth_cluster.stored() == before
        state, _ = await a.locks.describe("doc")
        assert [h.agent_id for h in state.holders] == [alice]


async def test_a_namespace_admin_may_revoke_a_lease_cancel_a_vote_and_delete_a_session(
    auth_cluster: AuthCluster, mint: Mint, namespace: str, admin: AsyncClient
) -> None:
    alice, nadia = unique("alice"), unique("nadia")
    alice_token = await mint(alice, Role.WRITE, Role.PROPOSE)
    nadia_token = await mint(nadia, Role.ADMIN)
    async with make_client(auth_cluster.addresses, namespace, agent="", token=alice_token) as a:
        lease, own = await a.leases.grant(ttl=30), await a.leases.grant(ttl=30)
        vote = await a.votes.propose("ship?", ["yes", "no"], voters=[alice], voting_period=600)
        await a.sessions.open("board")
        async with Stubs(auth_cluster.addresses[0]) as stubs:
            theirs = bearer(namespace, nadia_token)
            await stubs.leases.Revoke(leases_pb2.RevokeRequest(lease_id=lease.id), metadata=theirs)
            cancelled = await stubs.votes.Cancel(
                votes_pb2.VotesCancelRequest(vote_id=vote.id, request_id="c1"), metadata=theirs
            )
            assert cancelled.decision.outcome == votes_pb2.OUTCOME_CANCELLED
            deleted = await stubs.sessions.Delete(
                sessions_pb2.SessionsDeleteRequest(name="board", request_id="d1"), metadata=theirs
            )
            assert deleted.deleted
        await lease.lost.wait()
        await own.revoke()  # alice ending her own lease is no administrative act
    # An ADMIN's acts on what others own are in the audit log; the owner's own are not.
    logged = [e for e in await admin.auth.audit(200) if e.namespace == namespace]
    acts = {(e.action, e.target, e.principal) for e in logged if e.principal != ADMIN}
    assert acts == {
        ("RevokeLease", str(lease.id), nadia),
        ("CancelVote", vote.id, nadia),
        ("DeleteSession", "board", nadia),
    }
