"""Old spellings that keep working for a while, with a DeprecationWarning.

The warning is issued when a method is called, not when its coroutine later runs, so it
comes from the caller's thread and points at the caller's line, also when the call goes
through the blocking client (whose coroutines run on another thread).
"""

from __future__ import annotations

import functools
import inspect
import sys
import warnings
from collections.abc import Callable
from types import FrameType
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def warn(message: str) -> None:
    """A DeprecationWarning attributed to the first caller outside accord.client."""
    level = 2
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").startswith("accord.client"):
        frame = frame.f_back
        level += 1
    warnings.warn(message, DeprecationWarning, stacklevel=level)


def renamed(**new_names: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Keyword arguments that have a new name: `old=value` (not None) is passed on as
    `new=value`, with a warning. The old parameter stays in the signature, defaulting to
    None, so old callers still type-check; giving both names is a TypeError."""

    def decorate(method: Callable[P, R]) -> Callable[P, R]:
        defaults = {name: p.default for name, p in inspect.signature(method).parameters.items()}

        @functools.wraps(method)
        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            for old, new in new_names.items():
                if kwargs.get(old) is None:
                    continue
                if kwargs.get(new, defaults[new]) != defaults[new]:
                    raise TypeError(f"give {new}= only ({old}= is its deprecated name)")
                warn(f"{method.__qualname__}({old}=...) is deprecated: use {new}=...")
                kwargs[new] = kwargs.pop(old)
            return method(*args, **kwargs)

        return call

    return decorate
