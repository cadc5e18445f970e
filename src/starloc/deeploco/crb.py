"""Cramér–Rao bound of single-emitter localization for a PSF and camera model.

The bound is the smallest covariance any unbiased estimator can reach on an *isolated* emitter
(no neighbours) of the forward model the simulator uses, so it tells how close a localizer is
to the best possible on given data and whether a target precision is reachable at all.

Model: expected photons per pixel ``mu = N * psf(x, y, z) + b`` on a frame in photon units
(camera ``normalize``), noise treated as Gaussian with the camera's variance
``a * mu + r2`` per pixel (:func:`noise_model`; Poisson: ``a = 1``, ``r2 = 0``). Parameters
``(x, y[, z], N, b)``; the Fisher information is
``I_ij = sum_pixels d_i mu * d_j mu / (a * mu + r2)`` and the bound is ``inv(I)``.
Coordinates as everywhere in :mod:`starloc.deeploco`: nm, ``x`` along columns, ``y`` along rows.

Derivatives are central differences of the PSF model: 1 nm laterally, ``dz`` (default 30 nm)
axially. An empirical PSF interpolates linearly between bead slices that each carry their own
measurement noise; a z difference over a single 10 nm slice would count that noise as axial
information and give a bound about twice too optimistic, so ``dz`` spans several slices.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from .camera import EMCCD, SCMOS, Camera
from .psf import PSFModel

__all__ = ["noise_model", "unit_derivatives", "crb_covariance", "cramer_rao_bound"]


def noise_model(camera: Camera | None) -> tuple[float, float]:
    """``(a, r2)``: the variance of a normalized (photon-unit) pixel is ``a * mu + r2`` for
    ``mu`` expected photons. Poisson (``camera=None``): ``(1, 0)``. EMCCD (high-gain limit,
    excess noise factor 2): ``a = 2 / qe``, ``r2`` = read noise and clock-induced charge in
    photons². sCMOS: ``a = 1 / qe``, ``r2 = (read_noise / qe)^2`` (the mean over a per-pixel map)."""
    if camera is None:
        return 1.0, 0.0
    qe = float(camera.qe)
    if isinstance(camera, EMCCD):
        read = float(camera.read_noise) / (float(camera.em_gain) * qe)
        return 2.0 / qe, read**2 + 2.0 * float(camera.spurious_charge) / qe**2
    if isinstance(camera, SCMOS):
        read = torch.as_tensor(camera.read_noise, dtype=torch.float64)
        return 1.0 / qe, float((read / qe).square().mean())
    raise InputError(f"no noise model for camera {type(camera).__name__}")


def _patch_size(psf: PSFModel, pixel_size: float) -> int:
    z = torch.tensor(psf.z_range, dtype=torch.float64)
    return 2 * int(psf._half_size(z, pixel_size)) + 7


def unit_derivatives(psf: PSFModel, z: float, pixel_size: float, dz: float = 30.0,
                     offset: tuple[float, float] = (0.25, 0.25)) -> tuple[np.ndarray, np.ndarray]:
    """The unit-photon image ``p`` of one emitter at ``z`` and its derivatives ``(D, H*W)``
    with respect to ``x, y`` (and ``z`` for a z-dependent PSF), per nm.

    The emitter sits ``offset`` pixels (x, y) from the centre of a frame just larger than the PSF.
    """
    S = _patch_size(psf, pixel_size)
    x0 = (S // 2 + 0.5 + offset[0]) * pixel_size
    y0 = (S // 2 + 0.5 + offset[1]) * pixel_size
    h = 1.0
    points = [(x0, y0, z), (x0 + h, y0, z), (x0 - h, y0, z), (x0, y0 + h, z), (x0, y0 - h, z)]
    if psf.z_dependent:
        lo, hi = psf.z_range
        zp, zm = min(z + dz, hi), max(z - dz, lo)
        if zp <= zm:
            raise InputError(f"z {z} nm: no room for a z derivative inside the PSF's range {psf.z_range}")
        points += [(x0, y0, zp), (x0, y0, zm)]
    x, y, zz = (torch.tensor([[pt[i]] for pt in points], dtype=torch.float64) for i in range(3))
    img = psf.render(x, y, zz, torch.ones_like(x), (S, S), pixel_size).reshape(len(points), -1).numpy()
    rows = [(img[1] - img[2]) / (2 * h), (img[3] - img[4]) / (2 * h)]
    if psf.z_dependent:
        rows.append((img[5] - img[6]) / (zp - zm))
    return img[0], np.stack(rows)


def _covariance(p: np.ndarray, d: np.ndarray, photons: np.ndarray, background: np.ndarray,
                a: float, r2: float) -> np.ndarray:
    """Inverse Fisher information ``(m, D + 2, D + 2)`` of ``m`` emitters sharing the unit image
    ``p`` ``(P,)`` and its position derivatives ``d`` ``(D, P)``; pixels of zero variance carry no
    information."""
    mu = photons[:, None] * p + background[:, None]
    var = a * mu + r2
    inv_var = np.where(var > 0, 1.0 / np.where(var > 0, var, 1.0), 0.0)
    d_photons = np.broadcast_to(p, mu.shape)[:, None]
    d_background = np.ones_like(mu)[:, None]
    jac = np.concatenate([photons[:, None, None] * d, d_photons, d_background], axis=1)  # (m, D + 2, P)
    info = np.einsum("mip,mjp->mij", jac * inv_var[:, None], jac)
    return np.linalg.inv(info)


def crb_covariance(psf: PSFModel, photons: Any, background: Any, z: Any = 0.0,
                   camera: Camera | None = None, pixel_size: float | None = None,
                   dz: float = 30.0, z_grid: float | None = 10.0) -> np.ndarray:
    """Cramér–Rao covariance ``(M, D, D)`` (nm²) of ``(x, y[, z])`` for ``M`` isolated emitters.

    photons, background (photons/pixel) and z (nm) broadcast to ``(M,)``. The PSF is evaluated on
    a grid of z values ``z_grid`` nm apart (each emitter uses the nearest node; ``None``: at each
    emitter's own z); the photon count and background enter analytically. Raises
    :class:`InputError` for non-positive photons, a negative background or z outside the PSF's
    range.
    """
    ps = float(pixel_size if pixel_size is not None else getattr(psf, "pixel_size", 100.0))
    N, b, zz = (np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in (photons, background, z))
    N, b, zz = np.broadcast_arrays(N, b, zz)
    if not (np.isfinite(N).all() and (N > 0).all()):
        raise InputError("photons must be positive and finite")
    if not (np.isfinite(b).all() and (b >= 0).all()):
        raise InputError("background must be >= 0 photons/pixel and finite")
    a, r2 = noise_model(camera)
    if psf.z_dependent:
        lo, hi = psf.z_range
        if not (np.isfinite(zz).all() and (zz >= lo).all() and (zz <= hi).all()):
            raise InputError(f"z must lie in the PSF's range {psf.z_range} nm")
        if z_grid is not None:
            zz = np.clip(lo + np.round((zz - lo) / z_grid) * z_grid, lo, hi)
    else:
        zz = np.zeros(N.shape)
    D = 3 if psf.z_dependent else 2
    N, b = N.ravel(), b.ravel()
    z_values, node = np.unique(zz.ravel(), return_inverse=True)
    out = np.empty((N.size, D, D))
    for n, z_n in enumerate(z_values):
        sel = np.flatnonzero(node == n)
        p, d = unit_derivatives(psf, float(z_n), ps, dz)
        out[sel] = _covariance(p, d, N[sel], b[sel], a, r2)[:, :D, :D]
    return out


def cramer_rao_bound(psf: PSFModel, photons: float, background: float, z: float = 0.0,
                     camera: Camera | None = None, pixel_size: float | None = None,
                     dz: float = 30.0) -> dict[str, float]:
    """Standard deviations (nm) of the bound for one emitter: ``{"x", "y"[, "z"]}``."""
    cov = crb_covariance(psf, photons, background, z, camera, pixel_size, dz, z_grid=None)[0]
    names = ("x", "y", "z")[: cov.shape[0]]
    return {k: math.sqrt(cov[i, i]) for i, k in enumerate(names)}
