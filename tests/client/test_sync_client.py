"""The blocking client mirrors the async one."""

from __future__ import annotations

import threading

import pytest
from pycrdt import Text

from accord.client import Client, ConditionFailedError, Expect, Put
from tests.harness import Coordinator


def test_sync_client_round_trip(replicas: list[Coordinator], namespace: str) -> None:
    with Client([r.address for r in replicas], agent_id="sync", namespace=namespace) as accord:
        written = accord.kv.put("k", "v1", expect=Expect(absent=True))
        with pytest.raises(ConditionFailedError):
            accord.kv.put("k", "v2", expect=Expect(absent=True))
        accord.kv.update("k", lambda v: (v or b"") + b"+")
        kv = accord.kv.get("k")
        assert kv is not None and kv.value == b"v1+" and kv.create_revision == written.revision
        accord.kv.txn({"k": Expect(exists=True)}, [Put("other", "x")])
        assert [kv.key for kv in accord.kv.list("").kvs] == ["k", "other"]
        assert [e.kv.value for e in accord.kv.history("k").entries] == [b"v1+", b"v1"]

        events = accord.kv.watch("k", start_revision=written.revision)
        assert next(events).kv.value == b"v1"
        assert next(events).kv.value == b"v1+"
        events.close()


def test_sync_clients_from_many_threads(replicas: list[Coordinator], namespace: str) -> None:
    with Client([r.address for r in replicas], namespace=namespace) as accord:
        threads = [
            threading.Thread(
                target=lambda: accord.kv.update("n", lambda v: str(int(v or b"0") + 1).encode())
            )
            for _ in range(10)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        kv = accord.kv.get("n")
        assert kv is not None and kv.value == b"10"


def test_sync_client_locks_watches_and_synced_sessions(
    replicas: list[Coordinator], namespace: str
) -> None:
    """What the blocking client lacked while it was kept by hand: hold, acquire_many, a
    watch handle, lease handles, synced documents and flush."""
    with Client([r.address for r in replicas], agent_id="sync", namespace=namespace) as accord:
        watch = accord.kv.watch("guarded")
        first = watch.start()
        with accord.leases.grant(10) as lease:
            with accord.locks.hold("a", lease, wait=5) as grant:
                written = accord.kv.put("guarded", "x", fence=grant, lease=lease)
            assert next(watch).kv.value == b"x" and watch.resume_revision > first
            watch.close()
            grants = accord.locks.acquire_many(["b", "a"], lease, wait=5)
            assert [g.name for g in grants] == ["a", "b"]
            assert accord.leases.time_to_live(lease.id).locks == ["a", "b"]
        assert not lease.lost.is_set()  # revoked by us, not lost
        assert accord.kv.get("guarded") is None  # it hung on the lease
        assert written.revision > 0

        with accord.sessions.synced("plan", roots={"notes": "text"}) as live:
            live.doc.get("notes", type=Text).insert(0, "hello")  # on this thread
            assert accord.sessions.flush(live) > 0
            assert accord.sessions.read("plan").json == {"notes": "hello"}
        with accord.session("plan") as doc:
            assert str(doc.get("notes", type=Text)) == "hello"
            doc.get("notes", type=Text).insert(5, " world")
        assert accord.sessions.read("plan").json == {"notes": "hello world"}
