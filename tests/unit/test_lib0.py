"""The lib0 reader: integers and strings as lib0 writes them, and every fault reported
through the caller's error, never a read past the end."""

from __future__ import annotations

import random

import pytest
from pycrdt import write_message, write_var_uint

from accord.coordinator.sessions.lib0 import Fault, Reader


class Refused(Exception):
    def __init__(self, fault: Fault) -> None:
        super().__init__(fault.value)
        self.fault = fault


def reader(data: bytes, **options: int) -> Reader:
    return Reader(data, Refused, **options)


def fault_of(data: bytes, read: str, **options: int) -> Fault:
    with pytest.raises(Refused) as refused:
        getattr(reader(data, **options), read)()
    return refused.value.fault


def var_int(value: int) -> bytes:
    """lib0's writeVarInt: sign and 6 bits first, then 7 bits a byte, low bits first."""
    magnitude = abs(value)
    out = [(0x40 if value < 0 else 0) | (magnitude & 0x3F)]
    magnitude >>= 6
    while magnitude:
        out[-1] |= 0x80
        out.append(magnitude & 0x7F)
        magnitude >>= 7
    return bytes(out)


NUMBERS = [0, 1, 63, 64, 127, 128, 2**14, 2**32 - 1, 2**53, 2**63 - 1]


def test_integers_read_as_written() -> None:
    rng = random.Random(7)
    for value in NUMBERS + [rng.randrange(2**63) for _ in range(200)]:
        r = reader(write_var_uint(value) + var_int(value) + var_int(-value))
        assert (r.uint(), r.signed(), r.signed()) == (value, value, -value)
        r.end()


def test_strings_and_bytes_read_as_written() -> None:
    data = write_message("é😀 text".encode()) + write_message(b"\x00\xff") + write_message(b"")
    r = reader(data)
    assert r.text() == "é😀 text"
    r.skip_blob()
    assert r.blob() == b""
    assert r.pos == len(data)
    r.end()


def test_every_truncation_is_reported() -> None:
    for data, read in [
        (write_var_uint(2**40), "uint"),
        (var_int(-(2**40)), "signed"),
        (write_message(b"abcdef"), "blob"),
        (write_message(b"abcdef"), "skip_blob"),
        (write_message(b"text"), "text"),
    ]:
        for n in range(len(data)):
            assert fault_of(data[:n], read) is Fault.TRUNCATED, (data[:n], read)
    with pytest.raises(Refused):
        reader(b"ab").skip(3)


def test_integers_longer_than_allowed_are_refused() -> None:
    ten = b"\xff" * 9 + b"\x01"
    assert reader(ten).uint() == 2**64 - 1
    assert fault_of(b"\xff" * 10 + b"\x01", "uint") is Fault.LONG_INTEGER
    assert fault_of(b"\xff" * 10 + b"\x01", "signed") is Fault.LONG_INTEGER
    assert fault_of(ten, "uint", max_integer_bytes=9) is Fault.LONG_INTEGER
    assert reader(write_var_uint(2**53), max_integer_bytes=9).uint() == 2**53


def test_bad_text_and_trailing_bytes_are_refused() -> None:
    assert fault_of(write_message(b"\xff\xfe"), "text") is Fault.NOT_UTF8
    r = reader(write_var_uint(5) + b"!")
    assert r.uint() == 5
    with pytest.raises(Refused) as refused:
        r.end()
    assert refused.value.fault is Fault.TRAILING
