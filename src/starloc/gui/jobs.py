"""What the widgets' workers share: the failure value of a job, the devices and the thread budget.

A job is a generator run on a napari worker. User-facing errors (``StarlocError``) are
returned as :class:`Failure` rather than raised, so the widget shows their one-line message
instead of napari's traceback notification.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from starloc.errors import StarlocError


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
