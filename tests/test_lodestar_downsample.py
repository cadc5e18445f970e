"""LodeSTAR on downsampled images: exact coordinates, large objects, model files, CLI."""

import numpy as np
import pytest
import tifffile
import torch

from starloc.cli import main
from starloc.errors import InputError, ModelFileError
from starloc.io import as_frames, load_model_file, read_points_csv, save_model_file
from starloc.lodestar.deblend import deblend
from starloc.lodestar.detection import DetectParams, detect, pool_single, pool_single_symmetries, score_map
from starloc.lodestar.downsampling import downsample_for, object_extent
from starloc.lodestar.inference import detect_frames, predict_single
from starloc.lodestar.model import LodeSTAR, downsample_frames
from starloc.lodestar.training import TrainConfig, train
from starloc.metrics import detection_metrics
from starloc.progress import finish
from tests.conftest import TINY


def _binned(image: np.ndarray, d: int) -> np.ndarray:
    """Block means of d x d pixels of (N, C, H, W), written out by hand."""
    n, c, h, w = image.shape
    return image[..., : h - h % d, : w - w % d].reshape(n, c, h // d, d, w // d, d).mean((3, 5))


def _big_spots(centres, shape, rng, sigma=6.0, peak=60.0, background=10.0) -> np.ndarray:
    """Poisson image of Gaussian spots of ``sigma`` px: ~30 px across, wider than TINY's
    16 px receptive field."""
    rows, cols = np.indices(shape)
    mean = np.full(shape, background)
    for r, c in centres:
        mean += peak * np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * sigma**2))
    return rng.poisson(mean).astype(np.float32)


def _ring(shape, centre, radius, rng, width=1.5, peak=60.0, background=10.0) -> np.ndarray:
    """Poisson image of a thin bright ring (a cell outline)."""
    rows, cols = np.indices(shape)
    dist = np.hypot(rows - centre[0], cols - centre[1])
    return rng.poisson(background + peak * np.exp(-((dist - radius) ** 2) / (2 * width**2))).astype(np.float32)


def test_object_extent_and_the_suggested_factor():
    rng = np.random.default_rng(3)
    ring = _ring((72, 72), (35.5, 35.2), 24.0, rng)
    assert 48 <= object_extent(ring) <= 58 and downsample_for(object_extent(ring)) == 3
    spot = _big_spots([(26.5, 27.0)], (54, 54), rng)  # Gaussian, sigma 6 px: trained at 1 it failed
    assert 20 < object_extent(spot) <= 28 and downsample_for(object_extent(spot)) == 2
    small = _big_spots([(26.5, 27.0)], (54, 54), rng, sigma=4.0)
    assert object_extent(small) <= 20 and downsample_for(object_extent(small)) == 1
    dark = 200.0 - _big_spots([(30.0, 30.0)], (60, 60), rng, sigma=8.0) + 10.0  # bright-field: darker
    assert object_extent(dark) == pytest.approx(object_extent(dark.max() - dark), abs=2)
    assert object_extent(np.stack([ring, ring])) == object_extent(ring)  # channels averaged
    assert object_extent(np.zeros((30, 30))) == 0.0
    assert object_extent(rng.normal(size=(40, 40))) < 8
    assert [downsample_for(e) for e in (0, 7, 20, 21, 26, 40, 41, 54, 80)] == [1, 1, 1, 2, 2, 2, 3, 3, 4]


def test_a_small_object_on_texture_is_measured_not_the_texture():
    """A 5 px spot on a vessel that crosses the whole crop (a microaneurysm in a retina image):
    at 20 % of the peak the region is the vessel's, 32 px; the object itself is small. A disc
    that nearly fills its crop keeps its size."""
    rng = np.random.default_rng(0)
    rows, cols = np.indices((32, 32))
    spot = 100.0 * np.exp(-((rows - 15.5) ** 2 + (cols - 15.5) ** 2) / (2 * 1.5**2))
    vessel = 30.0 * np.exp(-((rows - 17.0) ** 2) / (2 * 2.0**2))  # along the whole crop, through the spot
    image = rng.poisson(20.0 + spot + vessel).astype(np.float32)
    assert object_extent(image) <= 10 and downsample_for(object_extent(image)) == 1
    disc = rng.poisson(10.0 + 60.0 * (np.hypot(rows - 15.5, cols - 15.5) < 14)).astype(np.float32)
    assert object_extent(disc) >= 28


@pytest.mark.parametrize("d", [2, 3])
def test_maps_of_a_downsampling_model_are_the_binned_image_maps_in_image_pixels(d):
    plain, scaled = LodeSTAR.new(TINY, seed=3), LodeSTAR.new(TINY, seed=3, downsample=d)
    image = np.random.default_rng(0).normal(size=(2, 1, 61, 67)).astype(np.float32)  # not multiples of d
    for augment in (False, True):
        a, b = plain.maps(_binned(image, d), augment=augment), scaled.maps(image, augment=augment)
        assert b.image_shape == (61, 67) and b.stride == 2 * d and b.downsample == d
        assert b.receptive_field == TINY.receptive_field * d == scaled.receptive_field
        np.testing.assert_allclose(b.positions[:, :2], d * a.positions[:, :2] + (d - 1) / 2, atol=1e-4)
        np.testing.assert_allclose(b.weights, a.weights, atol=1e-6)
        view = b.network_view()
        np.testing.assert_allclose(view.positions, a.positions, atol=1e-5)
        assert (view.stride, view.image_shape, view.receptive_field) == (a.stride, a.image_shape, a.receptive_field)


def test_pooling_and_detection_work_in_network_pixels_and_answer_in_image_pixels():
    d = 2
    plain, scaled = LodeSTAR.new(TINY, seed=5), LodeSTAR.new(TINY, seed=5, downsample=d)
    image = np.random.default_rng(1).normal(size=(3, 1, 48, 52)).astype(np.float32)
    a, b = plain.maps(_binned(image, d)), scaled.maps(image)
    np.testing.assert_allclose(pool_single(b), d * pool_single(a) + (d - 1) / 2, atol=1e-4)
    sa, sb = plain.symmetry_maps(_binned(image, d)), scaled.symmetry_maps(image)
    np.testing.assert_allclose(pool_single_symmetries(sb), d * pool_single_symmetries(sa) + (d - 1) / 2, atol=1e-4)
    np.testing.assert_allclose(score_map(b, 0.2), score_map(a, 0.2), rtol=1e-4)
    params = DetectParams(cutoff=0.9)
    fa, fb = detect(a, params), detect(b, params)
    assert len(fa) == len(fb) > 0
    np.testing.assert_array_equal(fa.frame, fb.frame)
    np.testing.assert_allclose(fb.positions, d * fa.positions + (d - 1) / 2, atol=1e-4)
    for name in ("score", "weight", "consistency"):  # consistency in network px^2, as documented
        np.testing.assert_allclose(fb.features[name], fa.features[name], rtol=1e-4)
    # Deblending too: crowded within the receptive field in network pixels (16, not 32).
    da, db = deblend(plain, _binned(image, d), fa, params), deblend(scaled, image, fb, params)
    assert not np.allclose(da.positions, fa.positions)
    np.testing.assert_allclose(db.positions, d * da.positions + (d - 1) / 2, atol=1e-4)


def test_downsampling_rejects_images_smaller_than_two_blocks_and_bad_factors():
    with pytest.raises(InputError, match="too small for downsampling by 4"):
        downsample_frames(torch.zeros(1, 1, 7, 40), 4)
    with pytest.raises(InputError, match="too small"):
        LodeSTAR.new(TINY, downsample=4).maps(np.zeros((1, 1, 40, 7), np.float32))
    # a line of pixels, not downsampled: one error, not a ZeroDivisionError of the score cutoff
    line = np.random.default_rng(0).poisson(100.0, (3, 1, 64)).astype(np.float32)
    with pytest.raises(InputError, match=r"\(1, 64\) px is too small: it needs at least 2 px"):
        detect_frames(LodeSTAR.new(TINY), as_frames(line))
    with pytest.raises(InputError, match="too small"):
        predict_single(LodeSTAR.new(TINY), line[0])
    for bad in (0, -2, 1.5):
        with pytest.raises(InputError, match="downsample must be a whole number"):
            finish(train([np.zeros((40, 40), np.float32)], TrainConfig(downsample=bad, network=TINY)))


def test_training_refuses_a_model_with_another_downsampling():
    with pytest.raises(InputError, match="downsamples by 2"):
        finish(train([np.zeros((40, 40), np.float32)], TrainConfig(downsample=3, network=TINY),
                     model=LodeSTAR.new(TINY, downsample=2)))


@pytest.fixture(scope="module")
def big_spot_model():
    """TINY trained on one 54 px crop of a spot ~30 px across, seen downsampled by 3."""
    torch.set_num_threads(2)
    crop = _big_spots([(26.5, 27.0)], (54, 54), np.random.default_rng(0))
    config = TrainConfig(max_steps=300, min_steps=300, copies=8, network=TINY, seed=0, downsample=3)
    return finish(train([crop], config))


def test_a_model_trained_downsampled_finds_objects_wider_than_its_receptive_field(big_spot_model):
    rng = np.random.default_rng(4)
    truth = np.array([(40.3, 45.1), (44.8, 140.6), (120.2, 60.7), (130.9, 150.2), (85.5, 100.4)])
    image = _big_spots(truth, (180, 190), rng)
    found = detect(big_spot_model.maps(image[None, None]), DetectParams())
    m = detection_metrics(found.positions[:, :2], truth, tolerance=3.0)
    assert m["recall"] == 1.0 and m["precision"] == 1.0
    assert m["rmse"] < 1.0  # image px; the spot's sigma is 6 px
    assert big_spot_model.metadata["training"]["downsample"] == 3


def test_model_files_keep_the_downsampling(big_spot_model, tmp_path):
    path = tmp_path / "big.pt"
    big_spot_model.save(path)
    loaded = LodeSTAR.load(path)
    assert loaded.downsample == 3
    image = _big_spots([(30.0, 33.0)], (60, 66), np.random.default_rng(2))[None, None]
    np.testing.assert_array_equal(loaded.maps(image).positions, big_spot_model.maps(image).positions)
    # files written before downsampling existed have no entry: factor 1
    obj = load_model_file(path, kind="lodestar")
    del obj["config"]["downsample"]
    save_model_file(tmp_path / "old.pt", "lodestar", obj["config"], obj["state_dict"], obj["metadata"])
    assert LodeSTAR.load(tmp_path / "old.pt").downsample == 1
    obj["config"]["downsample"] = 0
    save_model_file(tmp_path / "bad.pt", "lodestar", obj["config"], obj["state_dict"], obj["metadata"])
    with pytest.raises(ModelFileError, match="damaged LodeSTAR model"):
        LodeSTAR.load(tmp_path / "bad.pt")


def test_cli_trains_downsampled_and_detect_uses_the_model_factor(tmp_path, capsys):
    truth = np.array([(30.0, 34.0), (90.0, 100.0)])
    tifffile.imwrite(tmp_path / "big.tif", _big_spots(truth, (128, 136), np.random.default_rng(6)))
    base = ["lodestar", "train", str(tmp_path / "big.tif"), "--steps", "5", "--device", "cpu"]
    # the smallest crop is the receptive field in image pixels: 26 px x 2
    assert main(base + ["--crop", "5", "5", "50", "50", "--downsample", "2", "-o", str(tmp_path / "m.pt")]) == 2
    assert "smaller than the minimum" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()
    assert main(base + ["--crop", "4", "8", "56", "56", "--downsample", "2", "-o", str(tmp_path / "m.pt")]) == 0
    assert LodeSTAR.load(tmp_path / "m.pt").downsample == 2
    assert main(["lodestar", "detect", str(tmp_path / "big.tif"), "--model", str(tmp_path / "m.pt"),
                 "--single", "-o", str(tmp_path / "det.csv")]) == 0
    frames, positions, _ = read_points_csv(tmp_path / "det.csv")
    assert frames.tolist() == [0] and np.all((positions >= 0) & (positions <= [127, 135]))
    tifffile.imwrite(tmp_path / "ring.tif", _ring((90, 90), (44.5, 44.5), 24.0, np.random.default_rng(2)))
    ring = ["lodestar", "train", str(tmp_path / "ring.tif"), "--steps", "2", "--device", "cpu",
            "-o", str(tmp_path / "r.pt")]
    assert main(ring + ["--crop", "9", "9", "72", "72", "--downsample", "1"]) == 0
    assert "consider --downsample 3 with a crop of at least 78 px (this one allows up to 2)" in \
        capsys.readouterr().err
    assert main(ring + ["--crop", "0", "0", "90", "90", "--downsample", "1"]) == 0
    assert "consider --downsample 3\n" in capsys.readouterr().err  # a crop that allows it: no note
    assert LodeSTAR.load(tmp_path / "r.pt").downsample == 1
    # the default, auto: the ring (~54 px) wants 3, the whole image allows it
    assert main(ring + ["--crop", "0", "0", "90", "90"]) == 0
    assert "downsampled by 3 (--downsample auto" in capsys.readouterr().err
    assert LodeSTAR.load(tmp_path / "r.pt").downsample == 3
    # a 72 px crop holds only 2 receptive fields of 26 px: auto takes 2 and says why not 3
    assert main(ring + ["--crop", "9", "9", "72", "72"]) == 0
    err = capsys.readouterr().err
    assert "needs a crop of at least 78 px (this one: 72 px): training at --downsample 2" in err
    assert "keep this (give --downsample 2 to say so)" in " ".join(err.split())
    assert "edges and texture" not in err  # said only when the object is trained at full resolution
    assert LodeSTAR.load(tmp_path / "r.pt").downsample == 2
    # a 50 px crop allows no downsampling at all: the model risks following the ring's edges
    assert main(ring + ["--crop", "20", "20", "50", "50"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "needs a crop of at least 52 px (this one: 50 px): training at --downsample 1" in err
    assert "tends to follow its edges and texture" in err
    # a whole 60 px ring in a 64 px crop: 3 wanted (78 px), 2 possible from 52 px
    tifffile.imwrite(tmp_path / "ring2.tif", _ring((128, 128), (63.5, 63.5), 28.0, np.random.default_rng(3)))
    assert main(["lodestar", "train", str(tmp_path / "ring2.tif"), "--steps", "2", "--device", "cpu",
                 "--crop", "32", "32", "64", "64", "--downsample", "auto", "-o", str(tmp_path / "r2.pt")]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "--downsample 4 would fit it" in err and "this one: 64 px; a crop of 78 px already allows 3" in err
    # two crops: the message names the largest object and the smallest crop
    assert main(["lodestar", "train", str(tmp_path / "ring2.tif"), "--steps", "2", "--device", "cpu",
                 "--crop", "32", "32", "64", "64", "--crop", "30", "30", "68", "68",
                 "-o", str(tmp_path / "r3.pt")]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "the largest object in the crops is about" in err and "(the smallest crop: 64 px" in err
    # these spots (sigma 6 px, ~22 px across) are trained at 2; smaller ones (sigma 4) at full
    # resolution, silently
    assert main(base + ["--crop", "4", "8", "56", "56", "-o", str(tmp_path / "m.pt")]) == 0
    assert "downsampled by 2 (--downsample auto" in capsys.readouterr().err
    tifffile.imwrite(tmp_path / "small.tif", _big_spots(truth, (128, 136), np.random.default_rng(6), sigma=4.0))
    assert main(["lodestar", "train", str(tmp_path / "small.tif"), "--steps", "5", "--device", "cpu",
                 "--crop", "4", "8", "56", "56", "-o", str(tmp_path / "m.pt")]) == 0
    assert "downsampl" not in capsys.readouterr().err and LodeSTAR.load(tmp_path / "m.pt").downsample == 1
    with pytest.raises(SystemExit) as stop:
        main(base + ["--crop", "4", "8", "56", "56", "--downsample", "0", "-o", str(tmp_path / "n.pt")])
    assert stop.value.code == 2 and "--downsample: expected 'auto' or a positive integer" in capsys.readouterr().err
