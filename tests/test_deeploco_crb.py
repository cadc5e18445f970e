"""Cramér–Rao bound of the DeepLoco forward model against closed forms."""

import math

import numpy as np
import pytest

from starloc.deeploco import EMCCD, SCMOS, AstigmaticPSF, Gaussian2DPSF
from starloc.deeploco.crb import cramer_rao_bound, crb_covariance, noise_model
from starloc.errors import InputError

GAUSS = Gaussian2DPSF(130.0)
ASTIG = AstigmaticPSF(sigma0=130.0, c=300.0, d=400.0)


@pytest.mark.parametrize("photons", [1e3, 1e4])
def test_gaussian_without_background_matches_the_pixelated_gaussian_bound(photons):
    # Poisson, no background: var(x) = (sigma^2 + a^2/12) / N for a pixel-integrated Gaussian
    crb = cramer_rao_bound(GAUSS, photons, 0.0, pixel_size=100.0)
    expected = math.sqrt((130.0**2 + 100.0**2 / 12) / photons)
    assert crb["x"] == pytest.approx(expected, rel=2e-3)
    assert crb["y"] == pytest.approx(crb["x"], rel=1e-9)


def test_emccd_excess_noise_widens_the_bound_by_sqrt_2_over_qe():
    poisson = cramer_rao_bound(GAUSS, 5000.0, 0.0, pixel_size=100.0)["x"]
    emccd = cramer_rao_bound(GAUSS, 5000.0, 0.0, camera=EMCCD(qe=0.9, read_noise=0.0), pixel_size=100.0)["x"]
    assert emccd / poisson == pytest.approx(math.sqrt(2 / 0.9), rel=1e-6)


def test_noise_models():
    assert noise_model(None) == (1.0, 0.0)
    a, r2 = noise_model(SCMOS(qe=0.8, read_noise=1.6))
    assert a == pytest.approx(1.25) and r2 == pytest.approx(4.0)
    a, r2 = noise_model(EMCCD(qe=0.9, em_gain=300.0, read_noise=74.4, spurious_charge=0.0))
    assert a == pytest.approx(2 / 0.9) and r2 == pytest.approx((74.4 / 270.0) ** 2)


def test_background_and_fewer_photons_loosen_the_bound():
    base = cramer_rao_bound(GAUSS, 2000.0, 10.0, pixel_size=100.0)["x"]
    assert cramer_rao_bound(GAUSS, 2000.0, 100.0, pixel_size=100.0)["x"] > base
    assert cramer_rao_bound(GAUSS, 1000.0, 10.0, pixel_size=100.0)["x"] > base


def test_astigmatic_bound_follows_the_spot_width():
    # at z = +c the spot is narrowest along x and widest along y
    crb = cramer_rao_bound(ASTIG, 3000.0, 20.0, z=300.0, pixel_size=100.0)
    assert set(crb) == {"x", "y", "z"}
    assert crb["x"] < crb["y"]
    assert 0 < crb["z"] < 100
    flipped = cramer_rao_bound(ASTIG, 3000.0, 20.0, z=-300.0, pixel_size=100.0)
    assert flipped["x"] == pytest.approx(crb["y"], rel=1e-3)


def test_crb_covariance_is_vectorized_and_symmetric_positive_definite():
    cov = crb_covariance(ASTIG, [1000.0, 5000.0], 50.0, [-200.0, 400.0], pixel_size=100.0)
    assert cov.shape == (2, 3, 3)
    np.testing.assert_allclose(cov, np.swapaxes(cov, 1, 2), rtol=1e-9, atol=1e-9)
    assert (np.linalg.eigvalsh(cov) > 0).all()
    single = cramer_rao_bound(ASTIG, 5000.0, 50.0, z=400.0, pixel_size=100.0)
    assert math.sqrt(cov[1, 0, 0]) == pytest.approx(single["x"], rel=1e-6)


@pytest.mark.parametrize("kw", [dict(photons=0.0), dict(photons=float("nan")), dict(background=-1.0),
                                dict(z=900.0)])
def test_bad_arguments_are_refused(kw):
    args = dict(photons=1000.0, background=10.0, z=0.0) | kw
    with pytest.raises(InputError):
        cramer_rao_bound(ASTIG, args["photons"], args["background"], z=args["z"], pixel_size=100.0)
