"""How the LodeSTAR widget reads napari layers: image axes, the current frame, crop rectangles.

No Qt here, only napari layer objects and numpy. Everything the training or inference
worker needs is copied out of the layers on the main thread by these functions, so the
worker never touches a layer. Positions are (row, col) in the image layer's *data*
coordinates (pixels, centres at integers); frames are 0-based.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from starloc.errors import InputError
from starloc.gui.units import axis_nm, check_axis_aligned
from starloc.io import as_frames

#: Names of the layers the widget creates (and refreshes in place).
CROP_LAYER = "LodeSTAR crop"
CENTRE_LAYER = "LodeSTAR crop centre"
WEIGHT_LAYER = "LodeSTAR weight map"
SCORE_LAYER = "LodeSTAR score map"
POINTS_LAYER = "LodeSTAR detections"
ALL_POINTS_LAYER = "LodeSTAR detections (all frames)"
TRACKS_LAYER = "LodeSTAR tracks"
#: Marks the layers made by the widget (not offered as input images).
OUTPUT_KEY = "starloc_output"
#: How the training crop is given: a drawn rectangle, or a clicked centre and a size.
CROP_RECTANGLE = "Rectangle"
CROP_POINT = "Point + size"
CROP_SOURCES = (CROP_RECTANGLE, CROP_POINT)
NO_IMAGE = "no image layer; open an image or a sample (File › Open Sample) and choose it"
#: ``layer.metadata`` key saying that the layer's first axis holds channels (e.g. a hologram's
#: real and imaginary parts), so the widget reads it as one multichannel image, not a time-lapse.
CHANNELS_FIRST_KEY = "channels_first"


@dataclass(frozen=True)
class ImageSource:
    """A napari image layer as LodeSTAR sees it.

    data: the array (level 0 of a multiscale image), possibly lazy (dask, zarr).
    rgb: ``"gray"`` for RGB(A) layers (converted to gray by luminance), else ``"error"``.
    n_frames: 1 for a 2D image, T for a T×Y×X time-lapse.
    height, width: frame size in pixels.
    scale, translate: of the layer's last two (spatial) axes; ``full_scale``/``full_translate``
    of all its axes but a channel axis (with the time axis first for a time-lapse);
    ``full_units``/``units`` the same for napari's per-axis units (None where napari has
    none), so outputs line up.
    channel_axis: 0 when the layer's first axis holds channels: one C×Y×X multichannel image
    (e.g. a hologram: real and imaginary parts) or a C×T×Y×X time-lapse of them; else None.
    ``channels`` is C (1 without a channel axis).
    time_axis: the data axis of time (1 for C×T×Y×X, else 0; only meaningful for a time-lapse).
    """

    name: str
    data: Any
    rgb: str
    n_frames: int
    height: int
    width: int
    scale: tuple[float, float]
    translate: tuple[float, float]
    full_scale: tuple[float, ...]
    full_translate: tuple[float, ...]
    full_units: tuple | None = None
    channel_axis: int | None = None
    channels: int = 1
    time_axis: int = 0
    z_stack: bool = False  # a T×Y×X layer whose first axis is a length: slices, not frames in time

    @property
    def units(self) -> tuple | None:
        """The units of the two spatial axes (None: napari without layer units)."""
        return None if self.full_units is None else self.full_units[-2:]

    @property
    def is_timelapse(self) -> bool:
        return self.ndim == 3

    @property
    def ndim(self) -> int:
        return len(self.full_scale)

    def describe(self) -> str:
        size = f"{self.height}×{self.width} px"
        if self.channel_axis is not None and self.is_timelapse:
            return f"time-lapse: {self.n_frames} frames of {self.channels} channels (C×T×Y×X), {size}"
        if self.channel_axis is not None:
            return f"one image of {self.channels} channels (first axis), {size}"
        if self.z_stack:
            return f"z-stack: {self.n_frames} slices of {size} (each detected on its own)"
        if self.is_timelapse:
            return f"time-lapse: {self.n_frames} frames of {size} (first axis = time)"
        return f"2D image, {size}" + (" (RGB → gray)" if self.rgb == "gray" else "")


def image_source(layer, channels_first: bool = False) -> ImageSource:
    """Interpret an Image layer: 2D, T×Y×X (first axis = time), or RGB(A) of either; with
    ``channels_first``, C×Y×X: one image whose first axis holds channels (a hologram's real
    and imaginary parts), or C×T×Y×X: a time-lapse of such images. Channels come first so
    that the outputs (T×Y×X maps, (t, row, col) points) line up with the layer's last axes,
    as napari aligns layers.

    InputError for layers LodeSTAR cannot read unambiguously: 4D+ non-RGB data (e.g.
    T×Z×Y×X, or T×C×Y×X with channels second), 1D data; with ``channels_first``, anything but
    C×Y×X and C×T×Y×X.
    """
    check_axis_aligned(layer)
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    rgb = bool(getattr(layer, "rgb", False))
    shape = tuple(int(s) for s in np.shape(data))
    if channels_first:
        return _multichannel_source(layer, data, shape, rgb)
    spatial_ndim = len(shape) - (1 if rgb else 0)
    if spatial_ndim > 3:
        raise InputError(
            f"layer {layer.name!r} has {spatial_ndim} dimensions {shape}; LodeSTAR works on 2D "
            "images or T×Y×X time-lapses (first axis = time), or with 'First axis = channels' on "
            "C×T×Y×X time-lapses of multichannel images (holograms). Otherwise split the channels or "
            "z-planes into separate layers (layer list: right-click › Split Stack) and choose one"
        )
    if spatial_ndim < 2:
        raise InputError(f"layer {layer.name!r} has shape {shape}; LodeSTAR needs a 2D image or a T×Y×X time-lapse")
    if rgb and shape[-1] not in (3, 4):
        raise InputError(f"layer {layer.name!r} is RGB with {shape[-1]} samples per pixel; expected 3 or 4")
    h, w = shape[spatial_ndim - 2 : spatial_ndim]
    n_frames = shape[0] if spatial_ndim == 3 else 1
    scale = tuple(float(s) for s in layer.scale)
    translate = tuple(float(t) for t in layer.translate)
    return ImageSource(
        name=layer.name, data=data, rgb="gray" if rgb else "error", n_frames=n_frames,
        height=h, width=w, scale=scale[-2:], translate=translate[-2:],
        full_scale=scale, full_translate=translate,
        full_units=tuple(layer.units) if getattr(layer, "units", None) is not None else None,
        z_stack=spatial_ndim == 3 and axis_nm(layer, 0) is not None,
    )


def _multichannel_source(layer, data, shape: tuple[int, ...], rgb: bool) -> ImageSource:
    """:func:`image_source` of a C×Y×X layer read as one image of C channels, or of a C×T×Y×X
    layer read as T such images."""
    if rgb or len(shape) not in (3, 4):
        raise InputError(f"layer {layer.name!r} has shape {shape}{' (RGB)' if rgb else ''}; 'First axis = channels' "
                         "reads a C×Y×X image (e.g. 2×Y×X: a hologram's real and imaginary parts) or a C×T×Y×X "
                         "time-lapse of them; untick 'First axis = channels'")
    if len(shape) == 4 and shape[0] > shape[1] and layer.metadata.get(CHANNELS_FIRST_KEY) is not True:
        raise InputError(
            f"layer {layer.name!r} has shape {shape}: it looks like T×C×Y×X ({shape[0]} frames of {shape[1]} "
            "channels), and 'First axis = channels' needs the channels first (C×T×Y×X), as napari lines up the "
            "results with the layer's last axes. In napari's console: viewer.add_image(np.moveaxis(layer.data, 1, "
            "0), metadata={'channels_first': True}); or the command line: starloc lodestar detect --channel-axis 1")
    scale = tuple(float(s) for s in layer.scale)[1:]
    translate = tuple(float(t) for t in layer.translate)[1:]
    units = getattr(layer, "units", None)
    timelapse = len(shape) == 4
    return ImageSource(
        name=layer.name, data=data, rgb="error", n_frames=shape[1] if timelapse else 1,
        height=shape[-2], width=shape[-1], scale=scale[-2:], translate=translate[-2:],
        full_scale=scale, full_translate=translate,
        full_units=tuple(units)[1:] if units is not None else None, channel_axis=0, channels=shape[0],
        time_axis=1 if timelapse else 0,
    )


def current_frame(layer, world_point, channels_first: bool = False) -> int:
    """0-based frame of a time-lapse layer shown at the viewer's world position (0 for 2D and
    for one multichannel image)."""
    src = image_source(layer, channels_first)
    if not src.is_timelapse:
        return 0
    data_point = np.asarray(layer.world_to_data(tuple(world_point)), dtype=float)
    return int(np.clip(round(float(data_point[src.time_axis])), 0, src.n_frames - 1))


def read_frame(src: ImageSource, frame: int) -> np.ndarray:
    """One frame as float32 ``(1, C, H, W)`` (a copy, safe to hand to a worker)."""
    if not src.is_timelapse:
        return as_frames(src.data, rgb=src.rgb, channel_axis=src.channel_axis)
    part = src.data[(slice(None),) * src.time_axis + (slice(frame, frame + 1),)]
    return as_frames(part, rgb=src.rgb, channel_axis=src.channel_axis)


def rectangle_to_crop(vertices_data: np.ndarray) -> tuple[int, int, int, int]:
    """``(row, col, height, width)`` of the pixels whose centres lie inside a rectangle.

    ``vertices_data``: ``(M, 2)`` vertices in image data coordinates (row, col); a rotated
    rectangle counts by its bounding box.
    """
    v = np.asarray(vertices_data, dtype=float)
    lo, hi = v.min(axis=0), v.max(axis=0)
    eps = 1e-6
    first = [math.ceil(x - eps) for x in lo]
    last = [math.floor(x + eps) for x in hi]
    return first[0], first[1], last[0] - first[0] + 1, last[1] - first[1] + 1


def _to_image_data(layer, image_layer, coords) -> np.ndarray:
    """``(M, 2)`` (row, col) in the image layer's data coordinates of points of ``layer``'s data.

    Through world coordinates (``layer.data_to_world`` then ``image_layer.world_to_data``), so
    the two layers may have different scale and translate; the last two axes are spatial.
    """
    return np.array([
        np.asarray(image_layer.world_to_data(layer.data_to_world(np.asarray(v))), dtype=float)[-2:]
        for v in coords
    ], dtype=float).reshape(-1, 2)


def centre_to_crop(centre_data, size: int) -> tuple[int, int, int, int]:
    """``(row, col, size, size)``: the square of ``size`` × ``size`` pixels centred on a point.

    ``centre_data``: (row, col) in image data coordinates (pixel centres at integers). The
    point is rounded to the nearest pixel (halves up), which becomes pixel ``size // 2`` of
    the crop on both axes. Not clipped to the image: a crop that sticks out is refused by the
    core with a message (:func:`starloc.io.validate_crop`).
    """
    size = int(size)
    row, col = (math.floor(float(v) + 0.5) - size // 2 for v in np.asarray(centre_data, dtype=float)[-2:])
    return row, col, size, size


def rectangles_in_image(shapes_layer, image_layer, use_all: bool = False) -> list[tuple[int, int, int, int]]:
    """Crops ``(row, col, height, width)`` of the image layer drawn as rectangles.

    The last rectangle (or all of them with ``use_all``) of ``shapes_layer``; vertices go
    from the Shapes layer's data to world coordinates and then to the image's data
    coordinates, so the two layers may have different scale and translate.
    InputError when there is no rectangle.
    """
    rects = [
        np.asarray(d) for d, kind in zip(shapes_layer.data, shapes_layer.shape_type) if kind == "rectangle"
    ] if shapes_layer is not None else []
    if not rects:
        raise InputError(
            f"no rectangle to train on: click 'Draw crop', then drag a rectangle around one object "
            f"in the {CROP_LAYER!r} layer"
        )
    chosen = rects if use_all else rects[-1:]
    return [rectangle_to_crop(_to_image_data(shapes_layer, image_layer, verts)) for verts in chosen]


def points_in_image(points_layer, image_layer, size: int, use_all: bool = False) -> list[tuple[int, int, int, int]]:
    """Square crops ``(row, col, size, size)`` of the image layer centred on clicked points.

    The last point (or all of them with ``use_all``) of ``points_layer``, mapped to the
    image's data coordinates like rectangles (see :func:`rectangles_in_image`).
    InputError when there is no point.
    """
    data = np.asarray(points_layer.data) if points_layer is not None else np.zeros((0, 2))
    if len(data) == 0:
        raise InputError(
            f"no crop centre to train on: click 'Place centre', then click on one object in the "
            f"{CENTRE_LAYER!r} layer"
        )
    chosen = data if use_all else data[-1:]
    return [centre_to_crop(centre, size) for centre in _to_image_data(points_layer, image_layer, chosen)]


def to_uint8(crop: np.ndarray, magnitude: bool = False) -> np.ndarray:
    """A crop ``(C, h, w)`` or ``(h, w)`` as a contrast-stretched uint8 ``(h, w)`` for display:
    the mean of the channels, or with ``magnitude`` their root sum of squares (a field's
    modulus |E| from its real and imaginary parts)."""
    a = np.asarray(crop, dtype=np.float32)
    if a.ndim == 3:
        a = np.sqrt((a**2).sum(axis=0)) if magnitude else a.mean(axis=0)
    lo, hi = np.percentile(a, (1, 99.5)) if a.size else (0.0, 1.0)
    scaled = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return np.ascontiguousarray(np.clip(scaled * 255, 0, 255).astype(np.uint8))
