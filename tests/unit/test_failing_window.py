"""The soak's smallest failing window (tests/faults/window.py) on synthetic histories: a
long, mostly sound history over a few keys with one stale read in the middle must be
narrowed to the prefix ending at that read, and to the few operations of its key around
it; a read that overlapped a write called after it must not be taken for the failure."""

from __future__ import annotations

from tests.faults.window import failing_window, prefix_at, table
from tests.linearizability import INDETERMINATE, Operation, Register


def _sound(keys: list[str], rounds: int, start: float) -> list[Operation]:
    """Per round and key: a write of the round's value, then a read of it (sequential)."""
    ops: list[Operation] = []
    t = start
    for n in range(1, rounds + 1):
        for i, key in enumerate(keys):
            ops.append(Operation(i, ("write", n), None, t, t + 0.4, key))
            ops.append(Operation(i + 10, ("read",), n, t + 0.5, t + 0.9, key))
            t += 1.0
    return ops


def _history() -> tuple[list[Operation], Operation]:
    """30 rounds on three keys, then a stale read of b (it answers the value before the
    last write acknowledged), then 30 more rounds."""
    before = _sound(["a", "b", "c"], 30, 0.0)
    stale = Operation(99, ("read",), 29, 200.0, 200.5, "b")
    after = _sound(["a", "b", "c"], 30, 201.0)
    return [*before, stale, *after], stale


def test_a_stale_read_is_narrowed_to_its_prefix_and_key() -> None:
    history, stale = _history()
    window = failing_window(history, Register(0))
    assert window is not None
    # The shortest rejected prefix is cut at the stale read's return.
    assert window.prefix == 30 * 3 * 2 + 1
    assert window.cut == stale.ret
    assert window.partition == "b"
    assert stale in window.stuck
    assert stale in window.operations
    # The write it missed (b := 30, the last before it) is in the window too.
    assert Operation(1, ("write", 30), None, 88.0, 88.4, "b") in window.operations
    assert all(op.partition == "b" for op in window.operations)
    assert len(window.operations) <= 20  # a window, not the key's 60 operations
    assert window.checks < 15  # binary search over 722 call and return times
    assert "stuck" in table(window, 0.0)


def test_a_read_overlapping_a_later_write_is_not_the_failure() -> None:
    """The read is called before the write it returns: in a prefix cut between their
    calls it is still running (indeterminate), so only the real stale read fails."""
    overlapping = [
        Operation(0, ("read",), 7, 0.0, 3.0, "a"),
        Operation(1, ("write", 7), None, 1.0, 2.0, "a"),
    ]
    history, stale = _history()
    window = failing_window([*overlapping, *history], Register(0))
    assert window is not None
    assert window.partition == "b" and window.cut == stale.ret
    cut = prefix_at(overlapping, 0.5)
    assert cut == [Operation(0, ("read",), INDETERMINATE, 0.0, None, "a")]


def test_a_linearizable_history_has_no_window() -> None:
    assert failing_window(_sound(["a", "b"], 20, 0.0), Register(0)) is None
