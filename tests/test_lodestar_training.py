import numpy as np
import pytest
import torch

from starloc import sim
from starloc.errors import ModelFileError
from starloc.lodestar.detection import DetectParams, detect, pool_single
from starloc.lodestar.model import LodeSTAR
from starloc.lodestar.training import PlateauStopper, TrainConfig, augmentation, train
from starloc.metrics import detection_metrics
from starloc.progress import finish


def _crop(seed=0, size=24, snr=10):
    images, truth, _ = sim.simulate_single("point", snr, 1, size=size, max_offset=1.0, rng=seed)
    return images[0]


def _config(net, **kw):
    base = dict(max_steps=40, min_steps=40, patience=1000, copies=4, network=net)
    base.update(kw)
    return TrainConfig(**base)


def test_same_seed_gives_the_same_model_and_another_seed_does_not(tiny_network):
    a = finish(train([_crop()], _config(tiny_network, seed=3)))
    b = finish(train([_crop()], _config(tiny_network, seed=3)))
    c = finish(train([_crop()], _config(tiny_network, seed=4)))
    sa, sb, sc = a.net.state_dict(), b.net.state_dict(), c.net.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_training_on_several_crops_of_different_sizes(tiny_network):
    crops = [_crop(0, 24), _crop(1, 28), _crop(2, 24)]
    model = finish(train(crops, _config(tiny_network, max_steps=10, min_steps=10, crops_per_step=2)))
    assert model.metadata["training"]["crop_shapes"] == [[1, 24, 24], [1, 28, 28], [1, 24, 24]]


def test_multichannel_crops_need_a_matching_network(tiny_network):
    with pytest.raises(ValueError, match="channel"):
        finish(train([np.zeros((2, 24, 24), np.float32)], _config(tiny_network)))


def test_plateau_decays_the_learning_rate_then_stops():
    stopper = PlateauStopper(TrainConfig(min_steps=10, patience=20))
    actions = [stopper.update(step, 1.0) for step in range(1, 200)]
    first_decay = actions.index("decay")
    assert 10 <= first_decay < 40
    assert actions.index("stop") - first_decay >= 20


def test_closing_the_generator_cancels_between_steps(tiny_network):
    gen = train([_crop()], _config(tiny_network, max_steps=1000))
    for _ in range(3):
        progress = next(gen)
    gen.close()
    assert progress.step == 3


@pytest.fixture(scope="module")
def trained():
    """A tiny model trained long enough to find points, and its progress log."""
    from tests.conftest import TINY

    torch.set_num_threads(2)
    images, _, _ = sim.simulate_single("point", 10, 1, size=28, max_offset=0.5, rng=7)
    config = TrainConfig(max_steps=400, min_steps=400, copies=8, network=TINY, seed=0)
    log = []
    model = finish(train([images[0]], config), log.append)
    return model, log


@pytest.fixture(scope="module")
def trained_point_model(trained):
    return trained[0]


def test_training_yields_progress_every_step_and_lowers_the_loss(trained):
    _, log = trained
    assert [p.step for p in log] == list(range(1, 401))
    first = np.mean([p.consistency for p in log[:20]])
    last = np.mean([p.consistency for p in log[-20:]])
    # The floor is the copies' disagreement under their own noise (photon noise included).
    assert last < 0.3 * first
    assert all(p.elapsed >= 0 and p.lr > 0 and p.max_steps == 400 for p in log)


def test_tiny_model_finds_spots_in_a_scene(trained_point_model):
    image, truth, _ = sim.simulate_scene("point", 12, size=(96, 96), snr=10, rng=5)
    found = detect(trained_point_model.maps(image[None, None]), DetectParams())
    m = detection_metrics(found.positions[:, :2], truth, tolerance=1.0)
    assert m["recall"] >= 0.9 and m["precision"] >= 0.9
    assert set(found.features) == {"score", "weight", "consistency"}


def test_tiny_model_localizes_single_spots_to_subpixel(trained_point_model):
    images, truth, _ = sim.simulate_single("point", 10, 40, size=32, max_offset=2.0, rng=11)
    pred = pool_single(trained_point_model.maps(images[:, None]))
    err = np.sqrt(np.mean((pred[:, :2] - truth) ** 2))
    assert err < 0.3


def test_save_load_round_trip_gives_identical_maps(trained_point_model, tmp_path):
    path = tmp_path / "model.pt"
    trained_point_model.save(path)
    loaded = LodeSTAR.load(path)
    image = sim.simulate_scene("point", 3, size=(40, 50), rng=1)[0][None, None]
    a, b = trained_point_model.maps(image), loaded.maps(image)
    assert np.array_equal(a.positions, b.positions) and np.array_equal(a.weights, b.weights)
    assert loaded.metadata["training"]["steps_done"] == 400


def test_loading_a_model_of_another_kind_is_refused(tmp_path):
    from starloc.io import save_model_file

    save_model_file(tmp_path / "other.pt", "deeploco", {}, {})
    with pytest.raises(ModelFileError, match="deeploco"):
        LodeSTAR.load(tmp_path / "other.pt")


def test_loading_a_damaged_lodestar_model_is_refused(tmp_path):
    from starloc.io import save_model_file

    save_model_file(tmp_path / "bad.pt", "lodestar", {"network": {}}, {})
    with pytest.raises(ModelFileError, match="damaged"):
        LodeSTAR.load(tmp_path / "bad.pt")


def test_model_files_keep_their_normalization(trained_point_model, tmp_path):
    from starloc.io import load_model_file, save_model_file

    assert trained_point_model.normalization == "background"
    trained_point_model.save(tmp_path / "m.pt")
    obj = load_model_file(tmp_path / "m.pt", kind="lodestar")
    obj["config"]["normalization"] = "robust"  # as files written before "background" existed
    save_model_file(tmp_path / "old.pt", "lodestar", obj["config"], obj["state_dict"], obj["metadata"])
    assert LodeSTAR.load(tmp_path / "old.pt").normalization == "robust"
    obj["config"]["normalization"] = "minmax"
    save_model_file(tmp_path / "bad.pt", "lodestar", obj["config"], obj["state_dict"], obj["metadata"])
    with pytest.raises(ModelFileError, match="unknown normalization 'minmax'"):
        LodeSTAR.load(tmp_path / "bad.pt")


@pytest.mark.parametrize("shape", [(70, 90), (67, 45)])
def test_tiled_maps_equal_maps_in_one_piece(trained_point_model, shape):
    image = sim.simulate_scene("point", 4, size=shape, rng=2)[0][None, None]
    whole = trained_point_model.maps(image)
    tiled = trained_point_model.maps(image, tile=24)
    assert whole.positions.shape == tiled.positions.shape == (1, 2, shape[0] // 2, shape[1] // 2)
    np.testing.assert_allclose(tiled.positions, whole.positions, atol=1e-4)
    np.testing.assert_allclose(tiled.weights, whole.weights, atol=1e-5)


def test_grid_symmetry_averaging_keeps_shapes_and_positions(trained_point_model):
    images, truth, _ = sim.simulate_single("point", 10, 20, size=31, max_offset=2.0, rng=12)
    plain = trained_point_model.maps(images[:, None])
    averaged = trained_point_model.maps(images[:, None], augment=True)
    assert averaged.positions.shape == plain.positions.shape == (20, 2, 15, 15)
    err = np.sqrt(np.mean((pool_single(averaged)[:, :2] - truth) ** 2))
    assert err < 0.3


def test_augmentation_noise_is_white_after_the_warp():
    # Noise added before the warp would be smoothed by the interpolation (neighbour
    # correlation ~0.5 at half-pixel shifts); a camera's noise is white.
    config = TrainConfig(noise=6.0, seed=0)
    transform = augmentation(config)
    flat = torch.zeros(64, 1, 48, 48)
    gen = torch.Generator().manual_seed(0)
    out = transform.apply(flat, transform.sample(flat.shape, gen))[..., 4:-4, 4:-4]
    a, b = out[..., :, :-1].flatten(), out[..., :, 1:].flatten()
    corr = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
    assert out.std() > 1.0
    assert abs(corr) < 0.03
