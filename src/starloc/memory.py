"""Free memory, to refuse work that cannot fit before it starts (an operating system out of
memory kills the process, and with it a napari session and its unsaved layers)."""

from __future__ import annotations

import sys

import psutil

from starloc.errors import one_line


def available_bytes() -> int:
    """Physical memory available without swapping out other programs, plus free swap, in bytes."""
    return int(psutil.virtual_memory().available + psutil.swap_memory().free)


def size_text(n_bytes: float) -> str:
    """``'12.3 GB'``, or MB below a tenth of a GB."""
    return f"{n_bytes / 1e9:.1f} GB" if n_bytes >= 1e8 else f"{n_bytes / 1e6:.1f} MB"


def out_of_memory_message(exc: BaseException) -> str | None:
    """A one-line message for a failed allocation (Python's MemoryError, torch's on a GPU, or
    its CPU allocator's RuntimeError); None for any other exception."""
    torch = sys.modules.get("torch")
    if not (isinstance(exc, MemoryError) or (torch is not None and isinstance(exc, torch.OutOfMemoryError))
            or "DefaultCPUAllocator" in str(exc)):
        return None
    return (f"out of memory ({one_line(exc)}): cut the input into smaller pieces, or on a GPU run on the CPU "
            "(device cpu), which has the computer's memory")
