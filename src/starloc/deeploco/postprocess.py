"""From DeepLoco's K weighted candidates per frame to a table of localizations (paper §6).

1. Drop candidates with weight ``< min_weight`` (1e-3).
2. Link candidates of the same frame closer than ``link_distance`` nm (Euclidean, z multiplied by
   ``z_scale``) and take connected components of that graph (all frames at once: one sparse graph
   over ``B * K`` nodes, ``scipy.sparse.csgraph.connected_components``).
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

from ..errors import InputError

__all__ = ["postprocess", "empty_table", "COLUMNS"]

COLUMNS = ("x", "y", "z")


def empty_table(dim: int) -> dict[str, np.ndarray]:
    table = {"frame": np.zeros(0, dtype=np.int64)}
    for name in COLUMNS[:dim]:
        table[name] = np.zeros(0, dtype=np.float64)
    table["confidence"] = np.zeros(0, dtype=np.float64)
    return table


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
    scaled = pos.copy()
    if D == 3:
        scaled[..., 2] *= z_scale
    # Pairwise links within each frame (B, K, K); candidate node id = b * K + k.
    d2 = np.square(scaled[:, :, None, :] - scaled[:, None, :, :]).sum(-1)
    linked = (d2 < float(link_distance) ** 2) & keep[:, :, None] & keep[:, None, :]
    b, i, j = np.nonzero(linked)
    n = B * K
    graph = coo_matrix((np.ones(len(b), dtype=np.int8), (b * K + i, b * K + j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    nodes = np.flatnonzero(keep.reshape(-1))
    lab = labels[nodes]
    uniq, comp = np.unique(lab, return_inverse=True)
    wn = w.reshape(-1)[nodes]
    conf = np.bincount(comp, weights=wn, minlength=len(uniq))
    flat = pos.reshape(-1, D)[nodes]
    centre = np.stack([np.bincount(comp, weights=wn * flat[:, d], minlength=len(uniq)) for d in range(D)], 1)
    centre /= conf[:, None]
    frame = np.zeros(len(uniq), dtype=np.int64)
    frame[comp] = nodes // K  # every node of a component is in the same frame
    good = conf >= threshold
    frame, centre, conf = frame[good], centre[good], conf[good]
    order = np.lexsort((centre[:, 0], frame))
    table = {"frame": frame[order] + int(frame_offset)}
    for d, name in enumerate(COLUMNS[:D]):
        table[name] = centre[order, d]
    table["confidence"] = conf[order]
    return table
