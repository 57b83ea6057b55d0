"""Bad input to the effect ledger, sent over raw stubs as an attacker would: malformed,
oversized and control-character keys, run ids and intents, a missing outcome, a lease
that does not exist or is another namespace's, a key of another run, and reads out of
range. Each is refused with its code and reason (a BadRequest naming the field for
INVALID_ARGUMENT), and nothing changes in etcd."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
from google.protobuf.message import Message

from accord.client import AccordError, InvalidArgumentError, intent
from accord.client.errors import from_rpc_error
from accord.coordinator.substrate.limits import DEFAULT_MAX_VALUE_BYTES
from accord.v1 import effects_pb2
from tests.effects.conftest import Agent
from tests.harness import Coordinator, EtcdMember, Stubs, identity

SEND = intent("send_email", b'{"to":"a@example.com"}')
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture
async def stubs(replicas: list[Coordinator]) -> AsyncIterator[list[Stubs]]:
    opened = [Stubs(r.address) for r in replicas]
    yield opened
    for s in opened:
        await s.close()


async def refused(call: Callable[[], Awaitable[Message]]) -> AccordError:
    try:
        answer = await call()
    except grpc.aio.AioRpcError as exc:
        return from_rpc_error(exc)
    raise AssertionError(f"served, but should have been refused: {answer}")


def fields(error: AccordError) -> set[str]:
    assert isinstance(error, InvalidArgumentError), error
    assert error.code == INVALID and error.reason == "INVALID_ARGUMENT"
    return {f for f, _ in error.field_violations}


BAD_NAMES = [
    ("", "must not be empty"),
    ("k" * 257, "the limit is 256"),
    ("é" * 129, "the limit is 256"),  # 258 bytes of UTF-8
    ("a\x00b", "U+0000"),
    ("line\nbreak", "U+000A"),
    ("del\x7f", "U+007F"),
]


@pytest.mark.parametrize(("name", "why"), BAD_NAMES, ids=repr)
async def test_bad_keys_and_run_ids_are_refused_and_change_nothing(
    agents: Agent, stubs: list[Stubs], etcd: EtcdMember, namespace: str, name: str, why: str
) -> None:
    a = await agents("alice")
    lease = await a.leases.grant(10)
    meta = identity(namespace, "alice")
    before = etcd.stored(namespace)
    for request, field in [
        (effects_pb2.BeginRequest(key=name, run_id="r", intent=SEND, lease_id=lease.id), "key"),
        (effects_pb2.BeginRequest(key="k", run_id=name, intent=SEND, lease_id=lease.id), "run_id"),
        (
            effects_pb2.BeginRequest(
                key="k", run_id="r", intent=intent(name, b"{}"), lease_id=lease.id
            ),
            "intent.tool",
        ),
    ]:
        error = await refused(lambda r=request: stubs[0].effects.Begin(r, metadata=meta))
        assert fields(error) == {field}, (name, field)
        assert why in error.field_violations[0][1]
    for call in [
        lambda: stubs[1].effects.Get(effects_pb2.EffectsGetRequest(key=name), metadata=meta),
        lambda: stubs[1].effects.GetRun(effects_pb2.GetRunRequest(run_id=name), metadata=meta),
        lambda: stubs[1].effects.Compensate(
            effects_pb2.CompensateRequest(run_id=name), metadata=meta
        ),
        lambda: stubs[1].effects.Abort(
            effects_pb2.AbortRequest(key=name, claim=1, lease_id=lease.id), metadata=meta
        ),
    ]:
        assert fields(await refused(call)) <= {"key", "run_id"}
    assert etcd.stored(namespace) == before


async def test_oversized_intents_outcomes_and_reasons_are_refused(
    agents: Agent, stubs: list[Stubs], etcd: EtcdMember, namespace: str
) -> None:
    a = await agents("alice")
    lease = await a.leases.grant(10)
    began = await a.effects.begin("k", "r", SEND, lease=lease)
    meta = identity(namespace, "alice")
    big = b"x" * (DEFAULT_MAX_VALUE_BYTES + 1)
    before = etcd.stored(namespace)
    oversized_begin = effects_pb2.BeginRequest(
        key="new",
        run_id="r",
        intent=effects_pb2.Intent(tool="t", arguments=big, summary="s" * 1025),
        lease_id=0,
        wait_ms=-1,
    )
    error = await refused(lambda: stubs[0].effects.Begin(oversized_begin, metadata=meta))
    assert fields(error) == {"intent.arguments", "intent.summary", "lease_id", "wait_ms"}
    completes = {
        "outcome": effects_pb2.CompleteRequest(key="k", claim=began.claim, lease_id=lease.id),
        "outcome.success": effects_pb2.CompleteRequest(
            key="k",
            claim=began.claim,
            lease_id=lease.id,
            outcome=effects_pb2.EffectOutcome(success=big),
        ),
        "outcome.failure": effects_pb2.CompleteRequest(
            key="k",
            claim=began.claim,
            lease_id=lease.id,
            outcome=effects_pb2.EffectOutcome(failure="e" * (DEFAULT_MAX_VALUE_BYTES + 1)),
        ),
        "compensation.arguments": effects_pb2.CompleteRequest(
            key="k",
            claim=began.claim,
            lease_id=lease.id,
            outcome=effects_pb2.EffectOutcome(success=b"ok"),
            compensation=effects_pb2.Intent(tool="undo", arguments=big),
        ),
        "claim": effects_pb2.CompleteRequest(
            key="k", claim=0, lease_id=lease.id, outcome=effects_pb2.EffectOutcome(success=b"")
        ),
    }
    for field, request in completes.items():
        error = await refused(lambda r=request: stubs[1].effects.Complete(r, metadata=meta))
        assert fields(error) == {field}, field
    abort = effects_pb2.AbortRequest(
        key="k", claim=began.claim, lease_id=lease.id, reason="r" * 1025
    )
    assert fields(await refused(lambda: stubs[0].effects.Abort(abort, metadata=meta))) == {"reason"}
    assert etcd.stored(namespace) == before
    assert (await a.effects.get("k")).state == effects_pb2.EFFECT_STATE_RUNNING


async def test_a_lease_that_is_gone_or_another_namespaces_is_refused(
    agents: Agent, stubs: list[Stubs], etcd: EtcdMember, namespace: str
) -> None:
    a = await agents("alice")
    elsewhere = await agents("alice", 1, f"{namespace}-other")
    theirs = await elsewhere.leases.grant(10)
    gone = await a.leases.grant(10)
    await gone.revoke()
    meta = identity(namespace, "alice")
    before = etcd.stored(namespace)
    for lease_id in (theirs.id, gone.id, 12345):
        request = effects_pb2.BeginRequest(key="k", run_id="r", intent=SEND, lease_id=lease_id)
        error = await refused(lambda r=request: stubs[0].effects.Begin(r, metadata=meta))
        assert error.code == grpc.StatusCode.NOT_FOUND and error.reason == "LEASE_NOT_FOUND"
    assert etcd.stored(namespace) == before


async def test_another_namespace_cannot_see_or_complete_an_effect(
    agents: Agent, stubs: list[Stubs], etcd: EtcdMember, namespace: str
) -> None:
    a = await agents("alice")
    lease = await a.leases.grant(10)
    began = await a.effects.begin("k", "r", SEND, lease=lease)
    other = identity(f"{namespace}-other", "alice")
    before = etcd.stored(namespace)
    complete = effects_pb2.CompleteRequest(
        key="k",
        claim=began.claim,
        lease_id=lease.id,
        outcome=effects_pb2.EffectOutcome(success=b""),
    )
    for call in [
        lambda: stubs[1].effects.Complete(complete, metadata=other),
        lambda: stubs[1].effects.Get(effects_pb2.EffectsGetRequest(key="k"), metadata=other),
        lambda: stubs[1].effects.GetRun(effects_pb2.GetRunRequest(run_id="r"), metadata=other),
    ]:
        error = await refused(call)
        assert error.code == grpc.StatusCode.NOT_FOUND and error.reason == "NOT_FOUND"
    assert etcd.stored(namespace) == before
    assert etcd.stored(f"{namespace}-other") == []


async def test_a_key_keeps_its_run(agents: Agent, etcd: EtcdMember, namespace: str) -> None:
    a = await agents("alice")
    lease = await a.leases.grant(10)
    await a.effects.begin("k", "first", SEND, lease=lease)
    before = etcd.stored(namespace)
    with pytest.raises(InvalidArgumentError) as moved:
        await a.effects.begin("k", "second", SEND, lease=lease)
    assert moved.value.field_violations[0][0] == "run_id"
    assert "first" in moved.value.field_violations[0][1]
    assert etcd.stored(namespace) == before


async def test_reads_out_of_range_are_refused(
    agents: Agent, stubs: list[Stubs], namespace: str
) -> None:
    a = await agents("alice")
    lease = await a.leases.grant(10)
    await a.effects.begin("k", "r", SEND, lease=lease)
    meta = identity(namespace, "alice")
    cases: dict[str, Message] = {
        "limit": effects_pb2.EffectsListRequest(limit=1001),
        "page_token": effects_pb2.EffectsListRequest(page_token="!!"),
        "states[0]": effects_pb2.EffectsListRequest(states=[99]),  # type: ignore[list-item]
    }
    for field, request in cases.items():
        error = await refused(lambda r=request: stubs[0].effects.List(r, metadata=meta))
        assert fields(error) == {field}, field
    bad_run = effects_pb2.GetRunRequest(run_id="r", limit=-1)
    assert fields(await refused(lambda: stubs[0].effects.GetRun(bad_run, metadata=meta))) == {
        "limit"
    }
    for status in (effects_pb2.RUN_STATUS_UNSPECIFIED, effects_pb2.RUN_STATUS_COMPENSATED):
        request = effects_pb2.SetRunStatusRequest(run_id="r", status=status)
        error = await refused(lambda r=request: stubs[1].effects.SetRunStatus(r, metadata=meta))
        assert fields(error) == {"status"}
