"""Result layers of the LodeSTAR widget: add them once, refresh them in place afterwards.

Main thread only. Each layer gets the scale, translate (and units) of the source image layer, so
maps and detections sit exactly on the image whatever its pixel size or offset.
"""

from __future__ import annotations

import numpy as np

from starloc.gui.lodestar_source import OUTPUT_KEY, ImageSource
from starloc.gui.units import placement
from starloc.lodestar.detection import Detections

FEATURES = ("score", "weight", "consistency")
POINT_SIZE = 4  # in image pixels (the layer's scale applies)
#: What detections are coloured by, the first feature present with finite values: the axial
#: position of a hologram model (as DeepLoco colours 3D localizations by z), else the score.
COLOUR_BY = ("z_um", "score")
#: Face colour of detections when no COLOUR_BY feature is finite everywhere.
PLAIN_COLOUR = "orange"


def find_layer(viewer, name: str, kind: str):
    """The layer called ``name`` whose type is called ``kind`` (``"Image"``, ``"Points"``, …)."""
    for layer in viewer.layers:
        if layer.name == name and type(layer).__name__ == kind:
            return layer
    return None


def show_map(viewer, name: str, values: np.ndarray, src: ImageSource, colormap: str, frame: int):
    """Add or refresh a 2D Image layer ``(H, W)`` aligned with the source's spatial axes."""
    meta = {OUTPUT_KEY: True, "source": src.name, "frame": frame}
    layer = find_layer(viewer, name, "Image")
    if layer is not None and layer.ndim == 2:
        layer.data = values
        _place(layer, src.scale, src.translate, src.units)
        layer.metadata.update(meta)
        layer.contrast_limits = _limits(values)
        return layer
    if layer is not None:
        viewer.layers.remove(layer)
    return viewer.add_image(
        values, name=name, **placement(src.scale, src.translate, src.units), colormap=colormap,
        blending="additive", opacity=0.6, contrast_limits=_limits(values), metadata=meta,
    )


def _place(layer, scale, translate, units) -> None:
    for key, value in placement(scale, translate, units).items():
        setattr(layer, key, value)


def _limits(values: np.ndarray) -> tuple[float, float]:
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _numbers(values) -> np.ndarray:
    """Integer columns (track ids) stay integers, so an export writes them as such; others float."""
    values = np.asarray(values)
    return values if values.dtype.kind in "iu" else values.astype(float)


def points_data(found: Detections, src: ImageSource, with_frame: bool) -> np.ndarray:
    """``(N, 2)`` (row, col), or ``(N, 3)`` (frame, row, col) when ``with_frame``."""
    pos = np.asarray(found.positions, dtype=float)[:, :2].reshape(-1, 2)
    if with_frame:
        return np.column_stack([np.asarray(found.frame, dtype=float), pos])
    return pos


def show_points(viewer, name: str, found: Detections, src: ImageSource, with_frame: bool, metadata=None,
                properties: dict | None = None):
    """Add or refresh a Points layer of detections with features, coloured by z (a hologram
    model's ``z_um``) or else by score (:data:`COLOUR_BY`).

    ``properties``: the model's other properties per detection (``z_um``, ``signal``; see
    :func:`~starloc.lodestar.inference.property_columns`), shown and exported as features.

    ``with_frame``: data ``(frame, row, col)`` with the source's full scale/translate (a
    time-lapse); else ``(row, col)`` with its spatial scale/translate. Points are coloured by
    a feature only when all its values are finite: napari makes *all* points transparent when
    one is NaN. :func:`~starloc.lodestar.detection.detect` only keeps peaks whose score passes the
    threshold (never NaN), but a ``PLAIN_COLOUR`` fallback keeps any other input visible.
    """
    data = points_data(found, src, with_frame)
    features = {**{k: _numbers(v) for k, v in (properties or {}).items()},
                **{k: np.asarray(found.features.get(k, np.zeros(len(data))), dtype=float) for k in FEATURES}}
    face = next((k for k in COLOUR_BY if k in features and np.all(np.isfinite(features[k]))), PLAIN_COLOUR)
    scale = src.full_scale if with_frame else src.scale
    translate = src.full_translate if with_frame else src.translate
    units = src.full_units if with_frame else src.units
    meta = {OUTPUT_KEY: True, "source": src.name, **(metadata or {})}
    layer = find_layer(viewer, name, "Points")
    if layer is not None and layer.ndim == data.shape[1]:
        layer.data = data
        layer.features = features
        _place(layer, scale, translate, units)
        layer.metadata.update(meta)
        layer.face_color = face  # back to (or away from) the colormap as needed
        if face != PLAIN_COLOUR:
            layer.face_colormap = "viridis"
            layer.refresh_colors(update_color_mapping=True)
        return layer
    if layer is not None:
        viewer.layers.remove(layer)
    return viewer.add_points(
        data, name=name, features=features, face_color=face, face_colormap="viridis",
        border_color="white", border_width=0.1, size=POINT_SIZE, **placement(scale, translate, units),
        metadata=meta, out_of_slice_display=False,
    )


def show_tracks(viewer, name: str, found: Detections, track: np.ndarray, src: ImageSource):
    """Add or refresh a Tracks layer ``(track, frame, row, col)`` of linked detections of a
    time-lapse, with the source's full scale/translate (frames along the time axis)."""
    data = np.column_stack([np.asarray(track, dtype=float), points_data(found, src, with_frame=True)])
    meta = {OUTPUT_KEY: True, "source": src.name}
    layer = find_layer(viewer, name, "Tracks")
    if layer is not None:
        viewer.layers.remove(layer)  # a Tracks layer rebuilds its graph anyway
    return viewer.add_tracks(data, name=name, metadata=meta, tail_length=10,
                             **placement(src.full_scale, src.full_translate, src.full_units))


def remove(viewer, *names: str) -> None:
    for layer in list(viewer.layers):
        if layer.name in names and layer.metadata.get(OUTPUT_KEY):
            viewer.layers.remove(layer)
