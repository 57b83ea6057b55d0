"""report.md from a runner's results.json (see benchmarks/__main__.py): per suite the
median over rounds of each ratio to the peer with its min-max and the issue's target,
the median figures of every mode, the load average around each round, and the plots.

Medians over rounds, not means: on a shared machine one round in which something else
ran is an outlier, and a median of three ignores it.

Error handling: failed rounds are listed with their error and left out of the medians;
a suite with no successful round gets its failures only.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from benchmarks import plots
from benchmarks.common import Ratio
from benchmarks.rounds import median_result, ok_rounds, ratios_by_key, results_by_key


def _number(x: float) -> str:
    if math.isnan(x):
        return "n/a"
    return f"{x:,.2f}" if abs(x) < 100 else f"{x:,.0f}"


def _verdict(ratio: Ratio, median: float) -> str:
    if ratio.target is None:
        return ""
    sign = ">=" if ratio.higher_is_better else "<="
    met = median >= ratio.target if ratio.higher_is_better else median <= ratio.target
    return f"{sign} {ratio.target:g} ({'met' if met else 'missed'})"


def ratio_table(suite: dict[str, Any]) -> list[str]:
    rows = [
        "| workload | mode | peer | figure | clients | median ratio | min-max | target | rounds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (workload, mode, peer, metric, clients), ratios in ratios_by_key(suite).items():
        values = [r.value for r in ratios]
        median = statistics.median(values)
        better = "higher" if ratios[0].higher_is_better else "lower"
        rows.append(
            f"| {workload} | {mode} | {peer} | {metric} ({better} is better) | "
            f"{clients or ''} | **{_number(median)}** | "
            f"{_number(min(values))}-{_number(max(values))} | "
            f"{_verdict(ratios[0], median)} | {len(values)} |"
        )
    return rows if len(rows) > 2 else []


def target_table(data: dict[str, Any]) -> list[str]:
    """Every ratio the issue sets a target for, across suites: the run at a glance."""
    rows = [
        "| suite | workload | mode / peer | figure | clients | median ratio | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, suite in data["suites"].items():
        for (workload, mode, peer, metric, clients), ratios in ratios_by_key(suite).items():
            if ratios[0].target is None:
                continue
            median = statistics.median(r.value for r in ratios)
            rows.append(
                f"| {name} | {workload} | {mode} / {peer} | {metric} | {clients or ''} | "
                f"**{_number(median)}** | {_verdict(ratios[0], median)} |"
            )
    return rows if len(rows) > 2 else []


def summary_list(suite: dict[str, Any]) -> list[str]:
    """The suite's own summary of its last successful round, folded."""
    good = ok_rounds(suite)
    summary = good[-1].get("raw", {}).get("summary", {}) if good else {}
    if not summary:
        return []
    lines = [f"<details><summary>The suite's own summary (round {good[-1]['round']})</summary>"]
    lines += ["", *(f"- {key}: {value}" for key, value in summary.items()), "", "</details>", ""]
    return lines


def result_table(suite: dict[str, Any]) -> list[str]:
    rows = [
        "| workload | mode | clients | ops/s | p50 ms | p99 ms | CPU us/op by process |",
        "|---|---|---|---|---|---|---|",
    ]
    for (workload, mode, clients), results in results_by_key(suite).items():
        r = median_result(results)
        cpu = ", ".join(f"{p} {us:,}" for p, us in r.cpu_us_per_op.items() if us)
        rows.append(
            f"| {workload} | {mode} | {clients} | {_number(r.ops_per_s) if r.ops_per_s else ''} "
            f"| {_number(r.p50_ms)} | {_number(r.p99_ms)} | {cpu} |"
        )
    return rows if len(rows) > 2 else []


def suite_section(name: str, suite: dict[str, Any], images: list[str]) -> list[str]:
    good = ok_rounds(suite)
    title = good[0]["title"] if good else name
    lines = [f"## {name}: {title}", ""]
    ratios = ratio_table(suite)
    if ratios:
        lines += ["Ratios to the peer, median over rounds:", "", *ratios, ""]
    results = result_table(suite)
    if results:
        lines += ["Figures, median over rounds:", "", *results, ""]
    lines += ["| round | seconds | load avg 1/5/15 min before | after | outcome |"]
    lines += ["|---|---|---|---|---|"]
    for r in suite["rounds"]:
        outcome = "ok" if r.get("ok") else "FAILED: " + r["error"].splitlines()[0][:200]
        before, after = (" / ".join(f"{x:g}" for x in r[k]) for k in ("load_before", "load_after"))
        lines.append(f"| {r['round']} | {r['seconds']} | {before} | {after} | {outcome} |")
    lines.append("")
    lines += summary_list(suite)
    for r in suite["rounds"]:
        if not r.get("ok"):
            lines += [f"Round {r['round']} failed:", "", "```", r["error"], "```", ""]
    lines += [f"![{Path(image).stem}]({image})" for image in images]
    return [*lines, ""] if images else lines


def write(data: dict[str, Any], out: Path) -> Path:
    """report.md and the plots into `out`; returns the report's path."""
    images = plots.draw(data, out)
    m = data["machine"]
    args = data["args"]
    kind = "quick (smoke) run" if args["quick"] else "full run"
    lines = [
        "# Accord benchmarks",
        "",
        f"{data['started']} to {data.get('finished', '?')}, {kind}, "
        f"{args['rounds']} round(s) of {', '.join(args['only'])}.",
        f"Commit {m['commit']}"
        + (f" with {len(m['modified_files'])} modified file(s)" if m["modified_files"] else "")
        + f"; {m['cpus']} CPUs, {m['memory_gib']} GiB, {m['platform']}, Python {m['python']}.",
        "",
        "Each suite runs Accord and its peer side by side in one process tree on this "
        "machine; a ratio is a mode's figure over the peer's in the same round, and the "
        "tables give the median over rounds with the min-max. Absolute figures vary with "
        "the load average (given per round); the ratios less so.",
        "",
    ]
    targets = target_table(data)
    if targets:
        lines += ["## Targets", "", *targets, ""]
    for name, suite in data["suites"].items():
        lines += suite_section(name, suite, images.get(name, []))
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
