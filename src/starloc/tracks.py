"""Detections of a time-lapse linked into trajectories, with trackpy (Crocker–Grier linking).

LodeSTAR finds objects frame by frame; following one object through the frames is linking:
each detection joins the trajectory of the nearest detection of an earlier frame, within a
search distance, by trackpy's minimum-displacement assignment (its ``link``). Trajectory ids
are 0-based integers, numbered in order of their first detection (frame, then position in
the table). Positions are ``(row, col)`` in pixels, frames 0-based, as everywhere in LodeSTAR.

trackpy is an optional dependency (``pip install 'napari-starloc[tracking]'``; the napari
extra includes it).
"""

from __future__ import annotations

import logging
import math
import warnings
from contextlib import contextmanager

import numpy as np

from .errors import InputError

__all__ = ["link_tracks", "require_trackpy"]


def require_trackpy():
    """The trackpy module, or InputError saying how to install it (check before long work)."""
    try:
        import trackpy
    except ImportError:
        raise InputError("linking detections into tracks needs trackpy: pip install 'napari-starloc[tracking]'") \
            from None
    return trackpy


@contextmanager
def _quiet(logger_name: str = "trackpy"):
    """trackpy reports every frame on stdout at INFO level, and its pandas calls raise
    deprecation warnings that are not the user's business: keep only its logged warnings."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="trackpy")
            warnings.filterwarnings("ignore", category=FutureWarning, module="trackpy")
            yield
    finally:
        logger.setLevel(level)


def _real(value) -> float | None:
    """``value`` as a float if it is one real number (Python or numpy, not a bool or a string)."""
    if isinstance(value, (bool, np.bool_, str, bytes)) or np.ndim(value) != 0:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def link_tracks(frames, positions, max_distance: float, memory: int = 0) -> np.ndarray:
    """Trajectory id (int64, 0-based) of each detection.

    frames : ``(N,)`` 0-based frame of each detection; positions : ``(N, 2)`` ``(row, col)`` px.
    max_distance : farthest a detection may be from its trajectory's last position, px (per
        frame gap); keep it below half the distance between neighbouring objects.
    memory : frames an object may go undetected and still keep its trajectory (0: none).

    InputError for a distance that is not a positive number, a negative memory, shapes that
    do not match, positions that are not finite, frames that are not whole numbers >= 0, or a
    scene too crowded for the distance (trackpy's subnetwork limit).
    """
    frames = np.asarray(frames).reshape(-1)
    positions = np.asarray(positions, dtype=np.float64)
    distance = _real(max_distance)
    if distance is None or not (math.isfinite(distance) and distance > 0):
        raise InputError(f"the linking distance must be a positive number of pixels, got {max_distance!r}")
    if isinstance(memory, bool) or not isinstance(memory, (int, np.integer)) or memory < 0:
        raise InputError(f"the linking memory must be a whole number of frames >= 0, got {memory!r}")
    if positions.ndim != 2 or positions.shape[1] < 2 or len(positions) != len(frames):
        raise InputError(f"positions must be (N, 2) (row, col) for N = {len(frames)} frames, got {positions.shape}")
    if not np.isfinite(positions[:, :2]).all():
        raise InputError(f"{int((~np.isfinite(positions[:, :2])).any(axis=1).sum())} detection(s) have no finite "
                         "position (NaN or inf): drop them before linking")
    if len(frames):
        values = frames.astype(np.float64) if frames.dtype.kind in "iuf" else np.array([np.nan])
        if not (np.isfinite(values).all() and (values == np.round(values)).all() and values.min() >= 0):
            raise InputError("frames must be whole numbers >= 0 (0-based) to link detections")
    if len(frames) == 0:
        return np.zeros(0, dtype=np.int64)
    trackpy = require_trackpy()
    import pandas as pd

    table = pd.DataFrame({"frame": frames.astype(np.int64), "row": positions[:, 0], "col": positions[:, 1]})
    try:
        with _quiet():
            linked = trackpy.link(table, distance, pos_columns=["row", "col"], t_column="frame", memory=int(memory))
    except trackpy.SubnetOversizeException:
        raise InputError(f"too many detections within {distance:g} px of each other to link them: give a "
                         "smaller linking distance") from None
    ids = linked["particle"].reindex(table.index).to_numpy()
    # renumber 0, 1, 2, ... in order of each trajectory's first detection
    order = np.lexsort((np.arange(len(ids)), frames))
    _, first = np.unique(ids[order], return_index=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[np.searchsorted(np.unique(ids), ids)]
