"""A subscriber's queue when its reader is slow: nothing is lost (the latest state of every
presence client, every update merged), and the queue stays within twice what it must hold."""

from __future__ import annotations

from pycrdt import Doc, Text

from accord.coordinator.sessions.sizes import MAX_MERGED_BYTES
from accord.coordinator.sessions.subscribers import MAX_PENDING_EVENTS, Event, Merges, Subscriber
from accord.v1 import sessions_pb2


def presence(client_id: int, step: int) -> Event:
    state = f'{{"step": {step}}}'
    return Event(
        revision=step, presence=sessions_pb2.Presence(client_id=client_id, state_json=state)
    )


async def drain(subscriber: Subscriber) -> list[Event]:
    subscriber.end(None)
    return [event async for event in subscriber.events()]


async def test_a_slow_reader_gets_every_clients_latest_presence_and_every_update() -> None:
    clients = 3 * MAX_PENDING_EVENTS  # more distinct clients than the queue's limit
    doc: Doc = Doc()
    text = doc.get("text", type=Text)
    subscriber = Subscriber(presence=True)
    for step in range(3):
        for client_id in range(clients):
            subscriber.offer(presence(client_id, step))
            assert len(subscriber._events) <= 2 * (clients + 1)  # bounded by what it holds
        before = doc.get_state()
        text += f"{step};"
        subscriber.offer(Event(revision=10 + step, update=doc.get_update(before)))
    events = await drain(subscriber)
    latest = {
        e.presence.client_id: e.presence.state_json
        for e in events
        if e.WhichOneof("event") == "presence"
    }
    assert latest == {c: '{"step": 2}' for c in range(clients)}
    replica: Doc = Doc()
    for event in events:
        if event.WhichOneof("event") == "update":
            replica.apply_update(event.update)
    assert str(replica.get("text", type=Text)) == "0;1;2;"


def test_offering_stays_linear_in_presence_clients() -> None:
    """With many clients queued, coalescing runs O(log n) times for n offers, not once per
    offer (counted by the queue's length at each coalescing: their sum stays O(n))."""
    subscriber = Subscriber(presence=True)
    coalesced: list[int] = []
    coalesce = subscriber._coalesce

    def counting() -> None:
        coalesced.append(len(subscriber._events))
        coalesce()

    subscriber._coalesce = counting  # type: ignore[method-assign]
    offers = 20_000
    for i in range(offers):
        subscriber.offer(presence(i % 5_000, i))
    assert sum(coalesced) < 4 * offers


async def test_a_slow_readers_merged_updates_each_fit_a_default_client() -> None:
    """300 queued updates of 16 KiB (4.7 MiB): merged into messages of at most
    MAX_MERGED_BYTES each (a standard client takes 4 MiB), and nothing lost."""
    doc: Doc = Doc()
    text = doc.get("text", type=Text)
    subscriber = Subscriber(presence=False)
    piece = "x" * (16 * 1024)
    for step in range(300):
        before = doc.get_state()
        text += piece
        subscriber.offer(Event(revision=step + 1, update=doc.get_update(before)))
    events = await drain(subscriber)
    assert len(events) > 1
    assert all(len(e.update) <= MAX_MERGED_BYTES + 1024 for e in events)
    replica: Doc = Doc()
    for event in events:
        replica.apply_update(event.update)
    assert len(str(replica.get("text", type=Text))) == 300 * len(piece)


async def test_readers_behind_by_the_same_updates_share_one_merge() -> None:
    """A burst queued for many subscribers of a session is merged once for all of them (the
    same message object), and each still gets every update, in order."""
    doc: Doc = Doc()
    text = doc.get("text", type=Text)
    merges = Merges()
    readers = [Subscriber(presence=False, merges=merges) for _ in range(50)]
    lagging = Subscriber(presence=False, merges=merges)  # read one update before the rest
    for step in range(5):
        before = doc.get_state()
        text += str(step)
        event = Event(revision=step + 1, update=doc.get_update(before))
        for reader in [*readers, lagging]:
            reader.offer(event, "update")
        if step == 0:
            first, _ = lagging._next()  # (event, when its oldest update arrived)
            assert first is event
    merged = [await drain(reader) for reader in readers]
    assert all(len(got) == 1 and got[0] is merged[0][0] for got in merged)
    rest = await drain(lagging)
    assert len(rest) == 1 and rest[0] is not merged[0][0]  # another run: its own merge
    for events in (merged[0], [first, *rest]):
        replica: Doc = Doc()
        for e in events:
            replica.apply_update(e.update)
        assert str(replica.get("text", type=Text)) == "01234"
        assert events[-1].revision == 5
