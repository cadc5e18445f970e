"""SMLM Challenge 2016 assessment of a localization table against ground truth.

Coordinates are physical (nm), ``x, y[, z]`` per localization, with frame indices (any
integer convention, the same for both tables). Matching is per frame and one-to-one:

- a prediction and a true emitter may pair only when they are in the same frame, their
  lateral distance ``sqrt(dx² + dy²)`` is <= ``lateral_tol`` and, in 3D, ``|dz|`` <= ``axial_tol``;
- among the allowed pairs the assignment has the largest number of pairs and, among those,
  the smallest sum of *squared lateral* distances (Hungarian algorithm; in 3D ``dz`` is a
  constraint only, as in the challenge's assessment).

Implementation: all candidate pairs within the lateral tolerance are found at once with a
k-d tree (frames embedded as an extra coordinate far apart), the axial test is applied, and the
bipartite graph of allowed pairs is split into connected components. A component with a single
edge is an unambiguous pair (the vast majority at challenge densities) and is matched without
any Python loop; only ambiguous components go through ``linear_sum_assignment``. The optimum of
the whole problem is the union of the per-component optima, so this is exactly the per-frame
Hungarian matching.

Metrics (``assess``), following the challenge (Sage et al., Nat. Methods 2019):

- ``jaccard = TP / (TP + FP + FN)`` as a fraction in [0, 1] (the challenge reports it ×100);
  ``recall``, ``precision``, ``f1``; the zero-division conventions are those of
  :mod:`starloc.metrics` (nothing to be wrong about counts as perfect).
- ``rmse_lateral = sqrt(mean(dx² + dy²))``, ``rmse_axial = sqrt(mean(dz²))``,
  ``rmse_volumetric = sqrt(mean(dx² + dy² + dz²))`` over matched pairs.
- efficiency ``E = 100 - sqrt((100 - 100·jaccard)² + α²·RMSE²)`` with ``α_lat = 1 nm⁻¹``
  (``efficiency_lateral``) and ``α_ax = 0.5 nm⁻¹`` (``efficiency_axial``);
  ``efficiency_3d = (E_lat + E_ax) / 2``. E is in percent-like units, 100 is perfect and it is
  *not* clipped (it goes negative for poor results).
- ``mean_offset``: mean of ``truth - prediction`` per axis over matched pairs (exposes biases).

RMSEs and efficiencies are NaN without matched pairs; axial quantities are NaN for a 2D
assessment (when either table has no z column, the assessment is lateral only and the other
table's z is ignored).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from .errors import InputError
from .metrics import _summary

__all__ = [
    "ALPHA_LATERAL",
    "ALPHA_AXIAL",
    "match_localizations",
    "efficiency",
    "assess",
]

#: Efficiency weights of the SMLM Challenge 2016 (nm⁻¹).
ALPHA_LATERAL = 1.0
ALPHA_AXIAL = 0.5


def _table(frame: Any, xyz: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate one table: int64 frames (N,) and float64 positions (N, 2|3)."""
    xyz = np.asarray(xyz, dtype=np.float64)
    if xyz.ndim == 1 and xyz.size == 0:
        xyz = xyz.reshape(0, 2)
    if xyz.ndim != 2 or xyz.shape[1] not in (2, 3):
        raise InputError(f"{name} positions must have shape (N, 2) or (N, 3) in nm, got {xyz.shape}")
    frame = np.asarray(frame).reshape(-1)
    if len(frame) != len(xyz):
        raise InputError(f"{name}: {len(frame)} frame indices for {len(xyz)} positions")
    if frame.dtype.kind not in "iu":
        as_float = frame.astype(np.float64)
        if len(frame) and not (np.all(np.isfinite(as_float)) and np.all(as_float == np.round(as_float))):
            raise InputError(f"{name}: frame indices must be integers")
    if not np.all(np.isfinite(xyz)):
        raise InputError(f"{name} positions contain NaN or infinite values")
    return frame.astype(np.int64), xyz


def match_localizations(
    pred_frame: Any,
    pred_xyz: Any,
    true_frame: Any,
    true_xyz: Any,
    lateral_tol: float = 100.0,
    axial_tol: float | None = 500.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching per frame (see the module docstring); returns (pred_idx, true_idx).

    Positions are (N, 2) or (N, 3) in nm. The axial constraint applies only when both tables
    are 3D and ``axial_tol`` is not None. Index arrays have equal length and are sorted by
    pred_idx.
    """
    pf, p = _table(pred_frame, pred_xyz, "prediction")
    tf, t = _table(true_frame, true_xyz, "ground truth")
    if not lateral_tol > 0 or not math.isfinite(lateral_tol):
        raise InputError(f"lateral tolerance must be a positive number of nm, got {lateral_tol}")
    if axial_tol is not None and not axial_tol >= 0:
        raise InputError(f"axial tolerance must be >= 0 nm or None, got {axial_tol}")
    empty = np.zeros(0, dtype=np.int64)
    if len(p) == 0 or len(t) == 0:
        return empty, empty.copy()

    # Candidate pairs within the lateral tolerance and the same frame. Frames become a third
    # coordinate spaced 4 tolerances apart: equal frames give exactly equal values (so the
    # distance is the lateral one), different frames are always beyond the tolerance.
    spacing = 4.0 * lateral_tol
    pk = np.column_stack([p[:, :2], pf * spacing])
    tk = np.column_stack([t[:, :2], tf * spacing])
    radius = lateral_tol * (1 + 1e-9) + 1e-9  # a hair wider; the exact test follows
    pairs = cKDTree(pk).sparse_distance_matrix(cKDTree(tk), radius, output_type="ndarray")
    i = pairs["i"].astype(np.int64)
    j = pairs["j"].astype(np.int64)
    same = pf[i] == tf[j]
    i, j = i[same], j[same]
    d2 = np.sum((p[i, :2] - t[j, :2]) ** 2, axis=1)
    allowed = d2 <= lateral_tol**2
    if axial_tol is not None and p.shape[1] == 3 and t.shape[1] == 3:
        allowed &= np.abs(p[i, 2] - t[j, 2]) <= axial_tol
    i, j, d2 = i[allowed], j[allowed], d2[allowed]
    if len(i) == 0:
        return empty, empty.copy()

    # Connected components of the bipartite graph (pred nodes 0..N-1, truth nodes N..N+M-1).
    n = len(p)
    graph = coo_matrix((np.ones(len(i)), (i, j + n)), shape=(n + len(t), n + len(t)))
    _, labels = connected_components(graph, directed=False)
    comp = labels[i]
    edges_per_comp = np.bincount(comp, minlength=labels.max() + 1)
    single = edges_per_comp[comp] == 1
    out_p, out_t = [i[single]], [j[single]]

    # Ambiguous components: Hungarian on squared lateral distance, forbidden pairs cost more
    # than all allowed pairs together so that the number of pairs is maximized first.
    multi = np.flatnonzero(~single)
    if len(multi):
        order = multi[np.argsort(comp[multi], kind="stable")]
        cuts = np.flatnonzero(np.diff(comp[order])) + 1
        for group in np.split(order, cuts):
            gi, gj, gd = i[group], j[group], d2[group]
            ui, li = np.unique(gi, return_inverse=True)
            uj, lj = np.unique(gj, return_inverse=True)
            forbidden = 1.0 + gd.sum()
            cost = np.full((len(ui), len(uj)), forbidden)
            cost[li, lj] = gd
            ok = np.zeros_like(cost, dtype=bool)
            ok[li, lj] = True
            rows, cols = linear_sum_assignment(cost)
            keep = ok[rows, cols]
            out_p.append(ui[rows[keep]])
            out_t.append(uj[cols[keep]])
    pred_idx, true_idx = np.concatenate(out_p), np.concatenate(out_t)
    order = np.argsort(pred_idx, kind="stable")
    return pred_idx[order], true_idx[order]


def efficiency(jaccard: float, rmse: float, alpha: float) -> float:
    """Challenge efficiency ``100 - sqrt((100 - 100·jaccard)² + alpha²·rmse²)``.

    ``jaccard`` is a fraction in [0, 1], ``rmse`` in nm, ``alpha`` in nm⁻¹ (1 lateral, 0.5
    axial). NaN when ``rmse`` is NaN (no matched pairs). Not clipped.
    """
    if math.isnan(rmse):
        return float("nan")
    return 100.0 - math.hypot(100.0 - 100.0 * jaccard, alpha * rmse)


def assess(
    pred_frame: Any,
    pred_xyz: Any,
    true_frame: Any,
    true_xyz: Any,
    lateral_tol: float = 100.0,
    axial_tol: float | None = 500.0,
) -> dict:
    """Assess predicted localizations against ground truth as the SMLM Challenge 2016.

    ``pred_frame`` (N,), ``pred_xyz`` (N, 2|3) nm, ``true_frame`` (M,), ``true_xyz`` (M, 2|3)
    nm; frames in the same convention for both. Tolerances in nm: lateral (challenge 250 nm,
    DeepLoco paper 50/100 nm) and axial (500 nm; 3D only, None disables it).

    Returns a dict: ``dim`` (2 or 3), ``tp``, ``fp``, ``fn`` (ints), ``jaccard`` (fraction;
    ×100 for the challenge's JAC), ``recall``, ``precision``, ``f1``, ``rmse_lateral``,
    ``rmse_axial``, ``rmse_volumetric`` (nm), ``efficiency_lateral``, ``efficiency_axial``,
    ``efficiency_3d``, ``mean_offset`` (float array (dim,), truth - prediction, nm),
    ``lateral_tol``, ``axial_tol``. See the module docstring for definitions and NaN rules.
    """
    pf, p = _table(pred_frame, pred_xyz, "prediction")
    tf, t = _table(true_frame, true_xyz, "ground truth")
    dim = 3 if (p.shape[1] == 3 and t.shape[1] == 3) else 2
    pred_idx, true_idx = match_localizations(pf, p, tf, t, lateral_tol, axial_tol)
    diff = t[true_idx, :dim] - p[pred_idx, :dim]  # truth - prediction

    summary = _summary(len(p), len(t), diff)
    tp = int(summary["tp"])
    nan = float("nan")
    lateral_sq = np.sum(diff[:, :2] ** 2, axis=1)
    rmse_lat = float(np.sqrt(lateral_sq.mean())) if tp else nan
    if dim == 3 and tp:
        rmse_ax = float(np.sqrt(np.mean(diff[:, 2] ** 2)))
        rmse_vol = float(np.sqrt(np.mean(lateral_sq + diff[:, 2] ** 2)))
    else:
        rmse_ax = rmse_vol = nan
    jac = float(summary["jaccard"])
    e_lat = efficiency(jac, rmse_lat, ALPHA_LATERAL)
    e_ax = efficiency(jac, rmse_ax, ALPHA_AXIAL)
    return {
        "dim": dim,
        "tp": tp,
        "fp": int(summary["fp"]),
        "fn": int(summary["fn"]),
        "jaccard": jac,
        "recall": float(summary["recall"]),
        "precision": float(summary["precision"]),
        "f1": float(summary["f1"]),
        "rmse_lateral": rmse_lat,
        "rmse_axial": rmse_ax,
        "rmse_volumetric": rmse_vol,
        "efficiency_lateral": e_lat,
        "efficiency_axial": e_ax,
        "efficiency_3d": (e_lat + e_ax) / 2 if dim == 3 else nan,
        "mean_offset": np.asarray(summary["mean_offset"], dtype=np.float64),
        "lateral_tol": float(lateral_tol),
        "axial_tol": None if axial_tol is None else float(axial_tol),
    }
