"""TCP proxies on loopback, one per network link of a fault cluster, switchable at run time.

Each link listens on a free port of 127.0.0.1 and forwards every connection to its
upstream. Its mode says what the link does now:
- PASS: bytes go through (after `delay` seconds each, when a delay is set: latency, not a
  throughput limit; order is kept);
- BLACKHOLE: nothing goes through, in either direction, and nothing is lost: the proxy
  stops reading, so bytes wait in socket buffers as they would behind a partitioned
  network; new connections are accepted and wait too. When the link heals, what waited is
  delivered; peers whose keepalives or deadlines ran out meanwhile have closed by then;
- DROP: every open connection is reset and each new one is reset as soon as accepted (a
  host that refuses: the peer sees the failure at once).

Why a proxy and not `ip netns` with veth pairs: a proxy needs no root, no kernel modules
and no cleanup of host state after a crashed test (a netns or a tc rule left behind
breaks the next run), it isolates each link on its own (replica 1 to etcd member 2
only), and the same code runs on a laptop and in CI. What it cannot do: partition etcd
members from each other (peer traffic is not proxied), or reorder or corrupt packets.

The proxies run in a thread of the test process with an event loop of their own, so a
test whose loop is busy (a checker, a blocking start of a process) does not stall the
network; the thread only competes for the GIL (switches every 5 ms). Control calls are
made from any thread and return once the change is in force.

Error handling: a connection that fails (upstream refuses, a peer resets) is closed on
both sides and forgotten; nothing a connection does raises in the caller. Control calls
raise KeyError for an unknown link.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")
_CHUNK = 64 * 1024


class Mode(enum.Enum):
    PASS = "pass"
    BLACKHOLE = "blackhole"
    DROP = "drop"


@dataclass
class _Link:
    name: str
    upstream: tuple[str, int]
    mode: Mode = Mode.PASS
    delay: float = 0.0
    port: int = 0
    server: asyncio.Server | None = None
    # Set while bytes may pass (mode PASS); pumps wait on it.
    open: asyncio.Event = field(default_factory=asyncio.Event)
    writers: set[asyncio.StreamWriter] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class Proxies:
    """The links of one cluster; `start()` runs their event loop thread, `close()` ends it."""

    def __init__(self) -> None:
        self._links: dict[str, _Link] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="proxies", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _call(self, fn: Callable[[], T]) -> T:
        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(30)

    def add(self, name: str, host: str, port: int) -> str:
        """A new link to host:port, passing; returns the address to dial instead."""

        async def listen() -> int:
            link = _Link(name, (host, port))
            link.open.set()
            link.server = await asyncio.start_server(
                lambda r, w: self._accepted(link, r, w), "127.0.0.1", 0
            )
            link.port = link.server.sockets[0].getsockname()[1]
            self._links[name] = link
            return link.port

        bound = asyncio.run_coroutine_threadsafe(listen(), self._loop).result(30)
        return f"127.0.0.1:{bound}"

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self._links[name].port}"

    def names(self) -> list[str]:
        return list(self._links)

    def mode(self, name: str) -> tuple[Mode, float]:
        link = self._links[name]
        return link.mode, link.delay

    def set(self, name: str, mode: Mode, delay: float | None = None) -> None:
        """Switch a link (and its delay, when given); in force when this returns."""
        link = self._links[name]

        def switch() -> None:
            link.mode = mode
            if delay is not None:
                link.delay = delay
            if mode is Mode.PASS:
                link.open.set()
            else:
                link.open.clear()
            if mode is Mode.DROP:
                for writer in list(link.writers):
                    _reset(writer)

        self._call(switch)

    def heal(self) -> None:
        """Every link back to PASS with no delay."""
        for name in self._links:
            self.set(name, Mode.PASS, 0.0)

    def close(self) -> None:
        async def shut() -> None:
            for link in self._links.values():
                if link.server is not None:
                    link.server.close()
                for writer in list(link.writers):
                    _reset(writer)
                for task in list(link.tasks):
                    task.cancel()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # --- in the proxies' loop -------------------------------------------------------

    def _accepted(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if link.mode is Mode.DROP:
            _reset(writer)
            return
        task = asyncio.get_running_loop().create_task(self._serve(link, reader, writer))
        link.tasks.add(task)
        task.add_done_callback(link.tasks.discard)

    async def _serve(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        link.writers.add(writer)
        up_writer: asyncio.StreamWriter | None = None
        try:
            await link.open.wait()  # a blackholed link connects nowhere until healed
            up_reader, up_writer = await asyncio.open_connection(*link.upstream)
            link.writers.add(up_writer)
            await asyncio.gather(
                self._pump(link, reader, up_writer), self._pump(link, up_reader, writer)
            )
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    link.writers.discard(w)
                    _reset(w)

    async def _pump(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """One direction: read while the link is open, deliver each chunk `delay` after it
        was read (a writer task keeps the order), end both sides at end of stream."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    return
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await link.open.wait()
                writer.write(data)
                await writer.drain()

        delivering = asyncio.get_running_loop().create_task(deliver())
        try:
            while not delivering.done():
                await link.open.wait()
                data = await reader.read(_CHUNK)
                queue.put_nowait((time.monotonic() + link.delay, data))
                if not data:
                    break
            await delivering
        finally:
            delivering.cancel()
            _reset(writer)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close at once (RST where the socket allows it), dropping anything unsent."""
    with contextlib.suppress(Exception):
        writer.transport.abort()
