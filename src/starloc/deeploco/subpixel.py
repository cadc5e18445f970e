"""Sub-pixel bias correction ("pixel locking"), measured on simulated frames.

A localizer working on pixelated frames can err by an amount that depends on where the emitter
sits relative to the pixel grid; DeepLoco's fully convolutional network also on where it sits in
its 4x4-pixel cell (each cell owns one candidate). Measured on the models of 3f849ef: the 2D model
errs by ±2-4 nm with the phase, enough to crowd its localizations at pixel centres (chi-square
p < 0.01 on 10-bin histograms of 15 000 positions) though small beside its 11 nm RMSE; the
astigmatic model pulls localizations that have a neighbour within two cells towards the cell
centre by up to 8 nm, and isolated ones hardly at all. Hence two tables, *isolated* and
*crowded* (another localization of the same frame closer than ``crowded_distance``): one table
fitted to both kinds made isolated astigmatic localizations worse.

:func:`fit_correction` measures, per kind and axis, the mean error ``truth - prediction`` as a
function of the *predicted* position's phase in one period of the grid (``period`` nm: the cell,
which also contains the pixel period), in ``bins`` bins smoothed circularly;
:meth:`SubpixelCorrection.apply` adds it back, interpolating linearly between bin centres.
:func:`starloc.deeploco.calibration.calibrate` does both on frames from a simulator (the
training simulator at the end of training): the correction comes from the same forward model as
the network, never from user data.

Coordinates: nm, x along columns, y along rows, origin at the frame's top-left corner (as in
:mod:`starloc.deeploco`); the phase is taken in the coordinates of the frame (or tile) the network
saw, so apply the correction before shifting tile positions into a larger frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from ..errors import InputError
from .postprocess import frame_separated

__all__ = ["SubpixelCorrection", "fit_correction", "nearest_neighbour_distance"]

#: fewest matched localizations of one kind (isolated, crowded) for a table of its own
MIN_KIND = 500


def nearest_neighbour_distance(table: dict[str, np.ndarray]) -> np.ndarray:
    """Distance (nm, lateral) from each localization to the nearest other one of its frame
    (inf when alone)."""
    xy = np.column_stack([np.asarray(table["x"], dtype=np.float64), np.asarray(table["y"], dtype=np.float64)])
    if len(xy) < 2:
        return np.full(len(xy), np.inf)
    reach = 3.0 * np.abs(xy).max() + 1.0  # beyond any two points of one frame
    points = frame_separated(xy, np.asarray(table["frame"]), reach)
    dist, _ = cKDTree(points).query(points, k=2, distance_upper_bound=reach)
    return dist[:, 1]


@dataclass(frozen=True)
class SubpixelCorrection:
    """Offsets (nm) to add to x and y as a function of their phase in ``period`` nm.

    offsets : ``(2, 2, bins)``: kind (0 isolated, 1 crowded) x axis (0 x, 1 y) x phase bin;
        bin ``i`` is centred at phase ``(i + 0.5) * period / bins``.
    crowded_distance : nm; a localization with another one of its frame closer than this is
        crowded.
    """

    period: float
    offsets: np.ndarray
    crowded_distance: float

    def __post_init__(self) -> None:
        off = np.asarray(self.offsets, dtype=np.float64)
        for name in ("period", "crowded_distance"):
            value = getattr(self, name)
            if not (value > 0 and np.isfinite(value)):
                raise InputError(f"sub-pixel correction {name} must be positive, got {value!r}")
        if off.ndim != 3 or off.shape[:2] != (2, 2) or off.shape[2] < 2 or not np.isfinite(off).all():
            raise InputError(f"sub-pixel correction offsets must be a finite (2, 2, bins) array, got {off.shape}")
        object.__setattr__(self, "offsets", off)

    def shift(self, values: np.ndarray, axis: int, crowded: np.ndarray | bool = False) -> np.ndarray:
        """The offset (nm) for positions ``values`` (nm) along ``axis`` (0 = x, 1 = y)."""
        bins = self.offsets.shape[2]
        phase = np.mod(np.asarray(values, dtype=np.float64), self.period) / self.period * bins - 0.5
        lo = np.floor(phase).astype(np.int64)
        frac = phase - lo
        kind = np.broadcast_to(np.asarray(crowded, dtype=np.int64), phase.shape)
        table = self.offsets[:, axis]
        return (1 - frac) * table[kind, lo % bins] + frac * table[kind, (lo + 1) % bins]

    def apply(self, table: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A copy of a localization table (``frame``, ``x``, ``y``, ...) with x and y corrected."""
        crowded = nearest_neighbour_distance(table) < self.crowded_distance
        out = dict(table)
        for axis, name in enumerate(("x", "y")):
            out[name] = table[name] + self.shift(table[name], axis, crowded)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"period": float(self.period), "offsets": self.offsets.tolist(),
                "crowded_distance": float(self.crowded_distance)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SubpixelCorrection:
        return cls(period=float(d["period"]), offsets=np.asarray(d["offsets"], dtype=np.float64),
                   crowded_distance=float(d["crowded_distance"]))


def _fit_table(p: np.ndarray, t: np.ndarray, period: float, bins: int, smooth: float) -> np.ndarray:
    """``(2, bins)`` smoothed mean of ``t - p`` per phase bin of ``p``, per axis."""
    offsets = np.zeros((2, bins))
    for axis in range(2):
        idx = (np.mod(p[:, axis], period) / period * bins).astype(np.int64) % bins
        total = np.bincount(idx, weights=t[:, axis] - p[:, axis], minlength=bins)
        count = np.bincount(idx, minlength=bins).astype(np.float64)
        # smoothing sums and counts separately keeps empty or sparse bins well defined
        total = ndimage.gaussian_filter1d(total, smooth, mode="wrap")
        count = ndimage.gaussian_filter1d(count, smooth, mode="wrap")
        offsets[axis] = total / np.maximum(count, 1e-12)
    return offsets


def fit_correction(predicted: np.ndarray, truth: np.ndarray, period: float, crowded: np.ndarray | None = None,
                   crowded_distance: float = 800.0, bins: int = 32, smooth: float = 1.0) -> SubpixelCorrection:
    """Mean ``truth - predicted`` per phase bin of the predicted position, per kind and axis.

    predicted, truth : ``(N, 2)`` matched (x, y) pairs in nm. crowded : ``(N,)`` bool, which
    predictions had a neighbour closer than ``crowded_distance`` (None: all isolated). A kind
    with fewer than ``MIN_KIND`` pairs gets the table of all pairs. smooth : sigma of the
    circular Gaussian smoothing, in bins.
    """
    p = np.asarray(predicted, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2 or p.shape != t.shape or not len(p):
        raise InputError(f"expected matched (N, 2) positions, got {p.shape} and {t.shape}")
    kind = np.zeros(len(p), dtype=bool) if crowded is None else np.asarray(crowded, dtype=bool)
    every = _fit_table(p, t, period, bins, smooth)
    offsets = np.stack([_fit_table(p[kind == k], t[kind == k], period, bins, smooth)
                        if (kind == k).sum() >= MIN_KIND else every for k in (False, True)])
    return SubpixelCorrection(period=float(period), offsets=offsets, crowded_distance=float(crowded_distance))
