"""DeepLoco PSF models (empirical from bead stacks, Gaussian, astigmatic) and camera models."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from starloc.deeploco.camera import EMCCD, SCMOS, Camera, camera_preset
from starloc.deeploco.psf import AstigmaticPSF, EmpiricalPSF, Gaussian2DPSF, estimate_baseline
from starloc.errors import InputError

PS = 100.0
BEADS = Path(__file__).resolve().parents[2] / "shared" / "data" / "smlm2016-beads"


def moments(img: torch.Tensor):
    """Centroid (x, y) in nm (corner origin) and second moments (var_x, var_y) in px² per frame."""
    img = img.double()
    H, W = img.shape[-2:]
    r = torch.arange(H, dtype=torch.float64)[:, None]
    c = torch.arange(W, dtype=torch.float64)[None, :]
    m = img.sum((-2, -1))
    cy = (img * r).sum((-2, -1)) / m
    cx = (img * c).sum((-2, -1)) / m
    vy = (img * (r - cy[..., None, None]) ** 2).sum((-2, -1)) / m
    vx = (img * (c - cx[..., None, None]) ** 2).sum((-2, -1)) / m
    return (cx + 0.5) * PS, (cy + 0.5) * PS, vx, vy


# ----------------------------------------------------------------------------- synthetic beads

TRUE_ASTIG = AstigmaticPSF(sigma0=110.0, c=200.0, d=400.0)
Z_SYN = torch.linspace(-300.0, 300.0, 61)  # 10 nm steps
BEAD_RC = np.array([[16.3, 15.8], [15.6, 46.2], [46.45, 16.1], [46.0, 45.7]])  # (row, col) px


@pytest.fixture(scope="module")
def synthetic_stack() -> np.ndarray:
    """Noiseless 61 x 64 x 64 bead stack of the astigmatic model, 4 beads at sub-pixel positions,
    baseline 100 ADU."""
    Z, n = len(Z_SYN), len(BEAD_RC)
    x = torch.tensor((BEAD_RC[:, 1] + 0.5) * PS, dtype=torch.float32).expand(Z, n)
    y = torch.tensor((BEAD_RC[:, 0] + 0.5) * PS, dtype=torch.float32).expand(Z, n)
    img = TRUE_ASTIG.render(x, y, Z_SYN[:, None].expand(Z, n), torch.full((Z, n), 1e5), (64, 64), PS)
    return (img + 100.0).numpy()


@pytest.fixture(scope="module")
def synthetic_psf(synthetic_stack) -> EmpiricalPSF:
    return EmpiricalPSF.from_bead_stack(synthetic_stack, pixel_size=PS, z_step=10.0, z0=-300.0)


def random_positions(n: int, seed: int, lo_px: float = 10.0):
    g = torch.Generator().manual_seed(seed)
    x = (lo_px + torch.rand(n, 1, generator=g)) * PS
    y = (lo_px + torch.rand(n, 1, generator=g)) * PS
    z = torch.rand(n, 1, generator=g) * 600 - 300
    return x, y, z


@pytest.mark.parametrize("psf", [Gaussian2DPSF(130.0), AstigmaticPSF(120.0, 250.0, 400.0)], ids=repr)
def test_parametric_unit_mass_and_centroid(psf):
    x, y, z = random_positions(64, seed=1)
    img = psf.render(x, y, z, torch.ones_like(x), (21, 21), PS)
    assert img.shape == (64, 21, 21)
    torch.testing.assert_close(img.sum((1, 2)), torch.ones(64), atol=1e-5, rtol=0)
    cx, cy, _, _ = moments(img)
    assert (cx - x[:, 0]).abs().max() < 2.0 and (cy - y[:, 0]).abs().max() < 2.0


def test_corner_origin_convention():
    psf = Gaussian2DPSF(120.0)
    # An emitter at x = (j + 0.5) * pixel_size is centred on pixel column j (row i likewise).
    img = psf.render(torch.tensor([[(7 + 0.5) * PS]]), torch.tensor([[(8 + 0.5) * PS]]), None,
                     torch.tensor([[1000.0]]), (17, 16), PS)[0]
    assert divmod(int(img.argmax()), 16) == (8, 7)
    torch.testing.assert_close(img[8, 6], img[8, 8])  # symmetric about the pixel centre
    torch.testing.assert_close(img[7, 7], img[9, 7])
    cx, cy, _, _ = moments(img)
    assert abs(float(cx) - 750.0) < 1e-3 and abs(float(cy) - 850.0) < 1e-3


def test_astigmatic_widths_follow_formula():
    psf = AstigmaticPSF(sigma0=120.0, c=300.0, d=400.0)
    z = torch.tensor([[-300.0, 0.0, 300.0]]).T  # 3 frames, 1 emitter each
    x = torch.full((3, 1), 15.5 * PS)
    img = psf.render(x, x, z, torch.ones(3, 1), (31, 31), PS)
    _, _, vx, vy = moments(img)
    sx, sy = psf.sigmas(z[:, 0])
    # pixel integration adds 1/12 px² to the variance of a Gaussian
    torch.testing.assert_close(vx, (sx / PS).double() ** 2 + 1 / 12, rtol=2e-3, atol=0)
    torch.testing.assert_close(vy, (sy / PS).double() ** 2 + 1 / 12, rtol=2e-3, atol=0)
    assert vy[0] < vx[0] and abs(float(vy[1] - vx[1])) < 1e-6 and vy[2] > vx[2]


def test_render_batch_mask_borders_and_linearity():
    psf = Gaussian2DPSF(130.0)
    x = torch.tensor([[800.0, 1500.0, 0.0], [-5000.0, 1000.0, 900.0]])
    y = torch.tensor([[800.0, 1000.0, 0.0], [500.0, 1200.0, 900.0]])
    ph = torch.tensor([[100.0, 200.0, 1e6], [50.0, 300.0, 7.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    img = psf.render(x, y, None, ph, (20, 30), PS, mask=mask)
    assert img.shape == (2, 20, 30) and img.dtype == torch.float32
    # masked slot (1e6 photons) ignored; far-outside emitter contributes nothing
    assert abs(float(img[0].sum()) - 300.0) < 1e-3
    assert abs(float(img[1].sum()) - 307.0) < 1e-3
    # frames are sums of single-emitter renders
    single = psf.render(x[1:, 1:2], y[1:, 1:2], None, ph[1:, 1:2], (20, 30), PS)
    other = psf.render(x[1:, 2:3], y[1:, 2:3], None, ph[1:, 2:3], (20, 30), PS)
    torch.testing.assert_close(img[1:], single + other)
    # an emitter on the corner loses 3/4 of its photons
    corner = psf.render(torch.zeros(1, 1), torch.zeros(1, 1), None, torch.ones(1, 1), (20, 30), PS)
    assert abs(float(corner.sum()) - 0.25) < 1e-3


def test_bead_registration_is_exact_on_synthetic_stack(synthetic_psf):
    psf = synthetic_psf
    assert psf.meta["n_beads"] == 4 and abs(psf.meta["baseline_adu"] - 100.0) < 1e-6
    assert psf.stack.shape == (61, 21, 21) and psf.z_range == (-300.0, 300.0)
    measured = np.array(psf.meta["bead_centres_nm"])
    truth = np.c_[(BEAD_RC[:, 1] + 0.5) * PS, (BEAD_RC[:, 0] + 0.5) * PS]
    nearest = np.sqrt(((measured[:, None] - truth[None]) ** 2).sum(-1)).min(axis=1)
    assert nearest.max() < 0.5  # nm
    torch.testing.assert_close(psf.stack.sum((1, 2)), torch.ones(61))


def test_empirical_translation_matches_model(synthetic_psf):
    """Sub-pixel translation + z interpolation reproduce the model the beads were drawn from."""
    x, y, z = random_positions(100, seed=2, lo_px=14.0)
    a = synthetic_psf.render(x, y, z, torch.ones_like(x), (29, 29), PS)
    b = TRUE_ASTIG.render(x, y, z, torch.ones_like(x), (29, 29), PS)
    torch.testing.assert_close(a.sum((1, 2)), torch.ones(100), atol=1e-4, rtol=0)
    assert float(((a - b).abs().amax((1, 2)) / b.amax((1, 2))).max()) < 5e-3
    cx, cy, _, _ = moments(a)
    assert (cx - x[:, 0]).abs().max() < 2.0 and (cy - y[:, 0]).abs().max() < 2.0
    # at a pixel centre and on a slice the stored slice comes back exactly
    at = synthetic_psf.render(torch.tensor([[10.5 * PS]]), torch.tensor([[10.5 * PS]]),
                              torch.tensor([[-300.0 + 10 * 17]]), torch.ones(1, 1), (21, 21), PS)[0]
    torch.testing.assert_close(at, synthetic_psf.stack[17], atol=1e-6, rtol=0)


def test_empirical_z_interpolation_is_linear_and_clamped(synthetic_psf):
    psf = synthetic_psf
    xy = torch.full((5, 1), 10.5 * PS)
    z = torch.tensor([[100.0], [103.0], [107.5], [110.0], [109.999]])
    img = psf.render(xy, xy, z, torch.ones(5, 1), (21, 21), PS)
    lo, hi = psf.stack[40], psf.stack[41]  # z = 100 and 110
    torch.testing.assert_close(img[1], 0.7 * lo + 0.3 * hi, atol=1e-6, rtol=0)
    torch.testing.assert_close(img[2], 0.25 * lo + 0.75 * hi, atol=1e-6, rtol=0)
    assert bool(((img[1] >= torch.minimum(lo, hi) - 1e-7) & (img[1] <= torch.maximum(lo, hi) + 1e-7)).all())
    assert float((img[4] - img[3]).abs().max()) < 1e-5  # continuous
    # outside the calibrated range: clamped to the edge slices
    out = psf.render(xy[:2], xy[:2], torch.tensor([[-900.0], [900.0]]), torch.ones(2, 1), (21, 21), PS)
    torch.testing.assert_close(out[0], psf.stack[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[1], psf.stack[-1], atol=1e-6, rtol=0)


def test_empirical_round_trip_dict_and_pixel_mismatch(synthetic_psf):
    again = EmpiricalPSF.from_dict(synthetic_psf.to_dict())
    torch.testing.assert_close(again.stack, synthetic_psf.stack)
    with pytest.raises(InputError, match="pixel size mismatch"):
        synthetic_psf.render(torch.ones(1, 1), torch.ones(1, 1), None, torch.ones(1, 1), (8, 8), 160.0)
    with pytest.raises(InputError, match="pixel size mismatch"):  # even with no emitter to draw
        synthetic_psf.render(torch.ones(1, 1), torch.ones(1, 1), None, torch.ones(1, 1), (8, 8), 160.0,
                             mask=torch.zeros(1, 1, dtype=torch.bool))


def test_a_2d_psf_out_of_focus_keeps_the_slices_near_focus_and_draws_emitters_there(synthetic_psf):
    """in_focus(defocus): the slices within +-defocus, z_dependent False (a 2D model), z_range
    the simulator samples from; rendered out of focus; round trip; bad values refused."""
    from starloc.deeploco.simulate import Simulator

    lo, hi = synthetic_psf.z_range
    d = min(-lo, hi) / 2
    out = synthetic_psf.in_focus(d)
    assert out.lateral and not out.z_dependent and out.z_range[0] >= -d - 1e-6 and out.z_range[1] <= d + 1e-6
    assert out.stack.shape[0] >= 2 and "2D" in repr(out)
    torch.testing.assert_close(out.slice_at(0.0), synthetic_psf.slice_at(0.0))
    again = EmpiricalPSF.from_dict(out.to_dict())
    assert again.lateral and not again.z_dependent and again.z_range == out.z_range
    assert "lateral" not in synthetic_psf.to_dict()  # 3D files unchanged
    focus = synthetic_psf.in_focus()
    assert focus.stack.shape[0] == 1 and not focus.lateral
    sim = Simulator(out, None, frame_shape=(16, 16), pixel_size=synthetic_psf.pixel_size, n_range=(4, 4),
                    photons_range=(1000.0, 1000.0), background_range=(0.0, 0.0))
    truth = sim.sample_emitters(50, torch.Generator().manual_seed(0))
    assert sim.z_range == out.z_range and float(truth["z"][truth["mask"]].abs().max()) > d / 2
    with pytest.raises(InputError, match="defocus must be"):
        synthetic_psf.in_focus(-10.0)
    with pytest.raises(InputError, match="fewer than two slices"):
        synthetic_psf.in_focus(0.1 * synthetic_psf.z_step)


# ----------------------------------------------------------------------------- real bead stacks


def _second_moment_ellipticity(img: torch.Tensor) -> float:
    _, _, vx, vy = moments(img)
    return float((vy - vx) / (vy + vx))


@pytest.fixture(scope="module")
def real_psf():
    tifffile = pytest.importorskip("tifffile")

    def load(name):
        path = BEADS / f"beads-{name}.tif"
        if not path.exists():
            pytest.skip(f"{path} not available")
        return EmpiricalPSF.from_bead_stack(tifffile.imread(path), pixel_size=100, z_step=10, z0=-750)

    return load


def test_real_astigmatic_stack(real_psf):
    psf = real_psf("AS")
    assert psf.meta["n_beads"] >= 4 and abs(psf.meta["baseline_adu"] - 100) < 5
    assert psf.stack.shape == (151, 21, 21) and psf.z_range == (-750.0, 750.0)
    e_neg = _second_moment_ellipticity(psf.slice_at(-400.0))
    e_pos = _second_moment_ellipticity(psf.slice_at(400.0))
    assert e_neg * e_pos < 0 and abs(e_neg) > 0.15 and abs(e_pos) > 0.15
    # the beads found are the challenge's beads (apparent centres within a fraction of a pixel)
    table = np.loadtxt(BEADS / "bead-positions.csv", delimiter=",", skiprows=1)[:, 1:3]
    found = np.array(psf.meta["bead_centres_nm"])
    assert np.sqrt(((found[:, None] - table[None]) ** 2).sum(-1)).min(axis=1).max() < 80


def test_real_2d_stack_is_round_in_focus(real_psf):
    psf = real_psf("2D")
    assert psf.meta["n_beads"] >= 4
    focus = psf.slice_at(0.0)
    assert abs(_second_moment_ellipticity(focus)) < 0.05
    # in focus the PSF is compact: most photons within the central 7 x 7 pixels
    assert float(focus[7:14, 7:14].sum()) > 0.75


# ----------------------------------------------------------------------------- bad bead stacks


def test_bad_bead_stacks(synthetic_stack):
    with pytest.raises(InputError, match="3D"):
        EmpiricalPSF.from_bead_stack(synthetic_stack[0])
    bad = synthetic_stack.copy()
    bad[3, 5, 5] = np.nan
    with pytest.raises(InputError, match="NaN"):
        EmpiricalPSF.from_bead_stack(bad)
    noise = np.random.default_rng(0).normal(100, 3, size=(20, 48, 48))
    with pytest.raises(InputError, match="no bead"):
        EmpiricalPSF.from_bead_stack(noise)
    with pytest.raises(InputError, match="border"):
        EmpiricalPSF.from_bead_stack(synthetic_stack, z0=-300, positions=[[300.0, 1600.0]])
    with pytest.raises(InputError, match="border"):  # the only bead is too close to the border
        EmpiricalPSF.from_bead_stack(synthetic_stack[:, :24, :24], z0=-300)
    for ps in (0, -100, float("nan"), 1e9):
        with pytest.raises(InputError, match="pixel_size"):
            EmpiricalPSF.from_bead_stack(synthetic_stack, pixel_size=ps)
    with pytest.raises(InputError, match="z_step"):
        EmpiricalPSF.from_bead_stack(synthetic_stack, z_step=0)
    slices = synthetic_stack.shape[0]
    with pytest.raises(InputError, match=rf"{slices} slices 2000 nm apart span .* µm.*is the z step right"):
        EmpiricalPSF.from_bead_stack(synthetic_stack, z_step=2000)  # a scan deeper than 20 µm
    with pytest.raises(InputError, match="below the baseline"):
        EmpiricalPSF.from_bead_stack(synthetic_stack, baseline=1000.0)
    assert abs(estimate_baseline(synthetic_stack) - 100.0) < 1e-6
    # integer stacks are legitimate input; given positions are used
    psf = EmpiricalPSF.from_bead_stack(np.round(synthetic_stack).astype(np.uint16), z_step=10, z0=-300,
                                       positions=[[(15.8 + 0.5) * PS, (16.3 + 0.5) * PS]])
    assert psf.meta["n_beads"] == 1


def test_hot_pixels_and_saturated_beads_are_not_averaged_into_the_psf(synthetic_stack):
    """A hot pixel at the 16-bit maximum outshines every bead: it was taken for the brightest
    bead (and pushed the real ones below the brightness cut). A bead that touches the maximum
    is clipped. Both are left out, and counted."""
    stack = np.round(synthetic_stack).astype(np.uint16)
    ref = EmpiricalPSF.from_bead_stack(stack, z_step=10, z0=-300)
    assert ref.meta["rejected_spots"] == {"hot pixel": 0, "saturated": 0}
    hot = stack.copy()
    hot[:, 31, 31] = 65535  # between the beads
    psf = EmpiricalPSF.from_bead_stack(hot, z_step=10, z0=-300)
    assert psf.meta["n_beads"] == ref.meta["n_beads"] and psf.meta["rejected_spots"]["hot pixel"] == 1
    from starloc.deeploco.psf import bead_summary

    n = ref.meta["n_beads"]
    assert bead_summary(ref.meta) == f"averaged over {n} bead(s)"
    assert bead_summary(psf.meta) == f"averaged over {n} bead(s); left out: 1 hot pixel(s)"
    assert bead_summary({}) is None  # not read from beads
    np.testing.assert_allclose(psf.stack, ref.stack, atol=1e-6)
    r, c = np.round(np.array(ref.meta["bead_centres_nm"][0])[::-1] / PS - 0.5).astype(int)
    clipped = stack.copy()
    clipped[len(stack) // 2, r, c] = 65535  # the first bead saturates in focus
    psf = EmpiricalPSF.from_bead_stack(clipped, z_step=10, z0=-300)
    assert psf.meta["n_beads"] == ref.meta["n_beads"] - 1 and psf.meta["rejected_spots"]["saturated"] == 1
    only = np.full((5, 32, 32), 100, np.uint16)
    only[:, 16, 16] = 65535
    with pytest.raises(InputError, match=r"no usable bead in the bead stack: every bright spot is hot pixel \(1\)"):
        EmpiricalPSF.from_bead_stack(only)


def _drifting_stack(drift_x, drift_y) -> np.ndarray:
    """The synthetic bead stack with each bead imaged ``drift_x(z)``, ``drift_y(z)`` nm beside its
    true position (an asymmetric PSF: its centroid is not the emitter's position)."""
    Z, n = len(Z_SYN), len(BEAD_RC)
    x = torch.tensor((BEAD_RC[:, 1] + 0.5) * PS, dtype=torch.float32)[None] + drift_x(Z_SYN)[:, None]
    y = torch.tensor((BEAD_RC[:, 0] + 0.5) * PS, dtype=torch.float32)[None] + drift_y(Z_SYN)[:, None]
    img = TRUE_ASTIG.render(x, y, Z_SYN[:, None].expand(Z, n), torch.full((Z, n), 1e5), (64, 64), PS)
    return (img + 100.0).numpy()


def test_a_psf_anchored_on_the_given_bead_positions_renders_emitters_where_the_beads_were():
    """The SMLM Challenge's astigmatic beads are imaged 46 nm beside their true positions; a PSF
    centred on the images' centroid puts every localization that far off the ground truth.
    Anchored on the beads' true positions, the PSF reproduces the images around them."""
    drift_x = lambda z: 30.0 + 0.05 * z  # noqa: E731  (nm; mean 30 over the scan)
    drift_y = lambda z: torch.full_like(z, -40.0)  # noqa: E731
    stack = _drifting_stack(drift_x, drift_y)
    truth = np.c_[(BEAD_RC[:, 1] + 0.5) * PS, (BEAD_RC[:, 0] + 0.5) * PS]
    rough = truth + np.array([[7.0, -12.0]])  # positions only to find the beads by: still centroids
    centroid = EmpiricalPSF.from_bead_stack(stack, z_step=10, z0=-300, positions=rough)
    anchored = EmpiricalPSF.from_bead_stack(stack, z_step=10, z0=-300, positions=truth, anchor="positions")
    assert centroid.meta["anchor"] == "centroid" and "centroid_offset_nm" not in centroid.meta
    assert anchored.meta["anchor"] == "positions"
    np.testing.assert_allclose(anchored.meta["centroid_offset_nm"], [30.0, -40.0], atol=0.5)
    from starloc.deeploco.psf import bead_summary

    assert bead_summary(anchored.meta).endswith("(the beads' images are centred +30 nm in x, -40 nm in y from them)")

    x, y, z = random_positions(6, seed=3)
    for psf, shift in ((anchored, (0.0, 0.0)), (centroid, (30.0, -40.0))):
        img = psf.render(x, y, z, torch.full_like(x, 1e4), (32, 32), PS)
        mx, my, _, _ = moments(img)
        # the image lies where the true PSF would put it: beside the given point by the drift
        expect_x = x[:, 0] + drift_x(z[:, 0]) - shift[0]
        expect_y = y[:, 0] + drift_y(z[:, 0]) - shift[1]
        torch.testing.assert_close(mx, expect_x.double(), atol=1.0, rtol=0)
        torch.testing.assert_close(my, expect_y.double(), atol=1.0, rtol=0)


def test_bead_positions_that_do_not_match_the_beads_are_refused(synthetic_stack):
    truth = np.c_[(BEAD_RC[:, 1] + 0.5) * PS, (BEAD_RC[:, 0] + 0.5) * PS]
    with pytest.raises(InputError, match="needs the beads' positions"):
        EmpiricalPSF.from_bead_stack(synthetic_stack, z_step=10, z0=-300, anchor="positions")
    with pytest.raises(InputError, match="anchor must be"):
        EmpiricalPSF.from_bead_stack(synthetic_stack, z_step=10, z0=-300, anchor="peak")
    twice = np.r_[truth, truth[:1] + 40.0]  # a bead listed twice (e.g. localized slice by slice)
    with pytest.raises(InputError, match=r"57 nm apart: list each bead once, at least 1000 nm from the next"):
        EmpiricalPSF.from_bead_stack(synthetic_stack, z_step=10, z0=-300, positions=twice, anchor="positions")
    off = truth + np.array([[0.0, 300.0]])  # 3 px off: not where the beads are
    with pytest.raises(InputError, match=r"300 nm away: bead positions are in nm, origin at the image's top-left"):
        EmpiricalPSF.from_bead_stack(synthetic_stack, z_step=10, z0=-300, positions=off, anchor="positions")


def test_the_challenge_bead_list_anchors_the_astigmatic_psf_on_the_true_positions(real_psf):
    """Measured on the real stack: the astigmatic beads' images are centred (+22, -40) nm from the
    challenge's positions, within 3 nm from bead to bead (a property of the PSF, not noise)."""
    tifffile = pytest.importorskip("tifffile")
    from starloc.smlm_io import read_bead_positions

    real_psf("AS")  # skips where the challenge's bead data are not at hand (a fresh clone)
    table = read_bead_positions(BEADS / "bead-positions.csv")
    psf = EmpiricalPSF.from_bead_stack(tifffile.imread(BEADS / "beads-AS.tif"), pixel_size=100, z_step=10,
                                       z0=-750, positions=table, anchor="positions")
    assert psf.meta["n_beads"] == 6
    np.testing.assert_allclose(psf.meta["centroid_offset_nm"], [22.2, -40.1], atol=1.0)


# ----------------------------------------------------------------------------- cameras


def test_emccd_mean_and_excess_noise():
    cam = EMCCD.smlm2016()
    assert (cam.qe, cam.em_gain, cam.e_per_adu, cam.read_noise, cam.baseline) == (0.9, 300, 45, 74.4, 100)
    assert cam.spurious_charge > 0
    g = torch.Generator().manual_seed(0)
    mu = 40.0
    adu = cam.sample(torch.full((200_000,), mu), g)
    assert bool((adu == adu.round()).all())
    ph = cam.to_photons(adu).double()
    assert abs(float(ph.mean()) / mu - 1) < 0.02
    # EM register: variance of the photon-normalized signal = F² mu / qe with F² = 2,
    # plus read noise and ADC quantization referred to photons
    expected_var = 2 * mu / cam.qe + (cam.read_noise**2 + cam.e_per_adu**2 / 12) / (cam.em_gain * cam.qe) ** 2
    assert abs(float(ph.var()) / expected_var - 1) < 0.04
    assert abs(float(ph.var()) / (mu / cam.qe) - 2) < 0.1  # about twice the Poisson variance


def test_scmos_mean_variance_and_maps():
    cam = SCMOS(qe=0.8, read_noise=1.6, e_per_adu=0.5, baseline=100.0)
    g = torch.Generator().manual_seed(1)
    mu = 30.0
    ph = cam.to_photons(cam.sample(torch.full((200_000,), mu), g)).double()
    assert abs(float(ph.mean()) / mu - 1) < 0.02
    expected_var = mu / cam.qe + (1.6**2 + 0.5**2 / 12) / cam.qe**2
    assert abs(float(ph.var()) / expected_var - 1) < 0.04
    # per-pixel maps: normalization is per pixel
    base = torch.tensor([[100.0, 200.0], [300.0, 400.0]])
    gain = torch.tensor([[0.5, 1.0], [2.0, 0.25]])
    cam = SCMOS(qe=0.5, baseline=base, e_per_adu=gain, read_noise=torch.full((2, 2), 1.0))
    p = torch.tensor([[[10.0, 20.0], [30.0, 40.0]]])
    adu = cam.to_adu(p)
    torch.testing.assert_close(adu[0], base + p[0] * 0.5 / gain)
    torch.testing.assert_close(cam.to_photons(adu), p)
    frames = cam.sample(torch.full((5000, 2, 2), 20.0), g)
    # the ADC's floor lowers the mean by 0.5 ADU (documented): visible here with 2 e-/ADU at qe 0.5
    expected_mean = 20.0 - 0.5 * cam.photons_per_adu
    torch.testing.assert_close(cam.normalize(frames).mean(0), expected_mean, rtol=0.03, atol=0)
    with pytest.raises(InputError, match="does not match"):
        cam.sample(torch.ones(3, 3), g)
    with pytest.raises(InputError, match="different shapes"):
        SCMOS(baseline=torch.zeros(2, 2), read_noise=torch.ones(3, 3))


@pytest.mark.parametrize("cam", [EMCCD.smlm2016(), SCMOS()], ids=lambda c: type(c).__name__)
def test_camera_round_trip_determinism_and_checks(cam):
    p = torch.linspace(0, 5000, 101, dtype=torch.float64)
    torch.testing.assert_close(cam.to_photons(cam.to_adu(p)), p, atol=1e-9, rtol=1e-12)
    torch.testing.assert_close(cam.normalize(cam.to_adu(p)), p, atol=1e-9, rtol=1e-12)
    mu = torch.full((4, 8, 8), 50.0)
    a = cam.sample(mu, torch.Generator().manual_seed(5))
    b = cam.sample(mu, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == mu.shape
    assert not torch.equal(a, cam.sample(mu, torch.Generator().manual_seed(6)))
    zero = cam.sample(torch.zeros(1000), torch.Generator().manual_seed(0))  # no photons is fine
    assert abs(float(cam.to_photons(zero).mean())) < 0.5
    cam.check_adu(a)
    with pytest.raises(InputError, match="below the camera baseline"):
        cam.check_adu(torch.zeros_like(a))  # e.g. frames already baseline-subtracted
    with pytest.raises(InputError):
        cam.sample(torch.tensor([1.0, float("nan")]), torch.Generator())
    again = Camera.from_dict(cam.to_dict())
    assert type(again) is type(cam) and again.qe == cam.qe
    assert math.isclose(float(cam.to_adu(torch.tensor(1.0))) - float(cam.to_adu(torch.tensor(0.0))),
                        float(1 / torch.as_tensor(cam.photons_per_adu)), rel_tol=1e-6)


def test_camera_presets_and_overrides():
    assert camera_preset("smlm2016").to_dict() == EMCCD.smlm2016().to_dict()
    assert camera_preset("smlm2016", baseline=400.0).to_dict() == {**EMCCD.smlm2016().to_dict(), "baseline": 400.0}
    assert camera_preset("emccd").to_dict() == EMCCD().to_dict()
    assert camera_preset("scmos", qe=0.7).to_dict() == SCMOS(qe=0.7).to_dict()
    with pytest.raises(InputError, match="em_gain does not apply"):
        camera_preset("scmos", em_gain=10.0)
    with pytest.raises(InputError, match="unknown camera 'ccd'"):
        camera_preset("ccd")
