"""Calibration at the end of training: the confidence threshold chosen by Jaccard, the sub-pixel
correction, both stored in the model."""

from functools import partial

import numpy as np
import pytest

from starloc.deeploco import AstigmaticPSF, Gaussian2DPSF, Simulator
from starloc.deeploco.calibration import THRESHOLDS, best_threshold, calibrate
from starloc.deeploco.model import DeepLoco
from starloc.deeploco.network import DeepLocoConfig
from starloc.deeploco.subpixel import SPARSE_DENSITY, fit_correction
from starloc.deeploco.training import DeepLocoTrainConfig, train
from starloc.progress import finish


def _table(rows):
    frame, x, y, conf = (np.array(c, dtype=float) for c in zip(*rows))
    return {"frame": frame.astype(np.int64), "x": x, "y": y, "confidence": conf}


def test_best_threshold_maximizes_jaccard_on_a_hand_case():
    true_frame = np.array([0, 0, 1, 1])
    true_xy = np.array([[0.0, 0], [1000, 0], [0, 0], [1000, 1000]])
    table = _table([(0, 5, 0, 0.8), (0, 1000, 5, 0.8), (1, 0, 3, 0.25), (1, 1000, 1000, 0.9),  # 4 hits
                    (0, 3000, 3000, 0.35), (1, 3000, 0, 0.45), (1, 2000, 2000, 0.6)])         # 3 false
    # J = TP / (predictions + truths - TP): 4/7 at <= 0.25, 3/7 at 0.3-0.35, 3/6 at 0.4-0.45,
    # 3/5 at 0.5-0.6, 3/4 from 0.65 to 0.8 (the lowest of these wins), 1/4 above
    assert best_threshold(table, true_frame, true_xy) == (0.65, pytest.approx(0.75))
    assert best_threshold(table, true_frame, true_xy, grid=(0.1, 0.2)) == (0.1, pytest.approx(4 / 7))


def test_best_threshold_applies_the_axial_tolerance_in_3d():
    table = {**_table([(0, 0, 0, 0.9), (0, 2000, 0, 0.4)]), "z": np.array([0.0, 0.0])}
    true_xyz = np.array([[0.0, 0, 0], [2000, 0, 600]])  # the second is 600 nm off axially
    # keeping both: 1 / (2 + 2 - 1); dropping the mismatched one: 1 / (1 + 2 - 1) (with no axial
    # tolerance both would match at 0.4: J = 1)
    assert best_threshold(table, np.array([0, 0]), true_xyz) == (0.45, pytest.approx(1 / 2))


@pytest.fixture(scope="module")
def sim() -> Simulator:
    return Simulator(Gaussian2DPSF(130.0), frame_shape=(32, 32), n_range=(1, 3),
                     photons_range=(2000, 5000), background_range=(20, 40))


def test_calibrate_needs_enough_matches(sim):
    model = DeepLoco.new(DeepLocoConfig.for_simulator(sim, conv_widths=(4, 8, 8), architecture="fcn"), seed=0)
    assert calibrate(model, sim, frames=8) is None  # an untrained network matches (almost) nothing
    assert model.threshold == 0.3 and model.subpixel is None  # and the model is left as it was


def test_training_calibrates_threshold_and_correction_at_the_end(sim, monkeypatch, tmp_path):
    monkeypatch.setattr("starloc.deeploco.calibration.MIN_MATCHES", 50)  # a 150-step model finds few
    cfg = DeepLocoTrainConfig(n_candidates=8, conv_widths=(4, 8, 8), batch=8, steps=150, val_size=0,
                              lr=3e-3, calibration_frames=300, architecture="fcn")  # 150 steps: fcn finds enough
    model = finish(train(sim, cfg))
    cal = model.metadata["training"]["calibration"]
    assert cal["frames"] == 300 and cal["threshold"] == model.threshold and model.threshold in THRESHOLDS
    assert 0 < cal["jaccard"] <= 1
    assert model.subpixel is not None and model.subpixel.period == 4 * sim.pixel_size
    assert np.isfinite(model.subpixel.offsets).all()
    # the calibrated threshold is the one the model file keeps and localizes with by default
    model.save(tmp_path / "m.pt")
    assert DeepLoco.load(tmp_path / "m.pt").threshold == model.threshold
    # the Jaccard it reports is the one best_threshold measures at that threshold on the same frames
    again = calibrate(model, sim, frames=300)
    assert again.threshold == model.threshold and again.jaccard == pytest.approx(cal["jaccard"])

    kept = finish(train(sim, DeepLocoTrainConfig(**{**cfg.to_dict(), "calibrate_threshold": False})))
    assert kept.threshold == cfg.threshold and kept.metadata["training"]["calibration"]["threshold"] is None
    assert kept.subpixel is not None
    off = finish(train(sim, DeepLocoTrainConfig(**{**cfg.to_dict(), "steps": 2, "calibration_frames": 0})))
    assert off.subpixel is None and "calibration" not in off.metadata["training"]


def test_calibrate_measures_the_axial_bias_of_a_3d_model(monkeypatch):
    """The calibration's wiring for 3D: matched localizations with a known z error per kind
    give the axial table that removes it (the localizer itself is replaced)."""
    psf = AstigmaticPSF(sigma0=130.0, c=300.0, d=400.0, z_range=(-600.0, 600.0))
    sim3 = Simulator(psf, frame_shape=(32, 32), n_range=(1, 3))
    model = DeepLoco.new(DeepLocoConfig.for_simulator(sim3, conv_widths=(4, 8, 8), architecture="fcn"), seed=0)
    rng = np.random.default_rng(0)
    n = 4000  # two localizations per frame: 300 nm apart (crowded) or 2000 nm (isolated)
    frame = np.arange(n) // 2
    crowded = (frame % 2 == 0)
    x = rng.uniform(0, 1000, n)
    x[1::2] = x[::2] + np.where(crowded[::2], 300.0, 2000.0)
    z = rng.uniform(-600, 600, n)
    table = {"frame": frame, "x": x, "y": np.full(n, 1600.0), "z": z, "confidence": np.ones(n)}
    truth = np.column_stack([x, np.full(n, 1600.0), z + np.where(crowded, 8.0, 3.0)])

    def fake(model_, simulator, frames, seed, threshold):
        return dict(table), frame.copy(), truth

    monkeypatch.setattr("starloc.deeploco.calibration.simulated_localizations", fake)
    # without the shrinkage of sparse bins (133 localizations per bin here), the table is exact
    monkeypatch.setattr("starloc.deeploco.calibration.fit_correction", partial(fit_correction, z_prior=0.0))
    cal = calibrate(model, sim3, frames=n // 2)
    assert cal.subpixel.z_range == (-600.0, 600.0)
    # two localizations per 10.24 µm² frame: every frame is sparse, so the sparse row is the isolated one
    np.testing.assert_allclose(cal.subpixel.axial, [[3.0] * 15, [8.0] * 15, [3.0] * 15], atol=1e-9)
    assert cal.subpixel.sparse_density == SPARSE_DENSITY
    cal.apply(model)
    np.testing.assert_allclose(model.subpixel.apply(table)["z"], truth[:, 2], atol=1e-9)
    np.testing.assert_allclose(model.subpixel.apply(table, field_area_um2=10.24)["z"], truth[:, 2], atol=1e-9)
