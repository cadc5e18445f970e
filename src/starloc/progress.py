"""Helpers for the core's long-running generators (they yield progress, return a result)."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

R = TypeVar("R")


def finish(gen: Generator[Any, None, R], callback: Callable[[Any], None] | None = None) -> R:
    """Drive ``gen`` to the end, calling ``callback(item)`` for every yielded item; its result."""
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(item)
