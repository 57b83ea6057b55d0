"""Propose and Cast say whether they answered a retry (`replayed`), as KV writes do: over
raw gRPC (what another language sees) and through the Python client."""

from __future__ import annotations

import asyncio

from accord.v1 import votes_pb2
from accord.v1.records_pb2 import IdempotencyRecord
from tests.harness import Coordinator, EtcdMember, Stubs, identity, make_client, until


def _spec() -> votes_pb2.VoteSpec:
    return votes_pb2.VoteSpec(
        question="Ship it?",
        options=["yes", "no"],
        electorate=votes_pb2.Electorate(
            voters=votes_pb2.Voters(
                voters=[votes_pb2.Voter(agent_id=a, weight=1) for a in ("alice", "bob")]
            )
        ),
        rule=votes_pb2.Rule(kind=votes_pb2.RULE_KIND_MAJORITY),
        timeout_ms=60_000,
    )


async def test_a_retried_proposal_says_it_was_replayed_and_is_stored_once(
    replicas: list[Coordinator], etcd: EtcdMember, namespace: str
) -> None:
    request = votes_pb2.ProposeRequest(spec=_spec(), request_id="p-1")
    answers = []
    for replica in replicas:  # the retry goes to the other replica
        async with Stubs(replica.address) as raw:
            answers.append(await raw.votes.Propose(request, metadata=identity(namespace, "lead")))
    first, retry = answers
    assert (first.replayed, retry.replayed) == (False, True)
    assert retry.vote.id == first.vote.id
    assert retry.vote.created_revision == first.vote.created_revision
    record = etcd.ctl("get", f"accord/ns/{namespace}/votes/{first.vote.id}", "-w", "json")
    assert '"version":1' in record.replace(" ", "")  # written once


async def test_a_retried_or_repeated_ballot_says_it_was_replayed(
    replicas: list[Coordinator], namespace: str
) -> None:
    addresses = [r.address for r in replicas]
    async with (
        make_client(addresses, namespace, agent="lead") as lead,
        make_client(addresses, namespace, agent="alice") as alice,
    ):
        vote = await lead.votes.propose(
            "Ship it?", ["yes", "no"], voters=["alice", "bob", "carol"], voting_period=60
        )
        first = await alice.votes.cast(vote.id, "yes", request_id="c-1")
        retried = await alice.votes.cast(vote.id, "yes", request_id="c-1")
        repeated = await alice.votes.cast(vote.id, "yes")  # no request_id: the same ballot
        assert (first.replayed, retried.replayed, repeated.replayed) == (False, True, True)
        assert first.ballot.revision == retried.ballot.revision == repeated.ballot.revision
        assert [b.revision for b in (await lead.votes.get(vote.id)).ballots] == [
            first.ballot.revision
        ]


async def test_a_ballot_with_a_request_id_is_one_etcd_write(
    replicas: list[Coordinator], etcd: EtcdMember, namespace: str
) -> None:
    """A ballot that cannot change is its own answer: the request_id's record is written
    once, with it, and a retry rebuilds the answer from the ballot's key. A ballot that may
    change later has its answer stored in the record as well."""
    three = _spec()  # bob's ballot below leaves the vote open
    three.electorate.voters.voters.add(agent_id="carol", weight=1)
    async with Stubs(replicas[0].address) as raw:
        fixed = await raw.votes.Propose(
            votes_pb2.ProposeRequest(spec=three, request_id="p-fixed"),
            metadata=identity(namespace, "lead"),
        )
        changing = _spec()
        changing.allow_change = True
        changeable = await raw.votes.Propose(
            votes_pb2.ProposeRequest(spec=changing, request_id="p-changing"),
            metadata=identity(namespace, "lead"),
        )
        casts = {}
        for request_id, vote in (("c-fixed", fixed.vote), ("c-changing", changeable.vote)):
            request = votes_pb2.CastRequest(vote_id=vote.id, choice="yes", request_id=request_id)
            casts[request_id] = await raw.votes.Cast(request, metadata=identity(namespace, "alice"))
        # A background write of an answer would be queued before this one is sent.
        await raw.votes.Cast(
            votes_pb2.CastRequest(vote_id=fixed.vote.id, choice="no", request_id="c-last"),
            metadata=identity(namespace, "bob"),
        )
        records = etcd.idempotency_records(namespace, "alice")
        assert records["c-fixed"].version == 1
        assert not IdempotencyRecord.FromString(records["c-fixed"].value).answer
        stored = await until(
            lambda: asyncio.to_thread(etcd.idempotency_records, namespace, "alice"),
            lambda found: found["c-changing"].version == 2,
            "the changeable ballot's answer stored in its record",
        )
        assert IdempotencyRecord.FromString(stored["c-changing"].value).answer
        retry = await raw.votes.Cast(
            votes_pb2.CastRequest(vote_id=fixed.vote.id, choice="yes", request_id="c-fixed"),
            metadata=identity(namespace, "alice"),
        )
    assert retry.replayed and retry.ballot == casts["c-fixed"].ballot
    assert retry.header.revision == casts["c-fixed"].header.revision
