"""Simulator: exact sub-pixel rendering, SNR convention, scenes, time-lapses, Cramer-Rao bound."""

import numpy as np
import pytest
from scipy.special import erf

from starloc import sim

SYMMETRIC = ("point", "sphere", "annulus", "ellipse")


def intensity_centroid(image: np.ndarray) -> np.ndarray:
    rows, cols = np.indices(image.shape)
    return np.array([(image * rows).sum(), (image * cols).sum()]) / image.sum()


def lens_area(big: float, small: float, distance: float) -> float:
    """Area of the intersection of two discs (radii big, small) `distance` apart."""
    d, r, R = distance, small, big
    return (
        r**2 * np.arccos((d**2 + r**2 - R**2) / (2 * d * r))
        + R**2 * np.arccos((d**2 + R**2 - r**2) / (2 * d * R))
        - 0.5 * np.sqrt((-d + r + R) * (d + r - R) * (d - r + R) * (d + r + R))
    )


@pytest.mark.parametrize("shape", sim.SHAPES)
def test_simulate_single_shapes_and_dtypes(shape):
    images, truth, angles = sim.simulate_single(shape, snr=5, n=3, rng=0)
    assert images.shape == (3, 64, 64) and images.dtype == np.float32
    assert truth.shape == (3, 2) and truth.dtype == np.float64
    assert angles.shape == (3,)
    assert np.all(np.abs(truth - 31.5) <= 3.0)
    assert np.all(images >= 0) and np.all(images == np.round(images))  # photon counts


@pytest.mark.parametrize("shape", SYMMETRIC)
def test_noiseless_symmetric_shapes_are_centred_exactly(shape):
    rng = np.random.default_rng(3)
    for _ in range(3):
        center = 31.5 + rng.uniform(-3, 3, size=2)
        image = sim.render(shape, 64, [center], [rng.uniform(0, 2 * np.pi)])
        np.testing.assert_allclose(intensity_centroid(image), center, atol=1e-6)


def test_point_equals_pixel_integrated_gaussian():
    center, sigma = np.array([20.3, 40.7]), 1.5
    edges = np.arange(65) - 0.5

    def pixel_integral(x0):
        cdf = 0.5 * erf((edges - x0) / (np.sqrt(2) * sigma))
        return np.sqrt(2 * np.pi) * sigma * np.diff(cdf)  # Gaussian of peak 1, integrated per pixel

    expected = np.outer(pixel_integral(center[0]), pixel_integral(center[1]))
    np.testing.assert_allclose(sim.render("point", 64, [center]), expected, atol=1e-12)


@pytest.mark.parametrize(
    "shape, area",
    [
        ("annulus", np.pi * (5**2 - 3**2)),
        ("ellipse", np.pi * 6 * 3),
        ("crescent", np.pi * 5**2 - lens_area(5, 4, 2)),
    ],
)
def test_uniform_shapes_have_exact_total_flux(shape, area):
    # Blur and pixel integration keep the integral: sum of pixels = area / continuous peak.
    rng = np.random.default_rng(4)
    for _ in range(2):
        image = sim.render(shape, 64, [31.5 + rng.uniform(-3, 3, 2)], [rng.uniform(0, 2 * np.pi)])
        assert image.sum() * sim._peak(shape) == pytest.approx(area, rel=1e-10)


@pytest.mark.parametrize("shape", sim.SHAPES)
def test_profile_peak_is_one(shape):
    # Pixel values average the continuous profile (max 1) over a pixel: just below 1.
    image = sim.render(shape, 64, [[31.2, 30.9]], [0.4])
    assert 0.9 < image.max() <= 1.0


def test_render_is_translation_covariant():
    angle = 1.1
    a = sim.render("crescent", 64, [[30.37, 29.81]], [angle])
    b = sim.render("crescent", 64, [[33.37, 27.81]], [angle])
    np.testing.assert_allclose(b[3:, :-2], a[:-3, 2:], atol=1e-12)


def test_crescent_is_asymmetric_and_deterministic():
    rng = np.random.default_rng(5)
    offsets = []
    for _ in range(3):
        center, angle = 31.5 + rng.uniform(-3, 3, 2), rng.uniform(0, 2 * np.pi)
        image = sim.render("crescent", 64, [center], [angle])
        np.testing.assert_array_equal(image, sim.render("crescent", 64, [center], [angle]))
        axis = np.array([np.sin(angle), np.cos(angle)])  # (row, col) of the angle direction
        offset = intensity_centroid(image) - center
        offsets.append([offset @ axis, offset @ [axis[1], -axis[0]]])
    # The thick side lies opposite to the shifted inner disc, the same for every pose.
    along, across = np.array(offsets).T
    assert np.all(along < -1.5)
    np.testing.assert_allclose(along, along[0], atol=1e-8)
    np.testing.assert_allclose(across, 0, atol=1e-8)


def test_objects_partly_outside_the_image():
    centers = [[-3.0, 10.0], [39.6, 52.0], [-100.0, -100.0]]
    image = sim.render("ellipse", (40, 50), centers, [0.3, 1.0, 0.0])
    assert image.shape == (40, 50) and np.all(np.isfinite(image))
    assert image[0, 10] > 0.3 and image[39, 49] > 0.3


def test_snr_convention():
    snr = 10
    images, _, _ = sim.simulate_single("point", snr, 20, rng=6)
    background = images[:, :10, :10]  # > 18 px from any object
    assert background.mean() == pytest.approx(0.1 * snr**2, rel=0.05)
    # Object photons: SNR^2 times the integral of a peak-1 Gaussian (2 pi sigma^2).
    signal = images.sum(axis=(1, 2)) - 0.1 * snr**2 * 64 * 64
    assert signal.mean() == pytest.approx(snr**2 * 2 * np.pi * 1.5**2, rel=0.1)


def test_add_poisson_noise_rejects_bad_snr():
    with pytest.raises(ValueError, match="snr"):
        sim.add_poisson_noise(np.zeros((4, 4)), 0)


def test_same_seed_same_output():
    a = sim.simulate_single("crescent", 5, 4, rng=7)
    b = sim.simulate_single("crescent", 5, 4, rng=7)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], sim.simulate_single("crescent", 5, 4, rng=8)[0])
    scenes = [sim.simulate_scene("point", 5, 64, rng=2)[0] for _ in range(2)]
    np.testing.assert_array_equal(*scenes)
    stacks = [sim.simulate_timelapse(3, 2, rng=2)[0] for _ in range(2)]
    np.testing.assert_array_equal(*stacks)


def test_unknown_shape():
    with pytest.raises(ValueError, match="unknown shape"):
        sim.render("square", 16, [[8, 8]])


def test_scene_respects_min_distance_and_margin():
    image, positions, angles = sim.simulate_scene("annulus", 20, size=(128, 96), snr=10, rng=1)
    assert image.shape == (128, 96) and image.dtype == np.float32
    assert positions.shape == (20, 2) and angles.shape == (20,)
    distances = np.hypot(*(positions[:, None] - positions[None]).transpose(2, 0, 1))
    assert distances[np.triu_indices(20, 1)].min() >= 2 * sim.SHAPE_RADIUS["annulus"] + 4
    assert np.all(positions >= 5) and np.all(positions <= np.array([127, 95]) - 5)


def test_scene_that_does_not_fit():
    with pytest.raises(ValueError, match="could place only"):
        sim.simulate_scene("point", 50, size=(32, 32), rng=0)


def test_timelapse():
    stack, tracks = sim.simulate_timelapse(200, 4, size=(64, 80), diffusion=0.5, rng=3)
    assert stack.shape == (200, 64, 80) and stack.dtype == np.float32
    assert tracks.shape == (200, 4, 2)
    margin = sim.SHAPE_RADIUS["point"]
    assert np.all(tracks >= margin) and np.all(tracks <= np.array([63, 79]) - margin)
    steps = np.diff(tracks, axis=0)
    assert steps.std() == pytest.approx(np.sqrt(2 * 0.5), rel=0.1)


def test_cramer_rao_bound():
    # Point at SNR 5: 0.1073 px per axis (background 0.1, 64x64 image).
    crb5 = sim.cramer_rao_bound("point", 5)
    assert 0.09 < crb5 < 0.12
    # mu scales with SNR^2, so the bound scales exactly as 1/SNR.
    assert sim.cramer_rao_bound("point", 10) == pytest.approx(crb5 / 2, rel=1e-6)
    # Without background: sqrt(sigma^2 + 1/12) / sqrt(photons) (pixelated Gaussian).
    photons = 5**2 * 2 * np.pi * 1.5**2
    expected = np.sqrt(1.5**2 + 1 / 12) / np.sqrt(photons)
    assert sim.cramer_rao_bound("point", 5, background=0.0) == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("shape", sim.SHAPES)
def test_cramer_rao_bound_all_shapes(shape):
    bound = sim.cramer_rao_bound(shape, 5, angle=0.3)
    assert 0.02 < bound < 0.15
