"""From LodeSTAR maps to positions: single-object pooling and multi-object detection.

All positions are (row, col) in input pixels, pixel centres at integers; frames 0-based.
Lengths in pixels (radii, distances) are pixels of what the network saw: for a model that
downsamples its input by ``d``, one such pixel is ``d`` image pixels, so the defaults keep
their meaning relative to the objects at every scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from starloc.errors import InputError
from starloc.lodestar.model import Maps, to_image_coordinates

CUTOFF_MODES = ("quantile", "ratio", "absolute")
# Default of DetectParams.pixels_per_peak. On simulated crowds of 220 objects in 256 px
# (bench/lodestar_crowding.py, seed 0) 4 found 84-100 % where the fixed 0.98 quantile found 59-89 %;
# 6 and more let more texture through on a real photograph (scikit-image's coins: 7 -> 11 false
# detections).
PIXELS_PER_PEAK = 4.0


def pool_single(maps: Maps, radius: float = 2.0, iterations: int = 3) -> np.ndarray:
    """One object per frame: the weighted mean of the predictions that cluster on it.

    The paper pools ``sum(P w) / sum(w)`` over the whole map. That is kept, but restricted to
    the predictions within ``radius`` px of the densest cluster of predictions (the mode of
    a weighted histogram of the predicted positions): at low SNR the weights of every pixel
    are small and the plain mean is dragged away by pixels far from the object, whose
    predictions scatter, while those that see the object still agree. At high SNR the
    result equals the plain weighted mean over the object.

    Returns ``(T, K)`` properties (columns 0, 1 = row, col, in pixels).
    """
    factor = maps.downsample
    maps = maps.network_view()
    t, k, h, w = maps.positions.shape
    P = maps.positions.reshape(t, k, -1).astype(np.float64)
    wt = maps.weights.reshape(t, -1).astype(np.float64)
    wt = wt + 1e-3 * wt.max(axis=1, keepdims=True) + 1e-30
    est = _densest_prediction(P[:, :2], wt, maps.image_shape)
    for _ in range(iterations):
        near = np.hypot(P[:, 0] - est[:, :1], P[:, 1] - est[:, 1:2]) <= radius
        ww = wt * near
        total = ww.sum(axis=1, keepdims=True)
        est = np.where(total > 0, (P[:, :2] * ww[:, None]).sum(-1) / np.maximum(total, 1e-300), est)
    rest = (P[:, 2:] * ww[:, None]).sum(-1) / np.maximum(total, 1e-300)
    return np.concatenate([to_image_coordinates(est, factor), rest], axis=1)


def pool_single_symmetries(maps: Maps) -> np.ndarray:
    """Median over the 8 grid symmetries of :func:`pool_single` (maps from
    :meth:`LodeSTAR.symmetry_maps`, leading axis 8). ``(T, K)``.

    Pooling each symmetry on its own and taking the median is more robust at low SNR than
    pooling the averaged maps, where clusters of different symmetries blur together.
    """
    each = [pool_single(Maps(p, w, maps.stride, maps.image_shape, maps.receptive_field, maps.downsample))
            for p, w in zip(maps.positions, maps.weights)]
    return np.median(np.stack(each), axis=0)


def _densest_prediction(P: np.ndarray, wt: np.ndarray, image_shape) -> np.ndarray:
    """``(T, 2)`` peak of the weighted, 1 px-smoothed histogram of predictions ``(T, 2, M)``.

    Predictions outside the image do not vote.
    """
    t = P.shape[0]
    hh, ww = image_shape
    r = np.round(P[:, 0]).astype(np.int64).ravel()
    c = np.round(P[:, 1]).astype(np.int64).ravel()
    frame = np.repeat(np.arange(t), P.shape[-1])
    inside = (r >= 0) & (r < hh) & (c >= 0) & (c < ww)
    hist = np.zeros((t, hh, ww))
    np.add.at(hist, (frame[inside], r[inside], c[inside]), wt.ravel()[inside])
    hist = ndimage.gaussian_filter(hist, sigma=(0, 1.0, 1.0))
    peak = hist.reshape(t, -1).argmax(axis=1)
    return np.stack(np.unravel_index(peak, (hh, ww)), axis=1).astype(np.float64)


def local_mean(x: np.ndarray) -> np.ndarray:
    """3x3 mean over the last two axes that averages only neighbours inside the map.

    Zero padding would bias border statistics; this keeps them exact.
    """
    size = (1,) * (x.ndim - 2) + (3, 3)
    total = ndimage.uniform_filter(x, size=size, mode="constant")
    count = ndimage.uniform_filter(np.ones(x.shape[-2:]), size=3, mode="constant")
    return total / count


def clustering_map(positions: np.ndarray) -> np.ndarray:
    """Paper's clustering metric ``c = 1 / (sum_k var3x3(P_k) + 1e-6)`` for ``(..., K, h, w)``."""
    p = positions.astype(np.float64)
    var = (local_mean(p**2) - local_mean(p) ** 2).sum(axis=-3)
    return 1.0 / (np.clip(var, 0, None) + 1e-6)


def score_map(maps: Maps, alpha: float, beta: float | None = None) -> np.ndarray:
    """Detection score ``S = w**alpha * c**beta`` per output pixel, ``(T, h, w)``.

    ``beta`` defaults to ``1 - alpha`` (as in the paper).
    """
    net = maps.network_view()
    return _score(net.weights, clustering_map(net.positions[:, :2]), alpha, beta)


def _score(weights: np.ndarray, consistency: np.ndarray, alpha: float, beta: float | None) -> np.ndarray:
    beta = 1.0 - alpha if beta is None else beta
    return np.power(weights.astype(np.float64), alpha) * np.power(consistency, beta)


def threshold(score: np.ndarray, cutoff: float, mode: str, n_peaks: int = 0,
              pixels_per_peak: float = PIXELS_PER_PEAK) -> float:
    """Absolute score threshold for one frame's score map.

    quantile: the ``cutoff`` quantile of the score (paper: 0.99), lowered where the frame has
    ``n_peaks`` candidate peaks so that at least ``pixels_per_peak`` output pixels per peak lie
    above it: a fixed quantile keeps a fixed share of the map, which the objects of a crowded
    frame fill, and it then cuts through their own scores. ratio: ``cutoff`` times the maximum
    score; absolute: ``cutoff`` itself.
    """
    if mode == "quantile":
        if not 0 <= cutoff <= 1:
            raise ValueError(f"a quantile cutoff must lie in [0, 1], got {cutoff}")
        q = min(cutoff, 1.0 - pixels_per_peak * n_peaks / score.size)
        return float(np.quantile(score, max(q, 0.0)))
    if mode == "ratio":
        return float(cutoff * score.max())
    if mode == "absolute":
        return float(cutoff)
    raise ValueError(f"unknown cutoff mode {mode!r}; expected one of {CUTOFF_MODES}")


@dataclass(frozen=True)
class DetectParams:
    """Multi-object detection settings.

    alpha, beta: exponents of weight and clustering in the score (beta None -> 1 - alpha).
    cutoff, mode: score threshold (see :func:`threshold`). The default quantile is 0.98, not
        the paper's 0.99: 0.99 keeps 1 % of the output pixels, fewer than 20-50 objects of a
        256x256 scene cover, and dropped up to 14 of ~380 objects in 10 such scenes (sphere,
        SNR 10) where 0.98 dropped none and added no false positive in sparse or SNR-5 scenes.
    pixels_per_peak: a quantile cutoff keeps at least this many output pixels per candidate
        peak (a local maximum with a weight >= ``min_weight`` in its window), so that it does not
        cut through the objects of a crowded frame; 0 gives the paper's fixed quantile.
    min_weight: a detection is kept only if one of the predictions it is refined from has at
        least this weight (on simulated data empty background has none; on real images a
        bright or textured background can weigh more than the objects, and the score cutoff
        is the better filter there). 0.002, not 0.01: the network weighs crowded objects and
        objects unlike the crop less, and at 0.01 it dropped 11 of 140 crowded nuclei and 1-2
        of 12 membrane cells that 0.002 keeps, with no more false detections on noise, on
        simulated crowds or on 12 other datasets of earlier audits (on *coins* one more coin
        and one more false detection).
    radius: half-size in pixels (of the network's input, see the module docstring) of the
        neighbourhood used for peak finding and for refinement; predictions farther than
        ``cluster_radius`` px from a detection do not take part in its refinement.
    crowded_distance: a detection with another one closer than this (px) is crowded:
        some of its pixels see the neighbour too, and their predictions are pulled towards
        it. Its refinement down-weights predictions that are less self-consistent than the
        cluster's median (see :func:`_refine`). None: the network's receptive field
        (``Maps.receptive_field``); 0 turns it off.
    deblend: locate crowded detections again on patches of the image in which their
        neighbours are replaced by background noise (see :mod:`starloc.lodestar.deblend`).
        It needs the image, so :func:`detect` (maps only) ignores it; the detection of
        :mod:`starloc.lodestar.inference`, the CLI and the widget apply it.
    max_consistency: drop detections whose ``consistency`` feature (the weighted variance of
        the predictions they are refined from, px² of the network's input) exceeds this. None:
        keep all. On real images false detections on texture or on a bright background can
        disagree with themselves more than objects like the crop, where their score does not
        set them apart: on scikit-image's *coins* (a model of one 60 px crop, 5 px matching)
        1.6 px² kept all 17 coins found and cut the false detections from 21 to 6, 1.0 px²
        left 1 but found 13 coins. The right value depends on the objects: read it off the
        ``consistency`` column.
    """

    alpha: float = 0.2
    beta: float | None = None
    cutoff: float = 0.98
    mode: str = "quantile"
    pixels_per_peak: float = PIXELS_PER_PEAK
    min_weight: float = 0.002
    radius: float = 4.0
    cluster_radius: float = 2.0
    crowded_distance: float | None = None
    deblend: bool = True
    max_consistency: float | None = None

    def __post_init__(self) -> None:
        if self.max_consistency is not None and not (np.isfinite(self.max_consistency) and self.max_consistency > 0):
            raise InputError(f"detection max_consistency must be a positive number of px² (None: no limit), got "
                             f"{self.max_consistency!r}")
        if not (np.isfinite(self.pixels_per_peak) and self.pixels_per_peak >= 0):
            raise InputError(f"detection pixels_per_peak must be >= 0 (0: a fixed quantile), got {self.pixels_per_peak!r}")
        for name in ("radius", "cluster_radius"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise InputError(f"detection {name} must be a positive number of pixels, got {value!r}")
        if self.crowded_distance is not None and not (np.isfinite(self.crowded_distance) and self.crowded_distance >= 0):
            raise InputError(f"detection crowded_distance must be >= 0 pixels (0: off), got {self.crowded_distance!r}")
        if not np.isfinite(self.min_weight):
            raise InputError(f"detection min_weight must be a finite number, got {self.min_weight!r}")
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if value is not None and not (np.isfinite(value) and value >= 0):
                raise InputError(f"detection {name} must be a number >= 0, got {value!r}")
        if self.mode not in CUTOFF_MODES:
            raise InputError(f"detection mode must be one of {CUTOFF_MODES}, got {self.mode!r}")
        low, high = (0.0, 1.0) if self.mode in ("quantile", "ratio") else (0.0, math.inf)
        if not (np.isfinite(self.cutoff) and low <= self.cutoff <= high):
            within = "[0, 1]" if high == 1 else ">= 0"
            raise InputError(f"a {self.mode} cutoff must lie in {within}, got {self.cutoff!r}")

    def crowding_distance(self, receptive_field: float | None) -> float:
        """``crowded_distance`` in the network's pixels, the receptive field when not set
        (0: no detection is crowded, also when the receptive field is unknown)."""
        distance = receptive_field if self.crowded_distance is None else self.crowded_distance
        return float(distance or 0.0)


@dataclass
class Detections:
    """Detections of a stack: ``frame`` (N,), ``positions`` (N, K) (row, col, ...) and
    per-detection features (score, weight, consistency)."""

    frame: np.ndarray
    positions: np.ndarray
    features: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.frame)

    def inside(self, image_shape: tuple[int, int]) -> Detections:
        """The detections whose (row, col) lies in an ``(H, W)`` image, i.e. within the outer
        edges of its border pixels: ``[-0.5, H - 0.5] x [-0.5, W - 0.5]``."""
        (h, w), row, col = image_shape, self.positions[:, 0], self.positions[:, 1]
        keep = (row >= -0.5) & (row <= h - 0.5) & (col >= -0.5) & (col <= w - 0.5)
        return Detections(self.frame[keep], self.positions[keep], {n: f[keep] for n, f in self.features.items()})


def detect(maps: Maps, params: DetectParams = DetectParams()) -> Detections:
    """Multi-object detection on every frame of ``maps``.

    Peaks of the score map above the threshold, each refined as the weighted mean of the
    predictions that cluster around it (not the raw peak pixel), then duplicates merged.
    Detections outside the image (:meth:`Detections.inside`) are dropped: nothing in the
    frame shows them, and weak models put such ones on the borders.
    Features: ``score`` (score at the peak), ``weight`` (summed weight of the cluster),
    ``consistency`` (weighted variance of the cluster's predictions, px^2 of the network's
    input; small = sure).
    """
    factor, image_shape = maps.downsample, maps.image_shape
    maps = maps.network_view()
    consistency = clustering_map(maps.positions[:, :2])
    scores = _score(maps.weights, consistency, params.alpha, params.beta)
    crowded_distance = params.crowding_distance(maps.receptive_field)
    out = [_detect_frame(maps.positions[t], maps.weights[t], scores[t], consistency[t], maps.stride, params,
                         crowded_distance)
           for t in range(len(scores))]
    frames = np.concatenate([np.full(len(d[0]), t, dtype=np.int64) for t, d in enumerate(out)])
    positions = np.concatenate([d[0] for d in out]) if out else np.zeros((0, 2))
    positions[:, :2] = to_image_coordinates(positions[:, :2], factor)
    names = ("score", "weight", "consistency")
    features = {n: np.concatenate([d[1][n] for d in out]) if out else np.zeros(0) for n in names}
    return Detections(frames, positions, features).inside(image_shape)


def _detect_frame(P, w, score, consistency, stride, params, crowded_distance):
    k = P.shape[0]
    r = max(1, int(round(params.radius / stride)))
    peaks = (score == ndimage.maximum_filter(score, size=2 * r + 1, mode="nearest"))
    # The weight test is on the predictions that form the detection, not on the peak pixel: for
    # objects wider than a few pixels the network weighs their rim, and the score peaks at the
    # centre, where the predictions agree best but the weight can be ~0.005. The window maximum
    # (a necessary condition) only spares refining peaks of empty background.
    peaks &= ndimage.maximum_filter(w, size=2 * r + 1, mode="nearest") >= params.min_weight
    peaks &= score >= threshold(score, params.cutoff, params.mode, int(peaks.sum()), params.pixels_per_peak)
    ii, jj = np.nonzero(peaks)
    if len(ii):
        pos, mass, spread, heaviest = _refine(P, w, ii, jj, r, params.cluster_radius)
        real = heaviest >= params.min_weight
        ii, jj, pos, mass, spread = ii[real], jj[real], pos[real], mass[real], spread[real]
    if len(ii) == 0:
        return np.zeros((0, k)), {n: np.zeros(0) for n in ("score", "weight", "consistency")}
    crowded = _crowded(pos[:, :2], crowded_distance)
    if crowded.any():
        c = np.flatnonzero(crowded)
        pos[c] = _refine(P, w, ii[c], jj[c], r, params.cluster_radius, consistency)[0]
    keep = _merge(pos[:, :2], score[ii, jj], params.cluster_radius)
    if params.max_consistency is not None:
        keep = keep[spread[keep] <= params.max_consistency]
    return pos[keep], {"score": score[ii, jj][keep], "weight": mass[keep], "consistency": spread[keep]}


def _crowded(pos: np.ndarray, distance: float) -> np.ndarray:
    """``(N,)`` True where another of the ``(N, 2)`` positions lies closer than ``distance``."""
    if distance <= 0 or len(pos) < 2:
        return np.zeros(len(pos), dtype=bool)
    nearest, _ = cKDTree(pos).query(pos, k=2)
    return nearest[:, 1] < distance


def _refine(P, w, ii, jj, r, cluster_radius, consistency=None, iterations=3, maps=None):
    """Weighted mean of the predictions in a ``(2r+1)^2`` window that lie near the estimate.

    ``P (K, h, w)``, ``w (h, w)`` (and ``consistency``) are the maps of one frame, or, with
    ``maps`` (the index of each detection's map), a stack ``(n, K, h, w)``, ``(n, h, w)``.

    With a ``consistency`` map (the clustering metric ``c`` of :func:`clustering_map`), a
    prediction's weight is also multiplied by ``min(1, c / c_median)``, ``c_median`` being the
    weighted median of ``c`` over the detection's cluster: pixels that also see a neighbour
    disagree with their own neighbours and count less, while the typical pixels of the
    object keep their weight. On 256x256 scenes of 20-50 objects (SNR 10) this took the
    matched RMSE of objects closer than 16 px to another from 0.19 to 0.09 px (sphere) and
    0.19 to 0.13 px (crescent); applied to isolated objects it cost the ellipse 0.057 ->
    0.071 px, hence only for crowded ones.

    Returns ``(N, K)`` estimates and, per detection, the summed weight of its cluster, the
    weighted variance of the cluster's predictions (px^2) and the largest single weight in it.
    """
    if maps is None:
        P, w, maps = P[None], w[None], np.zeros(len(ii), dtype=np.int64)
        consistency = None if consistency is None else consistency[None]
    _, k, h, wd = P.shape
    off = np.arange(-r, r + 1)
    rows = np.clip(ii[:, None, None] + off[None, :, None], 0, h - 1)
    cols = np.clip(jj[:, None, None] + off[None, None, :], 0, wd - 1)
    inside = ((ii[:, None, None] + off[None, :, None] >= 0) & (ii[:, None, None] + off[None, :, None] < h)
              & (jj[:, None, None] + off[None, None, :] >= 0) & (jj[:, None, None] + off[None, None, :] < wd))
    m = maps[:, None, None]
    cand = P[m, :, rows, cols].reshape(len(ii), -1, k).astype(np.float64)  # (N, M, K)
    cw = (w[m, rows, cols] * inside).reshape(len(ii), -1).astype(np.float64)  # (N, M)
    cc = None if consistency is None else consistency[m, rows, cols].reshape(len(ii), -1)
    est = P[maps, :, ii, jj].astype(np.float64)
    for _ in range(iterations):
        near = np.linalg.norm(cand[..., :2] - est[:, None, :2], axis=-1) <= cluster_radius
        ww = cw * near
        if cc is not None:
            ww = ww * np.minimum(1.0, cc / _weighted_median(cc, ww)[:, None])
        total = ww.sum(axis=1)
        new = (cand * ww[..., None]).sum(axis=1) / np.maximum(total, 1e-12)[:, None]
        est = np.where(total[:, None] > 0, new, est)
    dev = ((cand[..., :2] - est[:, None, :2]) ** 2).sum(-1)
    spread = (dev * ww).sum(1) / np.maximum(total, 1e-12)
    return est, total, spread, (cw * near).max(axis=1, initial=0.0)


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Row-wise weighted median of ``(N, M)`` values (rows without weight give +inf)."""
    order = np.argsort(values, axis=1)
    v = np.take_along_axis(values, order, axis=1)
    cum = np.cumsum(np.take_along_axis(weights, order, axis=1), axis=1)
    half = 0.5 * cum[:, -1:]
    idx = np.minimum((cum < half).sum(axis=1), values.shape[1] - 1)
    return np.where(cum[:, -1] > 0, v[np.arange(len(v)), idx], np.inf)


def _merge(pos: np.ndarray, score: np.ndarray, distance: float) -> np.ndarray:
    """Indices of detections kept after dropping any within ``distance`` px of a higher score."""
    close = cKDTree(pos).query_pairs(distance, output_type="ndarray")
    neighbours: dict[int, list[int]] = {}
    for a, b in close.tolist():
        neighbours.setdefault(a, []).append(b)
        neighbours.setdefault(b, []).append(a)
    dropped = np.zeros(len(pos), dtype=bool)
    for i in np.argsort(-score, kind="stable"):
        if not dropped[i]:
            dropped[neighbours.get(int(i), [])] = True
    return np.flatnonzero(~dropped)


#: a detection that weighs under this part of the heavier half's median weight, and whose
#: predictions disagree by over NOISE_SPREAD times that half's median consistency, looks like
#: background; advice is given when at least NOISE_SHARE of the detections look so
NOISE_WEIGHT, NOISE_SPREAD, NOISE_SHARE = 0.1, 10.0, 0.1


def noise_detections_advice(features: dict[str, np.ndarray], max_consistency: float | None,
                            option: str = "--max-consistency") -> str | None:
    """Advice when many detections look like background rather than objects like the crop:
    they weigh little and their predictions disagree (``consistency`` feature, px² of the
    network's input), where the heavier half of the detections agree. On a 200-frame
    single-particle movie at a moderate SNR, a third of the default detections were such
    (weight 0.009 and consistency 1.0 px² against 0.37 and 0.02 for the particles): the score
    cutoff keeps a fixed share of pixels, and a sparse frame fills it with background peaks.
    The suggested limit is half the consistency that 90 % of them exceed. None when
    ``max_consistency`` is set, with fewer than 10 detections, or when few look like noise."""
    weight, spread = np.asarray(features.get("weight", [])), np.asarray(features.get("consistency", []))
    if max_consistency is not None or len(weight) < 10 or len(spread) != len(weight):
        return None
    heavy = weight >= np.median(weight)
    w_ref, c_ref = float(np.median(weight[heavy])), float(np.median(spread[heavy]))
    noise = (weight < NOISE_WEIGHT * w_ref) & (spread > NOISE_SPREAD * max(c_ref, 1e-6))
    if noise.sum() < max(5, NOISE_SHARE * len(weight)):
        return None
    limit = 0.5 * float(np.percentile(spread[noise], 10))
    return (f"{int(noise.sum())} of {len(weight)} detections weigh less than a tenth of a typical heavy one and "
            f"their predictions disagree (consistency above {NOISE_SPREAD * c_ref:.2g} px², against {c_ref:.2g} for "
            f"the heavier half): they look like background, not objects like the crop. {option} {limit:.2g} drops "
            "them; check the consistency column first")


def to_image_resolution(values: np.ndarray, stride: int, image_shape: tuple[int, int]) -> np.ndarray:
    """Upsample an output-grid map ``(..., h, w)`` to input pixels ``(..., H, W)``.

    Output pixel (i, j) covers input pixels ``[i*stride, (i+1)*stride)``; the pixels the
    network's pooling dropped at odd sizes repeat the nearest edge value.
    """
    up = values.repeat(stride, axis=-2).repeat(stride, axis=-1)
    pad_h, pad_w = image_shape[0] - up.shape[-2], image_shape[1] - up.shape[-1]
    pad = [(0, 0)] * (up.ndim - 2) + [(0, max(pad_h, 0)), (0, max(pad_w, 0))]
    return np.pad(up, pad, mode="edge")[..., : image_shape[0], : image_shape[1]]
