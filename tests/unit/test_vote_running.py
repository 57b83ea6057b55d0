"""The running sums of a vote's ballots (rules.Running), which let a replica settle a vote
in O(1) per ballot: after every ballot they equal the full count, they settle exactly as
the ballots do, and asking what one more ballot would do leaves them unchanged."""

from __future__ import annotations

from dataclasses import asdict

from hypothesis import HealthCheck, given, settings

from accord.coordinator.votes import rules as vote_rules
from accord.v1 import votes_pb2 as pb
from tests.unit.test_vote_rules import majority, make_vote, vote_and_ballots


def sums(count: vote_rules.Count) -> dict[str, object]:
    """Everything a Count holds but the confidences (Running does not keep them)."""
    out = asdict(count)
    del out["confidence"]
    return out


def words(verdict: vote_rules.Verdict | None) -> tuple[object, ...] | None:
    if verdict is None:
        return None
    return (verdict.outcome, verdict.option, verdict.decided_by, verdict.explanation)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(vote_and_ballots())
def test_running_sums_equal_the_full_count_after_every_ballot(drawn: tuple[pb.Vote, list]) -> None:
    vote, cast = drawn
    running = vote_rules.Running(vote)
    for i, ballot in enumerate(cast):
        before = sums(running.count())
        with_it = running.count_with(ballot)
        assert sums(running.count()) == before  # asking changed nothing
        running.add(ballot)
        now = running.count()
        assert with_it is not None and sums(with_it) == sums(now)
        assert sums(now) == sums(vote_rules._count(vote, cast[: i + 1], None))
        assert words(vote_rules.settle_count(vote, now)) == words(
            vote_rules.settle(vote, cast[: i + 1])
        )


def test_a_voter_counted_already_is_not_counted_again() -> None:
    vote = make_vote("abc", majority())
    running = vote_rules.Running(vote)
    running.add(pb.Ballot(voter="a", choice="yes"))
    assert running.count_with(pb.Ballot(voter="a", choice="no")) is None
    assert running.count().voters == {"yes": 1, "no": 0}
