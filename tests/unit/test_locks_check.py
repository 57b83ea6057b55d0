"""The fenced-counter checker (tests/faults/workloads/locks_check.py) on hand-made
histories: a valid one with indeterminate writes passes; each kind of bug is named."""

from __future__ import annotations

from tests.faults.workloads.locks_check import StaleAttempt, Version, check
from tests.linearizability import INDETERMINATE, Operation


def incr(op: str, token: int, revision: int | None, at: float) -> Operation:
    if revision is None:
        return Operation(0, ("incr", op, "a", token), INDETERMINATE, at, None, "counter")
    return Operation(0, ("incr", op, "a", token), revision, at, at + 0.5, "counter")


OPS = [incr("x", 10, 11, 1), incr("y", 12, None, 2), incr("z", 14, 15, 3)]


def test_a_valid_run_with_an_indeterminate_write_that_took_effect_or_not() -> None:
    took = [Version(11, 1, 10, "x"), Version(13, 2, 12, "y"), Version(15, 3, 14, "z")]
    assert check(OPS, [], took, {"x", "y", "z"}).ok
    lost = [Version(11, 1, 10, "x"), Version(15, 2, 14, "z")]
    assert check(OPS, [], lost, {"x", "z"}).ok


def test_each_bug_is_named() -> None:
    def problems(history: list[Version], members: set[str], stale: list[StaleAttempt]) -> str:
        verdict = check(OPS, stale, history, members)
        assert not verdict.ok
        return " ".join(verdict.problems)

    x, z = Version(11, 1, 10, "x"), Version(15, 2, 14, "z")
    assert "lost increment" in problems([x, Version(15, 1, 14, "z")], {"x", "z"}, [])
    assert "stale fence accepted" in problems([x, Version(15, 2, 9, "z")], {"x", "z"}, [])
    assert "applied 2 times" in problems([x, Version(13, 2, 10, "x"), z], {"x", "z"}, [])
    assert "refused or never made" in problems([x, Version(13, 2, 11, "w"), z], {"x", "z"}, [])
    assert "missing from the counter's history" in problems([x], {"x", "z"}, [])
    assert "told revision 15, applied at 16" in problems(
        [x, Version(16, 2, 14, "z")], {"x", "z"}, []
    )
    assert "adds missing from the set" in problems([x, z], {"z"}, [])
    assert "refused or never made" in problems([x, z], {"x", "z", "w"}, [])
    stale = [StaleAttempt("w", 3, True, "")]
    assert "a holder whose lease lapsed wrote" in problems([x, z], {"x", "z"}, stale)
