"""From DeepLoco's K weighted candidates per frame to a table of localizations (paper §6).

1. Drop candidates with weight ``< min_weight`` (1e-3).
2. Link candidates of the same frame closer than ``link_distance`` nm (Euclidean, z multiplied by
   ``z_scale``) and take connected components of that graph (all frames at once: pairs from one
   k-d tree over the kept candidates, ``scipy.sparse.csgraph.connected_components``).
3. Each component -> weight-averaged position; its summed weight is the confidence.
4. Keep components with confidence ``>= threshold`` (0.3).

The table is a dict of numpy arrays: ``frame`` (int64, 0-based), ``x``, ``y`` [, ``z``] (nm),
``confidence``; rows sorted by frame then x. Given the candidates' predicted errors (a
network's error head, nm per axis), also ``uncertainty`` (lateral: the per-axis standard
deviation ``sqrt((s_x² + s_y²) / 2)``) and for 3D ``uncertainty_z`` (nm), each the square
root of the weight-averaged variance of the component's candidates.

For the fully convolutional networks, whose candidates come one per cell of a grid and lie
within ``offset_range`` cells of their cell's centre, ``cells=`` (:class:`CellGrid`) makes step
2 compare each candidate only with those of the cells within reach and find the components by
label propagation over the grid, in torch on the candidates' device: the same links, the same
table (to float rounding), 2-5x faster on a CPU than the k-d tree and without leaving the GPU.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from ..errors import InputError
from .network import CELL

__all__ = ["postprocess", "empty_table", "concat_tables", "sorted_by_frame", "frame_separated", "COLUMNS",
           "CellGrid", "cell_grid"]

COLUMNS = ("x", "y", "z")
#: the table's error columns (lateral, axial), nm, from a network with an error head
UNCERTAINTY = ("uncertainty", "uncertainty_z")


def empty_table(dim: int, uncertainty: bool = False) -> dict[str, np.ndarray]:
    table = {"frame": np.zeros(0, dtype=np.int64)}
    for name in (*COLUMNS[:dim], "confidence", *(UNCERTAINTY[:dim - 1] if uncertainty else ())):
        table[name] = np.zeros(0, dtype=np.float64)
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


class CellGrid(NamedTuple):
    """Layout of a fully convolutional network's candidates: ``rows x cols`` cells of
    ``cell_nm`` nm, candidate ``k`` in cell ``(k // cols, k % cols)``, each within
    ``offset_range`` cells of its cell's centre along x and y."""

    rows: int
    cols: int
    cell_nm: float
    offset_range: float


def cell_grid(config: Any, frame_shape: tuple[int, int]) -> CellGrid | None:
    """The :class:`CellGrid` of a network ``config`` on frames (tiles) of ``frame_shape`` (H, W)
    px; None for networks without cells (``"paper"``)."""
    if not getattr(config, "cellular", False):
        return None
    H, W = (int(v) for v in frame_shape)
    return CellGrid(H // CELL, W // CELL, CELL * float(config.pixel_size), float(config.offset_range))


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
    cells: CellGrid | None = None,
    errors: Any = None,
) -> dict[str, np.ndarray]:
    """Localization table from candidates ``positions (B, K, D)`` nm and ``weights (B, K)``
    (torch tensors or arrays); ``frame`` = batch index + ``frame_offset``. ``cells``: the
    candidates' grid (:func:`cell_grid`), for the faster grid linking (see the module docstring).
    ``errors``: the candidates' predicted errors ``(B, K, D)`` nm, for the uncertainty columns."""
    if cells is not None:
        return _postprocess_cells(torch.as_tensor(positions), torch.as_tensor(weights), cells,
                                  float(link_distance), float(threshold), float(z_scale), float(min_weight),
                                  int(frame_offset), None if errors is None else torch.as_tensor(errors))
    pos = _numpy(positions)
    w = _numpy(weights)
    if pos.ndim != 3 or pos.shape[-1] not in (2, 3) or w.shape != pos.shape[:2]:
        raise InputError(f"expected positions (B, K, 2|3) and weights (B, K), got {pos.shape}, {w.shape}")
    B, K, D = pos.shape
    err = None if errors is None else _numpy(errors)
    if err is not None and err.shape != pos.shape:
        raise InputError(f"errors {err.shape} do not match the positions {pos.shape}")
    keep = (w >= min_weight) & np.isfinite(w) & np.isfinite(pos).all(-1)
    if not keep.any():
        return empty_table(D, err is not None)
    b, k = np.nonzero(keep)
    wn = w[b, k]
    flat = pos[b, k]
    scaled = flat.copy()
    if D == 3:
        scaled[:, 2] *= z_scale
    if err is not None:  # averaged with the positions: as variances, (x, y) pooled into one lateral one
        flat = np.concatenate([flat, _variances(err[b, k])], 1)
    # links between kept candidates of the same frame closer than link_distance
    tree = cKDTree(frame_separated(scaled, b, link_distance))
    pairs = tree.query_pairs(float(link_distance), p=2.0, output_type="ndarray")
    n = len(b)
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    n_comp = int(comp.max()) + 1
    conf = np.bincount(comp, weights=wn, minlength=n_comp)
    centre = np.stack([np.bincount(comp, weights=wn * flat[:, d], minlength=n_comp)
                       for d in range(flat.shape[1])], 1)
    centre /= conf[:, None]
    frame = np.zeros(n_comp, dtype=np.int64)
    frame[comp] = b  # every node of a component is in the same frame
    good = conf >= threshold
    return _table(frame[good], centre[good], conf[good], frame_offset, dim=D)


def _variances(errors: Any) -> Any:
    """``(N, D)`` errors (s_x, s_y[, s_z]) -> ``(N, D - 1)`` variances: lateral
    ``(s_x² + s_y²) / 2`` [, axial ``s_z²``] (numpy or torch)."""
    sq = errors**2
    lateral = (sq[:, 0:1] + sq[:, 1:2]) / 2
    return np.concatenate([lateral, sq[:, 2:]], 1) if isinstance(sq, np.ndarray) else torch.cat([lateral, sq[:, 2:]], 1)


def _table(frame: np.ndarray, centre: np.ndarray, confidence: np.ndarray, frame_offset: int,
           order: np.ndarray | None = None, dim: int | None = None) -> dict[str, np.ndarray]:
    """The localization table of components (frame, ``centre (N, D)`` nm, confidence), rows
    sorted by frame then x (``order``: that order, if known). ``centre`` may carry ``dim - 1``
    more columns, the components' mean error variances (lateral[, axial]): they become the
    uncertainty columns (their square roots)."""
    dim = centre.shape[1] if dim is None else dim
    if order is None:
        order = np.lexsort((centre[:, 0], frame))
    table = {"frame": frame[order] + int(frame_offset)}
    for d, name in enumerate(COLUMNS[:dim]):
        table[name] = centre[order, d]
    table["confidence"] = confidence[order]
    for d, name in enumerate(UNCERTAINTY[:centre.shape[1] - dim]):
        table[name] = np.sqrt(centre[order, dim + d])
    return table


def _grid_links(s: torch.Tensor, keep: torch.Tensor, reach: int, link_distance: float) -> list[tuple]:
    """``(a, b, linked)``: for each cell offset within ``reach`` (half of them: links are
    symmetric), the slices ``a`` and ``b`` of the (B, rows, cols) grid it pairs and which pairs
    are linked (both kept, Euclidean distance of the scaled positions ``s`` <= link_distance)."""
    _, h, w = keep.shape
    links = []
    for dy in range(0, min(reach, h - 1) + 1):
        for dx in range(-min(reach, w - 1), min(reach, w - 1) + 1):
            if dy == 0 and dx <= 0:
                continue
            a = (slice(None), slice(0, h - dy), slice(max(0, -dx), w - max(0, dx)))
            b = (slice(None), slice(dy, h), slice(max(0, dx), w + min(0, dx)))
            linked = keep[a] & keep[b] & (torch.linalg.vector_norm(s[a] - s[b], dim=-1) <= link_distance)
            if bool(linked.any()):
                links.append((a, b, linked))
    return links


def _grid_components(keep: torch.Tensor, links: list[tuple]) -> torch.Tensor:
    """Per cell (B, rows, cols): the smallest flat cell index of its connected component
    (label propagation along the links, with pointer jumping); ``rows * cols`` where not kept."""
    B, h, w = keep.shape
    none = h * w
    index = torch.arange(none, device=keep.device).view(1, h, w).expand(B, h, w)
    labels = torch.where(keep, index, torch.full_like(index, none))
    while True:
        new = labels.clone()
        for a, b, linked in links:
            m = torch.where(linked, torch.minimum(labels[a], labels[b]), none)
            new[a] = torch.minimum(new[a], m)
            new[b] = torch.minimum(new[b], m)
        flat = new.view(B, none)
        # a component's smallest index labels itself, so a label's label is as valid and smaller
        new = torch.where(flat < none, flat.gather(1, flat.clamp(max=none - 1)), flat).view(B, h, w)
        if torch.equal(new, labels):
            return labels
        labels = new


def _postprocess_cells(positions: torch.Tensor, weights: torch.Tensor, cells: CellGrid, link_distance: float,
                       threshold: float, z_scale: float, min_weight: float,
                       frame_offset: int, errors: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """:func:`postprocess` for candidates on a :class:`CellGrid` (float64, on their device)."""
    h, w = int(cells.rows), int(cells.cols)
    if positions.ndim != 3 or positions.shape[-1] not in (2, 3) or positions.shape[1] != h * w \
            or tuple(weights.shape) != tuple(positions.shape[:2]):
        raise InputError(f"expected positions (B, {h * w}, 2|3) and weights (B, {h * w}) for a {h}x{w} cell grid, "
                         f"got {tuple(positions.shape)}, {tuple(weights.shape)}")
    B, _, D = positions.shape
    if errors is not None and tuple(errors.shape) != tuple(positions.shape):
        raise InputError(f"errors {tuple(errors.shape)} do not match the positions {tuple(positions.shape)}")
    pos = positions.detach().to(torch.float64).reshape(B, h, w, D)
    wt = weights.detach().to(torch.float64).reshape(B, h, w)
    keep = (wt >= min_weight) & torch.isfinite(wt) & torch.isfinite(pos).all(-1)
    if not bool(keep.any()):
        return empty_table(D, errors is not None)
    scaled = pos * torch.tensor([1.0, 1.0, z_scale][:D], dtype=torch.float64, device=pos.device)
    # two linked candidates' cells are at most link + 2 * offset_range cells apart along an axis
    reach = int(math.floor(link_distance / cells.cell_nm + 2.0 * cells.offset_range))
    labels = _grid_components(keep, _grid_links(scaled, keep, reach, link_distance))
    none = h * w
    frame_base = torch.arange(B, device=pos.device).view(B, 1, 1) * none
    comp = (frame_base + labels)[keep]
    wk = wt[keep]
    zeros = dict(dtype=torch.float64, device=pos.device)
    conf = torch.zeros(B * none, **zeros).index_add_(0, comp, wk)
    values = pos[keep]
    if errors is not None:  # averaged with the positions, as variances (see _variances)
        err = errors.detach().to(torch.float64).reshape(B, h, w, D)[keep]
        values = torch.cat([values, _variances(err)], 1)
    total = torch.zeros(B * none, values.shape[1], **zeros).index_add_(0, comp, wk[:, None] * values)
    index = torch.arange(none, device=pos.device).view(1, h, w)
    root = (frame_base + index)[keep & (labels == index)]  # one per component
    root = root[conf[root] >= threshold]
    centre = total[root] / conf[root][:, None]
    frame = root // none
    # frame then x, as np.lexsort would order them, sorted on the device (a GPU's sort is fast)
    order = torch.argsort(centre[:, 0], stable=True)
    order = order[torch.argsort(frame[order], stable=True)]
    return _table(frame.cpu().numpy().astype(np.int64), centre.cpu().numpy(), conf[root].cpu().numpy(),
                  frame_offset, order.cpu().numpy(), dim=D)
