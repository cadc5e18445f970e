"""Objects brighter than the training crop's: measured as the network sees them, and told."""

import copy

import numpy as np
import pytest
import torch

from starloc import sim
from starloc.lodestar.brightness import MARGIN, brightness_advice, brightness_ratio, object_peak
from starloc.lodestar.training import TrainConfig, train
from starloc.progress import finish
from tests.conftest import TINY


@pytest.fixture(scope="module")
def model():
    crop = sim.simulate_single("point", 10, 1, size=24, max_offset=1.0, rng=0)[0][0]
    return finish(train([crop], TrainConfig(seed=0, max_steps=5, min_steps=5, network=TINY)))


def _scene(factor: float, rng: int = 3) -> np.ndarray:
    """Ten points at the crop's brightness and ten ``factor`` times brighter, SNR 10, (1, 1, H, W)."""
    gen = np.random.default_rng(rng)
    positions = sim._place(20, (128, 128), 14, 10, gen)
    profile = sum((factor if i % 2 else 1.0) * sim.render("point", (128, 128), p[None])
                  for i, p in enumerate(positions))
    return sim.add_poisson_noise(profile, 10, rng=gen)[None, None]


def test_object_peak_is_the_largest_3x3_median():
    x = torch.zeros(1, 2, 9, 9)
    x[0, :, 4, 4] = 1e4  # one hot pixel: no object
    x[0, 0, 1:4, 5:8] = -4.0  # a dark 3x3 object, in one channel of two: |median of the mean| 2
    assert object_peak(x) == pytest.approx(2.0)
    assert object_peak(torch.full((1, 1, 2, 2), 3.0)) == 3.0  # smaller than the window


def test_training_records_its_crop_peak_and_detection_compares(model):
    assert model.metadata["training"]["object_peak"] > 5  # an SNR-10 point, in background SDs
    assert brightness_ratio(model, _scene(1.0)) == pytest.approx(1.0, abs=0.25)
    assert brightness_ratio(model, _scene(6.0)) == pytest.approx(6.0, rel=0.15)
    assert brightness_advice(model, 1.0) is None and brightness_advice(model, 3.0 * MARGIN) is None
    advice = brightness_advice(model, 6.0)
    assert "up to ~6x brighter" in advice and "up to 3x as bright" in advice and "--brighter 8" in advice
    assert "Brighter objects to 8" in brightness_advice(model, 6.0, how="set Brighter objects to {x}")


def test_models_without_a_recorded_peak_or_that_learn_brightness_are_not_checked(model):
    old = copy.copy(model)
    old.metadata = {"training": {"gain": 3.0}}  # written before the peak was recorded
    assert brightness_ratio(old, _scene(6.0)) is None and brightness_advice(old, None) is None
    old.metadata, old.normalization = model.metadata, "fixed"  # holograms: a fixed normalization
    assert brightness_ratio(old, _scene(6.0)) is None


def test_the_crop_peak_measured_in_its_frame_survives_a_tight_crop():
    """An object that fills its crop misleads the crop's own normalization (its noise scale
    comes out far too high); measured in the whole frame, the crop's object reads as its twins."""
    from starloc.lodestar.brightness import record_crop_peaks

    gen = np.random.default_rng(0)
    rows, cols = np.meshgrid(np.arange(192), np.arange(192), indexing="ij")
    centres = [(48.0, 48.0), (48.0, 144.0), (144.0, 48.0), (144.0, 144.0)]
    profile = sum(np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * 9.0**2)) for r, c in centres)
    frame = sim.add_poisson_noise(profile, 10, rng=gen)[None, None]
    box = (48 - 14, 48 - 14, 28, 28)  # the blob fills it
    crop = frame[0, 0, 34:62, 34:62]
    model = finish(train([crop], TrainConfig(seed=0, max_steps=2, min_steps=2, network=TINY)))
    assert brightness_ratio(model, frame) < 0.5 or brightness_ratio(model, frame) > 1.5  # misread on the crop
    record_crop_peaks(model, [(frame, [box])])
    assert brightness_ratio(model, frame) == pytest.approx(1.0, abs=0.2)


def test_a_crop_its_object_fills_is_told_and_one_with_background_is_not():
    """The same blob in a crop it fills and in one with background around it: in the first the
    object reads far fainter than in its frame (the model would learn it so), and the user is
    told to draw a larger crop; in the second, nothing is said."""
    from starloc.lodestar.brightness import CROP_SCALE_LIMIT, crop_scale_advice, record_crop_peaks

    gen = np.random.default_rng(0)
    rows, cols = np.meshgrid(np.arange(160), np.arange(160), indexing="ij")
    profile = 8.0 * np.exp(-((rows - 80.0) ** 2 + (cols - 80.0) ** 2) / (2 * 6.0**2))
    profile += 0.4 * np.exp(-((rows - 80.0) ** 2 + (cols - 80.0) ** 2) / (2 * 14.0**2))  # a wide halo
    frame = sim.add_poisson_noise(profile, 10, rng=gen)[None, None]
    ratios = {}
    for side in (24, 96):
        r0 = 80 - side // 2
        crop = frame[0, 0, r0:r0 + side, r0:r0 + side]
        m = finish(train([crop], TrainConfig(seed=0, max_steps=2, min_steps=2, network=TINY)))
        assert crop_scale_advice(m) is None  # nothing to compare before the frame is measured
        record_crop_peaks(m, [(frame, [(r0, r0, side, side)])])
        t = m.metadata["training"]
        ratios[side] = t["object_peak"] / t["crop_alone_peak"]
        advice = crop_scale_advice(m, how="redraw it")
        assert (advice is not None) == (ratios[side] > CROP_SCALE_LIMIT)
        if side == 24:
            m24 = m
    assert ratios[24] > 2 * CROP_SCALE_LIMIT and ratios[96] < 2.0, ratios
    told = crop_scale_advice(m24, how="redraw it")
    assert "reads" in told and told.endswith("redraw it")
    record_crop_peaks(m, [(frame, [(r0, r0, side, side)])])  # measured again: the crop-alone peak is kept
    assert m.metadata["training"]["object_peak"] / m.metadata["training"]["crop_alone_peak"] == ratios[96]
