"""The effect ledger with auth required (the auth suite's replicas): a reader may look but
not begin, complete or compensate; another writer cannot begin or end an effect on my
lease; effects record the authenticated principal. Refusals change nothing in etcd."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc

from accord.client import AccordError, PermissionDeniedError, Role, intent
from accord.client.errors import from_rpc_error
from accord.v1 import effects_pb2
from tests.auth.conftest import AuthCluster, Mint, unique
from tests.harness import Stubs, make_client

SEND = intent("send_email", b'{"to":"a@example.com"}')


def bearer(namespace: str, token: str) -> tuple[tuple[str, str], ...]:
    return (("accord-namespace", namespace), ("authorization", f"Bearer {token}"))


async def refused(call: Callable[[], Awaitable[object]]) -> AccordError:
    try:
        await call()
    except grpc.aio.AioRpcError as exc:
        return from_rpc_error(exc)
    raise AssertionError("served; it should have been refused")


async def test_a_reader_looks_but_cannot_begin_or_end_effects(
    auth_cluster: AuthCluster, mint: Mint, namespace: str
) -> None:
    writer, reader = unique("writer"), unique("reader")
    writer_token = await mint(writer, Role.WRITE)
    reader_token = await mint(reader, Role.READ)
    async with make_client(auth_cluster.addresses, namespace, agent="", token=writer_token) as w:
        lease = await w.leases.grant(30)
        began = await w.effects.begin("pay", "run", SEND, lease=lease)
        assert began.proceed and began.effect.began.principal == writer
        theirs = bearer(namespace, reader_token)
        before = auth_cluster.stored(namespace)
        async with Stubs(auth_cluster.addresses[1]) as stubs:
            outcome = effects_pb2.EffectOutcome(success=b"stolen")
            calls: dict[str, Callable[[], Awaitable[object]]] = {
                "Begin": lambda: stubs.effects.Begin(
                    effects_pb2.BeginRequest(
                        key="other", run_id="run", intent=SEND, lease_id=lease.id
                    ),
                    metadata=theirs,
                ),
                "Complete": lambda: stubs.effects.Complete(
                    effects_pb2.CompleteRequest(
                        key="pay", claim=began.claim, lease_id=lease.id, outcome=outcome
                    ),
                    metadata=theirs,
                ),
                "Abort": lambda: stubs.effects.Abort(
                    effects_pb2.AbortRequest(key="pay", claim=began.claim, lease_id=lease.id),
                    metadata=theirs,
                ),
                "Compensate": lambda: stubs.effects.Compensate(
                    effects_pb2.CompensateRequest(run_id="run"), metadata=theirs
                ),
                "SetRunStatus": lambda: stubs.effects.SetRunStatus(
                    effects_pb2.SetRunStatusRequest(
                        run_id="run", status=effects_pb2.RUN_STATUS_FAILED
                    ),
                    metadata=theirs,
                ),
            }
            for method, call in calls.items():
                error = await refused(call)
                assert isinstance(error, PermissionDeniedError), method
                assert error.metadata["role"] == "WRITE", method
            seen = await stubs.effects.Get(
                effects_pb2.EffectsGetRequest(key="pay"), metadata=theirs
            )
            assert seen.effect.state == effects_pb2.EFFECT_STATE_RUNNING
        assert auth_cluster.stored(namespace) == before


async def test_another_writer_cannot_use_my_lease_for_effects(
    auth_cluster: AuthCluster, mint: Mint, namespace: str
) -> None:
    alice, bob = unique("alice"), unique("bob")
    alice_token = await mint(alice, Role.WRITE)
    bob_token = await mint(bob, Role.WRITE)
    async with make_client(auth_cluster.addresses, namespace, agent="", token=alice_token) as a:
        lease = await a.leases.grant(30)
        began = await a.effects.begin("pay", "run", SEND, lease=lease)
        theirs = bearer(namespace, bob_token)
        before = auth_cluster.stored(namespace)
        async with Stubs(auth_cluster.addresses[0]) as stubs:
            begin = effects_pb2.BeginRequest(
                key="bobs", run_id="run", intent=SEND, lease_id=lease.id
            )
            complete = effects_pb2.CompleteRequest(
                key="pay",
                claim=began.claim,
                lease_id=lease.id,
                outcome=effects_pb2.EffectOutcome(success=b"stolen"),
            )
            abort = effects_pb2.AbortRequest(key="pay", claim=began.claim, lease_id=lease.id)
            for call in [
                lambda: stubs.effects.Begin(begin, metadata=theirs),
                lambda: stubs.effects.Complete(complete, metadata=theirs),
                lambda: stubs.effects.Abort(abort, metadata=theirs),
            ]:
                error = await refused(call)
                assert isinstance(error, PermissionDeniedError), error
                assert error.metadata["owner"] == alice
        assert auth_cluster.stored(namespace) == before
        done = await a.effects.complete("pay", began.claim, lease=lease, result=b"mine")
        assert done.effect.completed.principal == alice
