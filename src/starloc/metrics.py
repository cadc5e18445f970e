"""Detection and localization metrics: one-to-one matching, RMSE, precision/recall/F1.

Positions are arrays (N, D) with D = 2 (row, col) or 3, in px (or any common unit; the
tolerance is in the same unit).

Zero-division conventions (nothing to be wrong about counts as perfect):
precision = 1 without predictions, recall = 1 without truth, f1 = 2 tp / (2 tp + fp + fn)
and jaccard = tp / (tp + fp + fn) are 1 when there is neither; rmse and mean_offset are NaN
without matched pairs.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist


def _pair(pred, truth) -> tuple[np.ndarray, np.ndarray]:
    """Both position sets as float (N, D) arrays; an empty one takes the other's D (else 2)."""
    pred, truth = np.asarray(pred, dtype=float), np.asarray(truth, dtype=float)
    if any(points.size and points.ndim != 2 for points in (pred, truth)):
        raise ValueError(f"expected positions of shape (N, D), got {pred.shape} and {truth.shape}")
    dims = {points.shape[1] for points in (pred, truth) if points.size}
    if len(dims) > 1:
        raise ValueError(f"pred and truth differ in dimension: {pred.shape} vs {truth.shape}")
    shaped = [points for points in (pred, truth) if points.ndim == 2]
    dim = dims.pop() if dims else (shaped[0].shape[1] if shaped else 2)
    return pred.reshape(-1, dim), truth.reshape(-1, dim)


def match(pred, truth, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of predictions to true positions within `tolerance`.

    Among the pairs with Euclidean distance <= tolerance, the assignment has the largest
    number of pairs and, among those, the smallest total distance (Hungarian algorithm,
    scipy.optimize.linear_sum_assignment). Returns index arrays (pred_idx, truth_idx) of
    equal length, sorted by pred_idx.
    """
    pred, truth = _pair(pred, truth)
    distance = cdist(pred, truth)
    allowed = distance <= tolerance
    # Any forbidden pair costs more than all allowed pairs together, so the number of
    # allowed pairs is maximized first.
    forbidden_cost = 1.0 + distance[allowed].sum()
    rows, cols = linear_sum_assignment(np.where(allowed, distance, forbidden_cost))
    keep = allowed[rows, cols]
    return rows[keep], cols[keep]


def rmse_per_axis(pred, truth) -> float:
    """Per-axis RMSE sqrt(mean(|pred - truth|^2 / D)) of paired positions (N, D); NaN if N = 0."""
    pred, truth = _pair(pred, truth)
    if pred.shape != truth.shape:
        raise ValueError(f"pred {pred.shape} and truth {truth.shape} must be paired")
    if len(pred) == 0:
        return float("nan")
    return float(np.sqrt(np.mean(np.sum((pred - truth) ** 2, axis=-1) / pred.shape[1])))


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 1.0


def _summary(n_pred: int, n_truth: int, differences: np.ndarray) -> dict:
    """Metrics from counts and the (truth - pred) differences (tp, D) of matched pairs."""
    tp = len(differences)
    fp, fn = n_pred - tp, n_truth - tp
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "jaccard": _ratio(tp, tp + fp + fn),
        "rmse": rmse_per_axis(np.zeros_like(differences), differences),
        "mean_offset": differences.mean(axis=0) if tp else np.full(differences.shape[1], np.nan),
    }


def detection_metrics(pred, truth, tolerance: float) -> dict:
    """Match pred (N, D) to truth (M, D) within tolerance (see `match`) and score the result.

    Returns a dict: tp, fp, fn (ints); precision, recall, f1, jaccard (floats, conventions in
    the module docstring); rmse (per-axis RMSE over matched pairs); mean_offset (D,), the mean
    of truth - pred over matched pairs.
    """
    pred, truth = _pair(pred, truth)
    pred_idx, truth_idx = match(pred, truth, tolerance)
    return _summary(len(pred), len(truth), truth[truth_idx] - pred[pred_idx])


def detection_metrics_frames(pred_frames, pred, truth_frames, truth, tolerance: float) -> dict:
    """Like `detection_metrics` for time-lapses: matching only within the same frame.

    pred_frames (N,) and truth_frames (M,) are the frame indices of the positions pred (N, D)
    and truth (M, D). Counts and matched pairs are pooled over all frames.
    """
    pred, truth = _pair(pred, truth)
    pred_frames = np.asarray(pred_frames).reshape(-1)
    truth_frames = np.asarray(truth_frames).reshape(-1)
    if len(pred_frames) != len(pred) or len(truth_frames) != len(truth):
        raise ValueError("need one frame index per position")
    differences = [np.empty((0, pred.shape[1]))]
    for frame in np.union1d(pred_frames, truth_frames):
        in_pred, in_truth = pred[pred_frames == frame], truth[truth_frames == frame]
        pred_idx, truth_idx = match(in_pred, in_truth, tolerance)
        differences.append(in_truth[truth_idx] - in_pred[pred_idx])
    return _summary(len(pred), len(truth), np.concatenate(differences))
