"""What the widgets' jobs share: how one is started, its failure value, the devices and the thread budget.

A job is a generator run on a napari worker. :func:`start_job` runs every job under
:func:`guarded`: the worker's thread budget is set, and user-facing errors (``StarlocError``)
are returned as :class:`Failure` rather than raised, so the widget shows their one-line message
instead of napari's traceback notification. Jobs themselves need neither.
:func:`stop_when_closed` ends a widget's jobs when the user closes its dock.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator
from dataclasses import dataclass

import torch
from napari.qt.threading import create_worker
from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import QWidget

from starloc.errors import StarlocError
from starloc.memory import out_of_memory_message
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


def guarded(gen: Generator) -> Generator:
    """``gen`` run with :func:`limit_threads`, a ``StarlocError`` it raises returned as a :class:`Failure`,
    and so is running out of memory (with a one-line message saying what to do)."""
    limit_threads()
    try:
        return (yield from gen)
    except StarlocError as exc:
        return Failure(exc)
    except (MemoryError, RuntimeError) as exc:
        message = out_of_memory_message(exc)
        if message is None:
            raise
        return Failure(StarlocError(message))


def start_job(gen: Generator, use_threads: bool, yielded: Callable, returned: Callable, aborted: Callable,
              errored: Callable):
    """Run a job generator on a napari worker, connected to the four callbacks, and return the
    started worker; or, without ``use_threads``, run it to its end on the calling thread
    (debugging, tests) and return None. Inline, an unexpected exception reaches ``errored``
    and is raised again. The job runs :func:`guarded`."""
    gen = guarded(gen)
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


class JobSlot:
    """One job at a time for a widget: starts it, drops the callbacks of a job that was replaced
    or whose widget closed, and tells returned, cancelled and failed apart.

    ``set_running(bool)`` updates the widget's buttons; ``finished(outcome)`` is called once per
    job with ``"returned"``, ``"aborted"`` (cancelled) or ``"failed"`` (a :class:`Failure`, or a
    bug, which napari also shows with its traceback).
    """

    def __init__(self, set_running: Callable[[bool], None], finished: Callable[[str], None]):
        self._set_running = set_running
        self._finished = finished
        self.worker = None
        self.running = False
        self.cancelled = False
        self._job_id = 0

    def _running(self, running: bool) -> None:
        self.running = running
        self._set_running(running)

    def start(self, gen: Generator, use_threads: bool, on_yield: Callable, on_result: Callable,
              on_failure: Callable[[StarlocError], None]):
        """Run ``gen`` (see :func:`start_job`); ``on_yield`` gets its progress (none queued
        before a cancel), ``on_result`` its return value, ``on_failure`` a returned Failure's
        error. Returns the worker (None inline)."""
        self._job_id += 1
        job = self._job_id
        self.cancelled = False
        self._running(True)

        def current() -> bool:
            return job == self._job_id

        def yielded(value):
            if current() and not self.cancelled:
                on_yield(value)

        def returned(result):
            if not current():
                return
            self._running(False)
            if self.cancelled:
                self._finished("aborted")
            elif isinstance(result, Failure):
                on_failure(result.error)
                self._finished("failed")
            else:
                on_result(result)
                self._finished("returned")

        def aborted():
            if current():
                self._running(False)
                self._finished("aborted")

        def errored(exc):
            if current():
                self._running(False)
                self._finished("failed")

        self.worker = None  # not the last job's, should this one raise inline
        self.worker = start_job(gen, use_threads, yielded, returned, aborted, errored)
        return self.worker

    def cancel(self) -> bool:
        """Ask the running job to stop at its next yield; False when none runs."""
        if not self.running:
            return False
        self.cancelled = True
        if self.worker is not None:
            self.worker.quit()
        return True

    def close(self) -> None:
        """Forget the current job (its callbacks are dropped) and ask it to stop."""
        self._job_id += 1
        if self.worker is not None:
            self.worker.quit()


class _ClosedWatch(QObject):
    """Calls ``shutdown`` once when its widget leaves its dock (see :func:`stop_when_closed`)."""

    def __init__(self, widget: QWidget, shutdown: Callable[[], None]):
        super().__init__(widget)
        self._shutdown = shutdown
        self._docked = widget.parent() is not None
        widget.installEventFilter(self)

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt's name)
        if event.type() == QEvent.Type.ParentChange:
            if obj.parent() is not None:
                self._docked = True
            elif self._docked:
                self._docked = False
                self._shutdown()
        return False


def stop_when_closed(widget: QWidget, shutdown: Callable[[], None]) -> None:
    """Run ``shutdown`` (cancel the widget's jobs, let go of the viewer) when the widget is
    closed: destroyed, or taken out of its dock. napari's close button only takes a dock's
    widget out (``setParent(None)``) and deletes the dock, so a widget that waited for its own
    ``destroyed`` kept training and kept adding layers to the viewer after it was closed."""
    widget.destroyed.connect(lambda *_: shutdown())
    _ClosedWatch(widget, shutdown)
