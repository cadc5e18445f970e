"""What a training crop holds: its contrast above the background, and how many objects.

LodeSTAR learns from a crop around ONE object. A crop that holds several trains a model that
usually finds none of them (the demo's first crop held three, and its model found 0 of 30
particles), so the CLI and the widget warn when :func:`count_objects` sees more than one; a
crop of empty background (drawn on the wrong frame) trains a model of noise, so they warn when
it sees none.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from starloc.lodestar.model import clipped_background

SMOOTHING = 1.0  # px, Gaussian smoothing before thresholding (noise)
# An object is a region where the smoothed contrast exceeds this share of the crop's peak.
# Objects of one kind have about the same peak, and at 0.65 single objects of the simulator's
# five shapes at SNR 2-20 and the membrane-cell and blob samples all count as one.
OBJECT_FRACTION = 0.65
JOIN = 2  # px: regions closer than about twice this are one object (fragments of a dim ring)
# A region whose peak lies within EDGE px of the border counts only above this share of the
# peak: noise there is smoothed with its own reflection and reaches OBJECT_FRACTION more often.
# A neighbour cut by the border does count: the demo's failed crop held one 2 px from its edge.
EDGE = 2
BORDER_FRACTION = 0.8


def smoothed_contrast(crop: np.ndarray) -> tuple[np.ndarray, float]:
    """``(contrast, noise)`` of a crop (``(H, W)`` or ``(C, H, W)``, channels averaged): the
    absolute difference from the background level (brighter or darker objects alike) after a
    Gaussian smoothing of :data:`SMOOTHING` px, and the smoothed noise's standard deviation."""
    image = np.asarray(crop, dtype=np.float64)
    if image.ndim == 3:
        image = image.mean(axis=0)
    level, sigma = (float(v) for v in clipped_background(torch.from_numpy(image).reshape(1, 1, -1)))
    contrast = np.abs(ndimage.gaussian_filter(image - level, SMOOTHING))
    return contrast, sigma / (2 * np.sqrt(np.pi) * SMOOTHING)  # white noise after the smoothing


def count_objects(crop: np.ndarray) -> int:
    """How many objects a crop seems to hold (0 when nothing stands 5 noise levels above the
    background): regions whose smoothed contrast exceeds :data:`OBJECT_FRACTION` of the
    crop's peak (and 4 noise levels), joined across gaps of a few px; a region peaking at the
    border needs :data:`BORDER_FRACTION`. A dimmer object beside a bright one is not counted:
    the count is a check for the common mistake, not a detector. Measured on the simulator's
    40 px crops of scenes (SNR 3 and 10, 20 scenes per shape): no crop with one object counted
    more, every crop with two whole points, spheres, ellipses or crescents counted at least 2
    (annuli: 93-96 %); single points at SNR 2 counted 2 in 1 of 50 images."""
    contrast, noise = smoothed_contrast(crop)
    peak = float(contrast.max())
    if not peak > 5 * noise:
        return 0
    mask = ndimage.binary_dilation(contrast > max(OBJECT_FRACTION * peak, 4 * noise), iterations=JOIN)
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    H, W = contrast.shape
    peaks = ndimage.maximum_position(contrast, labels, range(1, n + 1))
    return sum((EDGE <= r < H - EDGE and EDGE <= c < W - EDGE) or contrast[r, c] >= BORDER_FRACTION * peak
               for r, c in peaks)


def crops_without_one_object(crops) -> list[tuple[int, int]]:
    """``(index, count)`` of the crops that seem to hold no object or more than one. No object:
    nothing stands out of the noise, e.g. a crop drawn on the wrong frame (single objects of the
    simulator's five shapes at SNR 1-5 never count 0; crops of pure noise do in 9 of 10)."""
    counts = [(i, count_objects(c)) for i, c in enumerate(crops)]
    return [(i, n) for i, n in counts if n != 1]


def crop_advice(index: int, count: int) -> str:
    """What is wrong with crop ``index`` (0-based; said 1-based) holding ``count`` objects."""
    if count == 0:
        return (f"crop {index + 1} seems to hold no object (nothing stands out of its noise): LodeSTAR learns "
                "from a crop around ONE object; check the crop and the frame it is drawn on")
    return (f"crop {index + 1} seems to hold {count} objects: LodeSTAR learns from a crop around ONE object "
            "(a model trained on several usually finds none); crop a single object")
