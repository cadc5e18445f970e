"""Past one machine: frame ranges of a stack as dask.distributed tasks (both methods).

Frames are independent for LodeSTAR's detection and for DeepLoco's localization, so a stack
splits into ranges of frames that any worker processes on its own; each method's
``cluster`` module submits its task function over the ranges and merges the results into the
one a single process would return. The scheduler is dask's (``distributed``; install
``napari-starloc[cluster]``), not ours, and is imported only when a cluster is asked for.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable, Generator, Iterator
from functools import lru_cache
from typing import Any

from .errors import InputError, StarlocError, StarlocWarning, one_line

__all__ = ["DEFAULT_TASK_FRAMES", "chunk_ranges", "local_cluster", "open_client", "iter_completed", "worker_model"]

#: frames per task when not given: enough work per task to hide the scheduling overhead
DEFAULT_TASK_FRAMES = 1000


def chunk_ranges(selected: range, frames_per_task: int) -> list[tuple[int, int]]:
    """``[start, stop)`` frame ranges of at most ``frames_per_task`` frames covering ``selected``."""
    if frames_per_task < 1:
        raise InputError(f"frames per task must be >= 1, got {frames_per_task}")
    return [(a, min(a + frames_per_task, selected.stop)) for a in range(selected.start, selected.stop, frames_per_task)]


def local_cluster(n_workers: int) -> Any:
    """A :class:`distributed.LocalCluster` of ``n_workers`` processes of one thread each, for
    this work: dask's nannies give workers ``MALLOC_TRIM_THRESHOLD_=65536``, which returns every
    freed buffer to the OS and made each task's localization ~45 % slower here (torch on the CPU
    allocates and frees large buffers per batch); these workers keep glibc's default. Workers of
    a cluster you start yourself: start them without that variable for the same speed. The
    workers log nothing short of critical: a task's failure reaches this process as its
    exception (one line), and their own logs of it (a remote traceback) and their warnings on
    shutdown (a task cancelled by Ctrl-C) only buried that line."""
    import dask
    from distributed import LocalCluster

    from .worker_plugins import IgnoreCtrlC

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}), _ctrl_c_ignored():
        return LocalCluster(n_workers=int(n_workers), threads_per_worker=1, processes=True, dashboard_address=":0",
                            silence_logs=logging.CRITICAL, plugins=[IgnoreCtrlC()])


@contextlib.contextmanager
def _ctrl_c_ignored() -> Iterator[None]:
    """SIGINT ignored while inside: worker processes started here inherit it (those a nanny
    starts again later get it from :class:`~starloc.worker_plugins.IgnoreCtrlC`), and a cluster's
    close (a second or two) runs to the end. Ctrl-C in a terminal reaches every process of its
    group: each local worker printed its own KeyboardInterrupt traceback (~30 lines each) over
    the one-line message, and a Ctrl-C while closing could leave workers behind. This process
    still gets a Ctrl-C outside these moments, and closing the cluster stops the workers."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)


@lru_cache(maxsize=4)
def _cached_model(load: Callable[..., Any], model_path: str, mtime_ns: int, device: str) -> Any:
    return load(model_path, device=device)


def worker_model(load: Callable[..., Any], model_path: str, device: str, torch_threads: int | None) -> Any:
    """On a worker, at the start of a task: set torch's threads, resolve ``device="auto"`` (each
    worker decides: a cluster may mix GPU and CPU machines), and return ``load(model_path,
    device=...)``, loaded once per worker, not once per task (keyed by the file's mtime, so a
    rewritten file is read again)."""
    import torch

    if torch_threads:
        torch.set_num_threads(int(torch_threads))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device cuda, but the worker on {socket.gethostname()} has no CUDA GPU "
                         "(--device auto uses the GPU of workers that have one)")
    return _cached_model(load, model_path, os.stat(model_path).st_mtime_ns, device)


@contextlib.contextmanager
def open_client(scheduler: str | None = None, workers: int | None = None) -> Iterator[Any]:
    """A :class:`distributed.Client` of the cluster at ``scheduler`` (an address), or of a local
    cluster of ``workers`` processes started (and closed) here; InputError when dask.distributed
    is missing, both or neither are given, or the cluster cannot be reached."""
    try:
        from distributed import Client
    except ImportError:
        raise InputError("a cluster needs dask.distributed: pip install 'napari-starloc[cluster]'") from None
    if (scheduler is None) == (workers is None):
        raise InputError("give exactly one of a scheduler address (an existing cluster) and a number of "
                         "workers (a local one)")
    cluster = None
    try:
        if scheduler is not None:
            client = Client(scheduler, timeout="30s")
        else:
            cluster = local_cluster(workers)
            client = Client(cluster)
    except (OSError, ValueError, TypeError) as exc:  # unreachable, or not an address ('http://', no port)
        if cluster is not None:
            cluster.close()
        where = f"reach the dask scheduler {scheduler!r}" if scheduler else "start a local dask cluster"
        hint = ""
        if scheduler and "timed out" in str(exc).lower():  # nothing answered as a dask scheduler there
            hint = " (give the scheduler's own address, port 8786 by default, not its dashboard's, 8787)"
        raise InputError(f"cannot {where}: {one_line(exc)}{hint}") from None
    try:
        yield client
    finally:
        with _ctrl_c_ignored():
            client.close()
            if cluster is not None:
                cluster.close()


def _result(future: Any) -> Any:
    """A task's result; its failure as a one-line InputError that says it happened on a
    worker (a file the worker cannot read, a device it lacks), not dask's remote traceback."""
    try:
        return future.result()
    except StarlocError as exc:
        raise InputError(f"on a dask worker: {exc}") from None
    except Exception as exc:
        raise InputError(f"a dask worker failed: {one_line(exc)}") from None


def iter_completed(futures: dict[Any, int], progress: Callable[[int, int, Any, float], Any]
                   ) -> Generator[Any, None, list[Any]]:
    """Wait for ``futures`` (future -> frames in its task), yielding
    ``progress(frames_done, frames_total, result, seconds)`` as each finishes (in any order);
    returns the results in that order. Closing the generator cancels the unfinished tasks.
    Warns (once) when the scheduler has had no workers for ``NO_WORKERS_WARN_S``: the tasks
    then wait for one, with no other sign of why nothing moves."""
    from distributed import wait

    total = sum(futures.values())
    results: list[Any] = []
    done = 0
    start = time.perf_counter()
    pending = set(futures)
    idle = _NoWorkersWatch(next(iter(futures)).client) if futures else None
    try:
        while pending:
            try:
                finished, pending = wait(pending, timeout=POLL_S, return_when="FIRST_COMPLETED")
            except (TimeoutError, asyncio.TimeoutError):  # asyncio's is another class before Python 3.11
                idle.check()
                continue
            except concurrent.futures.CancelledError:  # on the scheduler: a restart, another client
                raise InputError("the dask cluster cancelled this run's tasks (restarted, or cancelled by "
                                 "another client)") from None
            for future in finished:
                result = _result(future)
                results.append(result)
                done += futures[future]
                yield progress(done, total, result, time.perf_counter() - start)
    finally:
        for future in futures:
            future.cancel()
    return results


#: seconds between looks at the cluster while no task finishes
POLL_S = 5.0
#: seconds without a worker before saying so
NO_WORKERS_WARN_S = 30.0


class _NoWorkersWatch:
    """Says once, as a StarlocWarning, when ``client``'s scheduler has had no worker for
    ``NO_WORKERS_WARN_S`` seconds (all died, or none was started). It only warns: an
    adaptive cluster may be starting workers, and Ctrl-C stops the wait."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.since: float | None = None
        self.warned = False

    def check(self) -> None:
        try:
            workers = self.client.scheduler_info().get("workers", {})
        except Exception:  # the scheduler is gone: the tasks' own failure says so
            return
        if workers:
            self.since = None
            return
        now = time.perf_counter()
        self.since = now if self.since is None else self.since
        if now - self.since >= NO_WORKERS_WARN_S and not self.warned:
            self.warned = True
            warnings.warn(f"the dask scheduler {self.client.scheduler.address} has had no worker for "
                          f"{NO_WORKERS_WARN_S:.0f} s (all stopped, or none started): the tasks wait for one. "
                          "Start workers ('dask worker ADDRESS') or press Ctrl-C", StarlocWarning)
