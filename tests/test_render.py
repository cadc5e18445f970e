"""Super-resolution rendering: pixel convention, mass conservation, centroids, z colours."""

import colorsys

import numpy as np
import pytest

from starloc.render import render_gaussian, render_histogram, render_z_rgb, z_colors


def test_point_lands_in_the_right_pixel():
    # x = (j + 0.5)·p falls in column j; rows are y.
    img = render_histogram([(7 + 0.5) * 20.0], [(3 + 0.5) * 20.0], 20.0, shape=(10, 12))
    assert img.shape == (10, 12) and img.dtype == np.float32
    assert img[3, 7] == 1.0 and img.sum() == 1.0
    # Pixel edges: [j·p, (j+1)·p) belongs to column j.
    img = render_histogram([0.0, 19.999, 20.0], [0.0, 0.0, 0.0], 20.0, shape=(1, 3))
    np.testing.assert_array_equal(img, [[2.0, 1.0, 0.0]])
    # Extent shifts the origin; the inferred shape holds every point.
    img = render_histogram([1005.0], [2015.0], 10.0, extent=(1000, 1100, 2000, 2050))
    assert img.shape == (5, 10) and img[1, 0] == 1.0
    assert render_histogram([95.0], [42.0], 10.0).shape == (5, 10)


def test_histogram_total_is_number_of_localizations(rng):
    x, y = rng.uniform(0, 6400, 5000), rng.uniform(0, 3200, 5000)
    img = render_histogram(x, y, 10.0, shape=(320, 640))
    assert img.sum() == 5000
    outside = render_histogram(np.append(x, 7000.0), np.append(y, 10.0), 10.0, shape=(320, 640))
    assert outside.sum() == 5000  # outside the field: dropped
    np.testing.assert_array_equal(render_histogram(x, y, 10.0, shape=(320, 640), weights=np.full(5000, 2.0)), 2 * img)


def test_gaussian_total_and_centroid(rng):
    x = rng.uniform(300, 1700, 200)
    y = rng.uniform(300, 900, 200)
    img = render_gaussian(x, y, 10.0, sigma_nm=15.0, shape=(120, 200))
    assert img.dtype == np.float32
    assert img.sum() == pytest.approx(200, rel=1e-5)
    # Per-localization σ: still one unit of mass each.
    sig = rng.uniform(3.0, 40.0, 200)
    assert render_gaussian(x, y, 10.0, sigma_nm=sig, shape=(120, 200)).sum() == pytest.approx(200, rel=1e-5)
    # One blob: its centroid (pixel centres at (j + 0.5)·p) is the localization, sub-pixel.
    x0, y0 = 503.7, 298.2
    blob = render_gaussian([x0], [y0], 10.0, sigma_nm=20.0, shape=(60, 100)).astype(np.float64)
    rows, cols = np.indices(blob.shape)
    cx = ((cols + 0.5) * 10.0 * blob).sum() / blob.sum()
    cy = ((rows + 0.5) * 10.0 * blob).sum() / blob.sum()
    assert cx == pytest.approx(x0, abs=0.01) and cy == pytest.approx(y0, abs=0.01)
    # Symmetric and peaked in the home pixel.
    assert np.unravel_index(blob.argmax(), blob.shape) == (29, 50)
    # Second moment = σ² + p²/12 (pixel integration).
    var = (((cols + 0.5) * 10.0 - x0) ** 2 * blob).sum() / blob.sum()
    assert var == pytest.approx(20.0**2 + 10.0**2 / 12, rel=1e-3)


def test_z_colouring_changes_hue_with_z():
    colours = z_colors([-500.0, 0.0, 500.0], z_range=(-500, 500))
    hues = [colorsys.rgb_to_hsv(*c)[0] for c in colours]
    assert hues == pytest.approx([2 / 3, 1 / 3, 0.0])  # blue, green, red
    img = render_z_rgb(
        [55.0, 155.0, 255.0], [55.0, 55.0, 55.0], [-500.0, 0.0, 500.0], 100.0, z_range=(-500, 500), shape=(2, 3)
    )
    assert img.shape == (2, 3, 3) and img.dtype == np.float32
    assert img.min() >= 0 and img.max() <= 1
    np.testing.assert_allclose(img[0], [[0, 0, 1], [0, 1, 0], [1, 0, 0]], atol=1e-6)
    np.testing.assert_array_equal(img[1], 0)
    # Two depths in one pixel mix their colours; Gaussian mode keeps the hue of a lone point.
    mixed = render_z_rgb([50.0, 50.0], [50.0, 50.0], [-500.0, 500.0], 100.0, z_range=(-500, 500), shape=(1, 1))
    np.testing.assert_allclose(mixed[0, 0], [0.5, 0.0, 0.5], atol=1e-6)
    g = render_z_rgb([500.0], [500.0], [0.0], 10.0, z_range=(-500, 500), shape=(100, 100), sigma_nm=20.0)
    peak = g[50, 50]
    assert colorsys.rgb_to_hsv(*peak)[0] == pytest.approx(1 / 3)


def test_bad_input():
    with pytest.raises(ValueError, match="pixel_size"):
        render_histogram([1.0], [1.0], 0.0)
    with pytest.raises(ValueError, match="finite"):
        render_histogram([np.nan], [1.0], 10.0)
    with pytest.raises(ValueError, match="shape or extent"):
        render_histogram([], [], 10.0)
    with pytest.raises(ValueError, match="sigma_nm"):
        render_gaussian([1.0], [1.0], 10.0, sigma_nm=0.0)
    with pytest.raises(ValueError, match="disagrees"):
        render_histogram([1.0], [1.0], 10.0, shape=(3, 3), extent=(0, 100, 0, 100))
    assert render_histogram([], [], 10.0, shape=(2, 2)).sum() == 0
    with pytest.raises(ValueError, match="would be 1000000 x 1000000 px"):  # refused before allocating
        render_gaussian([1.0], [1.0], 1.0, sigma_nm=5.0, extent=(0, 1e6, 0, 1e6))


def test_chunking_does_not_change_the_image(rng, monkeypatch):
    import starloc.render as render

    x, y = rng.uniform(-50, 1050, 3000), rng.uniform(-50, 550, 3000)  # some cross the border
    sig = rng.uniform(2.0, 60.0, 3000)
    one = render_gaussian(x, y, 10.0, sigma_nm=sig, shape=(50, 100))
    monkeypatch.setattr(render, "_CHUNK_ELEMENTS", 1000)  # many chunks of 256
    many = render_gaussian(x, y, 10.0, sigma_nm=sig, shape=(50, 100))
    # Only the truncation can differ (windows are >= truncate·σ, sized per chunk): ~1e-5.
    np.testing.assert_allclose(many, one, rtol=0, atol=2e-5)
    assert 0 < one.sum() < 3000  # mass outside the field is dropped
