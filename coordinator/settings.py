"""Everything `accord serve` can be told, as one frozen value."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from accord.coordinator.substrate.etcd import TlsFiles
from accord.coordinator.substrate.limits import Limits


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
    # Agents that may cancel any vote (besides its proposer).
    vote_admins: tuple[str, ...] = ("admin",)
