"""The length of a Yjs v1 update, read from its structure.

pycrdt decodes an update and ignores whatever follows it, so "decodes" does not mean
"is exactly an update": bytes appended to a valid update would be stored and sent to
every client. This walks the v1 layout (lib0 variable-length integers and strings:
client struct groups, then the delete set) and reports how many bytes it spans; it
checks structure only, pycrdt checks meaning.
"""

from __future__ import annotations

# lib0 "any" tags: undefined, null, integer, float32, float64, bigint, false, true,
# string, object, array, bytes.
_FIXED_ANY = {127: 0, 126: 0, 124: 4, 123: 8, 122: 8, 121: 0, 120: 0}
_XML_ELEMENT, _XML_HOOK = 3, 5
MAX_DEPTH = 64


class Malformed(ValueError):
    pass


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise Malformed("ends early")
        self.pos += 1
        return self.data[self.pos - 1]

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > len(self.data):
            raise Malformed("ends early")
        self.pos += n

    def uint(self) -> int:
        value, shift = 0, 0
        while True:
            b = self.byte()
            value |= (b & 0x7F) << shift
            if b < 0x80:
                return value
            shift += 7
            if shift > 63:
                raise Malformed("integer too long")

    def signed(self) -> None:
        b = self.byte()
        shift = 6
        while b & 0x80:
            b = self.byte()
            shift += 7
            if shift > 70:
                raise Malformed("integer too long")

    def string(self) -> None:
        self.skip(self.uint())

    def any(self, depth: int = 0) -> None:
        if depth > MAX_DEPTH:
            raise Malformed("nested too deep")
        tag = self.byte()
        if tag in _FIXED_ANY:
            self.skip(_FIXED_ANY[tag])
        elif tag == 125:
            self.signed()
        elif tag in (119, 116):
            self.string()
        elif tag == 118:
            for _ in range(self.uint()):
                self.string()
                self.any(depth + 1)
        elif tag == 117:
            for _ in range(self.uint()):
                self.any(depth + 1)
        else:
            raise Malformed(f"unknown value tag {tag}")


def update_length(data: bytes) -> int:
    """Bytes spanned by the v1 update at the start of data; Malformed if it is not one."""
    r = _Reader(data)
    for _ in range(r.uint()):
        structs = r.uint()
        r.uint()  # client
        r.uint()  # first clock
        for _ in range(structs):
            _struct(r)
    for _ in range(r.uint()):  # delete set: per client, (clock, length) ranges
        r.uint()
        for _ in range(r.uint()):
            r.uint()
            r.uint()
    return r.pos


def _struct(r: _Reader) -> None:
    info = r.byte()
    ref = info & 0x1F
    if ref in (0, 10):  # GC or Skip: a length
        r.uint()
        return
    if info & 0x80:  # left origin
        r.uint()
        r.uint()
    if info & 0x40:  # right origin
        r.uint()
        r.uint()
    if not info & 0xC0:  # no origins: the parent is spelled out
        if r.uint() == 1:
            r.string()  # a root type's name
        else:
            r.uint()
            r.uint()
        if info & 0x20:
            r.string()  # the map key
    _content(r, ref)


def _content(r: _Reader, ref: int) -> None:
    if ref == 1:  # deleted: a length
        r.uint()
    elif ref == 2:  # JSON strings
        for _ in range(r.uint()):
            r.string()
    elif ref in (3, 4, 5):  # binary, string, embed
        r.string()
    elif ref == 6:  # format: key and JSON value
        r.string()
        r.string()
    elif ref == 7:  # a nested type
        kind = r.uint()
        if kind in (_XML_ELEMENT, _XML_HOOK):
            r.string()
    elif ref == 8:  # any values
        for _ in range(r.uint()):
            r.any()
    elif ref == 9:  # subdocument: guid and options
        r.string()
        r.any()
    else:
        raise Malformed(f"unknown content kind {ref}")
