"""The test harness: real processes and their faults (processes), waits on real
conditions (waits), and clients and raw stubs (clients). Tests import from here, never
from the modules directly."""

from tests.harness import effect_agent
from tests.harness.auth import (
    AUTH_REQUIRED,
    bootstrap_admin,
    cluster_admin_token,
    enable_auth,
    grant_labels,
    own_cluster_token,
    token_args,
    token_env,
    token_for,
    wait_auth_ready,
)
from tests.harness.clients import (
    EtcdStubs,
    Metadata,
    Stubs,
    identity,
    make_client,
    stubs_by_replica,
)
from tests.harness.metrics import Scrape, fetch, scrape
from tests.harness.processes import (
    ETCD,
    ETCDCTL,
    REPO,
    Coordinator,
    EtcdMember,
    Process,
    StoredKey,
    free_port,
    listening_pids,
    start_coordinator,
    start_etcd,
    wait_for_port,
    wait_serving,
)
from tests.harness.waits import eventually, health, not_serving, queued, until, wall_clock_past

__all__ = [
    "AUTH_REQUIRED",
    "ETCD",
    "ETCDCTL",
    "REPO",
    "Coordinator",
    "EtcdMember",
    "EtcdStubs",
    "Metadata",
    "Process",
    "Scrape",
    "StoredKey",
    "Stubs",
    "bootstrap_admin",
    "cluster_admin_token",
    "effect_agent",
    "enable_auth",
    "eventually",
    "fetch",
    "free_port",
    "grant_labels",
    "health",
    "identity",
    "listening_pids",
    "make_client",
    "not_serving",
    "own_cluster_token",
    "queued",
    "scrape",
    "start_coordinator",
    "start_etcd",
    "stubs_by_replica",
    "token_args",
    "token_env",
    "token_for",
    "until",
    "wait_auth_ready",
    "wait_for_port",
    "wait_serving",
    "wall_clock_past",
]
