"""Fixtures: one real etcd and two real coordinator replicas for the whole session;
each test gets its own namespace (never a wiped keyspace) and clients pinned to them.
make_client lives in tests.harness; importing it from here still works."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from accord.client import AsyncClient
from tests.harness import (
    AUTH_REQUIRED,
    Coordinator,
    EtcdMember,
    bootstrap_admin,
    enable_auth,
    make_client,
    start_coordinator,
    start_etcd,
    wait_auth_ready,
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that kill, pause or restart a session replica (they take
    live_replicas) as "faults": they test recovery, not authorization, and the
    auth-required pass leaves them out (deploy/test.sh)."""
    for item in items:
        if "live_replicas" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.faults)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("accord")


@pytest.fixture(scope="session")
def etcd(workdir: Path) -> Iterator[EtcdMember]:
    member = start_etcd(workdir)
    yield member
    member.kill()


@pytest.fixture(scope="session")
def replicas(etcd: EtcdMember, workdir: Path) -> Iterator[list[Coordinator]]:
    """Two replicas over the session etcd, serving /metrics (tests.harness.metrics); with
    ACCORD_TEST_AUTH=required they need a token, and a cluster admin bootstrapped first
    mints one per agent (tests.harness.auth)."""
    admin_token = bootstrap_admin(etcd.endpoint) if AUTH_REQUIRED else ""
    started = [
        start_coordinator(workdir, f"replica-{i}", [etcd.endpoint], metrics=True) for i in range(2)
    ]
    if AUTH_REQUIRED:
        enable_auth([r.address for r in started], admin_token)
    yield started
    for replica in started:
        if replica.running():
            replica.terminate()


@pytest.fixture
def live_replicas(replicas: list[Coordinator], etcd: EtcdMember) -> Iterator[list[Coordinator]]:
    """The session replicas, for a test that kills or pauses them: restored afterwards."""
    yield replicas
    if not etcd.running():
        etcd.start()
    for replica in replicas:
        if not replica.running():
            replica.start()
    wait_auth_ready()  # under auth: the next test's calls find the credentials loaded


@pytest.fixture
def namespace() -> str:
    return f"t-{uuid.uuid4().hex[:16]}"


@pytest.fixture
async def client(replicas: list[Coordinator], namespace: str) -> AsyncIterator[AsyncClient]:
    """A client that may use either replica."""
    async with make_client([r.address for r in replicas], namespace) as c:
        yield c


@pytest.fixture
async def pinned(replicas: list[Coordinator], namespace: str) -> AsyncIterator[list[AsyncClient]]:
    """The same agent twice, each client talking only to its own replica."""
    clients = [make_client([r.address], namespace) for r in replicas]
    yield clients
    for c in clients:
        await c.close()
