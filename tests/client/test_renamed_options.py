"""One meaning per option name: `timeout=` is a call's deadline; a lock's wait is `wait=`
and a vote's lifetime `voting_period=`. The old spellings still work, meaning what they
meant, with a DeprecationWarning that points at the caller's line."""

from __future__ import annotations

import time
import warnings
from datetime import timedelta

import pytest

from accord.client import (
    AsyncClient,
    Client,
    DeadlineExceededError,
    LockTimeoutError,
    Rule,
)
from tests.harness import Coordinator


async def test_new_names_mean_wait_period_and_deadline(client: AsyncClient) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # our own code never warns
        async with await client.leases.grant(10) as holder, await client.leases.grant(10) as other:
            async with client.locks.hold("doc", holder, wait=5, timeout=None) as grant:
                assert grant.lease_id == holder.id
                started = time.monotonic()
                with pytest.raises(LockTimeoutError):
                    await client.locks.acquire("doc", other, wait=0.3)
                assert time.monotonic() - started < 4  # the wait, not wait + a margin
                with pytest.raises(LockTimeoutError):
                    await client.locks.acquire_many(["doc", "other"], other, wait=0.3)
            vote = await client.votes.propose(
                "Q?", ["a"], voters=["a"], voting_period=timedelta(minutes=2), call_timeout=10
            )
            assert vote.spec.timeout_ms == 120_000
            # Every RPC-issuing method takes a deadline; one already past is never sent.
            with pytest.raises(DeadlineExceededError):
                await client.leases.list(timeout=1e-9)
            with pytest.raises(DeadlineExceededError):
                await client.locks.list(timeout=1e-9)


async def test_old_names_warn_and_keep_their_meaning(client: AsyncClient) -> None:
    async with await client.leases.grant(10) as holder, await client.leases.grant(10) as other:
        with pytest.warns(DeprecationWarning, match=r"use wait=") as caught:
            async with client.locks.hold("doc", holder, timeout=5):
                with pytest.raises(LockTimeoutError):
                    await client.locks.acquire("doc", other, timeout=0.3)
                with pytest.raises(LockTimeoutError):
                    await client.locks.acquire_many(["doc"], other, timeout=0.3)
        assert len(caught) == 3 and {w.filename for w in caught} == {__file__}
        with pytest.raises(TypeError):
            await client.locks.acquire("doc", other, wait=1, timeout=1)

    with pytest.warns(DeprecationWarning, match=r"use voting_period=") as caught:
        vote = await client.votes.propose("Q?", ["a"], voters=["a"], timeout=600)
    assert vote.spec.timeout_ms == 600_000  # still the voting period, not the call's deadline
    assert caught[0].filename == __file__

    lease = await client.leases.grant(10)
    with pytest.warns(DeprecationWarning, match=r"lease\.revoke\(\)"):
        await client.leases.revoke(lease)
    assert lease._task is None  # stopped keeping it alive, as lease.revoke() does
    assert await client.leases.list() == []


def test_blocking_client_old_names_warn_at_the_callers_line(
    replicas: list[Coordinator], namespace: str
) -> None:
    with Client([r.address for r in replicas], namespace=namespace) as accord:
        holder, other = accord.leases.grant(10), accord.leases.grant(10)
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            grant = accord.locks.acquire("doc", holder, wait=5)
            vote = accord.votes.propose("Q?", ["a"], voters=["a"], voting_period=60)
            assert vote.spec.timeout_ms == 60_000
        with (
            pytest.warns(DeprecationWarning, match=r"use wait=") as caught,
            pytest.raises(LockTimeoutError),
        ):
            accord.locks.acquire("doc", other, timeout=0.3)
        assert caught[0].filename == __file__
        with pytest.warns(DeprecationWarning, match=r"use voting_period="):
            vote = accord.votes.propose("Q?", ["a"], voters=["a"], rule=Rule.majority(), timeout=60)
        assert vote.spec.timeout_ms == 60_000
        assert accord.locks.release(grant)
