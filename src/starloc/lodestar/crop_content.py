"""What a training crop holds: its contrast above the background, and how many objects.

LodeSTAR learns from a crop around ONE object. A crop that holds several trains a model that
usually finds none of them (the demo's first crop held three, and its model found 0 of 30
particles), so the CLI and the widget warn when :func:`count_objects` sees more than one; a
crop of empty background (drawn on the wrong frame) trains a model of noise, so they warn when
it sees none.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from starloc.lodestar.model import CLIPPED_STD

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
RING = 2  # px: the crop's outer ring that gives its background level
# A neighbour cut by the border whose region is smaller than this share of the largest object
# inside is a sliver (told apart in the advice: usually harmless); a larger part is an object.
SLIVER = 0.5


def smoothed_contrast(crop: np.ndarray) -> tuple[np.ndarray, float]:
    """``(contrast, noise)`` of a crop (``(H, W)`` or ``(C, H, W)``, channels averaged): the
    absolute difference from the background level (brighter or darker objects alike) after a
    Gaussian smoothing of :data:`SMOOTHING` px, and the smoothed noise's standard deviation.

    The background level is the median of the crop's outer ring (:data:`RING` px), the noise
    that of the differences between neighbouring pixels (clipped: an object, smooth on the
    scale of a pixel, hardly counts). Both hold when the object fills most of its crop: the
    crop's robust (clipped) level and spread took the object's own pixels for the background
    and its texture for the objects; a coin filling a 48 px crop read as 6 objects 48 px wide
    (42 px measured on wider crops), and auto-downsampling chose no downsampling for it."""
    image = np.asarray(crop, dtype=np.float64)
    if image.ndim == 3:
        image = image.mean(axis=0)
    contrast = np.abs(ndimage.gaussian_filter(image - _ring_level(image), SMOOTHING))
    return contrast, _pixel_noise(image) / (2 * np.sqrt(np.pi) * SMOOTHING)  # white noise after smoothing


def _ring_mask(shape: tuple[int, int]) -> np.ndarray:
    """The crop's outer ring of :data:`RING` px (the whole crop when it is that small)."""
    ring = np.zeros(shape, bool)
    ring[:RING] = ring[-RING:] = True
    ring[:, :RING] = ring[:, -RING:] = True
    return ring


def _ring_level(image: np.ndarray) -> float:
    """Median of the outer ring of :data:`RING` px (the whole image when it is that small)."""
    return float(np.median(image[_ring_mask(image.shape)]))


def _stands_out_of_a_plane(crop: np.ndarray, height: float) -> bool:
    """Whether anything in the smoothed crop stands more than ``height`` out of the plane
    fitted to its outer ring (least squares, ring pixels beyond 3 robust SDs of the fit
    dropped, 5 rounds).

    The ring's median alone takes a gradient across the crop for objects: with an
    illumination gradient of one noise SD across a 36 px crop, 78 of 200 empty crops counted
    1-7 objects (7 now). The plane only vetoes, and only when the strongest contrast lies at
    the crop's border, where a gradient peaks: an object that covers part of the ring tilts
    the plane towards itself, and a crop that an object nearly fills is measured from the
    median. A dim object (about one noise SD per pixel) cut by the crop's edge is still
    called empty more often than before (45 against 15 of 100 discs of radius 20 px in a
    40 px crop; the median level counted most of them as 2-11 objects)."""
    image = np.asarray(crop, dtype=np.float64)
    if image.ndim == 3:
        image = image.mean(axis=0)
    H, W = image.shape
    if min(H, W) <= 2 * RING:
        return True
    ring = _ring_mask((H, W))
    rows, cols = np.nonzero(ring)
    design = np.column_stack([np.ones(rows.size), rows - (H - 1) / 2, cols - (W - 1) / 2])
    values = image[ring]
    keep = np.ones(values.size, bool)
    for _ in range(5):
        coef = np.linalg.lstsq(design[keep], values[keep], rcond=None)[0]
        residual = values - design @ coef
        spread = 1.4826 * float(np.median(np.abs(residual[keep] - np.median(residual[keep]))))
        inside = np.abs(residual - np.median(residual[keep])) <= 3 * spread
        if spread == 0 or np.array_equal(inside, keep) or inside.sum() < 3:
            break
        keep = inside
    level = coef[0] + float(np.median(residual[keep]))
    r, c = np.mgrid[0:H, 0:W]
    plane = level + coef[1] * (r - (H - 1) / 2) + coef[2] * (c - (W - 1) / 2)
    return float(np.abs(ndimage.gaussian_filter(image - plane, SMOOTHING)).max()) > height


def _pixel_noise(image: np.ndarray) -> float:
    """Standard deviation of white pixel noise from the differences of neighbouring pixels:
    their standard deviation after iterative 3-sigma clipping (corrected for the clipped
    tails), over sqrt 2.

    Not their MAD: on low-count integer data it moves in whole steps (a quarter low at 2
    counts per pixel), and 50-66 % of empty 24-40 px Poisson(2) crops passed for holding
    objects (7-10 % now; Poisson noise of 1-100 counts per pixel: 1-16 %). Below 1 count per
    pixel empty crops still pass: the ring's median, 0, lies below their mean."""
    diffs = np.concatenate([np.diff(image, axis=0).ravel(), np.diff(image, axis=1).ravel()])
    keep = diffs
    for _ in range(10):
        sd = float(keep.std()) if keep.size else 0.0
        if sd == 0:
            break
        inside = diffs[np.abs(diffs - keep.mean()) <= 3 * sd]
        if inside.size == keep.size:
            break
        keep = inside
    return float(keep.std()) / CLIPPED_STD / np.sqrt(2) if keep.size else 0.0


def count_objects(crop: np.ndarray) -> int:
    """How many objects a crop seems to hold (0 when nothing stands 5 noise levels above the
    background): regions whose smoothed contrast exceeds :data:`OBJECT_FRACTION` of the
    crop's peak (and 4 noise levels), joined across gaps of a few px; a region peaking at the
    border needs :data:`BORDER_FRACTION`. A dimmer object beside a bright one is not counted:
    the count is a check for the common mistake, not a detector. Measured on the simulator's
    40 px crops of scenes (SNR 3 and 10, 20 scenes per shape): no crop with one object counted
    more, every crop with two whole points, spheres, ellipses or crescents counted at least 2
    (annuli: 93-96 %); single points at SNR 2 counted 2 in 1 of 50 images."""
    return sum(_objects(crop))


def objects_at_border(crop: np.ndarray) -> int:
    """How many of the objects :func:`count_objects` counts are slivers of neighbours that the
    crop's border cuts: peaking within :data:`EDGE` px of it, and smaller than
    :data:`SLIVER` of the largest object inside (a neighbour cut in half is an object)."""
    return _objects(crop)[1]


def _objects(crop: np.ndarray) -> tuple[int, int]:
    """``(objects, slivers at the border)``: :func:`count_objects`'s objects, split."""
    contrast, noise = smoothed_contrast(crop)
    peak = float(contrast.max())
    if not peak > 5 * noise:
        return 0, 0
    H, W = contrast.shape
    r, c = np.unravel_index(int(np.argmax(contrast)), contrast.shape)
    at_edge = min(r, c, H - 1 - r, W - 1 - c) < EDGE
    if at_edge and not _stands_out_of_a_plane(crop, 5 * noise):  # the high side of a gradient
        return 0, 0
    mask = ndimage.binary_dilation(contrast > max(OBJECT_FRACTION * peak, 4 * noise), iterations=JOIN)
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    index = range(1, n + 1)
    areas = ndimage.sum_labels(np.ones_like(contrast), labels, index)
    inside, border = [], []
    for (r, c), area in zip(ndimage.maximum_position(contrast, labels, index), areas):
        if EDGE <= r < H - EDGE and EDGE <= c < W - EDGE:
            inside.append(area)
        elif contrast[r, c] >= BORDER_FRACTION * peak:
            border.append(area)
    largest = max(inside, default=0.0)
    slivers = int(sum(area < SLIVER * largest for area in border))
    return len(inside) + len(border) - slivers, slivers


def crops_without_one_object(crops) -> list[tuple[int, int]]:
    """``(index, count)`` of the crops that seem to hold no object or more than one. No object:
    nothing stands out of the noise, e.g. a crop drawn on the wrong frame (single objects of the
    simulator's five shapes at SNR 1-5 never count 0; crops of pure noise do in 9 of 10)."""
    counts = [(i, count_objects(c)) for i, c in enumerate(crops)]
    return [(i, n) for i, n in counts if n != 1]


def crop_advice(index: int, count: int, at_border: int = 0) -> str:
    """What is wrong with crop ``index`` (0-based; said 1-based) holding ``count`` objects,
    ``at_border`` of them cut by its border (:func:`objects_at_border`)."""
    if count == 0:
        return (f"crop {index + 1} seems to hold no object (nothing stands out of its noise): LodeSTAR learns "
                "from a crop around ONE object; check the crop and the frame it is drawn on")
    if count - at_border == 1:  # one object, and neighbours the border cuts
        return (f"crop {index + 1} seems to hold its object and part of {at_border} neighbour(s) at its edge: "
                "LodeSTAR learns from ONE object; a sliver usually does no harm, but if detection misses "
                "objects, draw the crop without the neighbour")
    return (f"crop {index + 1} seems to hold {count} objects: LodeSTAR learns from a crop around ONE object "
            "(a model trained on several usually finds none); crop a single object")
