"""Brightness of a stack (photons per isolated spot, background per frame) and the training ranges
it suggests: right on simulated frames of known brightness, through the CLI, bad input refused."""

import warnings

import numpy as np
import pytest
import tifffile
import torch

from starloc.cli import EXIT_BAD_INPUT, main
from starloc.deeploco import EMCCD, Gaussian2DPSF, Simulator
from starloc.deeploco.brightness import Brightness, measure_brightness
from starloc.errors import InputError


@pytest.fixture(scope="module")
def sparse():
    """60 frames of 48x48 px, ~2 emitters each (2000-6000 photons, uniform), 50 photons/px; ADU
    with the challenge camera, and the camera."""
    camera = EMCCD.smlm2016()
    sim = Simulator(Gaussian2DPSF(130.0), camera, frame_shape=(48, 48), density=0.1,
                    photons_range=(2000.0, 6000.0), background_range=(50.0, 50.0))
    g = torch.Generator().manual_seed(1)
    truth = sim.sample_emitters(60, g)
    expected = sim.expected(truth)
    return camera.sample(expected, g).numpy().astype(np.uint16), camera, expected


def test_photons_and_background_of_known_frames(sparse):
    adu, camera, _ = sparse
    found = measure_brightness(camera.normalize(torch.from_numpy(adu.astype(np.float32))).numpy())
    assert found.frames == 60 and len(found.background) == 60
    assert np.median(found.background) == pytest.approx(50.0, rel=0.03)
    assert len(found.photons) >= 40
    assert np.median(found.photons) == pytest.approx(4000.0, rel=0.12)
    (p_lo, p_hi), (b_lo, b_hi) = found.suggested_ranges()
    assert p_lo <= 2000 and 6000 <= p_hi <= 12000 and b_lo <= 50 <= b_hi


def test_noiseless_spots_sum_to_their_photons(sparse):
    *_, expected = sparse  # the expected image: no noise, so every isolated spot holds its photons
    found = measure_brightness(expected.numpy(), snr=5.0)
    np.testing.assert_allclose(found.background, 50.0, rtol=1e-6)
    assert 2000 * 0.97 <= found.photons.min() and found.photons.max() <= 6000 * 1.001


def test_each_spot_is_measured_over_its_own_background():
    """A background that varies over the frame (here a ramp of +-80 %) would shift every spot's
    photons by the difference between the frame's median and the background under it."""
    sim = Simulator(Gaussian2DPSF(130.0), None, frame_shape=(64, 96), density=0.15, photons_range=(3000.0, 3000.0),
                    background_range=(100.0, 100.0))
    g = torch.Generator().manual_seed(2)
    expected = sim.expected(sim.sample_emitters(80, g)) + torch.linspace(-80.0, 80.0, 96)[None, None, :]
    found = measure_brightness(torch.poisson(expected, generator=g).numpy())
    assert len(found.photons) >= 100
    assert np.median(found.photons) == pytest.approx(3000.0, rel=0.05)
    assert np.percentile(found.photons, 5) > 2000 and np.percentile(found.photons, 95) < 4000


def test_bad_frames_are_refused(sparse):
    adu, camera, _ = sparse
    photons = camera.normalize(torch.from_numpy(adu.astype(np.float32))).numpy()
    with pytest.raises(InputError, match="NaN"):
        measure_brightness(np.where(np.arange(48) == 3, np.nan, photons))
    with pytest.raises(InputError, match="expected frames"):
        measure_brightness(np.zeros(10))
    with pytest.raises(InputError, match="odd"):
        measure_brightness(photons, window=12)
    with pytest.raises(InputError, match="isolated spots"):
        measure_brightness(photons[:3])


def test_numbers_that_cannot_be_emitters_are_refused_not_suggested(sparse, tmp_path, capsys):
    """Frames in the wrong units (here photons / 1000, as a wrong gain gives) still show spots,
    but of a few photons: training on such ranges (the widget once set 1-10 photons, background
    0) makes a useless model, so the suggestion is refused with what to check."""
    adu, camera, _ = sparse
    photons = camera.normalize(torch.from_numpy(adu.astype(np.float32))).numpy()
    found = measure_brightness(photons / 1000.0)
    assert np.median(found.photons) < 10
    with pytest.raises(InputError, match="too few for emitters.*camera settings"):
        found.suggested_ranges()
    below = Brightness(photons=np.full(30, 3000.0), background=np.full(5, -20.0), frames=5)
    with pytest.raises(InputError, match="below zero"):
        below.suggested_ranges()
    # a few spots read negative (a background mis-measured under them): the low end stays positive
    spread = Brightness(photons=np.r_[np.full(3, -500.0), np.full(27, 4000.0)], background=np.full(5, 50.0),
                        frames=5)
    assert spread.suggested_ranges()[0] == (400.0, 6000.0)
    path = tmp_path / "scaled.tif"
    tifffile.imwrite(path, (photons / 1000.0).astype(np.float32))
    assert main(["deeploco", "brightness", str(path), "--units", "photons"]) == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    assert "emitters:" in captured.out and "train with" not in captured.out  # what was measured, shown
    assert "too few for emitters" in captured.err


def test_cli_prints_the_ranges_to_train_with(sparse, tmp_path, capsys):
    adu, *_ = sparse
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, adu)
    assert main(["deeploco", "brightness", str(path), "--camera", "smlm2016"]) == 0
    out = capsys.readouterr().out
    assert "over 60 frames" in out and "train with: --photons " in out and "--background " in out
    assert main(["deeploco", "brightness", str(path), "--camera", "smlm2016", "--frames", "0:2"]) == EXIT_BAD_INPUT
    assert "isolated spots" in capsys.readouterr().err
    assert main(["deeploco", "brightness", str(path)]) == EXIT_BAD_INPUT
    assert "need --camera" in capsys.readouterr().err
    assert main(["deeploco", "brightness", str(path), "--units", "photons"]) == 0  # ADU taken as photons: runs


def test_the_cli_measures_as_many_frames_as_the_core_says():
    from starloc import cli_deeploco
    from starloc.deeploco.brightness import DEFAULT_FRAMES

    assert cli_deeploco.BRIGHTNESS_FRAMES == DEFAULT_FRAMES


def test_frames_too_small_for_a_background_raise_no_numpy_warning():
    """A 5x5 px frame is all within half a window of its spot: no background, and numpy's
    all-NaN warning would leak to the user's terminal (deeploco localize checks the first frames)."""
    frames = np.full((30, 5, 5), 10.0)
    frames[:, 2, 2] = 5000.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match="isolated spots"):
            measure_brightness(frames)
