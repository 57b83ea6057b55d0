"""Bad input gets INVALID_ARGUMENT naming the field, and changes nothing in etcd."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from accord.client import AsyncClient, BadIdentityError, Delete, Expect, InvalidArgumentError, Put
from tests.harness import Coordinator, EtcdMember, make_client

BIG = 256 * 1024 + 1

CASES: dict[str, tuple[Callable[[AsyncClient], Awaitable[Any]], str]] = {
    "empty key": (lambda c: c.kv.put("", b"v"), "key"),
    "oversized key": (lambda c: c.kv.put("k" * 513, b"v"), "key"),
    "reserved byte in key": (lambda c: c.kv.put("a\x00b", b"v"), "key"),
    "control character in key": (lambda c: c.kv.put("line\nbreak", b"v"), "key"),
    "oversized value": (lambda c: c.kv.put("k", b"x" * BIG), "value"),
    "bad request id": (lambda c: c.kv.put("k", b"v", request_id="has space"), "request_id"),
    "negative precondition": (
        lambda c: c.kv.put("k", b"v", expect=Expect(version=-1)),
        "precondition.version",
    ),
    "empty key on delete": (lambda c: c.kv.delete(""), "key"),
    "too many txn ops": (lambda c: c.kv.txn({}, [Put(f"k{i}", b"v") for i in range(65)]), "ops"),
    "duplicate txn key": (lambda c: c.kv.txn({}, [Put("k", b"1"), Delete("k")]), "ops[1]"),
    "empty txn": (lambda c: c.kv.txn({}, []), "ops"),
    "bad key in txn check": (
        lambda c: c.kv.txn({"": Expect(absent=True)}, [Put("k", b"v")]),
        "checks[0].key",
    ),
    "oversized value in txn": (lambda c: c.kv.txn({}, [Put("k", b"x" * BIG)]), "ops[0].put.value"),
    "negative revision": (lambda c: c.kv.get("k", revision=-1), "revision"),
    "list limit too large": (lambda c: c.kv.list("", limit=5000), "limit"),
    "forged page token": (lambda c: c.kv.list("", page_token="!!notatoken"), "page_token"),
    "history limit too large": (lambda c: c.kv.history("k", limit=100000), "limit"),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_bad_input_is_refused_and_changes_nothing(
    case: str, client: AsyncClient, etcd: EtcdMember
) -> None:
    call, field = CASES[case]
    before = etcd.revision()
    with pytest.raises(InvalidArgumentError) as err:
        await call(client)
    assert err.value.reason == "INVALID_ARGUMENT"
    assert field in [f for f, _ in err.value.field_violations], err.value.field_violations
    assert etcd.revision() == before


@pytest.mark.parametrize("namespace_value", ["", "UPPER", "has/slash", "-leading", "x" * 64])
async def test_malformed_namespace_is_refused(
    namespace_value: str, replicas: list[Coordinator], etcd: EtcdMember
) -> None:
    before = etcd.revision()
    async with make_client([replicas[0].address], namespace_value) as bad:
        with pytest.raises(BadIdentityError) as err:
            await bad.kv.put("k", b"v")
    assert "accord-namespace" in str(err.value)
    assert etcd.revision() == before


async def test_watch_with_bad_key_is_refused(client: AsyncClient) -> None:
    watch = client.kv.watch("bad\x01key")
    with pytest.raises(InvalidArgumentError):
        await watch.start()
