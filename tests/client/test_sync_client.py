"""The blocking client mirrors the async one."""

from __future__ import annotations

import threading

import pytest

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
