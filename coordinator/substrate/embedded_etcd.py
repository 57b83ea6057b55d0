"""A private single-member etcd for `accord serve` without --etcd.

Data lives in {data_dir}/etcd so a restart keeps it; the ports chosen on first start are
remembered beside it and reused. The process stops with the coordinator: on a graceful
stop we terminate it; if the coordinator is killed, the kernel signals etcd (parent-death
signal), and an etcd left over from a crash is found by its pid file and stopped before
a new one starts on the same data.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from accord.coordinator import logs

_log = logs.get("accord.embedded_etcd")


class EtcdNotInstalled(RuntimeError):
    pass


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """SIGTERM this process when its parent dies (Linux): runs in etcd's child before
    exec, and first thing in a worker (workers.py)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _stop_leftover(pid_file: Path, data_dir: Path) -> None:
    """Stop an etcd that a crashed coordinator left running on this data dir."""
    try:
        pid = int(pid_file.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return
    if str(data_dir).encode() not in cmdline:
        return  # the pid was reused by an unrelated process
    _log.warning("stopping an etcd left over from an earlier run", pid=pid)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.05)
    if Path(f"/proc/{pid}").exists():
        os.kill(pid, signal.SIGKILL)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class EmbeddedEtcd:
    def __init__(self, data_dir: Path, *, binary: str | None = None) -> None:
        self.data_dir = data_dir
        found = (
            binary
            or shutil.which("etcd")
            or ("/usr/bin/etcd" if Path("/usr/bin/etcd").exists() else None)
        )
        if not found:
            raise EtcdNotInstalled(
                "etcd is not installed: install it (Debian: apt-get install etcd-server) or "
                "point Accord at a cluster with --etcd host:port"
            )
        self.binary = found
        self.process: subprocess.Popen[bytes] | None = None
        self.endpoint = ""

    def _ports(self) -> tuple[int, int]:
        state = self.data_dir / "etcd-ports.json"
        if state.exists():
            saved = json.loads(state.read_text())
            client, peer = int(saved["client"]), int(saved["peer"])
            if _port_free(client) and _port_free(peer):
                return client, peer
        client, peer = _free_port(), _free_port()
        state.write_text(json.dumps({"client": client, "peer": peer}))
        return client, peer

    async def start(self, timeout: float = 30.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        pid_file = self.data_dir / "etcd.pid"
        _stop_leftover(pid_file, self.data_dir / "etcd")
        client, peer = self._ports()
        client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        log_file = (self.data_dir / "etcd.log").open("ab")
        self.process = subprocess.Popen(  # noqa: ASYNC220 - spawning returns at once
            [
                self.binary,
                "--name",
                "accord",
                "--data-dir",
                str(self.data_dir / "etcd"),
                "--listen-client-urls",
                client_url,
                "--advertise-client-urls",
                client_url,
                "--listen-peer-urls",
                peer_url,
                "--initial-advertise-peer-urls",
                peer_url,
                "--initial-cluster",
                f"accord={peer_url}",
                "--auto-compaction-mode",
                "periodic",
                "--auto-compaction-retention",
                "24h",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - only prctl, before any thread runs
        )
        log_file.close()
        pid_file.write_text(str(self.process.pid))
        self.endpoint = f"127.0.0.1:{client}"
        await self._wait_ready(client, timeout)
        _log.info(
            "embedded etcd started",
            endpoint=self.endpoint,
            data_dir=str(self.data_dir),
            pid=self.process.pid,
        )
        return self.endpoint

    async def _wait_ready(self, port: int, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = 0.05
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"embedded etcd exited with {self.process.returncode}; "
                    f"see {self.data_dir / 'etcd.log'}"
                )
            try:
                _reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return
            except OSError:
                if loop.time() > deadline:
                    raise RuntimeError("embedded etcd did not start listening in time") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)

    async def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            await asyncio.to_thread(self.process.wait, timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            await asyncio.to_thread(self.process.wait)
        (self.data_dir / "etcd.pid").unlink(missing_ok=True)
        _log.info("embedded etcd stopped", code=self.process.returncode)
