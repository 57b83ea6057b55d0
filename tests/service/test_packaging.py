"""The public surface: pinned exports, and a wheel that maps folders onto `accord`."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import accord.client
from tests.harness import REPO

EXPECTED_CLIENT_EXPORTS = {
    "DeadlockError",
    "FencedError",
    "Grant",
    "Lease",
    "LeaseInfo",
    "LeaseNotFoundError",
    "LockConflictError",
    "LockMode",
    "LockSpec",
    "LockTimeoutError",
    "NotHeldError",
    "WouldBlockError",
    "AccordError",
    "AsyncClient",
    "BadIdentityError",
    "Client",
    "CompactedError",
    "ConditionFailedError",
    "DeadlineExceededError",
    "Delete",
    "DeleteResult",
    "EventType",
    "Expect",
    "HistoryEntry",
    "HistoryPage",
    "InternalError",
    "InvalidArgumentError",
    "KeyValue",
    "NotFoundError",
    "Page",
    "Provenance",
    "Put",
    "RequestIdReusedError",
    "RetryPolicy",
    "TxnResult",
    "UnavailableError",
    "Watch",
    "WatchEvent",
    "WriteResult",
    "ApplyResult",
    "AsyncSessions",
    "Presence",
    "PresenceEvent",
    "PresenceGoneEvent",
    "RootKind",
    "SessionEvent",
    "SessionInfo",
    "SessionState",
    "SyncedSession",
    "SyncResult",
    "UpdateEvent",
    "AlreadyVotedError",
    "AsyncVotes",
    "Ballot",
    "BallotEvent",
    "CastResult",
    "DecidedBy",
    "Decision",
    "DecisionEvent",
    "NotEligibleError",
    "NotPermittedError",
    "Outcome",
    "Rule",
    "RuleKind",
    "TiePolicy",
    "Vote",
    "VoteClosedError",
    "VoteEvent",
    "VotePage",
    "VoteStateEvent",
    "VoteStatus",
    "ops",
    # The blocking client's namespaces and handles, the async namespaces, the lock admin
    # views: every type a client method returns.
    "AsyncKV",
    "AsyncLeases",
    "AsyncLocks",
    "BlockingContext",
    "BlockingIterator",
    "BlockingLease",
    "BlockingSyncedSession",
    "BlockingWatch",
    "Deadlock",
    "KV",
    "Leases",
    "LockEntry",
    "LockState",
    "Locks",
    "Sessions",
    "Votes",
    "WaitEdge",
}


def test_client_exports_are_pinned() -> None:
    assert set(accord.client.__all__) == EXPECTED_CLIENT_EXPORTS
    for name in EXPECTED_CLIENT_EXPORTS:
        assert getattr(accord.client, name) is not None


def test_every_client_error_shares_one_root() -> None:
    errors = [getattr(accord.client, n) for n in EXPECTED_CLIENT_EXPORTS if n.endswith("Error")]
    assert all(issubclass(e, accord.client.AccordError) for e in errors)


def test_wheel_maps_folders_onto_the_accord_namespace(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        timeout=300,
    )
    wheel = next(tmp_path.glob("accord-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in [
        "accord/client/__init__.py",
        "accord/client/py.typed",
        "accord/coordinator/server.py",
        "accord/coordinator/py.typed",
        "accord/v1/kv_pb2.py",
        "accord/v1/kv_pb2.pyi",
        "accord/v1/kv.proto",
    ]:
        assert expected in names, expected
    assert not any(n.startswith(("client/", "coordinator/", "tests/")) for n in names)
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    probe = (
        "import accord.client, accord.coordinator.server, accord.v1.kv_pb2 as kv; "
        "print(accord.client.__file__); print(kv.KeyValue.DESCRIPTOR.full_name)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env={"PYTHONPATH": str(unpacked)},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    path, full_name = out.stdout.split()
    assert path.startswith(str(unpacked)) and full_name == "accord.v1.KeyValue"
