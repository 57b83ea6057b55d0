"""The soak command's votes and leases workloads (tests/faults/soak.py), without a
cluster: the command line takes them, and a votes run's report carries the votes
checker's verdict and figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults import __main__ as command
from tests.faults.nemesis import Events
from tests.faults.recorder import Recorder
from tests.faults.soak import WORKLOADS, Outcome, Plan, markdown, summarize
from tests.faults.workloads.votes_check import check_votes
from tests.unit.test_votes_checker import valid


@pytest.mark.parametrize("workload", ["votes", "leases"])
def test_the_command_runs_the_new_workloads(
    workload: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plans: list[Plan] = []

    def soak(plan: Plan, out: Path) -> bool:
        plans.append(plan)
        (out / "report.md").write_text("report\n")
        return True

    monkeypatch.setattr(command, "soak", soak)
    argv = ["soak", "--workload", workload, "--nemesis", "clock-skew", "--duration", "5"]
    assert command.main([*argv, "--seed", "3", "--out", str(tmp_path)]) == 0
    assert plans == [Plan(workload, ("clock-skew",), 5.0, 3)]
    assert workload in WORKLOADS


def test_a_votes_report_holds_the_verdict_and_the_figures() -> None:
    recorder = Recorder(operations=valid())
    recorder.counts.update(ok=9, failed=1, indeterminate=1, VoteClosedError=1)
    verdict = check_votes(recorder.operations)
    outcome = Outcome(recorder, verdict.ok, "votes checker", 0.0004)
    outcome.problems = [verdict.summary(), *verdict.problems]
    plan = Plan("votes", ("kill-replica",), 30.0, 5)
    summary = summarize(plan, outcome, Events(), 0.0)
    summary["cluster"] = None
    assert summary["verdict"] == "valid" and summary["checker"] == "votes checker"
    assert (summary["ok"], summary["failed"], summary["indeterminate"]) == (9, 1, 1)
    text = markdown(summary, outcome, Events(), 0.0)
    assert "| votes checker | 0.4 ms | **valid** |" in text
    assert "outcomes={'APPROVED by CERTAINTY': 1}" in text
