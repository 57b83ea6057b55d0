"""Shared benchmark plumbing: closed-loop load, latency stats, CPU and RSS sampling, and
what every suite hands the runner (`python -m benchmarks`): its Results and its Ratios to
a peer.

A suite reports each thing it measured as a Result: a mode ("accord CAS (idempotent)",
"etcd CAS, direct", ...) of a workload at a number of clients, with throughput, latency
(p50, p99 and a CDF when it kept the latencies) and CPU per operation per process. A
Ratio is one mode over one peer in one run (several modes may share a peer); the runner
repeats suites and reports the median of each ratio over its rounds.

Error handling: nothing here catches; a suite that fails raises, and the runner records
the failure.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


# The latency CDF a Result keeps: these fractions of operations (and the slowest).
CDF_POINTS = (
    *(i / 40 for i in range(40)),
    0.99,
    0.995,
    0.999,
    1.0,
)


@dataclass
class Result:
    """One mode of a workload at one concurrency (`clients`), measured in one run."""

    name: str
    clients: int
    ops: int
    seconds: float
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    workload: str = ""
    cdf: list[tuple[float, float]] = field(default_factory=list)  # (fraction, ms)
    cpu_us_per_op: dict[str, int] = field(default_factory=dict)  # process -> CPU us

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Result:
        known = {f.name for f in fields(cls)}
        found = cls(**{k: v for k, v in raw.items() if k in known})
        found.cdf = [(float(q), float(ms)) for q, ms in found.cdf]
        return found


def measured(
    name: str, clients: int, seconds: float, latencies: list[float], workload: str = ""
) -> Result:
    """A Result from every operation's latency (seconds), with its CDF."""
    latencies = sorted(latencies)
    if not latencies:
        return Result(name, clients, 0, round(seconds, 3), 0.0, 0.0, 0.0, workload)

    def at(q: float) -> float:
        return round(latencies[max(0, math.ceil(q * len(latencies)) - 1)] * 1000, 3)

    return Result(
        name=name,
        clients=clients,
        ops=len(latencies),
        seconds=round(seconds, 3),
        ops_per_s=round(len(latencies) / seconds, 1),
        p50_ms=round(statistics.median(latencies) * 1000, 3),
        p99_ms=at(0.99),
        workload=workload,
        cdf=[(q, at(q)) for q in CDF_POINTS],
    )


@dataclass(frozen=True)
class Ratio:
    """One figure of a mode over the same figure of its peer, in one run: for ops/s above
    1 means the mode is faster; for a latency below 1 means it is faster."""

    workload: str
    mode: str
    peer: str
    metric: str  # what was divided, e.g. "ops/s", "p99 ms"
    value: float
    clients: int = 0
    higher_is_better: bool = True
    target: float | None = None  # the target for this ratio, if it names one

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Ratio:
        return cls(**raw)


def ratios_vs_peer(
    results: list[Result],
    peer: str,
    modes: list[str] | None = None,
    *,
    metric: str = "ops/s",
    targets: dict[int, float] | None = None,
) -> list[Ratio]:
    """Each mode's ops/s (or p50/p99 ms) over the peer's, per workload, at every client
    count both ran; `modes` None: every result that is not the peer."""
    attribute = {"ops/s": "ops_per_s", "p50 ms": "p50_ms", "p99 ms": "p99_ms"}[metric]
    peers = {(r.workload, r.clients): r for r in results if r.name == peer}
    found: list[Ratio] = []
    for r in results:
        base = peers.get((r.workload, r.clients))
        if r.name == peer or base is None or (modes is not None and r.name not in modes):
            continue
        denominator = getattr(base, attribute)
        found.append(
            Ratio(
                workload=r.workload,
                mode=r.name,
                peer=peer,
                metric=metric,
                value=round(getattr(r, attribute) / denominator, 3) if denominator else math.nan,
                clients=r.clients,
                higher_is_better=metric == "ops/s",
                target=(targets or {}).get(r.clients),
            )
        )
    return found


@dataclass
class Readout:
    """What one run of a suite gives the runner."""

    title: str
    results: list[Result]
    ratios: list[Ratio]


def standard_readout(raw: dict[str, Any]) -> Readout:
    """The readout of a suite whose JSON `report` wrote."""
    return Readout(
        title=raw["title"],
        results=[Result.from_dict(r) for r in raw["results"]],
        ratios=[Ratio.from_dict(r) for r in raw.get("ratios", [])],
    )


async def closed_loop(
    name: str,
    clients: int,
    seconds: float,
    make_op: Callable[[int], Awaitable[Callable[[], Awaitable[None]]]],
) -> Result:
    """`clients` workers each run their op back to back for `seconds`; latency per op."""
    ops = [await make_op(i) for i in range(clients)]
    latencies: list[float] = []
    stop_at = 0.0

    async def worker(op: Callable[[], Awaitable[None]]) -> None:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            await op()
            latencies.append(time.perf_counter() - t0)

    # warm up, then measure
    stop_at = time.perf_counter() + min(1.0, seconds / 4)
    await asyncio.gather(*(worker(op) for op in ops))
    latencies.clear()
    started = time.perf_counter()
    stop_at = started + seconds
    await asyncio.gather(*(worker(op) for op in ops))
    return measured(name, clients, time.perf_counter() - started, latencies)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU microseconds per operation, per named process, over a measured phase."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start: dict[str, float] = {}

    def __enter__(self) -> CpuMeter:
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        return self

    def __exit__(self, *exc: object) -> None:
        self.used = {n: cpu_seconds(p) - self._start[n] for n, p in self.pids.items()}

    def per_op_us(self, ops: int) -> dict[str, int]:
        return {n: round(used * 1e6 / max(ops, 1)) for n, used in self.used.items()}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class RssSampler:
    """Peak resident memory of a process, sampled in the background."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        self.pid, self.every, self.peak = pid, every, 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_mb(self.pid))
            await asyncio.sleep(self.every)

    def __enter__(self) -> RssSampler:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


def report(
    title: str,
    results: list[Result],
    summary: dict[str, object],
    out: Path,
    ratios: list[Ratio] | None = None,
) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    found = {
        "title": title,
        "results": [asdict(r) for r in results],
        "ratios": [asdict(r) for r in ratios or []],
        "summary": summary,
    }
    out.write_text(json.dumps(found, indent=2))
    print(f"\n{title}")
    print(f"{'workload':<34}{'clients':>8}{'ops/s':>12}{'p50 ms':>10}{'p99 ms':>10}")
    for r in results:
        print(f"{r.name:<34}{r.clients:>8}{r.ops_per_s:>12.1f}{r.p50_ms:>10.3f}{r.p99_ms:>10.3f}")
    print()
    for ratio in ratios or []:
        at = f" @{ratio.clients}" if ratio.clients else ""
        print(f"{ratio.mode} / {ratio.peer}, {ratio.metric}{at}: {ratio.value}")
    for key, value in summary.items():
        print(f"{key}: {value}")
    print(f"\nJSON: {out}")
