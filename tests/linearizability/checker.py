"""Is a history linearizable? Wing and Gong's search with Lowe's memoization, per partition.

A history is linearizable when its operations can be put in one order that (a) keeps
real-time order: an operation that returned before another was called comes first, and
(b) the model accepts: each operation, applied in that order, could have given the output
it gave. Operations on different partitions (keys) never constrain each other, so each
partition is checked alone (P-compositionality: Herlihy and Wing), which keeps the search
small.

The search walks the partition's call and return events in time order. At a call it tries
to linearize that operation next (the model gives the states it may leave); at a return
whose call it has not placed, the order so far cannot be extended and it backtracks.
Lowe's cache of (operations placed, model state) pairs prunes orders that reach a
configuration already explored, which makes the usual histories (thousands of operations,
a handful of concurrent clients) quick. The set of operations placed is keyed by a 64-bit
Zobrist hash (an XOR of a random word per operation, updated in O(1)), not by the set
itself, whose hashing grows with the history; a collision could only wrongly prune, never
wrongly accept, so a "not linearizable" verdict is confirmed by a second search keyed by
the exact sets.

An indeterminate operation (history.INDETERMINATE output) has no return event: it may be
placed anywhere after its call, and the model's step says what it may have done; "it never
took effect" is always allowed (placed as a step that leaves the state unchanged).

Error handling: a model that raises propagates. A search past its deadline answers
ok=None (unknown) for that partition instead of a verdict.
"""

from __future__ import annotations

import random
import time
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from tests.linearizability.history import INDETERMINATE, Operation, partitions

S = TypeVar("S", bound=Hashable)
_CHECK_CLOCK_EVERY = 4096  # search steps between deadline checks


class Model(Protocol[S]):
    """A sequential specification: what one operation may do to a state."""

    def init(self) -> S:
        """The state before any operation."""
        ...

    def step(self, state: S, input: Hashable, output: Hashable) -> Iterable[S]:
        """The states an operation with this input may leave behind, applied to state,
        having answered output (none: it could not have answered that). With output
        INDETERMINATE: the states it leaves if it took effect."""
        ...


@dataclass(frozen=True, slots=True)
class PartitionResult:
    partition: Hashable
    # True: linearizable; False: not; None: the search ran out of time.
    ok: bool | None
    operations: int
    # ok: a linearization (indeterminate operations that never took effect included, at
    # the point the search placed them as no-ops). Not ok: the longest order the search
    # found, and `stuck` the operations that could not extend it.
    order: tuple[Operation, ...] = ()
    stuck: tuple[Operation, ...] = ()


@dataclass(frozen=True, slots=True)
class Result:
    ok: bool | None
    partitions: tuple[PartitionResult, ...]
    seconds: float
    operations: int = field(default=0)

    @property
    def failures(self) -> tuple[PartitionResult, ...]:
        return tuple(p for p in self.partitions if p.ok is False)


def check(
    history: Iterable[Operation],
    model: Model[S],
    *,
    timeout: float | None = None,
    explain: bool = True,
) -> Result:
    """The verdict on history against model. timeout: seconds for the whole check (None:
    no limit). explain: a failing partition is searched again to report the longest order
    found and the operations stuck after it."""
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    results: list[PartitionResult] = []
    total = 0
    for partition, ops in partitions(history).items():
        total += len(ops)
        result = _check_partition(partition, ops, model, deadline, exact=False)
        if result.ok is False:  # confirmed without hashing, and explained
            result = _check_partition(partition, ops, model, None, exact=True, explain=explain)
        results.append(result)
    verdicts = [r.ok for r in results]
    ok: bool | None = False if False in verdicts else None if None in verdicts else True
    return Result(ok, tuple(results), time.monotonic() - started, total)


class _Node:
    """A call or return event in the doubly linked list the search lifts entries out of."""

    __slots__ = ("index", "is_call", "match", "next", "prev")

    def __init__(self, index: int, is_call: bool) -> None:
        self.index = index
        self.is_call = is_call
        self.match: _Node | None = None  # a call's return event (None: indeterminate)
        self.prev: _Node | None = None
        self.next: _Node | None = None


def _events(ops: Sequence[Operation]) -> _Node:
    """The sentinel head of the list of events in time order (at equal times calls come
    first: operations that touch at an instant overlap)."""
    timed: list[tuple[float, int, int]] = []
    for i, op in enumerate(ops):
        timed.append((op.call, 0, i))
        if op.ret is not None:
            timed.append((op.ret, 1, i))
    timed.sort()
    head = _Node(-1, False)
    calls: dict[int, _Node] = {}
    last = head
    for _, kind, i in timed:
        node = _Node(i, kind == 0)
        if node.is_call:
            calls[i] = node
        else:
            calls[i].match = node
        node.prev = last
        last.next = node
        last = node
    return head


def _lift(call: _Node) -> None:
    """Take a call (and its return) out of the list."""
    assert call.prev is not None
    call.prev.next = call.next
    if call.next is not None:
        call.next.prev = call.prev
    ret = call.match
    if ret is not None:
        assert ret.prev is not None
        ret.prev.next = ret.next
        if ret.next is not None:
            ret.next.prev = ret.prev


def _unlift(call: _Node) -> None:
    """Put back what _lift took out (in the reverse order)."""
    ret = call.match
    if ret is not None:
        assert ret.prev is not None
        ret.prev.next = ret
        if ret.next is not None:
            ret.next.prev = ret
    assert call.prev is not None
    call.prev.next = call
    if call.next is not None:
        call.next.prev = call


def _outcomes(model: Model[S], state: S, op: Operation) -> list[S]:
    """The states op may leave, without repeats; an indeterminate op may also have done
    nothing."""
    found = list(dict.fromkeys(model.step(state, op.input, op.output)))
    if op.output is INDETERMINATE and state not in found:
        found.append(state)
    return found


def _check_partition(
    partition: Hashable,
    ops: Sequence[Operation],
    model: Model[S],
    deadline: float | None,
    *,
    exact: bool,
    explain: bool = False,
) -> PartitionResult:
    head = _events(ops)
    state = model.init()
    # The operations linearized so far: a bitset (exact), or its Zobrist hash.
    rng = random.Random(len(ops))
    words = [1 << i for i in range(len(ops))] if exact else [rng.getrandbits(64) for _ in ops]
    placed = 0
    seen: set[tuple[int, S]] = set()
    # (call event, state before it, the outcomes it had, which one was taken)
    stack: list[tuple[_Node, S, list[S], int]] = []
    best: list[int] = []
    best_stuck: list[int] = []
    steps = 0
    entry = head.next

    def place(node: _Node, before: S, outcomes: list[S], start: int) -> S | None:
        """Linearize node's operation next with the first outcome from start that leads
        somewhere new; its new state, or None when every one was explored before."""
        nonlocal placed
        word = words[node.index]
        for k in range(start, len(outcomes)):
            after = outcomes[k]
            key = (placed ^ word, after)
            if key in seen:
                continue
            seen.add(key)
            stack.append((node, before, outcomes, k))
            placed ^= word
            _lift(node)
            return after
        return None

    while head.next is not None:
        steps += 1
        if (
            deadline is not None
            and steps % _CHECK_CLOCK_EVERY == 0
            and (time.monotonic() > deadline)
        ):
            return PartitionResult(partition, None, len(ops))
        if entry is not None and entry.is_call:
            outcomes = _outcomes(model, state, ops[entry.index])
            after = place(entry, state, outcomes, 0)
            if after is not None:
                state = after
                if explain and len(stack) > len(best):
                    best = [n.index for n, _, _, _ in stack]
                entry = head.next
            else:
                entry = entry.next
            continue
        # A return whose call could not be placed before it (or the end, with only calls
        # left that lead nowhere new): backtrack.
        if explain and len(stack) == len(best):
            best_stuck = _pending_calls(head, entry)
        while True:
            if not stack:
                return _failure(partition, ops, best, best_stuck)
            node, before, outcomes, taken = stack.pop()
            placed ^= words[node.index]
            state = before
            _unlift(node)
            after = place(node, before, outcomes, taken + 1)
            if after is not None:
                state = after
                entry = head.next
                break
            if node.next is not None:
                entry = node.next
                break
    order = tuple(ops[n.index] for n, _, _, _ in stack)
    return PartitionResult(partition, True, len(ops), order=order)


def _pending_calls(head: _Node, upto: _Node | None) -> list[int]:
    """The operations whose calls are still in the list before upto: the candidates that
    could not be placed next."""
    pending: list[int] = []
    node = head.next
    while node is not None and node is not upto:
        if node.is_call:
            pending.append(node.index)
        node = node.next
    return pending


def _failure(
    partition: Hashable, ops: Sequence[Operation], best: list[int], stuck: list[int]
) -> PartitionResult:
    return PartitionResult(
        partition,
        False,
        len(ops),
        order=tuple(ops[i] for i in best),
        stuck=tuple(ops[i] for i in stuck),
    )
