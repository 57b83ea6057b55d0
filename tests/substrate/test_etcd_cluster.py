"""The deploy/local-cluster.sh deployment: 3 etcd members and 2 replicas on loopback.
Losing the etcd leader, then a replica, loses no acknowledged write."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import ETCDCTL, REPO, make_client

SCRIPT = REPO / "deploy" / "local-cluster.sh"


def _script(action: str, directory: Path, base: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ACCORD_BASE_PORT": str(base), "ACCORD_PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(SCRIPT), action, str(directory)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    for _ in range(3):  # another process may hold one of the 8 ports: try another base
        base = random.randrange(30000, 60000, 200)
        up = _script("up", tmp_path, base)
        if up.returncode == 0:
            break
    else:
        raise AssertionError(f"local-cluster.sh up failed: {up.stderr}")
    env = dict(line.split("=", 1) for line in (tmp_path / "endpoints.env").read_text().split())
    try:
        yield tmp_path, env
    finally:
        down = _script("down", tmp_path, base)
        assert down.returncode == 0, down.stderr


def _leader(endpoints: str) -> int:
    out = subprocess.run(
        [ETCDCTL, f"--endpoints={endpoints}", "endpoint", "status", "-w", "json"],
        env={**os.environ, "ETCDCTL_API": "3"},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    for i, member in enumerate(json.loads(out.stdout)):
        if member["Status"]["leader"] == member["Status"]["header"]["member_id"]:
            return i
    raise AssertionError("no etcd leader")


async def test_survives_losing_the_etcd_leader_and_a_replica(
    cluster: tuple[Path, dict[str, str]], namespace: str
) -> None:
    directory, env = cluster
    addresses = env["ACCORD_ADDR"].split(",")
    async with make_client(addresses, namespace, timeout=20) as c:
        for i in range(10):
            await c.kv.put(f"before/{i}", str(i))
        leader = _leader(env["ACCORD_ETCD"])
        os.kill(int((directory / f"etcd-{leader}.pid").read_text()), signal.SIGKILL)
        for _ in range(10):  # writes go on once the two survivors elect a leader
            await c.kv.update("counter", lambda v: str(int(v or b"0") + 1).encode())
        os.kill(int((directory / "coordinator-0.pid").read_text()), signal.SIGKILL)
        for _ in range(10):
            await c.kv.update("counter", lambda v: str(int(v or b"0") + 1).encode())
        counter = await c.kv.get("counter")
        assert counter is not None and counter.value == b"20"
        before = await c.kv.list("before/")
        assert [kv.value for kv in before.kvs] == [str(i).encode() for i in range(10)]
