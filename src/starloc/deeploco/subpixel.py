"""Sub-pixel and axial bias correction ("pixel locking", z pulled towards focus), measured on
simulated frames.

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

The axial table (3D models) is the mean error ``truth - prediction`` in z as a function of the
*predicted* z, per kind, in ``z_bins`` bins over the model's z range. What it corrects: where
emitters overlap, the network pulls z towards the middle of the range, more the denser the frame;
detection then favours one side of focus, so the mean axial offset of the matched localizations
drifts with density. Measured on a wide GPU-trained astigmatic model: +3.5 nm for isolated and
+6.6 nm for crowded localizations of its training frames, and +0.7 / 2.1 / 6.2 / 9.8 nm on the
benchmark's frames at 0.1 / 0.5 / 1 / 2 emitters/µm² (−2.3 / −2.4 / 0.9 / 3.7 nm with the table).
Isolated localizations of sparse frames are not those of dense ones (the network sees their
neighbourhood), so a third row, *sparse*, serves isolated localizations of frames (or tiles) with
fewer than ``SPARSE_DENSITY`` localizations per µm²; the caller says how large its frames are.

Coordinates: nm, x along columns, y along rows, origin at the frame's top-left corner (as in
:mod:`starloc.deeploco`); the phase is taken in the coordinates of the frame (or tile) the network
saw, so apply the correction before shifting tile positions into a larger frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import InputError

__all__ = ["SPARSE_DENSITY", "SubpixelCorrection", "crowded_mask", "fit_correction", "frame_density"]

#: fewest matched localizations of one kind (isolated, crowded, sparse) for a table of its own
MIN_KIND = 500
#: localizations per µm² of a frame (or tile) below which its isolated localizations are *sparse*
SPARSE_DENSITY = 0.3


def crowded_mask(table: dict[str, np.ndarray], distance: float) -> np.ndarray:
    """``(N,)`` bool: which localizations have another one of their frame closer than
    ``distance`` nm (lateral: x, y).

    A sweep over the rows in frame-then-x order (the order of every table starloc returns;
    others are sorted first): row ``i`` is compared with row ``i + j`` for ``j = 1, 2, ...``
    until no pair ``j`` rows apart shares a frame within ``distance`` in x. The work grows with
    the number of rows within ``distance`` in x of each other, not with the table squared; on
    4096 frames with 70 localizations each it takes a quarter of the time of a k-d tree."""
    frame = np.asarray(table["frame"])
    x = np.asarray(table["x"], dtype=np.float64)
    y = np.asarray(table["y"], dtype=np.float64)
    n = len(x)
    step = np.diff(frame)
    ordered = bool(np.all((step > 0) | ((step == 0) & (np.diff(x) >= 0))))
    order = slice(None) if ordered else np.lexsort((x, frame))
    f, xs, ys = frame[order], x[order], y[order]
    found = np.zeros(n, dtype=bool)
    limit = float(distance) ** 2
    for j in range(1, n):
        dx = xs[j:] - xs[:-j]
        near = (f[j:] == f[:-j]) & (dx < distance)  # false for every larger j once false
        if not near.any():
            break
        close = near & (dx * dx + (ys[j:] - ys[:-j]) ** 2 < limit)
        found[:-j] |= close
        found[j:] |= close
    if ordered:
        return found
    out = np.empty(n, dtype=bool)
    out[order] = found
    return out


@dataclass(frozen=True)
class SubpixelCorrection:
    """Offsets (nm) to add to x and y as a function of their phase in ``period`` nm, and
    optionally to z as a function of z.

    offsets : ``(2, 2, bins)``: kind (0 isolated, 1 crowded) x axis (0 x, 1 y) x phase bin;
        bin ``i`` is centred at phase ``(i + 0.5) * period / bins``.
    crowded_distance : nm; a localization with another one of its frame closer than this is
        crowded.
    axial : ``(2, z_bins)``, ``(3, z_bins)`` or None: kind x z bin, bin ``i`` centred at
        ``lo + (i + 0.5) * (hi - lo) / z_bins`` of ``z_range = (lo, hi)`` nm; constant beyond the
        first and last centres. A third row is for *sparse* localizations: isolated ones in a
        frame (or tile) with fewer than ``sparse_density`` localizations per µm² (the lateral
        tables treat them as isolated).
    sparse_density : localizations per µm²; needed with a three-row axial table.
    """

    period: float
    offsets: np.ndarray
    crowded_distance: float
    axial: np.ndarray | None = None
    z_range: tuple[float, float] | None = None
    sparse_density: float | None = None

    def __post_init__(self) -> None:
        off = np.asarray(self.offsets, dtype=np.float64)
        for name in ("period", "crowded_distance"):
            value = getattr(self, name)
            if not (value > 0 and np.isfinite(value)):
                raise InputError(f"sub-pixel correction {name} must be positive, got {value!r}")
        if off.ndim != 3 or off.shape[:2] != (2, 2) or off.shape[2] < 2 or not np.isfinite(off).all():
            raise InputError(f"sub-pixel correction offsets must be a finite (2, 2, bins) array, got {off.shape}")
        object.__setattr__(self, "offsets", off)
        if self.axial is None:
            object.__setattr__(self, "z_range", None)
            return
        ax = np.asarray(self.axial, dtype=np.float64)
        if ax.ndim != 2 or ax.shape[0] not in (2, 3) or ax.shape[1] < 2 or not np.isfinite(ax).all():
            raise InputError(f"axial correction must be a finite (2, bins) or (3, bins) array, got {ax.shape}")
        if ax.shape[0] == 3 and not (self.sparse_density is not None and 0 < self.sparse_density < np.inf):
            raise InputError(f"a three-kind axial correction needs a positive sparse_density, got "
                             f"{self.sparse_density!r}")
        lo, hi = (float(v) for v in (self.z_range or (np.nan, np.nan)))
        if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
            raise InputError(f"axial correction needs a z_range (low, high) nm, got {self.z_range!r}")
        object.__setattr__(self, "axial", ax)
        object.__setattr__(self, "z_range", (lo, hi))

    def shift_z(self, z: np.ndarray, kind: np.ndarray | bool | int = 0) -> np.ndarray:
        """The offset (nm) for axial positions ``z`` (nm) of localizations of ``kind`` (0 or False:
        isolated, 1 or True: crowded, 2: sparse; sparse is isolated without a third row); zero
        without an axial table."""
        z = np.asarray(z, dtype=np.float64)
        if self.axial is None:
            return np.zeros_like(z)
        lo, hi = self.z_range
        rows, bins = self.axial.shape
        centres = lo + (np.arange(bins) + 0.5) * (hi - lo) / bins
        kind = np.broadcast_to(np.asarray(kind, dtype=np.int64), z.shape)
        kind = np.where(kind < rows, kind, 0)
        return np.choose(kind, [np.interp(z, centres, row) for row in self.axial])

    def shift(self, values: np.ndarray, axis: int, crowded: np.ndarray | bool = False) -> np.ndarray:
        """The offset (nm) for positions ``values`` (nm) along ``axis`` (0 = x, 1 = y)."""
        bins = self.offsets.shape[2]
        phase = np.mod(np.asarray(values, dtype=np.float64), self.period) / self.period * bins - 0.5
        lo = np.floor(phase).astype(np.int64)
        frac = phase - lo
        kind = np.broadcast_to(np.asarray(crowded, dtype=np.int64), phase.shape)
        table = self.offsets[:, axis]
        return (1 - frac) * table[kind, lo % bins] + frac * table[kind, (lo + 1) % bins]

    def kinds(self, table: dict[str, np.ndarray], field_area_um2: float | None = None) -> np.ndarray:
        """``(N,)`` kind of each localization: 1 crowded, 2 sparse (isolated, in a frame of
        ``field_area_um2`` µm² holding fewer than ``sparse_density`` localizations per µm²; only
        with a three-row axial table and a known area), else 0 isolated."""
        kind = crowded_mask(table, self.crowded_distance).astype(np.int64)
        if self.axial is not None and self.axial.shape[0] == 3 and field_area_um2 and len(kind):
            sparse = frame_density(table["frame"], field_area_um2) < self.sparse_density
            kind[(kind == 0) & sparse] = 2
        return kind

    def apply(self, table: dict[str, np.ndarray], field_area_um2: float | None = None) -> dict[str, np.ndarray]:
        """A copy of a localization table (``frame``, ``x``, ``y``, ...) with x and y (and z)
        corrected. ``field_area_um2``: the area of each frame (or tile) the network saw, which
        tells sparse frames apart for a three-row axial table (None: none is sparse)."""
        kind = self.kinds(table, field_area_um2)
        out = dict(table)
        for axis, name in enumerate(("x", "y")):
            out[name] = table[name] + self.shift(table[name], axis, kind == 1)
        if self.axial is not None and "z" in table:
            out["z"] = table["z"] + self.shift_z(table["z"], kind)
        return out

    def to_dict(self) -> dict[str, Any]:
        d = {"period": float(self.period), "offsets": self.offsets.tolist(),
             "crowded_distance": float(self.crowded_distance)}
        if self.axial is not None:
            d.update(axial=self.axial.tolist(), z_range=list(self.z_range))
        if self.sparse_density is not None:
            d["sparse_density"] = float(self.sparse_density)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SubpixelCorrection:
        """From :meth:`to_dict`; files written before the axial table have none, those written
        before the sparse kind a two-row one."""
        axial = d.get("axial")
        sparse = d.get("sparse_density")
        return cls(period=float(d["period"]), offsets=np.asarray(d["offsets"], dtype=np.float64),
                   crowded_distance=float(d["crowded_distance"]),
                   axial=None if axial is None else np.asarray(axial, dtype=np.float64),
                   z_range=None if axial is None else tuple(float(v) for v in d["z_range"]),
                   sparse_density=None if sparse is None else float(sparse))


def frame_density(frame: np.ndarray, field_area_um2: float) -> np.ndarray:
    """``(N,)`` localizations per µm² of each localization's frame (frames of ``field_area_um2``)."""
    frame = np.asarray(frame, dtype=np.int64)
    if not len(frame):
        return np.zeros(0)
    _, index, counts = np.unique(frame, return_inverse=True, return_counts=True)
    return counts[index] / float(field_area_um2)


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


def _fit_axial(p: np.ndarray, t: np.ndarray, z_range: tuple[float, float], bins: int, smooth: float,
               prior: float) -> np.ndarray:
    """``(bins,)`` smoothed mean of ``t - p`` per bin of ``p`` over ``z_range`` (1D, nm), shrunk
    towards 0 by ``prior`` pseudo-localizations per bin."""
    lo, hi = z_range
    idx = np.clip(((p - lo) / (hi - lo) * bins).astype(np.int64), 0, bins - 1)
    total = ndimage.gaussian_filter1d(np.bincount(idx, weights=t - p, minlength=bins), smooth, mode="nearest")
    count = ndimage.gaussian_filter1d(np.bincount(idx, minlength=bins).astype(np.float64), smooth, mode="nearest")
    return total / np.maximum(count + prior, 1e-12)


def fit_correction(predicted: np.ndarray, truth: np.ndarray, period: float, crowded: np.ndarray | None = None,
                   crowded_distance: float = 800.0, bins: int = 32, smooth: float = 1.0,
                   z_range: tuple[float, float] | None = None, z_bins: int = 15,
                   z_prior: float = 50.0, sparse: np.ndarray | None = None,
                   sparse_density: float = SPARSE_DENSITY) -> SubpixelCorrection:
    """Mean ``truth - predicted`` per phase bin of the predicted position, per kind and axis;
    with ``z_range`` also per bin of the predicted z (the axial table).

    predicted, truth : ``(N, 2)`` matched (x, y) pairs in nm, or ``(N, 3)`` (x, y, z). crowded :
    ``(N,)`` bool, which predictions had a neighbour closer than ``crowded_distance`` (None: all
    isolated). A kind with fewer than ``MIN_KIND`` pairs gets the table of all pairs. smooth :
    sigma of the Gaussian smoothing, in bins (circular for the phase). z_range : ``(lo, hi)`` nm
    of the model's z box; needs ``(N, 3)`` positions. z_prior : pseudo-localizations of zero
    error added to each z bin, so that a bin few emitters reach (far from focus, where recall is
    low) is not corrected by the noise of a handful of errors. The default CPU astigmatic
    model's 2048 calibration frames put 185-1066 isolated and 626-4380 crowded localizations in
    each bin: a shrinkage of 5-21 % and 1-7 %.
    sparse : ``(N,)`` bool, which predictions come from frames with fewer than
    ``sparse_density`` localizations per µm² (with ``z_range``: a third axial row fitted to
    the isolated ones of those frames, and the isolated row to the other isolated ones). Why:
    on the default CPU astigmatic model's calibration frames (a count per frame uniform up to
    2.5 emitters/µm²) isolated localizations erred in z by +0.7 nm in frames of fewer than 15
    emitters and by +11 nm in frames of 60-110, and one isolated row fitted to that mixture
    moved sparse test frames by -6.4 nm (docs/benchmarks.md).
    """
    p = np.asarray(predicted, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2 or p.shape != t.shape or not len(p):
        raise InputError(f"expected matched (N, 2) positions, got {p.shape} and {t.shape}")
    if z_range is not None and p.shape[1] < 3:
        raise InputError(f"an axial correction needs matched (N, 3) positions, got {p.shape}")
    kind = np.zeros(len(p), dtype=bool) if crowded is None else np.asarray(crowded, dtype=bool)

    def per_kind(fit):
        every = fit(np.ones(len(p), dtype=bool))
        return np.stack([fit(kind == k) if (kind == k).sum() >= MIN_KIND else every for k in (False, True)])

    offsets = per_kind(lambda s: _fit_table(p[s], t[s], period, bins, smooth))
    axial = None
    density = None
    if z_range is not None:
        fit_z = lambda s: _fit_axial(p[s, 2], t[s, 2], z_range, z_bins, smooth, z_prior)  # noqa: E731
        axial = per_kind(fit_z)
        if sparse is not None:
            is_sparse = np.asarray(sparse, dtype=bool)
            alone, dense = ~kind & is_sparse, ~kind & ~is_sparse
            if alone.sum() >= MIN_KIND:  # else the isolated row serves both
                if dense.sum() >= MIN_KIND:
                    axial[0] = fit_z(dense)
                axial = np.concatenate([axial, fit_z(alone)[None]])
            else:
                axial = np.concatenate([axial, axial[:1]])
            density = float(sparse_density)
    return SubpixelCorrection(period=float(period), offsets=offsets, crowded_distance=float(crowded_distance),
                              axial=axial, z_range=z_range, sparse_density=density)
