"""The votes checker: from a votes workload's history (tests/faults/workloads/votes.py),
every problem with its votes' decisions (none: valid).

For every vote:
- exactly one decision: at least one seen (the end-of-round reads wait for it), and every
  decision seen (by Get through every replica, by every watcher, in a Cast's answer) the
  same one, outcome, revision and tally alike;
- the ballots stored (read by the Gets once decided; every such read the same) count
  every acknowledged ballot, at the revision it was acknowledged at and with its choice;
  none of a refused Cast; an indeterminate one at most once (a ballot is stored per voter);
  none of anyone who never cast, or of a choice the voter did not make;
- no ballot accepted after the decision: none stored, nor acknowledged, at a revision
  after the decision's;
- the decision's tally is the tally of the stored ballots, and its outcome is the rule
  applied to them (recomputed here: MAJORITY, of the electorate or of the ballots cast,
  ties TIED); decided by CERTAINTY only when no way the missing voters could cast (or
  not) changes the outcome (checked by trying every way), by ALL_CAST only when everyone
  had;
- every watcher that saw the decision saw the counted ballots, each once, and no other.
A watcher that never saw the decision (it waited 30 s past the deadline) is a problem too.

Error handling: a history without a vote's proposal reports that vote, never raises.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

from tests.linearizability import INDETERMINATE, Operation

Ballot = tuple[str, str, int]  # voter, choice, revision


@dataclass
class VotesVerdict:
    problems: list[str] = field(default_factory=list)
    votes: int = 0
    # decisions by (outcome, decided_by), e.g. "APPROVED by CERTAINTY"
    outcomes: Counter[str] = field(default_factory=Counter)
    casts: Counter[str] = field(default_factory=Counter)  # ok, refused, indeterminate
    refusals: Counter[str] = field(default_factory=Counter)  # by reason
    observations: int = 0  # decisions seen (Gets, watchers, Cast answers)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        return (
            f"votes={self.votes} decisions seen={self.observations} "
            f"outcomes={dict(self.outcomes)} casts={dict(self.casts)} "
            f"refused={dict(self.refusals)}"
        )


def final(
    options: Sequence[str], counts: dict[str, int], electorate: int, of_electorate: bool
) -> tuple[str, str]:
    """(outcome, option) of a MAJORITY vote with these ballots (weight 1, no abstention,
    no quorum, no veto, ties TIED)."""
    basis = electorate if of_electorate else sum(counts.values())
    qualified = [o for o in options if counts.get(o, 0) > 0 and 2 * counts.get(o, 0) > basis]
    top = _strongest(qualified, counts)
    if len(top) == 1:
        return "APPROVED", top[0]
    tied = top or _strongest(list(options), counts)
    return ("TIED", "") if len(tied) > 1 else ("REJECTED", "")


def _strongest(options: Sequence[str], counts: dict[str, int]) -> list[str]:
    most = max((counts.get(o, 0) for o in options), default=0)
    return [o for o in options if counts.get(o, 0) == most] if most > 0 else []


def certain(
    options: Sequence[str], counts: dict[str, int], electorate: int, of_electorate: bool
) -> bool:
    """Whether every way the missing voters could cast (or stay away) gives one outcome."""
    missing = electorate - sum(counts.values())
    outcome = final(options, counts, electorate, of_electorate)
    # How many of the missing choose each option; the rest stay away.
    for split in itertools.product(range(missing + 1), repeat=len(options)):
        if sum(split) > missing:
            continue
        more = {o: counts.get(o, 0) + n for o, n in zip(options, split, strict=True)}
        if final(options, more, electorate, of_electorate) != outcome:
            return False
    return True


def check_votes(history: Iterable[Operation]) -> VotesVerdict:
    by_vote: dict[Hashable, list[Operation]] = defaultdict(list)
    for op in history:
        by_vote[op.partition].append(op)
    verdict = VotesVerdict()
    for vote_id, ops in sorted(by_vote.items(), key=lambda kv: str(kv[0])):
        verdict.votes += 1
        _check_vote(str(vote_id), ops, verdict)
    return verdict


def _check_vote(vote_id: str, ops: list[Operation], verdict: VotesVerdict) -> None:
    problems = verdict.problems
    name = f"vote {vote_id}"
    proposals = [op for op in ops if op.input[0] == "propose"]
    if not proposals:
        problems.append(f"{name}: no proposal in the history")
        return
    _, _kind, voters, options, of_electorate, _period = proposals[0].input
    casts = [op for op in ops if op.input[0] == "cast"]
    gets = [op for op in ops if op.input[0] == "get" and op.output is not INDETERMINATE]
    watches = [op for op in ops if op.input[0] == "watch" and op.output is not INDETERMINATE]

    # One decision, the same wherever it was seen.
    seen: list[tuple[str, tuple[Hashable, ...]]] = []
    for op in gets:
        if op.output[0] == "decided":
            seen.append((f"get via {op.input[1]}", op.output[1]))
    for op in watches:
        if op.output[1] is None:
            problems.append(f"{name}: watcher {op.input[1]} never saw the decision")
        else:
            seen.append((f"watcher {op.input[1]}", op.output[1]))
    for op in casts:
        if op.output is not INDETERMINATE and op.output[0] == "ok" and op.output[2] is not None:
            seen.append((f"cast by {op.input[1]}", op.output[2]))
    verdict.observations += len(seen)
    if not seen:
        problems.append(f"{name}: no decision seen")
        return
    decision = seen[0][1]
    for where, other in seen[1:]:
        if other != decision:
            problems.append(f"{name}: {seen[0][0]} saw {decision}, {where} saw {other}")
    outcome, option, decided_by, revision, _last, (tally, participated) = decision
    verdict.outcomes[f"{outcome} by {decided_by}"] += 1

    # The ballots stored, as every read after the decision gave them.
    stored_reads = [op.output[2] for op in gets if op.output[0] == "decided"]
    stored: dict[str, Ballot] = {b[0]: b for b in stored_reads[0]} if stored_reads else {}
    for ballots in stored_reads[1:]:
        if {b[0]: b for b in ballots} != stored:
            problems.append(f"{name}: the ballots read after the decision differ between reads")
            break
    if not stored_reads:
        problems.append(f"{name}: never read once decided")

    cast_by: dict[str, list[Operation]] = defaultdict(list)
    for op in casts:
        cast_by[op.input[1]].append(op)
        status = "indeterminate" if op.output is INDETERMINATE else op.output[0]
        verdict.casts[status] += 1
        if status == "refused":
            verdict.refusals[op.output[1]] += 1
    for voter, mine in cast_by.items():
        ballot = stored.get(voter)
        for op in mine:
            choice = op.input[2]
            if op.output is INDETERMINATE:
                continue
            if op.output[0] == "ok":
                acked = op.output[1]
                if acked > revision:
                    problems.append(
                        f"{name}: {voter}'s ballot acknowledged at revision {acked}, after "
                        f"the decision (revision {revision})"
                    )
                if stored_reads and (ballot is None or ballot[1:] != (choice, acked)):
                    problems.append(
                        f"{name}: {voter}'s acknowledged ballot ({choice!r} at revision "
                        f"{acked}) is stored as {ballot}"
                    )
            elif ballot is not None and not any(
                o.output is INDETERMINATE or o.output[0] == "ok" for o in mine
            ):
                problems.append(
                    f"{name}: {voter}'s ballot was refused ({op.output[1]}) yet stored: {ballot}"
                )
    for voter, ballot in stored.items():
        if voter not in voters:
            problems.append(f"{name}: a ballot of {voter}, who is no voter: {ballot}")
        elif voter not in cast_by:
            problems.append(f"{name}: a ballot of {voter}, who never cast: {ballot}")
        elif all(op.input[2] != ballot[1] for op in cast_by[voter]):
            problems.append(f"{name}: {voter}'s stored ballot {ballot} is no choice it made")
        if ballot[2] > revision:
            problems.append(
                f"{name}: {voter}'s ballot stored at revision {ballot[2]}, after the decision "
                f"(revision {revision})"
            )

    # The tally and the outcome: the rule applied to the ballots counted.
    counted = {v: b for v, b in stored.items() if b[2] <= revision}
    counts = Counter(b[1] for b in counted.values())
    expected_tally = tuple((o, counts.get(o, 0)) for o in options)
    if stored_reads and (tally, participated) != (expected_tally, len(counted)):
        problems.append(
            f"{name}: tally {tally} ({participated} participated) but the ballots stored "
            f"before the decision make {expected_tally} ({len(counted)})"
        )
    expected = final(options, dict(counts), len(voters), of_electorate)
    if stored_reads and (outcome, option) != expected:
        problems.append(f"{name}: decided {outcome} {option!r}; the rule gives {expected}")
    if decided_by == "CERTAINTY" and not certain(options, dict(counts), len(voters), of_electorate):
        problems.append(f"{name}: decided by certainty, but missing voters could change {expected}")
    if decided_by == "ALL_CAST" and len(counted) != len(voters):
        problems.append(f"{name}: decided as all cast with {len(counted)} of {len(voters)}")

    # Watchers saw exactly the counted ballots, each once.
    for op in watches:
        ballots, watched = op.output
        if watched is None:
            continue
        voters_seen = [b[0] for b in ballots]
        twice = sorted(v for v, n in Counter(voters_seen).items() if n > 1)
        if twice:
            problems.append(f"{name}: watcher {op.input[1]} saw ballots twice: {twice}")
        if set(ballots) != set(counted.values()) and stored_reads:
            problems.append(
                f"{name}: watcher {op.input[1]} saw {sorted(set(ballots))}, the decision "
                f"counted {sorted(counted.values())}"
            )
