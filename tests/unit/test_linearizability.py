"""The linearizability checker's self-tests: histories known not to be linearizable are
rejected, known good ones accepted, and on random small histories it agrees with a brute
force search over every order."""

from __future__ import annotations

import itertools
import random
from collections.abc import Hashable, Sequence

import pytest

from tests.linearizability import (
    INDETERMINATE,
    KvRegister,
    Model,
    Operation,
    Register,
    check,
)


def op(
    client: int,
    input: tuple[Hashable, ...],
    output: Hashable,
    call: float,
    ret: float | None,
    key: str = "",
) -> Operation:
    return Operation(client, input, output, call, ret, key)


def w(c: int, v: int, t0: float, t1: float | None, key: str = "") -> Operation:
    return op(c, ("write", v), None if t1 is not None else INDETERMINATE, t0, t1, key)


def r(c: int, v: Hashable, t0: float, t1: float, key: str = "") -> Operation:
    return op(c, ("read",), v, t0, t1, key)


def cas(c: int, old: int, new: int, ok: Hashable, t0: float, t1: float | None) -> Operation:
    return op(c, ("cas", old, new), ok, t0, t1)


BAD = {
    "stale read": [w(0, 1, 0, 1), r(1, 0, 2, 3)],
    "lost write": [w(0, 1, 0, 1), w(1, 2, 2, 3), r(2, 1, 4, 5)],
    "double CAS success": [cas(0, 0, 1, True, 0, 2), cas(1, 0, 2, True, 1, 3)],
    "read from the future": [r(0, 2, 0, 1), w(1, 2, 2, 3)],
    "value flips back": [w(0, 1, 0, 10), r(1, 1, 1, 2), r(2, 0, 3, 4)],
    "indeterminate write seen, then unseen": [w(0, 1, 0, None), r(1, 1, 1, 2), r(2, 0, 3, 4)],
    "CAS fails against the value it expects": [w(0, 5, 0, 1), cas(1, 5, 6, False, 2, 3)],
}

GOOD = {
    "concurrent read sees the old value": [w(0, 1, 0, 3), r(1, 0, 1, 2)],
    "concurrent read sees the new value": [w(0, 1, 0, 3), r(1, 1, 1, 2)],
    "indeterminate write never took effect": [w(0, 1, 0, None), r(1, 0, 5, 6)],
    "indeterminate write took effect late": [w(0, 1, 0, None), r(1, 0, 1, 2), r(2, 1, 3, 4)],
    "one CAS wins, the other fails": [cas(0, 0, 1, True, 0, 2), cas(1, 0, 2, False, 1, 3)],
    "calls touching at an instant overlap": [w(0, 1, 0, 1), r(1, 0, 1, 2)],
}


@pytest.mark.parametrize("name", BAD)
def test_rejects(name: str) -> None:
    result = check(BAD[name], Register(0))
    assert result.ok is False, name
    (failure,) = result.failures
    assert failure.stuck, "a failure names the operations that could not be placed"


@pytest.mark.parametrize("name", GOOD)
def test_accepts(name: str) -> None:
    result = check(GOOD[name], Register(0))
    assert result.ok is True, name
    (part,) = result.partitions
    assert len(part.order) == len(GOOD[name])


def test_partitions_are_checked_alone() -> None:
    history = [w(0, 1, 0, 1, "a"), r(1, 1, 2, 3, "a"), w(0, 7, 0, 1, "b"), r(1, 0, 2, 3, "b")]
    result = check(history, Register(0))
    assert result.ok is False
    assert [p.partition for p in result.failures] == ["b"]


def brute_force(history: Sequence[Operation], model: Model[Hashable]) -> bool:
    """Every order of every set of operations that keeps real-time order, with each
    indeterminate one in or out."""
    maybe = [o for o in history if o.indeterminate]
    sure = [o for o in history if not o.indeterminate]
    for k in range(len(maybe) + 1):
        for chosen in itertools.combinations(maybe, k):
            ops = sure + list(chosen)
            for order in itertools.permutations(ops):
                if any(
                    a.ret is not None and a.ret < b.call
                    for i, b in enumerate(order)
                    for a in order[i + 1 :]
                ):
                    continue
                states = {model.init()}
                for o in order:
                    states = {s2 for s in states for s2 in model.step(s, o.input, o.output)}
                    if not states:
                        break
                if states:
                    return True
    return False


def random_history(rng: random.Random, n: int) -> list[Operation]:
    ops = []
    for i in range(n):
        t0 = rng.randint(0, 10)
        t1: float | None = t0 + rng.randint(0, 4)
        kind = rng.choice(["read", "write", "cas"])
        if kind != "read" and rng.random() < 0.2:
            t1 = None
        if kind == "read":
            ops.append(r(i, rng.randint(0, 2), t0, t0 + rng.randint(0, 4)))
        elif kind == "write":
            ops.append(w(i, rng.randint(0, 2), t0, t1))
        else:
            out = INDETERMINATE if t1 is None else rng.random() < 0.5
            ops.append(cas(i, rng.randint(0, 2), rng.randint(0, 2), out, t0, t1))
    return ops


def test_agrees_with_brute_force_on_random_small_histories() -> None:
    rng = random.Random(20261201)
    verdicts = {True: 0, False: 0}
    for _ in range(1500):
        history = random_history(rng, rng.randint(1, 6))
        expected = brute_force(history, Register(0))
        assert check(history, Register(0)).ok is expected, history
        verdicts[expected] += 1
    assert min(verdicts.values()) > 200, verdicts  # both verdicts well exercised


def simulated(rng: random.Random, clients: int, per_client: int, keys: int) -> list[Operation]:
    """A linearizable history of a KV store: each operation takes effect atomically at a
    random instant inside its call, some outcomes lost (indeterminate)."""
    store: dict[str, tuple[bytes | None, int]] = {}
    revision = 0
    planned = []
    for c in range(clients):
        t = 0.0
        for _ in range(per_client):
            call = t + rng.random()
            effect = call + rng.random()
            ret = effect + rng.random()
            planned.append((effect, c, call, ret, f"k{rng.randrange(keys)}"))
            t = ret
    planned.sort()
    history = []
    for n, (_, c, call, ret, key) in enumerate(planned):
        value, mod = store.get(key, (None, 0))
        roll = rng.random()
        lost = rng.random() < 0.02
        if roll < 0.4:
            inp: tuple[Hashable, ...] = ("get",)
            out: Hashable = (value, mod)
            lost = False
        elif roll < 0.7:
            revision += 1
            store[key] = (f"v{n}".encode(), revision)
            inp, out = ("put", f"v{n}".encode()), revision
        else:
            expected = mod if rng.random() < 0.6 else mod + 1
            inp = ("cas", expected, f"v{n}".encode())
            if expected == mod:
                revision += 1
                store[key] = (f"v{n}".encode(), revision)
                out = ("ok", revision)
            else:
                out = ("failed",)
        history.append(op(c, inp, INDETERMINATE if lost else out, call, None if lost else ret, key))
    return history


def test_large_kv_history_is_accepted() -> None:
    history = simulated(random.Random(7), clients=8, per_client=2500, keys=5)
    result = check(history, KvRegister())
    assert result.ok is True
    assert result.operations == 20_000


def test_a_stale_read_late_in_a_kv_history_is_rejected() -> None:
    # Proving a failure explores every order of the prefix: a smaller history than above.
    rng = random.Random(7)
    history = simulated(rng, clients=8, per_client=200, keys=5)
    assert check(history, KvRegister()).ok is True
    # Make one late read answer what its key held before its last write.
    reads = [i for i, o in enumerate(history) if o.input == ("get",) and o.output[1] > 0]
    victim = history[reads[-1]]
    older = next(
        o
        for o in reversed(history[: reads[-1]])
        if o.partition == victim.partition
        and o.input[0] in ("put", "cas")
        and o.ret is not None
        and o.ret < victim.call
        and o.output != ("failed",)
    )
    earlier = [
        o
        for o in history
        if o.partition == victim.partition
        and o.ret is not None
        and o.ret < older.call
        and o.input[0] == "get"
        and o.output[1] > 0
    ]
    assert earlier, "the fixed seed gives an older value to read"
    stale = Operation(
        victim.client, victim.input, earlier[-1].output, victim.call, victim.ret, victim.partition
    )
    broken = [stale if o is victim else o for o in history]
    assert check(broken, KvRegister()).ok is False


def test_gives_up_at_its_deadline() -> None:
    rng = random.Random(3)
    history = simulated(rng, clients=8, per_client=2500, keys=1)
    assert check(history, KvRegister(), timeout=0.0).ok is None
