"""Reading lib0's binary encoding (the one under Yjs updates and y-protocols messages),
with every read bounds-checked: pycrdt's own decoder reads past the end of a truncated
message.

lib0 writes unsigned integers as variable-length integers (7 bits a byte, low bits first,
the top bit set on every byte but the last), signed ones the same way with the sign in
the first byte, and byte strings and UTF-8 strings as a length followed by that many
bytes.

Error handling: a Reader raises whatever its caller's ``error`` makes of a ``Fault``, so
each caller keeps its own error type and words (a Yjs update is Malformed, a y-websocket
message closes its socket); nothing is read past the end of the data.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum


class Fault(Enum):
    """What is wrong with the bytes."""

    TRUNCATED = "the data ends early"
    LONG_INTEGER = "an integer is too long"
    NOT_UTF8 = "a string is not UTF-8"
    TRAILING = "bytes follow the end"


# 10 bytes of 7 bits hold any 64-bit integer.
MAX_INTEGER_BYTES = 10


class Reader:
    """Reads data from the start; pos is how far it has read."""

    __slots__ = ("_error", "_max_integer_bytes", "data", "pos")

    def __init__(
        self,
        data: bytes,
        error: Callable[[Fault], Exception],
        *,
        max_integer_bytes: int = MAX_INTEGER_BYTES,
    ) -> None:
        self.data = data
        self.pos = 0
        self._error = error
        self._max_integer_bytes = max_integer_bytes

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise self._error(Fault.TRUNCATED)
        self.pos += 1
        return self.data[self.pos - 1]

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > len(self.data):
            raise self._error(Fault.TRUNCATED)
        self.pos += n

    def uint(self) -> int:
        value = 0
        for shift in range(0, 7 * self._max_integer_bytes, 7):
            b = self.byte()
            value |= (b & 0x7F) << shift
            if b < 0x80:
                return value
        raise self._error(Fault.LONG_INTEGER)

    def signed(self) -> int:
        b = self.byte()
        negative, value, shift = b & 0x40, b & 0x3F, 6
        for _ in range(self._max_integer_bytes - 1):
            if b < 0x80:
                return -value if negative else value
            b = self.byte()
            value |= (b & 0x7F) << shift
            shift += 7
        if b < 0x80:
            return -value if negative else value
        raise self._error(Fault.LONG_INTEGER)

    def blob(self) -> bytes:
        """A length-prefixed byte string."""
        size = self.uint()
        start = self.pos
        self.skip(size)
        return self.data[start : self.pos]

    def skip_blob(self) -> None:
        """Past a length-prefixed byte string (or UTF-8 string), without copying it."""
        self.skip(self.uint())

    def text(self) -> str:
        """A length-prefixed UTF-8 string."""
        try:
            return self.blob().decode()
        except UnicodeDecodeError:
            raise self._error(Fault.NOT_UTF8) from None

    def end(self) -> None:
        """The data must end here."""
        if self.pos != len(self.data):
            raise self._error(Fault.TRAILING)
