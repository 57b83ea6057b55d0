"""Causality across agents: a writer's trace context travels with what it wrote. Agent A
works in a span and writes through one replica; agent B receives what A wrote through the
other replica (a watch event, a lock grant after A's release, a vote's decision, a
session update), starts its own span linked to A's, and makes its next call, whose
recorded provenance names B's span. The spans come from the OpenTelemetry SDK with an
in-memory exporter in this process; B links (rather than parents) its span to A's: A's
trace ended when its call returned, and "reacts to" is what an OTel link says.

Bad input is in test_causality_bad_input.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from opentelemetry import baggage, context, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pycrdt import Doc, Text, create_update_message
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from accord.client import AsyncClient, DecisionEvent, UpdateEvent, link, ops
from accord.client import TraceContext as Recorded
from accord.v1 import records_pb2
from tests.harness import (
    Coordinator,
    EtcdMember,
    eventually,
    make_client,
    token_for,
)


class Spans:
    """A tracer whose finished spans are kept in memory (its own provider: the global one
    is left alone)."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = provider.get_tracer("accord-tests")

    def finished(self, name: str) -> ReadableSpan:
        (span,) = [s for s in self.exporter.get_finished_spans() if s.name == name]
        return span


@pytest.fixture
def spans() -> Iterator[Spans]:
    kept = Spans()
    yield kept
    kept.exporter.clear()


@pytest.fixture
async def agents(replicas: list[Coordinator], namespace: str) -> AsyncIterator[list[AsyncClient]]:
    """Agent A on the first replica, agent B on the second."""
    a = make_client([replicas[0].address], namespace, agent="agent-a")
    b = make_client([replicas[1].address], namespace, agent="agent-b")
    yield [a, b]
    await a.close()
    await b.close()


def ids(recorded: Recorded | None) -> tuple[int, int]:
    """(trace id, span id) a recorded traceparent names."""
    assert recorded is not None, "no trace context was recorded"
    _, trace_id, span_id, _ = recorded.traceparent.split("-")
    return int(trace_id, 16), int(span_id, 16)


def span_ids(span: ReadableSpan) -> tuple[int, int]:
    assert span.context is not None
    return span.context.trace_id, span.context.span_id


async def react(spans: Spans, b: AsyncClient, source: Any, key: str) -> None:
    """B reacts to source in a span linked to the writer's, and writes key inside it; the
    span links to the writer's span and B's write records B's span."""
    with spans.tracer.start_as_current_span("b-reacts", links=[link(source)]):
        await b.kv.put(key, b"reacted")
    reacted = spans.finished("b-reacts")
    writer = spans.finished("a-acts")
    assert [span_ids_of(lk.context) for lk in reacted.links] == [span_ids(writer)]
    written = await b.kv.get(key)
    assert written is not None
    assert ids(written.written_by.trace_context) == span_ids(reacted)


def span_ids_of(span_context: trace.SpanContext) -> tuple[int, int]:
    return span_context.trace_id, span_context.span_id


async def test_a_watch_event_on_another_replica_carries_the_writers_context(
    agents: list[AsyncClient], spans: Spans
) -> None:
    a, b = agents
    watch = b.kv.watch("plan/", prefix=True)
    await watch.start()
    # A's budget travels in its baggage, for a downstream agent to inherit.
    token = context.attach(baggage.set_baggage("accord.deadline", "1900000000000"))
    try:
        with spans.tracer.start_as_current_span("a-acts"):
            await a.kv.put("plan/step", b"1")
    finally:
        context.detach(token)
    async with asyncio.timeout(10):
        event = await anext(aiter(watch))
    assert event.kv.key == "plan/step"
    assert ids(event.trace_context) == span_ids(spans.finished("a-acts"))
    assert event.trace_context is not None
    assert event.trace_context.baggage_items() == {"accord.deadline": "1900000000000"}
    await react(spans, b, event, "plan/reaction")
    # One linked trace: B's span starts its own trace and links to A's.
    reacted, acted = spans.finished("b-reacts"), spans.finished("a-acts")
    assert reacted.parent is None and reacted.links[0].context.trace_id == span_ids(acted)[0]
    await watch.aclose()


async def test_each_write_of_a_batch_records_the_context_it_was_made_in(
    replicas: list[Coordinator], namespace: str, spans: Spans
) -> None:
    """Concurrent writes share KV.Batch messages, whose metadata carries the first one's
    context: every other names its own (or none), and records exactly that."""
    async with make_client([replicas[0].address], namespace, agent="agent-a") as a:

        async def write(i: int) -> tuple[int, int] | None:
            if i % 3 == 0:  # made outside any span
                await a.kv.put(f"w{i}", b"v")
                return None
            with spans.tracer.start_as_current_span(f"w{i}") as span:
                await a.kv.put(f"w{i}", b"v")
                return span_ids_of(span.get_span_context())

        made = await asyncio.gather(*(write(i) for i in range(24)))
        assert a._coalescer.batches > 0  # they did share messages
        for i, expected in enumerate(made):
            got = await a.kv.get(f"w{i}")
            assert got is not None
            if expected is None:
                assert got.written_by.trace_context is None, i
            else:
                assert ids(got.written_by.trace_context) == expected, i


@pytest.mark.parametrize("permits", [0, 1], ids=["lock", "semaphore"])
async def test_a_lock_grant_after_a_hand_off_carries_the_releasers_context(
    agents: list[AsyncClient], spans: Spans, permits: int
) -> None:
    """A lock's waiter is found holding by a read; a semaphore's is marked holding by a
    write: both read who handed it over in that same transaction."""
    a, b = agents
    async with await a.leases.grant(ttl=30) as lease_a, await b.leases.grant(ttl=30) as lease_b:
        first = await a.locks.acquire("doc", lease_a, permits=permits)
        assert first.handed_off_by is None  # granted at once: nothing handed it over
        waiting = asyncio.create_task(b.locks.acquire("doc", lease_b, permits=permits, wait=20))
        await _queued(a, "doc", 2)
        with spans.tracer.start_as_current_span("a-acts"):
            await a.locks.release(first)
        grant = await waiting
        assert ids(grant.handed_off_by) == span_ids(spans.finished("a-acts"))
        await react(spans, b, grant, "after-lock")
        # An untraced release hands over nothing: B's grant above is not repeated.
        again = asyncio.create_task(a.locks.acquire("doc", lease_a, permits=permits, wait=20))
        await _queued(a, "doc", 2)
        await b.locks.release(grant)
        assert (await again).handed_off_by is None


async def test_acquire_many_grants_say_which_release_handed_each_over(
    agents: list[AsyncClient], spans: Spans
) -> None:
    a, b = agents
    async with await a.leases.grant(ttl=30) as lease_a, await b.leases.grant(ttl=30) as lease_b:
        held = await a.locks.acquire("m-1", lease_a)
        waiting = asyncio.create_task(b.locks.acquire_many(["m-1", "m-2"], lease_b, wait=20))
        await _queued(a, "m-1", 2)
        with spans.tracer.start_as_current_span("a-acts"):
            await a.locks.release(held)
        first, second = await waiting
    assert ids(first.handed_off_by) == span_ids(spans.finished("a-acts"))
    assert second.handed_off_by is None  # free: granted at once


async def _queued(client: AsyncClient, lock: str, entries: int) -> None:
    async with asyncio.timeout(10):
        while True:
            state, _ = await client.locks.describe(lock)
            if len(state.holders) + len(state.waiters) >= entries:
                return
            await asyncio.sleep(0.02)


async def test_a_vote_decision_carries_the_deciding_ballots_context(
    agents: list[AsyncClient], spans: Spans
) -> None:
    a, b = agents
    vote = await b.votes.propose(
        "ship?", ["yes", "no"], voters=["agent-a", "agent-b"], voting_period=600
    )
    watch = b.votes.watch(vote.id)
    await anext(watch)  # the state: watching from here on
    await b.votes.cast(vote.id, "yes")
    with spans.tracer.start_as_current_span("a-acts"):
        await a.votes.cast(vote.id, "yes")  # decides: both voters said yes
    async with asyncio.timeout(10):
        decided = [e async for e in watch if isinstance(e, DecisionEvent)]
    assert ids(decided[0].trace_context) == span_ids(spans.finished("a-acts"))
    await react(spans, b, decided[0], "after-vote")


async def test_a_cancelled_votes_decision_carries_the_cancels_context(
    agents: list[AsyncClient], spans: Spans
) -> None:
    a, b = agents
    vote = await a.votes.propose("ship?", ["yes", "no"], voters=["agent-b"], voting_period=600)
    watch = b.votes.watch(vote.id)
    await anext(watch)
    with spans.tracer.start_as_current_span("a-acts"):
        await a.votes.cancel(vote.id, "superseded")
    async with asyncio.timeout(10):
        decided = [e async for e in watch if isinstance(e, DecisionEvent)]
    assert ids(decided[0].trace_context) == span_ids(spans.finished("a-acts"))


async def test_an_applied_operation_carries_the_appliers_context(
    agents: list[AsyncClient], spans: Spans
) -> None:
    a, b = agents
    await a.sessions.open("ops")
    updates = b.sessions.subscribe("ops")
    async with asyncio.timeout(10):
        await anext(updates)
        with spans.tracer.start_as_current_span("a-acts"):
            await a.sessions.apply("ops", ops.text_insert("notes", 0, "hello"))
        applied = await _next_update(updates)
    assert ids(applied.trace_context) == span_ids(spans.finished("a-acts"))
    await updates.aclose()


async def test_a_session_update_carries_the_pushers_context(
    agents: list[AsyncClient], spans: Spans
) -> None:
    a, b = agents
    await a.sessions.open("notes")
    updates = b.sessions.subscribe("notes")
    async with asyncio.timeout(10):
        initial = await anext(updates)
        assert isinstance(initial, UpdateEvent) and initial.trace_context is None  # merged
        doc = Doc()
        text = doc.get("notes", type=Text)
        before = doc.get_state()
        text += "first"
        await a.sessions.push("notes", doc.get_update(before))  # untraced: carries none
        assert (await _next_update(updates)).trace_context is None
        before = doc.get_state()
        text += " then"
        with spans.tracer.start_as_current_span("a-acts"):
            await a.sessions.push("notes", doc.get_update(before))
        pushed = await _next_update(updates)
    assert ids(pushed.trace_context) == span_ids(spans.finished("a-acts"))
    await react(spans, b, pushed, "after-update")
    await updates.aclose()


async def test_compaction_deletes_the_updates_trace_contexts(
    agents: list[AsyncClient], spans: Spans, etcd: EtcdMember, namespace: str
) -> None:
    """An update's trace context is kept in etcd only until the log it belongs to is
    folded into a snapshot (beyond that no watcher needs it)."""
    a, _ = agents
    await a.sessions.open("folded")
    doc = Doc()
    text = doc.get("notes", type=Text)

    async def push(traced: bool) -> int:
        before = doc.get_state()
        text.insert(len(text), "x" * 1024)
        if not traced:
            return await a.sessions.push("folded", doc.get_update(before))
        with spans.tracer.start_as_current_span("a-acts"):
            return await a.sessions.push("folded", doc.get_update(before))

    async def stored() -> tuple[int, int]:
        """(snapshot revision, trace keys) in etcd."""
        record = etcd.kvs(f"accord/ns/{namespace}/sessions/folded")[0].value
        keys = etcd.kvs(f"accord/ns/{namespace}/sdata/folded", prefix=True)
        traces = sum(b"\x00trace\x00" in k.key for k in keys)
        return records_pb2.SessionRecord.FromString(record).snapshot_revision, traces

    last_traced = 0
    for _ in range(8):
        last_traced = await push(traced=True)
    assert (await stored())[1] == 8  # one per traced update; none for the others

    async def folded() -> tuple[int, int]:
        await push(traced=False)  # grows the log until a compaction covers the traced ones
        return await stored()

    snapshot, traces = await eventually(folded, lambda s: s[0] > last_traced and s[1] == 0)
    assert snapshot > last_traced and traces == 0, (snapshot, traces)


async def _next_update(events: AsyncIterator[Any]) -> UpdateEvent:
    async for event in events:
        if isinstance(event, UpdateEvent):
            return event
    raise AssertionError("the stream ended")


GOOD = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_an_update_from_a_yjs_app_carries_its_urls_context(
    replicas: list[Coordinator], namespace: str, agents: list[AsyncClient]
) -> None:
    """y-websocket sends its `params` as URL query parameters: a traceparent there is
    recorded with every update the socket pushes, and a gRPC subscriber gets it."""
    _, b = agents
    await b.sessions.open("yjs")
    updates = b.sessions.subscribe("yjs")
    url = f"{replicas[0].ws_url}/{namespace}/yjs?agent=yjs-app&traceparent={GOOD}"
    token = token_for(namespace, "yjs-app")
    auth = {} if token is None else {"subprotocols": [Subprotocol(token)]}
    async with asyncio.timeout(10):
        await anext(updates)  # the state: subscribed from here on
        async with connect(url, **auth) as socket:
            await socket.send(b"\x00\x00\x01\x00")  # sync step 1: an empty state vector
            local: Doc[Any] = Doc()
            local.get("text", type=Text).insert(0, "from the app")
            await socket.send(create_update_message(local.get_update()))
            pushed = await _next_update(updates)
    assert pushed.trace_context is not None and pushed.trace_context.traceparent == GOOD
    await updates.aclose()
