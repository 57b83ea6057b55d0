"""accord_session_update_delivery_seconds times a message from the arrival of the oldest
update it carries: a subscriber's queue keeps each update's arrival through merges and
coalescing, and the state a subscriber starts from (arrival 0.0) is not timed."""

from __future__ import annotations

from pycrdt import Doc, Text

from accord.coordinator.sessions.subscribers import MAX_PENDING_EVENTS, Event, Subscriber


def updates(count: int) -> list[Event]:
    doc: Doc = Doc()
    text = doc.get("text", type=Text)
    out = []
    for step in range(count):
        before = doc.get_state()
        text += str(step % 10)
        out.append(Event(revision=step + 1, update=doc.get_update(before)))
    return out


def test_a_merged_message_is_timed_from_its_oldest_update() -> None:
    subscriber = Subscriber(presence=False)
    first, second, third = updates(3)
    subscriber.offer(first, "update", 0.0)  # the starting state: not timed
    subscriber.offer(second, "update", 7.0)
    subscriber.offer(third, "update", 5.0)
    event, arrived = subscriber._next()
    assert event.revision == 3  # the three went out as one message
    assert arrived == 5.0


def test_coalesced_updates_keep_their_oldest_arrival() -> None:
    subscriber = Subscriber(presence=False)
    burst = updates(MAX_PENDING_EVENTS + 1)  # one more than it queues unmerged
    for i, event in enumerate(burst):
        subscriber.offer(event, "update", 100.0 + i)
    event, arrived = subscriber._next()
    assert event.revision == len(burst)
    assert arrived == 100.0


def test_the_starting_state_alone_is_not_timed() -> None:
    subscriber = Subscriber(presence=False)
    subscriber.offer(updates(1)[0], "update")
    assert subscriber._next()[1] == 0.0
