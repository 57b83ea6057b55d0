"""Reads and writes, provenance, namespaces, listing."""

from __future__ import annotations

from accord.client import AsyncClient, Expect, InvalidArgumentError
from tests.harness import Coordinator, make_client


async def test_put_get_records_value_revisions_and_provenance(client: AsyncClient) -> None:
    first = await client.kv.put("plan", b"v1")
    second = await client.kv.put("plan", b"v2")
    kv = await client.kv.get("plan")
    assert kv is not None
    assert kv.value == b"v2"
    assert kv.version == 2
    assert kv.create_revision == first.revision
    assert kv.mod_revision == second.revision > first.revision
    assert kv.written_by.agent_id == "tester"
    assert kv.written_by.written_at is not None
    assert second.kv is not None and second.kv.version == 2


async def test_get_missing_key_returns_none(client: AsyncClient) -> None:
    assert await client.kv.get("nothing-here") is None


async def test_get_as_of_older_revision_and_serializable(client: AsyncClient) -> None:
    old = await client.kv.put("k", "old")
    await client.kv.put("k", "new")
    past = await client.kv.get("k", revision=old.revision)
    assert past is not None and past.value == b"old"
    now = await client.kv.get("k", serializable=True)
    assert now is not None and now.value == b"new"


async def test_namespaces_are_isolated(replicas: list[Coordinator], namespace: str) -> None:
    async with (
        make_client([replicas[0].address], namespace + "-a") as a,
        make_client([replicas[1].address], namespace + "-b") as b,
    ):
        await a.kv.put("shared-name", b"from a")
        assert await b.kv.get("shared-name") is None
        assert (await b.kv.list("")).kvs == []
        await b.kv.put("shared-name", b"from b")
        got = await a.kv.get("shared-name")
        assert got is not None and got.value == b"from a"


async def test_list_pages_share_one_revision(client: AsyncClient) -> None:
    for i in range(25):
        await client.kv.put(f"items/{i:03d}", str(i))
    await client.kv.put("other", b"x")
    first = await client.kv.list("items/", limit=10)
    assert [kv.key for kv in first.kvs] == [f"items/{i:03d}" for i in range(10)]
    assert first.total == 25 and first.next_page_token
    # A write between pages is invisible to the rest of this listing...
    await client.kv.put("items/005", b"changed")
    await client.kv.put("items/999", b"late")
    second = await client.kv.list("items/", limit=10, page_token=first.next_page_token)
    third = await client.kv.list("items/", limit=10, page_token=second.next_page_token)
    assert [kv.key for kv in second.kvs + third.kvs] == [f"items/{i:03d}" for i in range(10, 25)]
    assert second.revision == first.revision == third.revision
    assert third.next_page_token == ""
    # ...and visible to a new one.
    everything = await client.kv.list_all("items/")
    assert len(everything) == 26


async def test_list_keys_only_omits_values(client: AsyncClient) -> None:
    await client.kv.put("a/1", b"payload")
    page = await client.kv.list("a/", keys_only=True)
    assert [kv.key for kv in page.kvs] == ["a/1"]
    assert page.kvs[0].value == b"" and page.kvs[0].version == 1


async def test_restore_an_earlier_value_from_history(client: AsyncClient) -> None:
    await client.kv.put("doc", b"good")
    await client.kv.put("doc", b"bad")
    history = await client.kv.history("doc")
    good = next(e for e in history.entries if e.kv.value == b"good")
    current = await client.kv.get("doc")
    assert current is not None
    await client.kv.put("doc", good.kv.value, expect=Expect(mod_revision=current.mod_revision))
    restored = await client.kv.get("doc")
    assert restored is not None and restored.value == b"good" and restored.version == 3


async def test_history_lists_puts_and_deletes_with_authors(
    replicas: list[Coordinator], namespace: str
) -> None:
    async with (
        make_client([replicas[0].address], namespace, agent="alice") as alice,
        make_client([replicas[1].address], namespace, agent="bob") as bob,
    ):
        r1 = await alice.kv.put("note", b"one")
        r2 = await bob.kv.put("note", b"two")
        d = await bob.kv.delete("note")
        r3 = await alice.kv.put("note", b"three")
        await alice.kv.put("unrelated", b"x")
        history = await alice.kv.history("note")
        kinds = [
            (e.type.value, e.revision, e.kv.value, e.changed_by.agent_id) for e in history.entries
        ]
        assert kinds == [
            ("put", r3.revision, b"three", "alice"),
            ("delete", d.revision, b"", "bob"),
            ("put", r2.revision, b"two", "bob"),
            ("put", r1.revision, b"one", "alice"),
        ]
        assert history.next_before_revision == 0
        # Paging: two at a time, newest first.
        page1 = await alice.kv.history("note", limit=2)
        page2 = await alice.kv.history("note", limit=2, before_revision=page1.next_before_revision)
        assert [e.revision for e in page1.entries + page2.entries] == [
            r3.revision,
            d.revision,
            r2.revision,
            r1.revision,
        ]


async def test_history_of_deleted_key(client: AsyncClient) -> None:
    await client.kv.put("gone", b"last words")
    await client.kv.delete("gone")
    history = await client.kv.history("gone")
    assert [e.type.value for e in history.entries] == ["delete", "put"]
    assert history.entries[1].kv.value == b"last words"


async def test_delete_missing_key_is_not_an_error(client: AsyncClient) -> None:
    result = await client.kv.delete("never-existed")
    assert result.deleted is False and result.prev is None


async def test_bad_revision_is_invalid(client: AsyncClient) -> None:
    try:
        await client.kv.get("k", revision=10**12)
    except InvalidArgumentError as exc:
        assert exc.field_violations[0][0] == "revision"
    else:
        raise AssertionError("a future revision must be refused")
