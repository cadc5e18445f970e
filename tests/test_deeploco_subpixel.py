"""Sub-pixel bias correction: exact on a known bias, periodic, stored in model files, applied once."""

import numpy as np
import pytest
import torch

from starloc.deeploco import Gaussian2DPSF, Simulator
from starloc.deeploco.model import DeepLoco
from starloc.deeploco.network import DeepLocoConfig
from starloc.deeploco.stack import localize_stack
from starloc.deeploco.subpixel import SubpixelCorrection, crowded_mask, fit_correction, frame_density
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


def test_crowded_mask_within_frames_only():
    table = {"frame": np.array([0, 0, 1, 2, 2, 2]), "x": np.array([0.0, 300, 0, 0, 0, 50]),
             "y": np.array([0.0, 400, 0, 10, 1000, 10])}
    # distances: 500 (frame 0), alone (frame 1), 50 and 990 (frame 2); "closer than" is strict
    assert crowded_mask(table, 500.0).tolist() == [False, False, False, True, False, True]
    assert crowded_mask(table, 500.1).tolist() == [True, True, False, True, False, True]
    assert crowded_mask(table, 1000.0).tolist() == [True, True, False, True, True, True]
    assert crowded_mask({"frame": np.zeros(0), "x": np.zeros(0), "y": np.zeros(0)}, 800.0).shape == (0,)
    assert crowded_mask({"frame": np.zeros(1), "x": np.zeros(1), "y": np.zeros(1)}, 800.0).tolist() == [False]


def test_crowded_mask_equals_all_pairs_on_random_tables():
    rng = np.random.default_rng(3)
    for n, frames, extent in ((300, 5, 3000.0), (2000, 40, 6400.0), (500, 1, 20000.0)):
        table = {"frame": rng.integers(0, frames, n), "x": rng.uniform(0, extent, n),
                 "y": rng.uniform(0, extent, n)}
        table["x"][:10] = table["x"][10:20]  # ties in x
        xy = np.column_stack([table["x"], table["y"]])
        dist = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
        dist[table["frame"][:, None] != table["frame"][None]] = np.inf
        np.fill_diagonal(dist, np.inf)
        order = np.lexsort((table["x"], table["frame"]))  # the order starloc's tables come in
        ordered = {key: v[order] for key, v in table.items()}
        for d in (100.0, 800.0, 2500.0):
            np.testing.assert_array_equal(crowded_mask(table, d), dist.min(1) < d)
            np.testing.assert_array_equal(crowded_mask(ordered, d), (dist.min(1) < d)[order])


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


Z_RANGE = (-750.0, 750.0)


def _axial_bias(z: np.ndarray) -> np.ndarray:
    """A smooth error truth - prediction in z (nm) as a function of the predicted z."""
    return 6.0 * np.sin(z / 300.0) + 2.0


def test_axial_table_removes_a_known_z_dependent_bias_of_each_kind():
    rng = np.random.default_rng(1)
    n = 40000
    pred = np.column_stack([rng.uniform(0, 6400, n), rng.uniform(0, 6400, n), rng.uniform(*Z_RANGE, n)])
    crowded = rng.random(n) < 0.5
    truth = pred.copy()
    truth[:, 2] += _axial_bias(pred[:, 2]) * np.where(crowded, 1.0, -0.5)
    corr = fit_correction(pred, truth, PERIOD, crowded, z_range=Z_RANGE, z_bins=15, smooth=0.01, z_prior=0)
    assert corr.axial.shape == (2, 15) and corr.z_range == Z_RANGE
    np.testing.assert_allclose(corr.offsets, 0.0, atol=1e-9)  # no lateral bias here
    fixed = pred[:, 2] + corr.shift_z(pred[:, 2], crowded)
    inner = np.abs(pred[:, 2]) < 700  # between the first and last bin centres
    # residual = the bias's mean over a 100 nm bin against its value (curvature), < 0.2 nm
    assert np.abs(fixed - truth[:, 2])[inner].max() < 0.2
    # beyond the outer centres the table is constant: off by at most the bias's change over 50 nm
    assert np.abs(fixed - truth[:, 2]).max() < 1.0
    # one table for both kinds would leave most of it
    one = fit_correction(pred, truth, PERIOD, None, z_range=Z_RANGE, smooth=0.01, z_prior=0)
    assert np.abs(pred[:, 2] + one.shift_z(pred[:, 2]) - truth[:, 2]).max() > 3.0


def test_axial_bins_with_few_localizations_are_shrunk_towards_no_correction():
    pred = np.column_stack([np.zeros(1010), np.zeros(1010), np.r_[np.full(1000, -50.0), np.full(10, 700.0)]])
    truth = pred + np.array([0.0, 0.0, 20.0])  # every localization 20 nm too low
    corr = fit_correction(pred, truth, PERIOD, None, z_range=Z_RANGE, z_bins=15, smooth=0.01, z_prior=50)
    assert corr.axial[0, 7] == pytest.approx(20.0 * 1000 / 1050)  # the well-sampled bin: ~5 % shrunk
    assert corr.axial[0, 14] == pytest.approx(20.0 * 10 / 60)  # ten localizations: mostly prior
    assert corr.axial[0, 3] == 0.0  # an empty bin far from any: no correction


def test_apply_corrects_z_only_with_an_axial_table():
    table = {"frame": np.array([0, 0, 1]), "x": np.array([100.0, 2000, 50]), "y": np.array([0.0, 0, 0]),
             "z": np.array([-750.0, 0.0, 750.0])}
    flat = np.zeros((2, 2, 8))
    plain = SubpixelCorrection(PERIOD, flat, crowded_distance=800.0)
    assert plain.axial is None and np.array_equal(plain.apply(table)["z"], table["z"])
    assert np.array_equal(plain.shift_z(table["z"]), np.zeros(3))
    axial = np.array([np.linspace(-4, 4, 5), np.full(5, 10.0)])
    corr = SubpixelCorrection(PERIOD, flat, crowded_distance=800.0, axial=axial, z_range=Z_RANGE)
    # all three isolated (the frame-0 pair is 1900 nm apart): centres at -600 ... 600 nm
    np.testing.assert_allclose(corr.apply(table)["z"], [-754.0, 0.0, 754.0])
    table["x"][1] = 500.0  # now the frame-0 pair is crowded (400 nm apart)
    np.testing.assert_allclose(corr.apply(table)["z"], [-740.0, 10.0, 754.0])
    # a 2D table has no z column: nothing to correct, nothing added
    assert "z" not in corr.apply({k: table[k] for k in ("frame", "x", "y")})


def test_axial_table_round_trips_and_old_files_have_none():
    axial = np.array([np.linspace(-4, 4, 5), np.full(5, 10.0)])
    corr = SubpixelCorrection(PERIOD, np.ones((2, 2, 8)), crowded_distance=800.0, axial=axial, z_range=Z_RANGE)
    again = SubpixelCorrection.from_dict(corr.to_dict())
    assert np.array_equal(again.axial, axial) and again.z_range == Z_RANGE
    old = corr.to_dict()
    del old["axial"], old["z_range"]
    assert SubpixelCorrection.from_dict(old).axial is None


def test_bad_axial_tables_are_refused():
    flat = np.zeros((2, 2, 8))
    with pytest.raises(InputError, match="axial"):
        SubpixelCorrection(PERIOD, flat, 800.0, axial=np.zeros(5), z_range=Z_RANGE)
    with pytest.raises(InputError, match="axial"):
        SubpixelCorrection(PERIOD, flat, 800.0, axial=np.full((2, 5), np.nan), z_range=Z_RANGE)
    with pytest.raises(InputError, match="z_range"):
        SubpixelCorrection(PERIOD, flat, 800.0, axial=np.zeros((2, 5)))
    with pytest.raises(InputError, match="z_range"):
        SubpixelCorrection(PERIOD, flat, 800.0, axial=np.zeros((2, 5)), z_range=(10.0, -10.0))
    with pytest.raises(InputError, match=r"\(N, 3\)"):
        fit_correction(np.zeros((10, 2)), np.zeros((10, 2)), PERIOD, z_range=Z_RANGE)


def test_isolated_localizations_of_sparse_frames_get_their_own_axial_row():
    # frames of 10 µm²: even frames hold 1 localization (0.1 per µm², sparse), odd frames 6
    # (0.6 per µm²) spread 1.5 µm apart (isolated, not sparse); the sparse ones err by -2 nm in
    # z, the others by +7 nm; crowded pairs would use row 1 (none here)
    rng = np.random.default_rng(4)
    frames, rows = [], []
    for f in range(3000):
        k = 1 if f % 2 == 0 else 6
        frames += [f] * k
        rows += [(1500.0 * j + 10.0, 500.0, rng.uniform(*Z_RANGE)) for j in range(k)]
    frame = np.array(frames)
    pred = np.array(rows)
    sparse_truth = frame_density(frame, 10.0) < 0.3
    assert sparse_truth.sum() == 1500 and (~sparse_truth).sum() == 9000
    truth = pred + np.column_stack([np.zeros((len(pred), 2)), np.where(sparse_truth, -2.0, 7.0)])
    corr = fit_correction(pred, truth, PERIOD, crowded_mask({"frame": frame, "x": pred[:, 0], "y": pred[:, 1]}, 800.0),
                          z_range=Z_RANGE, z_prior=0, smooth=0.01, sparse=sparse_truth, sparse_density=0.3)
    assert corr.axial.shape == (3, 15) and corr.sparse_density == 0.3
    np.testing.assert_allclose(corr.axial[0], 7.0, atol=1e-9)
    np.testing.assert_allclose(corr.axial[2], -2.0, atol=1e-9)
    table = {"frame": frame, "x": pred[:, 0], "y": pred[:, 1], "z": pred[:, 2]}
    assert corr.kinds(table, 10.0).tolist() == np.where(sparse_truth, 2, 0).tolist()
    np.testing.assert_allclose(corr.apply(table, field_area_um2=10.0)["z"], truth[:, 2], atol=1e-9)
    # without the frame's area no frame is known to be sparse: the isolated row for all
    np.testing.assert_allclose(corr.apply(table)["z"], pred[:, 2] + 7.0, atol=1e-9)
    # the lateral tables treat sparse as isolated, and the file keeps all three rows
    again = SubpixelCorrection.from_dict(corr.to_dict())
    assert np.array_equal(again.axial, corr.axial) and again.sparse_density == 0.3
    # too few sparse localizations for a row of their own: the isolated row is copied
    few = fit_correction(pred[:2000], truth[:2000], PERIOD, None, z_range=Z_RANGE, z_prior=0, smooth=0.01,
                         sparse=np.arange(2000) < 100)
    np.testing.assert_array_equal(few.axial[2], few.axial[0])
    with pytest.raises(InputError, match="sparse_density"):
        SubpixelCorrection(PERIOD, np.zeros((2, 2, 8)), 800.0, axial=np.zeros((3, 5)), z_range=Z_RANGE)


def test_frame_density_counts_each_frames_localizations():
    np.testing.assert_allclose(frame_density(np.array([3, 3, 7, 3, 9, 9]), 2.0), [1.5, 1.5, 0.5, 1.5, 1.0, 1.0])
    assert frame_density(np.zeros(0), 2.0).shape == (0,)
