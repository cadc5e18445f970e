"""The check that a training crop holds one object, and its warnings in the CLI."""

import numpy as np
import pytest
import tifffile

from starloc import sim
from starloc.cli import main
from starloc.demo import CROP_SIZE, crop_around, isolated_object
from starloc.lodestar.crop_content import count_objects, crop_advice, crops_without_one_object, objects_at_border
from starloc.lodestar.downsampling import auto_downsample, object_extent


@pytest.mark.parametrize("shape", sim.SHAPES)
def test_one_object_counts_one_at_every_snr(shape):
    for snr in (2, 5, 20):
        images, _, _ = sim.simulate_single(shape, snr, 6, rng=11)
        assert [count_objects(im) for im in images] == [1] * 6, (shape, snr)


def test_two_objects_count_two_and_nothing_counts_zero():
    rng = np.random.default_rng(0)
    two = sim.add_poisson_noise(sim.render("point", (40, 40), np.array([[12.0, 12.0], [27.0, 28.0]])), 10, rng=1)
    assert count_objects(two) == 2
    assert count_objects(np.stack([two, two])) == 2  # channels averaged
    assert count_objects(two.max() - two) == 2  # dark objects on a bright background too
    assert count_objects(rng.normal(size=(40, 40))) == 0 and count_objects(np.zeros((30, 30))) == 0
    # low photon counts: the noise is measured from whole-count differences (MAD-based: 16 of 30)
    empty = np.random.default_rng(7).poisson(2.0, (30, 32, 32))
    assert sum(count_objects(crop) == 0 for crop in empty) >= 26
    # an illumination gradient of one noise SD across the crop is no object (median level: 14 of 30)
    r, c = np.mgrid[0:36, 0:36]
    tilted = np.random.default_rng(3).poisson(200 + 14 * (0.6 * r + 0.8 * c) / 36, (30, 36, 36))
    assert sum(count_objects(crop) == 0 for crop in tilted) >= 27
    # a neighbour's tail at the border is not an object, half a neighbour is
    tail = sim.render("point", (40, 40), np.array([[20.0, 20.0], [20.0, -4.0]]))
    half = sim.render("point", (40, 40), np.array([[20.0, 20.0], [20.0, 0.5]]))
    assert count_objects(sim.add_poisson_noise(tail, 10, rng=2)) == 1
    assert count_objects(sim.add_poisson_noise(half, 10, rng=2)) == 2


def test_the_demo_crops():
    image, truth, _ = sim.simulate_scene("point", 30, size=(256, 256), snr=10, rng=0)  # the demo's scene
    boxes = [crop_around(isolated_object(truth), CROP_SIZE, image.shape),
             # the crop the demo used to train on: a neighbour 2 px from its edge, a model that found nothing
             crop_around(truth[np.argmin(np.hypot(*(truth - 127.5).T))], CROP_SIZE, image.shape)]
    crops = [image[r:r + h, c:c + w] for r, c, h, w in boxes]
    assert crops_without_one_object(crops) == [(1, 2)]


def test_cli_training_warns_about_a_crop_with_several_objects(tmp_path, capsys):
    image = sim.add_poisson_noise(sim.render("point", (64, 64), np.array([[20.0, 20.0], [44.0, 40.0]])), 10, rng=3)
    tifffile.imwrite(tmp_path / "two.tif", image)
    base = ["lodestar", "train", str(tmp_path / "two.tif"), "--steps", "2", "--device", "cpu"]
    assert main(base + ["--crop", "0", "0", "64", "64", "-o", str(tmp_path / "a.pt")]) == 0
    assert "crop 1 seems to hold 2 objects" in capsys.readouterr().err
    assert main(base + ["--crop", "4", "4", "32", "32", "-o", str(tmp_path / "b.pt")]) == 0
    assert "seems to hold" not in capsys.readouterr().err


def test_cli_training_warns_about_a_crop_of_background_only(tmp_path, capsys):
    # e.g. drawn on the wrong frame of a time-lapse: the object is on frame 1, the crop on frame 0
    obj = sim.add_poisson_noise(sim.render("point", (64, 64), np.array([[32.0, 32.0]])), 10, rng=4)
    empty = sim.add_poisson_noise(np.zeros((64, 64)), 10, rng=5)
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([empty, obj]))
    base = ["lodestar", "train", str(tmp_path / "stack.tif"), "--steps", "2", "--device", "cpu",
            "--crop", "12", "12", "40", "40"]
    assert main(base + ["--frame", "0", "-o", str(tmp_path / "a.pt")]) == 0
    assert "crop 1 seems to hold no object" in capsys.readouterr().err
    assert main(base + ["--frame", "1", "-o", str(tmp_path / "b.pt")]) == 0
    assert "seems to hold" not in capsys.readouterr().err


def _textured_disc(side, rng=0):
    """A 43 px disc with a strong texture (a coin) on a background with a gradient, centred in a
    crop of ``side`` px, Gaussian noise of 4."""
    g = np.random.default_rng(rng)
    rows, cols = np.indices((side, side)) - (side - 1) / 2
    texture = 100 + 40 * np.sin(rows / 2.5) * np.cos(cols / 3.0)
    return np.where(np.hypot(rows, cols) <= 21, texture, 20.0) + 0.3 * rows + g.normal(0, 4, (side, side))


@pytest.mark.parametrize("side", [46, 48, 52, 64])
def test_an_object_that_nearly_fills_its_crop_is_one_object_of_its_size(side):
    # The crop's own robust level took the disc's pixels for the background: 5-7 objects at
    # 46-52 px, and a size that set auto-downsampling to 1 (a model of the texture).
    crop = _textured_disc(side)
    assert count_objects(crop) == 1
    assert object_extent(crop) == pytest.approx(44, abs=1)
    if side >= 52:  # the crop spans the receptive field twice: downsampled by 2 (3 suggested)
        assert auto_downsample([crop], 26) == (2, 3, object_extent(crop))


def test_a_neighbour_cut_by_the_border_is_told_apart_from_a_second_object():
    # a sphere (radius 6) in the middle, a second one centred 1 px outside the left border
    image = sim.add_poisson_noise(sim.render("sphere", (40, 46), np.array([[20.0, 26.0], [20.0, 3.0]])), 10, rng=2)
    crop = image[:, 4:]
    assert count_objects(crop) == 2 and objects_at_border(crop) == 1
    advice = crop_advice(0, 2, objects_at_border(crop))
    assert "its object and part of 1 neighbour(s) at its edge" in advice and "a sliver usually does no harm" in advice
    whole = image  # both spheres whole: the strong advice
    assert count_objects(whole) == 2 and objects_at_border(whole) == 0
    assert "usually finds none" in crop_advice(0, 2, objects_at_border(whole))


def test_a_neighbour_cut_in_half_by_the_border_is_an_object():
    image = sim.add_poisson_noise(sim.render("sphere", (40, 46), np.array([[20.0, 26.0], [20.0, 9.0]])), 10, rng=2)
    half = image[:, 9:]  # the second sphere's centre on the border: half of it inside
    assert count_objects(half) == 2 and objects_at_border(half) == 0
