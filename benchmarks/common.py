"""Shared benchmark plumbing: processes, closed-loop load, latency stats, RSS sampling."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


@dataclass
class Result:
    name: str
    clients: int
    ops: int
    seconds: float
    ops_per_s: float
    p50_ms: float
    p99_ms: float


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
    elapsed = time.perf_counter() - started
    latencies.sort()
    return Result(
        name=name,
        clients=clients,
        ops=len(latencies),
        seconds=round(elapsed, 3),
        ops_per_s=round(len(latencies) / elapsed, 1),
        p50_ms=round(statistics.median(latencies) * 1000, 3),
        p99_ms=round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 3),
    )


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


def report(title: str, results: list[Result], summary: dict[str, object], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"title": title, "results": [asdict(r) for r in results], "summary": summary}, indent=2
        )
    )
    print(f"\n{title}")
    print(f"{'workload':<34}{'clients':>8}{'ops/s':>12}{'p50 ms':>10}{'p99 ms':>10}")
    for r in results:
        print(f"{r.name:<34}{r.clients:>8}{r.ops_per_s:>12.1f}{r.p50_ms:>10.3f}{r.p99_ms:>10.3f}")
    print()
    for key, value in summary.items():
        print(f"{key}: {value}")
    print(f"\nJSON: {out}")
