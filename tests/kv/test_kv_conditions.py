"""Every precondition kind, on Put and Delete, holding and failing; and transactions."""

from __future__ import annotations

import pytest

from accord.client import AsyncClient, ConditionFailedError, Delete, Expect, Put


async def test_must_not_exist(client: AsyncClient) -> None:
    created = await client.kv.put("k", b"1", expect=Expect(absent=True))
    assert created.kv is not None and created.kv.version == 1
    with pytest.raises(ConditionFailedError) as err:
        await client.kv.put("k", b"2", expect=Expect(absent=True))
    failure = err.value.failures[0]
    assert failure.exists and failure.current_mod_revision == created.revision
    assert failure.current_version == 1
    assert err.value.reason == "CONDITION_FAILED"
    assert err.value.metadata["current_mod_revision"] == str(created.revision)


async def test_must_exist(client: AsyncClient) -> None:
    with pytest.raises(ConditionFailedError) as err:
        await client.kv.put("k", b"1", expect=Expect(exists=True))
    assert err.value.failures[0].exists is False
    assert await client.kv.get("k") is None
    await client.kv.put("k", b"1")
    updated = await client.kv.put("k", b"2", expect=Expect(exists=True))
    assert updated.kv is not None and updated.kv.version == 2


async def test_mod_revision(client: AsyncClient) -> None:
    first = await client.kv.put("k", b"1")
    second = await client.kv.put("k", b"2", expect=Expect(mod_revision=first.revision))
    with pytest.raises(ConditionFailedError) as err:
        await client.kv.put("k", b"3", expect=Expect(mod_revision=first.revision))
    assert err.value.current_mod_revision == second.revision
    current = await client.kv.get("k")
    assert current is not None and current.value == b"2"
    # mod_revision 0 means "does not exist".
    await client.kv.put("fresh", b"x", expect=Expect(mod_revision=0))


async def test_version(client: AsyncClient) -> None:
    await client.kv.put("k", b"1", expect=Expect(version=0))
    await client.kv.put("k", b"2", expect=Expect(version=1))
    with pytest.raises(ConditionFailedError) as err:
        await client.kv.put("k", b"3", expect=Expect(version=1))
    assert err.value.failures[0].current_version == 2


async def test_failure_can_include_current_value(client: AsyncClient) -> None:
    await client.kv.put("k", b"theirs")
    with pytest.raises(ConditionFailedError) as err:
        await client.kv.put(
            "k", b"mine", expect=Expect(absent=True), return_current_on_failure=True
        )
    current = err.value.failures[0].current
    assert current.value == b"theirs" and current.written_by.agent_id == "tester"
    # Without asking, the value stays out of the error.
    with pytest.raises(ConditionFailedError) as err2:
        await client.kv.put("k", b"mine", expect=Expect(absent=True))
    assert not err2.value.failures[0].HasField("current")


async def test_conditional_delete(client: AsyncClient) -> None:
    first = await client.kv.put("k", b"1")
    await client.kv.put("k", b"2")
    with pytest.raises(ConditionFailedError):
        await client.kv.delete("k", expect=Expect(mod_revision=first.revision))
    assert await client.kv.get("k") is not None
    current = await client.kv.get("k")
    assert current is not None
    deleted = await client.kv.delete("k", expect=Expect(version=current.version))
    assert deleted.deleted and deleted.prev is not None and deleted.prev.value == b"2"
    assert await client.kv.get("k") is None
    with pytest.raises(ConditionFailedError):
        await client.kv.delete("k", expect=Expect(exists=True))


async def test_txn_applies_all_at_one_revision(client: AsyncClient) -> None:
    base = await client.kv.put("a", b"1")
    await client.kv.put("gone", b"x")
    result = await client.kv.txn(
        {"a": Expect(mod_revision=base.revision), "b": Expect(absent=True)},
        [Put("a", b"2"), Put("b", b"new"), Delete("gone")],
    )
    a, b = await client.kv.get("a"), await client.kv.get("b")
    assert a is not None and b is not None
    assert a.mod_revision == b.mod_revision == result.revision
    assert await client.kv.get("gone") is None
    assert result.kvs[2] is not None and result.kvs[2].value == b"x"  # the deleted value


async def test_txn_is_all_or_nothing(client: AsyncClient) -> None:
    await client.kv.put("a", b"1")
    await client.kv.put("b", b"1")
    with pytest.raises(ConditionFailedError) as err:
        await client.kv.txn(
            {"a": Expect(exists=True), "b": Expect(absent=True), "c": Expect(exists=True)},
            [Put("a", b"2"), Delete("b"), Put("c", b"2")],
        )
    failed = sorted((f.key, f.check_index) for f in err.value.failures)
    assert failed == [("b", 1), ("c", 2)]  # every failed check is reported, the holding one is not
    a, b, c = await client.kv.get("a"), await client.kv.get("b"), await client.kv.get("c")
    assert a is not None and a.value == b"1" and a.version == 1
    assert b is not None and c is None


async def test_concurrent_cas_on_one_key_has_one_winner(client: AsyncClient) -> None:
    import asyncio

    base = await client.kv.put("leader", b"none")
    attempts = [
        client.kv.put("leader", f"agent-{i}", expect=Expect(mod_revision=base.revision))
        for i in range(20)
    ]
    outcomes = await asyncio.gather(*attempts, return_exceptions=True)
    winners = [o for o in outcomes if not isinstance(o, BaseException)]
    losers = [o for o in outcomes if isinstance(o, ConditionFailedError)]
    assert len(winners) == 1 and len(losers) == 19
    current = await client.kv.get("leader")
    assert current is not None and current.version == 2
