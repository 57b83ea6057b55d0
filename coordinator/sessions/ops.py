"""What the coordinator does with Yjs documents itself: check updates (including how
deep their types nest: sessions.nesting), infer root kinds, render the JSON view, and
run server-side operations.

pycrdt (yrs) can panic on some inputs, and its panic is a BaseException; everything here
checks bounds and types first and still turns any failure of the library into
InvalidArgument, so no input reaches the process as a panic. Work that must not touch a
live document runs on a scratch copy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pycrdt import Array, Doc, Map, Text, TransactionEvent

from accord.coordinator.sessions import nesting
from accord.coordinator.sessions.yjs_format import Malformed, update_shape
from accord.coordinator.substrate import strict_json
from accord.coordinator.substrate.errors import FieldViolation, InvalidArgument
from accord.v1 import sessions_pb2

MAP = sessions_pb2.ROOT_KIND_MAP
TEXT = sessions_pb2.ROOT_KIND_TEXT
ARRAY = sessions_pb2.ROOT_KIND_ARRAY
KIND_NAMES: dict[int, str] = {MAP: "map", TEXT: "text", ARRAY: "array"}
_TYPES: dict[int, type[Map[Any] | Text | Array[Any]]] = {MAP: Map, TEXT: Text, ARRAY: Array}
MAX_JSON_DEPTH = 32

T = TypeVar("T")


class LibraryFailure(Exception):
    """pycrdt refused (or panicked on) an input."""


def guarded(work: Callable[[], T]) -> T:
    """Run pycrdt work; its errors and panics come out as LibraryFailure."""
    try:
        return work()
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # pyo3's PanicException derives from BaseException
        raise LibraryFailure(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc


def check_update(field: str, update: bytes) -> list[FieldViolation]:
    """A Yjs v1 update that decodes completely (applied to an empty scratch document)."""
    if not update:
        return [FieldViolation(field, "must not be empty")]
    try:
        guarded(lambda: Doc().apply_update(update))
    except LibraryFailure as exc:
        return [FieldViolation(field, f"is not a Yjs update (v1 encoding): {exc}")]
    try:
        length, nested, structs = update_shape(update)
    except Malformed:  # pycrdt read it whole; our structural walk defers to it
        length, nested, structs = len(update), nesting.MAX_NESTING, 0
    if length != len(update):
        extra = len(update) - length
        return [FieldViolation(field, f"has {extra} bytes after the end of the Yjs update")]
    if nested < nesting.MAX_NESTING:
        return []  # a root and fewer nested types than that cannot nest too deep
    try:
        if structs > 2 * nesting.MAX_ITEMS:  # each item read walks the blocks before it
            raise nesting.TooCostly(f"{structs} structs")
        levels = nesting.depth(lambda: scratch(update))
    except nesting.TooCostly:
        return [
            FieldViolation(
                field,
                f"creates {nested} nested types and more than {nesting.MAX_ITEMS} array "
                "items or twice as many structs, too many to check for nesting at once: "
                "send it in smaller updates",
            )
        ]
    if levels > nesting.MAX_NESTING:
        return [
            FieldViolation(
                field, f"nests maps and arrays more than {nesting.MAX_NESTING} levels deep"
            )
        ]
    return []


def check_state_vector(field: str, state_vector: bytes) -> list[FieldViolation]:
    if not state_vector:
        return []
    try:
        guarded(lambda: Doc().get_update(state_vector))
    except LibraryFailure as exc:
        return [FieldViolation(field, f"is not a Yjs state vector: {exc}")]
    return []


def scratch(state: bytes, client_id: int | None = None) -> Doc[Any]:
    doc: Doc[Any] = Doc() if client_id is None else Doc(client_id=client_id)
    guarded(lambda: doc.apply_update(state))
    return doc


def infer_kind(state: bytes, root: str) -> int:
    """A root's kind from its content; 0 when it is empty (any kind reads as empty)."""
    for kind in (MAP, TEXT, ARRAY):
        doc = scratch(state)
        value = guarded(lambda d=doc, k=kind: d.get(root, type=_TYPES[k]))  # type: ignore[misc]
        if (kind == TEXT and str(value)) or (kind != TEXT and len(value)):
            return kind
    return 0


def kinds_of(state: bytes, declared: dict[str, int]) -> dict[str, int]:
    """Every root's kind: declared, else inferred."""
    doc = scratch(state)
    kinds = dict(declared)
    for root in guarded(lambda: list(doc.keys())):
        if not kinds.get(root):
            kinds[root] = infer_kind(state, root)
    return {root: kind for root, kind in kinds.items() if kind}


def json_view(state: bytes, kinds: dict[str, int]) -> str:
    doc = scratch(state)
    view = {}
    for root, kind in sorted(kinds.items()):
        shared = guarded(lambda r=root, k=kind: doc.get(r, type=_TYPES[k]))  # type: ignore[misc]
        try:
            view[root] = _plain(guarded(shared.to_py))
        except (LibraryFailure, RecursionError):  # nested past what recursion follows
            assert isinstance(shared, Map | Array)  # text does not nest
            view[root] = _plain(nesting.clipped(shared))
    return json.dumps(view, ensure_ascii=False, separators=(",", ":"))


def _plain(value: Any) -> Any:
    """Yjs numbers are doubles; whole ones read back as JSON integers. Map members in key
    order: a Y.Map iterates in hash order, which differs between processes."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


# --- server-side operations ----------------------------------------------------------


def apply_operations(
    state: bytes,
    client_id: int,
    operations: Sequence[sessions_pb2.Operation],
    kinds: dict[str, int],
) -> tuple[bytes, dict[str, int]]:
    """Run operations on a scratch copy of state as client_id; return the update they
    make and the root kinds they fixed. All or none: the first bad one refuses them all."""
    doc = scratch(state, client_id)
    kinds = dict(kinds)
    updates: list[bytes] = []

    def capture(event: TransactionEvent) -> None:
        updates.append(event.update)

    subscription = doc.observe(capture)
    try:
        with doc.transaction():
            for i, operation in enumerate(operations):
                _apply_one(doc, operation, kinds, f"operations[{i}]")
    finally:
        doc.unobserve(subscription)
    if not updates:
        return b"", kinds
    return updates[-1], kinds


def _violation(field: str, message: str) -> InvalidArgument:
    return InvalidArgument([FieldViolation(field, message)])


def _apply_one(
    doc: Doc[Any], operation: sessions_pb2.Operation, kinds: dict[str, int], at: str
) -> None:
    op = operation.WhichOneof("op")
    if not operation.root:
        raise _violation(f"{at}.root", "must name a root type")
    if op is None:
        raise _violation(at, "must set one operation")
    wants = {
        "map_set": MAP,
        "map_delete": MAP,
        "text_insert": TEXT,
        "text_delete": TEXT,
        "array_insert": ARRAY,
        "array_delete": ARRAY,
    }[op]
    target = _resolve(doc, operation, kinds, wants, at)
    try:
        if wants == MAP:
            _map_op(target, operation, at)
        elif wants == TEXT:
            _text_op(target, operation, at)
        else:
            _array_op(target, operation, at)
    except LibraryFailure as exc:
        raise _violation(at, f"the document refused the operation: {exc}") from exc


def _map_op(target: Map[Any], operation: sessions_pb2.Operation, at: str) -> None:
    if operation.HasField("map_set"):
        value = _from_json(f"{at}.map_set.value_json", operation.map_set.value_json)
        guarded(lambda: target.__setitem__(operation.map_set.key, value))
        return
    key = operation.map_delete.key
    if not guarded(lambda: key in target):
        raise _violation(f"{at}.map_delete.key", f"{key!r} is not in the map")
    guarded(lambda: target.__delitem__(key))


def _text_op(target: Text, operation: sessions_pb2.Operation, at: str) -> None:
    # Indexes are in code points; pycrdt counts UTF-8 bytes.
    current = guarded(lambda: str(target))
    if operation.HasField("text_insert"):
        index = operation.text_insert.index
        if index > len(current):
            raise _violation(
                f"{at}.text_insert.index", f"{index} is past the end (length {len(current)})"
            )
        offset = len(current[:index].encode())
        guarded(lambda: target.insert(offset, operation.text_insert.text))
        return
    start, length = operation.text_delete.index, operation.text_delete.length
    if start + length > len(current):
        raise _violation(
            f"{at}.text_delete",
            f"[{start}, {start + length}) is past the end (length {len(current)})",
        )
    begin = len(current[:start].encode())
    end = begin + len(current[start : start + length].encode())
    if end > begin:
        guarded(lambda: target.__delitem__(slice(begin, end)))


def _array_op(target: Array[Any], operation: sessions_pb2.Operation, at: str) -> None:
    size = guarded(lambda: len(target))
    if operation.HasField("array_insert"):
        insert = operation.array_insert
        index = size if insert.append else insert.index
        if index > size:
            raise _violation(f"{at}.array_insert.index", f"{index} is past the end (length {size})")
        values = [
            _from_json(f"{at}.array_insert.values_json[{j}]", raw)
            for j, raw in enumerate(insert.values_json)
        ]
        for offset, value in enumerate(values):
            guarded(lambda o=offset, v=value: target.insert(index + o, v))  # type: ignore[misc]
        return
    start, length = operation.array_delete.index, operation.array_delete.length
    if start + length > size:
        raise _violation(
            f"{at}.array_delete", f"[{start}, {start + length}) is past the end (length {size})"
        )
    if length:
        guarded(lambda: target.__delitem__(slice(start, start + length)))


def _resolve(
    doc: Doc[Any], operation: sessions_pb2.Operation, kinds: dict[str, int], wants: int, at: str
) -> Any:
    """The shared type the operation's path names, checked to be of the kind it needs."""
    root = operation.root
    root_kind = kinds.get(root, 0)
    if not operation.path:
        if root_kind and root_kind != wants:
            raise _violation(
                f"{at}.root",
                f"{root!r} is a {KIND_NAMES[root_kind]}; this operation needs a "
                f"{KIND_NAMES[wants]}",
            )
        kinds[root] = wants
        return guarded(lambda: doc.get(root, type=_TYPES[wants]))
    if not root_kind:
        raise _violation(f"{at}.root", f"{root!r} has no content to follow a path into")
    node: Any = guarded(lambda: doc.get(root, type=_TYPES[root_kind]))
    for depth, step in enumerate(operation.path):
        field = f"{at}.path[{depth}]"
        which = step.WhichOneof("step")
        if isinstance(node, Map) and which == "key":
            if not guarded(lambda n=node, k=step.key: k in n):  # type: ignore[misc]
                raise _violation(field, f"key {step.key!r} is not in the map")
            node = guarded(lambda n=node, k=step.key: n[k])  # type: ignore[misc]
        elif isinstance(node, Array) and which == "index":
            size = guarded(lambda n=node: len(n))  # type: ignore[misc]
            if step.index >= size:
                raise _violation(field, f"index {step.index} is past the end (length {size})")
            node = guarded(lambda n=node, i=step.index: n[i])  # type: ignore[misc]
        else:
            raise _violation(field, f"cannot step into a {_kind_of(node)} with a {which}")
    if not isinstance(node, _TYPES[wants]):
        raise _violation(
            f"{at}.path",
            f"leads to a {_kind_of(node)}; this operation needs a {KIND_NAMES[wants]}",
        )
    return node


def _kind_of(node: Any) -> str:
    if isinstance(node, Map):
        return "map"
    if isinstance(node, Text):
        return "text"
    if isinstance(node, Array):
        return "array"
    return "plain value"


def _from_json(field: str, raw: str) -> Any:
    """A JSON value as a Yjs value: objects and arrays become nested maps and arrays."""
    try:
        value = strict_json.loads(raw)
    except ValueError as exc:
        raise _violation(field, f"is not JSON: {exc}") from exc
    return _to_shared(field, value, 0)


def _to_shared(field: str, value: Any, depth: int) -> Any:
    if depth > MAX_JSON_DEPTH:
        raise _violation(field, f"nests deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, dict):
        return Map({k: _to_shared(field, v, depth + 1) for k, v in value.items()})
    if isinstance(value, list):
        return Array([_to_shared(field, v, depth + 1) for v in value])
    if isinstance(value, float) and not math.isfinite(value):
        raise _violation(field, "numbers must be finite")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**53:
        raise _violation(field, "integers must be within +-2^53 (Yjs numbers are doubles)")
    return value
