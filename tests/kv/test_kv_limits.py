"""Limits that keep every request inside etcd's, and the explanations at the edges."""

from __future__ import annotations

import asyncio

import pytest

from accord.client import AsyncClient, CompactedError, Delete, InvalidArgumentError, Put
from tests.harness import EtcdMember


async def test_txn_weight_counts_deletes_twice(client: AsyncClient) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        await client.kv.txn({}, [Delete(f"k{i}") for i in range(33)])
    assert "a delete weighs 2" in err.value.field_violations[0][1]
    for i in range(32):
        await client.kv.put(f"k{i}", b"x")
    done = await client.kv.txn({}, [Delete(f"k{i}") for i in range(32)])
    assert all(kv is not None for kv in done.kvs)
    big = await client.kv.txn({}, [Put(f"p{i}", b"x") for i in range(64)])
    assert len(big.kvs) == 64


async def test_a_burst_larger_than_one_etcd_batch(client: AsyncClient) -> None:
    results = await asyncio.gather(*(client.kv.put(f"b{i}", b"x") for i in range(300)))
    assert len(results) == 300
    assert len(await client.kv.list_all("b")) == 300


async def test_heavy_transactions_mixed_with_small_writes(client: AsyncClient) -> None:
    heavy = [client.kv.txn({}, [Put(f"h{j}/{i}", b"x") for i in range(64)]) for j in range(6)]
    small = [client.kv.put(f"s{i}", b"x") for i in range(100)]
    await asyncio.gather(*heavy, *small)
    assert len(await client.kv.list_all("h")) == 6 * 64


async def test_future_history_cursor_names_its_field(client: AsyncClient) -> None:
    await client.kv.put("k", b"x")
    with pytest.raises(InvalidArgumentError) as err:
        await client.kv.history("k", before_revision=10**9)
    assert err.value.field_violations[0][0] == "before_revision"


async def test_compacted_read_says_where_to_resume(client: AsyncClient, etcd: EtcdMember) -> None:
    old = await client.kv.put("k", b"1")
    await client.kv.put("k", b"2")
    compacted_at = etcd.compact()
    with pytest.raises(CompactedError) as err:
        await client.kv.get("k", revision=old.revision)
    assert err.value.compact_revision == compacted_at
    assert int(err.value.metadata["current_revision"]) >= compacted_at
