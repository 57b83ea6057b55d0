"""Effects.BeginMany and Effects.CompleteMany: a batching client's concurrent Begins and
Completes get what lone calls get (one PROCEED per key under races, DONE after the
outcome, replays, NOT_HELD with the holder), each operation of a raw batch is answered
alone (a bad one, or a Begin that would wait, fails by itself), a batch over the limit
is refused whole and writes nothing, and a principal cannot do in a batch what it may
not do in a lone call."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2

from accord.client import (
    AsyncClient,
    BeginOutcome,
    EffectState,
    Lease,
    NotFoundError,
    Role,
    intent,
)
from accord.client.errors import NotHeldError
from accord.v1 import effects_pb2
from tests.auth.conftest import AuthCluster, Mint, unique
from tests.effects.conftest import Agent
from tests.harness import Coordinator, EtcdMember, Stubs, identity, make_client

SEND = intent("send_email", b'{"to":"a@example.com"}')
KEYS = [f"pay-{i}" for i in range(40)]


def reason(error: status_pb2.Status) -> str:
    info = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(info) for d in error.details if d.Is(info.DESCRIPTOR)), error
    return info.reason


def violations(error: status_pb2.Status) -> list[str]:
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in error.details if d.Is(bad.DESCRIPTOR)), error
    return [v.field for v in bad.field_violations]


def begin_op(key: str, lease_id: int, wait_ms: int = 0, agent: str = "") -> effects_pb2.BeginOp:
    request = effects_pb2.BeginRequest(
        key=key, run_id="run", intent=SEND, lease_id=lease_id, wait_ms=wait_ms
    )
    return effects_pb2.BeginOp(begin=request, agent_id=agent)


def complete_op(key: str, claim: int, lease_id: int) -> effects_pb2.CompleteOp:
    outcome = effects_pb2.EffectOutcome(success=b"ok")
    request = effects_pb2.CompleteRequest(key=key, claim=claim, lease_id=lease_id, outcome=outcome)
    return effects_pb2.CompleteOp(complete=request)


def batches(client: AsyncClient) -> tuple[int, int]:
    return client.effects._begins.batches, client.effects._completes.batches


async def test_a_batching_client_gets_the_answers_of_lone_calls(agents: Agent) -> None:
    a, b = await agents("alice", 0), await agents("bob", 1)
    la, lb = await a.leases.grant(30), await b.leases.grant(30)
    raced = await asyncio.gather(
        *(
            c.effects.begin(k, "run", SEND, lease=lease)
            for k in KEYS
            for c, lease in ((a, la), (b, lb))
        )
    )
    pairs = [raced[i : i + 2] for i in range(0, len(raced), 2)]
    for key, pair in zip(KEYS, pairs, strict=True):
        assert sorted(p.outcome for p in pair) == [BeginOutcome.PROCEED, BeginOutcome.BUSY], key
    winners = [next(p for p in pair if p.proceed) for pair in pairs]
    by_alice = [w.effect.claimed.agent_id == "alice" for w in winners]

    def own(i: int) -> tuple[AsyncClient, Lease]:
        return (a, la) if by_alice[i] else (b, lb)

    def other(i: int) -> tuple[AsyncClient, Lease]:
        return (b, lb) if by_alice[i] else (a, la)

    # The loser completing with the winner's claim on its own lease: NOT_HELD, each with
    # the effect whose claim says who holds it.
    stolen = await asyncio.gather(
        *(
            other(i)[0].effects.complete(k, winners[i].claim, lease=other(i)[1], result=b"x")
            for i, k in enumerate(KEYS)
        ),
        return_exceptions=True,
    )
    for i, error in enumerate(stolen):
        assert isinstance(error, NotHeldError), (KEYS[i], error)
        held = next(d for d in error.details if isinstance(d, effects_pb2.Effect))
        assert held.key == KEYS[i] and held.claim == winners[i].claim
    done = await asyncio.gather(
        *(
            own(i)[0].effects.complete(k, winners[i].claim, lease=own(i)[1], result=k.encode())
            for i, k in enumerate(KEYS)
        )
    )
    for key, completed in zip(KEYS, done, strict=True):
        assert not completed.replayed and completed.effect.state == EffectState.SUCCEEDED
        assert completed.effect.outcome.success == key.encode()
    replayed = await asyncio.gather(
        *(
            own(i)[0].effects.complete(k, winners[i].claim, lease=own(i)[1], result=b"again")
            for i, k in enumerate(KEYS)
        )
    )
    assert all(
        r.replayed and r.effect.outcome.success == k.encode()
        for r, k in zip(replayed, KEYS, strict=True)
    )
    again = await asyncio.gather(*(b.effects.begin(k, "run", SEND, lease=lb) for k in KEYS))
    assert [g.outcome for g in again] == [BeginOutcome.DONE] * len(KEYS)
    assert [g.effect.outcome.success for g in again] == [k.encode() for k in KEYS]
    # The answers above came (at least partly) in batches.
    (ab, ac), (bb, bc) = batches(a), batches(b)
    assert ab + bb >= 1 and ac + bc >= 1


async def test_each_op_is_answered_alone(
    replicas: list[Coordinator], namespace: str, agents: Agent
) -> None:
    a = await agents("alice")
    lease = (await a.leases.grant(30)).id
    async with Stubs(replicas[1].address) as raw:
        began = await raw.effects.BeginMany(
            effects_pb2.BeginManyRequest(
                begins=[
                    begin_op("one", lease),
                    begin_op("", lease),  # no key
                    begin_op("waits", lease, wait_ms=1000),
                    begin_op("two", lease),
                ]
            ),
            metadata=identity(namespace, "alice"),
        )
        one, bad, waits, two = began.outcomes
        assert one.begin.outcome == effects_pb2.BEGIN_OUTCOME_PROCEED
        assert two.begin.outcome == effects_pb2.BEGIN_OUTCOME_PROCEED
        assert one.begin.effect.began.agent_id == "alice"
        assert began.header.revision >= max(one.begin.header.revision, two.begin.header.revision)
        assert bad.error.code == code_pb2.INVALID_ARGUMENT
        assert waits.error.code == code_pb2.INVALID_ARGUMENT
        assert violations(waits.error) == ["begins[2].begin.wait_ms"]
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await raw.effects.Get(
                effects_pb2.EffectsGetRequest(key="waits"), metadata=identity(namespace, "alice")
            )
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND  # the waiting Begin wrote nothing
        completed = await raw.effects.CompleteMany(
            effects_pb2.CompleteManyRequest(
                completes=[
                    complete_op("one", one.begin.effect.claim, lease),
                    complete_op("two", one.begin.effect.claim, lease),  # another's claim
                ]
            ),
            metadata=identity(namespace, "alice"),
        )
        ok, not_held = completed.outcomes
        assert ok.complete.effect.state == effects_pb2.EFFECT_STATE_SUCCEEDED
        assert not ok.complete.replayed
        assert not_held.error.code == code_pb2.FAILED_PRECONDITION
        assert reason(not_held.error) == "NOT_HELD"
        assert (await a.effects.get("two")).state == effects_pb2.EFFECT_STATE_RUNNING


async def test_a_batch_over_the_limit_is_refused_whole_and_writes_nothing(
    replicas: list[Coordinator], namespace: str, etcd: EtcdMember, agents: Agent
) -> None:
    a = await agents("alice")
    lease = (await a.leases.grant(30)).id
    before = etcd.stored(namespace)
    async with Stubs(replicas[0].address) as raw:
        for call, request in (
            (
                raw.effects.BeginMany,
                effects_pb2.BeginManyRequest(begins=[begin_op(f"k{i}", lease) for i in range(257)]),
            ),
            (
                raw.effects.CompleteMany,
                effects_pb2.CompleteManyRequest(
                    completes=[complete_op(f"k{i}", 1, lease) for i in range(257)]
                ),
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(request, metadata=identity(namespace, "alice"))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "256" in (refused.value.details() or "")
    assert etcd.stored(namespace) == before


async def test_a_batch_lets_no_one_do_what_a_lone_call_may_not(
    auth_cluster: AuthCluster, mint: Mint, namespace: str
) -> None:
    writer, reader = unique("writer"), unique("reader")
    writer_token = await mint(writer, Role.WRITE)
    reader_token = await mint(reader, Role.READ)
    async with make_client(auth_cluster.addresses, namespace, agent="", token=writer_token) as w:
        lease = (await w.leases.grant(30)).id
    before = auth_cluster.stored(namespace)
    async with Stubs(auth_cluster.addresses[0]) as raw:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await raw.effects.BeginMany(
                effects_pb2.BeginManyRequest(begins=[begin_op("r", lease)]),
                metadata=identity(namespace, None, reader_token),
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await raw.effects.CompleteMany(
                effects_pb2.CompleteManyRequest(completes=[complete_op("r", 1, lease)]),
                metadata=identity(namespace, None, reader_token),
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert auth_cluster.stored(namespace) == before
        # The writer's op as an agent it may not act as is refused alone.
        answered = await raw.effects.BeginMany(
            effects_pb2.BeginManyRequest(
                begins=[begin_op("mine", lease), begin_op("theirs", lease, agent="someone-else")]
            ),
            metadata=identity(namespace, None, writer_token),
        )
        mine, theirs = answered.outcomes
        assert mine.begin.outcome == effects_pb2.BEGIN_OUTCOME_PROCEED
        assert mine.begin.effect.began.principal == writer
        assert theirs.error.code == code_pb2.PERMISSION_DENIED
        as_other = complete_op("mine", mine.begin.effect.claim, lease)
        as_other.agent_id = "someone-else"
        ended = await raw.effects.CompleteMany(
            effects_pb2.CompleteManyRequest(completes=[as_other]),
            metadata=identity(namespace, None, writer_token),
        )
        assert ended.outcomes[0].error.code == code_pb2.PERMISSION_DENIED
    async with make_client(auth_cluster.addresses, namespace, agent="", token=writer_token) as w:
        with pytest.raises(NotFoundError):
            await w.effects.get("theirs")
        assert (await w.effects.get("mine")).state == effects_pb2.EFFECT_STATE_RUNNING
