"""Deblending: crowded detections located again with their neighbours masked out.

A detection with another one closer than the network's receptive field is *crowded*: the
pixels that see it also see the neighbour, and their predictions are pulled towards it. The
weighting of :func:`~starloc.lodestar.detection.detect` reduces that pull; deblending removes
its cause. Each crowded detection gets a patch of the network's input around it in which
every pixel closer to another detection (the other detections' Voronoi cells) is replaced
by normalized background noise, i.e. what the network saw around the lone object it was
trained on. The network runs on the patches and each detection is refined on its patch's
maps as in detection (the weighted mean of the predictions that cluster on it).

An object stays whole as long as its pixels lie closer to its own detected centre than to
any other: true for objects of similar size that do not overlap; the edge of a large object
beside a small one is masked. On 256x256 scenes of 20-50 crescents at SNR 10 this took the
matched RMSE of the objects with a neighbour within 26 px from 0.083 to 0.067 px, the level
of isolated ones (0.066 px).

Coordinates: (row, col) in pixels of the user's image, as everywhere in detection.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.spatial import cKDTree

from starloc.lodestar.detection import DetectParams, Detections, _crowded, _refine
from starloc.lodestar.model import LodeSTAR, to_image_coordinates, to_network_coordinates

FILL_SEED = 1
#: crowded detections relocated at a time, so that their patches and the network's activations on
#: them stay bounded however many objects a frame holds (all at once: +1.2 GB on a 4096 px frame)
CHUNK = 512


def deblend(model: LodeSTAR, frames: np.ndarray, found: Detections, params: DetectParams = DetectParams(),
            augment: bool = False, seen: np.ndarray | None = None) -> Detections:
    """``found`` (detections of ``frames`` ``(T, C, H, W)``, frame indices into ``frames``)
    with the crowded detections' properties located again on masked patches; the other
    detections and every feature unchanged. ``augment``: the median over the 8 grid
    symmetries of the patches (8x the network time on the crowded detections only).
    ``seen``: the frames as the network saw them, if at hand (see
    :meth:`~starloc.lodestar.model.LodeSTAR.maps_and_input`), else computed again.
    """
    distance = params.crowding_distance(model.config.receptive_field)  # network pixels, as in detection
    if len(found) == 0 or not distance:
        return found
    positions = found.positions.copy()
    for t in np.unique(found.frame):
        rows = np.flatnonzero(found.frame == t)
        centres = to_network_coordinates(found.positions[rows, :2], model.downsample)
        own = np.flatnonzero(_crowded(centres, distance))
        if len(own):
            if seen is None:
                x = model.network_input(torch.from_numpy(np.require(frames[t : t + 1], np.float32, ["C", "W"])))
                x = x[0].cpu().numpy()
            else:
                x = seen[t]
            for start in range(0, len(own), CHUNK):
                part = own[start : start + CHUNK]
                moved, ok = _relocate(model, x, centres, part, params, augment)
                positions[rows[part[ok]]] = moved[ok]
    return Detections(found.frame.copy(), positions, dict(found.features))


def patch_half_size(model: LodeSTAR, params: DetectParams) -> int:
    """Half-size (network pixels) of a deblending patch: what the output pixels of the
    refinement window (``params.radius`` around the detection) see, and a stride more."""
    return math.ceil(model.config.receptive_field / 2) + math.ceil(params.radius) + model.config.stride


def masked_patches(x: np.ndarray, centres: np.ndarray, own: np.ndarray, half: int,
                   stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Square patches of the normalized frame ``x (C, h, w)``, ``(N, C, S, S)``, around
    ``centres[own]`` (network pixels) at patch pixel ``(half, half)``, and their origins
    ``(N, 2)``. ``S`` is the smallest multiple of ``stride`` above ``2 half``.

    A pixel keeps its value if it lies in the frame and no other of ``centres`` is closer
    to it than ``centres[own[i]]`` (the own Voronoi cell); elsewhere it holds unit normal
    noise, the same for every patch (a fixed seed), so that a detection's result depends on
    the pixels of its own cell only.
    """
    c, h, w = x.shape
    size = 2 * half + stride - (2 * half) % stride  # > 2 half, a multiple of the stride
    fill = np.random.default_rng(FILL_SEED).standard_normal((c, size, size)).astype(x.dtype)
    origins = np.round(centres[own]).astype(np.int64) - half
    offsets = np.arange(size)
    rr = origins[:, 0, None, None] + offsets[None, :, None]
    cc = origins[:, 1, None, None] + offsets[None, None, :]
    rr, cc = np.broadcast_arrays(rr, cc)
    keep = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
    # Only centres within 2 sqrt(2) half of the own one can be closer to a patch pixel.
    nearby = cKDTree(centres).query_ball_point(centres[own], r=2 * math.sqrt(2) * half + 1)
    for n, (i, near) in enumerate(zip(own, nearby)):
        others = centres[[j for j in near if j != i]]
        if len(others):
            d_own = (rr[n] - centres[i, 0]) ** 2 + (cc[n] - centres[i, 1]) ** 2
            d_other = ((rr[n] - others[:, :1, None]) ** 2 + (cc[n] - others[:, 1:, None]) ** 2).min(axis=0)
            keep[n] &= d_own <= d_other  # a pixel as far from both is kept by both
    values = x[:, np.clip(rr, 0, h - 1), np.clip(cc, 0, w - 1)].transpose(1, 0, 2, 3)
    return np.where(keep[:, None], values, fill[None]), origins


def _relocate(model: LodeSTAR, x: np.ndarray, centres: np.ndarray, own: np.ndarray, params: DetectParams,
              augment: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(N, K)`` properties of the detections ``own`` refined on their masked patches, in
    image pixels, and ``(N,)`` whether each is a refinement: the cluster kept weight and stays
    within the refinement window (``params.radius``) of the detection. Otherwise the patch's
    network found nothing there (e.g. a detection on something unlike the training object),
    and the detection is better left where it was than moved to whatever a pixel predicts."""
    half = patch_half_size(model, params)
    patches, origins = masked_patches(x, centres, own, half, model.config.stride)
    # The patch holds all that the refinement window's output pixels see: no noise margin.
    maps = model.network_maps(torch.from_numpy(patches).to(model.device), symmetries=augment, margin=False)
    s = maps.stride
    r = max(1, int(round(params.radius / s)))
    start = centres[own] - origins  # the detection in patch pixels
    grid = np.clip(np.round((start - (s - 1) / 2) / s).astype(np.int64), 0, np.array(maps.positions.shape[-2:]) - 1)
    patch = np.arange(len(own))
    refined = [_refine(P, w, grid[:, 0], grid[:, 1], r, params.cluster_radius, maps=patch)
               for P, w in zip(maps.positions, maps.weights)]
    est = np.median([e for e, *_ in refined], axis=0)  # over the grid symmetries
    weighed = np.min([total for _, total, *_ in refined], axis=0) > 0
    ok = weighed & (np.hypot(*(est[:, :2] - start).T) <= params.radius)
    est[:, :2] = to_image_coordinates(est[:, :2] + origins, model.downsample)
    return est, ok
