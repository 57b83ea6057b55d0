"""Every type a public method of the client returns can be imported from accord.client:
walking from AsyncClient and Client through their namespaces and the handles their
methods return, each class of Accord's (client or contract) named in a return annotation
is in accord.client.__all__."""

from __future__ import annotations

import dataclasses
import enum
import inspect
import typing
from collections.abc import Iterator

from google.protobuf.message import Message

import accord.client
from accord.client import AsyncClient, Client


def classes_in(hint: object) -> Iterator[type]:
    if isinstance(hint, type):
        yield hint
    origin = typing.get_origin(hint)
    if isinstance(origin, type):
        yield origin
    for arg in typing.get_args(hint):
        yield from classes_in(arg)


def is_value(cls: type) -> bool:
    """Data the client hands out, whose own helpers are not the client's methods."""
    return (
        dataclasses.is_dataclass(cls)
        or issubclass(cls, enum.Enum | Message | BaseException)
        or not cls.__module__.startswith("accord.")
    )


def returned_types() -> dict[type, set[str]]:
    """Accord's classes in return annotations -> the methods returning them."""
    found: dict[type, set[str]] = {}
    queue: list[type] = [AsyncClient, Client]
    seen: set[type] = set()
    while queue:
        cls = queue.pop()
        if cls in seen:
            continue
        seen.add(cls)
        hints = [h for n, h in typing.get_type_hints(cls).items() if not n.startswith("_")]
        queue += [c for h in hints for c in classes_in(h) if not is_value(c)]
        for name, member in inspect.getmembers(cls):
            if name.startswith("_") and name not in {"__enter__", "__aenter__", "__next__"}:
                continue
            fn = member.fget if isinstance(member, property) else member
            if not callable(fn) or isinstance(fn, type):
                continue
            try:
                hints = typing.get_type_hints(inspect.unwrap(fn))
            except TypeError:  # a builtin (e.g. inherited from object)
                continue
            for returned in classes_in(hints.get("return")):
                if returned.__module__.startswith("accord."):
                    found.setdefault(returned, set()).add(f"{cls.__name__}.{name}")
                    if not is_value(returned):
                        queue.append(returned)
    return found


def test_every_returned_type_is_exported() -> None:
    exported = {id(getattr(accord.client, name)) for name in accord.client.__all__}
    missing = {
        f"{cls.__module__}.{cls.__qualname__}": sorted(where)
        for cls, where in returned_types().items()
        if id(cls) not in exported
    }
    assert not missing, f"returned but not exported from accord.client: {missing}"


def test_all_names_exist() -> None:
    for name in accord.client.__all__:
        assert hasattr(accord.client, name), name
