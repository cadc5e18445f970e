"""Per-localization uncertainty: the error head, its loss, the uncertainty columns and their
calibration (tiny models on tiny simulated frames)."""

import math

import numpy as np
import pytest
import torch

from starloc.deeploco import AstigmaticPSF, Gaussian2DPSF, Simulator
from starloc.deeploco.calibration import uncertainty_scale
from starloc.deeploco.loss import error_loss
from starloc.deeploco.model import DeepLoco
from starloc.deeploco.network import DeepLocoConfig
from starloc.deeploco.postprocess import CellGrid, postprocess
from starloc.deeploco.simulate import truth_table
from starloc.deeploco.stack import localize_stack
from starloc.deeploco.training import DeepLocoTrainConfig, train
from starloc.errors import InputError, ModelFileError
from starloc.io import load_model_file, save_model_file
from starloc.progress import finish
from starloc.smlm_io import read_thunderstorm_csv, write_thunderstorm_csv
from starloc.smlm_metrics import match_localizations

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sim() -> Simulator:
    return Simulator(Gaussian2DPSF(130.0), frame_shape=(32, 32), n_range=(1, 3),
                     photons_range=(2000, 5000), background_range=(20, 40))


def _config(**kw) -> DeepLocoTrainConfig:
    return DeepLocoTrainConfig(**{**dict(conv_widths=(4, 8, 8), batch=8, steps=150, val_size=0, lr=3e-3,
                                         calibration_frames=300, architecture="fcn"), **kw})


@pytest.fixture(scope="module")
def wide_sim() -> Simulator:
    """Emitters of 300-20000 photons: their errors differ by ~8x, for the head to tell apart."""
    return Simulator(Gaussian2DPSF(130.0), frame_shape=(32, 32), n_range=(1, 3),
                     photons_range=(300, 20000), photons_distribution="log-uniform", background_range=(20, 40))


@pytest.fixture(scope="module")
def model(wide_sim):
    """A tiny FCN with an error head, trained and calibrated (few matches: the minimum lowered)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("starloc.deeploco.calibration.MIN_MATCHES", 50)
        torch.set_num_threads(1)
        # a little wider and longer than the other tiny models: the 4-8-8 one errs by ~38 nm
        # whatever the brightness, so there is nothing for its error head to tell apart
        return finish(train(wide_sim, _config(conv_widths=(8, 16, 16), batch=16, steps=500)))


def test_the_error_head_changes_no_localization(sim):
    """The head reads detached features and is initialised last: with or without it, a
    training gives the same network, bit for bit."""
    cfg = _config(steps=20, calibration_frames=0)
    with_head = finish(train(sim, cfg))
    without = finish(train(sim, DeepLocoTrainConfig(**{**cfg.to_dict(), "uncertainty": False})))
    assert with_head.has_uncertainty and not without.has_uncertainty
    shared = without.net.state_dict()
    assert all(torch.equal(v, shared[k]) for k, v in with_head.net.state_dict().items() if k in shared)
    assert set(with_head.net.state_dict()) - set(shared) == {f"uncertainty_head.{i}.{p}" for i in (0, 2)
                                                             for p in ("weight", "bias")}
    frames, _ = sim.sample(4, torch.Generator().manual_seed(1))
    pos, w, err = with_head.net.predict(frames)
    assert all(torch.equal(a, b) for a, b in zip((pos, w), without.net(frames)))
    assert err.shape == pos.shape and bool((err > 1.0).all())
    assert without.net.predict(frames)[2] is None


def test_paper_network_has_no_error_head():
    with pytest.raises(InputError, match="cell architecture"):
        DeepLocoConfig(architecture="paper", uncertainty=True)
    assert not DeepLocoTrainConfig(architecture="paper").network_config(
        Simulator(Gaussian2DPSF(130.0), frame_shape=(32, 32))).uncertainty


def test_error_loss_on_a_hand_case():
    """One emitter in cell (0, 1) of a 1x2 grid of 400 nm cells; only that cell has a target."""
    true_pos = torch.tensor([[[600.0, 150.0]]])
    pred = torch.tensor([[[100.0, 100.0], [630.0, 110.0]]], requires_grad=True)
    err = torch.tensor([[[50.0, 50.0], [20.0, 40.0]]], requires_grad=True)
    w = torch.tensor([[0.3, 0.8]])
    loss = error_loss(pred, err, w, true_pos, torch.tensor([[True]]), (1, 2), 400.0)
    expected = 30.0**2 / (2 * 20.0**2) + math.log(20.0) + 40.0**2 / (2 * 40.0**2) + math.log(40.0)
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    assert pred.grad is None or not bool(pred.grad.any())  # positions are not trained by it
    # d/ds (e²/2s² + log s) = -e²/s³ + 1/s, cell 1 only (weight 0.8 of 0.8)
    expected_grad = [-900 / 8000 + 1 / 20, -1600 / 64000 + 1 / 40]
    np.testing.assert_allclose(err.grad[0, 1].numpy(), expected_grad, rtol=1e-5, atol=1e-7)
    assert not bool(err.grad[0, 0].any())
    empty = error_loss(pred, err, w, true_pos, torch.tensor([[False]]), (1, 2), 400.0)
    assert empty.item() == 0.0


@pytest.mark.parametrize("grid", [True, False])
def test_postprocess_pools_the_errors_of_a_component(grid):
    """Two linked candidates (weights 0.6, 0.4) and one alone: uncertainty = the square root
    of the weighted mean lateral variance (s_x² + s_y²) / 2; uncertainty_z of s_z²."""
    pos = torch.tensor([[[200.0, 200.0, 0.0], [260.0, 200.0, 10.0], [1000.0, 1000.0, -50.0], [0.0, 0.0, 0.0]]])
    w = torch.tensor([[0.6, 0.4, 0.9, 0.0]])
    err = torch.tensor([[[10.0, 20.0, 30.0], [30.0, 40.0, 60.0], [5.0, 5.0, 7.0], [1.0, 1.0, 1.0]]])
    cells = CellGrid(2, 2, 400.0, 2.0) if grid else None
    if grid:  # cells (0,0), (0,1), (1,1), (1,0) in grid order
        order = [0, 1, 3, 2]
        pos, w, err = pos[:, order], w[:, order], err[:, order]
    table = postprocess(pos, w, link_distance=100.0, threshold=0.3, cells=cells, errors=err)
    lateral = math.sqrt(0.6 * (100 + 400) / 2 + 0.4 * (900 + 1600) / 2)
    axial = math.sqrt(0.6 * 900 + 0.4 * 3600)
    np.testing.assert_allclose(table["uncertainty"], [lateral, 5.0], rtol=1e-6)
    np.testing.assert_allclose(table["uncertainty_z"], [axial, 7.0], rtol=1e-6)
    np.testing.assert_allclose(table["x"], [224.0, 1000.0])
    without = postprocess(pos, w, link_distance=100.0, threshold=0.3, cells=cells)
    assert "uncertainty" not in without and all(np.array_equal(without[k], table[k]) for k in without)
    empty = postprocess(pos, w * 0, link_distance=100.0, threshold=0.3, cells=cells, errors=err)
    assert set(empty) == set(table) and len(empty["x"]) == 0
    with pytest.raises(InputError, match="errors"):
        postprocess(pos, w, cells=cells, errors=err[..., :2])


def test_uncertainty_scale_on_a_hand_case():
    table = {"x": np.array([10.0, -10.0, 0.0, 0.0]), "y": np.array([0.0, 0.0, 20.0, -20.0]),
             "z": np.array([30.0, -30.0, 30.0, -30.0]),
             "uncertainty": np.full(4, 5.0), "uncertainty_z": np.full(4, 60.0)}
    truth = np.zeros((4, 3))
    # lateral: mean((dx² + dy²) / 2 / 25) = mean(50, 50, 200, 200) / 25 = 5 -> sqrt 5; axial 0.5
    lateral, axial = uncertainty_scale(table, truth)
    assert lateral == pytest.approx(math.sqrt(5.0)) and axial == pytest.approx(0.5)
    assert uncertainty_scale(table, truth, current=(2.0, 4.0)) == pytest.approx((2 * math.sqrt(5.0), 2.0))
    assert uncertainty_scale({k: v for k, v in table.items() if k != "uncertainty"}, truth) is None


def test_calibrated_uncertainty_follows_the_real_errors(model, wide_sim, tmp_path):
    assert model.has_uncertainty and model.uncertainty_scale is not None
    lateral_scale, axial_scale = model.uncertainty_scale
    assert 0 < lateral_scale < 10 and axial_scale == 1.0  # 2D: no axial error
    assert model.metadata["training"]["calibration"]["uncertainty_scale"] == [lateral_scale, axial_scale]
    frames, truth = wide_sim.sample(400, torch.Generator().manual_seed(99))
    table = model.localize(frames)
    assert set(table) == {"frame", "x", "y", "confidence", "uncertainty"}
    tf, txy = truth_table(truth, 2)
    pi, ti = match_localizations(table["frame"], np.column_stack([table["x"], table["y"]]), tf, txy, 100.0)
    assert len(pi) > 200
    u = table["uncertainty"][pi]
    sq = ((table["x"][pi] - txy[ti, 0]) ** 2 + (table["y"][pi] - txy[ti, 1]) ** 2) / 2
    # on fresh frames the calibrated uncertainty is the RMS error...
    assert 0.7 < math.sqrt(np.mean(sq / u**2)) < 1.4
    # ...and localizations it calls less certain are off by more (here 20 vs 28 nm RMS)
    low, high = u <= np.quantile(u, 0.25), u >= np.quantile(u, 0.75)
    assert np.sqrt(sq[high].mean()) > 1.2 * np.sqrt(sq[low].mean())

    # the stack path gives the same columns; files keep the scale; CSV writes ThunderSTORM's column
    stacked = localize_stack(model, frames[:, 0].numpy(), input_units="photons")
    np.testing.assert_allclose(stacked["uncertainty"], model.localize(frames)["uncertainty"], rtol=1e-6)
    model.save(tmp_path / "m.pt")
    loaded = DeepLoco.load(tmp_path / "m.pt")
    assert loaded.uncertainty_scale == model.uncertainty_scale and loaded.has_uncertainty
    np.testing.assert_array_equal(loaded.localize(frames[:20])["uncertainty"],
                                  model.localize(frames[:20])["uncertainty"])
    path = write_thunderstorm_csv(tmp_path / "locs.csv", table)
    assert '"uncertainty_xy [nm]"' in path.read_text().splitlines()[0]
    np.testing.assert_allclose(read_thunderstorm_csv(path)["uncertainty"], table["uncertainty"], rtol=1e-6)


def test_a_damaged_uncertainty_scale_is_refused(model, tmp_path):
    model.save(tmp_path / "m.pt")
    obj = load_model_file(tmp_path / "m.pt", kind="deeploco")
    obj["config"]["postprocess"]["uncertainty_scale"] = [-1.0, 1.0]
    save_model_file(tmp_path / "bad.pt", "deeploco", obj["config"], obj["state_dict"], obj["metadata"])
    with pytest.raises(ModelFileError, match="uncertainty scale"):
        DeepLoco.load(tmp_path / "bad.pt")


def test_a_3d_model_reports_axial_uncertainty():
    psf = AstigmaticPSF(sigma0=130.0, c=300.0, d=400.0, z_range=(-600.0, 600.0))
    sim3 = Simulator(psf, frame_shape=(32, 32), n_range=(1, 3), photons_range=(2000, 5000),
                     background_range=(20, 40))
    m = finish(train(sim3, _config(steps=10, calibration_frames=0)))
    table = m.localize(sim3.sample(8, torch.Generator().manual_seed(0))[0], threshold=0.0)
    assert {"uncertainty", "uncertainty_z"} <= set(table) and len(table["x"])
    assert np.all(table["uncertainty"] > 1.0) and np.all(table["uncertainty_z"] > 1.0)
