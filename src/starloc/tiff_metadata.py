"""What a TIFF file's ImageJ or OME metadata states about its data: the pixel size and z step
(nm) and the axes. Core: no napari, no torch. Every reader here returns None where the file
states nothing (or is no TIFF) and never raises, so callers fall back to options or defaults.
"""

from __future__ import annotations

import math
import os
from typing import Any

__all__ = ["tiff_pixel_size", "tiff_z_step", "tiff_spacing", "stated_axes"]


#: length units of TIFF metadata (lower case) -> nm
_LENGTH_UNITS_NM = {"micron": 1000.0, "microns": 1000.0, "µm": 1000.0, "um": 1000.0, "nm": 1.0, "mm": 1e6}


def _positive_nm(value: float) -> float | None:
    return value if math.isfinite(value) and value > 0 else None


def _ome_length_nm(tif: Any, axis: str) -> float | None:
    """``PhysicalSize{axis}`` of OME metadata in nm (µm when no unit is given), or None."""
    if not (tif.is_ome and tif.ome_metadata):
        return None
    import re

    m = re.search(rf'PhysicalSize{axis}="([^"]+)"', tif.ome_metadata)
    if not m:
        return None
    unit = re.search(rf'PhysicalSize{axis}Unit="([^"]+)"', tif.ome_metadata)
    scale = _LENGTH_UNITS_NM.get(unit.group(1).lower() if unit else "µm")
    return _positive_nm(float(m.group(1)) * scale) if scale else None


def _imagej_unit_nm(tif: Any) -> tuple[dict, float | None]:
    """ImageJ metadata and nm per unit of its ``unit`` (None: no length unit)."""
    meta = tif.imagej_metadata or {}
    unit = str(meta.get("unit", "")).strip().lower().replace("\\u00b5", "µ")
    return meta, _LENGTH_UNITS_NM.get(unit)


def tiff_pixel_size(tif: Any) -> float | None:
    """Pixel size (nm) stated by an open :class:`tifffile.TiffFile`'s ImageJ or OME metadata, or
    None (no metadata, unknown unit, or anisotropic pixels). Never raises."""
    try:
        ome = _ome_length_nm(tif, "X")
        if ome is not None:
            return ome
        _, scale = _imagej_unit_nm(tif)
        if scale is None:
            return None
        tags = tif.pages[0].tags
        xr, yr = tags["XResolution"].value, tags["YResolution"].value
        px_x, px_y = xr[1] / xr[0], yr[1] / yr[0]  # unit per pixel
        if not (px_x > 0 and abs(px_x - px_y) <= 1e-6 * px_x):
            return None
        return _positive_nm(px_x * scale)
    except Exception:
        return None


def tiff_z_step(tif: Any) -> float | None:
    """Distance (nm) between the slices of a z-stack stated by an open :class:`tifffile.TiffFile`'s
    OME (``PhysicalSizeZ``) or ImageJ (``spacing``, in ``unit``) metadata, or None. Never raises."""
    try:
        ome = _ome_length_nm(tif, "Z")
        if ome is not None:
            return ome
        meta, scale = _imagej_unit_nm(tif)
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


def stated_axes(path: str | os.PathLike) -> str | None:
    """The axes an ImageJ or OME TIFF's metadata names for its data, in tifffile's letters
    (e.g. ``"TYX"``, ``"CYX"``, ``"TZYX"``; singleton axes dropped as :func:`read_image` drops
    them), or None for other files. Never raises."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if not (tif.is_imagej or tif.is_ome):
                return None
            series = tif.series[0]
            return "".join(a for a, n in zip(series.axes, series.shape) if n > 1 or a in "YX")
    except Exception:
        return None
