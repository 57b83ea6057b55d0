"""Fixtures of the effect ledger's tests: agents pinned to one replica each, and the auth
suite's replicas (auth required) for what only credentials decide."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from accord.client import AsyncClient
from tests.auth.conftest import admin, auth_cluster, mint
from tests.harness import Coordinator, make_client

__all__ = ["Agent", "admin", "agents", "auth_cluster", "mint"]

Agent = Callable[..., Awaitable[AsyncClient]]


@pytest.fixture
async def agents(replicas: list[Coordinator], namespace: str) -> AsyncIterator[Agent]:
    """agent(name, i) is a client acting as that agent through replica i only (in the
    test's namespace unless given another)."""
    async with contextlib.AsyncExitStack() as stack:

        async def agent(name: str, i: int = 0, ns: str = namespace) -> AsyncClient:
            client = make_client([replicas[i].address], ns, agent=name)
            return await stack.enter_async_context(client)

        yield agent
