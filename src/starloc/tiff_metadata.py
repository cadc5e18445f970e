"""What a TIFF file's ImageJ or OME metadata states about its data: the pixel size and z step
(nm) and the axes (the pixel size also from plain resolution tags in centimetres). Core: no
napari, no torch. Every reader here returns None where the file states nothing (or is no
TIFF) and never raises, so callers fall back to options or defaults.
"""

from __future__ import annotations

import html
import math
import os
from typing import Any

__all__ = ["tiff_pixel_size", "tiff_pixel_size_problem", "tiff_z_step", "tiff_spacing", "tiff_spacing_problem",
           "stated_axes", "planar_samples_axis", "several_channels",
           "other_series_note"]


#: length units of TIFF metadata (lower case, µ as U+00B5) -> nm
_LENGTH_UNITS_NM = {"micron": 1000.0, "microns": 1000.0, "µm": 1000.0, "um": 1000.0, "micrometer": 1000.0,
                    "micrometers": 1000.0, "nm": 1.0, "nanometer": 1.0, "nanometers": 1.0, "mm": 1e6,
                    "millimeter": 1e6, "cm": 1e7, "m": 1e9, "å": 0.1, "angstrom": 0.1, "pm": 1e-3}


#: relative difference of x and y pixel sides still read as square pixels
SQUARE_TOLERANCE = 1e-3

#: ImageJ units of images without a spatial calibration (inch: dots per inch of a print size)
_UNCALIBRATED = ("", "pixel", "pixels", "inch", "inches")


def _unit(text: str) -> str:
    """A unit as written in metadata, normalized: XML character references decoded (OME
    written by Python's ElementTree has ``&#181;m``), lower case, the micro sign for Greek mu
    (U+03BC) and for ImageJ's escaped ``\\u00b5``."""
    return html.unescape(text).strip().lower().replace("\\u00b5", "µ").replace("\u03bc", "µ")


def _positive_nm(value: float) -> float | None:
    return value if math.isfinite(value) and value > 0 else None


def _ome_length(tif: Any, axis: str) -> tuple[float | None, str | None]:
    """``PhysicalSize{axis}`` of OME metadata in nm (µm when no unit is given) and, when it is
    stated but unusable, why; ``(None, None)`` when not stated."""
    if not (tif.is_ome and tif.ome_metadata):
        return None, None
    import re

    m = re.search(rf'PhysicalSize{axis}="([^"]+)"', tif.ome_metadata)
    if not m:
        return None, None
    unit = re.search(rf'PhysicalSize{axis}Unit="([^"]+)"', tif.ome_metadata)
    scale = _LENGTH_UNITS_NM.get(_unit(unit.group(1)) if unit else "µm")
    if scale is None:
        return None, f"OME PhysicalSize{axis} in unit {unit.group(1)!r}, not a length starloc reads"
    return _positive_nm(float(m.group(1)) * scale), None


def _ome_length_nm(tif: Any, axis: str) -> float | None:
    return _ome_length(tif, axis)[0]


def _imagej_unit_nm(tif: Any, axis: str = "") -> tuple[dict, float | None]:
    """ImageJ metadata and nm per unit of its ``unit`` (None: no length unit); with ``axis``
    ``"y"`` or ``"z"``, of that axis's own unit (``yunit``, ``zunit``), which ImageJ writes when
    it differs from ``unit``."""
    meta = tif.imagej_metadata or {}
    unit = meta.get(f"{axis}unit", meta.get("unit", "")) if axis else meta.get("unit", "")
    return meta, _LENGTH_UNITS_NM.get(_unit(str(unit)))


def _square(x: float, y: float) -> bool:
    """Whether pixel sides x and y (same unit) are equal up to the rounding that writers leave
    (float32 values, ImageJ's rational resolutions, microscope software rounding to a few
    digits): 0.1 % of a 100 nm pixel is 0.1 nm, far below any localization error."""
    return abs(x - y) <= SQUARE_TOLERANCE * max(abs(x), abs(y))


def _centimetre_resolution(tif: Any) -> tuple[float | None, str | None]:
    """The pixel size of a TIFF without ImageJ or OME metadata from its baseline resolution tags,
    where their unit is the centimetre (as some acquisition software calibrates them); the
    default inch unit (72 dpi and the like) states no calibration."""
    tags = tif.pages[0].tags
    unit = tags.get("ResolutionUnit")
    if unit is None or int(unit.value) != 3 or "XResolution" not in tags or "YResolution" not in tags:
        return None, None
    xr, yr = tags["XResolution"].value, tags["YResolution"].value
    if not (xr[0] > 0 and yr[0] > 0):
        return None, None
    px_x, px_y = 1e7 * xr[1] / xr[0], 1e7 * yr[1] / yr[0]  # nm per pixel
    if not _square(px_x, px_y):
        return None, f"non-square pixels (resolution tags: {px_x:g} nm in x, {px_y:g} nm in y)"
    return _positive_nm((px_x + px_y) / 2), None


def _pixel_size(tif: Any) -> tuple[float | None, str | None]:
    """``(pixel size nm or None, why a stated pixel size cannot be used or None)``."""
    x, problem = _ome_length(tif, "X")
    if x is not None:
        y, _ = _ome_length(tif, "Y")
        if y is None:
            return x, None
        if not _square(x, y):
            return None, f"non-square pixels (OME: {x:g} nm in x, {y:g} nm in y)"
        return (x + y) / 2, None
    if problem:
        return None, problem
    if not tif.is_imagej:
        return _centimetre_resolution(tif)
    meta, scale = _imagej_unit_nm(tif)
    tags = tif.pages[0].tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return None, None
    xr, yr = tags["XResolution"].value, tags["YResolution"].value
    px_x, px_y = xr[1] / xr[0], yr[1] / yr[0]  # unit per pixel
    if scale is None:
        unit = meta.get("unit")
        if unit is None or px_x == 1.0 or _unit(str(unit)) in _UNCALIBRATED:
            return None, None
        return None, f"ImageJ unit {unit!r}, not a length starloc reads"
    y_scale = _imagej_unit_nm(tif, "y")[1]
    if y_scale is not None:
        px_y *= y_scale / scale  # in x's unit
    if not (px_x > 0 and _square(px_x, px_y)):
        return None, f"non-square pixels (ImageJ: {px_x * scale:g} nm in x, {px_y * scale:g} nm in y)"
    return _positive_nm((px_x + px_y) / 2 * scale), None


def tiff_pixel_size(tif: Any) -> float | None:
    """Pixel size (nm) stated by an open :class:`tifffile.TiffFile`'s ImageJ or OME metadata (or,
    without them, by resolution tags in centimetres), or None (no metadata, unknown unit, or
    non-square pixels: see :func:`tiff_pixel_size_problem`). Never raises."""
    try:
        return _pixel_size(tif)[0]
    except Exception:
        return None


def tiff_pixel_size_problem(tif: Any) -> str | None:
    """Why the pixel size stated by a TIFF's ImageJ or OME metadata cannot be used (a unit that
    is no length, non-square pixels), or None (usable, or none stated). Never raises."""
    try:
        return _pixel_size(tif)[1]
    except Exception:
        return None


def tiff_z_step(tif: Any) -> float | None:
    """Distance (nm) between the slices of a z-stack stated by an open :class:`tifffile.TiffFile`'s
    OME (``PhysicalSizeZ``) or ImageJ (``spacing``, in ``unit``) metadata, or None. None too where
    the axes say the slices are time points and none is z (``TYX``): the z spacing such a file
    states (often the software's default) describes none of its axes. Never raises."""
    try:
        axes = "".join(a for a, n in zip(tif.series[0].axes, tif.series[0].shape) if n > 1)
        if "T" in axes and "Z" not in axes:
            return None
        ome = _ome_length_nm(tif, "Z")
        if ome is not None:
            return ome
        meta, scale = _imagej_unit_nm(tif, "z")
        if scale is None or "spacing" not in meta:
            return None
        return _positive_nm(float(meta["spacing"]) * scale)
    except Exception:
        return None


def tiff_spacing(path: Any) -> tuple[float | None, float | None]:
    """``(pixel size, z step)`` in nm stated by a TIFF file's metadata (None where it states
    none, or the file is no TIFF). Never raises."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return tiff_pixel_size(tif), tiff_z_step(tif)
    except Exception:
        return None, None


def tiff_spacing_problem(path: Any) -> str | None:
    """:func:`tiff_pixel_size_problem` of a TIFF file (None where it is no readable TIFF). Never
    raises."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return tiff_pixel_size_problem(tif)
    except Exception:
        return None


def stated_axes(path: str | os.PathLike) -> str | None:
    """The axes an ImageJ or OME TIFF's metadata names for its data, in tifffile's letters
    (e.g. ``"TYX"``, ``"CYX"``, ``"TZYX"``; singleton axes dropped as :func:`read_image` drops
    them), or None for other files. Never raises."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if not (tif.is_imagej or tif.is_ome) or _tifffile_default_channels(tif):
                return None
            series = tif.series[0]
            return "".join(a for a, n in zip(series.axes, series.shape) if n > 1 or a in "YX")
    except Exception:
        return None


def planar_samples_axis(series: Any) -> int | None:
    """The axis of a tifffile series that holds the 3 or 4 colour samples of an RGB(A) image
    stored plane by plane (axes ``SYX``, ``TSYX``; "planar configuration" 2), or None where the
    samples are interleaved (last axis, as numpy images hold them) or there are none. Never raises."""
    try:
        axes, shape = str(series.axes), tuple(series.shape)
        i = axes.index("S")
        if _numpy_planes(series):
            return None
        return i if i != len(axes) - 1 and shape[i] in (3, 4) else None
    except Exception:
        return None


def _numpy_planes(series: Any) -> bool:
    """True for planar samples that tifffile wrote from a numpy array of shape ``(3|4, H, W)``
    it was not told the photometric of (its "shaped" description): tifffile then stores them as
    RGB, though most such arrays are three or four frames. Read as stored, frames first."""
    try:
        axes = str(series.axes)
        return bool(series.parent.is_shaped) and "S" in axes and axes.index("S") != len(axes) - 1
    except Exception:
        return False


def _tifffile_default_channels(tif: Any) -> bool:
    """True for an ImageJ file that tifffile wrote from a 3D array without being told its axes:
    it then states the first axis as channels (``images=N channels=N``) under its own version
    string ``ImageJ=1.11a``. That says nothing of the data (most are stacks of frames)."""
    try:
        meta = tif.imagej_metadata or {}
        return (str(meta.get("ImageJ")) == "1.11a" and meta.get("channels") == meta.get("images")
                and not any(k in meta for k in ("slices", "frames")))
    except Exception:
        return False


def several_channels(series: Any) -> tuple[bool, str] | None:
    """``(colour, "N channels (axes AXES, shape SHAPE)")`` when a tifffile series holds more than
    one channel (an axis ``C`` longer than 1; ``colour`` False) or colour sample (``S``; ``colour``
    True), else None. Never raises."""
    try:
        axes, shape = str(series.axes), tuple(series.shape)
        if _tifffile_default_channels(series.parent):
            axes = axes.replace("C", "I")
        if _numpy_planes(series):
            axes = axes.replace("S", "I")
        for a in "CS":
            if a in axes and shape[axes.index(a)] > 1:
                what = "channels" if a == "C" else "colour samples (RGB)"
                return a == "S", f"{shape[axes.index(a)]} {what} (axes {axes}, shape {shape})"
    except Exception:
        pass
    return None


def other_series_note(tif: Any) -> str | None:
    """A note when an open TIFF holds image series besides the first (e.g. several positions of
    an OME-TIFF), of which starloc reads only the first; None otherwise. Never raises."""
    try:
        series = [s for s in tif.series if getattr(s, "kind", "") not in ("thumbnail",)]
        if len(series) <= 1:
            return None
        shapes = ", ".join(str(tuple(s.shape)) for s in series[1:4]) + (", ..." if len(series) > 4 else "")
        return (f"the file holds {len(series)} image series; only the first, of shape {tuple(series[0].shape)}, "
                f"is read (the others: {shapes}); save the one you want as its own file")
    except Exception:
        return None
