"""PNG plots of a runner's results (matplotlib, Agg backend: no display needed), per suite:

- <suite>-throughput.png: ops/s vs clients, a line per mode and peer, per workload
  (median over rounds, bars from the lowest to the highest round);
- <suite>-latency.png: latency CDFs, per workload and client count, a line per mode
  (the round with the median p99), for the suites that keep every latency;
- <suite>-cpu.png: CPU microseconds per operation, stacked by process, per mode.

A plot is drawn only when the suite has its data (no throughput for a latency-only
workload, no CDF where only p50/p99 were kept).

Error handling: none; the figures are built from the parsed results.json.
"""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter
from PIL import Image

from benchmarks.common import Result
from benchmarks.rounds import median_result, results_by_key

DPI = 72
MAX_PANELS = 6
MAX_BARS = 24


def draw(data: dict[str, Any], out: Path) -> dict[str, list[str]]:
    """Every suite's plots into `out`; their file names per suite."""
    drawn: dict[str, list[str]] = {}
    for name, suite in data["suites"].items():
        by_key = results_by_key(suite)
        if not by_key:
            continue
        medians = {key: median_result(results) for key, results in by_key.items()}
        for kind, make in (
            ("throughput", throughput),
            ("latency", latency),
            ("cpu", cpu),
        ):
            figure = make(by_key, medians)
            if figure is None:
                continue
            figure.suptitle(f"{name}: {kind}", fontsize=11)
            figure.tight_layout()
            file = f"{name}-{kind}.png"
            _save(figure, out / file)
            drawn.setdefault(name, []).append(file)
    return drawn


Key = tuple[str, str, int]


def _save(figure: Figure, path: Path) -> None:
    """As a PNG of at most 64 colours (a third of the size; the plots use a dozen)."""
    drawn = io.BytesIO()
    figure.savefig(drawn, dpi=DPI)
    plt.close(figure)
    drawn.seek(0)
    with Image.open(drawn) as image:
        image.convert("RGB").quantize(colors=64).save(path, optimize=True)


def _grid(panels: int) -> tuple[Figure, list[Any]]:
    cols = min(3, panels)
    rows = (panels + cols - 1) // cols
    size = (max(6.5, 5.0 * cols), 3.6 * rows)
    figure, axes = plt.subplots(rows, cols, figsize=size, squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[panels:]:
        ax.set_visible(False)
    return figure, flat


def _plain(ax: Any) -> None:
    """Tick labels as plain numbers (1, 8, 64; 0.5, 20 ms), not powers."""
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def throughput(rounds: dict[Key, list[Result]], medians: dict[Key, Result]) -> Figure | None:
    workloads: dict[str, dict[str, list[Key]]] = defaultdict(lambda: defaultdict(list))
    for key, r in medians.items():
        if r.ops_per_s > 0:
            workloads[r.workload][r.name].append(key)
    if not workloads:
        return None
    shown = list(workloads.items())[:MAX_PANELS]
    figure, axes = _grid(len(shown))
    for ax, (workload, modes) in zip(axes, shown, strict=False):
        spans = [k[2] for keys in modes.values() for k in keys]
        for mode, keys in modes.items():
            keys.sort(key=lambda k: k[2])
            xs = [k[2] for k in keys]
            ys = [medians[k].ops_per_s for k in keys]
            low = [y - min(r.ops_per_s for r in rounds[k]) for k, y in zip(keys, ys, strict=True)]
            high = [max(r.ops_per_s for r in rounds[k]) - y for k, y in zip(keys, ys, strict=True)]
            ax.errorbar(xs, ys, yerr=[low, high], marker="o", capsize=3, label=mode)
        if max(spans) >= 4 * max(1, min(spans)):
            ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(set(spans)))
        _plain(ax)
        ax.set_title(workload or "(all)", fontsize=9)
        ax.set_xlabel("clients (concurrent callers, unless the title says)")
        ax.set_ylabel("ops/s")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return figure


def latency(rounds: dict[Key, list[Result]], medians: dict[Key, Result]) -> Figure | None:
    panels: dict[tuple[str, int], list[Result]] = defaultdict(list)
    for r in medians.values():
        if r.cdf:
            panels[(r.workload, r.clients)].append(r)
    if not panels:
        return None
    shown = list(panels.items())[:MAX_PANELS]
    figure, axes = _grid(len(shown))
    for ax, ((workload, clients), results) in zip(axes, shown, strict=False):
        for r in results:
            ax.plot([ms for _, ms in r.cdf], [q for q, _ in r.cdf], label=r.name)
        ax.set_xscale("log")
        _plain(ax)
        ax.set_title(f"{workload or '(all)'} @{clients}", fontsize=9)
        ax.set_xlabel("latency ms (log)")
        ax.set_ylabel("fraction of operations")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return figure


def cpu(rounds: dict[Key, list[Result]], medians: dict[Key, Result]) -> Figure | None:
    bars = [r for r in medians.values() if any(r.cpu_us_per_op.values())][:MAX_BARS]
    if not bars:
        return None
    processes = sorted({p for r in bars for p, us in r.cpu_us_per_op.items() if us})
    figure, ax = plt.subplots(figsize=(9, 0.9 + 0.42 * len(bars)))
    labels = [f"{r.name} @{r.clients}" + (f" ({r.workload})" if r.workload else "") for r in bars]
    left = [0.0] * len(bars)
    for process in processes:
        widths = [float(r.cpu_us_per_op.get(process, 0)) for r in bars]
        ax.barh(labels, widths, left=left, label=process)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.invert_yaxis()
    ax.set_xlabel("CPU us per operation (median over rounds)")
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return figure
