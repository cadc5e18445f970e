"""A super-resolved rendering of a localization table, as napari layer data on its camera image.

The table is in nm with a corner origin (x along columns, y along rows); the camera image has
``camera_px`` nm pixels. The rendering covers the camera's whole field with ``render_px`` nm
pixels: render pixel ``(i, j)``'s centre is at ``((j + 0.5) * render_px, (i + 0.5) * render_px)``
nm, i.e. at camera pixel ``(i + 0.5) * k - 0.5`` (``k = render_px / camera_px``), which fixes its
scale and translate relative to the camera layer's.
"""

from __future__ import annotations

import math

import numpy as np

from starloc.errors import InputError
from starloc.render import render_gaussian, render_z_rgb

#: the largest rendering, in pixels (a float32 RGB image of this size takes 0.6 GB)
MAX_PIXELS = 50_000_000


def render_image(table: dict, field_px: tuple[int, int], camera_px: float, render_px: float) -> np.ndarray:
    """Gaussian splats over the camera field ``(rows, cols)``: float32 ``(H, W)`` density, or
    ``(H, W, 3)`` coloured by z when the table has ``z``. σ is each localization's
    ``uncertainty`` (nm) when the table has one (as ``starloc render --method gaussian``), at
    least one render pixel; else one render pixel."""
    if not render_px > 0:
        raise InputError(f"render pixel size must be positive, got {render_px!r}")
    shape = tuple(math.ceil(n * camera_px / render_px) for n in field_px)
    if shape[0] * shape[1] > MAX_PIXELS:
        raise InputError(f"a {render_px:g} nm rendering of this field would be {shape[0]}×{shape[1]} pixels; "
                         "choose a larger render pixel")
    sigma = np.maximum(np.asarray(table["uncertainty"], dtype=float), render_px) if "uncertainty" in table \
        else render_px
    if "z" in table:
        return render_z_rgb(table["x"], table["y"], table["z"], render_px, shape=shape, sigma_nm=sigma)
    return render_gaussian(table["x"], table["y"], render_px, sigma, shape=shape)


def render_placement(scale, translate, camera_px: float, render_px: float) -> tuple[tuple, tuple]:
    """Scale and translate of the rendering's two axes from the camera layer's last two."""
    k = render_px / camera_px
    scale = tuple(float(s) for s in scale[-2:])
    translate = tuple(float(t) for t in translate[-2:])
    return (tuple(s * k for s in scale), tuple(t + s * (0.5 * k - 0.5) for s, t in zip(scale, translate)))
