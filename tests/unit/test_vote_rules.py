"""The quorum-vote rules (coordinator/vote_rules.py), as pure functions: no etcd.

A table of votes, each with a ballot sequence, its final outcome and the ballot after
which the outcome first becomes certain (settle() stops returning None); a property test
that an early verdict holds for every way the missing ballots could still be cast; and
the tally's exact arithmetic.

Ballots in the table are written as "agent:what", space separated:
  a:yes         a choice            a:~       abstain
  v:VETO        a veto only         v:ok      a veto holder declining to veto
  a:no+VETO     a choice and a veto a:yes@0.8 a choice with confidence 0.8 (a:~@0.8)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accord.coordinator.votes import rules as vote_rules
from accord.v1 import votes_pb2 as pb

APPROVED = pb.OUTCOME_APPROVED
REJECTED = pb.OUTCOME_REJECTED
VETOED = pb.OUTCOME_VETOED
NO_QUORUM = pb.OUTCOME_NO_QUORUM
TIED = pb.OUTCOME_TIED
ESCALATED = pb.OUTCOME_ESCALATED

CERTAINTY = pb.DECIDED_BY_CERTAINTY
ALL_CAST = pb.DECIDED_BY_ALL_CAST
DEADLINE = pb.DECIDED_BY_DEADLINE

YES_NO = ("yes", "no")
THREE = ("yes", "no", "maybe")


# --- building votes and ballots --------------------------------------------------------


def majority(*, of_electorate: bool = False) -> pb.Rule:
    return pb.Rule(kind=pb.RULE_KIND_MAJORITY, of_electorate=of_electorate)


def fraction(numerator: int, denominator: int, *, of_electorate: bool = False) -> pb.Rule:
    return pb.Rule(
        kind=pb.RULE_KIND_FRACTION,
        fraction=pb.Ratio(numerator=numerator, denominator=denominator),
        of_electorate=of_electorate,
    )


def k_of_n(k: int) -> pb.Rule:
    return pb.Rule(kind=pb.RULE_KIND_K_OF_N, k=k)


def threshold(weight: float) -> pb.Rule:
    return pb.Rule(kind=pb.RULE_KIND_WEIGHTED_THRESHOLD, threshold_weight=weight)


def unanimous() -> pb.Rule:
    return pb.Rule(kind=pb.RULE_KIND_UNANIMOUS)


def make_vote(
    voters: str | Mapping[str, float],
    rule: pb.Rule,
    *,
    options: Sequence[str] = YES_NO,
    quorum: tuple[int, float] = (0, 0.0),
    veto: Sequence[str] = (),
    abstain: bool = False,
    change: bool = False,
    tie: pb.TiePolicy.ValueType = pb.TIE_POLICY_NO_DECISION,
) -> pb.Vote:
    """voters: "abc" (each weight 1) or {"a": 3, "b": 1}."""
    weights = dict.fromkeys(voters, 1.0) if isinstance(voters, str) else dict(voters)
    spec = pb.VoteSpec(
        question="q?",
        options=list(options),
        rule=rule,
        quorum=pb.Quorum(min_voters=quorum[0], min_weight=quorum[1]),
        veto_holders=list(veto),
        allow_abstain=abstain,
        allow_change=change,
        on_tie=tie,
    )
    return pb.Vote(
        id="v1",
        spec=spec,
        voters=[pb.Voter(agent_id=a, weight=w) for a, w in sorted(weights.items())],
    )


def ballot(text: str) -> pb.Ballot:
    voter, _, what = text.partition(":")
    out = pb.Ballot(voter=voter)
    for part in what.split("+"):
        word, _, confidence = part.partition("@")
        if confidence:
            out.confidence = float(confidence)
        if word == "VETO":
            out.veto = True
        elif word == "ok":
            out.veto = False
        elif word == "~":
            out.abstain = True
        else:
            out.choice = word
    return out


def ballots(text: str) -> list[pb.Ballot]:
    return [ballot(t) for t in text.split()]


def result(verdict: vote_rules.Verdict) -> tuple[str, str]:
    return vote_rules.OUTCOME_NAMES[verdict.outcome], verdict.option


# --- every way the missing ballots could go -------------------------------------------


def possible_ballots(vote: pb.Vote, agent: str) -> list[pb.Ballot]:
    """Every valid ballot agent could cast (not including casting none)."""
    is_voter = any(v.agent_id == agent for v in vote.voters)
    holder = agent in vote.spec.veto_holders
    if not is_voter:
        return [pb.Ballot(voter=agent, veto=True), pb.Ballot(voter=agent, veto=False)]
    plain = [pb.Ballot(voter=agent, choice=o) for o in vote.spec.options]
    if vote.spec.allow_abstain:
        plain.append(pb.Ballot(voter=agent, abstain=True))
    if not holder:
        return plain
    vetoing = []
    for b in plain:
        copy = pb.Ballot()
        copy.CopyFrom(b)
        copy.veto = True
        vetoing.append(copy)
    return [*plain, *vetoing, pb.Ballot(voter=agent, veto=True)]


def agents(vote: pb.Vote) -> list[str]:
    voters = [v.agent_id for v in vote.voters]
    return voters + [h for h in vote.spec.veto_holders if h not in voters]


def completions(vote: pb.Vote, cast: Sequence[pb.Ballot]) -> Iterator[list[pb.Ballot]]:
    """cast plus every combination of ballots (or none) from those who have not cast."""
    seen = {b.voter for b in cast}
    missing = [a for a in agents(vote) if a not in seen]
    choices = [[None, *possible_ballots(vote, a)] for a in missing]
    for combo in itertools.product(*choices):
        yield [*cast, *(b for b in combo if b is not None)]


def assert_sound(vote: pb.Vote, cast: Sequence[pb.Ballot], verdict: vote_rules.Verdict) -> int:
    """Every completion of cast closes with verdict's outcome and option."""
    checked = 0
    for full in completions(vote, cast):
        end = vote_rules.final(vote, full)
        assert result(end) == result(verdict), (
            f"settle() said {result(verdict)} after {[str(b) for b in cast]}, but with "
            f"{[str(b) for b in full[len(cast) :]]} added the vote closes {result(end)}"
        )
        checked += 1
    return checked


# --- the table -------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    vote: pb.Vote
    ballots: str
    outcome: int
    option: str = ""
    # Index of the ballot after which settle() first returns a verdict; None: only the
    # deadline decides (settle() returns None for every prefix).
    settle_at: int | None = None
    decided_by: int = DEADLINE


def case(id_: str, vote: pb.Vote, cast: str, outcome: int, option: str = "", **kw) -> object:
    return pytest.param(Case(vote, cast, outcome, option, **kw), id=id_)


def at(index: int, by: int) -> dict[str, int]:
    return {"settle_at": index, "decided_by": by}


CASES = [
    # MAJORITY of the weight cast: strictly more than half.
    case(
        "majority-second-yes-of-three-settles",
        make_vote("abc", majority()),
        "a:yes b:yes c:no",
        APPROVED,
        "yes",
        **at(1, CERTAINTY),
    ),
    case(
        "majority-of-cast-decided-at-deadline-with-two-missing",
        make_vote("abcde", majority()),
        "a:yes b:yes c:no",
        APPROVED,
        "yes",
    ),
    case(
        "majority-exactly-half-is-a-tie",
        make_vote("abcd", majority()),
        "a:yes b:no c:yes d:no",
        TIED,
        **at(3, ALL_CAST),
    ),
    case(
        "majority-heavy-voter-held-to-exactly-half-escalates",
        make_vote({"a": 2, "b": 1, "c": 1}, majority(), tie=pb.TIE_POLICY_ESCALATE),
        "a:yes b:no c:no",
        ESCALATED,
        **at(2, ALL_CAST),
    ),
    case(
        "tie-with-voter-missing-escalates-at-deadline",
        make_vote("abc", majority(), tie=pb.TIE_POLICY_ESCALATE),
        "a:yes b:no",
        ESCALATED,
    ),
    case(
        "majority-three-options-split-ties",
        make_vote("abcde", majority(), options=THREE),
        "a:yes b:no c:maybe d:yes e:no",
        TIED,
        **at(4, ALL_CAST),
    ),
    case(
        "majority-heavy-voter-decides-alone",
        make_vote({"a": 3, "b": 1, "c": 1}, majority()),
        "a:yes b:no c:no",
        APPROVED,
        "yes",
        **at(0, CERTAINTY),
    ),
    case(
        # 8 voters, h weighs 0.5: once g has cast, h's 0.5 can lift no option past half.
        "majority-of-cast-rejected-when-light-voter-cannot-help",
        make_vote({**dict.fromkeys("abcdefg", 1.0), "h": 0.5}, majority(), options=THREE),
        "a:yes d:no f:maybe b:yes e:no c:yes g:maybe",
        REJECTED,
        **at(6, CERTAINTY),
    ),
    # MAJORITY of the electorate.
    case(
        "majority-of-electorate-third-of-five-yes-settles",
        make_vote("abcde", majority(of_electorate=True)),
        "a:yes b:no c:yes d:yes",
        APPROVED,
        "yes",
        **at(3, CERTAINTY),
    ),
    case(
        "majority-of-electorate-not-met-by-majority-of-cast",
        make_vote("abcde", majority(of_electorate=True)),
        "a:yes b:yes c:no",
        REJECTED,
    ),
    case(
        "majority-of-electorate-abstentions-make-it-unreachable",
        make_vote("abcdef", majority(of_electorate=True), abstain=True),
        "a:yes b:yes c:~ d:~ e:~",
        REJECTED,
        **at(4, CERTAINTY),
    ),
    case(
        # after d, e absent would leave a tie, e voting yes a rejection: not certain.
        "majority-of-electorate-tie-or-reject-waits",
        make_vote("abcde", majority(of_electorate=True), abstain=True),
        "a:yes b:no c:~ d:~ e:yes",
        REJECTED,
        **at(4, ALL_CAST),
    ),
    case(
        # after e, yes leads 2 to 1 and cannot reach 4 of 6, but f can still tie it.
        "majority-of-electorate-trailing-option-can-still-tie",
        make_vote("abcdef", majority(of_electorate=True), abstain=True),
        "a:yes b:yes c:no d:~ e:~ f:no",
        TIED,
        **at(5, ALL_CAST),
    ),
    # FRACTION.
    case(
        "two-thirds-exactly-qualifies",
        make_vote("abc", fraction(2, 3)),
        "a:yes b:yes c:no",
        APPROVED,
        "yes",
        **at(1, CERTAINTY),
    ),
    case(
        "two-thirds-three-fifths-falls-short",
        make_vote("abcde", fraction(2, 3)),
        "a:yes b:yes c:yes d:no e:no",
        REJECTED,
        **at(4, ALL_CAST),
    ),
    case(
        "two-thirds-heavy-voter-exactly-at-boundary",
        make_vote({"a": 2, "b": 1}, fraction(2, 3)),
        "a:yes b:no",
        APPROVED,
        "yes",
        **at(0, CERTAINTY),
    ),
    case(
        "two-thirds-of-electorate-half-weights",
        make_vote({"a": 1.5, "b": 1, "c": 0.5}, fraction(2, 3, of_electorate=True)),
        "a:yes c:yes b:no",
        APPROVED,
        "yes",
        **at(1, CERTAINTY),
    ),
    case(
        "one-third-leader-beyond-reach",
        make_vote("abcde", fraction(1, 3), options=THREE),
        "a:yes b:yes c:yes d:no",
        APPROVED,
        "yes",
        **at(2, CERTAINTY),
    ),
    case(
        "one-third-two-options-qualify-equally-escalates",
        make_vote("abcd", fraction(1, 3), tie=pb.TIE_POLICY_ESCALATE),
        "a:yes b:no c:yes d:no",
        ESCALATED,
        **at(3, ALL_CAST),
    ),
    # K_OF_N: heads, not weight.
    case(
        "k-of-n-reached-early",
        make_vote("abcde", k_of_n(3)),
        "a:yes b:yes c:yes",
        APPROVED,
        "yes",
        **at(2, CERTAINTY),
    ),
    case(
        "k-of-n-counts-heads-not-weight",
        make_vote({"a": 5, "b": 1, "c": 1, "d": 1}, k_of_n(2)),
        "a:yes b:no c:no d:no",
        APPROVED,
        "no",
        **at(3, ALL_CAST),
    ),
    case(
        "k-of-n-equal-heads-unequal-weight-ties",
        make_vote({"a": 3, "b": 1, "c": 1, "d": 1}, k_of_n(2)),
        "a:yes b:no c:yes d:no",
        TIED,
        **at(3, ALL_CAST),
    ),
    case(
        "k-of-n-unreachable-rejected-early",
        make_vote("abcde", k_of_n(4), abstain=True),
        "a:yes b:yes c:~ d:~",
        REJECTED,
        **at(3, CERTAINTY),
    ),
    # WEIGHTED_THRESHOLD.
    case(
        "threshold-heavy-voter-decides-alone",
        make_vote({"a": 4, "b": 1, "c": 1, "d": 1}, threshold(3)),
        "a:yes b:no",
        APPROVED,
        "yes",
        **at(0, CERTAINTY),
    ),
    case(
        "threshold-heavy-voter-matched-by-three-light-ones",
        make_vote({"a": 3, "b": 1, "c": 1, "d": 1}, threshold(3)),
        "a:yes b:no c:no d:no",
        TIED,
        **at(3, ALL_CAST),
    ),
    case(
        "threshold-never-reached",
        make_vote("abc", threshold(2.5)),
        "a:yes b:no c:yes",
        REJECTED,
        **at(2, ALL_CAST),
    ),
    # UNANIMOUS.
    case(
        "unanimous-all-agree-only-when-all-cast",
        make_vote("abc", unanimous()),
        "a:yes b:yes c:yes",
        APPROVED,
        "yes",
        **at(2, ALL_CAST),
    ),
    case(
        "unanimous-broken-by-second-option",
        make_vote("abcd", unanimous()),
        "a:yes b:no",
        REJECTED,
        **at(1, CERTAINTY),
    ),
    case(
        "unanimous-broken-waits-for-quorum",
        make_vote("abcde", unanimous(), quorum=(3, 0)),
        "a:yes b:no c:yes",
        REJECTED,
        **at(2, CERTAINTY),
    ),
    case(
        "unanimous-abstention-does-not-break-it",
        make_vote("abc", unanimous(), abstain=True),
        "a:yes b:~ c:yes",
        APPROVED,
        "yes",
        **at(2, ALL_CAST),
    ),
    case(
        "unanimous-missing-voter-rejected-at-deadline",
        make_vote("abc", unanimous()),
        "a:yes b:yes",
        REJECTED,
    ),
    # Vetoes.
    case(
        "veto-from-outside-electorate-ends-at-once",
        make_vote("abc", majority(), veto=["v"]),
        "a:yes v:VETO",
        VETOED,
        **at(1, CERTAINTY),
    ),
    case(
        "veto-only-ballot-from-voter-ends-at-once",
        make_vote("abc", majority(), veto=["b"]),
        "a:yes b:VETO",
        VETOED,
        **at(1, CERTAINTY),
    ),
    case(
        "veto-with-choice-as-last-ballot",
        make_vote("abc", majority(), veto=["a"]),
        "b:yes c:yes a:no+VETO",
        VETOED,
        **at(2, ALL_CAST),
    ),
    case(
        "veto-below-quorum-still-vetoes",
        make_vote("abcde", majority(), quorum=(3, 0), veto=["v"]),
        "a:yes v:VETO",
        VETOED,
        **at(1, CERTAINTY),
    ),
    case(
        "pending-veto-holder-blocks-early-approval",
        make_vote("abc", majority(), veto=["v"]),
        "a:yes b:yes c:yes v:ok",
        APPROVED,
        "yes",
        **at(3, ALL_CAST),
    ),
    case(
        "pending-veto-holder-approval-at-deadline",
        make_vote("abc", majority(), veto=["v"]),
        "a:yes b:yes c:yes",
        APPROVED,
        "yes",
    ),
    case(
        # v's ballot is no participation: quorum 2 is met only by b.
        "declined-veto-does-not-count-toward-quorum",
        make_vote({"a": 3, "b": 1, "c": 1}, majority(), quorum=(2, 0), veto=["v"]),
        "v:ok a:yes b:no",
        APPROVED,
        "yes",
        **at(2, CERTAINTY),
    ),
    # Quorum.
    case(
        "quorum-by-count-blocks-early-approval",
        make_vote("abcde", majority(), quorum=(4, 0)),
        "a:yes b:yes c:yes d:no",
        APPROVED,
        "yes",
        **at(3, CERTAINTY),
    ),
    case(
        "quorum-by-count-missed",
        make_vote("abcde", majority(), quorum=(4, 0)),
        "a:yes b:yes c:yes",
        NO_QUORUM,
    ),
    case(
        # quorum met by abstentions; 2 of the 2 cast is a majority, abstentions aside.
        "abstentions-count-for-quorum-not-for-weight-cast",
        make_vote("abcde", majority(), quorum=(3, 0), abstain=True),
        "a:yes b:~ c:~ d:yes",
        APPROVED,
        "yes",
        **at(3, CERTAINTY),
    ),
    case(
        "quorum-by-weight-reached-by-abstention",
        make_vote({"a": 4, "b": 1, "c": 1}, majority(), quorum=(0, 4.5), abstain=True),
        "a:yes b:~ c:no",
        APPROVED,
        "yes",
        **at(1, CERTAINTY),
    ),
    case(
        "quorum-by-weight-missed-by-two-light-voters",
        make_vote({"a": 4, "b": 1, "c": 1}, majority(), quorum=(0, 4.5)),
        "b:yes c:no",
        NO_QUORUM,
    ),
    # allow_change: only the deadline decides.
    case(
        "allow-change-never-decides-early",
        make_vote("abc", majority(), change=True),
        "a:yes b:yes c:yes",
        APPROVED,
        "yes",
    ),
    case(
        "allow-change-veto-waits-for-deadline",
        make_vote("ab", majority(), veto=["v"], change=True),
        "v:VETO a:yes b:yes",
        VETOED,
    ),
]


@pytest.mark.parametrize("c", CASES)
def test_outcome_and_moment_of_certainty(c: Case) -> None:
    cast = ballots(c.ballots)
    expected = (vote_rules.OUTCOME_NAMES[c.outcome], c.option)
    assert (c.settle_at is None) == (c.decided_by == DEADLINE)
    assert c.settle_at is None or c.settle_at < len(cast)

    end = vote_rules.final(c.vote, cast)
    assert result(end) == expected
    assert end.decided_by == DEADLINE
    assert end.explanation.startswith(expected[0])

    for n in range(len(cast) + 1):
        index = n - 1  # the ballot just cast; -1: none yet
        verdict = vote_rules.settle(c.vote, cast[:n])
        if c.settle_at is None or index < c.settle_at:
            assert verdict is None, f"decided after ballot {index}, expected later: {verdict}"
        elif index == c.settle_at:
            assert verdict is not None, f"not decided after ballot {index}"
            assert result(verdict) == expected
            assert verdict.decided_by == c.decided_by
            assert verdict.explanation.startswith(expected[0])
            assert verdict.quorum_met == end.quorum_met
        elif verdict is not None:  # once certain, later ballots agree
            assert result(verdict) == expected


@pytest.mark.parametrize("c", CASES)
def test_table_early_verdicts_hold_for_every_completion(c: Case) -> None:
    cast = ballots(c.ballots)
    for n in range(len(cast) + 1):
        verdict = vote_rules.settle(c.vote, cast[:n])
        if verdict is not None:
            assert assert_sound(c.vote, cast[:n], verdict) >= 1


def test_quorum_met_reported() -> None:
    vetoed = vote_rules.final(
        make_vote("abcde", majority(), quorum=(3, 0), veto=["v"]), ballots("a:yes v:VETO")
    )
    assert (vetoed.outcome, vetoed.quorum_met) == (VETOED, False)
    no_quorum = vote_rules.final(make_vote("abc", majority(), quorum=(2, 0)), ballots("a:yes"))
    assert (no_quorum.outcome, no_quorum.quorum_met) == (NO_QUORUM, False)
    tied = vote_rules.final(make_vote("abc", majority(), quorum=(2, 0)), ballots("a:yes b:no"))
    assert (tied.outcome, tied.quorum_met) == (TIED, True)


def test_final_passes_decided_by_through() -> None:
    verdict = vote_rules.final(make_vote("ab", majority()), ballots("a:yes"), CERTAINTY)
    assert verdict.decided_by == CERTAINTY


# --- soundness, on random small votes --------------------------------------------------

WEIGHTS = [0.5, 1.0, 1.5, 2.0, 3.0]
KINDS = [
    pb.RULE_KIND_MAJORITY,
    pb.RULE_KIND_FRACTION,
    pb.RULE_KIND_K_OF_N,
    pb.RULE_KIND_UNANIMOUS,
    pb.RULE_KIND_WEIGHTED_THRESHOLD,
]


def half_steps(top: float) -> st.SearchStrategy[float]:
    """0.5, 1, 1.5, ... up to top (top a multiple of 0.5)."""
    return st.integers(1, int(top * 2)).map(lambda n: n / 2)


@st.composite
def random_rule(draw: st.DrawFn, size: int, total: float) -> pb.Rule:
    kind = draw(st.sampled_from(KINDS))
    if kind == pb.RULE_KIND_MAJORITY:
        return majority(of_electorate=draw(st.booleans()))
    if kind == pb.RULE_KIND_FRACTION:
        denominator = draw(st.integers(1, 4))
        numerator = draw(st.integers(1, denominator))
        return fraction(numerator, denominator, of_electorate=draw(st.booleans()))
    if kind == pb.RULE_KIND_K_OF_N:
        return k_of_n(draw(st.integers(1, size)))
    if kind == pb.RULE_KIND_WEIGHTED_THRESHOLD:
        return threshold(draw(half_steps(total)))
    return unanimous()


@st.composite
def random_vote(draw: st.DrawFn) -> pb.Vote:
    size = draw(st.integers(1, 5))
    names = "abcde"[:size]
    weights = {n: draw(st.sampled_from(WEIGHTS)) for n in names}
    total = sum(weights.values())  # exact: multiples of 0.5
    min_voters = draw(st.one_of(st.just(0), st.integers(0, size)))
    min_weight = draw(st.one_of(st.just(0.0), half_steps(total)))
    return make_vote(
        weights,
        draw(random_rule(size, total)),
        options=THREE[: draw(st.integers(2, 3))],
        quorum=(min_voters, min_weight),
        veto=draw(
            st.one_of(
                st.just([]), st.lists(st.sampled_from([*names, "v", "w"]), max_size=2, unique=True)
            )
        ),
        abstain=draw(st.booleans()),
        tie=draw(st.sampled_from([pb.TIE_POLICY_NO_DECISION, pb.TIE_POLICY_ESCALATE])),
    )


@st.composite
def vote_and_ballots(draw: st.DrawFn, *, everyone: bool = False) -> tuple[pb.Vote, list]:
    vote = draw(random_vote())
    # Each voter casts with a chance of `chance` quarters; a veto holder who is not a
    # voter usually has (while one has not, nothing is certain before a veto).
    chance = 4 if everyone else draw(st.integers(1, 3))
    voters = {v.agent_id for v in vote.voters}
    cast = [
        draw(st.sampled_from(possible_ballots(vote, agent)))
        for agent in agents(vote)
        if draw(st.integers(0, 3)) < (chance if agent in voters else max(chance, 3))
    ]
    return vote, draw(st.permutations(cast))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(vote_and_ballots())
def test_early_verdict_holds_for_every_completion(drawn: tuple[pb.Vote, list]) -> None:
    vote, cast = drawn
    verdict = vote_rules.settle(vote, cast)
    if verdict is None:
        return
    assert verdict.decided_by in (CERTAINTY, ALL_CAST)
    assert_sound(vote, cast, verdict)


@settings(max_examples=150, deadline=None)
@given(vote_and_ballots(everyone=True))
def test_all_cast_always_decides(drawn: tuple[pb.Vote, list]) -> None:
    vote, cast = drawn
    verdict = vote_rules.settle(vote, cast)
    assert verdict is not None
    assert verdict.decided_by == ALL_CAST
    assert result(verdict) == result(vote_rules.final(vote, cast))


@settings(max_examples=50, deadline=None)
@given(vote_and_ballots())
def test_allow_change_never_settles(drawn: tuple[pb.Vote, list]) -> None:
    vote, cast = drawn
    vote.spec.allow_change = True
    assert vote_rules.settle(vote, cast) is None


# --- soundness, exhaustively in a small world -----------------------------------------

SMALL_RULES = [
    pytest.param(majority(), id="majority"),
    pytest.param(majority(of_electorate=True), id="majority-of-electorate"),
    pytest.param(fraction(2, 3), id="two-thirds"),
    pytest.param(fraction(2, 3, of_electorate=True), id="two-thirds-of-electorate"),
    pytest.param(fraction(1, 3), id="one-third"),
    pytest.param(fraction(1, 2, of_electorate=True), id="half-of-electorate"),
    pytest.param(k_of_n(1), id="k1"),
    pytest.param(k_of_n(2), id="k2"),
    pytest.param(threshold(1), id="threshold-1"),
    pytest.param(threshold(2), id="threshold-2"),
    pytest.param(threshold(3), id="threshold-3"),
    pytest.param(unanimous(), id="unanimous"),
]


SMALL_SETUPS = [
    pytest.param((0, 0.0), [], id="no-quorum"),
    pytest.param((2, 0.0), [], id="quorum-2-voters"),
    pytest.param((0, 3.0), [], id="quorum-weight-3"),
    pytest.param((0, 0.0), ["b"], id="voter-b-holds-veto"),
    pytest.param((2, 0.0), ["v"], id="outsider-v-holds-veto"),
]


@pytest.mark.parametrize(("quorum", "veto"), SMALL_SETUPS)
@pytest.mark.parametrize("rule", SMALL_RULES)
def test_every_partial_ballot_set_of_a_small_vote(
    rule: pb.Rule, quorum: tuple[int, float], veto: list[str]
) -> None:
    """a (weight 2), b and c (1 each), yes/no/abstain: every set of ballots cast so far.
    An early verdict holds for every completion; with everyone cast there is one."""
    vote = make_vote({"a": 2, "b": 1, "c": 1}, rule, quorum=quorum, veto=veto, abstain=True)
    options = [[None, *possible_ballots(vote, agent)] for agent in agents(vote)]
    early = 0
    for combo in itertools.product(*options):
        cast = [b for b in combo if b is not None]
        verdict = vote_rules.settle(vote, cast)
        if len(cast) == len(options):
            assert verdict is not None
            assert verdict.decided_by == ALL_CAST
        elif verdict is not None:
            assert verdict.decided_by == CERTAINTY
            assert_sound(vote, cast, verdict)
            early += 1
    assert early > 0  # each of these rules decides some votes early


# --- the tally -------------------------------------------------------------------------


def test_tally_counts_weights_confidence_abstentions_and_vetoes() -> None:
    vote = make_vote(
        {"a": 2, "b": 1.5, "c": 1, "d": 0.5, "e": 1},
        majority(),
        options=THREE,
        veto=["d", "v", "w"],
        abstain=True,
    )
    cast = ballots("a:yes@0.8 v:ok b:yes@0.6 c:yes d:~@0.9+VETO w:VETO e:no@0.25")
    t = vote_rules.tally(vote, cast)
    assert [(o.option, o.voters, o.weight) for o in t.options] == [
        ("yes", 3, 4.5),
        ("no", 1, 1.0),
        ("maybe", 0, 0.0),
    ]
    # confidences given only: c gave none; d's abstention carries none to an option.
    assert t.options[0].mean_confidence == pytest.approx(0.7)
    assert t.options[1].mean_confidence == 0.25
    assert t.options[2].mean_confidence == 0.0
    assert (t.abstained, t.abstained_weight) == (1, 0.5)
    assert (t.participated, t.participated_weight) == (5, 6.0)
    assert (t.electorate_size, t.electorate_weight) == (5, 6.0)
    assert list(t.vetoed_by) == ["d", "w"]


def test_tally_veto_only_ballot_of_a_voter_is_not_participation() -> None:
    vote = make_vote("abc", majority(), veto=["b"])
    t = vote_rules.tally(vote, ballots("a:yes b:VETO"))
    assert (t.participated, t.participated_weight) == (1, 1.0)
    assert list(t.vetoed_by) == ["b"]
    assert [o.voters for o in t.options] == [1, 0]


def test_tally_of_no_ballots() -> None:
    t = vote_rules.tally(make_vote({"a": 2, "b": 0.5}, majority()), [])
    assert [(o.voters, o.weight, o.mean_confidence) for o in t.options] == [(0, 0, 0), (0, 0, 0)]
    assert (t.participated, t.abstained, list(t.vetoed_by)) == (0, 0, [])
    assert (t.electorate_size, t.electorate_weight) == (2, 2.5)


def test_three_tenths_reach_threshold_and_quorum_of_point_three() -> None:
    """Weights count as the decimals written: 3 x 0.1 is exactly 0.3, although the floats
    0.1 + 0.1 + 0.1 add up to 0.30000000000000004."""
    assert 0.1 + 0.1 + 0.1 != 0.3  # the premise: float addition would not be exact
    vote = make_vote({"a": 0.1, "b": 0.1, "c": 0.1}, threshold(0.3), quorum=(0, 0.3))
    two = vote_rules.final(vote, ballots("a:yes b:yes"))
    assert (two.outcome, two.quorum_met) == (NO_QUORUM, False)
    verdict = vote_rules.settle(vote, ballots("a:yes b:yes c:yes"))
    assert verdict is not None
    assert result(verdict) == ("APPROVED", "yes")
    assert vote_rules.tally(vote, ballots("a:yes b:yes c:yes")).options[0].weight == 0.3


@pytest.mark.parametrize("order", list(itertools.permutations("abc")), ids="".join)
def test_weights_sum_exactly_in_any_order(order: tuple[str, ...]) -> None:
    """0.1 + 0.2 + 0.3 is 0.6000000000000001 or 0.6 in floats, depending on the order;
    as decimals it is exactly 0.6 in every order, and below the next double up."""
    weights = {"a": 0.1, "b": 0.2, "c": 0.3}
    cast = [ballot(f"{voter}:yes") for voter in order]
    above = math.nextafter(0.6, 1.0)
    reached = vote_rules.final(make_vote(weights, threshold(0.6)), cast)
    missed = vote_rules.final(make_vote(weights, threshold(above)), cast)
    assert result(reached) == ("APPROVED", "yes")
    assert result(missed) == ("REJECTED", "")
    t = vote_rules.tally(make_vote(weights, threshold(0.6)), cast)
    assert t.options[0].weight == 0.6
    assert t.participated_weight == 0.6
    assert t.electorate_weight == 0.6


def test_decimal_weights_tie_as_written() -> None:
    """0.1 + 0.2 is exactly 0.3 as decimals (not the floats' 0.30000000000000004), so
    MAJORITY sees a tie; and 0.7 + 0.1 reaches a threshold of 0.8."""
    vote = make_vote({"a": 0.1, "b": 0.2, "c": 0.3}, majority())
    verdict = vote_rules.settle(vote, ballots("a:yes b:yes c:no"))
    assert verdict is not None
    assert (result(verdict), verdict.decided_by) == (("TIED", ""), ALL_CAST)
    reached = vote_rules.final(
        make_vote({"a": 0.7, "b": 0.1}, threshold(0.8)), ballots("a:yes b:yes")
    )
    assert result(reached) == ("APPROVED", "yes")
