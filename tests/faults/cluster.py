"""A fault cluster: 3 etcd members and 2-3 Accord replicas on loopback (free ports, a temp
dir), every process controllable on its own, and every network link through a proxy.

    with fault_cluster(tmp_path, replicas=2) as cluster:
        async with cluster.client(namespace) as c: ...      # dials the client links
        cluster.replicas[0].kill(); cluster.members[1].pause(); ...
        cluster.proxies.set(cluster.etcd_link(0, 2), Mode.BLACKHOLE)

Links (tests.faults.proxy), when `proxied` (the default):
- replica i to etcd member m: `etcd_link(i, m)`; replica i is configured with its own
  link to each member, so cutting one replica off etcd leaves the others connected;
- clients to replica i: `client_link(i)`, shared by every client of the cluster
  (`client_addresses()`); `direct_addresses()` bypass the proxies.
etcd members talk to each other directly (peer traffic is not proxied).

Each replica's vote clock can be skewed (ACCORD_TEST_CLOCK_OFFSET_FILE, `clock_file(i)`).
The replicas run without auth (the fault suite is left out of the auth-required pass) and
with the environment given (e.g. ACCORD_TEST_BREAK, ACCORD_FAILPOINTS).

Error handling: a process that does not start in time raises (TimeoutError or
RuntimeError from tests.harness) with its log path; `close()` kills whatever still runs,
resuming paused processes first, and never raises.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from accord.client import AsyncClient
from tests.faults.proxy import Proxies
from tests.harness import ETCD, Coordinator, EtcdMember, free_port, make_client, wait_for_port


@dataclass
class ClusterMember(EtcdMember):
    """An etcd member of a multi-member cluster. `start()` (also a restart, which reuses
    the data dir's membership) waits until the member answers as part of a quorum;
    `spawn()` and `wait_ready()` start several members at once."""

    initial_cluster: str = ""
    token: str = ""

    def spawn(self) -> None:
        client, peer = f"http://127.0.0.1:{self.client_port}", f"http://127.0.0.1:{self.peer_port}"
        # fmt: off
        self._spawn([
            ETCD, "--name", self.name, "--data-dir", str(self.data_dir),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", self.initial_cluster,
            "--initial-cluster-token", self.token, "--initial-cluster-state", "new",
        ])
        # fmt: on

    def wait_ready(self, timeout: float = 30) -> None:
        wait_for_port(self.client_port, timeout, self.popen)
        deadline = time.monotonic() + timeout
        while True:  # healthy = this member serves a quorum read
            try:
                self.ctl("endpoint", "health", "--command-timeout=2s")
                return
            except subprocess.CalledProcessError:
                if time.monotonic() > deadline or not self.running():
                    raise TimeoutError(f"{self.name} not healthy; see {self.log}") from None
                time.sleep(0.2)

    def start(self) -> None:
        self.spawn()
        self.wait_ready()


@dataclass
class FaultCluster:
    base: Path
    members: list[ClusterMember]
    replicas: list[Coordinator]
    proxies: Proxies
    proxied: bool
    _closed: bool = field(default=False, repr=False)

    @staticmethod
    def etcd_link(replica: int, member: int) -> str:
        return f"replica-{replica}->etcd-{member}"

    @staticmethod
    def client_link(replica: int) -> str:
        return f"clients->replica-{replica}"

    def clock_file(self, replica: int) -> Path:
        """The file holding replica's clock offset in seconds (accord's substrate/clock.py:
        its votes read time.time() plus it); ClockSkew writes it."""
        return self.base / f"replica-{replica}.clock-offset"

    def client_addresses(self) -> list[str]:
        """Where clients dial: the client links (the replicas themselves when not proxied)."""
        if not self.proxied:
            return self.direct_addresses()
        return [self.proxies.address(self.client_link(i)) for i in range(len(self.replicas))]

    def direct_addresses(self) -> list[str]:
        return [r.address for r in self.replicas]

    def etcd_endpoints(self) -> list[str]:
        """The members' own client endpoints (for a checker reading etcd directly)."""
        return [m.endpoint for m in self.members]

    def client(self, namespace: str, agent: str = "tester", **kwargs: object) -> AsyncClient:
        """A client of every replica through the client links (make_client's options)."""
        return make_client(self.client_addresses(), namespace, agent, **kwargs)  # type: ignore[arg-type]

    def quorum(self) -> int:
        return len(self.members) // 2 + 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for process in [*self.replicas, *self.members]:
            with contextlib.suppress(Exception):
                if process.running():
                    process.resume()  # a stopped process dies of SIGKILL too; be plain
                    process.kill()
        self.proxies.close()


def start_cluster(
    base: Path,
    *,
    members: int = 3,
    replicas: int = 2,
    proxied: bool = True,
    env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
    ws: bool = False,
) -> FaultCluster:
    """Start etcd members (all at once: they need each other for a quorum), then the
    replicas over them, then return once every replica serves."""
    base.mkdir(parents=True, exist_ok=True)
    ports = [(free_port(), free_port()) for _ in range(members)]
    initial = ",".join(f"etcd-{m}=http://127.0.0.1:{peer}" for m, (_, peer) in enumerate(ports))
    started = [
        ClusterMember(
            name=f"etcd-{m}",
            log=base / f"etcd-{m}.log",
            data_dir=base / f"etcd-{m}",
            client_port=client,
            peer_port=peer,
            initial_cluster=initial,
            token=f"fault-{base.name}",
        )
        for m, (client, peer) in enumerate(ports)
    ]
    proxies = Proxies()
    proxies.start()
    cluster = FaultCluster(base, started, [], proxies, proxied)
    try:
        for member in started:
            member.spawn()
        for member in started:
            member.wait_ready()
        for i in range(replicas):
            endpoints = [
                proxies.add(cluster.etcd_link(i, m), "127.0.0.1", member.client_port)
                if proxied
                else member.endpoint
                for m, member in enumerate(started)
            ]
            offset = cluster.clock_file(i)
            offset.write_text("0")
            replica = Coordinator(
                name=f"replica-{i}",
                log=base / f"replica-{i}.log",
                port=free_port(),
                etcd_endpoints=endpoints,
                extra_args=list(extra_args or []),
                env={"ACCORD_TEST_CLOCK_OFFSET_FILE": str(offset), **(env or {})},
                ws=ws,
            )
            cluster.replicas.append(replica)
            replica.start()
            if proxied:
                proxies.add(cluster.client_link(i), "127.0.0.1", replica.port)
    except BaseException:
        cluster.close()
        raise
    return cluster


@contextlib.contextmanager
def fault_cluster(base: Path, **options: object) -> Iterator[FaultCluster]:
    """start_cluster(base, **options), closed at the end whatever happened."""
    cluster = start_cluster(base, **options)  # type: ignore[arg-type]
    try:
        yield cluster
    finally:
        cluster.close()
