"""Every benchmark suite in one command, repeated in rounds, with a readable report.

    python -m benchmarks                       # every suite, 3 rounds
    python -m benchmarks --quick               # CI's smoke run: short runs, 1 round
    python -m benchmarks --only kv_cas,locks --rounds 5 --out DIR
    python -m benchmarks --report DIR          # the report and plots again, from DIR's
                                               # results.json (its suites' JSON read again)

Each round runs every chosen suite once, in turn (so load from elsewhere falls on every
suite, not on one), each as its own process (`python -m benchmarks.<suite>`, see
benchmarks/suites.py) with its own etcd and replicas. Written to --out (default
benchmarks/results/<UTC time>/):
- results.json: the machine, and per suite and round the load average before and after,
  the suite's raw JSON, its Results and its Ratios to its peer;
- report.md: the issue's targets met or missed, then per suite the median of the
  per-round ratios with their min-max, the median figures per mode, the load averages,
  and the plots;
- PNG plots (benchmarks/plots.py); each suite's raw JSON and output under raw/.

Error handling: a suite that fails, times out or writes JSON its readout cannot read is
recorded as a failed round (its output's tail in results.json and report.md) and the
other suites still run; the command then exits with status 1. A suite that overruns its
time (3 min quick, 1 h full) is interrupted as by Ctrl-C, so that it stops the etcd and
replicas it started, then killed with its process group if it does not end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.common import Readout
from benchmarks.suites import SUITES, Suite

REPO = Path(__file__).resolve().parent.parent
QUICK_TIMEOUT = 180.0  # seconds one suite may take in a quick run
FULL_TIMEOUT = 3600.0


def machine() -> dict[str, Any]:
    def git(*words: str) -> str:
        try:
            done = subprocess.run(
                ["git", *words], cwd=REPO, capture_output=True, text=True, timeout=10, check=False
            )
        except OSError:
            return ""
        return done.stdout.strip()

    memory = next(
        (line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
         if line.startswith("MemTotal:")),
        "0",
    )  # fmt: skip
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(int(memory) / 2**20, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "commit": git("rev-parse", "--short", "HEAD"),
        "modified_files": git("status", "--porcelain", "--untracked-files=no").splitlines(),
    }


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_suite(suite: Suite, quick: bool, out: Path, round_no: int) -> dict[str, Any]:
    """One round of one suite, in its own process group."""
    raw_dir = out / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    raw_path = raw_dir / f"{suite.name}-{round_no}.json"
    log_path = raw_dir / f"{suite.name}-{round_no}.log"
    command = [sys.executable, "-m", f"benchmarks.{suite.name}", *suite.args(quick)]
    command += ["--out", str(raw_path)]
    env = {**os.environ, "ACCORD_LOG_LEVEL": os.environ.get("ACCORD_LOG_LEVEL", "warning")}
    found: dict[str, Any] = {"round": round_no, "command": command[1:], "load_before": load()}
    started = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        timeout = QUICK_TIMEOUT if quick else FULL_TIMEOUT
        try:
            code = proc.wait(timeout)
            outcome = f"exit status {code}"
        except subprocess.TimeoutExpired:
            stop_group(proc)
            code, outcome = None, f"stopped after {timeout:g} s"
        except BaseException:  # Ctrl-C: leave no suite running behind
            stop_group(proc)
            raise
    found["seconds"] = round(time.monotonic() - started, 1)
    found["load_after"] = load()
    found["ok"], found["error"] = False, ""
    if code != 0:
        found["error"] = f"{outcome}: " + tail(log_path)
        return found
    try:
        raw = json.loads(raw_path.read_text())
        readout = suite.readout(raw)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as failed:
        found["error"] = f"unreadable results: {type(failed).__name__}: {failed}"
        return found
    found.update(ok=True, raw=raw, **readable(readout))
    return found


def readable(readout: Readout) -> dict[str, Any]:
    return {
        "title": readout.title,
        "results": [asdict(r) for r in readout.results],
        "ratios": [asdict(r) for r in readout.ratios],
    }


def read_again(data: dict[str, Any]) -> None:
    """Each good round's results and ratios from its suite's JSON, by today's readouts."""
    suites = {s.name: s for s in SUITES}
    for name, suite in data["suites"].items():
        for found in suite["rounds"]:
            if found.get("ok") and name in suites:
                found.update(readable(suites[name].readout(found["raw"])))


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """The suite's process group: first as Ctrl-C would, so that the suite's own cleanup
    stops the etcd and replicas it started (each in a session of its own), then harder."""
    for sig, wait in ((signal.SIGINT, 20.0), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def main() -> None:
    names = [s.name for s in SUITES]
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="short runs (CI's smoke run)")
    parser.add_argument("--only", default="", help=f"comma-separated, of: {','.join(names)}")
    parser.add_argument("--rounds", type=int, default=None, help="default 3 (--quick: 1)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--report", type=Path, metavar="DIR", help="redo DIR's report only")
    args = parser.parse_args()
    if args.report:
        earlier = json.loads((args.report / "results.json").read_text())
        read_again(earlier)
        print(report.write(earlier, args.report))
        return
    only = [n for n in args.only.split(",") if n]
    unknown = sorted(set(only) - set(names))
    if unknown:
        parser.error(f"no suite {', '.join(unknown)}; the suites: {', '.join(names)}")
    chosen = [s for s in SUITES if not only or s.name in only]
    rounds = args.rounds or (1 if args.quick else 3)
    stamp = datetime.now(UTC)
    out: Path = args.out or REPO / "benchmarks" / "results" / stamp.strftime("%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "started": stamp.isoformat(timespec="seconds"),
        "args": {"quick": args.quick, "rounds": rounds, "only": [s.name for s in chosen]},
        "machine": machine(),
        "suites": {s.name: {"rounds": []} for s in chosen},
    }
    failed = 0
    for round_no in range(1, rounds + 1):
        for suite in chosen:
            print(f"round {round_no}/{rounds}: {suite.name} ...", end=" ", flush=True)
            found = run_suite(suite, args.quick, out, round_no)
            data["suites"][suite.name]["rounds"].append(found)
            failed += not found["ok"]
            print(f"{found['seconds']} s" if found["ok"] else f"FAILED\n{found['error']}")
    data["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    (out / "results.json").write_text(json.dumps(data, indent=1))
    print(f"report: {report.write(data, out)}")
    if failed:
        print(f"{failed} suite round(s) failed", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
