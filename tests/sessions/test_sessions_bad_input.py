"""Bad session input: empty, truncated, garbage, oversized and fuzzed updates, and state
vectors that are not ones, get INVALID_ARGUMENT, leave the session unchanged, and leave
the replica serving."""

from __future__ import annotations

import random

import pytest
from pycrdt import Array, Doc, Map, Text, get_state

from accord.client import AsyncClient, InvalidArgumentError, NotFoundError, UpdateEvent
from accord.client.sessions import SessionState
from accord.coordinator.sessions.yjs_format import Malformed, update_length
from tests.harness import Coordinator

MAX_UPDATE_BYTES = 512 * 1024


def sample_update() -> bytes:
    """A valid update touching every root kind, with deletions (a non-empty delete set)."""
    doc = Doc()
    text = doc.get("notes", type=Text)
    text += "hello wörld, this is a plan"
    del text[2:5]
    board = doc.get("board", type=Map)
    board["title"] = "Plan"
    board["steps"] = Array(["a", "b", {"c": 1}])
    board["gone"] = 1
    del board["gone"]
    log = doc.get("log", type=Array)
    log.extend([1, 2.5, True, None, "x"])
    return doc.get_update()


def locally_valid(update: bytes) -> bool:
    """What pycrdt itself says of the bytes (its panics caught like any failure), and
    nothing after the update: pycrdt ignores trailing bytes, the server refuses them."""
    try:
        Doc().apply_update(update)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # pyo3 panics derive from BaseException
        return False
    try:
        return update_length(update) == len(update)
    except Malformed:
        return True


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(6)
        i = rng.randrange(len(buf)) if buf else 0
        if kind == 0 and buf:
            buf[i] ^= 1 << rng.randrange(8)  # flip one bit
        elif kind == 1 and buf:
            buf[i] = rng.choice([0x00, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        elif kind == 2:
            buf[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
        elif kind == 3 and buf:
            del buf[i : i + rng.randint(1, 4)]
        elif kind == 4:
            buf = buf[: rng.randrange(len(buf) + 1)]  # truncate
        else:
            j = rng.randrange(len(buf) + 1)
            buf[j:j] = buf[i : i + rng.randint(1, 8)]  # duplicate a slice
    return bytes(buf)


async def unchanged(client: AsyncClient, name: str, before: SessionState) -> None:
    """Nothing was applied since before: the same content and state vector (a read's
    revision is its replica's, and the client spreads reads over replicas)."""
    after = await client.sessions.read(name)
    assert after.snapshot == before.snapshot and after.json == before.json
    assert after.state_vector == before.state_vector


async def still_serving(clients: list[AsyncClient], replicas: list[Coordinator]) -> None:
    for replica in replicas:
        assert replica.running()
    for client in clients:
        await client.sessions.open("health")
        doc = Doc()
        doc.get("t", type=Text).insert(0, "ok")
        await client.sessions.push("health", doc.get_update())
        assert (await client.sessions.read("health")).json["t"].startswith("ok")


@pytest.fixture
async def seeded(client: AsyncClient) -> SessionState:
    await client.sessions.open("victim")
    await client.sessions.push("victim", sample_update())
    return await client.sessions.read("victim")


async def test_empty_truncated_and_garbage_updates(
    client: AsyncClient,
    seeded: SessionState,
    pinned: list[AsyncClient],
    replicas: list[Coordinator],
) -> None:
    valid = sample_update()
    cases = [
        b"",
        b"\x00",
        b"\xff",
        b"\xff" * 64,
        b"not a yjs update at all",
        bytes(range(255, -1, -1)),
        b"\x01\xff\xff\xff\xff\x0f",  # a struct count past any limit
        b"\x01\x01\x01\x00\x04\x01\x05notes\x09ab\x00",  # claims 9 characters, has 2
    ]
    cases += [valid[:n] for n in range(1, len(valid)) if not locally_valid(valid[:n])]
    assert len(cases) > len(valid) // 2  # most truncations cannot decode
    for update in cases:
        with pytest.raises(InvalidArgumentError) as err:
            await client.sessions.push("victim", update)
        assert err.value.field_violations[0][0] == "update"
    await unchanged(client, "victim", seeded)
    await still_serving(pinned, replicas)


async def test_trailing_bytes_after_an_update(client: AsyncClient, seeded: SessionState) -> None:
    valid = sample_update()
    assert update_length(valid) == len(valid)
    for junk in (b"\x00", b"junk", valid):  # pycrdt alone would accept each of these
        assert Doc().apply_update(valid + junk) is None
        with pytest.raises(InvalidArgumentError) as err:
            await client.sessions.push("victim", valid + junk)
        assert err.value.field_violations[0][0] == "update"
        assert f"{len(junk)} bytes after the end" in err.value.field_violations[0][1]
    await unchanged(client, "victim", seeded)


async def test_oversized_update(client: AsyncClient, seeded: SessionState) -> None:
    doc = Doc()
    text = doc.get("notes", type=Text)
    text += "x" * (MAX_UPDATE_BYTES + 1000)
    big = doc.get_update()
    assert locally_valid(big) and len(big) > MAX_UPDATE_BYTES
    with pytest.raises(InvalidArgumentError) as err:
        await client.sessions.push("victim", big)
    assert [f for f, _ in err.value.field_violations] == ["update"]
    assert str(MAX_UPDATE_BYTES) in err.value.field_violations[0][1]
    await unchanged(client, "victim", seeded)


async def test_fuzzed_updates_agree_with_the_library(
    client: AsyncClient, pinned: list[AsyncClient], replicas: list[Coordinator]
) -> None:
    """A few hundred seeded mutations of a valid update: each is refused exactly when the
    Yjs library cannot decode it, and a refusal changes nothing."""
    rng = random.Random(20260422)
    valid = sample_update()
    await client.sessions.open("fuzz")
    await client.sessions.push("fuzz", valid)
    refused = accepted = 0
    before = await client.sessions.read("fuzz")
    for case in range(300):
        update = mutate(rng, valid)
        expect_valid = bool(update) and locally_valid(update)
        try:
            await pinned[case % 2].sessions.push("fuzz", update)
        except InvalidArgumentError:
            assert not expect_valid, f"case {case}: a decodable update was refused"
            refused += 1
            continue
        assert expect_valid, f"case {case}: an undecodable update was accepted: {update.hex()}"
        accepted += 1
        before = await client.sessions.read("fuzz")
    assert refused > 100  # the fuzzing did reach the refusal path
    await unchanged(client, "fuzz", before)
    for replica in pinned:  # both replicas still read the session, identically
        state = await replica.sessions.read("fuzz")
        assert state.snapshot == before.snapshot
    await still_serving(pinned, replicas)
    assert accepted + refused == 300


async def test_bad_state_vectors(client: AsyncClient, seeded: SessionState) -> None:
    rng = random.Random(7)
    good = Doc()
    good.apply_update(seeded.snapshot)
    vector = good.get_state()
    cases = [b"\xff", b"\x05\x01", b"\x01\x80", vector[:-1], vector + b"\xff\xff"]
    cases += [bytes(rng.randrange(256) for _ in range(rng.randint(1, 12))) for _ in range(60)]
    checked = 0
    for state_vector in cases:
        try:
            Doc().get_update(state_vector)
            continue  # happens to be a state vector
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:
            pass
        checked += 1
        with pytest.raises(InvalidArgumentError) as err:
            await client.sessions.sync("victim", state_vector)
        assert [f for f, _ in err.value.field_violations] == ["state_vector"]
        with pytest.raises(InvalidArgumentError):
            async for _ in client.sessions.subscribe("victim", state_vector):
                break
    assert checked >= 20
    # A real one still works, and empty means "nothing known".
    gap = (await client.sessions.sync("victim", vector)).update
    assert get_state(gap) == b"\x00"  # no items missing (only the delete set comes along)
    first = await anext(client.sessions.subscribe("victim", b""))
    assert isinstance(first, UpdateEvent) and first.update == seeded.snapshot
    await unchanged(client, "victim", seeded)


async def test_bad_names(client: AsyncClient) -> None:
    for name in ["", "tab\there", "x" * 300, "nul\x00"]:
        with pytest.raises(InvalidArgumentError):
            await client.sessions.open(name)
        with pytest.raises(InvalidArgumentError):
            await client.sessions.push(name, sample_update())
    with pytest.raises(NotFoundError):
        await client.sessions.push("never-opened", sample_update())
    with pytest.raises(NotFoundError):
        await client.sessions.sync("never-opened")
    assert await client.sessions.list() == []
