"""npe2 reader and writer for detection tables: CSV ``frame,row,col,<features...>``.

The format is the one of ``starloc lodestar detect`` (:func:`starloc.io.write_points_csv`):
pixel coordinates ``(row, col)`` with pixel centres at integers, frames 0-based, then one numeric
column per feature. Values round-trip exactly (floats are written with ``repr``).

Coordinates are the Points layer's *data* coordinates, written and read as they are: the layer's
``scale``/``translate`` (and any other transform) are neither applied nor stored. They are pixel
units of the image the points were detected on, as long as the layer has the image's transform
(which is how the LodeSTAR widget creates it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from starloc.io import is_points_csv, read_points_csv, write_points_csv

#: Largest distance of a frame coordinate from an integer still taken as that integer
#: (float noise of a click on a time-lapse with a scale); anything farther is an error.
_FRAME_TOLERANCE = 1e-6


def _numeric_features(features: Any, n: int) -> dict[str, np.ndarray]:
    """The numeric (bool/int/float) columns of a DataFrame or mapping, as (n,) arrays.

    Other columns (strings, categories, objects) are skipped: the CSV holds numbers only.
    """
    if features is None:
        return {}
    if hasattr(features, "columns"):  # pandas DataFrame
        columns = {name: features[name] for name in features.columns}
    else:
        columns = dict(features)
    out: dict[str, np.ndarray] = {}
    for name, column in columns.items():
        try:
            values = np.asarray(column)
        except Exception:
            continue
        if values.dtype.kind == "O" and hasattr(column, "dtype"):
            # pandas nullable numeric columns (Int64, Float64, boolean) come out as objects
            try:
                import pandas as pd

                if pd.api.types.is_numeric_dtype(column.dtype):
                    values = column.to_numpy(dtype=np.float64, na_value=np.nan)
            except Exception:
                continue
        if values.dtype.kind not in "biuf" or values.ndim != 1 or values.shape[0] != n:
            continue
        out[str(name)] = values
    return out


def write_points(path: str, data: Any, meta: dict) -> list[str]:
    """Write one Points layer to ``path`` as CSV ``frame,row,col,<numeric features>``.

    ``data``: the layer's (N, D) data in napari axis order. D = 2 ``(row, col)`` is written
    with frame 0; D = 3 ``(frame, row, col)`` needs integral frames >= 0 (ValueError
    otherwise); D > 3 is rejected. Features: the numeric columns of ``meta["features"]``
    (DataFrame or dict); other columns are skipped. Coordinates are data coordinates of the
    layer, in pixels: ``scale``/``translate`` are not applied. The file is written atomically.
    Returns ``[path]``.
    """
    points = np.asarray(data, dtype=np.float64)
    if points.ndim == 1 and points.size == 0:
        points = points.reshape(0, 2)
    if points.ndim != 2 or points.shape[1] not in (2, 3):
        dims = points.shape[1] if points.ndim == 2 else points.ndim
        raise ValueError(
            f"cannot write a {dims}D points layer as frame,row,col: only 2D (row, col) and 3D "
            "(frame, row, col) points layers can be saved in this CSV format"
        )
    n = points.shape[0]
    if points.shape[1] == 3:
        raw = points[:, 0]
        frames = np.round(raw)
        bad = ~np.isfinite(raw) | (np.abs(raw - frames) > _FRAME_TOLERANCE) | (frames < 0)
        if np.any(bad):
            example = float(raw[bad][0])
            raise ValueError(
                f"cannot write points layer: the first coordinate is the frame and must be a "
                f"whole number >= 0, but {int(bad.sum())} point(s) have other values "
                f"(e.g. {example!r}); put the points on frames (0-based integers) or save a 2D "
                "layer"
            )
        frames = frames.astype(np.int64)
        positions = points[:, 1:]
    else:
        frames = np.zeros(n, dtype=np.int64)
        positions = points
    features = _numeric_features((meta or {}).get("features"), n)
    write_points_csv(path, frames, positions, features)
    return [path]


def _single_path(path: Any) -> str | None:
    """``path`` as a str when it is one path (or a list of exactly one), else None."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    if isinstance(path, (str, os.PathLike)):
        return os.fspath(path)
    return None


def get_reader(path: Any) -> Callable[[Any], list[tuple]] | None:
    """npe2 reader hook: :func:`read_points` for a starloc detection CSV, None otherwise.

    Claims only a single path ending in ``.csv`` whose first line starts with
    ``frame,row,col`` (a cheap sniff of at most 4 KiB). Never raises.
    """
    try:
        single = _single_path(path)
        if single is None or not single.lower().endswith(".csv"):
            return None
        return read_points if is_points_csv(single) else None
    except Exception:
        return None


def read_points(path: Any) -> list[tuple]:
    """Read a detection CSV into one Points layer data tuple, and a Tracks layer's when the
    table has a ``track`` column (linked detections, ``lodestar detect --link``).

    Data are ``(frame, row, col)`` when the table has points on a frame other than 0, else
    ``(row, col)``. The feature columns become the layer's features; points are coloured by
    ``score`` (viridis) when there is such a column with finite values (napari would make every
    point transparent for a NaN score). Size 5 px. Tracks: ``(track, frame, row, col)``, only
    when the points lie on several frames and every track id is a finite whole number.
    """
    single = _single_path(path)
    if single is None:
        raise ValueError(f"expected one path to a points CSV, got {path!r}")
    frames, positions, features = read_points_csv(single)
    if np.any(frames != 0):
        data = np.column_stack([frames.astype(np.float64), positions])
    else:
        data = positions
    kwargs: dict[str, Any] = {
        "name": Path(single).stem,
        "features": features,
        "size": 5,
        "metadata": {"source": single},
    }
    if "score" in features and np.all(np.isfinite(features["score"])):
        kwargs["face_color"] = "score"
        kwargs["face_colormap"] = "viridis"
    layers = [(data, kwargs, "points")]
    track = features.get("track")
    linked = track is not None and data.shape[1] == 3  # tracks need frames
    if linked and np.all(np.isfinite(track)) and np.all(track == np.round(track)):
        tracks = np.column_stack([track, frames, positions]).astype(np.float64)
        layers.append((tracks, {"name": f"{Path(single).stem} tracks", "metadata": {"source": single}}, "tracks"))
    return layers
