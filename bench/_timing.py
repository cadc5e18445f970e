"""Timing helper shared by the speed benchmarks (run as ``python bench/<name>.py``)."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """The shortest wall time (s) of ``repeats`` calls of ``fn``: the least disturbed by other jobs."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)
