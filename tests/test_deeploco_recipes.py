"""Default DeepLoco training data and the bead-stack PSF helper."""

import numpy as np
import pytest
import tifffile

from starloc.deeploco import EMCCD, Gaussian2DPSF
from starloc.deeploco.recipes import (BACKGROUND, BACKGROUND_VARIATION, MAX_DENSITY, PHOTONS, PHOTONS_DISTRIBUTION,
                                      bead_psf, default_n_range, default_simulator)
from starloc.errors import InputError


def test_default_simulator_covers_sparse_to_dense_frames():
    sim = default_simulator(Gaussian2DPSF(130.0), EMCCD.smlm2016())
    assert sim.frame_shape == (64, 64) and sim.pixel_size == 100.0
    assert sim.n_range == (0, int(np.ceil(MAX_DENSITY * 6.4 * 6.4)))
    assert sim.photons_range == PHOTONS and sim.background_range == BACKGROUND
    assert sim.photons_distribution == PHOTONS_DISTRIBUTION == "log-uniform"
    assert sim.background_variation == BACKGROUND_VARIATION == 0.5
    assert default_n_range((32, 32), 100.0) == (0, int(np.ceil(MAX_DENSITY * 3.2 * 3.2)))


def test_default_simulator_overrides():
    sim = default_simulator(Gaussian2DPSF(130.0), None, frame_shape=(32, 32), density=0.5,
                            photons_range=(100.0, 200.0), background_variation=0.0)
    assert sim.density == 0.5 and sim.n_range is None and sim.photons_range == (100.0, 200.0)
    assert sim.background_variation == 0.0


def _bead_stack(path, z=11):
    yy, xx = np.mgrid[0:48, 0:48]
    stack = np.full((z, 48, 48), 100.0)
    for k in range(z):
        s = 1.2 + 0.05 * abs(k - z // 2)
        stack[k] += 3000 * np.exp(-((yy - 24.3) ** 2 + (xx - 23.6) ** 2) / (2 * s * s))
    tifffile.imwrite(path, np.random.default_rng(0).poisson(stack).astype(np.uint16))


def test_bead_psf_3d_and_in_focus_2d(tmp_path):
    path = tmp_path / "beads.tif"
    _bead_stack(path)
    psf3 = bead_psf(path, z_step=10.0, z0=-50.0, crop=15)
    assert psf3.z_dependent and psf3.z_range == (-50.0, 50.0)
    psf2 = bead_psf(path, modality="2D", z_step=10.0, z0=-50.0, crop=15)
    assert not psf2.z_dependent and psf2.stack.shape == (1, 15, 15)
    assert np.allclose(psf2.stack[0].numpy(), psf3.slice_at(0.0).numpy(), atol=1e-7)
    out = bead_psf(path, modality="2D", defocus=30.0, z_step=10.0, z0=-50.0, crop=15)
    assert out.lateral and not out.z_dependent and out.z_range == (-30.0, 30.0) and out.stack.shape == (7, 15, 15)
    with pytest.raises(InputError, match="not found"):
        bead_psf(tmp_path / "missing.tif")
    (tmp_path / "bad.tif").write_bytes(b"not a tiff")
    with pytest.raises(InputError, match="cannot read"):
        bead_psf(tmp_path / "bad.tif")
