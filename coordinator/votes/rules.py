"""How a vote's ballots become an outcome, and when that outcome is certain.

Pure functions of a vote (its spec and resolved electorate) and its ballots, so every
replica computes the same tally, the same outcome and the same moment of certainty.
Weights, thresholds and quorum weights are taken as the decimals they were written as
(a float's shortest repr: 0.1 is 1/10) and added exactly, so 0.7 + 0.1 reaches 0.8, 2/3
and thresholds never depend on rounding, and the order ballots arrive in changes nothing.

The outcome if the vote closed now (`final`), in order:
1. any veto: VETOED;
2. participation (abstentions count) below the quorum: NO_QUORUM;
3. the options the rule qualifies; exactly one strongest: APPROVED with it;
4. no single strongest option: TIED (or ESCALATED) when two or more options share the
   top support, otherwise REJECTED. UNANIMOUS never ties: disagreement is REJECTED.
"Strength" is weight, except for K_OF_N, which counts voters.

`settle` returns the outcome early only when no way the missing ballots could be cast
(or not cast) changes it; it errs on the side of waiting for the deadline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from accord.v1 import votes_pb2

_TIE = {
    votes_pb2.TIE_POLICY_UNSPECIFIED: votes_pb2.OUTCOME_TIED,
    votes_pb2.TIE_POLICY_NO_DECISION: votes_pb2.OUTCOME_TIED,
    votes_pb2.TIE_POLICY_ESCALATE: votes_pb2.OUTCOME_ESCALATED,
}
OUTCOME_NAMES = {value: name.removeprefix("OUTCOME_") for name, value in votes_pb2.Outcome.items()}


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: votes_pb2.Outcome.ValueType
    option: str
    decided_by: votes_pb2.DecidedBy.ValueType
    quorum_met: bool
    explanation: str


@dataclass(slots=True)
class Count:
    """The ballots of one vote, summed."""

    weight: dict[str, Fraction]
    voters: dict[str, int]
    confidence: dict[str, list[float]]
    cast_weight: Fraction  # non-abstaining
    participated: int
    participated_weight: Fraction
    abstained: int
    abstained_weight: Fraction
    vetoed_by: list[str]
    missing_voters: int
    missing_weight: Fraction
    missing_veto_holders: int
    electorate_size: int
    electorate_weight: Fraction


@dataclass(frozen=True, slots=True)
class Weights:
    """An electorate's weights as integers: each voter's decimal weight times scale."""

    of: dict[str, int]
    scale: int


def weights_of(vote: votes_pb2.Vote) -> Weights:
    """Computed once per vote and passed back in, it spares re-reading a large electorate
    on every count."""
    # Scale by the common denominator of the decimal values (1 when they are whole
    # numbers, the usual case), so tallies are sums of integers.
    if all(v.weight.is_integer() for v in vote.voters):
        return Weights({v.agent_id: int(v.weight) for v in vote.voters}, 1)
    exact = {v.agent_id: decimal(v.weight) for v in vote.voters}
    scale = math.lcm(*(f.denominator for f in exact.values()))
    return Weights({agent: int(f * scale) for agent, f in exact.items()}, scale)


class Running:
    """A vote's ballots summed as they come, for a vote whose ballots never change (no
    allow_change): adding a ballot costs O(1), and so does its Count, whatever the size of
    the electorate. Ballots must be added once each; the order changes no sum."""

    __slots__ = (
        "_abstained",
        "_abstained_weight",
        "_cast",
        "_electorate_weight",
        "_missing_veto_holders",
        "_participated",
        "_participated_weight",
        "_per_option",
        "_scale",
        "_seen",
        "_seen_voters",
        "_seen_weight",
        "_veto_holders",
        "_vetoed_by",
        "_voters",
        "_weights",
    )

    def __init__(self, vote: votes_pb2.Vote, electorate: Weights | None = None) -> None:
        electorate = electorate or weights_of(vote)
        self._weights, self._scale = electorate.of, electorate.scale
        self._per_option = dict.fromkeys(vote.spec.options, 0)
        self._voters = dict.fromkeys(vote.spec.options, 0)
        self._cast = self._participated = self._participated_weight = 0
        self._abstained = self._abstained_weight = 0
        self._vetoed_by: list[str] = []
        self._seen: set[str] = set()
        self._seen_weight = self._seen_voters = 0  # of the electorate's voters seen
        self._veto_holders = frozenset(vote.spec.veto_holders)
        self._missing_veto_holders = len(self._veto_holders)
        self._electorate_weight = sum(self._weights.values())

    def has(self, voter: str) -> bool:
        return voter in self._seen

    def add(self, ballot: votes_pb2.Ballot) -> None:
        self._seen.add(ballot.voter)
        if ballot.voter in self._veto_holders:
            self._missing_veto_holders -= 1
        if ballot.veto:
            self._vetoed_by.append(ballot.voter)
        weight = self._weights.get(ballot.voter)
        if weight is None:
            return
        self._seen_voters += 1
        self._seen_weight += weight
        if ballot.abstain:
            self._abstained += 1
            self._abstained_weight += weight
        elif ballot.choice in self._per_option:
            self._per_option[ballot.choice] += weight
            self._voters[ballot.choice] += 1
            self._cast += weight
        else:
            return  # a voter's veto-only ballot: not participation
        self._participated += 1
        self._participated_weight += weight

    def count(self) -> Count:
        """The sums so far (without confidences: enough to settle, not to tally)."""
        scale, electorate_weight = self._scale, self._electorate_weight
        return Count(
            weight={o: Fraction(w, scale) for o, w in self._per_option.items()},
            voters=dict(self._voters),
            confidence={},
            cast_weight=Fraction(self._cast, scale),
            participated=self._participated,
            participated_weight=Fraction(self._participated_weight, scale),
            abstained=self._abstained,
            abstained_weight=Fraction(self._abstained_weight, scale),
            vetoed_by=list(self._vetoed_by),
            missing_voters=len(self._weights) - self._seen_voters,
            missing_weight=Fraction(electorate_weight - self._seen_weight, scale),
            missing_veto_holders=self._missing_veto_holders,
            electorate_size=len(self._weights),
            electorate_weight=Fraction(electorate_weight, scale),
        )

    def count_with(self, ballot: votes_pb2.Ballot) -> Count | None:
        """The Count were ballot added too, leaving these sums as they are; None if its
        voter was already counted (a change, which Running does not model)."""
        if ballot.voter in self._seen:
            return None
        self.add(ballot)
        try:
            return self.count()
        finally:
            self._remove(ballot)

    def _remove(self, ballot: votes_pb2.Ballot) -> None:
        """Undo add(ballot), the last ballot added."""
        self._seen.discard(ballot.voter)
        if ballot.voter in self._veto_holders:
            self._missing_veto_holders += 1
        if ballot.veto:
            self._vetoed_by.pop()
        weight = self._weights.get(ballot.voter)
        if weight is None:
            return
        self._seen_voters -= 1
        self._seen_weight -= weight
        if ballot.abstain:
            self._abstained -= 1
            self._abstained_weight -= weight
        elif ballot.choice in self._per_option:
            self._per_option[ballot.choice] -= weight
            self._voters[ballot.choice] -= 1
            self._cast -= weight
        else:
            return
        self._participated -= 1
        self._participated_weight -= weight


def _count(
    vote: votes_pb2.Vote, ballots: Sequence[votes_pb2.Ballot], electorate: Weights | None
) -> Count:
    spec = vote.spec
    electorate = electorate or weights_of(vote)
    weights, scale = electorate.of, electorate.scale
    per_option = dict.fromkeys(spec.options, 0)
    voters = dict.fromkeys(spec.options, 0)
    confidence: dict[str, list[float]] = {o: [] for o in spec.options}
    cast = participated = participated_weight = abstained = abstained_weight = 0
    vetoed_by: list[str] = []
    seen: set[str] = set()
    for ballot in ballots:
        seen.add(ballot.voter)
        if ballot.veto:
            vetoed_by.append(ballot.voter)
        weight = weights.get(ballot.voter)
        if weight is None:
            continue
        if ballot.abstain:
            abstained += 1
            abstained_weight += weight
        elif ballot.choice in per_option:
            per_option[ballot.choice] += weight
            voters[ballot.choice] += 1
            cast += weight
            if ballot.confidence:
                confidence[ballot.choice].append(ballot.confidence)
        else:
            continue  # a voter's veto-only ballot: not participation
        participated += 1
        participated_weight += weight
    missing = [w for agent, w in weights.items() if agent not in seen]
    return Count(
        weight={o: Fraction(w, scale) for o, w in per_option.items()},
        voters=voters,
        confidence=confidence,
        cast_weight=Fraction(cast, scale),
        participated=participated,
        participated_weight=Fraction(participated_weight, scale),
        abstained=abstained,
        abstained_weight=Fraction(abstained_weight, scale),
        vetoed_by=vetoed_by,
        missing_voters=len(missing),
        missing_weight=Fraction(sum(missing), scale),
        missing_veto_holders=sum(1 for h in spec.veto_holders if h not in seen),
        electorate_size=len(weights),
        electorate_weight=Fraction(sum(weights.values()), scale),
    )


def tally(
    vote: votes_pb2.Vote, ballots: Sequence[votes_pb2.Ballot], weights: Weights | None = None
) -> votes_pb2.Tally:
    count = _count(vote, ballots, weights)
    return _tally(vote, count)


def _tally(vote: votes_pb2.Vote, count: Count) -> votes_pb2.Tally:
    return votes_pb2.Tally(
        options=[
            votes_pb2.OptionTally(
                option=o,
                voters=count.voters[o],
                weight=float(count.weight[o]),
                mean_confidence=(
                    sum(count.confidence[o]) / len(count.confidence[o])
                    if count.confidence[o]
                    else 0.0
                ),
            )
            for o in vote.spec.options
        ],
        abstained=count.abstained,
        abstained_weight=float(count.abstained_weight),
        participated=count.participated,
        participated_weight=float(count.participated_weight),
        electorate_size=count.electorate_size,
        electorate_weight=float(count.electorate_weight),
        vetoed_by=count.vetoed_by,
    )


def final(
    vote: votes_pb2.Vote,
    ballots: Sequence[votes_pb2.Ballot],
    decided_by: votes_pb2.DecidedBy.ValueType = votes_pb2.DECIDED_BY_DEADLINE,
    weights: Weights | None = None,
) -> Verdict:
    """The outcome if the vote closed with exactly these ballots."""
    return _final(vote, _count(vote, ballots, weights), decided_by)


def settle(
    vote: votes_pb2.Vote, ballots: Sequence[votes_pb2.Ballot], weights: Weights | None = None
) -> Verdict | None:
    """The outcome, if the ballots still missing can no longer change it; else None."""
    if vote.spec.allow_change:
        return None  # every ballot cast so far may still change
    return settle_count(vote, _count(vote, ballots, weights))


def settle_count(vote: votes_pb2.Vote, count: Count) -> Verdict | None:
    """settle, from the ballots' sums (Running.count)."""
    if vote.spec.allow_change:
        return None
    if count.missing_voters == 0 and count.missing_veto_holders == 0:
        return _final(vote, count, votes_pb2.DECIDED_BY_ALL_CAST)
    if count.vetoed_by:
        return _final(vote, count, votes_pb2.DECIDED_BY_CERTAINTY)
    if count.missing_veto_holders or not _quorum_met(vote, count):
        return None
    verdict = _final(vote, count, votes_pb2.DECIDED_BY_CERTAINTY)
    if verdict.outcome == votes_pb2.OUTCOME_APPROVED and _surely_wins(vote, count, verdict.option):
        return verdict
    if verdict.outcome == votes_pb2.OUTCOME_REJECTED and _surely_rejected(vote, count):
        return verdict
    return None


# --- the rule ------------------------------------------------------------------------


def _quorum_met(vote: votes_pb2.Vote, count: Count) -> bool:
    quorum = vote.spec.quorum
    return count.participated >= quorum.min_voters and count.participated_weight >= decimal(
        quorum.min_weight
    )


def _strength(vote: votes_pb2.Vote, count: Count, option: str) -> Fraction:
    if vote.spec.rule.kind == votes_pb2.RULE_KIND_K_OF_N:
        return Fraction(count.voters[option])
    return count.weight[option]


def _qualifies(
    vote: votes_pb2.Vote, count: Count, option: str, *, extra: Fraction, extra_voters: int
) -> bool:
    """Whether option meets the rule with `extra` weight (and voters) added to it; the
    cast weight grows by the same amount."""
    rule = vote.spec.rule
    weight = count.weight[option] + extra
    cast = count.cast_weight + extra
    basis = count.electorate_weight if rule.of_electorate else cast
    kind = rule.kind
    if kind == votes_pb2.RULE_KIND_MAJORITY:
        return weight > 0 and 2 * weight > basis
    if kind == votes_pb2.RULE_KIND_FRACTION:
        ratio = Fraction(rule.fraction.numerator, rule.fraction.denominator)
        return weight > 0 and weight >= ratio * basis
    if kind == votes_pb2.RULE_KIND_K_OF_N:
        return count.voters[option] + extra_voters >= rule.k
    if kind == votes_pb2.RULE_KIND_WEIGHTED_THRESHOLD:
        return weight >= decimal(rule.threshold_weight)
    if kind == votes_pb2.RULE_KIND_UNANIMOUS:
        everyone = count.participated + extra_voters == count.electorate_size
        return everyone and weight > 0 and weight == cast
    raise ValueError(f"unknown rule kind {kind}")


def _final(
    vote: votes_pb2.Vote, count: Count, decided_by: votes_pb2.DecidedBy.ValueType
) -> Verdict:
    spec = vote.spec
    quorum_met = _quorum_met(vote, count)
    if count.vetoed_by:
        return Verdict(
            votes_pb2.OUTCOME_VETOED,
            "",
            decided_by,
            quorum_met,
            f"VETOED by {', '.join(count.vetoed_by)}. {_participation(vote, count)}",
        )
    if not quorum_met:
        return Verdict(
            votes_pb2.OUTCOME_NO_QUORUM,
            "",
            decided_by,
            False,
            f"NO_QUORUM: {_participation(vote, count)}",
        )
    qualified = [
        o for o in spec.options if _qualifies(vote, count, o, extra=Fraction(0), extra_voters=0)
    ]
    top = _strongest(vote, count, qualified)
    if len(top) == 1:
        option = top[0]
        return Verdict(
            votes_pb2.OUTCOME_APPROVED,
            option,
            decided_by,
            True,
            f"APPROVED {_q(option)}: {_support(vote, count, option)}, which meets the rule "
            f"({describe_rule(vote)}). {_participation(vote, count)}",
        )
    tied = top if top else _strongest(vote, count, list(spec.options))
    if len(tied) > 1 and spec.rule.kind != votes_pb2.RULE_KIND_UNANIMOUS:
        outcome = _TIE[spec.on_tie]
        return Verdict(
            outcome,
            "",
            decided_by,
            True,
            f"{OUTCOME_NAMES[outcome]}: {' and '.join(_q(o) for o in tied)} share the top "
            f"support ({_support(vote, count, tied[0])} each) and the rule "
            f"({describe_rule(vote)}) picks no single option. {_participation(vote, count)}",
        )
    leader = tied[0] if tied else ""
    best = (
        f" The strongest option, {_q(leader)}, had {_support(vote, count, leader)}."
        if leader
        else ""
    )
    return Verdict(
        votes_pb2.OUTCOME_REJECTED,
        "",
        decided_by,
        True,
        f"REJECTED: no option meets the rule ({describe_rule(vote)}).{best} "
        f"{_participation(vote, count)}",
    )


def _strongest(vote: votes_pb2.Vote, count: Count, options: list[str]) -> list[str]:
    """The options (among those given) with the most support, if that is more than 0."""
    strengths = {o: _strength(vote, count, o) for o in options}
    most = max(strengths.values(), default=Fraction(0))
    if most <= 0:
        return []
    return [o for o in options if strengths[o] == most]


def _surely_wins(vote: votes_pb2.Vote, count: Count, option: str) -> bool:
    """option qualifies however the missing voters vote, and no rival can reach it."""
    if vote.spec.rule.kind == votes_pb2.RULE_KIND_UNANIMOUS:
        return False  # needs everyone; decided when all have cast
    # Worst case for option: every missing voter votes for one rival, raising the cast
    # weight (a rival gaining weight never lowers option's own).
    rule = vote.spec.rule
    weight = count.weight[option]
    worst_basis = (
        count.electorate_weight if rule.of_electorate else count.cast_weight + count.missing_weight
    )
    kind = rule.kind
    if kind == votes_pb2.RULE_KIND_MAJORITY:
        holds = 2 * weight > worst_basis
    elif kind == votes_pb2.RULE_KIND_FRACTION:
        holds = weight >= Fraction(rule.fraction.numerator, rule.fraction.denominator) * worst_basis
    else:  # K_OF_N and WEIGHTED_THRESHOLD do not depend on the others' ballots
        holds = _qualifies(vote, count, option, extra=Fraction(0), extra_voters=0)
    if not holds:
        return False
    mine = _strength(vote, count, option)
    for rival in vote.spec.options:
        if rival == option:
            continue
        if (
            _qualifies(
                vote, count, rival, extra=count.missing_weight, extra_voters=count.missing_voters
            )
            and _best_strength(vote, count, rival) >= mine
        ):
            return False
    return True


def _surely_rejected(vote: votes_pb2.Vote, count: Count) -> bool:
    """No option can qualify whatever the missing voters do, and no tie can form."""
    for option in vote.spec.options:
        if _qualifies(
            vote, count, option, extra=count.missing_weight, extra_voters=count.missing_voters
        ):
            return False
    if vote.spec.rule.kind == votes_pb2.RULE_KIND_UNANIMOUS:
        return True
    leaders = _strongest(vote, count, list(vote.spec.options))
    if len(leaders) != 1:
        return False
    lead = _strength(vote, count, leaders[0])
    return all(_best_strength(vote, count, o) < lead for o in vote.spec.options if o != leaders[0])


def _best_strength(vote: votes_pb2.Vote, count: Count, option: str) -> Fraction:
    if vote.spec.rule.kind == votes_pb2.RULE_KIND_K_OF_N:
        return Fraction(count.voters[option] + count.missing_voters)
    return count.weight[option] + count.missing_weight


# --- words -----------------------------------------------------------------------------


def describe_rule(vote: votes_pb2.Vote) -> str:
    rule = vote.spec.rule
    of = "the electorate's weight" if rule.of_electorate else "the weight cast"
    kind = rule.kind
    if kind == votes_pb2.RULE_KIND_MAJORITY:
        return f"more than half of {of}"
    if kind == votes_pb2.RULE_KIND_FRACTION:
        return f"at least {rule.fraction.numerator}/{rule.fraction.denominator} of {of}"
    if kind == votes_pb2.RULE_KIND_K_OF_N:
        return f"at least {rule.k} of {len(vote.voters)} voters"
    if kind == votes_pb2.RULE_KIND_WEIGHTED_THRESHOLD:
        return f"a weight of at least {_num(decimal(rule.threshold_weight))}"
    return "every voter casts a ballot and all who do not abstain agree"


def _support(vote: votes_pb2.Vote, count: Count, option: str) -> str:
    voters = count.voters[option]
    weight = count.weight[option]
    share = (
        f", {float(weight / count.cast_weight):.0%} of the weight cast" if count.cast_weight else ""
    )
    return f"{voters} voter{'s' if voters != 1 else ''}, weight {_num(weight)}{share}"


def _participation(vote: votes_pb2.Vote, count: Count) -> str:
    quorum = vote.spec.quorum
    parts = []
    if quorum.min_voters:
        parts.append(f"{quorum.min_voters} voters")
    if quorum.min_weight:
        parts.append(f"weight {_num(decimal(quorum.min_weight))}")
    needed = f" (quorum: {' and '.join(parts)})" if parts else " (no quorum set)"
    return (
        f"Participation: {count.participated} of {count.electorate_size} voters, weight "
        f"{_num(count.participated_weight)} of {_num(count.electorate_weight)}, "
        f"{count.abstained} abstaining{needed}."
    )


def decimal(value: float) -> Fraction:
    """The number a float was written as: its shortest round-tripping decimal, exactly."""
    return Fraction(repr(value)) if not value.is_integer() else Fraction(int(value))


def _q(option: str) -> str:
    return repr(option) if len(option) <= 60 else repr(option[:57] + "...")


def _num(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.4g}"
