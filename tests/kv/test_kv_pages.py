"""Pages and error details that fit a standard client: a List or History page stays under
gRPC's default 4 MiB message limit whatever `limit` asks, and CONDITION_FAILED stays under
the 8 KiB trailer limit whatever the current values weigh. Checked with default clients:
raw stubs on a channel with no options, and Accord's own client."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from accord.client import AsyncClient, ConditionFailedError, Delete, Expect, Put
from accord.v1 import kv_pb2
from tests.harness import Coordinator, Stubs, identity

BIG = 256 * 1024  # the largest value the replicas take
DEFAULT_MAX_MESSAGE = 4 * 1024 * 1024


def big_value(i: int) -> bytes:
    return bytes([i % 251]) * BIG


async def test_list_pages_fit_a_default_client_whatever_the_limit(
    client: AsyncClient, replicas: list[Coordinator], namespace: str
) -> None:
    for i in range(40):
        await client.kv.put(f"big/{i:02d}", big_value(i))
    seen: list[str] = []
    revisions = set()
    token = ""
    async with Stubs(replicas[0].address) as raw:  # no channel options: gRPC's defaults
        while True:
            page = await raw.kv.List(
                kv_pb2.ListRequest(prefix="big/", limit=1000, page_token=token),
                metadata=identity(namespace),
            )
            assert 0 < page.ByteSize() < DEFAULT_MAX_MESSAGE
            assert page.total == 40
            revisions.add(page.header.revision)
            seen += [kv.key for kv in page.kvs]
            assert all(kv.value == big_value(int(kv.key[4:])) for kv in page.kvs)
            token = page.next_page_token
            if not token:
                break
    assert seen == [f"big/{i:02d}" for i in range(40)]  # each once, in order
    assert len(revisions) == 1  # every page read the first page's revision
    # The case: limit=20 of 256 KiB values, through Accord's own client too.
    page20 = await client.kv.list("big/", limit=20)
    assert 0 < len(page20.kvs) < 20 and page20.next_page_token
    assert [kv.key for kv in await client.kv.list_all("big/")] == seen


async def test_small_values_fill_a_page_up_to_its_limit(client: AsyncClient) -> None:
    for start in (0, 64, 128):
        await client.kv.txn(
            {}, [Put(f"v{i:03d}", b"x") for i in range(start, min(start + 64, 130))]
        )
    page = await client.kv.list("v", limit=1000)
    assert len(page.kvs) == 130 and not page.next_page_token
    keys = await client.kv.list("v", limit=1000, keys_only=True)
    assert len(keys.kvs) == 130 and not keys.next_page_token
    small = await client.kv.list("v", limit=50)
    assert len(small.kvs) == 50 and small.next_page_token


async def test_history_pages_fit_a_default_client(
    client: AsyncClient, replicas: list[Coordinator], namespace: str
) -> None:
    written = [(await client.kv.put("doc", big_value(i))).revision for i in range(30)]
    await client.kv.delete("doc")
    entries: list[kv_pb2.HistoryEntry] = []
    before = 0
    async with Stubs(replicas[1].address) as raw:
        while True:
            page = await raw.kv.History(
                kv_pb2.HistoryRequest(key="doc", limit=500, before_revision=before),
                metadata=identity(namespace),
            )
            assert page.ByteSize() < DEFAULT_MAX_MESSAGE
            entries += page.entries
            before = page.next_before_revision
            if not before:
                break
    kinds = [e.kind for e in entries]
    assert kinds == [kv_pb2.HistoryEntry.KIND_DELETE] + [kv_pb2.HistoryEntry.KIND_PUT] * 30
    assert [e.revision for e in entries[1:]] == written[::-1]  # each once, newest first
    assert all(e.kv.value == big_value(29 - i) for i, e in enumerate(entries[1:]))


async def test_condition_failed_on_a_64k_value_reaches_the_default_client(
    client: AsyncClient, replicas: list[Coordinator], namespace: str
) -> None:
    value = b"v" * (64 * 1024)
    first = await client.kv.put("big", value)
    with pytest.raises(ConditionFailedError) as err:
        await client.kv.put(
            "big", b"mine", expect=Expect(absent=True), return_current_on_failure=True
        )
    failure = err.value.failures[0]
    assert err.value.current_mod_revision == first.revision
    assert failure.current_value_omitted and failure.current_value_size == len(value)
    assert failure.current.value == value  # the client read it at the check's revision
    assert failure.current.mod_revision == first.revision
    # On the wire: FAILED_PRECONDITION, the value left out, a way to read it named.
    async with Stubs(replicas[1].address) as raw:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await raw.kv.Delete(
                kv_pb2.DeleteRequest(
                    key="big",
                    precondition=kv_pb2.Precondition(mod_revision=1),
                    return_current_on_failure=True,
                ),
                metadata=identity(namespace),
            )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    status = rpc_status.from_call(refused.value)
    assert status is not None
    failures = [_failure(d) for d in status.details if d.Is(kv_pb2.ConditionFailure.DESCRIPTOR)]
    assert len(failures) == 1 and not failures[0].HasField("current")
    assert failures[0].current_value_omitted and failures[0].revision >= first.revision
    assert "Get them at revision" in status.message
    # Nothing changed: the key is as it was.
    now = await client.kv.get("big")
    assert now is not None and now.mod_revision == first.revision and now.value == value


async def test_many_failed_checks_with_large_keys_and_values_fit_the_trailers(
    client: AsyncClient, replicas: list[Coordinator], namespace: str
) -> None:
    keys = [f"{i:02d}/" + "k" * 500 for i in range(64)]
    for start in range(0, 64, 4):
        await client.kv.txn({}, [Put(k, b"x" * (8 * 1024)) for k in keys[start : start + 4]])
    async with Stubs(replicas[0].address) as raw:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await raw.kv.Txn(
                kv_pb2.TxnRequest(
                    checks=[
                        kv_pb2.TxnCheck(
                            key=k, precondition=kv_pb2.Precondition(must_not_exist=True)
                        )
                        for k in keys
                    ],
                    ops=[kv_pb2.TxnOp(put=kv_pb2.TxnPut(key="other", value=b"y"))],
                    return_current_on_failure=True,
                ),
                metadata=identity(namespace),
            )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    trailer = dict(refused.value.trailing_metadata() or ())["grpc-status-details-bin"]
    assert len(base64.b64encode(trailer)) < 8 * 1024  # under the soft limit, as sent
    status = status_pb2.Status.FromString(trailer)
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    listed = int(info.metadata["listed_checks"])
    assert info.metadata["failed_checks"] == "64" and 0 < listed < 64
    assert "64 checks failed" in status.message
    assert await client.kv.get("other") is None  # nothing written
    # Accord's client gets the error and every listed value.
    with pytest.raises(ConditionFailedError) as err:
        await client.kv.txn(
            {k: Expect(absent=True) for k in keys},
            [Put("other", b"y")],
            return_current_on_failure=True,
        )
    assert len(err.value.failures) == listed
    assert all(f.current.value == b"x" * (8 * 1024) for f in err.value.failures)


async def test_page_tokens_beyond_int64_are_refused(
    client: AsyncClient, replicas: list[Coordinator], namespace: str
) -> None:
    await client.kv.put("a", b"1")
    forged = base64.urlsafe_b64encode(f"{2**64}:1:a".encode()).decode().rstrip("=")
    async with Stubs(replicas[0].address) as raw:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await raw.kv.List(
                kv_pb2.ListRequest(prefix="", page_token=forged), metadata=identity(namespace)
            )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in (refused.value.details() or "")


def _failure(detail: Any) -> kv_pb2.ConditionFailure:
    out = kv_pb2.ConditionFailure()
    detail.Unpack(out)
    return out


async def test_a_txn_deleting_large_values_answers_a_default_client(
    client: AsyncClient, replicas: list[Coordinator], namespace: str
) -> None:
    """32 deletes (the most one Txn takes) of 256 KiB values: their previous values would
    make an 8 MiB answer, refused by a standard client after the deletes applied."""
    values = {f"d{i:02d}": big_value(i) for i in range(32)}
    for key, value in values.items():
        await client.kv.put(key, value)
    request = kv_pb2.TxnRequest(
        ops=[kv_pb2.TxnOp(delete=kv_pb2.TxnDelete(key=key)) for key in values],
        request_id="delete-them-all",
    )
    async with Stubs(replicas[0].address) as raw:
        first = await raw.kv.Txn(request, metadata=identity(namespace))
        again = await raw.kv.Txn(request, metadata=identity(namespace))  # a retry
    for answer in (first, again):
        assert answer.ByteSize() < DEFAULT_MAX_MESSAGE
        assert all(r.deleted and r.kv.key in values for r in answer.results)
        omitted = [r for r in answer.results if r.value_omitted]
        assert omitted and all(not r.kv.value for r in omitted)
        assert all(r.kv.value == values[r.kv.key] for r in answer.results if not r.value_omitted)
    assert again.replayed and again.revision == first.revision
    assert await client.kv.list_all("d") == []
    # Accord's client reads what was left out, as of just before the transaction.
    for key, value in values.items():
        await client.kv.put(key, value)
    done = await client.kv.txn({}, [Delete(key) for key in values])
    assert [kv.value if kv else None for kv in done.kvs] == list(values.values())


async def test_a_watch_catching_up_on_large_values_fits_a_default_client(
    client: AsyncClient, replicas: list[Coordinator], namespace: str
) -> None:
    """Catching up, etcd sends up to 1,000 revisions in one response: 20 values of 256 KiB
    become several messages, each resuming where the next begins."""
    written = [(await client.kv.put(f"w/{i:02d}", big_value(i))).revision for i in range(20)]
    events: list[kv_pb2.WatchEvent] = []
    async with Stubs(replicas[0].address) as raw:
        stream = raw.kv.Watch(
            kv_pb2.WatchRequest(key="w/", prefix=True, start_revision=written[0]),
            metadata=identity(namespace),
        )
        responses = 0
        async with asyncio.timeout(30):
            async for response in stream:
                assert response.ByteSize() < DEFAULT_MAX_MESSAGE
                if response.events:
                    responses += 1
                    events += response.events
                    assert response.resume_revision == response.events[-1].kv.mod_revision + 1
                if len(events) >= len(written):
                    break
        stream.cancel()
    assert [e.kv.mod_revision for e in events] == written  # each once, in order
    assert all(e.kv.value == big_value(i) for i, e in enumerate(events))
    assert responses > 1


async def test_one_revisions_large_events_span_watch_responses(
    client: AsyncClient, replicas: list[Coordinator], namespace: str
) -> None:
    """A Txn deleting 32 keys of 256 KiB, watched with prev_kv: one revision, 8 MiB of
    events. They span responses, and one that ends inside the revision resumes at it (so a
    resumed watch gets the whole revision again rather than lose part of it)."""
    keys = [f"t/{i:02d}" for i in range(32)]
    for i, key in enumerate(keys):
        await client.kv.put(key, big_value(i))
    events: list[kv_pb2.WatchEvent] = []
    resumes: list[int] = []
    async with Stubs(replicas[1].address) as raw:
        stream = raw.kv.Watch(
            kv_pb2.WatchRequest(key="t/", prefix=True, prev_kv=True),
            metadata=identity(namespace),
        )
        async with asyncio.timeout(30):
            async for response in stream:
                if not response.events:  # registered: now delete them all at once
                    done = await client.kv.txn({}, [Delete(key) for key in keys])
                    continue
                assert response.ByteSize() < DEFAULT_MAX_MESSAGE
                events += response.events
                resumes.append(response.resume_revision)
                if len(events) >= len(keys):
                    break
        stream.cancel()
    assert [e.kv.key for e in events] == keys
    assert all(e.kv.mod_revision == done.revision for e in events)
    assert all(e.prev_kv.value == big_value(i) for i, e in enumerate(events))
    assert len(resumes) > 1
    assert resumes[:-1] == [done.revision] * (len(resumes) - 1) and resumes[-1] == done.revision + 1
