"""LodeSTAR detection of a stack on a dask.distributed cluster: past one machine, same result.

A stack splits into ranges of frames (see :mod:`starloc.cluster`); each task runs
:func:`~starloc.lodestar.inference.iter_detect` (or ``iter_single``) on its range, and the
detections come back numbered as in the whole stack, in frame order: what one process returns.

Every worker opens the model file and the image itself, by path: both must be readable at the
same path on every worker (shared storage; always true for a local cluster). Only the
detections travel back.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import numpy as np

from ..cluster import DEFAULT_TASK_FRAMES, chunk_ranges, iter_completed, worker_model
from ..io import image_frame_range, read_image
from ..progress import finish
from .detection import DetectParams, Detections
from .inference import FrameProgress, iter_detect, iter_single
from .model import LodeSTAR

__all__ = ["iter_detect_on_cluster"]


def _detect(model: LodeSTAR, image: Any, frames: range, single: bool, params: DetectParams,
            augment: bool, layout: dict[str, Any]) -> Detections:
    if single:
        return finish(iter_single(model, image, augment=augment, frames=frames, **layout))
    return finish(iter_detect(model, image, params, augment=augment, frames=frames, **layout))


def _detect_range(model_path: str, image_path: str, start: int, stop: int, single: bool, params: DetectParams,
                  augment: bool, layout: dict[str, Any], device: str, torch_threads: int | None
                  ) -> tuple[int, Detections]:
    """One task, run on a worker: ``(start, detections)`` of frames ``start:stop`` of the image
    (0-based, whole-image numbers)."""
    model = worker_model(LodeSTAR.load, model_path, device, torch_threads)
    return start, _detect(model, read_image(image_path), range(start, stop), single, params, augment, layout)


def iter_detect_on_cluster(
    model_path: Any, image_path: Any, client: Any, *, single: bool = False,
    params: DetectParams = DetectParams(), augment: bool | None = None, frames: Any = None,
    frames_per_task: int = DEFAULT_TASK_FRAMES, device: str = "cpu", torch_threads: int | None = 1,
    rgb: str = "error", channel_axis: int | None = None,
) -> Generator[FrameProgress, None, Detections]:
    """Detect objects in the image file at ``image_path`` with the model file ``model_path`` on
    the workers of ``client`` (a :class:`distributed.Client`): a generator that yields
    ``(frames_done, frames_total)`` as tasks finish (in any order) and returns the
    :class:`~starloc.lodestar.detection.Detections` that ``iter_detect`` (``single=False``) or
    ``iter_single`` (``single=True``) would return in one process. Closing the generator
    cancels the tasks not yet finished.

    augment : test-time symmetry averaging (default: on with ``single``, off otherwise, as the
        CLI). frames : slice/range/``(start, stop)`` of 0-based frames (default all).
        frames_per_task : frames per task. device : where each task runs the network
        (``"auto"``: CUDA on workers that have it). torch_threads : torch threads per task.
        rgb, channel_axis : how to read the image (see :func:`starloc.io.as_frames`).

    The first frame is detected here before any task is sent, so that a bad model, image or
    option fails in this process.
    """
    augment = single if augment is None else bool(augment)
    layout = {"rgb": rgb, "channel_axis": channel_axis}
    model = LodeSTAR.load(model_path)
    image = read_image(image_path)
    selected = image_frame_range(image, frames, name=str(image_path), **layout)
    _detect(model, image, range(selected.start, selected.start + 1), single, params, augment, layout)
    paths = os.path.abspath(model_path), os.path.abspath(image_path)  # workers may have another cwd
    futures = {client.submit(_detect_range, *paths, a, b, single, params, augment, layout, device, torch_threads,
                             pure=False): b - a
               for a, b in chunk_ranges(selected, int(frames_per_task))}
    return _merge(futures)


def _merge(futures: dict) -> Generator[FrameProgress, None, Detections]:
    results = yield from iter_completed(futures, lambda done, total, _result, _seconds: (done, total))
    parts = [found for _, found in sorted(results, key=lambda r: r[0])]  # frame order, as one process
    features = parts[0].features.keys()
    return Detections(np.concatenate([p.frame for p in parts]), np.concatenate([p.positions for p in parts]),
                      {k: np.concatenate([p.features[k] for p in parts]) for k in features})
