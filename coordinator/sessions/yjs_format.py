"""The length of a Yjs v1 update, read from its structure.

pycrdt decodes an update and ignores whatever follows it, so "decodes" does not mean
"is exactly an update": bytes appended to a valid update would be stored and sent to
every client. This walks the v1 layout (lib0 variable-length integers and strings:
client struct groups, then the delete set) and reports how many bytes it spans; it
checks structure only, pycrdt checks meaning.

Error handling: update_length raises Malformed when the bytes are not a v1 update (they
end early, an integer or a nesting is too long, a tag is unknown).
"""

from __future__ import annotations

from accord.coordinator.sessions.lib0 import Fault, Reader

# lib0 "any" tags: undefined, null, integer, float32, float64, bigint, false, true,
# string, object, array, bytes.
_FIXED_ANY = {127: 0, 126: 0, 124: 4, 123: 8, 122: 8, 121: 0, 120: 0}
_XML_ELEMENT, _XML_HOOK = 3, 5
_NESTED_TYPE = 7  # the content kind of a type inside another
MAX_DEPTH = 64


class Malformed(ValueError):
    pass


_MESSAGES = {Fault.TRUNCATED: "ends early", Fault.LONG_INTEGER: "integer too long"}


def _malformed(fault: Fault) -> Malformed:
    return Malformed(_MESSAGES.get(fault, fault.value))


def update_length(data: bytes) -> int:
    """Bytes spanned by the v1 update at the start of data; Malformed if it is not one."""
    return update_shape(data)[0]


def update_shape(data: bytes) -> tuple[int, int, int]:
    """Bytes spanned by the v1 update at the start of data, how many nested types (maps,
    arrays, texts, ... inside another type) it creates, and how many structs it holds;
    Malformed if it is not one."""
    r = Reader(data, _malformed)
    nested = total = 0
    for _ in range(r.uint()):
        structs = r.uint()
        total += structs
        r.uint()  # client
        r.uint()  # first clock
        for _ in range(structs):
            nested += _struct(r) == _NESTED_TYPE
    for _ in range(r.uint()):  # delete set: per client, (clock, length) ranges
        r.uint()
        for _ in range(r.uint()):
            r.uint()
            r.uint()
    return r.pos, nested, total


def _struct(r: Reader) -> int:
    """Past one struct; its content kind."""
    info = r.byte()
    ref = info & 0x1F
    if ref in (0, 10):  # GC or Skip: a length
        r.uint()
        return ref
    if info & 0x80:  # left origin
        r.uint()
        r.uint()
    if info & 0x40:  # right origin
        r.uint()
        r.uint()
    if not info & 0xC0:  # no origins: the parent is spelled out
        if r.uint() == 1:
            r.skip_blob()  # a root type's name
        else:
            r.uint()
            r.uint()
        if info & 0x20:
            r.skip_blob()  # the map key
    _content(r, ref)
    return ref


def _content(r: Reader, ref: int) -> None:
    if ref == 1:  # deleted: a length
        r.uint()
    elif ref == 2:  # JSON strings
        for _ in range(r.uint()):
            r.skip_blob()
    elif ref in (3, 4, 5):  # binary, string, embed
        r.skip_blob()
    elif ref == 6:  # format: key and JSON value
        r.skip_blob()
        r.skip_blob()
    elif ref == _NESTED_TYPE:
        kind = r.uint()
        if kind in (_XML_ELEMENT, _XML_HOOK):
            r.skip_blob()
    elif ref == 8:  # any values
        for _ in range(r.uint()):
            _any(r)
    elif ref == 9:  # subdocument: guid and options
        r.skip_blob()
        _any(r)
    else:
        raise Malformed(f"unknown content kind {ref}")


def _any(r: Reader, depth: int = 0) -> None:
    """Past one lib0 "any" value (JSON-like, with binary and undefined)."""
    if depth > MAX_DEPTH:
        raise Malformed("nested too deep")
    tag = r.byte()
    if tag in _FIXED_ANY:
        r.skip(_FIXED_ANY[tag])
    elif tag == 125:
        r.signed()
    elif tag in (119, 116):
        r.skip_blob()
    elif tag == 118:
        for _ in range(r.uint()):
            r.skip_blob()
            _any(r, depth + 1)
    elif tag == 117:
        for _ in range(r.uint()):
            _any(r, depth + 1)
    else:
        raise Malformed(f"unknown value tag {tag}")
