"""Propose and Cast say whether they answered a retry (`replayed`), as KV writes do: over
raw gRPC (what another language sees) and through the Python client."""

from __future__ import annotations

from accord.v1 import votes_pb2
from tests.harness import Coordinator, EtcdMember, Stubs, identity, make_client


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
    async with make_client(addresses, namespace, agent="lead") as lead, make_client(
        addresses, namespace, agent="alice"
    ) as alice:
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
