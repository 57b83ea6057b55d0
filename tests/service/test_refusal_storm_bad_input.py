"""A refusal storm: requests with huge repeated fields (200,000 Txn checks, 200,000 vote
options, 60,000 session roots) are each refused quickly with a short list of violations,
nothing is written, and the replica's memory comes back afterwards (a refused request's
garbage is not kept)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from accord.v1 import common_pb2, kv_pb2, leases_pb2, locks_pb2, sessions_pb2, votes_pb2
from tests.harness import Coordinator, EtcdMember, Stubs, identity, start_coordinator

ROUNDS = 12
PER_CALL_SECONDS = 5.0  # generous for a noisy 2-core machine; real figures are printed
RSS_SLACK_BYTES = 50 * 1024 * 1024


def _txn(checks: int) -> kv_pb2.TxnRequest:
    request = kv_pb2.TxnRequest()
    for _ in range(checks):
        request.checks.add()
    request.ops.add().put.key = "k"
    return request


def _propose(options: int) -> votes_pb2.ProposeRequest:
    request = votes_pb2.ProposeRequest()
    request.spec.question = "which?"
    request.spec.options.extend(f"option-{i}" for i in range(options))
    request.spec.electorate.voters.voters.add(agent_id="a")
    request.spec.timeout_ms = 60_000
    return request


def _open(roots: int) -> sessions_pb2.SessionsOpenRequest:
    request = sessions_pb2.SessionsOpenRequest(name="storm")
    for i in range(roots):
        request.roots[f"root-{i}"] = sessions_pb2.ROOT_KIND_MAP
    return request


STORM: dict[str, tuple[str, Message, Message, str]] = {
    # method: (path, the huge request, a small one refused for the same reason, the list)
    "KV.Txn": ("/accord.v1.KV/Txn", _txn(200_000), _txn(100), "checks"),
    "Votes.Propose": ("/accord.v1.Votes/Propose", _propose(200_000), _propose(100), "spec.options"),
    "Sessions.Open": ("/accord.v1.Sessions/Open", _open(60_000), _open(300), "roots"),
}


def _rss(pid: int) -> int:
    """The process's resident set size in bytes, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def replica(etcd: EtcdMember, tmp_path: Path) -> Iterator[Coordinator]:
    """A replica of its own, so its memory is this test's alone."""
    started = start_coordinator(tmp_path, "storm", [etcd.endpoint], ws=False)
    yield started
    started.terminate()


async def _refused(stubs: Stubs, path: str, raw: bytes, namespace: str) -> tuple[float, list[str]]:
    """Send raw request bytes; the refusal's time and the fields it names."""
    started = time.perf_counter()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.channel.unary_unary(path)(
            raw, metadata=identity(namespace, "admin"), timeout=60
        )
    elapsed = time.perf_counter() - started
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    status = rpc_status.from_call(err.value)
    assert status is not None
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    assert any(d.Unpack(info) for d in status.details) and info.reason == "INVALID_ARGUMENT"
    assert any(d.Unpack(bad) for d in status.details)
    return elapsed, [v.field for v in bad.field_violations]


async def test_refusal_storm_is_cheap_and_gives_memory_back(
    replica: Coordinator, etcd: EtcdMember, namespace: str
) -> None:
    identity(namespace, "admin")  # under auth, the token is minted now, not mid-test
    before = etcd.stored(namespace)
    async with Stubs(replica.address) as stubs:
        for path, _, small, _ in STORM.values():  # warm the code paths: not garbage
            await _refused(stubs, path, small.SerializeToString(), namespace)
        start_rss = _rss(replica.pid)
        slowest: dict[str, float] = {}
        for name, (path, huge, _, field) in STORM.items():
            raw = huge.SerializeToString()
            for _ in range(ROUNDS):
                elapsed, fields = await _refused(stubs, path, raw, namespace)
                # Refused on the list's size alone, before any entry was looked at.
                assert fields == [field], (name, fields[:3], len(fields))
                slowest[name] = max(slowest.get(name, 0.0), elapsed)
        peak_rss = _rss(replica.pid)
        # A last small call: the replica is still serving, and its memory is measured after.
        for path, _, small, _ in STORM.values():
            await _refused(stubs, path, small.SerializeToString(), namespace)
        end_rss = _rss(replica.pid)
    print(
        f"refusal storm: slowest per call {slowest}; RSS start {start_rss >> 20} MiB, "
        f"after storm {peak_rss >> 20} MiB, end {end_rss >> 20} MiB"
    )
    assert all(s < PER_CALL_SECONDS for s in slowest.values()), slowest
    assert end_rss - start_rss < RSS_SLACK_BYTES, (start_rss, end_rss)
    assert etcd.stored(namespace) == before


def _path(steps: int) -> sessions_pb2.SessionsApplyRequest:
    op = sessions_pb2.Operation(root="board", map_set=sessions_pb2.MapSet(key="k", value_json="1"))
    op.path.extend(sessions_pb2.PathStep(key=f"k{i}") for i in range(steps))
    return sessions_pb2.SessionsApplyRequest(name="caps", operations=[op])


def _array_values(values: int) -> sessions_pb2.SessionsApplyRequest:
    insert = sessions_pb2.ArrayInsert(index=0, values_json=["1"] * values)
    op = sessions_pb2.Operation(root="list", array_insert=insert)
    return sessions_pb2.SessionsApplyRequest(name="caps", operations=[op])


def _voters(count: int) -> votes_pb2.ProposeRequest:
    request = _propose(2)
    del request.spec.electorate.voters.voters[:]
    request.spec.electorate.voters.voters.extend(
        votes_pb2.Voter(agent_id=f"a{i}") for i in range(count)
    )
    return request


def _vetoes(count: int) -> votes_pb2.ProposeRequest:
    request = _propose(2)
    request.spec.veto_holders.extend(f"a{i}" for i in range(count))
    return request


def _fences(count: int) -> kv_pb2.TxnRequest:
    request = _txn(0)
    request.fences.extend(common_pb2.Fence(lock="l", token=1) for _ in range(count))
    return request


# One past each cap: (path, request, the only field the refusal names)
OVER_CAPS: dict[str, tuple[str, Message, str]] = {
    "Txn ops": ("/accord.v1.KV/Txn", kv_pb2.TxnRequest(ops=[kv_pb2.TxnOp()] * 65), "ops"),
    "Txn fences": ("/accord.v1.KV/Txn", _fences(9), "fences"),
    "Propose voters": ("/accord.v1.Votes/Propose", _voters(5001), "spec.electorate.voters.voters"),
    "Propose veto holders": ("/accord.v1.Votes/Propose", _vetoes(65), "spec.veto_holders"),
    "Grant labels": (
        "/accord.v1.Leases/Grant",
        leases_pb2.GrantRequest(ttl_seconds=10, labels={f"l{i}": "v" for i in range(1000)}),
        "labels",
    ),
    "AcquireMany locks": (
        "/accord.v1.Locks/AcquireMany",
        locks_pb2.AcquireManyRequest(
            lease_id=1, locks=[locks_pb2.LockSpec(name=f"l{i}") for i in range(65)]
        ),
        "locks",
    ),
    "Apply path": ("/accord.v1.Sessions/Apply", _path(65), "operations[0].path"),
    "Apply array values": (
        "/accord.v1.Sessions/Apply",
        _array_values(1025),
        "operations[0].array_insert.values_json",
    ),
}


@pytest.mark.parametrize("case", sorted(OVER_CAPS))
async def test_a_list_over_its_cap_is_one_violation(
    case: str, replicas: list[Coordinator], etcd: EtcdMember, namespace: str
) -> None:
    path, request, field = OVER_CAPS[case]
    identity(namespace, "admin")  # under auth, the token is minted now, not mid-test
    before = etcd.stored(namespace)
    async with Stubs(replicas[0].address) as stubs:
        _, fields = await _refused(stubs, path, request.SerializeToString(), namespace)
    assert fields == [field]
    assert etcd.stored(namespace) == before
