"""Whole-image and whole-stack LodeSTAR work, as generators for GUIs and the CLI.

Each ``iter_*`` function yields ``(frames_done, frames_total)`` after every chunk of frames
(so the caller can show progress and cancel between chunks) and returns its result. Images
are read chunk by chunk through :func:`starloc.io.iter_frame_chunks`, so memory stays
bounded for long stacks; a chunk of large frames holds fewer of them (:data:`CHUNK_PIXELS`).
Positions are (row, col) in pixels, frames 0-based.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence

import numpy as np

from starloc.errors import InputError
from starloc.io import as_frames, frames_shape, image_frame_range, iter_frame_chunks, validate_crop
from starloc.lodestar.deblend import deblend
from starloc.lodestar.detection import DetectParams, Detections, detect, pool_single, pool_single_symmetries
from starloc.lodestar.model import LodeSTAR, Maps

FrameProgress = tuple[int, int]  # (frames done, frames in total)

#: a chunk of frames holds at most about this many pixels (and at least one frame): detection
#: holds ~20 bytes per pixel of its chunk and the network's activations on a 1024 px tile of
#: every frame of it at once, so `starloc lodestar detect` on 8 frames of 2048 x 2048 px in one
#: chunk peaked at 3.0 GB, one frame at a time at 0.9 GB (and took 22 s instead of 28).
#: Frames up to 724 x 724 px still go 8 at a time.
CHUNK_PIXELS = 2**22


def frames_per_chunk(chunk: int, frame_shape: Sequence[int]) -> int:
    """At most ``chunk`` frames of ``(..., H, W)`` pixels, together at most ~:data:`CHUNK_PIXELS`
    pixels; at least one. Results do not depend on it (every frame is processed by itself)."""
    return max(1, min(int(chunk), CHUNK_PIXELS // max(int(frame_shape[-2]) * int(frame_shape[-1]), 1)))


def extract_crops(
    image, crops: Sequence[Sequence[float]], frame: int = 0, min_size: int = 1, rgb: str = "error",
    channel_axis: int | None = None,
) -> list[np.ndarray]:
    """Cut ``(C, h, w)`` float32 training crops from one frame of a user image.

    ``crops`` are ``(row, col, height, width)`` rectangles in pixels (see
    :func:`starloc.io.validate_crop`); ``frame`` is the 0-based frame of a stack.
    """
    if not crops:
        raise InputError("no crop given; select a rectangle around one object")
    return crops_from_frame(read_frame(image, frame, rgb=rgb, channel_axis=channel_axis), crops, min_size)


def read_frame(image, frame: int, rgb: str = "error", channel_axis: int | None = None) -> np.ndarray:
    """One frame of a user image as float32 ``(1, C, H, W)`` (only that frame is read);
    InputError when the image has no such frame."""
    t = frames_shape(image, rgb=rgb, channel_axis=channel_axis)[0]
    if not 0 <= frame < t:
        raise InputError(f"frame {frame} is out of range: the image has {t} frame(s) (0..{t - 1})")
    return next(iter_frame_chunks(_frame_slice(image, frame, t), 1, rgb=rgb, channel_axis=channel_axis))[1]


def crops_from_frame(frame: np.ndarray, crops: Sequence[Sequence[float]], min_size: int = 1) -> list[np.ndarray]:
    """``(C, h, w)`` copies of the ``(row, col, height, width)`` rectangles of one ``(1, C, H, W)``
    frame (checked with :func:`starloc.io.validate_crop`)."""
    boxes = [validate_crop(tuple(frame.shape[-2:]), c, min_size) for c in crops]
    return [frame[0, :, r : r + hh, c : c + ww].copy() for r, c, hh, ww in boxes]


def _frame_slice(image, frame: int, n_frames: int):
    """The one frame to read (all of it when the image is a single frame)."""
    return image if n_frames == 1 else image[frame : frame + 1]


def detect_in_maps(model: LodeSTAR, frames: np.ndarray, maps: Maps, params: DetectParams = DetectParams(),
                   augment: bool = False, seen: np.ndarray | None = None) -> Detections:
    """:func:`~starloc.lodestar.detection.detect` on the maps of ``(T, C, H, W)`` frames, then
    the crowded detections deblended on the frames (``params.deblend``; ``seen``: see
    :func:`~starloc.lodestar.deblend.deblend`), keeping those inside the frames. Frame
    indices into ``frames``."""
    found = detect(maps, params)
    if not params.deblend:
        return found
    return deblend(model, frames, found, params, augment, seen).inside(frames.shape[-2:])


def detect_frames(model: LodeSTAR, frames: np.ndarray, params: DetectParams = DetectParams(),
                  augment: bool = False) -> Detections:
    """Multi-object detection on in-memory ``(T, C, H, W)`` frames (maps, peaks, refinement,
    deblending)."""
    maps, seen = model.maps_and_input(frames, augment=augment)
    return detect_in_maps(model, frames, maps, params, augment, seen)


def iter_detect(
    model: LodeSTAR, image, params: DetectParams = DetectParams(), chunk: int = 8, rgb: str = "error",
    channel_axis=None, augment: bool = False, frames=None,
) -> Generator[FrameProgress, None, Detections]:
    """Multi-object detection on every frame, or on the contiguous ``frames`` (a slice, range
    or ``(start, stop)``) only; returns :class:`Detections` (frames 0-based, numbered as in the
    whole image)."""
    selected = image_frame_range(image, frames, rgb=rgb, channel_axis=channel_axis)
    chunk = frames_per_chunk(chunk, frames_shape(image, rgb=rgb, channel_axis=channel_axis))
    parts: list[Detections] = []
    for start, block in iter_frame_chunks(image, chunk, rgb=rgb, channel_axis=channel_axis, frames=selected):
        model.check_channels(block.shape[1])
        found = detect_frames(model, block, params, augment)
        found.frame += start
        parts.append(found)
        yield start + len(block) - selected.start, len(selected)
    return Detections(
        np.concatenate([p.frame for p in parts]),
        np.concatenate([p.positions for p in parts]),
        {k: np.concatenate([p.features[k] for p in parts]) for k in parts[0].features},
    )


def single_object(model: LodeSTAR, frames: np.ndarray, augment: bool = True) -> tuple[np.ndarray, Maps]:
    """``(T, K)`` single-object predictions for ``(T, C, H, W)`` frames, and the maps used.

    ``augment``: the median of the poolings over the 8 grid symmetries of each frame
    (the returned maps are their average).
    """
    if augment:
        maps = model.symmetry_maps(frames)
        return pool_single_symmetries(maps), maps.averaged()
    maps = model.maps(frames)
    return pool_single(maps), maps


def iter_single(
    model: LodeSTAR, image, chunk: int = 8, rgb: str = "error", channel_axis=None, augment: bool = True,
    frames=None,
) -> Generator[FrameProgress, None, Detections]:
    """One object per frame (see :func:`single_object`); returns one detection per frame, of
    every frame or of the contiguous ``frames`` only (numbered as in the whole image).

    Features: ``weight`` (mean of the weight map) and ``consistency`` (weighted variance of
    the per-pixel predictions around the pooled one, px^2 of the network's input).
    """
    selected = image_frame_range(image, frames, rgb=rgb, channel_axis=channel_axis)
    chunk = frames_per_chunk(chunk, frames_shape(image, rgb=rgb, channel_axis=channel_axis))
    pos, weight, spread = [], [], []
    for start, block in iter_frame_chunks(image, chunk, rgb=rgb, channel_axis=channel_axis, frames=selected):
        model.check_channels(block.shape[1])
        p, maps = single_object(model, block, augment)
        w = maps.weights[:, None]
        dev = ((maps.positions[:, :2] - p[:, :2, None, None]) ** 2).sum(1, keepdims=True)
        pos.append(p)
        weight.append(maps.weights.mean(axis=(1, 2)))
        spread.append(((dev * w).sum((1, 2, 3)) / np.maximum(w.sum((1, 2, 3)), 1e-12)) / maps.downsample**2)
        yield start + len(block) - selected.start, len(selected)
    positions = np.concatenate(pos)
    return Detections(np.arange(selected.start, selected.stop), positions,
                      {"weight": np.concatenate(weight), "consistency": np.concatenate(spread)})


def predict_single(model: LodeSTAR, image, augment: bool = True) -> np.ndarray:
    """``(T, K)`` single-object predictions for an in-memory image; 2D input gives ``(K,)``."""
    out = single_object(model, as_frames(image), augment)[0]
    return out[0] if np.ndim(image) == 2 else out


def property_columns(model: LodeSTAR, positions: np.ndarray) -> dict[str, np.ndarray]:
    """The properties after (row, col) of ``(N, K)`` predictions, as named output columns:
    ``z_um`` (axial position in µm; + is further along the light) and ``signal`` (signal
    strength, e.g. polarizability: ``exp(log_signal)``), in the training crop's reference
    (``TrainConfig.crop_z_um`` / ``crop_signal``: by default z from the crop's object and
    the signal as a multiple of it). Empty for a plain 2D model."""
    names = model.metadata.get("properties", ["row", "col"])[2:]
    out = {}
    for i, name in enumerate(names, start=2):
        values = np.asarray(positions[:, i], dtype=np.float64)
        if name == "log_signal":
            out["signal"] = np.exp(values)
        else:
            out[name] = values
    return out
