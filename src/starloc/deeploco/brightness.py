"""How bright are the emitters and the background of a stack: the numbers to narrow the training
ranges (``starloc deeploco train --photons LO:HI --background LO:HI``) to your data.

A network only knows the brightness it was trained on; the default ranges are wide (500-20000
photons, 20-200 photons/px) so that any data is covered, and training on the data's own
brightness gained 0.013-0.021 Jaccard on the astigmatic benchmark (docs/benchmarks.md).

Measured on frames in photons (:meth:`~starloc.deeploco.camera.Camera.normalize`'d camera
frames), without any PSF model:

- spots are found with the Gaussian-fit baseline's detector
  (:func:`~starloc.deeploco.baseline.detect_spots`: difference of Gaussians, 5x the frame's
  pixel noise), so the dimmest emitters, below that cut, are not counted;
- **background** of a frame: the median of its pixels farther than half a window from every
  spot;
- **photons** of a spot: the sum over a ``window x window`` box around it minus the frame's
  background, for spots with no other spot within one window (isolated) and whose box lies in
  the frame. The default 13 px at 100 nm (1.3 µm) holds nearly all of an in-focus spot and most
  of a defocused astigmatic one, so photons read a little low far from focus.

Lengths in pixels; photons per emitter, photons per pixel.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class Brightness:
    """What :func:`measure_brightness` found: ``photons`` of each isolated spot, ``background``
    (photons/px) of each frame, and the number of frames looked at."""

    photons: np.ndarray
    background: np.ndarray
    frames: int

    def suggested_ranges(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """Training ranges that cover these data with a margin: photons from half the 5th
        percentile (the detector misses the dimmest) to 1.5x the 95th; background from 0.8x its
        5th to 1.25x its 95th percentile."""
        p5, p95 = np.percentile(self.photons, [5, 95])
        b5, b95 = np.percentile(self.background, [5, 95])
        return (round(0.5 * p5, -1), round(1.5 * p95, -1)), (round(0.8 * b5, 1), round(1.25 * b95, 1))


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
    t, r, c = detect_spots(arr, 100.0, sigma_px=sigma_px, snr=snr)  # the pixel size only is checked
    spots = np.zeros(arr.shape, dtype=bool)
    spots[t, r, c] = True
    near = ndimage.maximum_filter(spots, size=(1, w, w))  # within half a window of a spot
    masked = np.where(near, np.nan, arr)
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
    photons = box[t[keep], r[keep], c[keep]] - background[t[keep]] * w * w
    return Brightness(photons=photons, background=background[np.isfinite(background)], frames=len(arr))
