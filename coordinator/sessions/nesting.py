"""How deep shared types nest in a Yjs document, measured and rendered without recursion.

A valid update can nest maps and arrays a thousand deep. pycrdt's to_py, and JSON
encoding after it, recurse once per level and fail past Python's recursion limit, so
such a document would make every Read fail. Push refuses an update whose own types nest
deeper than MAX_NESTING (depth); a document that still got deeper (its levels added by
many updates, each shallow on its own) is rendered by clipped, which stops at
MAX_NESTING and writes a marker in place of what lies below.

Reading an array item by item costs pycrdt a walk from the array's start each time, so
an array of n separately inserted items costs O(n²) to walk (30,000 of them fit a 512 KiB
update: seconds of CPU). check_update walks only an update that creates at least
MAX_NESTING - 1 nested types (fewer cannot nest deeper), and depth stops after
MAX_ITEMS array items (TooCostly).

Error handling: depth skips a root it cannot view as the kind asked (the library's
failure is not the update's fault here: check_update has already decoded it); it raises
TooCostly past MAX_ITEMS array items.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from pycrdt import Array, Doc, Map, Text

# Shared types inside shared types, counting the root as 1.
MAX_NESTING = 64
# Array items depth reads at most (about 0.1 s when every item is its own block).
MAX_ITEMS = 10_000


class TooCostly(Exception):
    """The document has more array items than depth reads."""
CLIPPED = f"(nested deeper than {MAX_NESTING} levels: not shown)"


def depth(fresh: Callable[[], Doc[Any]], limit: int = MAX_NESTING) -> int:
    """The deepest nesting of maps and arrays in the document fresh() builds (called
    once per root kind: a root takes the kind it is first viewed as); stops counting
    once past limit."""
    deepest = 0
    for kind in (Map, Array):
        doc = fresh()
        stack: list[tuple[Any, int]] = []
        for root in list(doc.keys()):
            try:
                stack.append((doc.get(root, type=kind), 1))
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException:  # viewed as the other kind; pyo3 panics are BaseException
                continue
        read = 0
        while stack:
            node, level = stack.pop()
            deepest = max(deepest, level)
            if deepest > limit:
                return deepest
            if isinstance(node, Array):
                read += len(node)
                if read > MAX_ITEMS:
                    raise TooCostly(f"more than {MAX_ITEMS} array items")
            stack.extend((child, level + 1) for child in _children(node))
    return deepest


def clipped(root: Map[Any] | Array[Any]) -> Any:
    """root as plain values (like to_py, map keys sorted), built level by level; types
    nested deeper than MAX_NESTING are shown as CLIPPED."""
    out: dict[str, Any] | list[Any] = {} if isinstance(root, Map) else []
    stack: list[tuple[Any, dict[str, Any] | list[Any], int]] = [(root, out, 1)]
    while stack:
        node, target, level = stack.pop()
        for key, child in _entries(node):
            value: Any
            if isinstance(child, Map | Array):
                if level >= MAX_NESTING:
                    value = CLIPPED
                else:
                    value = {} if isinstance(child, Map) else []
                    stack.append((child, value, level + 1))
            elif isinstance(child, Text):
                value = str(child)
            else:
                value = child
            if isinstance(target, dict):
                target[key] = value
            else:
                target.append(value)
    return out


def _children(node: Any) -> Iterable[Any]:
    return (child for _, child in _entries(node) if isinstance(child, Map | Array))


def _entries(node: Any) -> Iterable[tuple[str, Any]]:
    if isinstance(node, Map):
        return sorted(node.items())
    if isinstance(node, Array):
        return (("", child) for child in node)
    return ()
