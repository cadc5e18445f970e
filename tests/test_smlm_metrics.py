"""SMLM Challenge 2016 assessment on hand-computed cases."""

import math

import numpy as np
import pytest

from starloc.errors import InputError
from starloc.smlm_metrics import assess, efficiency, match_localizations


def test_frame_mismatch_never_matches_and_counts():
    # Frame 0: two true emitters, one prediction 50 nm from the first (3-4-5).
    # Frame 1: a true emitter; the identical position predicted in frame 2 must not match.
    true_frame = [0, 0, 1]
    true_xy = [[1000.0, 1000.0], [3000.0, 3000.0], [2000.0, 2000.0]]
    pred_frame = [0, 2]
    pred_xy = [[1030.0, 1040.0], [2000.0, 2000.0]]
    pi, ti = match_localizations(pred_frame, pred_xy, true_frame, true_xy, lateral_tol=100)
    np.testing.assert_array_equal(pi, [0])
    np.testing.assert_array_equal(ti, [0])
    m = assess(pred_frame, pred_xy, true_frame, true_xy, lateral_tol=100)
    assert m["dim"] == 2
    assert (m["tp"], m["fp"], m["fn"]) == (1, 1, 2)
    assert m["jaccard"] == pytest.approx(1 / 4)
    assert m["recall"] == pytest.approx(1 / 3)
    assert m["precision"] == pytest.approx(1 / 2)
    assert m["rmse_lateral"] == pytest.approx(50.0)
    np.testing.assert_allclose(m["mean_offset"], [-30.0, -40.0])  # truth - prediction
    assert math.isnan(m["rmse_axial"]) and math.isnan(m["efficiency_axial"])
    # E = 100 - sqrt((100 - 25)^2 + 50^2)
    assert m["efficiency_lateral"] == pytest.approx(100 - math.sqrt(75**2 + 50**2))


def test_lateral_tolerance_is_inclusive_and_strict_beyond():
    m = assess([0, 0], [[0.0, 0.0], [1000.0, 0.0]], [0, 0], [[60.0, 80.0], [1000.0, 100.001]], lateral_tol=100)
    assert (m["tp"], m["fp"], m["fn"]) == (1, 1, 1)


def test_beyond_axial_tolerance_is_not_matched():
    true_xyz = [[0.0, 0.0, 0.0], [5000.0, 0.0, 0.0]]
    pred_xyz = [[10.0, 0.0, 600.0], [5000.0, 0.0, -300.0]]  # |dz| = 600 > 500; 300 ok
    m = assess([3, 3], pred_xyz, [3, 3], true_xyz, lateral_tol=100, axial_tol=500)
    assert m["dim"] == 3
    assert (m["tp"], m["fp"], m["fn"]) == (1, 1, 1)
    assert m["rmse_axial"] == pytest.approx(300.0)
    assert m["rmse_lateral"] == pytest.approx(0.0)
    assert m["rmse_volumetric"] == pytest.approx(300.0)
    np.testing.assert_allclose(m["mean_offset"], [0.0, 0.0, 300.0])
    # Without the axial constraint both pair up.
    assert assess([3, 3], pred_xyz, [3, 3], true_xyz, axial_tol=None)["tp"] == 2
    # 2D prediction against 3D truth: lateral only.
    m2 = assess([3, 3], np.asarray(pred_xyz)[:, :2], [3, 3], true_xyz)
    assert m2["dim"] == 2 and m2["tp"] == 2


def test_exact_efficiency_values():
    # 7 matches, 2 false positives, 1 false negative: JAC = 70 %.
    # Every match is off by (24, 32) nm laterally (40 nm) and 160 nm axially.
    rng = np.random.default_rng(0)
    truth = np.column_stack([np.arange(8) * 1000.0, rng.uniform(0, 5000, 8), rng.uniform(-400, 400, 8)])
    pred = truth[:7] - [24.0, 32.0, 160.0]
    pred = np.vstack([pred, [[50000.0, 0.0, 0.0], [60000.0, 0.0, 0.0]]])
    m = assess(np.zeros(9, int), pred, np.zeros(8, int), truth, lateral_tol=100, axial_tol=500)
    assert (m["tp"], m["fp"], m["fn"]) == (7, 2, 1)
    assert m["jaccard"] == pytest.approx(0.7)
    assert m["rmse_lateral"] == pytest.approx(40.0)
    assert m["rmse_axial"] == pytest.approx(160.0)
    assert m["rmse_volumetric"] == pytest.approx(math.sqrt(1600 + 160**2))
    assert m["efficiency_lateral"] == pytest.approx(50.0)  # 100 - sqrt(30^2 + 40^2)
    assert m["efficiency_axial"] == pytest.approx(100 - math.sqrt(30**2 + 80**2))  # 0.5 * 160
    assert m["efficiency_3d"] == pytest.approx((50.0 + 100 - math.sqrt(7300)) / 2)
    np.testing.assert_allclose(m["mean_offset"], [24.0, 32.0, 160.0])
    assert efficiency(0.7, 40.0, 1.0) == pytest.approx(50.0)
    assert math.isnan(efficiency(0.5, float("nan"), 1.0))


def test_hungarian_maximizes_pairs_then_minimizes_squared_distance():
    # Greedy nearest-first would pair P0-T1 (60 nm) and leave P1 150 nm from T0.
    truth = [[0.0, 0.0], [0.0, 90.0]]
    pred = [[0.0, 150.0], [0.0, 30.0]]  # P0 only reaches T1 (60 nm); P1 reaches both.
    pi, ti = match_localizations([0, 0], pred, [0, 0], truth, lateral_tol=100)
    np.testing.assert_array_equal(pi, [0, 1])
    np.testing.assert_array_equal(ti, [1, 0])
    # Squared (not plain) distance: a = 0, b = 10 vs. 5 and 5 -> sums 100 vs 50.
    truth = [[0.0, 0.0], [0.0, 10.0]]
    pred = [[0.0, 5.0], [0.0, 5.0]]
    assert assess([0, 0], pred, [0, 0], truth, lateral_tol=100)["rmse_lateral"] == pytest.approx(5.0)


def test_many_frames_match_the_brute_force_reference():
    rng = np.random.default_rng(7)
    n_frames = 40
    tf = rng.integers(0, n_frames, 400)
    t = rng.uniform(0, 2000, (400, 2))
    pf = np.concatenate([tf[:300], rng.integers(0, n_frames, 80)])
    p = np.vstack([t[:300] + rng.normal(0, 40, (300, 2)), rng.uniform(0, 2000, (80, 2))])
    pi, ti = match_localizations(pf, p, tf, t, lateral_tol=100)
    assert np.all(pf[pi] == tf[ti])
    assert len(set(pi.tolist())) == len(pi) and len(set(ti.tolist())) == len(ti)
    # Reference: the per-frame dense Hungarian with the same cost.
    total, count = 0.0, 0
    from scipy.optimize import linear_sum_assignment

    for f in range(n_frames):
        a, b = p[pf == f], t[tf == f]
        if not len(a) or not len(b):
            continue
        d2 = ((a[:, None] - b[None]) ** 2).sum(-1)
        ok = d2 <= 100**2
        rows, cols = linear_sum_assignment(np.where(ok, d2, 1 + d2[ok].sum()))
        keep = ok[rows, cols]
        count += keep.sum()
        total += d2[rows[keep], cols[keep]].sum()
    assert len(pi) == count
    assert ((p[pi] - t[ti]) ** 2).sum() == pytest.approx(total)


def test_empty_tables_and_bad_input():
    m = assess([], np.zeros((0, 2)), [], np.zeros((0, 2)))
    assert (m["tp"], m["fp"], m["fn"], m["jaccard"]) == (0, 0, 0, 1.0)
    assert math.isnan(m["rmse_lateral"]) and math.isnan(m["efficiency_lateral"])
    m = assess([0], [[0.0, 0.0]], [], np.zeros((0, 2)))
    assert (m["fp"], m["jaccard"]) == (1, 0.0)
    with pytest.raises(InputError, match="shape"):
        assess([0], [[0.0]], [0], [[0.0, 0.0]])
    with pytest.raises(InputError, match="frame indices"):
        assess([0, 1], [[0.0, 0.0]], [0], [[0.0, 0.0]])
    with pytest.raises(InputError, match="NaN"):
        assess([0], [[np.nan, 0.0]], [0], [[0.0, 0.0]])
