"""Super-resolution rendering of localization tables (histogram, Gaussian, colour by z).

Coordinates are physical (nm): x along columns, y along rows, origin at the top-left
*corner* (see ARCHITECTURE.md). The rendered image has pixels of ``pixel_size_nm``; pixel
``(i, j)`` covers ``[x0 + j·p, x0 + (j+1)·p) × [y0 + i·p, y0 + (i+1)·p)``, so a localization at
``x = x0 + (j + 0.5)·p`` falls in column j. The field is chosen by (in this order):

- ``extent=(x_min, x_max, y_min, y_max)`` nm: ``x0, y0 = x_min, y_min`` and
  ``shape = (ceil((y_max - y_min)/p), ceil((x_max - x_min)/p))``;
- ``shape=(H, W)``: ``x0 = y0 = 0`` (e.g. a camera field: ``H = rows·camera_px / p``);
- neither: ``x0 = y0 = 0`` and the smallest shape that holds every localization.

Localizations outside the field are dropped. Images are float32 with rows = y, cols = x.

Gaussian rendering *splats* one small kernel per localization (vectorized in chunks, no
per-localization Python loop): the kernel is the Gaussian of standard deviation ``sigma_nm``
integrated over each pixel (differences of ``erf``; separable), on a window of at least
±ceil(truncate·σ/p) pixels around the localization's pixel (the window of the largest σ of its
chunk), normalized to sum 1. So every localization keeps its
exact sub-pixel position (no snapping to pixel centres, unlike histogram + ``gaussian_filter``)
and contributes exactly its weight (1 by default), minus the part falling outside the field.
``sigma_nm`` is a scalar (e.g. a fixed 10 nm) or one value per localization (e.g. the
localization precision); localizations are processed in order of σ so that each chunk's window
fits its σ.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.special import erf

__all__ = ["render_histogram", "render_gaussian", "render_z_rgb", "z_colors"]

_CHUNK_ELEMENTS = 1 << 22  # kernel values per chunk (~32 MiB as float64)
#: largest rendered field (pixels): 2^28 is a 1 GiB float32 image, 16384 px on a side
MAX_PIXELS = 1 << 28


def _positions(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.size} and {y.size}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("x and y must be finite (no NaN or inf)")
    return x, y


def _grid(
    x: np.ndarray, y: np.ndarray, pixel_size_nm: float, shape: Any, extent: Any
) -> tuple[float, float, int, int]:
    """(x0, y0, H, W) of the rendered field, at most ``MAX_PIXELS``."""
    x0, y0, h, w = _field(x, y, pixel_size_nm, shape, extent)
    if h * w > MAX_PIXELS:
        raise ValueError(f"the rendered image would be {h} x {w} px at {float(pixel_size_nm):g} nm/px, over the "
                         f"limit of {MAX_PIXELS / 1e6:.0f} Mpx: choose a larger pixel size or a smaller extent")
    return x0, y0, h, w


def _field(
    x: np.ndarray, y: np.ndarray, pixel_size_nm: float, shape: Any, extent: Any
) -> tuple[float, float, int, int]:
    if not (isinstance(pixel_size_nm, (int, float, np.number)) and math.isfinite(pixel_size_nm) and pixel_size_nm > 0):
        raise ValueError(f"pixel_size_nm must be a positive number, got {pixel_size_nm!r}")
    p = float(pixel_size_nm)
    if extent is not None:
        x_min, x_max, y_min, y_max = (float(v) for v in extent)
        if not (x_max > x_min and y_max > y_min):
            raise ValueError(f"extent must be (x_min, x_max, y_min, y_max) with max > min, got {extent}")
        # A tiny slack so that e.g. 6400 nm / 10 nm is 640 pixels, not 641 by rounding.
        h = max(1, math.ceil((y_max - y_min) / p - 1e-9))
        w = max(1, math.ceil((x_max - x_min) / p - 1e-9))
        if shape is not None and tuple(int(s) for s in shape) != (h, w):
            raise ValueError(f"shape {tuple(shape)} disagrees with extent {extent} at {p} nm/px ({h}, {w})")
        return x_min, y_min, h, w
    if shape is not None:
        h, w = (int(s) for s in shape)
        if h < 1 or w < 1:
            raise ValueError(f"shape must be (H, W) with H, W >= 1, got {shape}")
        return 0.0, 0.0, h, w
    if x.size == 0:
        raise ValueError("cannot infer the image size without localizations: pass shape or extent")
    if x.min() < 0 or y.min() < 0:
        raise ValueError("localizations at negative coordinates: pass extent to choose the field")
    return 0.0, 0.0, int(y.max() // p) + 1, int(x.max() // p) + 1


def _weights(weights: Any, n: int) -> np.ndarray:
    if weights is None:
        return np.ones((n, 1))
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim == 1:
        w = w[:, None]
    if w.ndim != 2 or w.shape[0] != n:
        raise ValueError(f"weights must have shape ({n},) or ({n}, C), got {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("weights must be finite")
    return w


def _histogram(x, y, w, p, x0, y0, h, wd) -> np.ndarray:
    """(C, H, W) float64 sums of weights per pixel."""
    col = np.floor((x - x0) / p).astype(np.int64)
    row = np.floor((y - y0) / p).astype(np.int64)
    inside = (col >= 0) & (col < wd) & (row >= 0) & (row < h)
    flat = row[inside] * wd + col[inside]
    return np.stack(
        [np.bincount(flat, weights=w[inside, c], minlength=h * wd) for c in range(w.shape[1])]
    ).reshape(w.shape[1], h, wd)


def render_histogram(
    x_nm: Any,
    y_nm: Any,
    pixel_size_nm: float,
    shape: tuple[int, int] | None = None,
    extent: tuple[float, float, float, float] | None = None,
    weights: Any = None,
) -> np.ndarray:
    """2D histogram of localizations: float32 (H, W), the count (or summed ``weights``) per pixel.

    Field and pixel convention in the module docstring; the total equals the number of
    localizations inside the field.
    """
    x, y = _positions(x_nm, y_nm)
    x0, y0, h, w = _grid(x, y, pixel_size_nm, shape, extent)
    return _histogram(x, y, _weights(weights, x.size), float(pixel_size_nm), x0, y0, h, w)[0].astype(np.float32)


def _profiles(offset: np.ndarray, sigma_px: np.ndarray, k: int) -> np.ndarray:
    """Pixel-integrated 1-D Gaussian profiles (n, 2k+1) on pixels -k..k around the home pixel.

    ``offset`` is the position relative to the home pixel's left edge, in px (in [0, 1)).
    """
    edges = np.arange(-k, k + 2, dtype=np.float64)  # pixel edges relative to the home pixel
    scaled = (edges[None, :] - offset[:, None]) / (math.sqrt(2.0) * sigma_px[:, None])
    cdf = 0.5 * erf(scaled)
    return np.diff(cdf, axis=1)


def _splat(x, y, w, sigma, p, x0, y0, h, wd, truncate) -> np.ndarray:
    """(C, H, W) float64: each localization a normalized pixel-integrated Gaussian."""
    out = np.zeros((w.shape[1], h * wd))
    unit = bool(np.all(w == 1.0))
    u, v = (x - x0) / p, (y - y0) / p  # px, corner origin
    col, row = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    sigma_px = sigma / p
    order = np.argsort(sigma_px, kind="stable")
    def half_width(i: int) -> int:
        return max(1, math.ceil(truncate * sigma_px[order[i]]))

    start = 0
    while start < order.size:
        # σ ascends along `order`: size the chunk to the memory budget for the window of its
        # largest σ, shrinking it until it fits (or is down to 256 localizations).
        n = max(256, _CHUNK_ELEMENTS // (2 * half_width(start) + 1) ** 2)
        while True:
            stop = min(order.size, start + n)
            k = half_width(stop - 1)
            if n <= 256 or (stop - start) * (2 * k + 1) ** 2 <= 2 * _CHUNK_ELEMENTS:
                break
            n = max(256, n // 2)
        idx = order[start:stop]
        start = stop
        px = _profiles(u[idx] - col[idx], sigma_px[idx], k)  # (n, 2k+1) along x
        py = _profiles(v[idx] - row[idx], sigma_px[idx], k)  # along y
        # The kernel py ⊗ px is separable: normalizing each profile normalizes the kernel.
        px /= px.sum(axis=1, keepdims=True)
        py /= py.sum(axis=1, keepdims=True)
        offs = np.arange(-k, k + 1)
        r_i, c_i = row[idx], col[idx]
        interior = (r_i >= k) & (r_i < h - k) & (c_i >= k) & (c_i < wd - k)
        # Interior windows: flat indices without any masking (the common case).
        window = (offs[:, None] * wd + offs[None, :]).ravel()
        flat = ((r_i[interior] * wd + c_i[interior])[:, None] + window[None, :]).ravel()
        # Windows that cross the border: keep the part inside the field.
        border = ~interior
        rr = r_i[border][:, None, None] + offs[None, :, None]
        cc = c_i[border][:, None, None] + offs[None, None, :]
        inside = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < wd)
        flat_b = (rr * wd + cc)[inside]
        for c in range(w.shape[1]):
            pyw = py if unit else py * w[idx, c][:, None]  # the weight rides on the y profile
            for sel, where, mask in ((interior, flat, None), (border, flat_b, inside)):
                if not where.size:
                    continue
                kern = pyw[sel][:, :, None] * px[sel][:, None, :]
                vals = kern.ravel() if mask is None else kern[mask]
                out[c] += np.bincount(where, weights=vals, minlength=h * wd)
    return out.reshape(w.shape[1], h, wd)


def _sigmas(sigma_nm: Any, n: int) -> np.ndarray:
    s = np.asarray(sigma_nm, dtype=np.float64)
    if s.ndim == 0:
        s = np.full(n, float(s))
    s = s.reshape(-1)
    if s.size != n:
        raise ValueError(f"sigma_nm must be a scalar or one value per localization ({n}), got {s.size}")
    if not (np.all(np.isfinite(s)) and np.all(s > 0)):
        raise ValueError("sigma_nm must be finite and > 0")
    return s


def render_gaussian(
    x_nm: Any,
    y_nm: Any,
    pixel_size_nm: float,
    sigma_nm: Any,
    shape: tuple[int, int] | None = None,
    extent: tuple[float, float, float, float] | None = None,
    weights: Any = None,
    truncate: float = 4.0,
) -> np.ndarray:
    """Gaussian rendering: float32 (H, W), each localization a unit-mass Gaussian of σ ``sigma_nm``.

    ``sigma_nm``: scalar or (N,) (e.g. the localization precision). Splatting of
    pixel-integrated, normalized kernels truncated at ``truncate``·σ (module docstring): the
    total equals the number of localizations (or summed ``weights``) whose kernels lie inside
    the field, and each blob's centroid is at its localization.
    """
    x, y = _positions(x_nm, y_nm)
    x0, y0, h, w = _grid(x, y, pixel_size_nm, shape, extent)
    if not truncate > 0:
        raise ValueError(f"truncate must be > 0, got {truncate}")
    s = _sigmas(sigma_nm, x.size)
    img = _splat(x, y, _weights(weights, x.size), s, float(pixel_size_nm), x0, y0, h, w, truncate)
    return img[0].astype(np.float32)


def z_colors(z: Any, z_range: tuple[float, float] | None = None) -> np.ndarray:
    """RGB colours (N, 3) in [0, 1] for depths z: hue from blue (z_min) through cyan, green and
    yellow to red (z_max), full saturation and value; z outside ``z_range`` is clipped.
    ``z_range`` defaults to (min z, max z)."""
    z = np.asarray(z, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(z)):
        raise ValueError("z must be finite")
    if z_range is None:
        z_range = (float(z.min()), float(z.max())) if z.size else (0.0, 1.0)
    lo, hi = (float(v) for v in z_range)
    if hi < lo:
        raise ValueError(f"z_range must be (z_min, z_max) with z_max >= z_min, got {z_range}")
    t = np.clip((z - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.full(z.shape, 0.5)
    hue = (2.0 / 3.0) * (1.0 - t)  # HSV hue in turns: 2/3 blue ... 0 red
    # HSV -> RGB with s = v = 1, vectorized.
    k = (np.array([5.0, 3.0, 1.0])[None, :] + 6.0 * hue[:, None]) % 6.0
    return 1.0 - np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def render_z_rgb(
    x_nm: Any,
    y_nm: Any,
    z_nm: Any,
    pixel_size_nm: float,
    z_range: tuple[float, float] | None = None,
    shape: tuple[int, int] | None = None,
    extent: tuple[float, float, float, float] | None = None,
    sigma_nm: Any = None,
    vmax: float | None = None,
    quantile: float = 0.995,
) -> np.ndarray:
    """Colour-by-depth rendering: float32 (H, W, 3) in [0, 1].

    Each localization carries the colour :func:`z_colors` gives its z. A pixel's colour is the
    density-weighted mean colour of the localizations in it (histogram, or Gaussian splats when
    ``sigma_nm`` is given, as :func:`render_gaussian`), and its brightness the density scaled
    by ``vmax`` (default: the ``quantile`` of the non-zero densities, so that a few dense
    pixels do not darken the rest) and clipped to 1.
    """
    x, y = _positions(x_nm, y_nm)
    z = np.asarray(z_nm, dtype=np.float64).reshape(-1)
    if z.size != x.size:
        raise ValueError(f"z must have one value per localization ({x.size}), got {z.size}")
    x0, y0, h, w = _grid(x, y, pixel_size_nm, shape, extent)
    p = float(pixel_size_nm)
    channels = np.column_stack([np.ones(x.size), z_colors(z, z_range)])  # density, R, G, B
    if sigma_nm is None:
        acc = _histogram(x, y, channels, p, x0, y0, h, w)
    else:
        acc = _splat(x, y, channels, _sigmas(sigma_nm, x.size), p, x0, y0, h, w, 4.0)
    density, colour = acc[0], acc[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_colour = np.where(density > 0, colour / density, 0.0)
    if vmax is None:
        positive = density[density > 0]
        vmax = float(np.quantile(positive, quantile)) if positive.size else 1.0
    if not vmax > 0:
        raise ValueError(f"vmax must be > 0, got {vmax}")
    brightness = np.clip(density / vmax, 0.0, 1.0)
    rgb = np.clip(mean_colour * brightness[None], 0.0, 1.0)
    return np.moveaxis(rgb, 0, -1).astype(np.float32)
