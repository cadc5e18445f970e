"""How much to downsample: the size of the object in a training crop.

LodeSTAR tracks an object whole only if the network sees all of it; past its receptive field
(26 px by default) a model is trained on downsampled images (:mod:`starloc.lodestar.model`).
On ``bench/lodestar_scale.py`` the best factor was the smallest that brings the object's
measured extent to at most 20 px: a thin ring 48 px across needed 3 (1 and 2 failed, 4 lost
precision), a filled disc 32 px across was best at 2, a Gaussian spot measuring 22 or 26 px
needed 2 (at 1 it was found with false positives or not at all), one measuring 19 px was as
precise at 1 as at 2. These helpers measure the object and suggest that factor, for the widget
and the CLI to tell the user (and ``--downsample auto`` to use).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from starloc.lodestar.crop_content import smoothed_contrast

# px the measured extent may span once downsampled. The extent (bounding box of the 20 %
# contour, blur included) exceeds the visible size: the bench's ring, 48 px across, measures
# 54 px and worked best at 3; its disc, 32 px across, measures 34 px and worked best at 2; a
# Gaussian spot of sigma 6 px measures 22 px and worked at 2 only (docs/benchmarks.md).
MAX_EXTENT = 20.0
PEAK_FRACTION = 0.2  # the object is where the smoothed contrast exceeds this share of its peak


def object_extent(crop: np.ndarray) -> float:
    """Side in pixels of the bounding box of the object in a crop (``(H, W)`` or
    ``(C, H, W)``, channels averaged): of the connected regions where the smoothed contrast
    (brighter or darker than the background) exceeds 20 % of its peak and twice its noise,
    the one nearest the crop's centre; where that region reaches the crop's border, the first
    of the higher cuts ``TEXTURE_FRACTIONS`` whose region does not (texture around a small
    object). 0 for a crop without anything 5 noise levels above the background."""
    contrast, noise = smoothed_contrast(crop)
    peak = np.unravel_index(np.argmax(contrast), contrast.shape)
    if not contrast[peak] > 5 * noise:
        return 0.0
    first = None
    for fraction in (PEAK_FRACTION, *TEXTURE_FRACTIONS):
        # the noise floor keeps a dim object's region from spreading over the noise around it
        region = _central_region(contrast > max(fraction * contrast[peak], 2 * noise))
        rows, cols = np.nonzero(region)
        extent = float(max(rows.max() - rows.min(), cols.max() - cols.min()) + 1)
        first = extent if first is None else first
        if not (region[0].any() or region[-1].any() or region[:, 0].any() or region[:, -1].any()):
            return extent
    return first


#: higher cuts tried, in turn, when the region at ``PEAK_FRACTION`` reaches the crop's border:
#: on a textured background (vessels around a 5 px microaneurysm) that region is the texture's,
#: 25 px across; an object that fills the crop reaches the border at every cut and keeps the first
TEXTURE_FRACTIONS = (0.35, 0.5)


def _central_region(mask: np.ndarray) -> np.ndarray:
    """The connected region of ``mask`` (8-connected) nearest the crop's centre: the user
    centres the crop on the object (a ring has an empty middle); the strongest region may be
    a neighbour's edge."""
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3)))
    rows, cols = np.nonzero(labels)
    centre = (np.array(mask.shape) - 1) / 2
    nearest = np.argmin(np.hypot(rows - centre[0], cols - centre[1]))
    return labels == labels[rows[nearest], cols[nearest]]


def downsample_for(extent: float) -> int:
    """The smallest downsampling factor that brings an object whose :func:`object_extent` is
    ``extent`` px to at most :data:`MAX_EXTENT` px (1 up to 20 px, 2 up to 40, ...)."""
    return max(1, int(np.ceil(extent / MAX_EXTENT - 1e-9)))


def suggest_downsample(crops) -> tuple[int, float]:
    """``(factor, extent)`` for training crops: :func:`downsample_for` the largest
    :func:`object_extent` among them (px)."""
    extent = max(object_extent(c) for c in crops)
    return downsample_for(extent), extent


def auto_downsample(crops, receptive_field: int) -> tuple[int, int, float]:
    """``(factor, suggested, extent)``: the :func:`suggest_downsample` factor for these crops,
    lowered to what the smallest crop allows (its side must span ``receptive_field`` px once
    downsampled), with the suggested factor and the object's extent (px) for the message."""
    suggested, extent = suggest_downsample(crops)
    return max(1, min(suggested, smallest_side(crops) // receptive_field)), suggested, extent


def smallest_side(crops) -> int:
    """The shortest side (px) among ``(H, W)`` or ``(C, H, W)`` crops."""
    return min(min(np.shape(c)[-2:]) for c in crops)
