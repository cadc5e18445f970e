"""From DeepLoco's K weighted candidates per frame to a table of localizations (paper §6).

1. Drop candidates with weight ``< min_weight`` (1e-3).
2. Link candidates of the same frame closer than ``link_distance`` nm (Euclidean, z multiplied by
   ``z_scale``) and take connected components of that graph (all frames at once: pairs from one
   k-d tree over the kept candidates, ``scipy.sparse.csgraph.connected_components``).
3. Each component -> weight-averaged position; its summed weight is the confidence.
4. Keep components with confidence ``>= threshold`` (0.3).

The table is a dict of numpy arrays: ``frame`` (int64, 0-based), ``x``, ``y`` [, ``z``] (nm),
``confidence``; rows sorted by frame then x.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from ..errors import InputError

__all__ = ["postprocess", "empty_table", "concat_tables", "sorted_by_frame", "frame_separated", "COLUMNS"]

COLUMNS = ("x", "y", "z")


def empty_table(dim: int) -> dict[str, np.ndarray]:
    table = {"frame": np.zeros(0, dtype=np.int64)}
    for name in COLUMNS[:dim]:
        table[name] = np.zeros(0, dtype=np.float64)
    table["confidence"] = np.zeros(0, dtype=np.float64)
    return table


def concat_tables(tables: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One table from a non-empty list of tables with the same columns, rows in list order."""
    return {key: np.concatenate([t[key] for t in tables]) for key in tables[0]}


def sorted_by_frame(table: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The table's rows ordered by frame, then x: the order of every table starloc returns."""
    order = np.lexsort((table["x"], table["frame"]))
    return {key: v[order] for key, v in table.items()}


def frame_separated(points: np.ndarray, frame: np.ndarray, reach: float) -> np.ndarray:
    """``(N, D + 1)``: ``points (N, D)`` with one more coordinate, ``frame`` times a spacing so
    large that points of different frames are always more than ``reach`` apart. One k-d tree
    over the result answers neighbour queries within ``reach`` for every frame at once."""
    spacing = 4.0 * (np.abs(points).max() + float(reach)) + 1.0
    return np.column_stack([points, frame * spacing])


def _numpy(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def postprocess(
    positions: Any,
    weights: Any,
    link_distance: float = 100.0,
    threshold: float = 0.3,
    z_scale: float = 0.2,
    min_weight: float = 1e-3,
    frame_offset: int = 0,
) -> dict[str, np.ndarray]:
    """Localization table from candidates ``positions (B, K, D)`` nm and ``weights (B, K)``
    (torch tensors or arrays); ``frame`` = batch index + ``frame_offset``."""
    pos = _numpy(positions)
    w = _numpy(weights)
    if pos.ndim != 3 or pos.shape[-1] not in (2, 3) or w.shape != pos.shape[:2]:
        raise InputError(f"expected positions (B, K, 2|3) and weights (B, K), got {pos.shape}, {w.shape}")
    B, K, D = pos.shape
    keep = (w >= min_weight) & np.isfinite(w) & np.isfinite(pos).all(-1)
    if not keep.any():
        return empty_table(D)
    b, k = np.nonzero(keep)
    wn = w[b, k]
    flat = pos[b, k]
    scaled = flat.copy()
    if D == 3:
        scaled[:, 2] *= z_scale
    # links between kept candidates of the same frame closer than link_distance
    tree = cKDTree(frame_separated(scaled, b, link_distance))
    pairs = tree.query_pairs(float(link_distance), p=2.0, output_type="ndarray")
    n = len(b)
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    n_comp = int(comp.max()) + 1
    conf = np.bincount(comp, weights=wn, minlength=n_comp)
    centre = np.stack([np.bincount(comp, weights=wn * flat[:, d], minlength=n_comp) for d in range(D)], 1)
    centre /= conf[:, None]
    frame = np.zeros(n_comp, dtype=np.int64)
    frame[comp] = b  # every node of a component is in the same frame
    good = conf >= threshold
    frame, centre, conf = frame[good], centre[good], conf[good]
    order = np.lexsort((centre[:, 0], frame))
    table = {"frame": frame[order] + int(frame_offset)}
    for d, name in enumerate(COLUMNS[:D]):
        table[name] = centre[order, d]
    table["confidence"] = conf[order]
    return table
