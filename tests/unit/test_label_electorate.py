"""How a label electorate weighs its agents (coordinator/votes/electorate.py)."""

from __future__ import annotations

from accord.coordinator.votes.electorate import label_voters
from accord.v1 import auth_pb2, leases_pb2

TEAM = {"team": "triage", "tier": "gold"}
GRANTS = {
    "heavy": auth_pb2.LabelSet(labels=TEAM, weights={"team": 2.0, "tier": 3.0}),
    "plain": auth_pb2.LabelSet(labels=TEAM),
    "half": auth_pb2.LabelSet(labels={"team": "triage"}, weights={"team": 9.0}),
}


def granted(principal: str, namespace: str) -> auth_pb2.LabelSet:
    return GRANTS.get(principal, auth_pb2.LabelSet())


def lease(agent: str, principal: str) -> leases_pb2.LeaseInfo:
    return leases_pb2.LeaseInfo(agent_id=agent, principal=principal, labels=TEAM)


def weights(leases: list[leases_pb2.LeaseInfo], auth: bool) -> dict[str, float]:
    voters = label_voters(leases, TEAM, "ns", granted if auth else None)
    return {v.agent_id: v.weight for v in voters}


def test_the_smallest_granted_weight_counts_and_ungranted_labels_do_not() -> None:
    leases = [lease("a", "heavy"), lease("b", "plain"), lease("c", "half"), lease("d", "")]
    assert weights(leases, auth=True) == {"a": 2.0, "b": 1.0}
    assert weights(leases, auth=False) == {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0}


def test_an_agent_on_several_leases_weighs_the_smallest() -> None:
    for order in (["heavy", "plain"], ["plain", "heavy"]):
        assert weights([lease("a", p) for p in order], auth=True) == {"a": 1.0}
