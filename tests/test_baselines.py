"""Classical localizers: exactness on noiseless spots, shape handling, accuracy under noise."""

import numpy as np
import pytest

from starloc import baselines, sim

METHODS = (baselines.centroid, baselines.radial_center)


def noiseless(shape: str, n: int, seed: int):
    rng = np.random.default_rng(seed)
    truth = 31.5 + rng.uniform(-3, 3, size=(n, 2))
    images = np.stack([sim.render(shape, 64, [center]) for center in truth])
    return images, truth


@pytest.mark.parametrize("shape", ["point", "sphere", "annulus"])
def test_noiseless_symmetric_spots(shape):
    images, truth = noiseless(shape, 10, seed=1)
    np.testing.assert_allclose(baselines.centroid(images), truth, atol=0.01)
    np.testing.assert_allclose(baselines.radial_center(images), truth, atol=1e-3)


@pytest.mark.parametrize("method", METHODS)
def test_shape_handling(method):
    images, truth = noiseless("point", 6, seed=2)
    single = method(images[0])
    assert single.shape == (2,) and single.dtype == np.float64
    assert method(images).shape == (6, 2)
    batched = method(images.reshape(2, 3, 64, 64))
    assert batched.shape == (2, 3, 2)
    np.testing.assert_allclose(batched.reshape(6, 2), method(images))
    assert method(np.zeros((0, 16, 16))).shape == (0, 2)
    with pytest.raises(ValueError):
        method(np.zeros(5))


@pytest.mark.parametrize("method", METHODS)
def test_flat_images_give_the_centre(method):
    images = np.stack([np.zeros((20, 30)), np.full((20, 30), 7.0)])
    np.testing.assert_array_equal(method(images), [[9.5, 14.5], [9.5, 14.5]])


@pytest.mark.parametrize("method", METHODS)
def test_pixel_centres_are_integers(method):
    image = np.zeros((20, 20))
    image[5, 7] = 1.0
    np.testing.assert_allclose(method(image), [5.0, 7.0], atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_explicit_window(method):
    # A second, dimmer object 15 px away stays outside a 6 px window.
    image = sim.render("point", 64, [[20.3, 20.6]]) + 0.6 * sim.render("point", 64, [[20.3, 35.6]])
    np.testing.assert_allclose(method(image, window=6), [20.3, 20.6], atol=0.01)


def test_centroid_explicit_threshold():
    image = sim.render("sphere", 64, [[30.2, 33.7]]) + 0.2
    np.testing.assert_allclose(baselines.centroid(image, threshold=0.05), [30.2, 33.7], atol=0.01)


@pytest.mark.parametrize("method", METHODS)
def test_accuracy_under_noise(method):
    # Point at SNR 5 (CRB 0.107 px); both reach ~0.12-0.13 px per axis.
    images, truth, _ = sim.simulate_single("point", 5, 100, rng=3)
    error = np.sqrt(np.mean((method(images) - truth) ** 2))
    assert error < 0.17
