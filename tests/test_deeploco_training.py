"""DeepLoco training generator, checkpoints/resume, model files and localization (tiny models)."""

import math

import numpy as np
import pytest
import torch

from starloc.deeploco import EMCCD, AstigmaticPSF, EmpiricalPSF, Gaussian2DPSF, Simulator
from starloc.deeploco.loss import kernel_loss
from starloc.deeploco.model import DeepLoco
from starloc.deeploco.network import DeepLocoConfig
from starloc.deeploco.training import (
    DeepLocoTrainConfig,
    Progress,
    Trainer,
    describe_simulation,
    simulation_differences,
    train,
    truth_positions,
    validation_metrics,
)
from starloc.errors import InputError, ModelFileError
from starloc.lodestar.model import LodeSTAR
from starloc.lodestar.network import NetworkConfig
from starloc.progress import finish

TINY = dict(n_candidates=8, conv_widths=(4, 8, 8), fc_width=64, batch=4, val_size=6, val_every=2)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sim() -> Simulator:
    return Simulator(Gaussian2DPSF(130.0), frame_shape=(32, 32), n_range=(1, 3),
                     photons_range=(2000, 5000), background_range=(20, 40))


def tiny_config(**kw) -> DeepLocoTrainConfig:
    return DeepLocoTrainConfig(**{**TINY, **kw})


@pytest.mark.parametrize("arch", ["paper", "fcn", "unet"])
def test_loss_decreases_on_a_fixed_batch(sim, arch):
    frames, truth = sim.sample(4, torch.Generator().manual_seed(3))
    model = DeepLoco.new(DeepLocoConfig.for_simulator(sim, n_candidates=8, conv_widths=(4, 8, 8),
                                                      fc_width=64, architecture=arch), seed=0)
    opt = torch.optim.Adam(model.net.parameters(), lr=3e-3)
    true_pos = truth_positions(truth, 2)
    losses = []
    for _ in range(60):
        pos, w = model.forward(frames)
        loss = kernel_loss(pos, w, true_pos, truth["mask"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5])
    assert all(math.isfinite(v) for v in losses)


def test_train_yields_progress_with_validation_and_lr_schedule(sim):
    cfg = tiny_config(steps=5, stage_steps=2, lr=1e-3)
    seen = []
    model = finish(train(sim, cfg), seen.append)
    assert [p.step for p in seen] == [1, 2, 3, 4, 5] and all(isinstance(p, Progress) for p in seen)
    assert [p.lr for p in seen] == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4])
    assert all(math.isfinite(p.loss) and p.max_steps == 5 for p in seen)
    val_steps = [p.step for p in seen if p.val_jaccard is not None]
    assert val_steps == [2, 4, 5]
    for p in seen:
        if p.val_jaccard is not None:
            assert 0.0 <= p.val_jaccard <= 1.0 and p.val_loss > 0 and p.val_rmse_axial is None
    assert isinstance(model, DeepLoco) and not model.net.training
    meta = model.metadata["training"]
    assert meta["steps_done"] == 5 and meta["simulator"]["frame_shape"] == [32, 32]
    assert isinstance(model.psf, Gaussian2DPSF)


def test_lr_schedule_scales_with_the_run_length_unless_given():
    assert DeepLocoTrainConfig().stage_steps == 600  # the CPU recipe: 3000 steps
    long = DeepLocoTrainConfig(steps=20000)
    assert long.stage_steps == 4000 and long.lr_at(20000) == pytest.approx(1e-3 / 16)
    assert DeepLocoTrainConfig(steps=3, stage_steps=1).stage_steps == 1
    assert DeepLocoTrainConfig(steps=2).stage_steps == 1
    with pytest.raises(InputError, match="stage_steps"):
        DeepLocoTrainConfig(stage_steps=0)


def test_same_seed_gives_the_same_model_and_another_seed_does_not(sim):
    def weights(seed):
        m = finish(train(sim, tiny_config(steps=3, seed=seed, val_size=0)))
        return torch.cat([p.flatten() for p in m.net.parameters()])

    a, b, c = weights(0), weights(0), weights(1)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_closing_the_generator_cancels_and_resume_continues_exactly(sim, tmp_path):
    cfg = tiny_config(steps=6, lr=1e-3, stage_steps=4)
    full = []
    reference = finish(train(sim, cfg), full.append)

    ckpt = tmp_path / "run.ckpt"
    gen = train(sim, cfg, checkpoint_path=ckpt)
    first = [next(gen) for _ in range(3)]
    gen.close()  # cancel after step 3: checkpoint written on close
    assert ckpt.is_file()
    rest = []
    resumed = finish(train(sim, cfg, resume=ckpt), rest.append)
    assert [p.step for p in rest] == [4, 5, 6]
    assert [p.loss for p in first + rest] == [p.loss for p in full]
    assert [p.val_jaccard for p in rest] == [p.val_jaccard for p in full[3:]]
    for (name, a), (_, b) in zip(reference.net.state_dict().items(), resumed.net.state_dict().items()):
        assert torch.equal(a, b), name


def test_explicit_checkpoint_and_extending_the_run(sim, tmp_path):
    trainer = Trainer(sim, tiny_config(steps=2, val_size=0))
    finish(trainer.run())
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    more = finish(train(sim, tiny_config(steps=4, val_size=0), resume=tmp_path / "a.ckpt"))
    assert more.metadata["training"]["steps_done"] == 4
    with pytest.raises(ModelFileError):
        Trainer.from_checkpoint(tmp_path / "missing.ckpt", sim)


def test_a_checkpoint_from_before_background_variation_resumes_on_a_flat_background(sim):
    """Checkpoints written before the option record no background_variation: that is a flat
    background, the same simulation as 0 and not the same as a varying one."""
    now = describe_simulation(sim)
    assert now["settings"]["background_variation"] == 0.0
    older = {**now, "settings": {k: v for k, v in now["settings"].items() if k != "background_variation"}}
    assert simulation_differences(now, older) == []
    varying = {**now, "settings": {**now["settings"], "background_variation": 0.5}}
    assert simulation_differences(varying, older) == ["settings.background_variation"]


@pytest.mark.parametrize("arch", ["paper", "fcn", "unet"])
def test_save_load_round_trip_gives_identical_outputs(sim, tmp_path, arch):
    model = finish(train(sim, tiny_config(steps=2, val_size=0, architecture=arch)))
    model.camera = EMCCD.smlm2016()
    path = tmp_path / "m.pt"
    model.save(path)
    loaded = DeepLoco.load(path)
    frames, _ = sim.sample(4, torch.Generator().manual_seed(9))
    with torch.no_grad():
        a, b = model.forward(frames), loaded.forward(frames)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    ta, tb = model.localize(frames, threshold=0.0), loaded.localize(frames, threshold=0.0)
    assert list(ta) == list(tb) and all(np.array_equal(ta[k], tb[k]) for k in ta)
    assert loaded.config == model.config and isinstance(loaded.psf, Gaussian2DPSF)
    assert loaded.psf.sigma_nm == 130.0 and isinstance(loaded.camera, EMCCD)
    assert loaded.camera.spurious_charge == pytest.approx(0.002)
    assert loaded.metadata["training"]["steps_done"] == 2 and "starloc_version" in loaded.metadata


def test_3d_model_with_an_empirical_psf_round_trips(tmp_path):
    ast = AstigmaticPSF(sigma0=110.0, c=200.0, d=400.0)
    z = torch.linspace(-200.0, 200.0, 5)
    stack = ast.render(torch.full((5, 1), 850.0), torch.full((5, 1), 850.0), z[:, None],
                       torch.full((5, 1), 1.0), (17, 17), 100.0)
    psf = EmpiricalPSF(stack, pixel_size=100.0, z_step=100.0, z0=-200.0)
    sim3 = Simulator(psf, frame_shape=(32, 32), n_range=(1, 2))
    cfg = DeepLocoConfig.for_simulator(sim3, n_candidates=4, conv_widths=(2, 4, 4), fc_width=16)
    assert cfg.dim == 3 and cfg.z_range == (-200.0, 200.0)
    model = DeepLoco.new(cfg, psf=psf)
    model.save(tmp_path / "m3.pt")
    loaded = DeepLoco.load(tmp_path / "m3.pt")
    assert isinstance(loaded.psf, EmpiricalPSF) and torch.equal(loaded.psf.stack, psf.stack)
    assert loaded.psf.z_range == psf.z_range
    frames, _ = sim3.sample(2, torch.Generator().manual_seed(0))
    table = loaded.localize(frames[:, 0], threshold=0.0)
    assert set(table) == {"frame", "x", "y", "z", "confidence"}


def test_loading_other_files_as_deeploco_raises_model_file_error(tmp_path):
    lode = LodeSTAR.new(NetworkConfig(full_res_widths=(4,), half_res_widths=(4,)))
    lode.save(tmp_path / "lode.pt")
    with pytest.raises(ModelFileError, match="lodestar"):
        DeepLoco.load(tmp_path / "lode.pt")
    with pytest.raises(ModelFileError):
        DeepLoco.load(tmp_path / "missing.pt")
    torch.save({"w": torch.zeros(2)}, tmp_path / "bare.pt")
    with pytest.raises(ModelFileError):
        DeepLoco.load(tmp_path / "bare.pt")
    with pytest.raises(ModelFileError):
        Trainer.from_checkpoint(tmp_path / "lode.pt", Simulator(Gaussian2DPSF(), frame_shape=(32, 32)))


def test_localize_rejects_bad_frames(sim):
    model = DeepLoco.new(DeepLocoConfig.for_simulator(sim, n_candidates=4, conv_widths=(2, 4, 4), fc_width=16))
    with pytest.raises(InputError):
        model.localize(np.zeros((2, 1, 64, 64), np.float32))
    bad = np.zeros((2, 32, 32), np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError):
        model.localize(bad)
    with pytest.raises(InputError):
        Trainer(Simulator(Gaussian2DPSF(), frame_shape=(64, 64)), tiny_config(), model)


def test_validation_metrics_on_a_hand_case():
    truth = {"x": torch.tensor([[100.0, 1000.0, 0.0], [500.0, 0.0, 0.0]]),
             "y": torch.tensor([[100.0, 1000.0, 0.0], [500.0, 0.0, 0.0]]),
             "z": torch.zeros(2, 3),
             "mask": torch.tensor([[True, True, False], [True, False, False]])}
    table = {"frame": np.array([0, 0, 1]), "x": np.array([130.0, 3000.0, 500.0]),
             "y": np.array([140.0, 3000.0, 500.0]), "confidence": np.ones(3)}
    m = validation_metrics(table, truth, tolerance=100.0)
    assert (m["tp"], m["fp"], m["fn"]) == (2, 1, 1)
    assert m["jaccard"] == pytest.approx(0.5)
    assert m["rmse_lateral"] == pytest.approx(math.sqrt((50.0**2 + 0.0) / 2))


def test_3d_training_reports_axial_rmse_and_axial_tolerance_applies():
    sim3 = Simulator(AstigmaticPSF(), frame_shape=(32, 32), n_range=(1, 2), z_range=(-500.0, 500.0))
    seen = []
    model = finish(train(sim3, tiny_config(steps=2, val_every=1, val_size=4)), seen.append)
    assert model.config.dim == 3 and all(p.val_rmse_axial is not None for p in seen)
    truth = {"x": torch.tensor([[100.0, 1000.0]]), "y": torch.tensor([[100.0, 1000.0]]),
             "z": torch.tensor([[0.0, 0.0]]), "mask": torch.ones(1, 2, dtype=torch.bool)}
    table = {"frame": np.array([0, 0]), "x": np.array([100.0, 1000.0]), "y": np.array([100.0, 1000.0]),
             "z": np.array([30.0, 700.0]), "confidence": np.ones(2)}
    m = validation_metrics(table, truth, tolerance=100.0, axial_tolerance=500.0)
    assert (m["tp"], m["fp"], m["fn"]) == (1, 1, 1) and m["rmse_axial"] == pytest.approx(30.0)
