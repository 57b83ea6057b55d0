"""The blocking client has a twin for every public method of the async client: walking
from AsyncClient/Client through their namespaces and the handles methods return (leases,
watches, synced sessions), each public method (async or not, with `__aenter__` ->
`__enter__`, `__anext__` -> `__next__`, `aclose` -> `close` and so on) must exist on the
blocking side with the same parameters (names, kinds, defaults). Needs no processes."""

from __future__ import annotations

import collections.abc
import inspect
import typing
from collections.abc import Callable, Iterator

from accord.client import AsyncClient, Client
from accord.client.kv import AsyncKV, Watch
from accord.client.leases import AsyncLeases, Lease
from accord.client.locks import AsyncLocks
from accord.client.sessions import AsyncSessions, SyncedSession
from accord.client.votes import AsyncVotes

COUNTERPARTS = {
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "__aiter__": "__iter__",
    "__anext__": "__next__",
    "aclose": "close",
}


def public_methods(cls: type) -> dict[str, Callable[..., object]]:
    found: dict[str, Callable[..., object]] = {}
    for klass in reversed(cls.__mro__):
        if klass.__module__.startswith("accord.client."):
            for name, member in vars(klass).items():
                protocol = name in COUNTERPARTS or name in COUNTERPARTS.values()
                if (protocol or not name.startswith("_")) and inspect.isfunction(member):
                    found[name] = member
    return found


def is_async_api(cls: object) -> bool:
    """A class of the async client with something to await or iterate asynchronously."""
    return isinstance(cls, type) and any(
        name in COUNTERPARTS
        or inspect.iscoroutinefunction(inspect.unwrap(fn))
        or inspect.isasyncgenfunction(inspect.unwrap(fn))
        for name, fn in public_methods(cls).items()
    )


def result_class(fn: Callable[..., object]) -> object:
    """What calling (and awaiting) fn gives."""
    hint = typing.get_type_hints(inspect.unwrap(fn)).get("return")
    if typing.get_origin(hint) is collections.abc.Coroutine:
        hint = typing.get_args(hint)[-1]
    return hint


def parameters(fn: Callable[..., object]) -> list[tuple[str, object, object]]:
    params = list(inspect.signature(inspect.unwrap(fn)).parameters.values())[1:]  # no self
    return [(p.name, p.kind, p.default) for p in params]


def walk() -> Iterator[tuple[type, type, str]]:
    """(async class, its blocking twin, a problem) for every gap found; the pairs walked
    are recorded in WALKED."""
    queue: list[tuple[type, type]] = [(AsyncClient, Client)]
    while queue:
        async_cls, blocking_cls = queue.pop(0)
        if async_cls in WALKED:
            continue
        WALKED[async_cls] = blocking_cls
        hints = typing.get_type_hints(async_cls)
        blocking_hints = typing.get_type_hints(blocking_cls)
        for name, hint in hints.items():
            if not name.startswith("_") and is_async_api(hint):
                queue.append((typing.cast(type, hint), blocking_hints[name]))
        twins = public_methods(blocking_cls)
        for name, fn in public_methods(async_cls).items():
            twin_name = COUNTERPARTS.get(name, name)
            twin = twins.get(twin_name)
            if twin is None:
                yield async_cls, blocking_cls, f"no {twin_name}() for {name}()"
                continue
            if parameters(fn) != parameters(twin):
                yield async_cls, blocking_cls, f"{twin_name}() takes other parameters"
            returned = result_class(fn)
            if is_async_api(returned) and returned is not async_cls:
                queue.append((typing.cast(type, returned), typing.cast(type, result_class(twin))))


WALKED: dict[type, type] = {}


def test_every_async_method_has_a_blocking_twin() -> None:
    gaps = [f"{b.__name__} (twin of {a.__name__}): {problem}" for a, b, problem in walk()]
    assert not gaps, "the blocking client is missing:\n" + "\n".join(gaps)
    # The walk reached every namespace and every handle a method returns.
    assert {AsyncKV, AsyncLeases, AsyncLocks, AsyncSessions, AsyncVotes} <= set(WALKED)
    assert {Lease, Watch, SyncedSession} <= set(WALKED)
