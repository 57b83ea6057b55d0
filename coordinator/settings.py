"""Everything `accord serve` can be told, as one frozen value."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from accord.coordinator.quotas.limits import QuotaLimits
from accord.coordinator.substrate.etcd import TlsFiles
from accord.coordinator.substrate.limits import Limits


@dataclass(frozen=True, slots=True)
class ServerTls:
    """TLS on the gRPC port: this replica's certificate and key, and, to require client
    certificates (mutual TLS), the CA that signs them. A verified client certificate's
    common name (CN) names the caller's principal when the call carries no token."""

    cert: Path
    key: Path
    client_ca: Path | None = None


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What one connection (and the whole replica) may hold open at once."""

    # RPCs in progress on the replica (gRPC's maximum_concurrent_rpcs): beyond it a call is
    # refused at once with RESOURCE_EXHAUSTED instead of queueing without bound.
    max_concurrent_rpcs: int = 20_000
    # Concurrent streams (calls) on one HTTP/2 connection.
    max_streams_per_connection: int = 10_000
    # A connection with no call for this long is closed (the client reconnects on need).
    idle_connection_seconds: float = 600.0
    # y-websocket sockets open at once on one session, and from one remote address.
    ws_sockets_per_session: int = 500
    ws_sockets_per_address: int = 200


@dataclass(frozen=True, slots=True)
class Settings:
    listen: str = "127.0.0.1:50051"
    # host:port of the y-websocket endpoint for Yjs apps (port 0: any free one); empty: off.
    ws_listen: str = "127.0.0.1:50052"
    # Empty: start a private single-member etcd in data_dir.
    etcd_endpoints: tuple[str, ...] = ()
    etcd_tls: TlsFiles | None = None
    data_dir: Path = Path("accord-data")
    # Every etcd key Accord writes starts with "{root}/".
    root: str = "accord"
    replica: str = ""
    log_level: str = "info"
    limits: Limits = field(default_factory=Limits)
    # How long a request_id is remembered (and a deletion tombstone kept).
    idempotency_ttl_seconds: int = 24 * 3600
    group_commit_in_flight: int = 1
    shutdown_grace_seconds: float = 5.0
    # A session nobody used for this long is unloaded from memory (it stays in etcd).
    session_idle_seconds: float = 30.0
    # A session's document may hold this many bytes of encoded Yjs state (0: no limit), so
    # a Sync or Read of all of it fits a standard client's 4 MiB message.
    session_max_bytes: int = 3 * 1024 * 1024
    # How long effects, runs and journals are kept after their last change (effect ledger).
    effects_ttl_seconds: int = 7 * 24 * 3600
    # Effects one run may hold; a Begin beyond it is refused (QUOTA_EXCEEDED).
    effects_max_per_run: int = 10_000
    # Agents that may cancel any vote (besides its proposer).
    vote_admins: tuple[str, ...] = ("admin",)
    # Every call must carry a bearer token (accord auth); False: identity is a claim.
    auth_required: bool = False
    # Serve without auth on a non-loopback address anyway.
    insecure: bool = False
    # TLS (and, with a client CA, mutual TLS) on the gRPC port; None: plaintext.
    tls: ServerTls | None = None
    # Browser origins (scheme://host[:port]) whose pages may open y-websocket connections;
    # clients that send no Origin header (agents, Node) are not browsers and need none.
    ws_allowed_origins: tuple[str, ...] = ()
    # Every namespace's quotas unless overridden in etcd (`accord quota set`); None: off.
    quotas: QuotaLimits | None = field(default_factory=QuotaLimits)
    # A rate refusal is answered when the caller may come back, held at most this long
    # (quotas/tarpit.py), so a caller ignoring RetryInfo is paced; 0: answered at once.
    rate_refusal_hold_seconds: float = 1.0
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)
    # Bytes an error may take in trailers (details cut to fit; clients refuse over 8 KiB).
    error_details_budget: int = 8 * 1024
    # Replica processes `accord serve` runs on the same ports (workers.py); above 1, this
    # replica is one of them and shares its ports with the others (SO_REUSEPORT).
    workers: int = 1
    # host:port of the Prometheus /metrics endpoint (observability/metrics_http.py); empty:
    # off, and no metric is kept. Under --workers N, worker i serves on port + i.
    metrics_listen: str = ""
    # Namespaces labelled by name in metrics; later ones are counted as `_other`.
    metrics_max_namespaces: int = 100

    def exposure_problem(self) -> str | None:
        """Why this replica must not start as configured (None: it may)."""
        if self.insecure:
            return None
        if not self.auth_required:
            exposed = [a for a in (self.listen, self.ws_listen) if a and not is_loopback(a)]
            if exposed:
                return (
                    f"auth is off, so anyone who reaches {', '.join(exposed)} could act as any "
                    "agent: serve with --auth required (see `accord auth bootstrap`), listen "
                    "on 127.0.0.1, or pass --insecure to accept that"
                )
        return None


def is_loopback(address: str) -> bool:
    """Whether host:port names a loopback interface only ("localhost", 127.x, ::1)."""
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name, or empty (every interface)
