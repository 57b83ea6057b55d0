"""`accord serve --workers N`: N replica processes on the same ports, under one supervisor.

A Python replica serves on one core (one event loop, one interpreter lock). To use more,
this process (the supervisor) runs N workers, each a whole replica (server.serve) with its
own replica id, `{replica}-w{i}` (`{host}:{port}-w{i}` by default), its own etcd
connections and its own event loop. They listen on the same gRPC and y-websocket ports
with SO_REUSEPORT, and the kernel spreads incoming connections over them: by connection,
not by call (a channel's calls all go to the worker that accepted it). Workers share
nothing but etcd, exactly like replicas on separate hosts, so together they behave as one
service; per-replica limits (request rates, open streams, concurrent RPCs, y-websocket
sockets) apply per worker. Each worker serves /metrics on a port of its own, --metrics-listen's
port + i (metrics_address), so Prometheus scrapes each worker as the replica it is.

Without --etcd the supervisor starts the one embedded etcd and hands its endpoint to every
worker. A port of 0 becomes one free port for all of them, kept (bound with SO_REUSEPORT,
not listening, so it takes no connections) until every worker listens on it.

Error handling: a port another process listens on is refused before anything starts
(PortInUse). A worker that exits before all have started serving (TLS files unreadable,
etcd not answering within 30 s) stops the command with exit code 1: a configuration error
does not get better by starting again. A worker that dies once the service is up (killed,
out of memory, a crash) is logged and started again after a backoff (0.5 s, doubling to
30 s, back to 0.5 s once a worker has served for a minute): its clients carry on with the
other workers meanwhile, as they would with another replica, and one crash does not take
the service down. SIGTERM or SIGINT sends SIGTERM to every worker (each drains as a single
replica does), kills any still running after the shutdown grace plus 10 s, then stops the
embedded etcd; the command exits 1 if a worker had to be killed or failed its own
shutdown, 0 otherwise. If the supervisor itself dies, the kernel sends each worker (and the
embedded etcd) SIGTERM (parent-death signal), so none outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import socket
import sys
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import structlog

from accord.coordinator import logs
from accord.coordinator.settings import Settings
from accord.coordinator.substrate.embedded_etcd import EmbeddedEtcd, die_with_parent

_log = logs.get("accord.workers")
T = TypeVar("T")
READY = b"serving\n"  # a worker's one line on its stdout, once it serves
FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0
HEALTHY_SECONDS = 60.0  # a worker that served this long was not crash-looping
KILL_AFTER_GRACE_SECONDS = 10.0
STOPPED_CLEANLY = (0, -signal.SIGTERM)  # drained, or stopped before it had a handler


class PortInUse(RuntimeError):
    pass


def reserve(address: str) -> tuple[str, socket.socket]:
    """host:port with a concrete port (0: a free one), and a socket that keeps the port
    for the workers: bound with SO_REUSEPORT, not listening (it takes no connections).
    PortInUse if another process listens there (gRPC's own SO_REUSEPORT would otherwise
    share the port with it without a word)."""
    host, _, port_text = address.rpartition(":")
    family, kind, _, _, where = socket.getaddrinfo(
        host.strip("[]") or None, int(port_text), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    with socket.socket(family, kind) as probe:  # no SO_REUSEPORT: fails beside any listener
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no use
        try:
            probe.bind(where)
        except OSError as exc:
            raise PortInUse(f"cannot listen on {address}: {exc.strerror}") from exc
        port: int = probe.getsockname()[1]
    held = socket.socket(family, kind)
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    held.bind((where[0], port, *where[2:]))
    return f"{host}:{port}", held


def metrics_address(address: str, worker: int) -> str:
    """Worker i's /metrics address: port + i (port 0: a free one each; empty: off). Each
    worker is a replica of its own, scraped as a target of its own; a port another
    process listens on is PortInUse before any worker starts."""
    if not address:
        return ""
    host, _, port = address.rpartition(":")
    if int(port) == 0:
        return address
    mine = f"{host}:{int(port) + worker}"
    reserve(mine)[1].close()  # only a check: the worker binds it
    return mine


@dataclass
class Worker:
    """One replica process and how to start it again."""

    settings: Settings
    process: asyncio.subprocess.Process | None = None
    serving_since: float | None = None

    @property
    def replica(self) -> str:
        return self.settings.replica

    async def spawn(self) -> None:
        """Start the process and hand it its settings (pickled: the same code reads them)."""
        self.serving_since = None
        self.process = process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "accord.coordinator.workers",
            str(os.getpid()),
            self.replica,  # for `ps`
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,  # signals come from the supervisor, not the terminal
        )
        assert process.stdin is not None
        with contextlib.suppress(ConnectionError):  # it died at once: ready() tells
            process.stdin.write(pickle.dumps(self.settings))
            await process.stdin.drain()
            process.stdin.close()
        _log.info("worker started", replica=self.replica, pid=process.pid)

    async def ready(self) -> bool:
        """Until the worker serves (True) or exits first (False)."""
        assert self.process is not None and self.process.stdout is not None
        if await self.process.stdout.readline() != READY:
            await self.process.wait()
            return False
        self.serving_since = asyncio.get_running_loop().time()
        return True


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.workers: list[Worker] = []
        self.embedded: EmbeddedEtcd | None = None

    async def start(self, stop: asyncio.Event) -> str | None:
        """Start the workers and wait until each serves (or stop is set); returns why the
        service cannot start, or None."""
        settings, held = self.settings, []
        try:
            listen, listening = reserve(settings.listen)
            held.append(listening)
            ws_listen = settings.ws_listen
            if ws_listen:
                ws_listen, ws_listening = reserve(ws_listen)
                held.append(ws_listening)
            endpoints = settings.etcd_endpoints
            if not endpoints:
                self.embedded = EmbeddedEtcd(settings.data_dir)
                endpoints = (await self.embedded.start(),)
            name = settings.replica or f"{socket.gethostname()}:{listen.rpartition(':')[2]}"
            base = replace(settings, listen=listen, ws_listen=ws_listen, etcd_endpoints=endpoints)
            self.workers = [
                Worker(
                    replace(
                        base,
                        replica=f"{name}-w{i}",
                        metrics_listen=metrics_address(settings.metrics_listen, i),
                    )
                )
                for i in range(settings.workers)
            ]
            for worker in self.workers:
                await worker.spawn()
            for worker in self.workers:
                serving = await _unless(stop, worker.ready())
                if serving is None:
                    return None  # stopping
                if not serving:
                    assert worker.process is not None
                    return f"worker {worker.replica} exited with {worker.process.returncode}"
        finally:
            for sock in held:
                sock.close()
        _log.info(
            "workers serving",
            workers=len(self.workers),
            listen=listen,
            ws_listen=ws_listen or "off",
            etcd=list(endpoints),
            embedded_etcd=self.embedded is not None,
        )
        return None

    async def keep(self, stop: asyncio.Event) -> None:
        """Until stop: start again every worker that dies."""
        await asyncio.gather(*(self._keep(worker, stop) for worker in self.workers))

    async def _keep(self, worker: Worker, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        backoff = FIRST_BACKOFF_SECONDS
        while True:
            assert worker.process is not None
            code = await _unless(stop, worker.process.wait())
            if code is None:
                return
            served = worker.serving_since is not None and (
                loop.time() - worker.serving_since >= HEALTHY_SECONDS
            )
            backoff = FIRST_BACKOFF_SECONDS if served else backoff
            _log.error(
                "worker exited; starting it again",
                replica=worker.replica,
                pid=worker.process.pid,
                code=code,
                after_seconds=backoff,
            )
            if await _unless(stop, asyncio.sleep(backoff, True)) is None:
                return
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
            await worker.spawn()
            if await _unless(stop, worker.ready()):
                _log.info("worker serving again", replica=worker.replica)

    async def stop(self) -> bool:
        """SIGTERM every worker, wait for them to drain (kill stragglers), then stop the
        embedded etcd; whether every worker stopped cleanly: none had to be killed and none
        failed its own shutdown (a worker killed by a signal meanwhile is only logged)."""
        running = [w for w in self.workers if w.process and w.process.returncode is None]
        for worker in running:
            assert worker.process is not None
            worker.process.send_signal(signal.SIGTERM)
        killed = []
        if running:
            exits = [asyncio.ensure_future(w.process.wait()) for w in running if w.process]
            grace = self.settings.shutdown_grace_seconds + KILL_AFTER_GRACE_SECONDS
            await asyncio.wait(exits, timeout=grace)
            for worker in running:
                assert worker.process is not None
                if worker.process.returncode is None:
                    _log.error("worker did not stop in time; killing it", replica=worker.replica)
                    worker.process.kill()
                    killed.append(worker)
            await asyncio.wait(exits)
        codes = {w.replica: w.process.returncode for w in running if w.process}
        for replica, code in codes.items():
            if code not in STOPPED_CLEANLY:
                _log.error("worker did not stop cleanly", replica=replica, code=code)
        if self.embedded:
            await self.embedded.stop()
        clean = not killed and all(code is not None and code <= 0 for code in codes.values())
        _log.info("workers stopped", clean=clean)
        return clean


async def _unless(stop: asyncio.Event, work: Coroutine[Any, Any, T]) -> T | None:
    """work's result, or None (work cancelled) if stop is set first."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait([task, stopping], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if task.done():
        return task.result()
    task.cancel()
    return None


async def supervise(settings: Settings) -> int:
    """Run settings.workers replicas until SIGTERM or SIGINT; the command's exit code."""
    logs.configure(settings.log_level)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    supervisor = Supervisor(settings)
    problem: str | None = "the supervisor failed"
    try:
        problem = await supervisor.start(stop)
        if problem is None and not stop.is_set():
            await supervisor.keep(stop)
            _log.info("shutting down")
        else:
            _log.error("a worker could not start; stopping", problem=problem)
    finally:
        clean = await supervisor.stop()
    return 0 if problem is None and clean else 1


def _worker(supervisor: int) -> None:
    """A worker: one replica with the supervisor's settings, from stdin; says on stdout
    when it serves, and dies with the supervisor."""
    from accord.coordinator.server import run_loop, serve

    die_with_parent()
    if os.getppid() != supervisor:
        return  # the supervisor died before the parent-death signal was set
    settings = pickle.load(sys.stdin.buffer)  # from the supervisor: its own code, trusted
    assert isinstance(settings, Settings)
    structlog.contextvars.bind_contextvars(replica=settings.replica)  # on each log line

    def ready() -> None:
        sys.stdout.buffer.write(READY)
        sys.stdout.flush()
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # nothing more for the supervisor

    run_loop(serve(settings, ready))


if __name__ == "__main__":
    _worker(int(sys.argv[1]))
