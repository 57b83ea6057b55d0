"""Server-side session operations, for agents without a Yjs library.

``await accord.sessions.apply("plan", ops.map_set("tasks", "t1", {"owner": "a"}),
ops.text_insert("notes", 0, "hello"))`` runs every operation on the coordinator, in
order, all or none, as one ordinary update. A path walks from the root type through map
keys (str) and array indexes (int) down to a nested type.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from accord.v1 import sessions_pb2

Operation = sessions_pb2.Operation
PathLike = Sequence[str | int]


def _op(root: str, path: PathLike) -> sessions_pb2.Operation:
    steps = []
    for step in path:
        if isinstance(step, bool) or not isinstance(step, str | int):
            raise TypeError(f"a path step is a map key (str) or an array index (int): {step!r}")
        steps.append(
            sessions_pb2.PathStep(key=step)
            if isinstance(step, str)
            else sessions_pb2.PathStep(index=step)
        )
    return sessions_pb2.Operation(root=root, path=steps)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def map_set(root: str, key: str, value: Any, *, path: PathLike = ()) -> sessions_pb2.Operation:
    """Set key to a JSON-able value (dicts and lists become nested maps and arrays)."""
    op = _op(root, path)
    op.map_set.CopyFrom(sessions_pb2.MapSet(key=key, value_json=_json(value)))
    return op


def map_delete(root: str, key: str, *, path: PathLike = ()) -> sessions_pb2.Operation:
    op = _op(root, path)
    op.map_delete.CopyFrom(sessions_pb2.MapDelete(key=key))
    return op


def text_insert(root: str, index: int, text: str, *, path: PathLike = ()) -> sessions_pb2.Operation:
    """Insert text at index (in code points)."""
    op = _op(root, path)
    op.text_insert.CopyFrom(sessions_pb2.TextInsert(index=index, text=text))
    return op


def text_delete(
    root: str, index: int, length: int, *, path: PathLike = ()
) -> sessions_pb2.Operation:
    op = _op(root, path)
    op.text_delete.CopyFrom(sessions_pb2.TextDelete(index=index, length=length))
    return op


def array_insert(
    root: str, index: int, *values: Any, path: PathLike = ()
) -> sessions_pb2.Operation:
    op = _op(root, path)
    op.array_insert.CopyFrom(
        sessions_pb2.ArrayInsert(index=index, values_json=[_json(v) for v in values])
    )
    return op


def array_append(root: str, *values: Any, path: PathLike = ()) -> sessions_pb2.Operation:
    op = _op(root, path)
    op.array_insert.CopyFrom(
        sessions_pb2.ArrayInsert(append=True, values_json=[_json(v) for v in values])
    )
    return op


def array_delete(
    root: str, index: int, length: int = 1, *, path: PathLike = ()
) -> sessions_pb2.Operation:
    op = _op(root, path)
    op.array_delete.CopyFrom(sessions_pb2.ArrayDelete(index=index, length=length))
    return op
