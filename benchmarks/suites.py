"""Every suite as the runner (`python -m benchmarks`) drives it: the command lines of a
quick and a full run, and how its JSON becomes Results and Ratios to its peer.

The runner runs each suite as its own process (`python -m benchmarks.<suite> ... --out
FILE`), never imports one: the python3-etcd3 peer of the locks suite and the aetcd stubs
of the others register the same etcd proto files, and one process cannot hold both. A
suite whose JSON `common.report` writes carries its own ratios (standard_readout); the
others are read here from the JSON they write.

Error handling: a readout of JSON without the fields it needs raises (KeyError,
TypeError); the runner records that round of the suite as failed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks.common import Ratio, Readout, Result, ratios_vs_peer, standard_readout


@dataclass(frozen=True)
class Suite:
    name: str  # the module: benchmarks/<name>.py
    quick: tuple[str, ...]  # its arguments for `--quick` (a smoke run: seconds)
    full: tuple[str, ...]  # and for a full run
    readout: Callable[[dict[str, Any]], Readout] = standard_readout

    def args(self, quick: bool) -> list[str]:
        return list(self.quick if quick else self.full)


def within(
    workload: str, mode: str, metric: str, value: float, bound: float, clients: int = 0
) -> Ratio:
    """A figure over the issue's absolute bound for it (p99 < 50 ms, RSS < 100 MB, ...),
    so that it shows in the Targets table: at most 1 meets the bound."""
    unit = metric.rsplit(maxsplit=1)[-1]
    return Ratio(
        workload, mode, f"the issue's bound, {bound:g} {unit}", metric,
        round(value / bound, 3), clients, higher_is_better=False, target=1.0,
    )  # fmt: skip


LOCK_PEER = "etcd3.Lock (python3-etcd3)"


def locks_readout(raw: dict[str, Any]) -> Readout:
    """benchmarks/locks.py names its workloads in its summary ("accord/etcd3.Lock,
    hand-offs @8"). The issue's targets: >= 2x uncontended @16, >= 1x hand-offs @8, >= 2x
    hand-offs @32."""
    found = standard_readout(raw)
    summary: dict[str, Any] = raw["summary"]
    workloads: dict[int, str] = {}
    for key in summary:
        if key.startswith("accord/etcd3.Lock, "):
            workload, _, clients = key.removeprefix("accord/etcd3.Lock, ").rpartition(" @")
            workloads[int(clients)] = workload
    for r in found.results:
        r.workload = workloads.get(r.clients, "")
        if r.name != LOCK_PEER:
            r.cpu_us_per_op = summary.get(f"CPU us/op accord, {r.workload} @{r.clients}", {})
    found.ratios = ratios_vs_peer(found.results, LOCK_PEER, targets={16: 2.0, 8: 1.0, 32: 2.0})
    for key, value in summary.items():
        if key.startswith("deadlock detection ms @"):
            others = int(key.removeprefix("deadlock detection ms @").split()[0])
            if others == 1000:
                workload = "deadlock detection"
                found.ratios.append(within(workload, "accord", "p99 ms", value["p99"], 50, others))
            found.results.append(
                Result(
                    "accord DeadlockError", others, value["rounds"], 0.0, 0.0,
                    value["p50"], value["p99"], "deadlock detection (clients: others waiting)",
                )
            )  # fmt: skip
    memory = "coordinator memory"
    if (before := summary.get("coordinator RSS MB, before")) is not None:
        found.ratios.append(within(memory, "before the agents", "RSS MB", before, 100))
    if (waiting := summary.get("coordinator RSS MB, 1000 agents leased and waiting")) is not None:
        found.ratios.append(within(memory, "1000 agents waiting", "RSS MB", waiting, 200))
    return found


def lock_queue_readout(raw: dict[str, Any]) -> Readout:
    """benchmarks/lock_queue.py's "enqueue, N waiters" is the workload "enqueue" at N
    clients. Its ratio: the time per waiter at the longest queue over the shortest's (1
    when a waiter costs O(1), N_max/N_min when it costs O(n))."""
    found = standard_readout(raw)
    mode = found.title.split(" (")[0].removeprefix("Accord ").removesuffix(" cost")
    for r in found.results:
        r.workload = r.name.partition(", ")[0]
        if r.workload == "hand-off":  # measured over the enqueue and the hand-off together
            r.cpu_us_per_op = raw["summary"].get(f"{r.clients} waiters: CPU us per waiter", {})
        r.name = mode
    for workload in sorted({r.workload for r in found.results}):
        mine = sorted((r for r in found.results if r.workload == workload), key=lambda r: r.clients)
        small, large = mine[0], mine[-1]
        if large.clients > small.clients and large.ops_per_s:
            found.ratios.append(
                Ratio(
                    f"{workload}, time per waiter", f"{large.clients} waiters",
                    f"{small.clients} waiters", "s per waiter",
                    round(small.ops_per_s / large.ops_per_s, 3), higher_is_better=False,
                )
            )  # fmt: skip
    return found


BALLOT_PEER = "etcd Txn per ballot, direct"


def votes_readout(raw: dict[str, Any]) -> Readout:
    """benchmarks/votes.py: ballots/s per electorate vs a direct etcd Txn per ballot
    (target >= 1x @64), and the decision fan-out's latency vs an etcd watch of a Put."""
    found = Readout("Accord votes (benchmarks/votes.py)", [], [])
    for electorate, run in raw.get("throughput", {}).items():
        results = [Result.from_dict(r) for r in run["results"]]
        for r in results:
            r.workload = f"ballots, electorate {electorate}"
            r.cpu_us_per_op = run["cpu_us_per_ballot"].get(f"{r.name} @{r.clients}", {})
        found.results += results
        found.ratios += ratios_vs_peer(results, BALLOT_PEER, targets={64: 1.0})
    if fan := raw.get("fan_out"):
        watchers = 100
        workload = f"decision fan-out to {watchers} watchers (latency from the write)"
        fanned = []
        for name, side in (("accord decision", fan["accord"]), ("etcd Put", fan["etcd"])):
            # CPU per operation: per decision (or Put) and its deliveries to every watcher
            cpu = {process: round(ms * 1000) for process, ms in side["cpu_ms_per_round"].items()}
            fanned.append(
                Result(name, watchers, side["deliveries"], 0.0, 0.0, side["p50_ms"],
                       side["p99_ms"], workload, cpu_us_per_op=cpu)
            )  # fmt: skip
        found.results += fanned
        found.ratios += ratios_vs_peer(fanned, "etcd Put", metric="p99 ms")
        p99 = fan["accord"]["p99_ms"]
        found.ratios.append(within(workload, "accord decision", "p99 ms", p99, 50, watchers))
    return found


SESSION_PEER = "pycrdt-websocket 0.16.5"


def sessions_readout(raw: dict[str, Any]) -> Readout:
    """benchmarks/sessions.py: fan-out to 100 subscribers at 50 updates/s (its median
    round) and the highest rate sustained, each Accord side vs pycrdt-websocket (target:
    sustained >= 2x). CPU per update: the server side's, and the subscribers' for all 100."""
    found = Readout("Accord sessions (benchmarks/sessions.py)", [], [])
    fan = raw.get("fan_out")
    if not fan:
        return found
    subscribers = 100
    workload = f"fan-out @50 updates/s to {subscribers} subscribers (latency per delivery)"
    for label, r in fan["at_50_per_s"].items():
        cpu = {
            "server": r["server_cpu_us_per_update"],
            "subscribers": r["subscribers_cpu_us_per_delivery"] * subscribers,
        }
        delivered = r["updates"] * subscribers - r["missing_deliveries"]
        found.results.append(
            Result(label, subscribers, delivered, 0.0, r["achieved_rate"], r["p50_ms"],
                   r["p99_ms"], workload, cpu_us_per_op=cpu)
        )  # fmt: skip
    found.ratios += ratios_vs_peer(found.results, SESSION_PEER, metric="p99 ms")
    ladder = f"fan-out to {subscribers} subscribers, the rate ladder (clients: updates/s offered)"
    for label, rungs in fan.get("ladder", {}).items():
        by_rate = {round(r["rate"]): r for r in rungs}  # a rate run again: its last rung
        for rate, r in sorted(by_rate.items()):
            found.results.append(
                Result(label, rate, r["updates"], 0.0, r["achieved_rate"], r["p50_ms"],
                       r["p99_ms"], ladder)
            )  # fmt: skip
    if grpc := fan["at_50_per_s"].get("accord (gRPC Subscribe)"):
        found.ratios.append(
            within(workload, "accord (gRPC Subscribe)", "p99 ms", grpc["p99_ms"], 50, subscribers)
        )
    peer_rate = fan["sustained"].get(SESSION_PEER, 0)
    climbed = any(r["rate"] > 50 for rungs in fan.get("ladder", {}).values() for r in rungs)
    for label, rate in fan["sustained"].items():
        if label != SESSION_PEER and climbed:  # a run without the ladder (--quick) has none
            found.ratios.append(
                Ratio(f"fan-out to {subscribers} subscribers", label, SESSION_PEER,
                      "sustained updates/s", round(rate / peer_rate, 3) if peer_rate else math.nan,
                      target=2.0)
            )  # fmt: skip
    return found


# In the order they run. Quick: the CI smoke run, 1-1.5 minutes for all of them on 2
# cores (kv_cas at 1, 8 and 64 clients for its targets; locks without their memory step,
# a 5 s wait for 1,000 agents' RSS).
SUITES = (
    Suite("kv_cas", ("--seconds", "0.3", "--clients", "1,8,64"), ("--seconds", "3")),
    Suite(
        "locks",
        ("--seconds", "0.5", "--waiters", "10", "--parts", "throughput,deadlocks"),
        ("--seconds", "3", "--waiters", "100,1000"),
        locks_readout,
    ),
    Suite("lock_queue", ("--waiters", "5,20"), ("--waiters", "100,1000"), lock_queue_readout),
    Suite("votes", ("--quick",), ("--rounds", "10", "--seconds", "3"), votes_readout),
    Suite(
        "sessions",
        ("--quick",),
        ("--parts", "fanout,trace", "--edits", "20000", "--repeats", "3"),
        sessions_readout,
    ),
    Suite(
        "leases_list",
        ("--leases", "300", "--listers", "2", "--seconds", "0.5"),
        ("--seconds", "3"),
    ),
    Suite("overload", ("--seconds", "1", "--flooders", "8"), ("--seconds", "5")),
    Suite("workers", ("--seconds", "0.5", "--rounds", "1"), ("--seconds", "3", "--rounds", "2")),
    Suite("metrics", ("--seconds", "0.3", "--rounds", "1"), ("--seconds", "2", "--rounds", "4")),
    Suite("effects", ("--seconds", "0.3", "--clients", "1,64"), ("--seconds", "3")),
)
