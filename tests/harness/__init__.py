"""The test harness: real processes and their faults (processes), waits on real
conditions (waits), and clients and raw stubs (clients). Tests import from here, never
from the modules directly."""

from tests.harness.clients import EtcdStubs, Metadata, Stubs, identity, make_client
from tests.harness.processes import (
    ETCD,
    ETCDCTL,
    REPO,
    Coordinator,
    EtcdMember,
    Process,
    StoredKey,
    free_port,
    start_coordinator,
    start_etcd,
    wait_for_port,
    wait_serving,
)
from tests.harness.waits import eventually, health, not_serving, queued, until, wall_clock_past

__all__ = [
    "ETCD",
    "ETCDCTL",
    "REPO",
    "Coordinator",
    "EtcdMember",
    "EtcdStubs",
    "Metadata",
    "Process",
    "StoredKey",
    "Stubs",
    "eventually",
    "free_port",
    "health",
    "identity",
    "make_client",
    "not_serving",
    "queued",
    "start_coordinator",
    "start_etcd",
    "until",
    "wait_for_port",
    "wait_serving",
    "wall_clock_past",
]
