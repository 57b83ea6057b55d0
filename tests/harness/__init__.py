"""The test harness: real processes and their faults (processes), and waits on real
conditions (waits). Tests import from here, never from the modules directly."""

from tests.harness.processes import (
    ETCD,
    ETCDCTL,
    REPO,
    Coordinator,
    EtcdMember,
    Process,
    free_port,
    start_coordinator,
    start_etcd,
    wait_for_port,
    wait_serving,
)
from tests.harness.waits import eventually

__all__ = [
    "ETCD",
    "ETCDCTL",
    "REPO",
    "Coordinator",
    "EtcdMember",
    "Process",
    "eventually",
    "free_port",
    "start_coordinator",
    "start_etcd",
    "wait_for_port",
    "wait_serving",
]
