"""One AsyncClient shared by many coroutines: KV operations made while others are in
flight go out together in KV.Batch calls, and each keeps its unary semantics (its result,
its typed error, its deadline, its cancellation)."""

from __future__ import annotations

import asyncio

import pytest

from accord.client import (
    AsyncClient,
    BatchPolicy,
    ConditionFailedError,
    DeadlineExceededError,
    Expect,
    Outcome,
    Put,
    VoteClosedError,
    VoteStatus,
)
from tests.harness import Coordinator, EtcdMember, make_client

BIG = 256 * 1024


def shared_client(replicas: list[Coordinator], namespace: str, **policy: int) -> AsyncClient:
    return make_client([replicas[0].address], namespace, batching=BatchPolicy(**policy))


async def test_many_coroutines_share_batches_and_each_gets_its_own_answer(
    replicas: list[Coordinator], namespace: str, etcd: EtcdMember
) -> None:
    async with shared_client(replicas, namespace) as accord:

        async def agent(i: int) -> None:
            key = f"agent/{i}"
            written = await accord.kv.put(key, b"0", expect=Expect(absent=True))
            for n in range(1, 6):
                written = await accord.kv.put(
                    key, str(n).encode(), expect=Expect(mod_revision=written.revision)
                )
                assert written.kv is not None and written.kv.value == str(n).encode()
                assert written.kv.version == n + 1
            found = await accord.kv.get(key)
            assert found is not None and found.value == b"5"

        await asyncio.gather(*(agent(i) for i in range(64)))
        assert accord._coalescer.batches > 0  # they did share messages
    values = {k.key: k for k in etcd.stored(namespace) if b"/kv/agent/" in k.key}
    assert len(values) == 64


async def test_a_conflict_inside_a_batch_is_that_callers_typed_error(
    replicas: list[Coordinator], namespace: str
) -> None:
    async with shared_client(replicas, namespace, max_in_flight=1) as accord:
        first = await accord.kv.put("contested", b"v0")
        # All at once: one goes out alone, the rest queue into one batch.
        results = await asyncio.gather(
            *(
                accord.kv.put(
                    "contested",
                    f"v{i}".encode(),
                    expect=Expect(mod_revision=first.revision),
                    return_current_on_failure=True,
                )
                for i in range(1, 9)
            ),
            return_exceptions=True,
        )
        assert accord._coalescer.batches >= 1
    won = [r for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, BaseException)]
    assert len(won) == 1 and len(lost) == 7
    for error in lost:
        assert isinstance(error, ConditionFailedError)
        assert error.failures[0].current_mod_revision == won[0].revision


async def test_a_cancelled_queued_operation_is_never_sent(
    replicas: list[Coordinator], namespace: str, etcd: EtcdMember
) -> None:
    async with shared_client(replicas, namespace, max_in_flight=1) as accord:
        ahead = asyncio.create_task(accord.kv.put("ahead", b"x"))
        await asyncio.sleep(0)  # `ahead` is out: what follows queues
        queued = asyncio.create_task(accord.kv.put("cancelled", b"x"))
        await asyncio.sleep(0)
        queued.cancel()
        await ahead
        with pytest.raises(asyncio.CancelledError):
            await queued
        await accord.kv.put("after", b"x")  # flushes whatever was queued
    keys = {k.key.rsplit(b"/", 1)[-1] for k in etcd.stored(namespace) if b"/kv/" in k.key}
    assert keys == {b"ahead", b"after"}


async def test_a_queued_operation_past_its_deadline_fails_and_is_not_sent(
    live_replicas: list[Coordinator], namespace: str, etcd: EtcdMember
) -> None:
    replica = live_replicas[0]
    async with shared_client(live_replicas, namespace, max_in_flight=1) as accord:
        await accord.kv.put("warm", b"x")  # the channel is up
        replica.pause()  # what is sent now hangs, so what follows stays queued
        try:
            ahead = asyncio.create_task(accord.kv.put("ahead", b"x", timeout=30))
            await asyncio.sleep(0)
            started = asyncio.get_running_loop().time()
            with pytest.raises(DeadlineExceededError):
                await accord.kv.put("late", b"x", timeout=0.3)
            # Answered at its own deadline, not when the call ahead of it came back.
            assert asyncio.get_running_loop().time() - started < 10
            assert not ahead.done()
        finally:
            replica.resume()
        await ahead
        await accord.kv.put("after", b"x")
    keys = {k.key.rsplit(b"/", 1)[-1] for k in etcd.stored(namespace) if b"/kv/" in k.key}
    assert b"late" not in keys and b"ahead" in keys


async def test_values_left_out_of_a_full_batch_are_filled_in(
    replicas: list[Coordinator], namespace: str
) -> None:
    async with shared_client(replicas, namespace, max_in_flight=1) as accord:
        values = {f"big/{i:02d}": bytes([i]) * BIG for i in range(20)}
        await asyncio.gather(*(accord.kv.put(k, v) for k, v in values.items()))
        batches = accord._coalescer.batches
        found = await asyncio.gather(*(accord.kv.get(k) for k in values))
        assert accord._coalescer.batches > batches
        assert [kv.value if kv else None for kv in found] == list(values.values())
        # A Txn deleting them all, batched beside puts: the deleted values come back too.
        deleted = await asyncio.gather(
            accord.kv.txn({}, [Put("marker", b"m")]),
            *(accord.kv.delete(k) for k in values),
        )
        assert [d.prev.value if d.prev else None for d in deleted[1:]] == list(values.values())


async def test_the_agents_of_one_runtime_share_batches_each_as_itself(
    replicas: list[Coordinator], namespace: str
) -> None:
    async with shared_client(replicas, namespace, max_in_flight=1) as runtime:
        agents = [runtime.kv.as_agent(f"agent-{i}") for i in range(16)]
        written = await asyncio.gather(
            *(kv.put(f"note/{i}", b"x", request_id="same-id") for i, kv in enumerate(agents))
        )
        assert runtime._coalescer.batches >= 1
        # Each write is its agent's own: its provenance, and its request_id's record (the
        # same request_id used by 16 agents is 16 requests, none a replay of another).
        assert [w.kv.written_by.agent_id for w in written if w.kv] == [
            f"agent-{i}" for i in range(16)
        ]
        assert not any(w.replayed for w in written)
        again = await agents[3].put("note/3", b"x", request_id="same-id")
        assert again.replayed and again.revision == written[3].revision


async def test_the_voters_of_one_runtime_share_cast_batches_and_decide_once(
    replicas: list[Coordinator], namespace: str
) -> None:
    voters = [f"voter-{i}" for i in range(40)]
    async with shared_client(replicas, namespace, max_in_flight=1) as runtime:
        vote = await runtime.votes.propose(
            "ship it?", ["yes", "no"], voters=voters, voting_period=600
        )
        results = await asyncio.gather(
            *(runtime.votes.as_agent(v).cast(vote.id, "yes") for v in voters),
            return_exceptions=True,
        )
        assert runtime._casts.batches >= 1
        accepted = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, BaseException)]
        # The 21st "yes" decides; the ballots after it find the vote closed.
        assert len(accepted) >= 21
        assert all(isinstance(e, VoteClosedError) for e in refused)
        assert {r.ballot.voter for r in accepted} <= set(voters)
        final = await runtime.votes.get(vote.id)
        assert final.status == VoteStatus.DECIDED
        assert final.decision is not None and final.decision.outcome == Outcome.APPROVED
        assert sorted(b.voter for b in final.ballots) == sorted(r.ballot.voter for r in accepted)
