"""`accord status` over deploy/local-cluster.sh (3 etcd members, 2 replicas): every member
is listed with the one leader they agree on; a member that is paused (it accepts the
connection and never answers) is shown unhealthy, within the probe's bound, beside the
two that answer, and the replica still answers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.substrate.test_etcd_cluster import _leader, cluster  # noqa: F401 (a fixture)


async def _status(address: str) -> dict[str, Any]:
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "accord.coordinator", "status", address, "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    [entry] = json.loads(done.stdout)
    status: dict[str, Any] = entry["status"]
    return status


async def test_every_member_and_the_leader_and_a_paused_member_shown_unhealthy(
    cluster: tuple[Path, dict[str, str]],  # noqa: F811
) -> None:
    directory, env = cluster
    members = env["ACCORD_ETCD"].split(",")
    address = env["ACCORD_ADDR"].split(",")[0]
    leader = members[_leader(env["ACCORD_ETCD"])]

    status = await _status(address)
    endpoints = status["etcd"]["endpoints"]
    assert [e["endpoint"] for e in endpoints] == members
    assert all(e["healthy"] for e in endpoints), endpoints
    assert len({e["member_id"] for e in endpoints}) == 3
    assert {e["leader_id"] for e in endpoints} == {status["etcd"]["leader_id"]}
    assert status["etcd"]["leader_endpoint"] == leader

    follower = next(i for i, m in enumerate(members) if m != leader)
    pid = int((directory / f"etcd-{follower}.pid").read_text())
    os.kill(pid, signal.SIGSTOP)
    try:
        status = await _status(address)
    finally:
        os.kill(pid, signal.SIGCONT)
    by_endpoint = {e["endpoint"]: e for e in status["etcd"]["endpoints"]}
    paused = by_endpoint[members[follower]]
    assert paused["healthy"] is False and "DEADLINE_EXCEEDED" in paused["error"], paused
    assert [m for m in members if by_endpoint[m]["healthy"]] == [
        m for i, m in enumerate(members) if i != follower
    ]
    assert status["etcd"]["leader_endpoint"] == leader
