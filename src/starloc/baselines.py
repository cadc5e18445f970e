"""Classical single-object localizers, the baselines of the LodeSTAR benchmark.

Both have the interface of the LodeSTAR single-object predictor: ``f(images) -> positions``
with images (..., H, W) of any leading dimensions and positions (..., 2) float64 (row, col)
in px, pixel centres at integer coordinates (a 2D image gives shape (2,)). Each image is
assumed to hold one object on a roughly uniform background.

Common first steps, per image:

1. Background: the median of the image, subtracted.
2. Rough location: the maximum of the background-subtracted image smoothed by a Gaussian of
   sigma 1 px (``_SMOOTH_SIGMA``); its value there is the smoothed peak amplitude A.
3. Object region: the connected component (8-connectivity) of the smoothed image above
   ``_REGION_FRACTION`` (0.4) * A that contains the rough location, dilated by a margin of
   a few px (3 for the centroid, 4 for the radial centre). It adapts to the size and shape
   of the object and leaves out most of the background noise.

An image without any signal (constant, e.g. all zeros) gives the image centre.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_SMOOTH_SIGMA = 1.0
_REGION_FRACTION = 0.4
_CENTROID_MARGIN = 3
_RADIAL_MARGIN = 4
_CENTROID_FRACTION = 0.05


def _per_image(func, images: np.ndarray) -> np.ndarray:
    """Apply func (2D image -> (2,)) over the leading dimensions of images (..., H, W)."""
    images = np.asarray(images, dtype=float)
    if images.ndim < 2:
        raise ValueError(f"expected images of shape (..., H, W), got shape {images.shape}")
    flat = images.reshape(-1, *images.shape[-2:])
    return np.array([func(image) for image in flat], dtype=float).reshape(*images.shape[:-2], 2)


def _image_centre(image: np.ndarray) -> np.ndarray:
    return (np.array(image.shape, dtype=float) - 1) / 2


def _prepare(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Background-subtracted image, its smoothed version and the rough location (argmax)."""
    signal = image - np.median(image)
    smooth = ndimage.gaussian_filter(signal, _SMOOTH_SIGMA)
    peak = np.unravel_index(np.argmax(smooth), smooth.shape)
    return signal, smooth, peak


def _object_region(smooth: np.ndarray, peak: tuple[int, int], margin: int) -> np.ndarray:
    """Boolean mask of the object: see step 3 of the module docstring."""
    labels, _ = ndimage.label(smooth > _REGION_FRACTION * smooth[peak], structure=np.ones((3, 3)))
    return ndimage.binary_dilation(labels == labels[peak], iterations=margin)


def _window(smooth: np.ndarray, peak: tuple[int, int], window: int | None, margin: int):
    """Boolean mask: the object region or, with window, the square of side 2 * window + 1 px
    around the rough location (clipped to the image)."""
    if window is None:
        return _object_region(smooth, peak, margin)
    mask = np.zeros(smooth.shape, dtype=bool)
    low = np.maximum(np.array(peak) - window, 0)
    mask[low[0] : peak[0] + window + 1, low[1] : peak[1] + window + 1] = True
    return mask


def _centroid_one(image: np.ndarray, threshold: float | None, window: int | None) -> np.ndarray:
    signal, smooth, peak = _prepare(image)
    if smooth[peak] <= 0:
        return _image_centre(image)
    level = _CENTROID_FRACTION * smooth[peak] if threshold is None else threshold
    mask = _window(smooth, peak, window, _CENTROID_MARGIN)
    weights = np.where(mask, np.clip(signal - level, 0, None), 0.0)
    total = weights.sum()
    if total <= 0:
        return np.array(peak, dtype=float)
    rows, cols = np.indices(image.shape)
    return np.array([(weights * rows).sum(), (weights * cols).sum()]) / total


def centroid(images, threshold: float | None = None, window: int | None = None) -> np.ndarray:
    """Thresholded intensity-weighted centroid (row, col) of the object in each image.

    Weights are max(I - background - threshold, 0) inside the window: pixels below the
    threshold count zero and the weights go to zero continuously at the threshold, which keeps
    the bias from the pixel sampling small (< 0.005 px on noiseless spots).
    threshold: level above the background in image units (default 0.05 * the smoothed peak
    amplitude A; the window already excludes the background). window: half-width in px of a
    square window around the rough location (default: the object region, module docstring).
    """
    return _per_image(lambda image: _centroid_one(image, threshold, window), images)


def _radial_symmetry_centre(patch: np.ndarray) -> np.ndarray:
    """Parthasarathy (2012) radial symmetry centre of patches (..., h, w), in patch pixels.

    Gradients on the half-pixel grid from the two diagonal differences, smoothed by a 3x3
    mean (zero padding, as in the reference code). Each gradient defines a line through its
    grid point; the centre is the point with the least weighted sum of squared distances to
    the lines, weights |grad|^2 / (distance from the grid point to the |grad|^2-weighted
    centroid of the grid points). Flat patches give the patch centre.
    """
    d_rowcol = patch[..., 1:, 1:] - patch[..., :-1, :-1]  # along (+1, +1)
    d_anti = patch[..., 1:, :-1] - patch[..., :-1, 1:]  # along (+1, -1)
    size = (1,) * (patch.ndim - 2) + (3, 3)
    grad_r = ndimage.uniform_filter((d_rowcol + d_anti) / 2, size=size, mode="constant")
    grad_c = ndimage.uniform_filter((d_rowcol - d_anti) / 2, size=size, mode="constant")
    h, w = grad_r.shape[-2:]
    rows, cols = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")

    def total(x):
        return x.sum(axis=(-2, -1))

    magnitude2 = grad_r**2 + grad_c**2
    norm = np.maximum(total(magnitude2), np.finfo(float).tiny)[..., None, None]
    distance = np.hypot(rows - total(magnitude2 * rows)[..., None, None] / norm,
                        cols - total(magnitude2 * cols)[..., None, None] / norm)
    weights = magnitude2 / np.maximum(distance, 1e-9)
    # Line k through x_k along the unit gradient n_k: distance^2 = |(1 - n n^T)(c - x_k)|^2,
    # so the centre solves sum_k w_k (1 - n_k n_k^T) c = sum_k w_k (1 - n_k n_k^T) x_k.
    length = np.sqrt(np.maximum(magnitude2, np.finfo(float).tiny))
    unit_r, unit_c = grad_r / length, grad_c / length
    p_rr, p_rc, p_cc = 1 - unit_r**2, -unit_r * unit_c, 1 - unit_c**2
    a_rr, a_rc, a_cc = total(weights * p_rr), total(weights * p_rc), total(weights * p_cc)
    b_r = total(weights * (p_rr * rows + p_rc * cols))
    b_c = total(weights * (p_rc * rows + p_cc * cols))
    det = a_rr * a_cc - a_rc**2
    solvable = det > 1e-12 * (a_rr + a_cc) ** 2
    det = np.where(solvable, det, 1.0)
    centre = np.stack([(a_cc * b_r - a_rc * b_c) / det, (a_rr * b_c - a_rc * b_r) / det], axis=-1)
    fallback = (np.array(patch.shape[-2:], dtype=float) - 1) / 2
    return np.where(solvable[..., None], centre, fallback)


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice]:
    rows, cols = np.nonzero(mask)
    return slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)


def _radial_center_one(image: np.ndarray, window: int | None) -> np.ndarray:
    _, smooth, peak = _prepare(image)
    if smooth[peak] <= 0:
        return _image_centre(image)
    mask = _window(smooth, peak, window, _RADIAL_MARGIN)
    box = _bounding_box(mask)
    return _radial_symmetry_centre(image[box]) + [box[0].start, box[1].start]


def radial_center(images, window: int | None = None) -> np.ndarray:
    """Radial symmetry centre (Parthasarathy 2012, Nat. Methods 9:724) of each image, (row, col).

    Computed on a rectangular patch: by default the bounding box of the object region (module
    docstring); with window, the square of half-width `window` px around the rough location.
    """
    return _per_image(lambda image: _radial_center_one(image, window), images)
