"""The soak report (tests/faults/soak.py) from a synthetic run: the figures issue 16 asks
for (operations, ok/failed/indeterminate, nemesis events, checker time and verdict) and,
for a rejected KV history, the smallest failing window's table."""

from __future__ import annotations

from tests.faults.nemesis import Events
from tests.faults.recorder import Recorder
from tests.faults.soak import Outcome, Plan, markdown, summarize
from tests.faults.window import failing_window
from tests.linearizability import INDETERMINATE, Operation, Register


def _run() -> tuple[Plan, Outcome, Events]:
    ops = [
        Operation(0, ("write", 1), None, 1.0, 1.5, "k"),
        Operation(1, ("write", 2), INDETERMINATE, 2.0, None, "k"),
        Operation(2, ("read",), 0, 3.0, 3.5, "k"),  # stale: 1 was written before
    ]
    recorder = Recorder(operations=ops)
    recorder.counts.update(ok=2, failed=3, indeterminate=4, DeadlineExceededError=4)
    events = Events()
    events.note(1.2, "kill-replica", "start", "replica-0")
    events.note(2.2, "kill-replica", "stop", "replica-0")
    events.note(2.4, "kill-etcd", "skip", "")
    outcome = Outcome(recorder, False, "linearizability", 0.0123)
    outcome.window = failing_window(ops, Register(0))
    return Plan("kv", ("kill-replica", "kill-etcd"), 10.0, 7), outcome, events


def test_the_report_holds_the_figures_and_the_window() -> None:
    plan, outcome, events = _run()
    summary = summarize(plan, outcome, events, 0.0)
    summary["cluster"] = "/tmp/logs"
    assert (summary["operations"], summary["ok"], summary["failed"]) == (9, 2, 3)
    assert summary["indeterminate"] == 4
    assert summary["nemesis_events"] == {"start": 1, "stop": 1, "skip": 1}
    assert summary["verdict"] == "INVALID" and summary["checker_seconds"] == 0.0123
    assert summary["window"]["partition"] == "'k'" and summary["window"]["operations"] == 3
    text = markdown(summary, outcome, events, 0.0)
    assert "| 9 | 2 | 3 | 4 | 1 / 1 / 1 | linearizability | 12.3 ms | **INVALID** |" in text
    assert "| 1.20 | kill-replica | start | replica-0 |" in text
    assert "## Smallest failing window" in text
    assert "| 2 | 3.000 | 3.500 | `('read',)` | `0` | stuck |" in text
    assert "/tmp/logs" in text


def test_a_void_run_says_why() -> None:
    plan, outcome, events = _run()
    outcome.ok, outcome.window, outcome.void = None, None, "AssertionError('no progress')"
    summary = summarize(plan, outcome, events, 0.0)
    assert summary["verdict"] == "void: AssertionError('no progress')"
