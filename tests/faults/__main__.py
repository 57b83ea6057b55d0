"""Command line of the fault suite: `python -m tests.faults soak ...` (tests/faults/soak.py).

Exit status: 0 when the checker accepted the history, 1 when it rejected it or could not
decide, 2 on bad arguments.

Error handling: a run that could not be made (a cluster that did not start, a nemesis
that did not heal) ends with its traceback, status 1.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from tests.faults.soak import NEMESES, WORKLOADS, Plan, soak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("soak", help="one workload under nemeses, checked, reported")
    run.add_argument("--workload", choices=sorted(WORKLOADS), required=True)
    run.add_argument(
        "--nemesis", choices=sorted(NEMESES), action="append", default=[],
        help="repeatable; none: the workload runs without faults",
    )  # fmt: skip
    run.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    run.add_argument("--seed", type=int, default=None, help="default: random, printed")
    run.add_argument("--interval", type=float, default=1.5, help="seconds between toggles")
    run.add_argument(
        "--break", dest="breaks", action="append", default=[], metavar="NAME",
        help="test-only bug for the replicas (ACCORD_TEST_BREAK, e.g. kv.stale_reads)",
    )  # fmt: skip
    run.add_argument("--out", type=Path, required=True, help="directory for the files")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    print(f"seed={seed}", flush=True)
    plan = Plan(
        args.workload, tuple(args.nemesis), args.duration, seed, args.interval,
        breaks=tuple(args.breaks),
    )  # fmt: skip
    ok = soak(plan, args.out)
    print((args.out / "report.md").read_text())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
