"""The /metrics endpoint: Prometheus's text format over plain HTTP, from a daemon thread.

`GET /metrics` answers the registry (metrics.py) in the format the scraper asks for (text,
or OpenMetrics), gzipped when it accepts gzip. Every other path or method is 404. The
server runs in threads of its own, so a scrape never waits for the event loop and the
event loop never waits for a scrape beyond Python's thread switch interval: renders take
turns (one at a time), at most MAX_CONNECTIONS connections are served at once (more are
closed at once), and a connection that sends nothing for TIMEOUT_SECONDS is dropped.

The endpoint has no authentication: its label values name namespaces, which are tenant
information. It is off unless --metrics-listen is given; serve it on loopback or a
private interface only that the scraper reaches.

Error handling: an address that cannot be bound raises OSError at startup (the replica
does not start). A scrape that fails to render is a 500 and is logged; it never reaches
the event loop.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import make_wsgi_app

from accord.coordinator import logs
from accord.coordinator.observability.metrics import REGISTRY

_log = logs.get("accord.metrics")
PATH = "/metrics"
MAX_CONNECTIONS = 8
TIMEOUT_SECONDS = 10.0

StartResponse = Callable[..., Any]


class _Handler(WSGIRequestHandler):
    """Logs nothing per request; gives up on a silent connection."""

    timeout = TIMEOUT_SECONDS

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingMixIn, WSGIServer):
    """A thread per connection, at most MAX_CONNECTIONS at once."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily) -> None:
        self.address_family = family
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)  # a flood of connections is cut, not queued
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


def _app() -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    render = make_wsgi_app(REGISTRY)
    one_at_a_time = threading.Lock()

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "GET" or environ.get("PATH_INFO") != PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found: only GET /metrics is served here\n"]
        with one_at_a_time:
            try:
                return list(render(environ, start_response))
            except Exception:
                _log.exception("rendering /metrics failed")
                start_response(
                    "500 Internal Server Error", [("Content-Type", "text/plain; charset=utf-8")]
                )
                return [b"rendering the metrics failed; see the replica's log\n"]

    return app


class MetricsServer:
    """/metrics on host:port (port 0: a free one), served until stop()."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        family = socket.getaddrinfo(host or None, int(port), type=socket.SOCK_STREAM)[0][0]
        any_host = "::" if family == socket.AF_INET6 else "0.0.0.0"
        self._server = _Server((host or any_host, int(port)), family)
        self._server.set_app(_app())
        self.port: int = self._server.server_address[1]
        self.host = host
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
