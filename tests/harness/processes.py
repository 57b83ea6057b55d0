"""Real processes for tests: etcd members and coordinator replicas, and the fault helpers
(kill, pause, restart) every test reuses. Nothing here stands in for etcd."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.harness.auth import AUTH_REQUIRED

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"
REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on port {port} after {timeout}s") from None
            time.sleep(delay)
            delay = min(delay * 2, 0.3)


def listening_pids(port: int) -> set[int]:
    """The processes listening on a TCP port (`ss`; several under SO_REUSEPORT)."""
    listed = subprocess.run(
        ["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, check=True
    )
    return {int(part.split("=")[1]) for part in listed.stdout.split(",") if part.startswith("pid=")}


@dataclass
class Process:
    name: str
    log: Path
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def kill(self) -> None:
        """Die at once, like a crash: no graceful shutdown."""
        if self.running():
            assert self.popen is not None
            self.popen.kill()
            self.popen.wait(10)

    def terminate(self, timeout: float = 15) -> int:
        """Graceful stop (SIGTERM); returns the exit code."""
        assert self.popen is not None
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
                raise
        return self.popen.returncode

    def pause(self) -> None:
        """Freeze the process (SIGSTOP), like a long GC pause or a stalled VM."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)


@dataclass(frozen=True)
class StoredKey:
    """One etcd key as etcdctl reports it."""

    key: bytes
    value: bytes
    version: int
    create_revision: int
    mod_revision: int
    lease: int = 0

    @classmethod
    def from_json(cls, kv: dict[str, Any]) -> StoredKey:
        # etcdctl's JSON gives bytes in base64 and leaves out fields that are zero.
        return cls(
            key=base64.b64decode(kv["key"]),
            value=base64.b64decode(kv.get("value", "")),
            version=int(kv.get("version", 0)),
            create_revision=int(kv.get("create_revision", 0)),
            mod_revision=int(kv.get("mod_revision", 0)),
            lease=int(kv.get("lease", 0)),
        )


@dataclass
class EtcdMember(Process):
    data_dir: Path = Path()
    client_port: int = 0
    peer_port: int = 0

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def start(self) -> None:
        client, peer = f"http://127.0.0.1:{self.client_port}", f"http://127.0.0.1:{self.peer_port}"
        self._spawn(
            [
                ETCD,
                "--name",
                self.name,
                "--data-dir",
                str(self.data_dir),
                "--listen-client-urls",
                client,
                "--advertise-client-urls",
                client,
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                f"{self.name}={peer}",
            ]
        )
        wait_for_port(self.client_port, 30, self.popen)
        self.ctl("endpoint", "health")

    def ctl(self, *args: str) -> str:
        out = subprocess.run(
            [ETCDCTL, f"--endpoints={self.endpoint}", *args],
            env={**os.environ, "ETCDCTL_API": "3"},
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return out.stdout

    def revision(self) -> int:
        status = json.loads(self.ctl("endpoint", "status", "-w", "json"))
        return int(status[0]["Status"]["header"]["revision"])

    def kvs(self, key: str, *, prefix: bool = False) -> list[StoredKey]:
        """What etcd holds at key (every key under it, with prefix), in key order; read
        straight from etcd, to check what Accord wrote or that it wrote nothing."""
        found = json.loads(self.ctl("get", key, "-w", "json", *(["--prefix"] if prefix else [])))
        return [StoredKey.from_json(kv) for kv in found.get("kvs", [])]

    def stored(self, namespace: str, root: str = "accord") -> list[StoredKey]:
        """Every key of one namespace (under the replicas' root), to check that a refused
        call wrote nothing there: unlike etcd's revision, it does not move with other
        tests' background writes (leases expiring, answers stored, retention leases)."""
        return self.kvs(f"{root}/ns/{namespace}/", prefix=True)

    def revoke_leases_of(self, namespace: str, root: str = "accord") -> int:
        """Revoke every lease holding a key of one namespace (its retention leases among
        them, as if revoked by hand), never another test's; how many were revoked."""
        leases = {kv.lease for kv in self.stored(namespace, root) if kv.lease}
        for lease in leases:
            self.ctl("lease", "revoke", f"{lease:x}")
        return len(leases)

    def idempotency_records(
        self, namespace: str, agent: str, root: str = "accord"
    ) -> dict[str, StoredKey]:
        """One agent's request_id records in a namespace, by request_id."""
        prefix = f"{root}/ns/{namespace}/idem/{agent}".encode()  # etcdctl's argv: no NUL
        return {
            kv.key.removeprefix(prefix + b"\x00").decode(): kv
            for kv in self.kvs(prefix.decode(), prefix=True)
            if kv.key.startswith(prefix + b"\x00")
        }

    def compact(self) -> int:
        """Compact etcd's history up to now; returns the compaction revision."""
        revision = self.revision()
        self.ctl("compact", str(revision), "--physical")
        return revision


def start_etcd(base: Path, name: str = "etcd") -> EtcdMember:
    data = base / name
    member = EtcdMember(
        name=name,
        log=base / f"{name}.log",
        data_dir=data,
        client_port=free_port(),
        peer_port=free_port(),
    )
    member.start()
    return member


@dataclass
class Coordinator(Process):
    port: int = 0
    etcd_endpoints: list[str] = field(default_factory=list)
    extra_args: list[str] = field(default_factory=list)
    # The y-websocket endpoint's port; 0 picks a free one at start (and keeps it on restart).
    ws_port: int = 0
    # Extra environment for the process (e.g. ACCORD_FAILPOINTS).
    env: dict[str, str] = field(default_factory=dict)
    # Serve the y-websocket endpoint.
    ws: bool = True
    # For a replica serving TLS: (CA, client certificate, client key) to check its health
    # with; the certificate may be None when the replica requires none.
    tls_client: tuple[Path, Path | None, Path | None] | None = None
    # Serve /metrics (--metrics-listen) on this port; 0 picks a free one at start (and
    # keeps it on restart); None: metrics off (no metric is kept).
    metrics_port: int | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """The y-websocket base URL; a client appends /{namespace}/{session}."""
        return f"ws://127.0.0.1:{self.ws_port}"

    def start(self, timeout: float = 30) -> None:
        self.ws_port = (self.ws_port or free_port()) if self.ws else 0
        if self.metrics_port is not None:
            self.metrics_port = self.metrics_port or free_port()
        argv = [
            sys.executable,
            "-m",
            "accord.coordinator",
            "serve",
            "--listen",
            self.address,
            "--ws-listen",
            f"127.0.0.1:{self.ws_port}" if self.ws else "",
            "--replica",
            self.name,
            *(
                ["--metrics-listen", f"127.0.0.1:{self.metrics_port}"]
                if self.metrics_port is not None and "--metrics-listen" not in self.extra_args
                else []
            ),
            *self.extra_args,
        ]
        if self.etcd_endpoints:
            argv += ["--etcd", ",".join(self.etcd_endpoints)]
        self._spawn(
            argv,
            env={
                **os.environ,
                "ACCORD_LOG_LEVEL": os.environ.get("ACCORD_LOG_LEVEL", "info"),
                **self.env,
            },
        )
        try:
            wait_for_port(self.port, timeout, self.popen)
            wait_serving(self.address, timeout, self.tls_client)
            if self.ws:
                wait_for_port(self.ws_port, timeout, self.popen)
            if "--workers" in self.extra_args:  # the first serves before the others may
                count = int(self.extra_args[self.extra_args.index("--workers") + 1])
                self._wait_workers_listen(count, timeout)
        except BaseException:
            self.kill()  # a start that failed leaves nothing running (workers die with it)
            raise

    def _wait_workers_listen(self, count: int, timeout: float) -> None:
        """Until count workers listen on the gRPC port (a worker serves once it does:
        gRPC starts at once after it binds) and on the y-websocket port."""
        deadline = time.monotonic() + timeout
        while True:
            workers = set(self.workers().values())
            ports = [self.port, self.ws_port] if self.ws else [self.port]
            if len(workers) == count and all(listening_pids(p) >= workers for p in ports):
                return
            if not self.running() or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: {count} workers did not listen; see {self.log}")
            time.sleep(0.05)

    def restart(self) -> None:
        self.kill()
        self.start()

    def workers(self) -> dict[str, int]:
        """Under `serve --workers N`: each worker's replica id -> pid (the children of
        this process that run accord.coordinator.workers)."""
        listed = subprocess.run(
            ["pgrep", "-a", "-P", str(self.pid)], capture_output=True, text=True, check=False
        )
        found = {}
        for line in listed.stdout.splitlines():
            pid, *argv = line.split()
            if "accord.coordinator.workers" in argv:
                found[argv[-1]] = int(pid)
        return found


def start_coordinator(
    base: Path,
    name: str,
    etcd_endpoints: list[str],
    extra_args: list[str] | None = None,
    env: dict[str, str] | None = None,
    ws: bool = True,
    tls_client: tuple[Path, Path | None, Path | None] | None = None,
    metrics: bool = False,
) -> Coordinator:
    extra_args = list(extra_args or [])
    if AUTH_REQUIRED and etcd_endpoints and "--auth" not in extra_args:
        extra_args += ["--auth", "required"]  # see tests.harness.auth
    replica = Coordinator(
        name=name,
        log=base / f"{name}.log",
        port=free_port(),
        etcd_endpoints=etcd_endpoints,
        extra_args=extra_args,
        env=env or {},
        ws=ws,
        tls_client=tls_client,
        metrics_port=0 if metrics else None,
    )
    replica.start()
    return replica


def wait_serving(
    address: str, timeout: float, tls: tuple[Path, Path | None, Path | None] | None = None
) -> None:
    """Block until the replica's gRPC health check says SERVING (over TLS with the given
    CA, and client certificate and key, when it serves TLS)."""
    deadline = time.monotonic() + timeout
    if tls is None:
        opened = grpc.insecure_channel(address)
    else:
        ca, cert, key = tls
        credentials = grpc.ssl_channel_credentials(
            ca.read_bytes(),
            key.read_bytes() if key else None,
            cert.read_bytes() if cert else None,
        )
        opened = grpc.secure_channel(address, credentials)
    with opened as channel:
        grpc.channel_ready_future(channel).result(timeout=timeout)
        stub = health_pb2_grpc.HealthStub(channel)
        for update in stub.Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=max(0.1, deadline - time.monotonic())
        ):
            if update.status == health_pb2.HealthCheckResponse.SERVING:
                return
    raise TimeoutError(f"{address} did not become SERVING")
