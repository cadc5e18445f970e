"""DeepLoco simulator: batches of frames with exact, padded ground truth."""

import numpy as np
import pytest
import torch

from starloc.deeploco import EMCCD, AstigmaticPSF, EmpiricalPSF, Gaussian2DPSF, Simulator
from starloc.errors import InputError

PS = 100.0


@pytest.fixture(scope="module")
def empirical_psf() -> EmpiricalPSF:
    """Empirical PSF from a small noiseless astigmatic bead stack (2 beads, z -200..200 nm)."""
    model = AstigmaticPSF(sigma0=110.0, c=200.0, d=400.0)
    z = torch.linspace(-200.0, 200.0, 21)
    x = torch.tensor([12.3, 36.8]).mul(PS).expand(21, 2)
    y = torch.tensor([11.6, 12.2]).mul(PS).expand(21, 2)
    stack = model.render(x, y, z[:, None].expand(21, 2), torch.full((21, 2), 1e5), (26, 50), PS) + 100
    return EmpiricalPSF.from_bead_stack(stack.numpy(), pixel_size=PS, z_step=20.0, z0=-200.0, crop=17)


def test_shapes_dtypes_mask_and_ranges():
    sim = Simulator(Gaussian2DPSF(130.0), EMCCD.smlm2016(), frame_shape=(24, 32), n_range=(0, 6),
                    photons_range=(1000, 2000), background_range=(10, 50))
    frames, truth = sim.sample(16, torch.Generator().manual_seed(0))
    assert frames.shape == (16, 1, 24, 32) and frames.dtype == torch.float32
    for key in ("x", "y", "z", "photons"):
        assert truth[key].shape == (16, 6) and truth[key].dtype == torch.float32
    mask, n = truth["mask"], truth["n"]
    assert mask.dtype == torch.bool and truth["background"].shape == (16,)
    assert torch.equal(mask.sum(1), n) and int(n.min()) >= 0 and int(n.max()) <= 6
    assert torch.equal(mask, torch.arange(6)[None] < n[:, None])  # real emitters first
    for key in ("x", "y", "z", "photons"):
        assert bool((truth[key][~mask] == 0).all())
    x, y, ph = truth["x"][mask], truth["y"][mask], truth["photons"][mask]
    assert bool(((x >= 0) & (x < 32 * PS) & (y >= 0) & (y < 24 * PS)).all())
    assert bool(((ph >= 1000) & (ph <= 2000)).all()) and bool((truth["z"] == 0).all())
    assert bool(((truth["background"] >= 10) & (truth["background"] <= 50)).all())


def test_same_seed_same_batch():
    sim = Simulator(AstigmaticPSF(), EMCCD.smlm2016(), frame_shape=(16, 16), density=2.0)
    f1, t1 = sim.sample(8, torch.Generator().manual_seed(42))
    f2, t2 = sim.sample(8, torch.Generator().manual_seed(42))
    assert torch.equal(f1, f2) and all(torch.equal(t1[k], t2[k]) for k in t1)
    f3, _ = sim.sample(8, torch.Generator().manual_seed(43))
    assert not torch.equal(f1, f3)
    assert float(t1["z"][t1["mask"]].abs().max()) <= 750.0


def test_noiseless_frames_are_render_plus_background(empirical_psf):
    sim = Simulator(empirical_psf, EMCCD.smlm2016(), frame_shape=(20, 20), n_range=(1, 4),
                    background_range=(5, 15))
    assert sim.z_range == (-200.0, 200.0)  # the PSF's calibrated range by default
    frames, truth = sim.sample(6, torch.Generator().manual_seed(3), noiseless=True)
    expected = empirical_psf.render(truth["x"], truth["y"], truth["z"], truth["photons"], (20, 20), PS,
                                    mask=truth["mask"]) + truth["background"][:, None, None]
    torch.testing.assert_close(frames[:, 0], expected)
    # noisy frames are normalized back to photons: their mean is the expected image
    many, t = sim.sample(64, torch.Generator().manual_seed(4))
    mu = sim.expected(t)
    assert abs(float(many[:, 0].mean() / mu.mean()) - 1) < 0.02
    # Poisson-only simulation (camera=None) gives whole photon counts
    pois, _ = Simulator(empirical_psf, None, frame_shape=(20, 20), n_range=(1, 2)).sample(
        2, torch.Generator().manual_seed(0))
    assert bool((pois == pois.round()).all())


def test_mean_single_emitter_image_peaks_at_the_right_pixel(empirical_psf):
    """Many noiseless frames of one emitter at a known position (jittered within +-0.3 px): the
    mean image peaks on that pixel and its centroid is the mean position (corner-origin nm)."""
    sim = Simulator(empirical_psf, None, frame_shape=(24, 24), n_range=(1, 1), background_range=(0, 0))
    B = 200
    g = torch.Generator().manual_seed(7)
    truth = sim.sample_emitters(B, g)
    row, col = 9, 14
    truth["x"][:, 0] = (col + 0.5 + 0.6 * (torch.rand(B, generator=g) - 0.5)) * PS
    truth["y"][:, 0] = (row + 0.5 + 0.6 * (torch.rand(B, generator=g) - 0.5)) * PS
    mean = sim.expected(truth).mean(0)
    assert divmod(int(mean.argmax()), 24) == (row, col)
    r = torch.arange(24.0)
    m = mean.sum()
    cx = float(((mean.sum(0) * r).sum() / m + 0.5) * PS)
    cy = float(((mean.sum(1) * r).sum() / m + 0.5) * PS)
    assert abs(cx - float(truth["x"][:, 0].mean())) < 2.0
    assert abs(cy - float(truth["y"][:, 0].mean())) < 2.0


def test_density_gives_poisson_counts():
    sim = Simulator(Gaussian2DPSF(), None, frame_shape=(32, 32), density=1.5)
    area = 32 * 32 * PS**2 / 1e6  # µm²
    n = sim.sample_emitters(4000, torch.Generator().manual_seed(11))["n"].double()
    assert abs(float(n.mean()) - 1.5 * area) < 4 * np.sqrt(1.5 * area / 4000)
    assert abs(float(n.var()) / (1.5 * area) - 1) < 0.1  # Poisson: variance = mean
    assert sim.max_emitters > 1.5 * area + 5 * np.sqrt(1.5 * area)
    counts = Simulator(Gaussian2DPSF(), None, n_range=(2, 5)).sample_emitters(
        500, torch.Generator().manual_seed(1))["n"]
    assert set(counts.tolist()) == {2, 3, 4, 5}


def test_log_uniform_photons_spread_evenly_over_each_factor_of_brightness():
    sim = Simulator(Gaussian2DPSF(), photons_range=(100.0, 10000.0), photons_distribution="log-uniform",
                    n_range=(50, 50))
    truth = sim.sample_emitters(200, torch.Generator().manual_seed(0))
    photons = truth["photons"][truth["mask"]].numpy()
    assert photons.min() >= 100.0 and photons.max() <= 10000.0
    # equal counts per decade: half below the geometric mean 1000, a quarter in each half-decade
    assert np.mean(photons < 1000.0) == pytest.approx(0.5, abs=0.02)
    assert np.mean(photons < 10**2.5) == pytest.approx(0.25, abs=0.02)
    assert sim.to_dict()["photons_distribution"] == "log-uniform"


def test_bad_settings(empirical_psf):
    with pytest.raises(InputError, match="outside the PSF's calibrated range"):
        Simulator(empirical_psf, z_range=(-750, 750))
    with pytest.raises(InputError, match="pixel size mismatch"):
        Simulator(empirical_psf, pixel_size=160.0)
    with pytest.raises(InputError, match="not both"):
        Simulator(Gaussian2DPSF(), density=1.0, n_range=(0, 3))
    with pytest.raises(InputError, match="max_emitters"):
        Simulator(Gaussian2DPSF(), n_range=(0, 10), max_emitters=5)
    with pytest.raises(InputError):
        Simulator(Gaussian2DPSF(), photons_range=(500, 100))
    with pytest.raises(InputError, match="photons_distribution"):
        Simulator(Gaussian2DPSF(), photons_distribution="gamma")
    with pytest.raises(InputError, match="positive low end"):
        Simulator(Gaussian2DPSF(), photons_range=(0, 100), photons_distribution="log-uniform")
    with pytest.raises(InputError, match="PSFModel"):
        Simulator("beads.tif")
    for bad in (-0.1, 1.0, "some"):
        with pytest.raises(InputError, match="background_variation"):
            Simulator(Gaussian2DPSF(), background_variation=bad)
    Simulator(Gaussian2DPSF(), z_range=(-350, 350))  # a z-independent PSF accepts any z range


def test_settings_round_trip_gives_the_same_frames():
    psf = AstigmaticPSF()
    sim = Simulator(psf, EMCCD.smlm2016(), frame_shape=(24, 32), n_range=(2, 5), photons_range=(800, 9000),
                    photons_distribution="log-uniform", background_range=(30, 60), z_range=(-200, 300),
                    background_variation=0.4)
    again = Simulator.from_dict(sim.to_dict(), psf, sim.camera)
    assert again.to_dict() == sim.to_dict()
    a, ta = sim.sample(4, torch.Generator().manual_seed(3))
    b, tb = again.sample(4, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.equal(ta["z"], tb["z"])
    with pytest.raises(InputError, match="incomplete"):
        Simulator.from_dict({"frame_shape": [24, 32]}, psf)
    older = {k: v for k, v in sim.to_dict().items() if k != "background_variation"}  # written before it existed
    assert Simulator.from_dict(older, psf).background_variation == 0.0


def test_a_varying_background_is_smooth_bounded_and_seeded():
    sim = Simulator(Gaussian2DPSF(130.0), None, frame_shape=(64, 48), n_range=(0, 1), photons_range=(0, 0),
                    background_range=(20, 200),
                    background_variation=0.5)
    frames, truth = sim.sample(64, torch.Generator().manual_seed(0), noiseless=True)
    field, level = truth["background_field"], truth["background"][:, None, None]
    assert field.shape == (64, 64, 48)
    torch.testing.assert_close(frames[:, 0], level + field)  # emitters of 0 photons: background only
    relative = field / level
    assert float(relative.abs().max()) <= 0.5 + 1e-6 and float(frames.min()) >= 0.5 * 20 - 1e-3
    assert float(relative.mean(dim=(1, 2)).abs().max()) < 1e-4  # varies around the frame's level
    peaks = relative.abs().amax(dim=(1, 2))
    assert float(peaks.min()) < 0.1 and float(peaks.max()) > 0.4  # amplitudes spread over [0, 0.5]
    # smooth: correlation lengths of 0.5-4 um are 5-40 px, so neighbouring pixels nearly agree
    step = (relative[:, :, 1:] - relative[:, :, :-1]).abs().amax(dim=(1, 2))
    assert bool((step <= 0.25 * peaks + 1e-6).all())  # white noise: steps as large as the peak
    again, t2 = sim.sample(64, torch.Generator().manual_seed(0), noiseless=True)
    assert torch.equal(frames, again) and torch.equal(field, t2["background_field"])


def test_a_flat_background_draws_what_it_drew_before_variation_existed():
    """background_variation=0 adds no field and no random draws: seeded batches (and so models
    trained on them) are the same as before the option."""
    flat = Simulator(AstigmaticPSF(), EMCCD.smlm2016(), frame_shape=(16, 16), density=2.0)
    a, ta = flat.sample(4, torch.Generator().manual_seed(7))
    assert "background_field" not in ta
    varying = Simulator(AstigmaticPSF(), EMCCD.smlm2016(), frame_shape=(16, 16), density=2.0,
                        background_variation=0.3)
    b, tb = varying.sample(4, torch.Generator().manual_seed(7))
    assert torch.equal(ta["x"], tb["x"]) and torch.equal(ta["background"], tb["background"])
    assert not torch.equal(a, b)
