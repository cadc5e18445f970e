"""Classical SMLM baseline (DoG detection + vectorized Gaussian fit + astigmatic z)."""

import numpy as np
import pytest
import torch

from starloc.deeploco import EMCCD, AstigmaticPSF, EmpiricalPSF, Gaussian2DPSF, Simulator
from starloc.deeploco.baseline import (
    AstigmaticCalibration,
    GaussianFitLocalizer,
    detect_spots,
    fit_spots,
    psf_sigma,
)
from starloc.deeploco.postprocess import postprocess
from starloc.deeploco.training import validation_metrics
from starloc.errors import InputError
from starloc.smlm_metrics import assess

PS = 100.0


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(2)


def render(psf, x_px, y_px, z=None, photons=3000.0, bg=50.0, shape=(15, 15)):
    """Noiseless frames, one emitter each at (x_px, y_px) pixel-centre coordinates."""
    x = torch.as_tensor((np.asarray(x_px, dtype=np.float64) + 0.5) * PS, dtype=torch.float32)[:, None]
    y = torch.as_tensor((np.asarray(y_px, dtype=np.float64) + 0.5) * PS, dtype=torch.float32)[:, None]
    zz = None if z is None else torch.as_tensor(np.asarray(z, dtype=np.float64), dtype=torch.float32)[:, None]
    ph = torch.full_like(x, photons)
    return psf.render(x, y, zz, ph, shape, PS).numpy() + bg


@pytest.fixture(scope="module")
def astig_psf():
    return AstigmaticPSF(sigma0=130.0, c=300.0, d=400.0, z_range=(-750.0, 750.0))


@pytest.fixture(scope="module")
def astig_cal(astig_psf):
    return AstigmaticCalibration.from_psf(astig_psf, PS, z_grid=np.linspace(-750, 750, 76))


# ----------------------------------------------------------------------------- fitting


@pytest.mark.parametrize("method", ["lsq", "mle"])
def test_noiseless_spot_recovered_below_1nm(method):
    rng = np.random.default_rng(0)
    n = 40
    x = 7 + rng.uniform(-0.5, 0.5, n)
    y = 7 + rng.uniform(-0.5, 0.5, n)
    frames = render(Gaussian2DPSF(130.0), x, y)
    fit = fit_spots(frames, np.arange(n), np.full(n, 7), np.full(n, 7), roi=7, method=method, pixel_size=PS)
    assert fit["valid"].all() and fit["converged"].all()
    np.testing.assert_allclose(fit["x"], (x + 0.5) * PS, atol=1.0)
    np.testing.assert_allclose(fit["y"], (y + 0.5) * PS, atol=1.0)
    np.testing.assert_allclose(fit["sx"], 130.0, atol=1.0)
    np.testing.assert_allclose(fit["photons"], 3000.0, rtol=2e-3)
    np.testing.assert_allclose(fit["bg"], 50.0, atol=0.2)
    assert fit["frame"].dtype == np.int64


def test_elliptical_fit_and_window_at_the_border(astig_psf):
    # elliptical model on astigmatic spots: widths and centre; spots near the frame's corner get a
    # window shifted inside the frame, not padded
    z = np.array([-400.0, 0.0, 350.0, 600.0])
    x = np.array([1.2, 7.3, 12.6, 6.9])
    y = np.array([0.8, 6.6, 13.4, 7.2])
    frames = render(astig_psf, x, y, z)
    n = len(z)
    fit = fit_spots(frames, np.arange(n), np.round(y).astype(int), np.round(x).astype(int), roi=11,
                    model="elliptical", pixel_size=PS, sigma_px=1.6)
    assert fit["valid"].all()
    sx, sy = astig_psf.sigmas(torch.as_tensor(z))
    np.testing.assert_allclose(fit["x"], (x + 0.5) * PS, atol=1.0)
    np.testing.assert_allclose(fit["y"], (y + 0.5) * PS, atol=1.0)
    # the two corner spots lose part of their light; the others fit the widths exactly
    np.testing.assert_allclose(fit["sx"][1:3], sx.numpy()[1:3], rtol=0.01)
    np.testing.assert_allclose(fit["sy"][1:3], sy.numpy()[1:3], rtol=0.01)


def test_fit_rejects_diverged_and_empty_windows():
    frames = np.full((2, 15, 15), 100.0)
    frames[1] = render(Gaussian2DPSF(130.0), [7.0], [7.0])[0]
    # a candidate on flat background, one on a spot, one far (> max_shift) from the spot
    fit = fit_spots(frames, [0, 1, 1], [7, 7, 7], [7, 7, 9], roi=7, pixel_size=PS)
    assert list(fit["valid"]) == [False, True, False]
    none = fit_spots(frames, [], [], [], roi=7, pixel_size=PS)
    assert all(len(v) == 0 for v in none.values())


# ----------------------------------------------------------------------------- detection


def test_detect_spots_finds_spots_and_ignores_noise():
    rng = np.random.default_rng(1)
    xs, ys = np.array([5.2, 20.7, 12.0]), np.array([6.1, 9.4, 24.6])
    psf = Gaussian2DPSF(130.0)
    x = torch.as_tensor((xs + 0.5) * PS)[None].float()
    y = torch.as_tensor((ys + 0.5) * PS)[None].float()
    clean = psf.render(x, y, None, torch.full_like(x, 2000.0), (32, 32), PS).numpy()[0] + 100.0
    frames = rng.poisson(np.stack([clean, np.full((32, 32), 100.0)] * 5)).astype(np.float64)
    f, r, c = detect_spots(frames, PS, sigma_px=1.0)
    assert f.dtype == r.dtype == c.dtype == np.int64
    spot_frames = f % 2 == 0
    assert (~spot_frames).sum() <= 1  # noise-only frames: (almost) nothing
    for t in range(0, 10, 2):  # one candidate per spot, at (or next to, noise) its pixel
        sel = f == t
        assert sel.sum() == 3
        d = np.abs(r[sel, None] - ys[None]) + np.abs(c[sel, None] - xs[None])
        assert np.all(d.min(axis=1) <= 1.0) and len(set(d.argmin(axis=1))) == 3
    # an explicit threshold above every response finds nothing; a constant frame gives nothing
    assert len(detect_spots(frames, PS, threshold=1e6)[0]) == 0
    assert len(detect_spots(np.full((3, 20, 20), 100.0), PS)[0]) == 0


# ----------------------------------------------------------------------------- localizer, 2D


def test_localizer_2d_noisy_simulation():
    sim = Simulator(Gaussian2DPSF(130.0), EMCCD.smlm2016(), frame_shape=(32, 32), n_range=(0, 3),
                    photons_range=(1000, 7000), background_range=(20, 200))
    frames, truth = sim.sample(80, torch.Generator().manual_seed(0))
    loc = GaussianFitLocalizer(PS, psf=Gaussian2DPSF(130.0))
    assert not loc.three_d and abs(loc.sigma_px - 1.3) < 0.01 and loc.roi == 5
    table = loc.localize(frames)
    assert list(table) == ["frame", "x", "y", "confidence", "photons", "background", "sigma_x", "sigma_y"]
    assert table["frame"].dtype == np.int64 and table["x"].dtype == np.float64
    order = np.lexsort((table["x"], table["frame"]))
    assert np.array_equal(order, np.arange(len(order)))
    np.testing.assert_array_equal(table["confidence"], table["photons"])
    m = validation_metrics(table, truth, 100.0, 500.0)
    assert m["jaccard"] > 0.85, m
    assert 5.0 < m["rmse_lateral"] < 25.0, m
    # the same table layout as the network's postprocess: assess() takes it as is
    mask = truth["mask"].numpy()
    tf = np.nonzero(mask)[0]
    txy = np.stack([truth["x"].numpy()[mask], truth["y"].numpy()[mask]], 1)
    res = assess(table["frame"], np.stack([table["x"], table["y"]], 1), tf, txy, 100.0)
    assert res["tp"] == m["tp"] and res["fp"] == m["fp"]
    ref = postprocess(torch.zeros(1, 1, 2), torch.ones(1, 1))
    assert set(ref) <= set(table)


def test_localizer_empty_frames_give_empty_tables(astig_cal):
    frames = np.full((4, 24, 24), 80.0)
    for loc, cols in ((GaussianFitLocalizer(PS), ("frame", "x", "y")),
                      (GaussianFitLocalizer(PS, calibration=astig_cal), ("frame", "x", "y", "z"))):
        for stack in (frames, frames[:0], torch.as_tensor(frames)):
            table = loc.localize(stack)
            assert tuple(table)[: len(cols)] == cols and "confidence" in table
            assert all(len(v) == 0 for v in table.values())
            assert table["frame"].dtype == np.int64 and table["x"].dtype == np.float64
    # a single (H, W) frame and the simulator's (T, 1, H, W) are accepted
    assert len(GaussianFitLocalizer(PS).localize(frames[0])["x"]) == 0
    assert len(GaussianFitLocalizer(PS).localize(frames[:, None])["x"]) == 0


def test_empirical_2d_psf_offset_is_corrected():
    # a z-dependent but symmetric PSF (defocus only) whose image centre sits 0.2 px right of and
    # 0.1 px above the emitter: the localizer stays 2D and removes that offset
    z = np.linspace(-300, 300, 13)
    sig = 1.2 * np.sqrt(1 + (z / 400) ** 2)
    k = np.arange(21) - 10.0
    gx = np.exp(-((k[None, :] - 0.2) ** 2) / (2 * sig[:, None] ** 2))
    gy = np.exp(-((k[None, :] + 0.1) ** 2) / (2 * sig[:, None] ** 2))
    psf = EmpiricalPSF(gy[:, :, None] * gx[:, None, :], pixel_size=PS, z_step=50.0, z0=-300.0)
    loc = GaussianFitLocalizer(PS, psf=psf)
    assert not loc.three_d
    np.testing.assert_allclose(loc.offset, (20.0, -10.0), atol=1.5)
    rng = np.random.default_rng(3)
    x, y = 10 + rng.uniform(-0.5, 0.5, 12), 10 + rng.uniform(-0.5, 0.5, 12)
    frames = render(psf, x, y, np.zeros(12), shape=(21, 21))
    table = loc.localize(frames)
    assert len(table["x"]) == 12
    np.testing.assert_allclose(table["x"], (x + 0.5) * PS, atol=2.0)
    np.testing.assert_allclose(table["y"], (y + 0.5) * PS, atol=2.0)


# ----------------------------------------------------------------------------- astigmatic 3D


def test_astigmatic_calibration_curves_and_z(astig_psf, astig_cal):
    cal = astig_cal
    assert cal.z_range == (-750.0, 750.0)
    true_sx, true_sy = (t.numpy() for t in astig_psf.sigmas(torch.as_tensor(cal.z)))
    # curves of the elliptical fit match the model's widths (pixel integration is in the fit)
    np.testing.assert_allclose(cal.sx, true_sx, rtol=0.01)
    np.testing.assert_allclose(cal.sy, true_sy, rtol=0.01)
    # sigma_x is narrowest at z = +c, sigma_y at -c; monotonic on either side
    right, left = cal.z > 350, cal.z < 250
    assert np.all(np.diff(cal.sx[right]) > 0) and np.all(np.diff(cal.sx[left]) < 0)
    right, left = cal.z > -250, cal.z < -350
    assert np.all(np.diff(cal.sy[right]) > 0) and np.all(np.diff(cal.sy[left]) < 0)
    assert np.abs(cal.dx).max() < 1.0 and np.abs(cal.dy).max() < 1.0  # a centred model: no offset
    # z of noiseless spots at random z and sub-pixel positions
    rng = np.random.default_rng(2)
    n = 60
    z = rng.uniform(-700, 700, n)
    x, y = 7 + rng.uniform(-0.5, 0.5, n), 7 + rng.uniform(-0.5, 0.5, n)
    frames = render(astig_psf, x, y, z)
    fit = fit_spots(frames, np.arange(n), np.full(n, 7), np.full(n, 7), roi=cal.roi, model="elliptical",
                    pixel_size=PS, sigma_px=cal.sigma_px)
    assert fit["valid"].all()
    zhat, dist = cal.z_from_sigmas(fit["sx"], fit["sy"], return_distance=True)
    assert np.abs(zhat - z).max() < 10.0
    assert dist.max() < 0.2
    # z_from_sigmas is monotonic along the calibrated curve
    zz = cal.z_from_sigmas(cal.sx[::25], cal.sy[::25])
    np.testing.assert_allclose(zz, cal.z[::25], atol=1.0)
    back = AstigmaticCalibration.from_dict(cal.to_dict())
    np.testing.assert_array_equal(back.z_from_sigmas(fit["sx"], fit["sy"]), zhat)


def test_calibration_measures_a_z_dependent_lateral_offset():
    # empirical PSF whose image moves right by z / 10 nm with z: dx(z) is calibrated and removed
    z = np.linspace(-400, 400, 17)
    sx = 1.3 * np.sqrt(1 + ((z - 250) / 400) ** 2)
    sy = 1.3 * np.sqrt(1 + ((z + 250) / 400) ** 2)
    k = np.arange(25) - 12.0
    shift = z / 1000.0  # px
    gx = np.exp(-((k[None, :] - shift[:, None]) ** 2) / (2 * sx[:, None] ** 2))
    gy = np.exp(-(k[None, :] ** 2) / (2 * sy[:, None] ** 2))
    psf = EmpiricalPSF(gy[:, :, None] * gx[:, None, :], pixel_size=PS, z_step=50.0, z0=-400.0)
    loc = GaussianFitLocalizer(PS, psf=psf)
    assert loc.three_d
    cal = loc.calibration
    inner = np.abs(cal.z) <= 350
    np.testing.assert_allclose(cal.dx[inner], cal.z[inner] / 10.0, atol=2.0)
    assert np.abs(cal.dy[inner]).max() < 2.0
    zt = np.array([-300.0, -100.0, 120.0, 310.0])
    rng = np.random.default_rng(4)
    x, y = 12 + rng.uniform(-0.5, 0.5, 4), 12 + rng.uniform(-0.5, 0.5, 4)
    table = loc.localize(render(psf, x, y, zt, shape=(25, 25)))
    assert len(table["x"]) == 4
    order = np.argsort(table["frame"])
    np.testing.assert_allclose(table["x"][order], (x + 0.5) * PS, atol=3.0)
    np.testing.assert_allclose(table["z"][order], zt, atol=20.0)


def test_localizer_3d_noisy_simulation(astig_psf, astig_cal):
    sim = Simulator(astig_psf, EMCCD.smlm2016(), frame_shape=(32, 32), n_range=(1, 2),
                    photons_range=(3000, 7000), background_range=(50, 100), z_range=(-500, 500))
    frames, truth = sim.sample(60, torch.Generator().manual_seed(5))
    loc = GaussianFitLocalizer(PS, calibration=astig_cal)
    assert loc.three_d and loc.roi == astig_cal.roi
    table = loc.localize(frames)
    assert list(table)[:4] == ["frame", "x", "y", "z"]
    m = validation_metrics(table, truth, 100.0, 500.0)
    assert m["jaccard"] > 0.8, m
    assert m["rmse_lateral"] < 30.0 and m["rmse_axial"] < 100.0, m


def test_neighbour_passes_run_on_dense_frames():
    sim = Simulator(Gaussian2DPSF(130.0), EMCCD.smlm2016(), frame_shape=(32, 32), density=2.0)
    frames, truth = sim.sample(20, torch.Generator().manual_seed(6))
    plain = validation_metrics(GaussianFitLocalizer(PS).localize(frames), truth)
    dense = validation_metrics(GaussianFitLocalizer(PS, neighbour_passes=1).localize(frames), truth)
    assert plain["jaccard"] > 0.4 and dense["jaccard"] > plain["jaccard"] - 0.02


# ----------------------------------------------------------------------------- bad input


def test_bad_input_raises_input_error(astig_cal):
    good = np.full((2, 16, 16), 10.0)
    loc = GaussianFitLocalizer(PS)
    for bad in (np.zeros(16), np.zeros((2, 2, 16, 16)), np.zeros((1, 2, 3, 4, 5))):
        with pytest.raises(InputError, match="shape"):
            loc.localize(bad)
    for value in (np.nan, np.inf):
        frames = good.copy()
        frames[1, 3, 4] = value
        with pytest.raises(InputError, match="NaN or inf"):
            loc.localize(frames)
        with pytest.raises(InputError, match="NaN or inf"):
            detect_spots(frames, PS)
    with pytest.raises(InputError, match="smaller"):
        loc.localize(np.zeros((2, 4, 4)))
    for roi in (4, 6, 3, 1):
        with pytest.raises(InputError, match="roi"):
            GaussianFitLocalizer(PS, roi=roi)
        with pytest.raises(InputError, match="roi"):
            fit_spots(good, [0], [5], [5], roi=roi)
    for ps in (0.0, -100.0, np.nan, "a"):
        with pytest.raises(InputError, match="pixel_size"):
            GaussianFitLocalizer(ps)
        with pytest.raises(InputError, match="pixel_size"):
            detect_spots(good, ps)
    with pytest.raises(InputError, match="outside"):
        fit_spots(good, [0], [16], [5])
    with pytest.raises(InputError, match="model"):
        fit_spots(good, [0], [5], [5], model="airy")
    with pytest.raises(InputError, match="nm/px"):
        GaussianFitLocalizer(160.0, calibration=astig_cal)
    with pytest.raises(InputError, match="z range"):
        AstigmaticCalibration.from_psf(Gaussian2DPSF(130.0), PS)
    with pytest.raises(InputError, match="3D"):
        GaussianFitLocalizer(PS, psf=Gaussian2DPSF(130.0), three_d=True)
    with pytest.raises(InputError, match="psf"):
        psf_sigma("not a psf", PS)
