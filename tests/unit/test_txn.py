"""What group commit reads off a transaction: its keys and its nesting weight."""

from __future__ import annotations

from accord.coordinator.substrate.idempotency import wrap
from accord.coordinator.substrate.txn import (
    absent,
    delete,
    get,
    get_prefix,
    mod_is,
    nested,
    prefix_empty,
    put,
    touched,
    txn,
    weight,
)


def test_weight_is_the_largest_branch_per_level_summed_down_the_heaviest_path() -> None:
    flat = txn(when=[absent(b"a"), mod_is(b"b", 3)], then=[put(b"a", b"1")], otherwise=[])
    assert weight(flat) == 2
    inner = txn(when=[absent(b"x")], then=[put(b"x", b"1"), put(b"y", b"2"), put(b"z", b"3")])
    outer = txn(when=[absent(b"o")], then=[nested(inner)], otherwise=[get(b"o")])
    assert weight(outer) == 1 + 3
    assert weight(txn()) == 0


def test_the_request_id_record_costs_one_level_and_one_op() -> None:
    inner = txn(when=[absent(b"a")], then=[put(b"a", b"1")], otherwise=[get(b"a")])
    wrapped = wrap(inner, b"idem", b"digest", lease=7)
    assert weight(wrapped) == 1 + 2


def test_touched_names_every_key_compared_read_or_written_at_any_depth() -> None:
    inner = txn(
        when=[absent(b"a"), prefix_empty(b"queue/")],
        then=[put(b"b", b"1"), delete(b"c")],
        otherwise=[get(b"d"), get_prefix(b"range/")],
    )
    assert touched(txn(then=[nested(inner)], otherwise=[get(b"e")])) == {
        b"a",
        b"queue/",
        b"b",
        b"c",
        b"d",
        b"range/",
        b"e",
    }
