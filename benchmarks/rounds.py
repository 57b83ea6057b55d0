"""A suite's rounds in results.json, grouped: the ratios and Results of its successful
rounds per workload, mode and clients, and the median Result over rounds.

Error handling: none; rounds that failed are skipped.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from benchmarks.common import Ratio, Result

RatioKey = tuple[str, str, str, str, int]  # workload, mode, peer, metric, clients
ResultKey = tuple[str, str, int]  # workload, mode, clients


def ok_rounds(suite: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in suite["rounds"] if r.get("ok")]


def ratios_by_key(suite: dict[str, Any]) -> dict[RatioKey, list[Ratio]]:
    """Every successful round's ratio, per (workload, mode, peer, metric, clients)."""
    found: dict[RatioKey, list[Ratio]] = defaultdict(list)
    for r in ok_rounds(suite):
        for raw in r["ratios"]:
            ratio = Ratio.from_dict(raw)
            found[(ratio.workload, ratio.mode, ratio.peer, ratio.metric, ratio.clients)].append(
                ratio
            )
    return found


def results_by_key(suite: dict[str, Any]) -> dict[ResultKey, list[Result]]:
    """Every successful round's Result, per (workload, mode, clients), in run order."""
    found: dict[ResultKey, list[Result]] = defaultdict(list)
    for r in ok_rounds(suite):
        for raw in r["results"]:
            result = Result.from_dict(raw)
            found[(result.workload, result.name, result.clients)].append(result)
    return found


def median_result(results: list[Result]) -> Result:
    """Throughput, p50, p99 and CPU: each the median over rounds; the CDF: the round's
    with the median p99."""
    ordered = sorted(results, key=lambda r: r.p99_ms)
    found = Result.from_dict(vars(ordered[(len(ordered) - 1) // 2]))
    found.ops_per_s = statistics.median(r.ops_per_s for r in results)
    found.p50_ms = statistics.median(r.p50_ms for r in results)
    found.p99_ms = statistics.median(r.p99_ms for r in results)
    processes = {p for r in results for p in r.cpu_us_per_op}
    found.cpu_us_per_op = {
        p: round(statistics.median(r.cpu_us_per_op.get(p, 0) for r in results))
        for p in sorted(processes)
    }
    return found
