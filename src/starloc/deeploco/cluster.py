"""Localize a stack on a dask.distributed cluster: past one machine, same result.

Frames are independent, so a stack splits into chunks of frames that any worker localizes with
:func:`~starloc.deeploco.stack.localize_stack` (tiling, seam deduplication and the model's
post-processing all stay inside a frame): the table is the one a single process would write.
The scheduler is dask's (``distributed``; install ``napari-starloc[cluster]``), not ours.

Every worker opens the model file and the stack itself, by path: both must be readable at the
same path on every worker (shared storage; always true for a :class:`distributed.LocalCluster`).
Only the localization tables travel back.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

from ..cluster import DEFAULT_TASK_FRAMES, chunk_ranges, iter_completed, local_cluster, worker_model
from ..io import select_frames
from .postprocess import concat_tables, sorted_by_frame
from .stack import StackProgress, Table, localize_stack, open_stack

__all__ = ["chunk_ranges", "iter_localize_stack_on_cluster", "local_cluster"]

#: frames localized locally before any task is sent, to check the input
PREVIEW_FRAMES = 8


def _localize_range(model_path: str, stack_path: str, start: int, stop: int, options: dict[str, Any],
                    device: str, torch_threads: int | None) -> Table:
    """One task, run on a worker: frames ``start:stop`` of the stack (source frame numbers)."""
    from .model import DeepLoco

    model = worker_model(DeepLoco.load, model_path, device, torch_threads)
    return localize_stack(model, stack_path, frames=slice(start, stop), **options)


def iter_localize_stack_on_cluster(model_path: Any, stack_path: Any, client: Any, *, frames: Any = None,
                                   frames_per_task: int = DEFAULT_TASK_FRAMES, device: str = "cpu",
                                   torch_threads: int | None = 1, **options: Any
                                   ) -> Generator[StackProgress, None, Table]:
    """Localize the stack at ``stack_path`` with the model file ``model_path`` on the workers of
    ``client`` (a :class:`distributed.Client`): a generator that yields :class:`StackProgress`
    as tasks finish (in any order) and returns the table, sorted by frame then x, as
    :func:`~starloc.deeploco.stack.localize_stack` returns it. Closing the generator cancels the
    tasks not yet finished.

    options : keyword arguments of :func:`~starloc.deeploco.stack.iter_localize_stack` (camera,
        pixel_size, threshold, input_units, tile, ...). The first ``PREVIEW_FRAMES`` frames are
        localized here first, so that bad input fails, and warnings are raised, in this process
        before any task is sent. frames : slice/range/``(start, stop)`` of 0-based frames
        (default all). frames_per_task : frames per task. device : where each task runs the
        network (``"auto"``: CUDA on workers that have it). torch_threads : torch threads per
        task (1 by default: a worker runs as many tasks at once as it has threads).
    """
    from .model import DeepLoco

    model = DeepLoco.load(model_path)
    with open_stack(stack_path) as src:
        selected = select_frames(frames, src.n_frames, src.name)
        # a local run on the first frames: the checks of a local run (options, pixels, camera
        # baseline) fail here, and its warnings (background) reach this process, not a worker log
        localize_stack(model, src, frames=slice(selected.start, min(selected.stop, selected.start + PREVIEW_FRAMES)),
                       **options)
    ranges = chunk_ranges(selected, int(frames_per_task))
    paths = os.path.abspath(model_path), os.path.abspath(stack_path)  # workers may have another cwd
    futures = {client.submit(_localize_range, *paths, a, b, options, device, torch_threads, pure=False): b - a
               for a, b in ranges}
    return _collect(futures)


def _collect(futures: dict) -> Generator[StackProgress, None, Table]:
    found = 0

    def progress(done: int, total: int, table: Table, seconds: float) -> StackProgress:
        nonlocal found
        found += len(table["frame"])
        return StackProgress(done, total, found, seconds)

    tables = yield from iter_completed(futures, progress)
    return sorted_by_frame(concat_tables(tables))
