"""The benchmark runner's report (benchmarks/report.py, plots.py): from a small synthetic
results.json it writes report.md with the median of the per-round ratios and their
min-max, the load averages and failed rounds, and the PNG plots it links to. Not timed:
nothing here measures anything."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.__main__ import REPO, run_suite
from benchmarks.common import Result, measured, ratios_vs_peer
from benchmarks.suites import (
    SUITES,
    Suite,
    lock_queue_readout,
    locks_readout,
    sessions_readout,
    votes_readout,
)

PNG = b"\x89PNG\r\n\x1a\n"


def cas_round(round_no: int, scale: float) -> dict[str, Any]:
    """One round of a CAS suite: two Accord modes and a ceiling vs one peer, at 1 and 8."""
    results: list[Result] = []
    for clients in (1, 8):
        for name, speed in (
            ("etcd-direct", 1.0),
            ("accord-unary", 0.5),
            ("accord-batched", 2.0 * scale),
            ("etcd-nested-txn ceiling", 10.0),
        ):
            ops = round(100 * clients * speed)
            latencies = [(i + 1) / (ops * 10) for i in range(ops)]
            r = measured(name, clients, 1.0, latencies, "CAS")
            r.cpu_us_per_op = {"bench client": 100, "coordinator": 300, "etcd": 200}
            results.append(r)
    ratios = ratios_vs_peer(results, "etcd-direct", targets={8: 2.0})
    return {
        "round": round_no,
        "ok": True,
        "error": "",
        "seconds": 3.0,
        "load_before": [1.5, 1.0, 0.5],
        "load_after": [2.5, 1.2, 0.6],
        "title": "CAS vs etcd",
        "results": [asdict(r) for r in results],
        "ratios": [asdict(r) for r in ratios],
        "raw": {},
    }


def synthetic() -> dict[str, Any]:
    failed = {
        "round": 3,
        "ok": False,
        "error": "exit status 1: etcd did not start",
        "seconds": 0.5,
        "load_before": [3.0, 1.0, 0.5],
        "load_after": [3.0, 1.0, 0.5],
    }
    return {
        "started": "2026-12-01T20:00:00+00:00",
        "finished": "2026-12-01T20:01:00+00:00",
        "args": {"quick": True, "rounds": 4, "only": ["kv_cas"]},
        "machine": {
            "cpus": 2,
            "memory_gib": 24.0,
            "platform": "Linux",
            "python": "3.11.7",
            "commit": "abc1234",
            "modified_files": [],
        },
        # accord-batched / etcd-direct per round: 1.0, 3.0, (failed), 0.5 -> median 1.0
        "suites": {
            "kv_cas": {"rounds": [cas_round(1, 0.5), cas_round(2, 1.5), failed, cas_round(4, 0.25)]}
        },
    }


def test_report_has_the_median_of_per_round_ratios_and_the_plots(tmp_path: Path) -> None:
    data = json.loads(json.dumps(synthetic()))  # as read back from results.json
    path = report.write(data, tmp_path)
    text = path.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| CAS | accord-batched |")]
    ratio_row = next(r for r in rows if "etcd-direct" in r and "| 8 |" in r)
    assert "**1.00**" in ratio_row
    assert "0.50-3.00" in ratio_row
    assert ">= 2 (missed)" in ratio_row
    assert ratio_row.rstrip().endswith("| 3 |")  # the failed round is not counted
    unary = next(r for r in text.splitlines() if r.startswith("| CAS | accord-unary | etcd"))
    assert "**0.50**" in unary
    targets = text.split("## Targets", 1)[1].split("\n## ", 1)[0]
    assert "| kv_cas | CAS | accord-batched / etcd-direct | ops/s | 8 | **1.00** |" in targets
    assert "FAILED: exit status 1: etcd did not start" in text
    assert "1.5 / 1 / 0.5" in text and "2.5 / 1.2 / 0.6" in text  # load before / after
    for kind in ("throughput", "latency", "cpu"):
        png = tmp_path / f"kv_cas-{kind}.png"
        assert png.read_bytes()[:8] == PNG, kind
        assert f"](kv_cas-{kind}.png)" in text


def test_a_suite_without_a_good_round_gets_its_failures_and_no_plots(tmp_path: Path) -> None:
    data = synthetic()
    data["suites"]["kv_cas"]["rounds"] = [data["suites"]["kv_cas"]["rounds"][2]]
    text = report.write(data, tmp_path).read_text()
    assert "etcd did not start" in text
    assert not list(tmp_path.glob("*.png"))


def test_several_modes_are_each_compared_with_one_peer() -> None:
    results = [Result.from_dict(r) for r in cas_round(1, 1.0)["results"]]
    ratios = {(r.mode, r.clients): r.value for r in ratios_vs_peer(results, "etcd-direct")}
    assert ratios == {
        (mode, clients): value
        for clients in (1, 8)
        for mode, value in (
            ("accord-unary", 0.5),
            ("accord-batched", 2.0),
            ("etcd-nested-txn ceiling", 10.0),
        )
    }


def test_a_suite_that_fails_is_a_failed_round_not_a_crash(tmp_path: Path) -> None:
    found = run_suite(Suite("no_such_suite", (), ()), True, tmp_path, 1)
    assert not found["ok"]
    assert "exit status 1" in found["error"]
    assert "No module named benchmarks.no_such_suite" in found["error"]


def row(name: str, clients: int, ops_per_s: float) -> dict[str, Any]:
    return asdict(Result(name, clients, 100, 1.0, ops_per_s, 1.0, 2.0))


def test_the_suites_json_is_read_as_modes_vs_their_peer() -> None:
    """The readouts of suites whose JSON has its own shape (benchmarks/suites.py)."""
    peer = "etcd3.Lock (python3-etcd3)"
    locks = locks_readout(
        {
            "title": "Accord locks (benchmarks/locks.py)",
            "results": [
                *(row(peer, 16, 100), row("accord Locks", 16, 150)),
                *(row(peer, 8, 100), row("accord Locks", 8, 50)),
            ],
            "summary": {
                "accord/etcd3.Lock, uncontended @16": 1.5,
                "CPU us/op accord, uncontended @16": {"coordinator": 900, "etcd": 500},
                "accord/etcd3.Lock, hand-offs @8": 0.5,
                "deadlock detection ms @10 other waiters": {"p50": 6.0, "p99": 7.0, "rounds": 20},
                "deadlock detection ms @1000 other waiters": {"p50": 9.0, "p99": 25, "rounds": 20},
                "coordinator RSS MB, before": 80.0,
                "coordinator RSS MB, 1000 agents leased and waiting": 150.0,
            },
        }
    )
    assert {(r.workload, r.clients, r.value, r.target) for r in locks.ratios} == {
        ("uncontended", 16, 1.5, 2.0),
        ("hand-offs", 8, 0.5, 1.0),
        ("deadlock detection", 1000, 0.5, 1.0),  # p99 over the 50 ms
        ("coordinator memory", 0, 0.8, 1.0),  # over 100 MB
        ("coordinator memory", 0, 0.75, 1.0),  # with 1000 agents, over 200 MB
    }
    accord = next(r for r in locks.results if r.name == "accord Locks" and r.clients == 16)
    assert accord.cpu_us_per_op == {"coordinator": 900, "etcd": 500}
    assert any(r.workload.startswith("deadlock") and r.p99_ms == 7.0 for r in locks.results)

    queue = lock_queue_readout(
        {
            "title": "Accord lock queue cost (benchmarks/lock_queue.py)",
            "results": [
                row("hand-off, 100 waiters", 100, 200),
                row("hand-off, 1000 waiters", 1000, 50),
            ],
            "summary": {},
        }
    )
    (ratio,) = queue.ratios
    assert (ratio.mode, ratio.peer, ratio.value) == ("1000 waiters", "100 waiters", 4.0)

    ballots = {
        "electorate": 50,
        "results": [
            row("etcd Txn per ballot, direct", 64, 1000),
            row("accord Cast (request_id)", 64, 250),
        ],
        "cpu_us_per_ballot": {"accord Cast (request_id) @64": {"replica A": 1400}},
    }
    fan = {
        side: {"deliveries": 100, "p50_ms": p99 / 2, "p99_ms": p99, "cpu_ms_per_round": {}}
        for side, p99 in (("accord", 40.0), ("etcd", 10.0))
    }
    votes = votes_readout({"throughput": {"50": ballots}, "fan_out": fan})
    assert {(r.metric, r.value, r.target) for r in votes.ratios} == {
        ("ops/s", 0.25, 1.0),
        ("p99 ms", 4.0, None),
        ("p99 ms", 0.8, 1.0),  # over the 50 ms
    }

    rung = {
        "updates": 200,
        "missing_deliveries": 0,
        "achieved_rate": 50.0,
        "p50_ms": 5.0,
        "server_cpu_us_per_update": 900,
        "subscribers_cpu_us_per_delivery": 40,
    }
    fan_out: dict[str, Any] = {
        "at_50_per_s": {
            "pycrdt-websocket 0.16.5": {**rung, "p99_ms": 20.0},
            "accord (gRPC Subscribe)": {**rung, "p99_ms": 30.0},
        },
        "sustained": {"pycrdt-websocket 0.16.5": 150, "accord (gRPC Subscribe)": 400},
        "ladder": {
            "accord (gRPC Subscribe)": [
                {**rung, "rate": 50, "p99_ms": 30.0},
                {**rung, "rate": 400, "achieved_rate": 390.0, "p99_ms": 80.0},
                {**rung, "rate": 50, "p99_ms": 35.0},  # the same rate again: this one
            ]
        },
    }
    sessions = sessions_readout({"fan_out": fan_out})
    ladder = [(r.clients, r.ops_per_s, r.p99_ms) for r in sessions.results if r.clients != 100]
    assert ladder == [(50, 50.0, 35.0), (400, 390.0, 80.0)]
    assert {(r.metric, r.value, r.target) for r in sessions.ratios} == {
        ("p99 ms", 1.5, None),
        ("p99 ms", 0.6, 1.0),  # over the 50 ms
        ("sustained updates/s", 2.667, 2.0),
    }
    # a run that did not climb the ladder (--quick: 50/s only) says nothing of the rate
    quick = {**fan_out, "ladder": {"accord (gRPC Subscribe)": [{**rung, "rate": 50, "p99_ms": 1}]}}
    assert "sustained updates/s" not in {
        r.metric for r in sessions_readout({"fan_out": quick}).ratios
    }


def test_every_option_the_runner_passes_is_one_its_suite_takes() -> None:
    """The full run is not part of CI (the quick one is): its options are checked against
    each suite's --help, so a renamed option shows here."""
    helps = {
        suite.name: subprocess.Popen(
            [sys.executable, "-m", f"benchmarks.{suite.name}", "--help"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        for suite in SUITES
    }
    for suite in SUITES:
        text, _ = helps[suite.name].communicate(timeout=60)
        for option in (a for a in (*suite.quick, *suite.full) if a.startswith("--")):
            assert f"{option} " in text or f"{option}\n" in text, (suite.name, option)


def test_the_readme_shows_plots_that_are_committed() -> None:
    shown = re.findall(
        r"\]\((benchmarks/results/latest/[^)]+\.png)\)", (REPO / "README.md").read_text()
    )
    assert shown
    for path in shown:
        assert (REPO / path).read_bytes()[:8] == PNG, path
