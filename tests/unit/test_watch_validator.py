"""The watch workload's validator (tests/faults/workloads/watches.py) on histories made by
hand: a sound one passes; a gap, a duplicate, a phantom, a wrong revision, an event out of
order, and watchers disagreeing on an indeterminate write are each reported."""

from __future__ import annotations

from tests.faults.workloads.watches import Watcher, WatchRun, validate

ACKED = {("w/0", b"0.0"): 10, ("w/1", b"1.0"): 11, ("w/0", b"0.1"): 13, ("w/end", b"end"): 14}
MAYBE = {("w/1", b"1.1"), ("w/2", b"2.0")}
SOUND = [("w/0", b"0.0", 10), ("w/1", b"1.0", 11), ("w/1", b"1.1", 12), ("w/0", b"0.1", 13),
         ("w/end", b"end", 14)]  # fmt: skip


def _run(*seen: list[tuple[str, bytes, int]]) -> WatchRun:
    watchers = [Watcher(i, list(events), start_revision=10) for i, events in enumerate(seen)]
    return WatchRun(watchers, ACKED, MAYBE, end_revision=14, caught_up=True)


def _without(i: int) -> list[tuple[str, bytes, int]]:
    return SOUND[:i] + SOUND[i + 1 :]


def test_sound_watchers_pass() -> None:
    assert validate(_run(SOUND, SOUND)) == []


def test_an_indeterminate_write_seen_by_none_is_fine() -> None:
    assert validate(_run(_without(2), _without(2))) == []


def test_a_gap_is_reported() -> None:
    problems = validate(_run(SOUND, _without(1)))
    assert problems == ["watcher 1: missed ('w/1', b'1.0'), acknowledged at revision 11"]


def test_a_duplicate_is_reported() -> None:
    problems = validate(_run(SOUND, [*SOUND[:2], SOUND[1], *SOUND[2:]]))
    assert any("seen twice" in p for p in problems), problems


def test_a_phantom_and_a_wrong_revision_are_reported() -> None:
    phantom = [*SOUND[:1], ("w/3", b"x", 10), *SOUND[1:]]
    assert any("no write of the run" in p for p in validate(_run(phantom)))
    moved = [("w/0", b"0.0", 9), *SOUND[1:]]
    assert any("acknowledged at 10" in p for p in validate(_run(moved)))


def test_an_event_out_of_order_is_reported() -> None:
    swapped = [SOUND[1], SOUND[0], *SOUND[2:]]
    assert any("after 11" in p for p in validate(_run(swapped)))


def test_writes_sharing_a_revision_may_come_in_either_order() -> None:
    acked = {**ACKED, ("w/2", b"2.1"): 11}  # group commit: one etcd Txn, one revision
    shared = [SOUND[0], ("w/2", b"2.1", 11), *SOUND[1:]]
    run = _run(shared, shared)
    run.acknowledged = acked
    assert validate(run) == []


def test_watchers_must_agree_on_indeterminate_writes() -> None:
    problems = validate(_run(SOUND, _without(2)))
    assert len(problems) == 1 and "disagree" in problems[0], problems


def test_a_watcher_that_never_caught_up_is_reported() -> None:
    run = _run(SOUND[:3])
    run.caught_up = False
    assert any("never reached the end marker" in p for p in validate(run))
