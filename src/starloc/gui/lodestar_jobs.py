"""The long-running work of the LodeSTAR widget, as generators for napari workers.

Every job is a generator that yields progress and returns its result; it gets copies of
its inputs (crops, one frame, frozen parameter dataclasses) made on the main thread and
never touches a layer, widget or the viewer. :func:`starloc.gui.jobs.start_job` runs them with
the thread budget and turns user-facing errors into a ``Failure``. Cancelling = the worker stops
iterating.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from starloc.errors import InputError
from starloc.lodestar.brightness import record_crop_peaks
from starloc.lodestar.detection import DetectParams, Detections, score_map, to_image_resolution
from starloc.lodestar.inference import detect_in_maps, iter_detect
from starloc.lodestar.model import LodeSTAR, Maps
from starloc.lodestar.training import TrainConfig, new_model, train
from starloc.tracks import link_tracks, require_trackpy


@dataclass(frozen=True)
class Detected:
    """Result of re-running detection on cached maps: detections and the score map ``(H, W)``
    (upsampled to image resolution)."""

    detections: object
    score: np.ndarray


#: least seconds between two weight-map previews during training (see :func:`train_job`)
PREVIEW_SECONDS = 3.0
#: a preview may take at most this fraction of the training's time
PREVIEW_SHARE = 0.05


@dataclass(frozen=True)
class TrainingPreview:
    """The weight map ``(H, W)`` (image resolution) of the frame on screen, as the model being
    trained sees it after ``step`` steps."""

    step: int
    weights: np.ndarray


def train_job(crops: list[np.ndarray], config: TrainConfig, frame: np.ndarray, augment: bool,
              preview_seconds: float | None = PREVIEW_SECONDS, boxes=None):
    """Train on the crops (yields :class:`~starloc.lodestar.training.Progress`), then compute
    the maps of ``frame`` ``(1, C, H, W)``. Returns ``(model, maps)``.

    Every ``preview_seconds`` or more (None: never) it also yields a :class:`TrainingPreview`
    of ``frame``, so the user watches the weight map form; spaced so that previews take at most
    ``PREVIEW_SHARE`` of the time. They do not change the training: the same seed gives the same
    model. The network's ``in_channels`` is taken from ``frame`` (the crops come from the same image).
    ``boxes``: the crops' ``(row, col, height, width)`` in ``frame``, to measure their object's
    brightness there (:func:`starloc.lodestar.brightness.record_crop_peaks`).
    """
    config = replace(config, network=replace(config.network, in_channels=frame.shape[1]))
    model = new_model(config)
    steps = train(crops, config, model)
    last, cost = time.perf_counter(), 0.0
    try:
        while True:
            try:
                progress = next(steps)
            except StopIteration as stop:
                model = stop.value
                break
            yield progress
            if preview_seconds is None or progress.step == progress.max_steps:  # the last maps come next
                continue
            now = time.perf_counter()
            if now - last >= max(preview_seconds, cost / PREVIEW_SHARE):
                weights = weight_image(model.maps(frame))
                model.net.train()  # maps() left it in eval mode; the loop set train mode once
                last = time.perf_counter()
                cost = last - now
                yield TrainingPreview(progress.step, weights)
        if boxes is not None:
            record_crop_peaks(model, [(frame, boxes)])
        maps = model.maps(frame, augment=augment)
    finally:
        steps.close()
        if config.device.startswith("cuda") and torch.cuda.is_available():
            torch.cuda.empty_cache()
    return model, maps


def maps_job(model: LodeSTAR, frame: np.ndarray, augment: bool):
    """Maps of one frame ``(1, C, H, W)``; yields once first so a queued job can be cancelled."""
    yield (0, 1)
    return model.maps(frame, augment=augment)


def detect_job(model: LodeSTAR, frame: np.ndarray, maps: Maps, params: DetectParams, augment: bool):
    """Detection (and the score map) on cached maps of one frame, for large images."""
    yield (0, 1)
    return run_detect(model, frame, maps, params, augment)


def run_detect(model: LodeSTAR, frame: np.ndarray, maps: Maps, params: DetectParams, augment: bool) -> Detected:
    """Detections and the score map at image resolution of the one frame ``(1, C, H, W)``
    whose cached maps are ``maps`` (crowded detections deblended on ``frame``)."""
    score = score_map(maps, params.alpha, params.beta)[0]
    found = detect_in_maps(model, frame, maps, params, augment)
    return Detected(found, to_image_resolution(score, maps.stride, maps.image_shape))


def weight_image(maps: Maps) -> np.ndarray:
    """The weight map of the one frame of ``maps`` at image resolution ``(H, W)``."""
    return to_image_resolution(maps.weights[0], maps.stride, maps.image_shape)


def downsampling_note(model: LodeSTAR) -> str:
    """``", downsampled ×D"`` for a model that downsamples its input, else empty."""
    return f", downsampled ×{model.downsample}" if model.downsample != 1 else ""


def describe_training(model: LodeSTAR, n_crops: int) -> str:
    """One line on how a freshly trained model was made (from its training metadata)."""
    t = model.metadata.get("training", {})
    steps = t.get("steps_done", "?")
    whole = " (the whole budget: the loss had not levelled off)" if steps == t.get("max_steps") else ""
    return (
        f"trained on {n_crops} crop(s){downsampling_note(model)}, {steps} steps{whole}, "
        f"{t.get('seconds', 0):.1f} s, consistency {t.get('final_consistency', float('nan')):.3f} px"
    )


@dataclass(frozen=True)
class AllFrames:
    """Result of :func:`detect_all_job`: the detections, their track ids when linked, and why
    linking failed when it did (the detections are kept)."""

    detections: Detections
    track: np.ndarray | None = None
    link_error: str | None = None


def detect_all_job(model: LodeSTAR, image, params: DetectParams, rgb: str, augment: bool, chunk: int = 4,
                   channel_axis: int | None = None, link: tuple[float, int] | None = None):
    """Detection on every frame of a (possibly lazy) image; yields ``(done, total)``, returns
    :class:`AllFrames`.

    ``link``: ``(max distance px, memory frames)`` to link the detections into trajectories
    (:func:`starloc.tracks.link_tracks`).
    """
    if link is not None:
        require_trackpy()  # before the work, not after it
    found = yield from iter_detect(model, image, params, chunk=chunk, rgb=rgb, channel_axis=channel_axis,
                                   augment=augment)
    if link is None:
        return AllFrames(found)
    try:
        return AllFrames(found, track=link_tracks(found.frame, found.positions[:, :2], *link))
    except InputError as exc:  # the detections took long: keep them, without tracks
        return AllFrames(found, link_error=str(exc))
