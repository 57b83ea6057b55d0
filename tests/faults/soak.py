"""Soak runs: one workload under chosen nemeses for as long as asked, on a fresh fault
cluster, leaving the history and a report behind.

    python -m tests.faults soak --workload kv --nemesis kill-replica --nemesis kill-etcd \
        --duration 600 --seed 7 --out /tmp/soak-kv

starts a fault cluster (tests/faults/cluster.py) in a temp dir, runs the workload
(tests/faults/workloads/: kv, watches, locks, sessions, votes or leases) while
tests.faults.nemesis's run_schedule toggles the chosen nemeses (seeded: a seed replays
the same choices), heals them all, and checks the history: kv with the linearizability
checker, watches with the watch validator, locks with the fenced-counter checker, votes
with the votes checker (rounds of votes until the duration is over), leases with the
lease checkers (agents paused past their lease one after another, each pause one
operation). In --out it writes history.jsonl (the recorder's JSON lines), events.jsonl
(the nemesis actions, on the same time.monotonic() clock), report.json and report.md:
operations, ok/failed/indeterminate, nemesis events, checker time and verdict. A kv
history the checker rejects also gets its smallest failing window
(tests/faults/window.py): history_failing.jsonl and a table in the report.

The sessions workload (workloads/sessions.py) is checked for convergence: every
acknowledged edit in every replica's and subscriber's document, exactly once.

Nemesis names (NEMESES) are those of tests/faults/nemesis.py without a replica suffix: a
per-replica fault is made for every replica, and the schedule picks among them.

Error handling: a cluster that does not start raises. A run the workload or a nemesis
could not carry out (a nemesis that failed to heal, a workload's own precondition unmet,
e.g. the locks workload's paused holder outlived by no other holder's write) is void:
its report says so and why, with the history recorded so far when the workload kept it,
and the exit status is 1; the cluster's directory (process logs) is removed after a
passing run and kept, named in the report, after a failing one.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.faults.cluster import FaultCluster, fault_cluster
from tests.faults.nemesis import (
    ClockSkew,
    Events,
    KillEtcdMember,
    Nemesis,
    delay_clients,
    delay_etcd,
    kill_replica,
    partition_clients,
    partition_from_etcd,
    pause_replica,
    run_schedule,
)
from tests.faults.recorder import Recorder
from tests.faults.runs import run_during
from tests.faults.window import Window, failing_window, table
from tests.faults.workloads import locks
from tests.faults.workloads.kv import KvWorkload
from tests.faults.workloads.leases_run import pause_past_lease
from tests.faults.workloads.sessions import SessionWorkload
from tests.faults.workloads.sessions import check as check_sessions
from tests.faults.workloads.votes import VotesWorkload
from tests.faults.workloads.votes_check import check_votes
from tests.faults.workloads.watches import WatchWorkload, validate
from tests.linearizability import KvRegister, check

Factory = Callable[[Events, FaultCluster, int], list[Nemesis]]


def _each_replica(make: Callable[[Events, FaultCluster, int], Nemesis]) -> Factory:
    return lambda events, cluster, _seed: [
        make(events, cluster, i) for i in range(len(cluster.replicas))
    ]


NEMESES: dict[str, Factory] = {
    "kill-replica": lambda events, cluster, seed: [kill_replica(events, cluster, seed=seed)],
    "pause-replica": _each_replica(pause_replica),
    "kill-etcd": lambda events, cluster, seed: [
        KillEtcdMember(events, cluster, rng=random.Random(seed))
    ],
    "partition-etcd": _each_replica(partition_from_etcd),
    "partition-clients": _each_replica(partition_clients),
    "delay-etcd": _each_replica(lambda e, c, i: delay_etcd(e, c, i, 0.2)),
    "delay-clients": _each_replica(lambda e, c, i: delay_clients(e, c, i, 0.2)),
    "clock-skew": _each_replica(lambda e, c, i: ClockSkew(e, c, i, 600.0)),
}


@dataclass
class Outcome:
    """What a workload's run and its checker gave."""

    recorder: Recorder
    ok: bool | None  # None: the checker could not decide in time
    checker: str
    check_seconds: float
    problems: list[str] = field(default_factory=list)
    window: Window | None = None
    window_seconds: float = 0.0
    void: str = ""  # why the run could not be carried out (then ok is None)


@dataclass(frozen=True)
class Plan:
    workload: str
    nemeses: tuple[str, ...]
    duration: float
    seed: int
    interval: float = 1.5
    check_timeout: float = 300.0
    # Test-only bugs the replicas run with (ACCORD_TEST_BREAK), to see a failing soak.
    breaks: tuple[str, ...] = ()


async def _kv(
    plan: Plan,
    cluster: FaultCluster,
    faults: list[Nemesis],
    namespace: str,
    recorder: Recorder,
    _events: Events,
) -> Outcome:
    workload = KvWorkload(cluster.client_addresses(), namespace, plan.seed)
    await run_during(workload.run, recorder, _schedule(plan, faults))
    started = time.monotonic()
    result = check(recorder.operations, KvRegister(), timeout=plan.check_timeout)
    outcome = Outcome(recorder, result.ok, "linearizability", time.monotonic() - started)
    outcome.problems = [
        f"key {p.partition!r}: {len(p.stuck)} operations could not be placed after "
        f"{len(p.order)} of {p.operations}"
        for p in result.failures
    ]
    if result.ok is False:
        started = time.monotonic()
        outcome.window = failing_window(
            recorder.operations, KvRegister(), timeout=plan.check_timeout
        )
        outcome.window_seconds = time.monotonic() - started
    return outcome


async def _watches(
    plan: Plan,
    cluster: FaultCluster,
    faults: list[Nemesis],
    namespace: str,
    recorder: Recorder,
    _events: Events,
) -> Outcome:
    workload = WatchWorkload(cluster.client_addresses(), namespace, plan.seed)
    run = await run_during(workload.run, recorder, _schedule(plan, faults))
    started = time.monotonic()
    problems = validate(run)
    resumes = sum(w.resumes for w in run.watchers)
    outcome = Outcome(recorder, not problems, "watch validator", time.monotonic() - started)
    outcome.problems = [f"{resumes} watch resumes", *problems]
    return outcome


async def _sessions(
    plan: Plan,
    cluster: FaultCluster,
    faults: list[Nemesis],
    namespace: str,
    recorder: Recorder,
    _events: Events,
) -> Outcome:
    workload = SessionWorkload(cluster.client_addresses(), namespace, plan.seed)
    run = await run_during(workload.run, recorder, _schedule(plan, faults))
    started = time.monotonic()
    problems = check_sessions(run)
    outcome = Outcome(recorder, not problems, "session convergence", time.monotonic() - started)
    live = sum(s.edits for s in run.subscribers)
    outcome.problems = [f"{live} edits by subscribers, {len(run.reads)} reads, settled in "
                        f"{run.settle_seconds:.1f} s",
                        *problems]  # fmt: skip
    return outcome


async def _locks(
    plan: Plan,
    cluster: FaultCluster,
    faults: list[Nemesis],
    namespace: str,
    _recorder: Recorder,
    events: Events,
) -> Outcome:
    report = await locks.run(
        cluster.client_addresses(),
        namespace,
        seed=plan.seed,
        duration=plan.duration,
        nemeses=faults,
        events=events,
        interval=plan.interval,
    )
    outcome = Outcome(report.recorder, report.verdict.ok, "fenced counter", report.check_seconds)
    outcome.problems = [
        f"{len(report.stale)} stale holder writes, {report.verdict.applied} increments applied",
        *report.verdict.problems,
    ]
    return outcome


async def _votes(
    plan: Plan,
    cluster: FaultCluster,
    faults: list[Nemesis],
    namespace: str,
    recorder: Recorder,
    _events: Events,
) -> Outcome:
    workload = VotesWorkload(
        cluster.client_addresses(),
        namespace,
        plan.seed,
        replicas=tuple(cluster.direct_addresses()),
    )
    await run_during(workload.run, recorder, _schedule(plan, faults))
    started = time.monotonic()
    verdict = check_votes(recorder.operations)
    outcome = Outcome(recorder, verdict.ok, "votes checker", time.monotonic() - started)
    outcome.problems = [verdict.summary(), *verdict.problems]
    return outcome


async def _leases(
    plan: Plan,
    cluster: FaultCluster,
    faults: list[Nemesis],
    namespace: str,
    recorder: Recorder,
    events: Events,
) -> Outcome:
    """Agents paused past their lease one after another (each in a namespace of its own,
    its replicas in a seeded order) while the schedule injects faults; each pause is one
    operation: ("told",) when everything attached was gone and the agent was told, else
    its problems. A pause the faults kept from being carried out (the agent could not
    start, a call timed out) is failed or indeterminate, and checks nothing."""
    stop = asyncio.Event()
    found: list[str] = []

    def stored(ns: str) -> list[Any]:
        running = [m for m in cluster.members if m.running()]
        return running[0].stored(ns)

    async def pauses() -> None:
        n = 0
        while n == 0 or not stop.is_set():
            ns = f"{namespace}-{n}"
            addresses = cluster.client_addresses()
            random.Random(f"{plan.seed}/leases/{n}").shuffle(addresses)
            async with recorder.op(n, ("pause-past-lease",), ns) as done:
                try:
                    run = await pause_past_lease(addresses, ns, stored, None, events)
                    problems = run.problems
                    if run.stored[0] != run.stored[1]:
                        problems.append("the resumed agent's refused calls changed etcd")
                except AssertionError as error:  # the lease outlived its TTL by far
                    problems = [str(error)]
                found.extend(f"pause {n}: {p}" for p in problems)
                done.output = ("problems", tuple(problems)) if problems else ("told",)
            n += 1

    running = asyncio.create_task(pauses())
    try:
        await _schedule(plan, faults)
    finally:
        stop.set()
        await running
    told = sum(1 for op in recorder.operations if op.output == ("told",))
    outcome = Outcome(recorder, not found, "lease checker", 0.0)
    outcome.problems = [f"{len(recorder.operations)} pauses checked, {told} valid", *found]
    if not recorder.operations:
        outcome.ok, outcome.void = None, "no pause could be carried out under the faults"
    return outcome


Runner = Callable[[Plan, FaultCluster, list[Nemesis], str, Recorder, Events], Awaitable[Outcome]]
WORKLOADS: dict[str, Runner] = {
    "kv": _kv,
    "watches": _watches,
    "locks": _locks,
    "sessions": _sessions,
    "votes": _votes,
    "leases": _leases,
}


async def _schedule(plan: Plan, faults: list[Nemesis]) -> None:
    if faults:
        await run_schedule(faults, plan.seed, plan.duration, plan.interval)
    else:
        await asyncio.sleep(plan.duration)


def soak(plan: Plan, out: Path) -> bool:
    """Run plan on a fresh cluster, write its files in out; whether the checker accepted."""
    out.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix=f"accord-soak-{plan.workload}-"))
    events = Events()
    origin, outcome = asyncio.run(_run(plan, base, events))
    outcome.recorder.save(out / "history.jsonl")
    with (out / "events.jsonl").open("w") as lines:
        for event in sorted(events.events, key=lambda e: e.began):
            lines.write(json.dumps(event.as_json()) + "\n")
    if outcome.window is not None:
        window = Recorder(operations=list(outcome.window.operations))
        window.save(out / "history_failing.jsonl")
    summary = summarize(plan, outcome, events, origin)
    summary["cluster"] = None if outcome.ok else str(base)
    (out / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "report.md").write_text(markdown(summary, outcome, events, origin))
    if outcome.ok:
        shutil.rmtree(base, ignore_errors=True)
    return outcome.ok is True


async def _run(plan: Plan, base: Path, events: Events) -> tuple[float, Outcome]:
    """The workload on a cluster started in base; the time it began and its outcome."""
    namespace = f"soak-{uuid.uuid4().hex[:12]}"
    env = {"ACCORD_TEST_BREAK": ",".join(plan.breaks)} if plan.breaks else {}
    with fault_cluster(base / "cluster", env=env) as cluster:
        faults = [n for name in plan.nemeses for n in NEMESES[name](events, cluster, plan.seed)]
        origin = time.monotonic()
        recorder = Recorder()
        try:
            run = WORKLOADS[plan.workload]
            return origin, await run(plan, cluster, faults, namespace, recorder, events)
        except Exception as error:  # the run is void, not failed: say why
            return origin, Outcome(recorder, None, "none", 0.0, void=f"{error!r}")


def summarize(plan: Plan, outcome: Outcome, events: Events, origin: float) -> dict[str, Any]:
    c = outcome.recorder.counts
    verdict = {True: "valid", False: "INVALID", None: "unknown (checker timed out)"}
    window = outcome.window
    return {
        "workload": plan.workload,
        "nemeses": list(plan.nemeses),
        "duration": plan.duration,
        "seed": plan.seed,
        "breaks": list(plan.breaks),
        "operations": c["ok"] + c["failed"] + c["indeterminate"],
        "ok": c["ok"],
        "failed": c["failed"],
        "indeterminate": c["indeterminate"],
        "in_history": len(outcome.recorder.operations),
        "errors": {k: v for k, v in c.items() if k not in ("ok", "failed", "indeterminate")},
        "nemesis_events": {a: events.count(a) for a in ("start", "stop", "skip")},
        "checker": outcome.checker,
        "checker_seconds": round(outcome.check_seconds, 6),
        "verdict": f"void: {outcome.void}" if outcome.void else verdict[outcome.ok],
        "notes": outcome.problems,
        "window": None
        if window is None
        else {
            "prefix": window.prefix,
            "cut_seconds": round(window.cut - origin, 3),
            "partition": repr(window.partition),
            "operations": len(window.operations),
            "stuck": len(window.stuck),
            "checks": window.checks,
            "seconds": round(outcome.window_seconds, 3),
        },
    }


def markdown(summary: dict[str, Any], outcome: Outcome, events: Events, origin: float) -> str:
    s = summary
    lines = [
        f"# Soak: {s['workload']}, seed {s['seed']}, {s['duration']:g} s",
        "",
        f"Nemeses: {', '.join(s['nemeses']) or 'none'}."
        + (f" Replicas broken on purpose: {', '.join(s['breaks'])}." if s["breaks"] else ""),
        "",
        "| operations | ok | failed | indeterminate | nemesis starts / stops / skips "
        "| checker | checker time | verdict |",
        "|---|---|---|---|---|---|---|---|",
        f"| {s['operations']} | {s['ok']} | {s['failed']} | {s['indeterminate']} "
        f"| {s['nemesis_events']['start']} / {s['nemesis_events']['stop']} / "
        f"{s['nemesis_events']['skip']} | {s['checker']} | {s['checker_seconds'] * 1000:.1f} ms "
        f"| **{s['verdict']}** |",
        "",
        f"Errors by type, resent and replayed writes: {s['errors'] or 'none'}.",
        "",
        "## Nemesis events",
        "",
        "| time (s) | nemesis | action | target |",
        "|---|---|---|---|",
        *(
            f"| {e.began - origin:.2f} | {e.nemesis} | {e.action} | {e.target} |"
            for e in sorted(events.events, key=lambda e: e.began)
        ),
        "",
        "## Checker notes",
        "",
        *(f"- {note}" for note in s["notes"] or ["none"]),
    ]
    window = outcome.window
    if window is not None:
        w = s["window"]
        lines += [
            "",
            "## Smallest failing window",
            "",
            f"The shortest rejected prefix holds {w['prefix']} operations (cut at "
            f"{w['cut_seconds']:.3f} s; {w['checks']} checks, {w['seconds']:.2f} s). Key "
            f"{w['partition']}: {w['operations']} operations around where the checker got "
            f"stuck (history_failing.jsonl; an operation still running at the cut shows "
            f"INDETERMINATE):",
            "",
            table(window, origin),
        ]
    if s["cluster"]:
        lines += ["", f"Process logs kept in {s['cluster']}."]
    return "\n".join(lines) + "\n"
