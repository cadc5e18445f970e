"""Sub-pixel bias correction: exact on a known bias, periodic, stored in model files, applied once."""

import numpy as np
import pytest
import torch

from starloc.deeploco import Gaussian2DPSF, Simulator
from starloc.deeploco.model import DeepLoco
from starloc.deeploco.network import DeepLocoConfig
from starloc.deeploco.stack import localize_stack
from starloc.deeploco.subpixel import SubpixelCorrection, fit_correction, nearest_neighbour_distance
from starloc.errors import InputError

PERIOD = 400.0  # nm: a 4-pixel cell at 100 nm


def _bias(x: np.ndarray, axis: int) -> np.ndarray:
    """A smooth periodic error truth - prediction (nm) as a function of the predicted phase."""
    phase = 2 * np.pi * np.mod(x, PERIOD) / PERIOD
    return 3.0 * np.sin(phase) + (1.0 if axis == 0 else -0.5) + 0.8 * np.cos(2 * phase)


def test_fit_then_apply_removes_a_known_phase_dependent_bias_of_each_kind():
    rng = np.random.default_rng(0)
    n = 40000
    pred = rng.uniform(-2000, 6000, size=(n, 2))
    frame = np.arange(n) // 2  # pairs of localizations per frame
    gap = np.where(np.arange(n // 2) % 2 == 0, 300.0, 3000.0).repeat(2)  # crowded / isolated pairs
    pred[1::2] = pred[::2] + np.column_stack([gap[::2], np.zeros(n // 2)])
    crowded = gap < 800
    bias = np.stack([_bias(pred[:, a], a) for a in (0, 1)], 1) * np.where(crowded, 1.0, -0.5)[:, None]
    truth = pred + bias
    corr = fit_correction(pred, truth, PERIOD, crowded, crowded_distance=800.0, bins=32, smooth=0.01)
    fixed = corr.apply({"frame": frame, "x": pred[:, 0], "y": pred[:, 1]})
    # residual = the bias's curvature over one 12.5 nm bin (interpolation), far below 0.1 nm
    assert np.abs(fixed["x"] - truth[:, 0]).max() < 0.1
    assert np.abs(fixed["y"] - truth[:, 1]).max() < 0.1
    assert np.array_equal(fixed["frame"], frame)
    # one table for both kinds would leave half the bias
    one = fit_correction(pred, truth, PERIOD, None, bins=32, smooth=0.01).apply({"frame": frame, "x": pred[:, 0],
                                                                                "y": pred[:, 1]})
    assert np.abs(one["x"] - truth[:, 0]).max() > 1.0


def test_nearest_neighbour_distance_within_frames_only():
    table = {"frame": np.array([0, 0, 1, 2, 2, 2]), "x": np.array([0.0, 300, 0, 0, 0, 50]),
             "y": np.array([0.0, 400, 0, 10, 1000, 10])}
    np.testing.assert_allclose(nearest_neighbour_distance(table), [500, 500, np.inf, 50, 990, 50])
    assert nearest_neighbour_distance({"frame": np.zeros(0), "x": np.zeros(0), "y": np.zeros(0)}).shape == (0,)


def test_shift_is_periodic_and_continuous_across_the_period_boundary():
    offsets = np.array([[np.arange(8.0), -np.arange(8.0)], [np.full(8, 9.0), np.zeros(8)]])
    corr = SubpixelCorrection(PERIOD, offsets, crowded_distance=800.0)
    x = np.array([0.0, PERIOD, -PERIOD, 3 * PERIOD])
    assert np.allclose(corr.shift(x, 0), corr.shift(x[:1], 0)[0])
    eps = 1e-6
    assert corr.shift(np.array([PERIOD - eps]), 0)[0] == pytest.approx(corr.shift(np.array([eps]), 0)[0], abs=1e-4)
    # at a bin centre the table value itself; halfway between two centres their mean
    assert corr.shift(np.array([2.5 * PERIOD / 8]), 0)[0] == pytest.approx(2.0)
    assert corr.shift(np.array([3.0 * PERIOD / 8]), 1)[0] == pytest.approx(-2.5)
    # below the first centre it interpolates towards the last bin (wrap)
    assert corr.shift(np.array([0.0]), 0)[0] == pytest.approx(3.5)
    # the crowded table for crowded localizations
    assert corr.shift(np.array([0.0, 0.0]), 0, np.array([False, True])).tolist() == [3.5, 9.0]


def test_bad_corrections_are_refused():
    with pytest.raises(InputError, match="period"):
        SubpixelCorrection(0.0, np.zeros((2, 2, 8)), 800.0)
    with pytest.raises(InputError, match="crowded_distance"):
        SubpixelCorrection(PERIOD, np.zeros((2, 2, 8)), -1.0)
    with pytest.raises(InputError, match="offsets"):
        SubpixelCorrection(PERIOD, np.zeros((2, 8)), 800.0)
    with pytest.raises(InputError, match="offsets"):
        SubpixelCorrection(PERIOD, np.full((2, 2, 8), np.nan), 800.0)
    with pytest.raises(InputError, match="matched"):
        fit_correction(np.zeros((0, 2)), np.zeros((0, 2)), PERIOD)


@pytest.fixture(scope="module")
def sim() -> Simulator:
    return Simulator(Gaussian2DPSF(130.0), frame_shape=(32, 32), n_range=(1, 3),
                     photons_range=(2000, 5000), background_range=(20, 40))


def test_model_files_keep_the_correction_and_localize_applies_it(sim, tmp_path):
    config = DeepLocoConfig.for_simulator(sim, conv_widths=(4, 8, 8), architecture="fcn")
    model = DeepLoco.new(config, seed=0)
    table = np.array([np.full(8, 7.0), np.linspace(-3, 3, 8)])
    model.subpixel = SubpixelCorrection(PERIOD, np.stack([table, table]), crowded_distance=800.0)
    model.save(tmp_path / "m.pt")
    loaded = DeepLoco.load(tmp_path / "m.pt")
    assert loaded.subpixel.period == PERIOD
    assert np.array_equal(loaded.subpixel.offsets, model.subpixel.offsets)
    frames, _ = sim.sample(3, torch.Generator().manual_seed(1))
    raw = loaded.localize(frames, threshold=0.0, correct=False)
    fixed = loaded.localize(frames, threshold=0.0)
    assert len(raw["x"]) > 0
    np.testing.assert_allclose(fixed["x"], raw["x"] + 7.0)
    np.testing.assert_allclose(fixed["y"], raw["y"] + loaded.subpixel.shift(raw["y"], 1))
    # the stack path corrects once, in the coordinates of the tile the network saw
    stack = localize_stack(loaded, frames[:, 0].numpy(), input_units="photons", threshold=0.0)
    order = np.lexsort((fixed["x"], fixed["frame"]))
    np.testing.assert_allclose(stack["x"], fixed["x"][order], atol=1e-3)
