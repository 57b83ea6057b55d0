"""Overload isolation between two namespaces on one replica, side by side in one run.

    python -m benchmarks.overload [--seconds 5] [--flooders 64] [--smoke]

A victim namespace runs a steady light load (a few agents, each a Get and a Put on its
own key, then a short pause). Phase "alone": the victim only. Phase "flood": the same
victim load while a flooding namespace runs far more requests than the replica can serve
(--flooders closed-loop agents with no pause: small Puts, and every fourth request a
large Txn of 16 puts of 32 KiB) on the replica with quotas (the flooding namespace
limited to --flood-rate requests/s). Phase "flood, no quotas": the same on a second
replica over the same etcd, started with --no-quotas. Phase "hostile flood": on the
replica with quotas, flooding agents that ignore the pushback and call again at once (a
broken or hostile fleet); the replica holds each rate refusal until the caller may come
back (the tarpit), which paces them. Phase "hostile flood, no tarpit": the same on a third
replica started with --rate-refusal-hold 0 (refusals answered at once). The flood runs
in its own process, so its client work does not delay the victim's event loop. Each
flooding agent makes one attempt per call and, when refused, waits the RetryInfo it got
before its next one (what Accord's client does between its retries, made visible here),
except in the hostile floods.

Targets (issue 13): the victim's p99 with the flood stays under 2x its p99 alone, and the
flooder gets pushback (RESOURCE_EXHAUSTED with RetryInfo), not timeouts. Reported: each
namespace's throughput, p50 and p99 per phase, the flooder's outcomes, and the replica's
RSS (start, peak, end) over each phase.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from accord.client import (
    AccordError,
    AsyncClient,
    DeadlineExceededError,
    Put,
    QuotaExceededError,
    RetryPolicy,
)
from benchmarks.common import (
    Result,
    RssSampler,
    measured,
    ratios_vs_peer,
    report,
    rss_mb,
)
from tests.harness import Coordinator, start_coordinator, start_etcd

VICTIM_AGENTS = 4
VICTIM_PAUSE = 0.02
BIG_VALUE = b"x" * 32 * 1024
SMALL_VALUE = b"y" * 64


def _result(name: str, clients: int, seconds: float, latencies: list[float]) -> Result:
    return measured(name, clients, seconds, latencies, name.split(", ", maxsplit=1)[0])


async def _victim(client: AsyncClient, agent: int, until: float, out: list[float]) -> None:
    key = f"victim/{agent}"
    while time.perf_counter() < until:
        sent = time.perf_counter()
        await client.kv.get(key)
        await client.kv.put(key, SMALL_VALUE)
        out.append(time.perf_counter() - sent)
        await asyncio.sleep(VICTIM_PAUSE)


async def _flooder(
    client: AsyncClient,
    agent: int,
    until: float,
    out: list[float],
    outcomes: Counter[str],
    honour: bool,
) -> None:
    turn = 0
    while time.perf_counter() < until:
        turn += 1
        sent = time.perf_counter()
        try:
            if turn % 4 == 0:
                await client.kv.txn(
                    {}, [Put(f"flood/{agent}/big/{i}", BIG_VALUE) for i in range(16)]
                )
            else:
                await client.kv.put(f"flood/{agent}/small", SMALL_VALUE)
            out.append(time.perf_counter() - sent)
            outcomes["ok"] += 1
        except QuotaExceededError as refused:
            outcomes["pushback (RESOURCE_EXHAUSTED + RetryInfo)"] += 1
            if honour:  # as the server asked, within the phase
                wait = refused.retry_after or 0.1
                await asyncio.sleep(max(0.0, min(wait, until - time.perf_counter())))
        except DeadlineExceededError:
            outcomes["timeout"] += 1
        except AccordError as other:
            outcomes[f"other: {type(other).__name__}"] += 1


async def flood(address: str, flooders: int, seconds: float, honour: bool) -> dict[str, object]:
    """The flooding namespace's load, for `seconds`: latencies of calls that went through
    and every call's outcome (run in its own process by _phase)."""
    clients = _clients(address, "flood", flooders, "flooder", RetryPolicy(max_attempts=1))
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()
    try:
        started = time.perf_counter()
        until = started + seconds
        await asyncio.gather(
            *(_flooder(c, i, until, latencies, outcomes, honour) for i, c in enumerate(clients))
        )
        elapsed = time.perf_counter() - started
    finally:
        for client in clients:
            await client.close()
    return {"elapsed": elapsed, "latencies": latencies, "outcomes": dict(outcomes)}


async def _phase(
    name: str, replica: Coordinator, flooders: int, seconds: float, honour: bool = True
) -> tuple[list[Result], dict[str, object]]:
    assert replica.popen is not None
    pid = replica.popen.pid
    victims = _clients(replica.address, "victim", VICTIM_AGENTS, "victim")
    victim_lat: list[float] = []
    rss_start = rss_mb(pid)
    flood_out = Path(tempfile.mkstemp(prefix="accord-flood-", suffix=".json")[1])
    command = ["-m", "benchmarks.overload", "--flood-only", replica.address]
    command += ["--flooders", str(flooders), "--seconds", str(seconds), "--out", str(flood_out)]
    command += [] if honour else ["--ignore-pushback"]
    flooding = await asyncio.create_subprocess_exec(sys.executable, *command) if flooders else None
    try:
        with RssSampler(pid) as rss:
            await asyncio.sleep(0.5 if flooding else 0)  # the flood is on before measuring
            started = time.perf_counter()
            until = started + seconds - (0.5 if flooding else 0)
            await asyncio.gather(*(_victim(c, i, until, victim_lat) for i, c in enumerate(victims)))
            elapsed = time.perf_counter() - started
            if flooding:
                await flooding.wait()
    finally:
        for client in victims:
            await client.close()
    results = [_result(f"victim, {name}", len(victims), elapsed, victim_lat)]
    facts: dict[str, object] = {
        "rss MB start/peak/end": (round(rss_start, 1), round(rss.peak, 1), round(rss_mb(pid), 1))
    }
    if flooding:
        flooded = _read_and_remove(flood_out)
        results.append(
            _result(
                f"flooder (calls served), {name}",
                flooders,
                flooded["elapsed"],
                flooded["latencies"],
            )
        )
        facts["flooder outcomes"] = flooded["outcomes"]
    return results, facts


def _read_and_remove(path: Path) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(path.read_text())
    path.unlink()
    return found


def _clients(
    address: str, namespace: str, count: int, prefix: str, retry: RetryPolicy | None = None
) -> list[AsyncClient]:
    return [
        AsyncClient(
            [address],
            agent_id=f"{prefix}-{i}",
            namespace=namespace,
            token="",
            timeout=5.0,
            retry=retry or RetryPolicy(),
        )
        for i in range(count)
    ]


async def run(seconds: float, flooders: int, flood_rate: float, out: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="accord-bench-"))
    etcd = start_etcd(base)
    common = ["--log-level", "warning", "--ws-listen", ""]
    limited = start_coordinator(base, "quotas-on", [etcd.endpoint], extra_args=common, ws=False)
    open_replica = start_coordinator(
        base, "quotas-off", [etcd.endpoint], extra_args=[*common, "--no-quotas"], ws=False
    )
    no_tarpit = start_coordinator(
        base,
        "tarpit-off",
        [etcd.endpoint],
        extra_args=[*common, "--rate-refusal-hold", "0"],
        ws=False,
    )
    results: list[Result] = []
    summary: dict[str, object] = {}
    try:
        async with AsyncClient([limited.address], namespace="flood", token="") as admin:
            await admin.quotas.set(
                requests_per_second=flood_rate, agent_requests_per_second=flood_rate
            )
        for name, replica, flooding, honour in (
            ("alone", limited, 0, True),
            ("flood", limited, flooders, True),
            ("flood, no quotas", open_replica, flooders, True),
            ("hostile flood, no tarpit", no_tarpit, flooders, False),
            ("hostile flood", limited, flooders, False),
        ):
            phase, facts = await _phase(name, replica, flooding, seconds, honour)
            results += phase
            summary.update({f"{name}: {k}": v for k, v in facts.items()})
            await asyncio.sleep(min(2.0, seconds / 2))  # let the replica drain
    finally:
        limited.terminate()
        open_replica.terminate()
        no_tarpit.terminate()
        etcd.kill()

    alone = results[0].p99_ms or 1.0
    by_name = {r.name: r for r in results}
    for name in ("flood", "flood, no quotas", "hostile flood, no tarpit", "hostile flood"):
        victim = by_name[f"victim, {name}"]
        summary[f"victim p99 ratio {name} / alone (target < 2)"] = round(victim.p99_ms / alone, 2)
    # The target (< 2x) is the quotas-on replica's; the others show what quotas save.
    ratios = [
        r if r.mode in ("victim, flood", "victim, hostile flood") else replace(r, target=None)
        for r in ratios_vs_peer(
            results, results[0].name, metric="p99 ms", targets={VICTIM_AGENTS: 2}
        )
    ]
    report(
        "Overload isolation between two namespaces on one replica (benchmarks/overload.py)",
        results,
        summary,
        out,
        ratios,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--flooders", type=int, default=64)
    parser.add_argument("--flood-rate", type=float, default=50.0)
    parser.add_argument("--smoke", action="store_true", help="1 s phases, 8 flooders")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/overload.json"))
    parser.add_argument("--flood-only", metavar="ADDRESS", help=argparse.SUPPRESS)
    parser.add_argument("--ignore-pushback", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flood_only:  # the flooding process of a phase
        honour = not args.ignore_pushback
        flooded = asyncio.run(flood(args.flood_only, args.flooders, args.seconds, honour))
        args.out.write_text(json.dumps(flooded))
        return
    if args.smoke:
        args.seconds, args.flooders = 1.5, 8
    asyncio.run(run(args.seconds, args.flooders, args.flood_rate, args.out))


if __name__ == "__main__":
    main()
