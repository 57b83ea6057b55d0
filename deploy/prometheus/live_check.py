"""Runs the dashboard's and the rules' queries against a real Prometheus scraping a real
replica, on loopback: a private etcd, one `accord serve --metrics-listen`, Debian's
`prometheus` with deploy/prometheus/rules.yml, some traffic from the Python client (puts,
a refused CAS, a contended lock handed off, a lock wait timed out, a fenced write refused,
leases, a session update, a decided and an open vote),
then every query of deploy/grafana/dashboards/accord.json and every rule, through
Prometheus's HTTP API. Prints each query's series count; run by `deploy/validate.sh --live`.

    .venv/bin/python deploy/prometheus/live_check.py

Error handling: exit 1 if a query is refused by Prometheus (bad PromQL), if a panel that
the traffic must feed stays empty, or if a process does not start in 30 s; the processes
it started are stopped on every exit. Panels the traffic cannot feed (deadlocks, timeouts,
refusals, leader changes) may be empty and are listed as such.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from pycrdt import Text

from accord.client import (
    AsyncClient,
    ConditionFailedError,
    Expect,
    FencedError,
    LockTimeoutError,
    Rule,
    ops,
)

DEPLOY = Path(__file__).resolve().parent.parent
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "accord.json"
RULES = DEPLOY / "prometheus" / "rules.yml"
SUBSTITUTE = {"$__rate_interval": "1m", "$__range": "5m", "$instance": ".*", "$namespace": ".*"}
# Panel queries ("title [legend]") whose series this traffic never creates.
MAY_BE_EMPTY = (
    "Share of calls by status code",  # every code but OK: only the refused CAS
    "Error ratio by method",
    "Deadlocks by policy",
    "Leases granted and expired/s [expired]",
    "etcd leader changes",
    "Idempotent replays/s",
    "Auth refusals/s",
    "Quota refusals/s",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.2)
    raise SystemExit(f"live_check: {what} did not listen on {port} within 30 s")


@contextlib.contextmanager
def started(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def query(prom: int, expr: str) -> list[object]:
    url = f"http://127.0.0.1:{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            body = json.load(answer)
    except urllib.error.HTTPError as refused:
        raise SystemExit(f"live_check: Prometheus refused {expr!r}: {refused.read()!r}") from None
    result: list[object] = body["data"]["result"]
    return result


async def traffic(address: str) -> None:
    async with (
        AsyncClient(address, agent_id="a", namespace="live-a") as a,
        AsyncClient(address, agent_id="b", namespace="live-a") as b,
    ):
        for i in range(20):
            await a.kv.put(f"k/{i}", b"v")
        with contextlib.suppress(ConditionFailedError):
            await a.kv.put("k/0", b"w", expect=Expect(absent=True))
        async with await a.leases.grant(ttl=10) as la, await b.leases.grant(ttl=10) as lb:
            async with a.locks.hold("doc", la, wait=10):
                waiter = asyncio.create_task(b.locks.acquire("doc", lb, wait=10))
                await asyncio.sleep(0.3)
            grant = await waiter
            with contextlib.suppress(LockTimeoutError):  # a timeout
                await a.locks.acquire("doc", la, wait=0.2)
            await b.locks.release(grant)
            with contextlib.suppress(FencedError):  # a fenced write refused
                await b.kv.put("doc/body", b"late", fence=grant)
        async with a.session("notes") as doc:  # opened or created, and subscribed
            doc.get("t", type=Text).insert(0, "hello")
        await b.sessions.apply("notes", ops.text_insert("t", 0, "hi "))
        ballot = {"rule": Rule.majority(), "voting_period": 60}
        vote = await a.votes.propose("ship?", ["yes", "no"], voters={"a": 1}, **ballot)
        await a.votes.cast(vote.id, "yes")
        await a.votes.wait(vote.id)
        await a.votes.propose("later?", ["yes", "no"], voters={"a": 1, "b": 1}, **ballot)


def main() -> int:
    for tool in ("etcd", "prometheus"):
        if not shutil.which(tool):
            raise SystemExit(f"live_check: needs {tool} (Debian: etcd-server, prometheus)")
    work = Path(tempfile.mkdtemp(prefix="accord-live-"))
    etcd_port, peer, grpc_port, metrics, prom = (free_port() for _ in range(5))
    accord = [sys.executable, "-m", "accord.coordinator", "serve"]
    config = work / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: [{RULES}]\n"
        "scrape_configs:\n"
        "  - job_name: accord\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{metrics}']}}]\n"
    )
    try:
        with (
            started(
                ["etcd", "--data-dir", str(work / "etcd"),
                 "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
                 "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
                 "--listen-peer-urls", f"http://127.0.0.1:{peer}"],
                work / "etcd.log",
            ),
            started(
                [*accord, "--etcd", f"127.0.0.1:{etcd_port}", "--listen", f"127.0.0.1:{grpc_port}",
                 "--ws-listen", "", "--metrics-listen", f"127.0.0.1:{metrics}"],
                work / "accord.log",
            ),
            started(
                ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={work / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{prom}"],
                work / "prometheus.log",
            ),
        ):  # fmt: skip
            for port, what in ((grpc_port, "accord"), (metrics, "/metrics"), (prom, "prometheus")):
                wait_port(port, what)
            asyncio.run(traffic(f"127.0.0.1:{grpc_port}"))
            scraped(prom)
            return report(prom)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def scraped(prom: int) -> None:
    """Until Prometheus holds 5 successful scrapes taken after the traffic (a rate needs
    two samples; rules need an evaluation), at most 60 s."""
    after = time.time()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(1)
        since = int(time.time() - after) + 1
        found = query(prom, f'sum_over_time(up{{job="accord"}}[{since}s])')
        if found and float(found[0]["value"][1]) >= 5:  # type: ignore[index]
            return
    duration = query(prom, "scrape_duration_seconds")
    raise SystemExit(f"live_check: fewer than 5 scrapes in 60 s (last took {duration})")


def report(prom: int) -> int:
    board = json.loads(DASHBOARD.read_text())
    failed = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for k, v in SUBSTITUTE.items():
                expr = expr.replace(k, v)
            found = len(query(prom, expr))
            name = f"{panel['title']} [{target['legendFormat']}]"
            expected = not name.startswith(MAY_BE_EMPTY)
            mark = "ok" if found else ("EMPTY" if expected else "empty (allowed)")
            print(f"{found:3d} series  {mark:16s} {name}")
            if expected and not found:
                failed.append(name)
    for name in ("accord:grpc_server_handled:rate5m", "accord:grpc_server_fault_ratio:rate5m"):
        found = len(query(prom, name))
        print(f"{found:3d} series  {'ok' if found else 'EMPTY':16s} rule {name}")
        if not found:
            failed.append(name)
    if failed:
        print(f"live_check: no series for {failed}", file=sys.stderr)
        return 1
    print("live_check: every query answered")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
