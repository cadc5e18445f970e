"""Matching and detection metrics on hand-computed cases."""

import numpy as np
import pytest

from starloc.metrics import detection_metrics, detection_metrics_frames, match, rmse_per_axis


def test_one_prediction_out_of_tolerance():
    truth = [[0.0, 0.0], [10.0, 10.0], [20.0, 20.0]]
    pred = [[0.0, 0.1], [10.3, 10.0], [25.0, 20.0]]
    pred_idx, truth_idx = match(pred, truth, tolerance=1.0)
    np.testing.assert_array_equal(pred_idx, [0, 1])
    np.testing.assert_array_equal(truth_idx, [0, 1])
    m = detection_metrics(pred, truth, tolerance=1.0)
    assert (m["tp"], m["fp"], m["fn"]) == (2, 1, 1)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["jaccard"] == pytest.approx(2 / 4)
    # Squared errors 0.01 and 0.09 over D = 2 axes: sqrt((0.005 + 0.045) / 2).
    assert m["rmse"] == pytest.approx(np.sqrt(0.025))
    np.testing.assert_allclose(m["mean_offset"], [-0.15, -0.05])  # truth - pred


def test_hungarian_maximizes_matches_where_greedy_fails():
    # Greedy nearest-first takes the 0.6 px pair (P0-T1) and leaves P1 2.2 px from T0.
    truth = [[0.0, 0.0], [0.0, 1.5]]
    pred = [[0.0, 0.9], [0.0, 2.2]]
    pred_idx, truth_idx = match(pred, truth, tolerance=1.0)
    np.testing.assert_array_equal(pred_idx, [0, 1])
    np.testing.assert_array_equal(truth_idx, [0, 1])
    assert detection_metrics(pred, truth, tolerance=1.0)["tp"] == 2


def test_hungarian_minimizes_total_distance():
    # Greedy: P0-T1 (0.4) then P1-T0 (1.7), total 2.1; optimal: 0.6 + 0.7 = 1.3.
    truth = [[0.0, 0.0], [0.0, 1.0]]
    pred = [[0.0, 0.6], [0.0, 1.7]]
    pred_idx, truth_idx = match(pred, truth, tolerance=2.0)
    np.testing.assert_array_equal(truth_idx[np.argsort(pred_idx)], [0, 1])
    assert detection_metrics(pred, truth, 2.0)["rmse"] == pytest.approx(np.sqrt((0.36 + 0.49) / 4))


def test_tolerance_is_inclusive():
    assert len(match([[0.0, 1.0]], [[0.0, 0.0]], tolerance=1.0)[0]) == 1
    assert len(match([[0.0, 1.0]], [[0.0, 0.0]], tolerance=0.999)[0]) == 0


def test_empty_inputs():
    for pred, truth in [([], []), (np.empty((0, 2)), [[1.0, 2.0]]), ([[1.0, 2.0]], [])]:
        pred_idx, truth_idx = match(pred, truth, 1.0)
        assert len(pred_idx) == len(truth_idx) == 0
    m = detection_metrics([], [], 1.0)
    assert (m["tp"], m["fp"], m["fn"]) == (0, 0, 0)
    assert m["precision"] == m["recall"] == m["f1"] == m["jaccard"] == 1.0
    assert np.isnan(m["rmse"]) and m["mean_offset"].shape == (2,)
    m = detection_metrics([], [[1.0, 2.0, 3.0]] * 3, 1.0)
    assert (m["tp"], m["fn"], m["precision"], m["recall"]) == (0, 3, 1.0, 0.0)
    assert m["f1"] == m["jaccard"] == 0.0
    assert m["mean_offset"].shape == (3,)
    m = detection_metrics([[1.0, 2.0]], [], 1.0)
    assert (m["fp"], m["precision"], m["recall"]) == (1, 0.0, 1.0)


def test_three_dimensional_positions():
    pred = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    truth = pred + [[0.3, 0.0, 0.0], [0.0, 0.0, 0.6]]
    assert rmse_per_axis(pred, truth) == pytest.approx(np.sqrt((0.09 + 0.36) / 2 / 3))
    m = detection_metrics(pred, truth, 1.0)
    assert m["tp"] == 2 and m["rmse"] == pytest.approx(rmse_per_axis(pred, truth))
    np.testing.assert_allclose(m["mean_offset"], [0.15, 0.0, 0.3])


def test_rmse_per_axis():
    assert rmse_per_axis([[0.0, 0.0]], [[3.0, 4.0]]) == pytest.approx(5 / np.sqrt(2))
    assert np.isnan(rmse_per_axis(np.empty((0, 2)), np.empty((0, 2))))
    with pytest.raises(ValueError):
        rmse_per_axis([[0.0, 0.0]], [[0.0, 0.0], [1.0, 1.0]])


def test_dimension_mismatch():
    with pytest.raises(ValueError, match="dimension"):
        match([[0.0, 0.0]], [[0.0, 0.0, 0.0]], 1.0)


def test_frames_match_only_within_a_frame():
    pred_frames, pred = [0, 0, 1], [[0.0, 0.0], [5.0, 5.0], [10.0, 10.0]]
    truth_frames, truth = [0, 1, 1], [[0.0, 0.5], [5.0, 5.0], [10.0, 10.2]]
    m = detection_metrics_frames(pred_frames, pred, truth_frames, truth, tolerance=1.0)
    # Frame 0: (0, 0)-(0, 0.5) match, (5, 5) has no truth in frame 0; frame 1: (10, 10) matches.
    assert (m["tp"], m["fp"], m["fn"]) == (2, 1, 1)
    assert m["rmse"] == pytest.approx(np.sqrt((0.25 + 0.04) / 4))
    np.testing.assert_allclose(m["mean_offset"], [0.0, 0.35])
    same = detection_metrics(pred, truth, tolerance=1.0)
    assert same["tp"] == 3  # ignoring frames would wrongly match (5, 5)


def test_frames_empty_and_validation():
    m = detection_metrics_frames([], [], [], [], 1.0)
    assert m["tp"] == 0 and m["f1"] == 1.0
    with pytest.raises(ValueError, match="frame index"):
        detection_metrics_frames([0], [[0.0, 0.0], [1.0, 1.0]], [], [], 1.0)
