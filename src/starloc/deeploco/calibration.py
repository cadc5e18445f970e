"""Calibration of a trained DeepLoco model on simulated frames: confidence threshold and sub-pixel bias.

At the end of training, :func:`calibrate` localizes frames drawn from the training simulator (the
same forward model as the network, never user data) with a low confidence cut, matches them to
their ground truth with the challenge's tolerances, and measures two things the network's weights
do not say by themselves:

- **threshold**: the cut on a localization's confidence (its summed candidate weights) that
  maximizes the Jaccard index on these frames, chosen from :data:`THRESHOLDS` (see
  :func:`best_threshold`). A fixed cut does not suit every model: the default astigmatic models
  (trained at 3d853e5, and on an H100) chose 0.55, which raised their benchmark Jaccard by
  0.024-0.043 over the old fixed 0.3 (their false positives are mostly defocused emitters placed
  100-250 nm off, with less confidence than well-placed ones); the 2D models chose 0.15-0.25.
- **sub-pixel correction** of the localizations kept by that threshold, and for 3D models the
  axial bias as a function of the predicted z, for isolated, crowded and sparse-frame
  localizations (:func:`~starloc.deeploco.subpixel.fit_correction`).
- **uncertainty scale** (models with an error head): the factors, lateral and axial, that make
  the predicted errors of the matched, corrected localizations their root-mean-square error
  (:func:`uncertainty_scale`). The head learns from every candidate near an emitter, also the
  ones the threshold drops and the ones placed beyond the tolerance, and over-states the
  error of the localizations that are kept.

Coordinates: nm, as in :mod:`starloc.deeploco`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..smlm_metrics import match_localizations
from .network import CELL
from .postprocess import concat_tables
from .simulate import truth_table
from .subpixel import SPARSE_DENSITY, SubpixelCorrection, crowded_mask, fit_correction, frame_density

__all__ = ["Calibration", "THRESHOLDS", "best_threshold", "calibrate", "simulated_localizations", "uncertainty_scale"]

#: confidence cuts :func:`calibrate` chooses from
THRESHOLDS = tuple(round(0.1 + 0.05 * i, 2) for i in range(17))  # 0.10 ... 0.90
#: fewest matched localizations to calibrate from (fewer: the model is left as it is)
MIN_MATCHES = 2000


@dataclass(frozen=True)
class Calibration:
    """What :func:`calibrate` measured: ``threshold`` (None when not chosen), the Jaccard index
    at the threshold used (on the calibration frames, averaged over groups of frames as in
    :func:`best_threshold`), and the sub-pixel correction."""

    threshold: float | None
    jaccard: float
    subpixel: SubpixelCorrection
    frames: int
    uncertainty_scale: tuple[float, float] | None = None

    def apply(self, model: Any) -> None:
        """Store the threshold (if chosen), the correction and the uncertainty scale (if
        measured) in ``model``."""
        if self.threshold is not None:
            model.threshold = float(self.threshold)
        model.subpixel = self.subpixel
        if self.uncertainty_scale is not None:
            model.uncertainty_scale = self.uncertainty_scale

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "jaccard": float(self.jaccard), "frames": int(self.frames),
                "uncertainty_scale": None if self.uncertainty_scale is None else list(self.uncertainty_scale)}


@torch.no_grad()
def simulated_localizations(model: Any, simulator: Any, frames: int, seed: int, threshold: float
                            ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Uncorrected localizations of ``frames`` frames from ``simulator`` at confidence cut
    ``threshold``, with the truth: ``(table, true_frame (M,), true_xyz (M, dim) nm)``."""
    dim = model.config.dim
    g = torch.Generator(device=simulator.device).manual_seed(int(seed))
    found, true_frame, true_pos = [], [], []
    for start in range(0, int(frames), 256):
        batch, truth = simulator.sample(min(256, int(frames) - start), g)
        table = model.localize(batch, threshold=threshold, correct=False)
        table["frame"] = table["frame"] + start
        found.append(table)
        frame, xyz = truth_table(truth, dim)
        true_frame.append(frame + start)
        true_pos.append(xyz)
    return concat_tables(found), np.concatenate(true_frame), np.concatenate(true_pos)


def _positions(table: dict[str, np.ndarray], dim: int) -> np.ndarray:
    return np.stack([table[k] for k in ("x", "y", "z")[:dim]], 1)


def _subset(table: dict[str, np.ndarray], keep: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[keep] for k, v in table.items()}


def _frame_groups(true_frame: np.ndarray, n_frames: int, groups: int) -> np.ndarray:
    """Group index (0 .. groups-1) of each frame: quantiles of its number of true emitters."""
    count = np.bincount(true_frame, minlength=n_frames)
    edges = np.quantile(count, np.arange(1, groups) / groups) if groups > 1 else np.zeros(0)
    return np.digitize(count, edges)


def best_threshold(table: dict[str, np.ndarray], true_frame: np.ndarray, true_xyz: np.ndarray,
                   tolerance: float = 100.0, axial_tolerance: float | None = 500.0,
                   grid: tuple[float, ...] = THRESHOLDS, groups: int = 4) -> tuple[float, float]:
    """``(threshold, jaccard)``: the cut in ``grid`` on ``table["confidence"]`` with the highest
    Jaccard index against the truth (the lowest such cut on ties). Positions in nm; the axial
    tolerance applies when the truth has a z column.

    groups : the frames are split into this many quantiles of their true emitter count and the
    Jaccard index is averaged over the groups (empty ones left out), so that sparse frames, with
    few emitters but as many chances for a false positive, weigh as much as dense ones: pooled
    over all emitters, the dense frames of a training distribution would choose the cut alone.
    """
    dim = true_xyz.shape[1]
    frame = np.asarray(table["frame"], dtype=np.int64)
    true_frame = np.asarray(true_frame, dtype=np.int64)
    n_frames = int(max(frame.max(initial=-1), true_frame.max(initial=-1))) + 1
    group = _frame_groups(true_frame, n_frames, groups)
    n_true = np.bincount(group[true_frame], minlength=groups)
    best = (float(grid[0]), -1.0)
    for thr in grid:
        keep = table["confidence"] >= thr
        pi, _ = match_localizations(frame[keep], _positions(_subset(table, keep), dim), true_frame, true_xyz,
                                    tolerance, axial_tolerance if dim == 3 else None)
        n_pred = np.bincount(group[frame[keep]], minlength=groups)
        n_hit = np.bincount(group[frame[keep][pi]], minlength=groups)
        union = n_pred + n_true - n_hit
        jaccard = float(np.mean(n_hit[union > 0] / union[union > 0])) if (union > 0).any() else 0.0
        if jaccard > best[1]:
            best = (float(thr), jaccard)
    return best


def uncertainty_scale(table: dict[str, np.ndarray], truth_xyz: np.ndarray,
                      current: tuple[float, float] | None = None) -> tuple[float, float] | None:
    """``(lateral, axial)`` factors by which to multiply a model's uncertainty scale (``current``,
    None = 1) so that the ``uncertainty`` (and ``uncertainty_z``) columns of ``table`` become
    the root-mean-square error of its localizations against ``truth_xyz`` (rows paired, nm):
    lateral per axis ``sqrt(mean((dx² + dy²) / 2 / u²))``, axial ``sqrt(mean(dz² / u_z²))`` (1
    for 2D). None when the table has no uncertainty column or no row."""
    if "uncertainty" not in table or not len(truth_xyz):
        return None
    lateral_sq = ((table["x"] - truth_xyz[:, 0]) ** 2 + (table["y"] - truth_xyz[:, 1]) ** 2) / 2
    lateral = float(np.sqrt(np.mean(lateral_sq / table["uncertainty"] ** 2)))
    axial = 1.0
    if "uncertainty_z" in table and truth_xyz.shape[1] == 3:
        axial = float(np.sqrt(np.mean((table["z"] - truth_xyz[:, 2]) ** 2 / table["uncertainty_z"] ** 2)))
    base = current if current is not None else (1.0, 1.0)
    return base[0] * lateral, base[1] * axial


def calibrate(model: Any, simulator: Any, frames: int = 2048, seed: int = 2024, period: float | None = None,
              tolerance: float = 100.0, axial_tolerance: float = 500.0,
              choose_threshold: bool = True) -> Calibration | None:
    """Measure the threshold and sub-pixel correction of ``model`` (a
    :class:`~starloc.deeploco.model.DeepLoco`) on ``frames`` frames from ``simulator``; None when
    fewer than ``MIN_MATCHES`` localizations match. Does not change the model (see
    :meth:`Calibration.apply`).

    period : nm, of the sub-pixel correction (default: the network's cell, or one pixel for the
    paper's network); the crowded distance is two cells. choose_threshold : False keeps the
    model's threshold. The model's own correction is not applied while measuring.
    """
    cfg = model.config
    if period is None:
        period = (CELL if cfg.cellular else 1) * cfg.pixel_size
    grid = THRESHOLDS if choose_threshold else (float(model.threshold),)
    table, tf, tp = simulated_localizations(model, simulator, frames, seed, min(grid))
    axial = axial_tolerance if cfg.dim == 3 else None
    threshold, jaccard = best_threshold(table, tf, tp, tolerance, axial, grid)
    table = _subset(table, table["confidence"] >= threshold)
    pred = _positions(table, cfg.dim)
    pi, ti = match_localizations(table["frame"], pred, tf, tp, tolerance, axial)
    if len(pi) < MIN_MATCHES:
        return None
    crowded_distance = 2 * CELL * cfg.pixel_size
    sparse = None
    area = simulator.frame_shape[0] * simulator.frame_shape[1] * simulator.pixel_size**2 / 1e6
    if cfg.dim == 3:
        sparse = (frame_density(table["frame"], area) < SPARSE_DENSITY)[pi]
    subpixel = fit_correction(pred[pi], tp[ti], period, crowded_mask(table, crowded_distance)[pi], crowded_distance,
                              z_range=tuple(cfg.z_range) if cfg.dim == 3 else None, sparse=sparse)
    corrected = _subset(subpixel.apply(table, field_area_um2=area), pi)
    scale = uncertainty_scale(corrected, tp[ti], getattr(model, "uncertainty_scale", None))
    return Calibration(threshold=threshold if choose_threshold else None, jaccard=jaccard, subpixel=subpixel,
                       frames=int(frames), uncertainty_scale=scale)
