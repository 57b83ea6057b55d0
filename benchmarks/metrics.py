"""What the Prometheus metrics cost a call: CAS throughput and the coordinator's CPU per
CAS on a replica serving /metrics (scraped every second) beside one without, over the
same etcd, side by side in one run (issue 15's target: at most 3% slower); and a second
replica without, so the run shows how far apart two equal replicas come out (A/A).

    python -m benchmarks.metrics [--seconds 3] [--clients 64] [--rounds 3]

Every client owns one key and compare-and-sets it on its last mod_revision through the
public AsyncClient, unbatched (one gRPC call per CAS: the per-call cost the interceptor's
metrics add shows most there) and batched (the default client). The replicas take turns,
mode by mode and round by round (each first in turn), so load from elsewhere on the
machine falls on all alike; each figure sums its rounds. The summary also gives what
measuring adds to one unary call, timed in process (wrapper_cost_us).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

from accord.client import AsyncClient, Expect
from benchmarks.common import CpuMeter, Ratio, Result, closed_loop, ratios_vs_peer, report
from tests.harness import start_coordinator, start_etcd

VALUE = b"x" * 64
OFF = "metrics off"
ON = "metrics on (scraped every 1 s)"
CONTROL = "metrics off, a second replica (A/A control)"
SCRAPE_EVERY_SECONDS = 1.0


class Scraper:
    """Scrapes /metrics every SCRAPE_EVERY_SECONDS from a thread, as Prometheus would."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.scrapes = 0
        self.bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(SCRAPE_EVERY_SECONDS):
            with urllib.request.urlopen(self.url, timeout=10) as response:
                self.bytes = len(response.read())
            self.scrapes += 1

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def wrapper_cost_us(calls: int = 100_000, repeats: int = 5) -> float:
    """What measuring adds to one unary call, in process: an empty method called bare and
    through metrics_calls.measured_unary, interleaved; the median difference, in us."""
    from accord.coordinator.observability import metrics, metrics_calls

    metrics.configure(enabled=True)

    class Context:
        def code(self) -> None:
            return None

        def time_remaining(self) -> float:
            return 5.0

    async def method(request: object, context: object) -> object:
        return request

    measured = metrics_calls.measured_unary("/bench.Bench/Empty", method)
    context = Context()

    async def timed(behavior: Callable[[object, object], Awaitable[object]]) -> float:
        started = time.perf_counter()
        for _ in range(calls):
            await behavior(None, context)
        return (time.perf_counter() - started) / calls * 1e6

    found = sorted([await timed(measured) - await timed(method) for _ in range(repeats)])
    return round(found[len(found) // 2], 3)


def _cas(
    accord: AsyncClient, tag: str
) -> Callable[[int], Awaitable[Callable[[], Awaitable[None]]]]:
    async def prepare(i: int) -> Callable[[], Awaitable[None]]:
        key = f"{tag}/{i}"
        state = {"rev": (await accord.kv.put(key, VALUE)).revision}

        async def op() -> None:
            written = await accord.kv.put(key, VALUE, expect=Expect(mod_revision=state["rev"]))
            state["rev"] = written.revision

        return op

    return prepare


async def run(seconds: float, clients: int, rounds: int, out: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="accord-bench-metrics-"))
    etcd = start_etcd(base)
    quiet = ["--log-level", "warning"]
    replicas = {
        OFF: start_coordinator(base, "off", [etcd.endpoint], quiet, ws=False),
        ON: start_coordinator(base, "on", [etcd.endpoint], quiet, ws=False, metrics=True),
        CONTROL: start_coordinator(base, "control", [etcd.endpoint], quiet, ws=False),
    }
    modes = {"CAS, unbatched": False, "CAS, batched": True}
    made = {
        (side, mode): AsyncClient(
            [replica.address], agent_id="bench", namespace="bench", token="", batching=batched
        )
        for side, replica in replicas.items()
        for mode, batched in modes.items()
    }
    totals: dict[tuple[str, str], list[float]] = {key: [0, 0.0, 0.0] for key in made}
    cpu: dict[tuple[str, str], float] = dict.fromkeys(made, 0.0)
    latencies: dict[tuple[str, str], list[Result]] = {key: [] for key in made}
    port = replicas[ON].metrics_port
    assert port
    try:
        with Scraper(port) as scraper:
            for turn in range(rounds):
                for mode in modes:
                    order = [OFF, ON, CONTROL]
                    order = order[turn % 3 :] + order[: turn % 3]  # each goes first in turn
                    for side in order:
                        client = made[(side, mode)]
                        pids = {"coordinator": replicas[side].pid}
                        with CpuMeter(pids) as meter:
                            result = await closed_loop(
                                side, clients, seconds, _cas(client, f"{mode}/{side}/{turn}")
                            )
                        total = totals[(side, mode)]
                        total[0] += result.ops
                        total[1] += result.seconds
                        cpu[(side, mode)] += meter.per_op_us(1).get("coordinator", 0)
                        latencies[(side, mode)].append(result)
        scrape_bytes, scrapes = scraper.bytes, scraper.scrapes
    finally:
        for client in made.values():
            await client.close()
        for replica in replicas.values():
            replica.terminate()
        etcd.kill()

    results: list[Result] = []
    for (side, mode), (ops, spent, _) in totals.items():
        runs = latencies[(side, mode)]
        result = Result(
            side, clients, int(ops), spent, ops / spent,
            sorted(r.p50_ms for r in runs)[len(runs) // 2],
            sorted(r.p99_ms for r in runs)[len(runs) // 2],
            mode, cpu_us_per_op={"coordinator": round(cpu[(side, mode)] / ops)},
        )  # fmt: skip
        results.append(result)
    ratios = ratios_vs_peer(results, OFF, [ON], targets={clients: 0.97})
    ratios += ratios_vs_peer(results, OFF, [CONTROL])  # how far apart two equal replicas are
    by = {(r.name, r.workload): r for r in results}
    for mode in modes:
        off = by[(OFF, mode)]
        for side in (ON, CONTROL):
            ratios.append(
                Ratio(mode, f"{side}: coordinator", f"{OFF}: coordinator", "CPU us/op",
                      round(by[(side, mode)].cpu_us_per_op["coordinator"]
                            / off.cpu_us_per_op["coordinator"], 3),
                      clients, higher_is_better=False)
            )  # fmt: skip
    summary: dict[str, object] = {}
    for mode in modes:
        for side, name in ((ON, "on/off"), (CONTROL, "off/off (A/A)")):
            summary[f"{name} ops ratio, {mode} @{clients}"] = round(
                by[(side, mode)].ops_per_s / by[(OFF, mode)].ops_per_s, 3
            )
    summary["measuring, us added per unary call (in process)"] = await wrapper_cost_us()
    summary["scrapes"] = scrapes
    summary["scrape bytes"] = scrape_bytes
    summary["rounds"] = rounds
    title = "Metrics on vs off: CAS throughput and coordinator CPU (benchmarks/metrics.py)"
    report(title, results, summary, out, ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/metrics.json"))
    args = parser.parse_args()
    asyncio.run(run(args.seconds, args.clients, args.rounds, args.out))


if __name__ == "__main__":
    main()
