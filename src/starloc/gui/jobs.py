"""What the widgets' jobs share: how one is started, its failure value, the devices and the thread budget.

A job is a generator run on a napari worker. User-facing errors (``StarlocError``) are
returned as :class:`Failure` rather than raised, so the widget shows their one-line message
instead of napari's traceback notification.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator
from dataclasses import dataclass

import torch
from napari.qt.threading import create_worker

from starloc.errors import StarlocError
from starloc.progress import finish


@dataclass(frozen=True)
class Failure:
    """A user-facing error raised inside a job (its message is shown as a notification)."""

    error: StarlocError


def available_devices() -> list[str]:
    """Torch devices that can actually be used here (cpu first)."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def limit_threads() -> None:
    """Leave one core to the GUI (torch releases the GIL while it computes)."""
    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))


def start_job(gen: Generator, use_threads: bool, yielded: Callable, returned: Callable, aborted: Callable,
              errored: Callable):
    """Run a job generator on a napari worker, connected to the four callbacks, and return the
    started worker; or, without ``use_threads``, run it to its end on the calling thread
    (debugging, tests) and return None. Inline, an unexpected exception reaches ``errored``
    and is raised again."""
    if not use_threads:
        try:
            result = finish(gen, yielded)
        except Exception as exc:
            errored(exc)
            raise
        returned(result)
        return None
    worker = create_worker(
        lambda: (yield from gen), _start_thread=False,
        _connect={"yielded": yielded, "returned": returned, "aborted": aborted, "errored": errored},
    )
    worker.start()
    return worker
