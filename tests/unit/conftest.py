"""The fast tier: pure tests that start no etcd and no coordinator, so
`python -m pytest tests/unit` runs in seconds. A test here that asks for a process
fixture, or starts a harness process itself, fails instead of starting it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NoReturn

import pytest

from tests.harness import Process

# The fixtures every process-backed fixture (client, pinned, live_replicas...) stands on.
PROCESS_FIXTURES = frozenset({"workdir", "etcd", "replicas"})


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before any fixture is set up: fixturenames holds every fixture the test needs,
    directly or through others."""
    used = PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ()))
    if used:
        pytest.fail(
            f"{item.nodeid} is in the unit tier but needs {', '.join(sorted(used))}: "
            "move it to the area folder of what it tests",
            pytrace=False,
        )


@pytest.fixture(autouse=True)
def no_processes(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Catches a unit test calling start_etcd or start_coordinator directly."""

    def refuse(self: Process, *_: object, **__: object) -> NoReturn:
        pytest.fail(f"a unit test tried to start {self.name}: unit tests start no processes")

    monkeypatch.setattr(Process, "_spawn", refuse)
    yield
