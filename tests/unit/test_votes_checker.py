"""The votes checker (tests/faults/workloads/votes_check.py) on synthetic histories: a
valid one passes, and each way a server could get a vote wrong is flagged; the rule and
certainty it recomputes on their own; and a votes history survives save and load."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.recorder import Recorder, load
from tests.faults.workloads.votes_check import certain, check_votes, final
from tests.linearizability import INDETERMINATE, Operation

VOTERS = ("a", "b", "c", "d", "e")
TALLY = ((("yes", 3), ("no", 0)), 3)
DECISION = ("APPROVED", "yes", "CERTAINTY", 12, 12, TALLY)
BALLOTS = (("a", "yes", 10), ("b", "yes", 11), ("c", "yes", 12))

History = list[Operation]


def valid(decision: tuple[object, ...] = DECISION, stored: tuple[object, ...] = BALLOTS) -> History:
    """Five voters, MAJORITY of the electorate: a, b, c say yes (decided by c's ballot),
    d is refused after it, e's hasty ballot is indeterminate (not stored); decided and
    stored as given."""

    def op(input: tuple[object, ...], output: object, t: float) -> Operation:
        return Operation(0, input, output, t, t + 0.1, "v")

    return [
        op(("propose", "early", VOTERS, ("yes", "no"), True, 5000), ("ok", 9), 0.0),
        op(("cast", "a", "yes"), ("ok", 10, None), 1.0),
        op(("cast", "b", "yes"), ("ok", 11, None), 1.2),
        op(("cast", "c", "yes"), ("ok", 12, decision), 1.4),
        op(("cast", "d", "no"), ("refused", "VOTE_CLOSED"), 1.6),
        Operation(0, ("cast", "e", "no"), INDETERMINATE, 1.7, None, "v"),
        op(("get", "reader-0"), ("open", None, BALLOTS[:2]), 1.3),
        op(("get", "replica-0"), ("decided", decision, stored), 2.0),
        op(("get", "replica-1"), ("decided", decision, stored), 2.1),
        op(("watch", 0), (stored, decision), 0.5),
        op(("watch", 1), (stored[1:] + stored[:1], decision), 0.5),
    ]


def replace(history: History, index: int, output: object) -> History:
    old = history[index]
    new = Operation(old.client, old.input, output, old.call, old.ret, "v")
    return [*history[:index], new, *history[index + 1 :]]


def test_a_valid_history_passes_with_or_without_the_indeterminate_ballot() -> None:
    verdict = check_votes(valid())
    assert verdict.ok, verdict.problems
    assert verdict.casts == {"ok": 3, "refused": 1, "indeterminate": 1}
    assert verdict.outcomes == {"APPROVED by CERTAINTY": 1}
    # e's ballot stored with c's (one group commit), and counted once
    tally = ((("yes", 3), ("no", 1)), 4)
    verdict = check_votes(valid((*DECISION[:5], tally), (*BALLOTS, ("e", "no", 12))))
    assert verdict.ok, verdict.problems


TWICE = ((("yes", 4), ("no", 0)), 4)
BROKEN: dict[str, tuple[Callable[[], History], str]] = {
    "replicas disagree on the decision": (
        lambda: replace(valid(), 8, ("decided", (*DECISION[:3], 13, 12, TALLY), BALLOTS)),
        "replica-1 saw",
    ),
    "a refused ballot is stored": (
        lambda: valid(stored=(*BALLOTS, ("d", "no", 12))),
        "refused (VOTE_CLOSED) yet stored",
    ),
    "an acknowledged ballot is missing": (
        lambda: valid(stored=BALLOTS[1:]),
        "acknowledged ballot ('yes' at revision 10) is stored as None",
    ),
    "a ballot acknowledged after the decision": (
        lambda: replace(valid(), 4, ("ok", 14, None)),
        "acknowledged at revision 14, after the decision",
    ),
    "a ballot stored after the decision": (
        lambda: valid(stored=(*BALLOTS, ("e", "no", 13))),
        "stored at revision 13, after the decision",
    ),
    "the tally counts a ballot twice": (
        lambda: valid((*DECISION[:5], TWICE)),
        "tally",
    ),
    "the outcome is not the rule's": (
        lambda: valid(("REJECTED", "", *DECISION[2:])),
        "the rule gives ('APPROVED', 'yes')",
    ),
    "a watcher sees a ballot twice": (
        lambda: replace(valid(), 9, ((*BALLOTS, BALLOTS[0]), DECISION)),
        "saw ballots twice",
    ),
    "a watcher misses a counted ballot": (
        lambda: replace(valid(), 9, (BALLOTS[:2], DECISION)),
        "the decision counted",
    ),
    "a ballot of someone who is no voter": (
        lambda: valid(stored=(*BALLOTS, ("x", "no", 11))),
        "a ballot of x, who is no voter",
    ),
    "decided as all cast with voters missing": (
        lambda: valid(("APPROVED", "yes", "ALL_CAST", *DECISION[3:])),
        "decided as all cast with 3 of 5",
    ),
    "a watcher never sees the decision": (
        lambda: replace(valid(), 10, (BALLOTS, None)),
        "never saw the decision",
    ),
    "no decision at all": (
        lambda: [o for o in valid(None) if o.input[0] in ("propose", "cast")],  # type: ignore[arg-type]
        "no decision seen",
    ),
}


@pytest.mark.parametrize("name", BROKEN)
def test_each_broken_history_is_flagged(name: str) -> None:
    make, expected = BROKEN[name]
    verdict = check_votes(make())
    assert not verdict.ok
    assert any(expected in p for p in verdict.problems), verdict.problems


def test_decided_early_only_when_certain() -> None:
    """Two of five voters chose "a" of three options (MAJORITY of the ballots cast):
    "a" leads now, but three missing voters could still outvote it."""
    assert final(("a", "b", "c"), {"a": 2}, 5, False) == ("APPROVED", "a")
    assert not certain(("a", "b", "c"), {"a": 2}, 5, False)
    assert certain(("yes", "no"), {"yes": 3}, 5, True)
    assert final(("a", "b"), {"a": 2, "b": 2}, 5, False) == ("TIED", "")
    assert final(("a", "b"), {"a": 2, "b": 1}, 5, True) == ("REJECTED", "")
    decision = ("APPROVED", "a", "CERTAINTY", 12, 11, (((("a", 2), ("b", 0), ("c", 0)), 2)))
    history = [
        Operation(
            0,
            ("propose", "deadline", VOTERS, ("a", "b", "c"), False, 5000),
            ("ok", 9),
            0.0,
            0.1,
            "v",
        ),
        Operation(0, ("cast", "a", "a"), ("ok", 10, None), 1.0, 1.1, "v"),
        Operation(0, ("cast", "b", "a"), ("ok", 11, decision), 1.2, 1.3, "v"),
        Operation(
            0,
            ("get", "replica-0"),
            ("decided", decision, (("a", "a", 10), ("b", "a", 11))),
            2.0,
            2.1,
            "v",
        ),
    ]
    problems = check_votes(history).problems
    assert any("decided by certainty, but missing voters" in p for p in problems), problems


def test_a_votes_history_survives_save_and_load(tmp_path: Path) -> None:
    recorder = Recorder(operations=valid())
    recorder.save(tmp_path / "history.jsonl")
    loaded = load(tmp_path / "history.jsonl")
    assert loaded == valid()
    assert check_votes(loaded).ok
