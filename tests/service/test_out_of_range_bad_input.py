"""Out-of-range values in otherwise well-formed requests: enums no version of the API
defines, negative limits, revisions far in the future, and page tokens this service never
issued (including ones whose integers do not fit int64) get INVALID_ARGUMENT naming the
field, change nothing in etcd, and never reach etcd as an error of its own (INTERNAL)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from accord.v1 import kv_pb2, leases_pb2, locks_pb2, sessions_pb2, votes_pb2
from tests.harness import Coordinator, EtcdMember, Stubs, identity

FAR = 2**62  # a revision etcd will not reach
BEYOND_INT64 = 2**64 + 5


def _token(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


# case: (stub method, request, the field the refusal names)
CASES: dict[str, tuple[Callable[[Stubs], Any], Message, str]] = {
    "Get consistency=99": (
        lambda s: s.kv.Get,
        kv_pb2.GetRequest(key="k", consistency=99),  # type: ignore[arg-type]
        "consistency",
    ),
    "List consistency=99": (
        lambda s: s.kv.List,
        kv_pb2.ListRequest(prefix="", consistency=99),  # type: ignore[arg-type]
        "consistency",
    ),
    "Get at a future revision": (
        lambda s: s.kv.Get,
        kv_pb2.GetRequest(key="k", revision=FAR),
        "revision",
    ),
    "List at a future revision": (
        lambda s: s.kv.List,
        kv_pb2.ListRequest(revision=FAR),
        "revision",
    ),
    "List page token beyond int64": (
        lambda s: s.kv.List,
        kv_pb2.ListRequest(page_token=_token(f"{BEYOND_INT64}:1:k")),
        "page_token",
    ),
    "List limit=-1": (lambda s: s.kv.List, kv_pb2.ListRequest(limit=-1), "limit"),
    "History limit=-1": (lambda s: s.kv.History, kv_pb2.HistoryRequest(key="k", limit=-1), "limit"),
    "History before a negative revision": (
        lambda s: s.kv.History,
        kv_pb2.HistoryRequest(key="k", before_revision=-1),
        "before_revision",
    ),
    "Leases.List page token beyond int64": (
        lambda s: s.leases.List,
        leases_pb2.LeasesListRequest(page_token=_token(f"{BEYOND_INT64}:{BEYOND_INT64}")),
        "page_token",
    ),
    "Leases.List limit=-1": (
        lambda s: s.leases.List,
        leases_pb2.LeasesListRequest(limit=-1),
        "limit",
    ),
    "Acquire mode=99": (
        lambda s: s.locks.Acquire,
        locks_pb2.AcquireRequest(name="l", lease_id=1, mode=99),  # type: ignore[arg-type]
        "mode",
    ),
    "ListDeadlocks limit=-1": (
        lambda s: s.locks.ListDeadlocks,
        locks_pb2.ListDeadlocksRequest(limit=-1),
        "limit",
    ),
    "ListDeadlocks forged page token": (
        lambda s: s.locks.ListDeadlocks,
        locks_pb2.ListDeadlocksRequest(page_token=_token(f"{BEYOND_INT64}")),
        "page_token",
    ),
    "Votes.List status=99": (
        lambda s: s.votes.List,
        votes_pb2.VotesListRequest(status=99),  # type: ignore[arg-type]
        "status",
    ),
    "Votes.List limit=-1": (lambda s: s.votes.List, votes_pb2.VotesListRequest(limit=-1), "limit"),
    "Propose on_tie=99": (
        lambda s: s.votes.Propose,
        votes_pb2.ProposeRequest(
            spec=votes_pb2.VoteSpec(
                question="q",
                options=["a", "b"],
                electorate=votes_pb2.Electorate(
                    voters=votes_pb2.Voters(voters=[votes_pb2.Voter(agent_id="a")])
                ),
                rule=votes_pb2.Rule(kind=votes_pb2.RULE_KIND_MAJORITY),
                on_tie=99,  # type: ignore[arg-type]
                timeout_ms=60_000,
            )
        ),
        "spec.on_tie",
    ),
    "Sessions.List limit=-1": (
        lambda s: s.sessions.List,
        sessions_pb2.SessionsListRequest(limit=-1),
        "limit",
    ),
    "Sessions.List forged page token": (
        lambda s: s.sessions.List,
        sessions_pb2.SessionsListRequest(page_token="x\x01" + "y" * 300),
        "page_token",
    ),
    "Open root kind=99": (
        lambda s: s.sessions.Open,
        sessions_pb2.SessionsOpenRequest(name="s", roots={"r": 99}),  # type: ignore[dict-item]
        "roots['r']",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_out_of_range_values_are_refused(
    case: str, replicas: list[Coordinator], etcd: EtcdMember, namespace: str
) -> None:
    method, request, field = CASES[case]
    metadata = identity(namespace, "admin")  # under auth, the token is minted here
    before = etcd.stored(namespace)
    async with Stubs(replicas[0].address) as stubs:
        call = method(stubs)(request, metadata=metadata, timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(call, 10)
    error = err.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    status = rpc_status.from_call(error)
    assert status is not None
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    assert any(d.Unpack(info) for d in status.details), status
    assert (info.reason, info.domain) == ("INVALID_ARGUMENT", "accord.v1")
    assert any(d.Unpack(bad) for d in status.details), status
    assert field in [v.field for v in bad.field_violations], bad
    assert etcd.stored(namespace) == before


async def test_watch_from_a_far_future_revision_is_refused(
    replicas: list[Coordinator], etcd: EtcdMember, namespace: str
) -> None:
    metadata = identity(namespace, "admin")
    before = etcd.stored(namespace)
    async with Stubs(replicas[0].address) as stubs:
        stream = stubs.kv.Watch(
            kv_pb2.WatchRequest(key="k", start_revision=FAR),
            metadata=metadata,
            timeout=10,
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(stream.read(), 10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert "start_revision" in (err.value.details() or "")
    assert etcd.stored(namespace) == before
