"""Classical SMLM baseline: detect spots, fit a pixel-integrated Gaussian to each (ThunderSTORM /
Picasso style), and, for astigmatic 3D, read z off a calibration of the spot widths.

It is the reference DeepLoco is compared against, so it aims to be a fair, decent implementation of
"Gaussian fit of detected spots", vectorized over whole stacks (no Python loop over frames or spots).

Coordinates are those of :mod:`starloc.deeploco`: nm, ``x`` along columns, ``y`` along rows, origin at
the frame's top-left *corner* (pixel ``j``'s centre at ``(j + 0.5) * pixel_size``); ``z`` in nm, 0 at
focus. Frames are in photons (e.g. :meth:`~starloc.deeploco.camera.Camera.normalize`'d camera frames).

Pipeline (:class:`GaussianFitLocalizer`):

1. :func:`detect_spots` - difference-of-Gaussians band-pass ``G(s) - G(1.6 s)`` of every frame
   (``scipy.ndimage``, the whole stack at once), ``s = detect_scale x`` the PSF's Gaussian width;
   candidates are the local maxima (3x3) above ``snr`` (5) times the frame's pixel noise after the
   filter. The noise is measured robustly per frame from neighbouring-pixel differences in the
   quietest 4x4 blocks, so the threshold does not climb with the density of spots.
2. :func:`fit_spots` - a ``roi x roi`` window around every candidate (shifted to lie inside the
   frame at the borders; never padded with invented pixels) is fitted with
   ``bg + N * PSF`` where the PSF is a pixel-integrated (erf) symmetric (``model="gaussian"``) or
   axis-aligned elliptical (``model="elliptical"``, for astigmatism) Gaussian, by a vectorized
   Levenberg-Marquardt: every spot is one row of batched numpy arrays, each spot has its own
   damping, and converged spots leave the active set. ``method="lsq"`` (default) is least squares,
   ``method="mle"`` the Poisson likelihood (Fisher scoring); on EMCCD frames simulated from real
   bead PSFs least squares was as precise or better, and faster. Diverged fits are rejected: not
   converged, ``N <= 0``, a centre more than ``max_shift`` px from the candidate pixel or outside
   the window, a width outside ``(0.5, roi / 2)`` px.
3. Duplicates (candidates that converged onto the same spot, closer than ``dedupe_px`` = 0.5 px)
   are merged (the brighter fit is kept).
4. 2D with a PSF: the offset of the fitted Gaussian's centre from the emitter at focus (a bead
   PSF's centre is the bead's axis, not necessarily the centre of its in-focus image; ~10 nm for
   the SMLM 2016 2D beads) is subtracted. 3D: ``z`` from the fitted ``(sigma_x, sigma_y)`` with an
   :class:`AstigmaticCalibration` (ThunderSTORM's astigmatism method: the z minimizing the
   distance in ``sqrt(sigma)`` space to the calibrated curves), and the calibrated lateral offset
   at that ``z`` is subtracted.
5. Optional (``neighbour_passes``, default 0): DAOSTORM-like passes for dense data - render the
   accepted fits, detect new spots in the residual, refit every spot with its neighbours' fitted
   images subtracted.

Speed: ~500-900 frames/s for 64x64 frames at 1 emitter/µm² in 2D on 2 CPU cores (detection in
float32, fits in float64, the fit split over two threads).

The table is that of :func:`starloc.deeploco.postprocess.postprocess` (``frame``, ``x``, ``y``
[, ``z``], ``confidence`` = fitted photons; sorted by frame then x) plus the fit's ``photons``,
``background`` (photons/px), ``sigma_x``, ``sigma_y`` (nm), so :func:`starloc.smlm_metrics.assess`
and :func:`starloc.deeploco.training.validation_metrics` score it directly.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from scipy.special import erf

from ..errors import InputError
from .psf import PSFModel

__all__ = [
    "detect_spots",
    "fit_spots",
    "AstigmaticCalibration",
    "GaussianFitLocalizer",
    "psf_sigma",
]

_SQRT2 = math.sqrt(2.0)
_SQRTPI = math.sqrt(math.pi)
_SQRT2PI = math.sqrt(2.0 * math.pi)

# ----------------------------------------------------------------------------- validation


def _pixel_size(value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"pixel_size must be a number of nm, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise InputError(f"pixel_size must be a positive number of nm, got {value!r}")
    return v


def _roi(value: Any) -> int:
    try:
        r = int(value)
    except (TypeError, ValueError):
        raise InputError(f"roi must be an odd integer >= 5 (pixels), got {value!r}") from None
    if r != value or r < 5 or r % 2 == 0:
        raise InputError(f"roi must be an odd integer >= 5 (pixels), got {value!r}")
    return r


def _positive(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a positive number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise InputError(f"{name} must be a positive number, got {value!r}")
    return v


def _frames(frames: Any, roi: int | None = None) -> np.ndarray:
    """``(T, H, W)`` float32 array from an array or tensor ``(T, H, W)``, ``(H, W)`` (one frame) or
    ``(T, 1, H, W)`` (the simulator's output); finite values only. (Filters run in float32, fits
    in float64 on the extracted windows.)"""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    try:
        arr = np.asarray(frames)
    except Exception as exc:  # pragma: no cover - exotic input
        raise InputError(f"frames are not an array: {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise InputError(f"frames must hold numbers, got dtype {arr.dtype}")
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    elif arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InputError(f"frames must have shape (T, H, W) (or (H, W), (T, 1, H, W)), got {arr.shape}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise InputError("frames contain NaN or inf values")
    if roi is not None and (arr.shape[1] < roi or arr.shape[2] < roi):
        raise InputError(f"frames of {arr.shape[1]}x{arr.shape[2]} px are smaller than the {roi}x{roi} fit window")
    return arr


# ----------------------------------------------------------------------------- detection


def detect_spots(
    frames: Any,
    pixel_size: float,
    sigma_px: float = 1.3,
    threshold: float | None = None,
    snr: float = 5.0,
    neighbourhood: int = 3,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate spot pixels of a stack: ``(frame_idx, row, col)`` int64 arrays (0-based).

    Each frame is band-passed with a difference of Gaussians ``G(sigma_px) - G(1.6 sigma_px)`` (a
    LoG-like band-pass: smooths the noise at the spot's scale and removes the background), all
    frames at once with ``scipy.ndimage``. Candidates are the pixels that are the maximum of their
    ``neighbourhood x neighbourhood`` window (3 or 5) and exceed the threshold: ``threshold`` in
    filtered photons when given, else ``snr`` (5) times the frame's pixel noise as it comes out of
    the filter. The pixel noise is estimated robustly per frame (see :func:`_noise_std`: differences
    of neighbouring pixels in 4x4 blocks, the quietest 10 % of blocks), so the threshold does not
    rise with the density of spots as a median absolute deviation of the filtered frame would
    (6x at 1 emitter/µm²). ``pixel_size`` (nm) is checked only: detection works in pixels.
    Frames: ``(T, H, W)`` photons (array or tensor; ``(H, W)`` = one frame).
    """
    _pixel_size(pixel_size)
    s = _positive("sigma_px", sigma_px)
    nb = int(neighbourhood)
    if nb not in (3, 5):
        raise InputError(f"neighbourhood must be 3 or 5 pixels, got {neighbourhood!r}")
    arr = _frames(frames)
    if threshold is None:
        thr = _auto_threshold(arr, s, _positive("snr", snr))
    else:
        thr = float(threshold)
        if not math.isfinite(thr):
            raise InputError(f"threshold must be a finite number, got {threshold!r}")
        thr = np.full(arr.shape[0], thr)
    return _detect(arr, s, thr, nb)


def _auto_threshold(arr: np.ndarray, sigma: float, snr: float) -> np.ndarray:
    """Per-frame threshold ``(T,)`` on the DoG-filtered frames: ``snr`` x filtered noise std."""
    thr = snr * _noise_std(arr) * _dog_gain(sigma)
    # floor: a constant frame filters to ~1e-7 rounding noise (float32), which is no spot
    return np.maximum(thr, 1e-5 * np.abs(arr).mean(axis=(1, 2)) + 1e-12)


def _detect(arr: np.ndarray, sigma: float, thr: np.ndarray, nb: int = 3) -> tuple[np.ndarray, ...]:
    if arr.shape[0] == 0:
        e = np.zeros(0, dtype=np.int64)
        return e, e.copy(), e.copy()
    filt = _dog(arr, sigma)
    t, r, c = np.nonzero(_local_maxima(filt, nb) & (filt > np.asarray(thr)[:, None, None]))
    return t.astype(np.int64), r.astype(np.int64), c.astype(np.int64)


#: width ratio of the two Gaussians of the difference-of-Gaussians filter (the classic LoG-like 1.6)
_DOG_RATIO = 1.6

#: 10 % quantile of the 4x4-block noise estimate of pure noise / its true std (Gaussian, Poisson
#: and EMCCD noise alike, measured on simulations)
_BLOCK_Q10 = 0.765


def _noise_std(arr: np.ndarray) -> np.ndarray:
    """Per-frame robust std of the pixel noise ``(T,)``, insensitive to spots even at high density.

    The variance is measured from neighbouring-pixel differences (which cancel the background) in
    non-overlapping 4x4 blocks, and the 10 % quantile of the blocks is taken (blocks without
    spots), corrected by :data:`_BLOCK_Q10`. The median absolute deviation of the whole frame,
    by contrast, is inflated several times at 1 emitter/µm² (most pixels see some spot)."""
    T, H, W = arr.shape
    if T == 0:
        return np.zeros(0)
    bs = 4
    hb, wb = (H - 1) // bs, (W - 1) // bs
    if hb * wb < 4:  # tiny frames: MAD of the differences
        d = np.diff(arr, axis=2).reshape(T, -1)
        med = np.median(d, axis=1, keepdims=True)
        return 1.4826 * np.median(np.abs(d - med), axis=1) / _SQRT2 if d.shape[1] else np.zeros(T)
    dx = np.diff(arr[:, : hb * bs, : wb * bs + 1], axis=2).reshape(T, hb, bs, wb, bs)
    dy = np.diff(arr[:, : hb * bs + 1, : wb * bs], axis=1).reshape(T, hb, bs, wb, bs)
    var = (np.square(dx).mean(axis=(2, 4)) + np.square(dy).mean(axis=(2, 4))) / 4.0
    return np.sqrt(np.quantile(var.reshape(T, -1), 0.1, axis=1)) / _BLOCK_Q10


def _dog_gain(sigma: float) -> float:
    """L2 norm of the DoG kernel: the std of white noise of unit std after :func:`_dog`."""
    n = 2 * int(math.ceil(3 * _DOG_RATIO * sigma)) + 1
    delta = np.zeros((1, n + 2, n + 2))
    delta[0, n // 2 + 1, n // 2 + 1] = 1.0
    return float(np.sqrt(np.square(_dog(delta, sigma)).sum()))


def _local_maxima(a: np.ndarray, size: int) -> np.ndarray:
    """Pixels >= every neighbour in their ``size x size`` window (frame edges: only the neighbours
    inside the frame count), by comparisons with shifted views."""
    h = size // 2
    pad = np.pad(a, ((0, 0), (h, h), (h, h)), mode="constant", constant_values=-np.inf)
    H, W = a.shape[1:]
    out = np.ones(a.shape, dtype=bool)
    for dr in range(-h, h + 1):
        for dc in range(-h, h + 1):
            if dr or dc:
                out &= a >= pad[:, h + dr : h + dr + H, h + dc : h + dc + W]
    return out


def _dog(arr: np.ndarray, sigma: float) -> np.ndarray:
    a = ndimage.gaussian_filter(arr, (0, sigma, sigma), mode="nearest", truncate=3.0)
    b = ndimage.gaussian_filter(arr, (0, _DOG_RATIO * sigma, _DOG_RATIO * sigma), mode="nearest", truncate=3.0)
    return a - b


# ----------------------------------------------------------------------------- fitting


def _profiles(c: np.ndarray, s: np.ndarray, R: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel-integrated unit Gaussian on pixels 0..R-1 (pixel k spans [k-0.5, k+0.5]) for centres
    ``c`` and widths ``s`` (px), and its derivatives with respect to ``c`` and ``s``: ``(M, R)`` each."""
    edges = (np.arange(R + 1) - 0.5)[None, :] - c[:, None]
    u = edges / (_SQRT2 * s[:, None])
    eu = erf(u)
    g = np.exp(-u * u)
    E = 0.5 * (eu[:, 1:] - eu[:, :-1])
    dc = (g[:, :-1] - g[:, 1:]) / (_SQRT2PI * s[:, None])
    ug = u * g
    ds = (ug[:, :-1] - ug[:, 1:]) / (_SQRTPI * s[:, None])
    return E, dc, ds


def _model(p: np.ndarray, R: int, elliptical: bool, jacobian: bool = True):
    """Expected photons ``(M, R*R)`` and (``jacobian=True``) the Jacobian ``(M, P, R*R)`` for
    parameters ``p`` ``(M, P)``: ``x, y, N, bg, s`` or ``x, y, N, bg, sx, sy`` (ROI pixel units,
    pixel centres at integers)."""
    M = p.shape[0]
    x, y, N, b = p[:, 0], p[:, 1], p[:, 2], p[:, 3]
    sx = p[:, 4]
    sy = p[:, 5] if elliptical else sx
    Ex, dEx, dSx = _profiles(x, sx, R)
    Ey, dEy, dSy = _profiles(y, sy, R)
    psf = Ey[:, :, None] * Ex[:, None, :]
    mu = (b[:, None, None] + N[:, None, None] * psf).reshape(M, R * R)
    if not jacobian:
        return mu
    P = 6 if elliptical else 5
    Nc = N[:, None]
    NEy, NEx = Nc * Ey, Nc * Ex
    J = np.empty((M, P, R, R))
    np.multiply(NEy[:, :, None], dEx[:, None, :], out=J[:, 0])
    np.multiply(dEy[:, :, None], NEx[:, None, :], out=J[:, 1])
    J[:, 2] = psf
    J[:, 3] = 1.0
    np.multiply(NEy[:, :, None], dSx[:, None, :], out=J[:, 4])
    if elliptical:
        np.multiply(dSy[:, :, None], NEx[:, None, :], out=J[:, 5])
    else:
        J[:, 4] += dSy[:, :, None] * NEx[:, None, :]
    return mu, J.reshape(M, P, R * R)


def _cost(mu: np.ndarray, d: np.ndarray, mle: bool) -> np.ndarray:
    if mle:
        m = np.maximum(mu, 1e-9)
        return (m - d * np.log(m)).sum(axis=1)
    r = d - mu
    return (r * r).sum(axis=1)


def _lm(
    d: np.ndarray, p: np.ndarray, R: int, elliptical: bool, mle: bool, iterations: int,
    lo: np.ndarray, hi: np.ndarray, tol: float = 1e-2,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorized Levenberg-Marquardt on ROIs ``d`` ``(M, R*R)`` from ``p`` ``(M, P)`` (updated in
    place). ``mle``: Poisson likelihood by Fisher scoring (weights ``1 / mu``), else least squares.

    Each spot has its own damping ``lambda`` (x0.1 after an accepted step, x10 after a rejected
    one) and leaves the active set once an accepted step moves the centre and widths by less than
    ``tol`` px and the photons by less than ``tol`` relative (or when ``lambda`` explodes: no
    descent left). Steps are capped (1 px for the centre, half the current width for widths, the
    photons by their scale) and parameters clamped to ``[lo, hi]``. Returns the parameters, a
    converged flag and the final cost."""
    M, P = p.shape
    if mle:
        d = np.maximum(d, 0.0)  # the Poisson likelihood needs non-negative counts
    cost = _cost(_model(p, R, elliptical, jacobian=False), d, mle)
    lam = np.full(M, 1e-3)
    converged = np.zeros(M, dtype=bool)
    active = np.arange(M)
    eye = np.eye(P)
    for _ in range(iterations):
        if active.size == 0:
            break
        pa, da = p[active], d[active]
        mua, Ja = _model(pa, R, elliptical)
        if mle:
            m = np.maximum(mua, 1e-9)
            Jw = Ja / m[:, None, :]
            grad = Jw @ (da - m)[:, :, None]  # minus the gradient of the negative log-likelihood
        else:
            Jw = Ja
            grad = Ja @ (da - mua)[:, :, None]
        H = Jw @ Ja.transpose(0, 2, 1)
        diag = np.diagonal(H, axis1=1, axis2=2)
        A = H + (lam[active, None] * diag + 1e-12 * (1.0 + diag))[:, :, None] * eye
        try:
            step = np.linalg.solve(A, grad)[:, :, 0]
        except np.linalg.LinAlgError:  # pragma: no cover - guarded by the damping above
            step = np.stack([np.linalg.lstsq(a, g[:, 0], rcond=None)[0] for a, g in zip(A, grad)])
        step[:, :2] = np.clip(step[:, :2], -1.0, 1.0)
        step[:, 2] = np.clip(step[:, 2], -0.9 * np.abs(pa[:, 2]) - 1.0, 2.0 * np.abs(pa[:, 2]) + 10.0)
        step[:, 4:] = np.clip(step[:, 4:], -0.5 * pa[:, 4:], 0.5 * pa[:, 4:])
        new = np.clip(pa + step, lo, hi)
        c_new = _cost(_model(new, R, elliptical, jacobian=False), da, mle)
        better = c_new <= cost[active]
        acc = active[better]
        p[acc], cost[acc] = new[better], c_new[better]
        lam[acc] = np.maximum(lam[acc] * 0.1, 1e-7)
        lam[active[~better]] *= 10.0
        moved = np.abs(new - pa)
        small = (moved[:, :2].max(axis=1) < tol) & (moved[:, 4:].max(axis=1) < tol) & (
            moved[:, 2] < tol * np.abs(pa[:, 2]) + 1e-3
        )
        done = (better & small) | (lam[active] > 1e8)
        converged[active[done]] = True
        active = active[~done]
    return p, converged, cost


def fit_spots(
    frames: Any,
    frame_idx: Any,
    row: Any,
    col: Any,
    roi: int = 7,
    model: str = "gaussian",
    pixel_size: float = 100.0,
    sigma_px: float = 1.3,
    method: str = "lsq",
    iterations: int = 30,
    max_shift: float = 1.0,
    sigma_range: tuple[float, float] | None = None,
    chunk: int = 8192,
    threads: int = 2,
) -> dict[str, np.ndarray]:
    """Fit every candidate ``(frame_idx, row, col)`` (pixels) of ``frames`` ``(T, H, W)`` photons
    with a pixel-integrated Gaussian + constant background in a ``roi x roi`` window, all at once.

    ``model``: ``"gaussian"`` (one width) or ``"elliptical"`` (``sigma_x``, ``sigma_y``, for
    astigmatism). ``method``: ``"lsq"`` (least squares) or ``"mle"`` (Poisson likelihood, Fisher
    scoring). ``pixel_size``: nm per pixel, for the output. ``sigma_px`` starts the widths;
    ``iterations`` caps the Levenberg-Marquardt steps (a spot stops when an accepted step moves
    its centre and widths by less than 0.01 px). The window is centred on the candidate, shifted
    inside the frame at the borders. Starting values: background = median of the window's border,
    centre = the candidate pixel moved by the centroid of its 3x3 neighbourhood, photons from the
    peak height. Spots are processed ``chunk`` at a time (memory), on ``threads`` threads.

    Returns a dict of arrays, one entry per candidate (same order): ``frame`` (int64), ``x``, ``y``
    (nm, corner origin, see the module docstring), ``photons``, ``bg`` (photons/px), ``sx``, ``sy``
    (nm; equal for ``"gaussian"``), ``converged`` (bool) and ``valid`` (bool: converged and sane -
    ``photons > 0``, centre within ``max_shift`` px of the candidate pixel's centre and inside the
    window, widths inside ``sigma_range`` px, default ``(0.5, roi / 2)``).
    """
    R = _roi(roi)
    ps = _pixel_size(pixel_size)
    if model not in ("gaussian", "elliptical"):
        raise InputError(f"model must be 'gaussian' or 'elliptical', got {model!r}")
    if method not in ("mle", "lsq"):
        raise InputError(f"method must be 'mle' or 'lsq', got {method!r}")
    s0 = _positive("sigma_px", sigma_px)
    shift = _positive("max_shift", max_shift)
    smin, smax = (0.5, R / 2.0) if sigma_range is None else (float(v) for v in sigma_range)
    if not (0 < smin < smax):
        raise InputError(f"sigma_range must be (low, high) px with 0 < low < high, got {sigma_range!r}")
    arr = _frames(frames, R)
    T, H, W = arr.shape
    f = np.asarray(frame_idx, dtype=np.int64).reshape(-1)
    r = np.asarray(row, dtype=np.int64).reshape(-1)
    c = np.asarray(col, dtype=np.int64).reshape(-1)
    if not (len(f) == len(r) == len(c)):
        raise InputError(f"frame_idx, row, col have different lengths {len(f)}, {len(r)}, {len(c)}")
    if len(f) and ((f < 0).any() or (f >= T).any() or (r < 0).any() or (r >= H).any() or (c < 0).any()
                   or (c >= W).any()):
        raise InputError("candidate indices lie outside the frames")
    fit, _ = _fit(arr, f, r, c, R, model == "elliptical", ps, s0, method == "mle", int(iterations), shift,
                  smin, smax, threads=threads, chunk=chunk)
    return fit


def _fit(
    arr: np.ndarray, f: np.ndarray, r: np.ndarray, c: np.ndarray, R: int, elliptical: bool, ps: float,
    s0: float, mle: bool, iterations: int, shift: float, smin: float, smax: float,
    p0: np.ndarray | None = None, model_img: np.ndarray | None = None, in_model: np.ndarray | None = None,
    half: int = 0, threads: int = 2, chunk: int = 8192,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Core of :func:`fit_spots` on validated input. ``p0`` ``(M, P)``: starting parameters in frame
    pixel coordinates (column, row, N, bg, widths) instead of the automatic ones. ``model_img``
    ``(T, H, W)``: expected photons of the other spots (see :func:`_render`), subtracted from every
    window; for spots with ``in_model`` their own rendered contribution (same ``half`` window) is
    taken out of it first. Returns the result dict and the parameters in frame pixel coordinates."""
    T, H, W = arr.shape
    P = 6 if elliptical else 5
    M = len(f)
    if M == 0:
        empty = np.zeros(0)
        fit = {"frame": f, "x": empty, "y": empty.copy(), "photons": empty.copy(), "bg": empty.copy(),
               "sx": empty.copy(), "sy": empty.copy(), "converged": np.zeros(0, dtype=bool),
               "valid": np.zeros(0, dtype=bool)}
        return fit, np.zeros((0, P))
    out = np.zeros((M, P))
    conv = np.zeros(M, dtype=bool)
    h = R // 2
    r0 = np.clip(r - h, 0, H - R)
    c0 = np.clip(c - h, 0, W - R)
    k = np.arange(R)
    lo = np.array([-0.5, -0.5, 1e-6, 0.0] + [0.3] * (P - 4))
    hi = np.array([R - 0.5, R - 0.5, np.inf, np.inf] + [float(R)] * (P - 4))

    def work(sl: slice) -> None:
        idx = (f[sl, None, None], r0[sl, None, None] + k[None, :, None], c0[sl, None, None] + k[None, None, :])
        rois = arr[idx].astype(np.float64)
        if model_img is not None:
            others = model_img[idx].astype(np.float64)
            own = in_model[sl] if in_model is not None else np.zeros(len(rois), dtype=bool)
            if own.any():
                q = p0[sl][own]
                others[own] -= _own(q, r0[sl][own], c0[sl][own], R, half, elliptical)
            rois = rois - others
        start = _initial(rois, r[sl] - r0[sl], c[sl] - c0[sl], s0, P)
        if p0 is not None:  # given starting points (rows of NaN: automatic)
            given = p0[sl].copy()
            given[:, 0] -= c0[sl]
            given[:, 1] -= r0[sl]
            ok = np.isfinite(given).all(axis=1)
            start[ok] = np.clip(given[ok], lo, hi)
        p, cv, _ = _lm(rois.reshape(len(start), R * R), start, R, elliptical, mle, iterations, lo, hi)
        out[sl], conv[sl] = p, cv

    # chunks bound the memory; two threads (numpy releases the GIL in its array loops)
    n_chunks = max(1, -(-M // max(1, int(chunk))))
    if M >= 2048:
        n_chunks = max(n_chunks, 2)
    bounds = np.linspace(0, M, n_chunks + 1).astype(int)
    slices = [slice(bounds[i], bounds[i + 1]) for i in range(n_chunks)]
    if len(slices) > 1 and threads > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(int(threads), len(slices))) as pool:
            list(pool.map(work, slices))
    else:
        for sl in slices:
            work(sl)
    xr, yr = out[:, 0], out[:, 1]
    sx = out[:, 4]
    sy = out[:, 5] if elliptical else sx
    cr, cc = r - r0, c - c0
    valid = (
        conv
        & (out[:, 2] > 1e-3)
        & (np.abs(xr - cc) <= shift) & (np.abs(yr - cr) <= shift)
        & (xr > -0.5) & (xr < R - 0.5) & (yr > -0.5) & (yr < R - 0.5)
        & (sx >= smin) & (sx <= smax) & (sy >= smin) & (sy <= smax)
        & np.isfinite(out).all(axis=1)
    )
    frame_p = out.copy()
    frame_p[:, 0] += c0
    frame_p[:, 1] += r0
    fit = {
        "frame": f,
        "x": (frame_p[:, 0] + 0.5) * ps,
        "y": (frame_p[:, 1] + 0.5) * ps,
        "photons": out[:, 2].copy(),
        "bg": out[:, 3].copy(),
        "sx": sx * ps,
        "sy": sy * ps,
        "converged": conv,
        "valid": valid,
    }
    return fit, frame_p


def _windows(centre: np.ndarray, start: np.ndarray, n: int, s: np.ndarray, half: int) -> np.ndarray:
    """Pixel-integrated profiles ``(M, n)`` on pixels ``start .. start+n-1`` of spots centred at
    ``centre`` (pixel-centre coordinates), zero beyond ``half`` pixels from ``round(centre)``."""
    E = _profiles(centre - start, s, n)[0]
    pix = start[:, None] + np.arange(n)[None, :]
    return np.where(np.abs(pix - np.round(centre)[:, None]) <= half, E, 0.0)


def _own(q: np.ndarray, r0: np.ndarray, c0: np.ndarray, R: int, half: int, elliptical: bool) -> np.ndarray:
    """The contribution ``(M, R, R)`` of spots ``q`` (frame pixel coordinates) to their own windows at
    ``r0, c0``, exactly as :func:`_render` put it in the model image."""
    sx = q[:, 4]
    sy = q[:, 5] if elliptical else sx
    Ex = _windows(q[:, 0], c0, R, sx, half)
    Ey = _windows(q[:, 1], r0, R, sy, half)
    return q[:, 2, None, None] * Ey[:, :, None] * Ex[:, None, :]


def _render(shape: tuple[int, int, int], f: np.ndarray, q: np.ndarray, half: int, elliptical: bool) -> np.ndarray:
    """Expected photons ``(T, H, W)`` of spots ``q`` (frame pixel coordinates, no background), each
    drawn in a ``(2 half + 1)^2`` window around its nearest pixel."""
    T, H, W = shape
    n = 2 * half + 1
    img = np.zeros(T * H * W)
    if len(f) == 0:
        return img.reshape(shape)
    sx = q[:, 4]
    sy = q[:, 5] if elliptical else sx
    rs = np.round(q[:, 1]).astype(np.int64) - half
    cs = np.round(q[:, 0]).astype(np.int64) - half
    Ex = _windows(q[:, 0], cs.astype(np.float64), n, sx, half)
    Ey = _windows(q[:, 1], rs.astype(np.float64), n, sy, half)
    vals = q[:, 2, None, None] * Ey[:, :, None] * Ex[:, None, :]
    rows = rs[:, None, None] + np.arange(n)[None, :, None]
    cols = cs[:, None, None] + np.arange(n)[None, None, :]
    inside = (rows >= 0) & (rows < H) & (cols >= 0) & (cols < W)
    flat = (f[:, None, None] * H + rows) * W + cols
    img += np.bincount(flat[inside], weights=vals[inside], minlength=T * H * W)
    return img.reshape(shape)


def _initial(rois: np.ndarray, cr: np.ndarray, cc: np.ndarray, s0: float, P: int) -> np.ndarray:
    """Starting parameters: background = median of the window's border, photons from the peak
    height, centre = the candidate pixel moved by the centroid of its 3x3 neighbourhood."""
    M, R, _ = rois.shape
    border = np.concatenate([rois[:, 0, :], rois[:, -1, :], rois[:, 1:-1, 0], rois[:, 1:-1, -1]], axis=1)
    b = np.median(border, axis=1)
    idx = np.arange(M)
    rr = np.clip(cr[:, None] + np.arange(-1, 2)[None, :], 0, R - 1)  # (M, 3)
    cols = np.clip(cc[:, None] + np.arange(-1, 2)[None, :], 0, R - 1)
    nb = rois[idx[:, None, None], rr[:, :, None], cols[:, None, :]] - b[:, None, None]
    nb = np.maximum(nb, 0.0)
    mass = nb.sum(axis=(1, 2)) + 1e-12
    off = np.arange(-1, 2, dtype=np.float64)
    dy = np.clip((nb.sum(axis=2) * off).sum(axis=1) / mass, -0.5, 0.5)
    dx = np.clip((nb.sum(axis=1) * off).sum(axis=1) / mass, -0.5, 0.5)
    peak = np.maximum(rois[idx, cr, cc] - b, 1e-3)
    p = np.empty((M, P))
    p[:, 0] = cc + dx
    p[:, 1] = cr + dy
    p[:, 2] = peak * 2 * math.pi * s0 * s0
    p[:, 3] = b
    p[:, 4:] = s0
    return p


# ----------------------------------------------------------------------------- PSF helpers


def _render_spots(psf: PSFModel, z: np.ndarray, off: np.ndarray, R: int, pixel_size: float,
                  photons: float, background: float) -> np.ndarray:
    """Noiseless ``R x R`` frames of one emitter each at ``z`` nm, ``off`` ``(M, 2)`` (dx, dy) px
    from the centre pixel's centre, on a uniform background."""
    h = R // 2
    x = torch.as_tensor((h + 0.5 + off[:, 0]) * pixel_size, dtype=torch.float64)[:, None]
    y = torch.as_tensor((h + 0.5 + off[:, 1]) * pixel_size, dtype=torch.float64)[:, None]
    zz = torch.as_tensor(z, dtype=torch.float64)[:, None]
    ph = torch.full_like(x, float(photons))
    with torch.no_grad():
        img = psf.render(x.float(), y.float(), zz.float(), ph.float(), (R, R), pixel_size)
    return img.double().numpy() + background


def psf_sigma(psf: PSFModel, pixel_size: float, z: float = 0.0, roi: int = 11) -> float:
    """Width (px) of the symmetric Gaussian fitted to the noiseless spot of ``psf`` at ``z`` nm (the
    detection filter's width); for a :class:`~starloc.deeploco.psf.Gaussian2DPSF` its sigma."""
    return _psf_gaussian(psf, pixel_size, z, roi)[0]


def _psf_gaussian(psf: PSFModel, pixel_size: float, z: float = 0.0, roi: int = 11,
                  method: str = "lsq") -> tuple[float, float, float]:
    """``(sigma_px, dx_nm, dy_nm)``: the symmetric Gaussian fitted (``roi`` window, ``method``) to
    noiseless spots of ``psf`` at ``z`` nm and 9 sub-pixel positions: median width and mean offset of
    the fitted centre from the emitter (an empirical PSF's centre is the bead's axis, which need not
    be the centre of its in-focus image)."""
    ps = _pixel_size(pixel_size)
    if not isinstance(psf, PSFModel):
        raise InputError(f"psf must be a PSFModel, got {type(psf).__name__}")
    R = _roi(roi)
    g = np.array([-1 / 3, 0.0, 1 / 3])
    off = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    n = len(off)
    img = _render_spots(psf, np.full(n, float(z)), off, R, ps, 1e4, 100.0)
    h = R // 2
    fit = fit_spots(img, np.arange(n), np.full(n, h), np.full(n, h), roi=R, pixel_size=ps,
                    sigma_px=1.3, method=method, sigma_range=(0.05, float(R)), max_shift=1.5)
    if not fit["valid"].any():
        raise InputError(f"could not fit a Gaussian to the PSF's spot at z = {z:g} nm: the Gaussian-fit "
                         "baseline needs a Gaussian-like (2D) or astigmatic PSF")
    v = fit["valid"]
    dx = float(np.mean(fit["x"][v] - (h + 0.5 + off[v, 0]) * ps))
    dy = float(np.mean(fit["y"][v] - (h + 0.5 + off[v, 1]) * ps))
    return float(np.median(fit["sx"][v]) / ps), dx, dy


# ----------------------------------------------------------------------------- astigmatic 3D


class AstigmaticCalibration:
    """Calibrated widths ``sigma_x(z)``, ``sigma_y(z)`` and lateral offsets ``dx(z)``, ``dy(z)`` (nm)
    of the elliptical Gaussian fitted to a PSF, tabulated on a 1 nm grid ``z`` (nm).

    Build it with :meth:`from_psf`; :meth:`z_from_sigmas` inverts it. ``roi``, ``method`` and
    ``sigma_px`` record the fit settings used (the localizer uses the same, so that the window's
    truncation biases cancel). ``dx``, ``dy`` are ``fitted centre - emitter`` (subtract them).
    """

    def __init__(self, z: Any, sx: Any, sy: Any, dx: Any = None, dy: Any = None, roi: int = 11,
                 method: str = "lsq", pixel_size: float = 100.0):
        self.z = np.asarray(z, dtype=np.float64).reshape(-1)
        n = len(self.z)
        self.sx = np.asarray(sx, dtype=np.float64).reshape(-1)
        self.sy = np.asarray(sy, dtype=np.float64).reshape(-1)
        self.dx = np.zeros(n) if dx is None else np.asarray(dx, dtype=np.float64).reshape(-1)
        self.dy = np.zeros(n) if dy is None else np.asarray(dy, dtype=np.float64).reshape(-1)
        if n < 3 or any(len(a) != n for a in (self.sx, self.sy, self.dx, self.dy)):
            raise InputError("calibration curves must be 1D arrays of the same length (>= 3)")
        if not all(np.isfinite(a).all() for a in (self.z, self.sx, self.sy, self.dx, self.dy)):
            raise InputError("calibration curves contain NaN or inf")
        if (np.diff(self.z) <= 0).any() or (self.sx <= 0).any() or (self.sy <= 0).any():
            raise InputError("calibration z must increase and widths must be positive")
        self.roi = _roi(roi)
        if method not in ("mle", "lsq"):
            raise InputError(f"method must be 'mle' or 'lsq', got {method!r}")
        self.method = method
        self.pixel_size = _pixel_size(pixel_size)
        self._qx, self._qy = np.sqrt(self.sx), np.sqrt(self.sy)
        self._coarse = np.unique(np.r_[np.arange(0, n, 10), n - 1])

    @property
    def z_range(self) -> tuple[float, float]:
        return float(self.z[0]), float(self.z[-1])

    @property
    def sigma_px(self) -> float:
        """Geometric mean width at the focus (px; at the z where ``sigma_x = sigma_y`` when the
        curves cross, else at the smallest mean width): the detection filter's width."""
        gm = np.sqrt(self.sx * self.sy)
        diff = np.abs(self.sx - self.sy)
        i = int(np.argmin(diff)) if diff.min() < 0.05 * gm.min() else int(np.argmin(gm))
        return float(gm[i] / self.pixel_size)

    @classmethod
    def from_psf(
        cls,
        psf: PSFModel,
        pixel_size: float,
        z_grid: Any = None,
        roi: int = 11,
        method: str = "lsq",
        photons: float = 1e4,
        background: float = 100.0,
    ) -> AstigmaticCalibration:
        """Render noiseless spots of ``psf`` at every ``z_grid`` nm (default: 151 values over
        ``psf.z_range``) and 9 sub-pixel positions (a 3x3 grid of +-1/3 px), fit each with the
        elliptical model (window ``roi``, ``method``), and smooth the per-z medians of the fitted
        widths and the means of the centre offsets with a smoothing spline (GCV,
        ``scipy.interpolate.make_smoothing_spline``) evaluated on a 1 nm grid. z values whose fits
        failed (for most positions) are left out, among them those where a width exceeds
        ``roi / 2`` (the localizer rejects such fits too): the calibrated range shrinks to the
        successful ones. ``photons`` and ``background`` set the rendered spots (noiseless; only
        the weights of ``method="mle"`` depend on them)."""
        from scipy.interpolate import make_smoothing_spline

        if not isinstance(psf, PSFModel):
            raise InputError(f"psf must be a PSFModel, got {type(psf).__name__}")
        ps = _pixel_size(pixel_size)
        R = _roi(roi)
        if z_grid is None:
            lo, hi = psf.z_range
            if not hi > lo:
                raise InputError(f"the PSF has no z range to calibrate ({psf!r}); pass z_grid")
            z_grid = np.linspace(lo, hi, 151)
        zg = np.unique(np.asarray(z_grid, dtype=np.float64).reshape(-1))
        if len(zg) < 5 or not np.isfinite(zg).all():
            raise InputError("z_grid must hold at least 5 distinct finite z values (nm)")
        g = np.array([-1 / 3, 0.0, 1 / 3])
        off = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
        n_off = len(off)
        zz = np.repeat(zg, n_off)
        oo = np.tile(off, (len(zg), 1))
        img = _render_spots(psf, zz, oo, R, ps, photons, background)
        h = R // 2
        n = len(zz)
        s0 = psf_sigma(psf, ps, z=float(np.clip(0.0, zg[0], zg[-1])), roi=R)
        fit = fit_spots(img, np.arange(n), np.full(n, h), np.full(n, h), roi=R, model="elliptical",
                        pixel_size=ps, sigma_px=s0, method=method, iterations=100,
                        sigma_range=(0.3, R / 2.0), max_shift=1.5)
        ok = fit["valid"].reshape(len(zg), n_off)
        good = ok.mean(axis=1) >= 0.5
        if good.sum() < 5:
            raise InputError("astigmatic calibration failed: too few z values gave a valid fit")
        zk = zg[good]
        okg = ok[good]

        def per_z(values: np.ndarray, agg) -> np.ndarray:
            v = values.reshape(len(zg), n_off)[good]
            v = np.where(okg, v, np.nan)
            return agg(v, axis=1)

        sx = per_z(fit["sx"], np.nanmedian)
        sy = per_z(fit["sy"], np.nanmedian)
        dx = per_z(fit["x"] - (h + 0.5 + oo[:, 0]) * ps, np.nanmean)
        dy = per_z(fit["y"] - (h + 0.5 + oo[:, 1]) * ps, np.nanmean)
        zf = np.arange(zk[0], zk[-1] + 0.5, 1.0)
        zf = zf[zf <= zk[-1] + 1e-9]
        curves = []
        for v in (sx, sy, dx, dy):
            spline = make_smoothing_spline(zk, v)
            curves.append(spline(zf))
        sxf, syf = (np.maximum(cv, 1e-3 * ps) for cv in curves[:2])
        return cls(zf, sxf, syf, curves[2], curves[3], roi=R, method=method, pixel_size=ps)

    def z_from_sigmas(self, sx: Any, sy: Any, return_distance: bool = False):
        """z (nm) of spots with fitted widths ``sx``, ``sy`` (nm): the calibrated z minimizing
        ``(sqrt(sx) - sqrt(sx(z)))^2 + (sqrt(sy) - sqrt(sy(z)))^2`` (coarse 10 nm search, then the
        1 nm grid within +-10 nm). ``return_distance`` adds the minimal distance ``sqrt(...)``
        (in sqrt(nm)), a goodness of the match."""
        qx = np.sqrt(np.maximum(np.asarray(sx, dtype=np.float64).reshape(-1), 0.0))
        qy = np.sqrt(np.maximum(np.asarray(sy, dtype=np.float64).reshape(-1), 0.0))
        if len(qx) != len(qy):
            raise InputError(f"sx and sy have different lengths {len(qx)}, {len(qy)}")
        n = len(self.z)
        z = np.empty(len(qx))
        dist = np.empty(len(qx))
        for a in range(0, len(qx), 16384):
            bx, by = qx[a : a + 16384, None], qy[a : a + 16384, None]
            cg = self._coarse
            dc = (bx - self._qx[cg]) ** 2 + (by - self._qy[cg]) ** 2
            centre = cg[np.argmin(dc, axis=1)]
            win = np.clip(centre[:, None] + np.arange(-10, 11)[None, :], 0, n - 1)
            df = (bx - self._qx[win]) ** 2 + (by - self._qy[win]) ** 2
            j = np.argmin(df, axis=1)
            best = win[np.arange(len(win)), j]
            z[a : a + 16384] = self.z[best]
            dist[a : a + 16384] = np.sqrt(df[np.arange(len(win)), j])
        return (z, dist) if return_distance else z

    def lateral_offset(self, z: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(dx, dy)`` nm: the fitted centre minus the emitter position at ``z`` nm."""
        zz = np.asarray(z, dtype=np.float64)
        return np.interp(zz, self.z, self.dx), np.interp(zz, self.z, self.dy)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "astigmatic_calibration", "z": self.z.copy(), "sx": self.sx.copy(),
                "sy": self.sy.copy(), "dx": self.dx.copy(), "dy": self.dy.copy(), "roi": self.roi,
                "method": self.method, "pixel_size": self.pixel_size}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AstigmaticCalibration:
        return cls(d["z"], d["sx"], d["sy"], d.get("dx"), d.get("dy"), roi=d.get("roi", 11),
                   method=d.get("method", "lsq"), pixel_size=d.get("pixel_size", 100.0))

    def __repr__(self) -> str:
        return (f"AstigmaticCalibration(z {self.z[0]:g}..{self.z[-1]:g} nm, roi {self.roi}, "
                f"sigma_x {self.sx.min():.0f}..{self.sx.max():.0f} nm, "
                f"sigma_y {self.sy.min():.0f}..{self.sy.max():.0f} nm)")


# ----------------------------------------------------------------------------- localizer


def _dedupe(frame: np.ndarray, x: np.ndarray, y: np.ndarray, score: np.ndarray, radius: float) -> np.ndarray:
    """Indices to keep: among fits of the same frame closer than ``radius`` (nm), the highest score."""
    from scipy.spatial import cKDTree

    n = len(frame)
    if n < 2:
        return np.arange(n)
    spacing = 10.0 * radius + 1.0
    pts = np.column_stack([x, y, frame * spacing])
    pairs = cKDTree(pts).query_pairs(radius, output_type="ndarray")
    if len(pairs) == 0:
        return np.arange(n)
    keep = np.ones(n, dtype=bool)
    # drop the weaker of every close pair, strongest pairs first (greedy, as non-maximum suppression)
    order = np.argsort(-np.maximum(score[pairs[:, 0]], score[pairs[:, 1]]), kind="stable")
    for i, j in pairs[order]:
        if keep[i] and keep[j]:
            keep[j if score[i] >= score[j] else i] = False
    return np.flatnonzero(keep)


class GaussianFitLocalizer:
    """Classical localizer: DoG detection + vectorized Gaussian fit (+ astigmatic z); see the module
    docstring for the pipeline.

    Parameters
    ----------
    pixel_size : nm per pixel.
    psf : optional PSF model. Sets the fit's starting width and the detection filter (from the
        Gaussian fitted to its in-focus spot, :func:`psf_sigma`), and, when it is z-dependent and no
        ``calibration`` is given, the astigmatic calibration (:meth:`AstigmaticCalibration.from_psf`)
        - used when the PSF turns out astigmatic (or ``three_d=True``).
    calibration : :class:`AstigmaticCalibration` -> 3D (a ``z`` column). Without one, 2D.
    roi : fit window (odd >= 5 px); default in 2D ``max(5, 2 round(1.5 sigma_px) + 1)`` (5 for an
        in-focus PSF of 1-1.6 px: at 1-2 emitters/µm² a 7 px window holds too many neighbours),
        in 3D the calibration's window (11 by default; the fits must match the calibration's).
    threshold : absolute detection threshold (DoG-filtered photons); ``None`` (default) = ``snr``
        x each frame's filtered noise (see :func:`detect_spots`).
    snr : see ``threshold`` (default 5).
    sigma_px : the PSF's Gaussian width (px): the fit's starting width; default from the
        calibration (at focus) or the PSF, else 1.3.
    detect_scale : the detection filter's width is ``detect_scale * sigma_px``; default 0.7 in 2D
        (a sharper filter separates close spots) and 1.0 in 3D (defocused spots are wide and dim).
    method : ``"lsq"`` (default) or ``"mle"`` (see :func:`fit_spots`); in 3D use the calibration's.
    three_d : ``None`` (3D with a calibration, or a z-dependent astigmatic PSF), ``True``, ``False``.
    max_shift : largest distance (px, per axis) of the fitted centre from the candidate pixel;
        default 1 in 2D, 1.5 in 3D (elongated spots).
    min_photons : fits with fewer photons are dropped (default 0: any positive).
    max_z_distance : in 3D, drop spots whose widths lie farther than this from the calibrated curves
        (sqrt(nm) units of :meth:`AstigmaticCalibration.z_from_sigmas`); ``None`` keeps all.
    dedupe_px : fits of the same frame closer than this (px) are one spot (the brightest is kept).
    neighbourhood : local-maximum window of the detection, 3 (default) or 5 px.
    neighbour_passes : 0 (default) = plain single-emitter fitting as in ThunderSTORM/Picasso.
        ``n > 0`` adds ``n`` passes of a DAOSTORM-like refinement for dense data: render all
        accepted fits, look for new spots in the residual frames, and refit every spot with the
        other spots' fitted images subtracted from its window.
    chunk : frames per batch (memory only).
    """

    def __init__(
        self,
        pixel_size: float,
        psf: PSFModel | None = None,
        calibration: AstigmaticCalibration | None = None,
        roi: int | None = None,
        threshold: float | None = None,
        snr: float = 5.0,
        sigma_px: float | None = None,
        detect_scale: float | None = None,
        method: str = "lsq",
        three_d: bool | None = None,
        max_shift: float | None = None,
        min_photons: float = 0.0,
        max_z_distance: float | None = None,
        dedupe_px: float = 0.5,
        neighbour_passes: int = 0,
        neighbourhood: int = 3,
        chunk: int = 1024,
    ):
        self.pixel_size = _pixel_size(pixel_size)
        if psf is not None and not isinstance(psf, PSFModel):
            raise InputError(f"psf must be a PSFModel, got {type(psf).__name__}")
        if calibration is not None and not isinstance(calibration, AstigmaticCalibration):
            raise InputError(f"calibration must be an AstigmaticCalibration, got {type(calibration).__name__}")
        if method not in ("mle", "lsq"):
            raise InputError(f"method must be 'mle' or 'lsq', got {method!r}")
        if roi is not None:
            roi = _roi(roi)
        if calibration is not None and abs(calibration.pixel_size - self.pixel_size) > 1e-6 * self.pixel_size:
            raise InputError(f"calibration made at {calibration.pixel_size:g} nm/px, localizer at "
                             f"{self.pixel_size:g} nm/px")
        if calibration is None and psf is not None and psf.z_dependent and three_d is not False:
            cal = AstigmaticCalibration.from_psf(psf, self.pixel_size, roi=11 if roi is None else roi,
                                                 method=method)
            if three_d or _is_astigmatic(cal):
                calibration = cal
            # else: a z-dependent but symmetric PSF (plain 2D, defocus) cannot give z -> 2D
        if three_d and calibration is None:
            raise InputError("3D localization needs an astigmatic calibration or a z-dependent PSF")
        if three_d is False:
            calibration = None
        self.calibration = calibration
        self.three_d = calibration is not None
        if sigma_px is not None:
            self.sigma_px = _positive("sigma_px", sigma_px)
        elif calibration is not None:
            self.sigma_px = calibration.sigma_px
        elif psf is not None:
            self.sigma_px = psf_sigma(psf, self.pixel_size, z=self._focus(psf))
        else:
            self.sigma_px = 1.3
        if roi is None:
            roi = calibration.roi if calibration is not None else max(5, 2 * int(round(1.5 * self.sigma_px)) + 1)
        self.roi = roi
        #: 2D with a PSF: offset (nm) of the fitted Gaussian centre from the emitter at focus, subtracted
        self.offset = (0.0, 0.0)
        if not self.three_d and psf is not None:
            _, dx, dy = _psf_gaussian(psf, self.pixel_size, self._focus(psf), roi, method)
            self.offset = (dx, dy)
        if detect_scale is None:
            detect_scale = 1.0 if self.three_d else 0.7
        self.detect_sigma_px = _positive("detect_scale", detect_scale) * self.sigma_px
        if threshold is not None and not math.isfinite(float(threshold)):
            raise InputError(f"threshold must be a finite number, got {threshold!r}")
        self.threshold = None if threshold is None else float(threshold)
        self.snr = _positive("snr", snr)
        self.method = method
        self.max_shift = (1.5 if self.three_d else 1.0) if max_shift is None else _positive("max_shift", max_shift)
        self.min_photons = float(min_photons)
        self.max_z_distance = None if max_z_distance is None else _positive("max_z_distance", max_z_distance)
        self.dedupe_px = float(dedupe_px)
        if neighbourhood not in (3, 5):
            raise InputError(f"neighbourhood must be 3 or 5 pixels, got {neighbourhood!r}")
        self.neighbourhood = int(neighbourhood)
        self.neighbour_passes = int(neighbour_passes)
        if self.neighbour_passes < 0:
            raise InputError(f"neighbour_passes must be >= 0, got {neighbour_passes!r}")
        self.chunk = max(1, int(chunk))
        if self.three_d:
            smax = float(max(calibration.sx.max(), calibration.sy.max())) / self.pixel_size
        else:
            smax = 2.0 * self.sigma_px
        #: half width (px) of the window in which fitted spots are rendered for neighbour passes
        self.render_half = int(min(15, max(3, math.ceil(4.0 * smax))))

    @staticmethod
    def _focus(psf: PSFModel) -> float:
        lo, hi = psf.z_range
        return float(min(max(0.0, lo), hi))

    def columns(self) -> tuple[str, ...]:
        pos = ("x", "y", "z") if self.three_d else ("x", "y")
        return ("frame", *pos, "confidence", "photons", "background", "sigma_x", "sigma_y")

    def _empty(self) -> dict[str, np.ndarray]:
        return {k: np.zeros(0, dtype=np.int64 if k == "frame" else np.float64) for k in self.columns()}

    def localize(self, frames: Any, frame_offset: int = 0) -> dict[str, np.ndarray]:
        """Localization table of a ``(T, H, W)`` photon stack (array or tensor; ``(H, W)`` or
        ``(T, 1, H, W)`` accepted): dict of numpy arrays ``frame`` (int64, 0-based +
        ``frame_offset``), ``x``, ``y`` [, ``z``] (nm), ``confidence`` (= fitted photons),
        ``photons``, ``background`` (photons/px), ``sigma_x``, ``sigma_y`` (nm); sorted by frame
        then x."""
        arr = _frames(frames, self.roi)
        parts = [self._empty()]
        for a in range(0, arr.shape[0], self.chunk):
            t = self._localize_chunk(arr[a : a + self.chunk])
            t["frame"] = t["frame"] + a
            parts.append(t)
        table = {k: np.concatenate([p[k] for p in parts]) for k in self.columns()}
        order = np.lexsort((table["x"], table["frame"]))
        table = {k: v[order] for k, v in table.items()}
        table["frame"] = table["frame"] + int(frame_offset)
        return table

    def _fit(self, arr, f, r, c, **kw):
        R = self.roi
        return _fit(arr, f, r, c, R, self.three_d, self.pixel_size, self.sigma_px, self.method == "mle", 30,
                    self.max_shift, 0.5, R / 2.0, **kw)

    def _accept(self, fit: dict[str, np.ndarray]) -> np.ndarray:
        """Indices of the valid, bright enough fits, duplicates merged."""
        keep = np.flatnonzero(fit["valid"] & (fit["photons"] > self.min_photons))
        if self.dedupe_px > 0 and len(keep):
            sub = _dedupe(fit["frame"][keep], fit["x"][keep], fit["y"][keep], fit["photons"][keep],
                          self.dedupe_px * self.pixel_size)
            keep = keep[sub]
        return keep

    def _localize_chunk(self, arr: np.ndarray) -> dict[str, np.ndarray]:
        T, H, W = arr.shape
        if self.threshold is None:
            thr = _auto_threshold(arr, self.detect_sigma_px, self.snr)
        else:
            thr = np.full(T, self.threshold)
        f, r, c = _detect(arr, self.detect_sigma_px, thr, self.neighbourhood)
        if len(f) == 0:
            return self._empty()
        fit, q = self._fit(arr, f, r, c)
        keep = self._accept(fit)
        fit = {k: v[keep] for k, v in fit.items()}
        f, q = f[keep], q[keep]
        half = self.render_half
        for _ in range(self.neighbour_passes):
            if len(f) == 0:
                break
            model = _render(arr.shape, f, q, half, self.three_d)
            # new spots: maxima of the residual away from the spots already fitted
            residual = (arr - model).astype(np.float32)
            fn, rn, cn = _detect(residual, self.detect_sigma_px, thr, self.neighbourhood)
            if len(fn):
                from scipy.spatial import cKDTree

                spacing = 4.0 * (H + W)
                tree = cKDTree(np.column_stack([q[:, 0], q[:, 1], f * spacing]))
                d, _ = tree.query(np.column_stack([cn, rn, fn * spacing]))
                new = d > 2.0
                fn, rn, cn = fn[new], rn[new], cn[new]
            ra = np.clip(np.round(q[:, 1]).astype(np.int64), 0, H - 1)
            ca = np.clip(np.round(q[:, 0]).astype(np.int64), 0, W - 1)
            fa = np.concatenate([f, fn])
            ra, ca = np.concatenate([ra, rn]), np.concatenate([ca, cn])
            old = len(f)
            in_model = np.arange(len(fa)) < old
            p0 = np.concatenate([q, np.full((len(fn), q.shape[1]), np.nan)])
            fit, q_all = self._fit(arr, fa, ra, ca, p0=p0, model_img=model, in_model=in_model, half=half)
            keep = self._accept(fit)
            fit = {k: v[keep] for k, v in fit.items()}
            f, q = fa[keep], q_all[keep]
        if self.three_d:
            z, dist = self.calibration.z_from_sigmas(fit["sx"], fit["sy"], return_distance=True)
            dx, dy = self.calibration.lateral_offset(z)
            fit["x"] = fit["x"] - dx
            fit["y"] = fit["y"] - dy
            fit["z"] = z
            if self.max_z_distance is not None:
                ok = dist <= self.max_z_distance
                fit = {k: v[ok] for k, v in fit.items()}
        else:
            fit["x"] = fit["x"] - self.offset[0]
            fit["y"] = fit["y"] - self.offset[1]
        table = {"frame": fit["frame"].astype(np.int64), "x": fit["x"], "y": fit["y"]}
        if self.three_d:
            table["z"] = fit["z"]
        table.update(confidence=fit["photons"].copy(), photons=fit["photons"], background=fit["bg"],
                     sigma_x=fit["sx"], sigma_y=fit["sy"])
        return table

    def __repr__(self) -> str:
        return (f"GaussianFitLocalizer({'3D' if self.three_d else '2D'}, {self.pixel_size:g} nm/px, "
                f"roi {self.roi}, sigma {self.sigma_px:.2f} px, {self.method}, "
                f"neighbour passes {self.neighbour_passes})")


def _is_astigmatic(cal: AstigmaticCalibration) -> bool:
    """Whether the calibrated widths tell z apart: the x and y foci (the z of the narrowest
    ``sigma_x`` and ``sigma_y`` in the central 60 % of the range) are at least 150 nm apart and the
    width ratio changes by more than 20 % over the range. A plain 2D PSF has both foci together
    (widths symmetric about focus, so ``+z`` and ``-z`` look alike)."""
    ratio = np.log(cal.sx / cal.sy)
    n = len(cal.z)
    mid = slice(n // 5, n - n // 5)  # far-defocused fits can lock on side lobes: ignore the ends
    foci = abs(float(cal.z[mid][np.argmin(cal.sx[mid])] - cal.z[mid][np.argmin(cal.sy[mid])]))
    return foci >= 150.0 and float(ratio.max() - ratio.min()) > math.log(1.2)
