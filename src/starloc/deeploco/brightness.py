"""How bright are the emitters and the background of a stack: the numbers to narrow the training
ranges (``starloc deeploco train --photons LO:HI --background LO:HI``) to your data.

A network only knows the brightness it was trained on; the default ranges are wide (500-20000
photons, 20-200 photons/px) so that any data is covered, and training on the data's own
brightness gained 0.013-0.021 Jaccard on the astigmatic benchmark (docs/benchmarks.md).

Measured on frames in photons (:meth:`~starloc.deeploco.camera.Camera.normalize`'d camera
frames), without any PSF model:

- spots are found with the Gaussian-fit baseline's detector
  (:func:`~starloc.deeploco.baseline.detect_spots`: difference of Gaussians, 5x the frame's
  pixel noise) run on the square root of the frames, whose noise does not grow with the
  background, so the dimmest emitters, below that cut, are not counted;
- **background** of a frame: the median of its pixels farther than half a window from every
  spot;
- **photons** of a spot: the sum over a ``window x window`` box around it minus its own
  background (a plane fitted to a 3 px ring 3 px outside the box, away from other spots), for
  spots with no other spot within one window (isolated) and whose box lies in the frame. A
  frame's background varies: on a ramp of +-80 % the frame's median, which this used before,
  made 30 % of the spots of 1000-7000 photons read below 500, some negative, and the one
  noise level per frame let the noise of the ramp's bright side through as spots. The default
  13 px at 100 nm (1.3 µm) holds nearly all of an in-focus spot and most of a defocused
  astigmatic one.

Lengths in pixels; photons per emitter, photons per pixel.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import InputError
from .baseline import detect_spots

__all__ = ["DEFAULT_FRAMES", "Brightness", "measure_brightness"]

#: fewest isolated spots to report photons from
MIN_SPOTS = 20
#: frames of a stack the CLI and the napari Train tab measure unless told otherwise
DEFAULT_FRAMES = 1000
#: photons: isolated spots dimmer than this (median) are not emitters of SMLM frames in photons. A
#: spot must stand 5 noise levels above its background to be found, which takes a few hundred
#: photons on any real background; medians below this come from frames in other units (ADU read
#: as photons, a wrong gain) or from noise found as spots where there are no emitters
MIN_MEDIAN_PHOTONS = 50.0


@dataclass(frozen=True)
class Brightness:
    """What :func:`measure_brightness` found: ``photons`` of each isolated spot, ``background``
    (photons/px) of each frame, and the number of frames looked at."""

    photons: np.ndarray
    background: np.ndarray
    frames: int

    def suggested_ranges(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """Training ranges that cover these data with a margin: photons from half the 5th
        percentile (the detector misses the dimmest; at least a tenth of the median) to 1.5x
        the 95th; background from 0.8x its 5th to 1.25x its 95th percentile (at least 0).
        Raises :class:`InputError` when the numbers cannot be an SMLM stack's in photons
        (:meth:`check`)."""
        self.check()
        p5, p50, p95 = np.percentile(self.photons, [5, 50, 95])
        b5, b95 = np.percentile(self.background, [5, 95])
        low = max(round(0.5 * p5, -1), round(0.1 * p50, -1))
        return (low, round(1.5 * p95, -1)), (max(round(0.8 * b5, 1), 0.0), round(1.25 * b95, 1))

    def check(self) -> None:
        """Raise :class:`InputError` when the spots are too dim to be emitters in photons (median
        below ``MIN_MEDIAN_PHOTONS``) or the background is below zero: the frames' units or
        camera settings are wrong, or the stack holds no emitters (a bead z-stack's single
        beads are not isolated spots of every frame)."""
        median = float(np.median(self.photons))
        background = float(np.median(self.background))
        hint = ("check the camera settings (baseline, gain, electrons per ADU) or the stack's units, and "
                "that this is an SMLM stack of blinking emitters")
        if median < MIN_MEDIAN_PHOTONS:
            raise InputError(f"the isolated spots found hold {median:.0f} photons (median), too few for "
                             f"emitters (at least {MIN_MEDIAN_PHOTONS:g}): {hint}")
        if background < -1.0:
            raise InputError(f"the background reads {background:.1f} photons/px, below zero: the camera "
                             f"baseline is set too high; {hint}")


#: px: the ring that gives a spot's own background lies RING_GAP px outside its box and is RING px
#: wide (nearer, the tails of a defocused astigmatic spot raise it: photons read ~10 % low)
RING_GAP, RING = 3, 3


def _ring_background(masked: np.ndarray, t: np.ndarray, r: np.ndarray, c: np.ndarray, h: int,
                     fallback: np.ndarray) -> np.ndarray:
    """Per spot, the background under it: a plane fitted (least squares) to the pixels of
    ``masked`` (NaN near spots) in the ring around its ``(2h + 1)``-px box (``RING_GAP``,
    ``RING``), read at its centre. A background that varies over the frame makes the frame's
    median wrong by as much as it varies; a plane is right on a gradient even where the frame's
    edge or a neighbour hides one side of the ring, where the ring's median would not be. Spots
    with fewer than 3 ring pixels in view get ``fallback``."""
    k = h + RING_GAP + RING
    dr, dc = np.mgrid[-k:k + 1, -k:k + 1]
    ring = np.maximum(np.abs(dr), np.abs(dc)) > h + RING_GAP
    dr, dc = dr[ring], dc[ring]
    padded = np.pad(masked, ((0, 0), (k, k), (k, k)), constant_values=np.nan)
    values = padded[t[:, None], r[:, None] + k + dr[None], c[:, None] + k + dc[None]]
    seen = np.isfinite(values)
    basis = np.stack([np.ones(len(dr)), dr, dc], axis=-1).astype(np.float64)  # (P, 3): the plane a + b*dr + c*dc
    weights = seen.astype(np.float64)
    normal = np.einsum("kp,pi,pj->kij", weights, basis, basis)
    rhs = np.einsum("kp,pi->ki", weights * np.nan_to_num(values), basis)
    solvable = (seen.sum(axis=1) >= 3) & (np.abs(np.linalg.det(normal)) > 1e-9)
    local = np.array(fallback, dtype=np.float64)
    if solvable.any():
        local[solvable] = np.linalg.solve(normal[solvable], rhs[solvable][..., None])[:, 0, 0]
    return local


def measure_brightness(frames: Any, window: int = 13, snr: float = 5.0, sigma_px: float = 1.3) -> Brightness:
    """Photons per isolated spot and background per frame of ``(T, H, W)`` frames in photons
    (module docstring). ``window``: odd box side in pixels. Raises :class:`InputError` when
    fewer than ``MIN_SPOTS`` isolated spots are found (too few frames, too dim, or too dense)."""
    arr = np.asarray(frames, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or not arr.size:
        raise InputError(f"expected frames (T, H, W) in photons, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError("frames contain NaN or inf values")
    w = int(window)
    if w < 3 or w % 2 == 0:
        raise InputError(f"window must be an odd number of pixels >= 3, got {window!r}")
    h = w // 2
    # Spots are found on the square root of the frames (Anscombe), whose noise is the same at any
    # background: the detector's one noise level per frame, read in its quietest blocks, would
    # otherwise let the noise of a brighter part of the frame through as spots.
    stabilized = 2.0 * np.sqrt(np.clip(arr, 0.0, None) + 0.375)
    t, r, c = detect_spots(stabilized, 100.0, sigma_px=sigma_px, snr=snr)  # the pixel size only is checked
    spots = np.zeros(arr.shape, dtype=bool)
    spots[t, r, c] = True
    near = ndimage.maximum_filter(spots, size=(1, w, w))  # within half a window of a spot
    masked = np.where(near, np.nan, arr)
    with warnings.catch_warnings():  # a frame all near spots (or tiny) has no background: NaN, left out below
        warnings.simplefilter("ignore", RuntimeWarning)
        background = np.nanmedian(masked.reshape(len(arr), -1), axis=1)
    # isolated: the only spot within one window
    crowd = ndimage.uniform_filter(spots.astype(np.float64), size=(1, 2 * w + 1, 2 * w + 1),
                                   mode="constant") * (2 * w + 1) ** 2
    alone = np.rint(crowd[t, r, c]).astype(int) == 1
    inside = (r >= h) & (r < arr.shape[1] - h) & (c >= h) & (c < arr.shape[2] - h)
    keep = alone & inside & np.isfinite(background[t])
    if keep.sum() < MIN_SPOTS:
        raise InputError(f"found {int(keep.sum())} isolated spots in {len(arr)} frame(s); need at least "
                         f"{MIN_SPOTS}: give more frames, or sparser ones")
    box = ndimage.uniform_filter(arr, size=(1, w, w), mode="constant") * w * w
    local = _ring_background(masked, t[keep], r[keep], c[keep], h, fallback=background[t[keep]])
    photons = box[t[keep], r[keep], c[keep]] - local * w * w
    return Brightness(photons=photons, background=background[np.isfinite(background)], frames=len(arr))
