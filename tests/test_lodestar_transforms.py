import math

import numpy as np
import pytest
import torch

from starloc import sim
from starloc.lodestar.network import decode, output_grid
from starloc.lodestar.transforms import Compose, Geometric, Noise, linear_part, warp


def _centroid(images: torch.Tensor) -> torch.Tensor:
    """(N, 2) intensity centroid (row, col) relative to the image centre."""
    n, _, h, w = images.shape
    rows = torch.arange(h, dtype=torch.float64) - (h - 1) / 2
    cols = torch.arange(w, dtype=torch.float64) - (w - 1) / 2
    im = images[:, 0].double()
    total = im.sum((1, 2))
    return torch.stack([(im.sum(2) * rows).sum(1) / total, (im.sum(1) * cols).sum(1) / total], 1)


def test_inverse_maps_every_copy_back_to_the_true_position():
    true = np.array([1.3, -0.7])  # relative to the centre of a 48x48 image
    image = sim.render("point", (48, 48), [true + 23.5])
    batch = torch.from_numpy(image).float()[None, None].repeat(16, 1, 1, 1)
    transform = Compose((Noise(1.0), Geometric(translate=2.0, rotate=True, flip=True)))
    params = transform.sample(batch.shape, torch.Generator().manual_seed(0))
    moved = transform.apply(batch, params)
    back = transform.invert(_centroid(moved).float(), params)
    assert torch.allclose(back, torch.tensor(true, dtype=torch.float32).expand(16, 2), atol=0.02)


def test_invert_is_the_exact_inverse_of_the_point_map():
    g = Geometric(translate=3.0)
    params = g.sample((100, 1, 8, 8), torch.Generator().manual_seed(1))
    x = torch.randn(100, 3, dtype=torch.float64)
    moved = torch.einsum("nij,nj->ni", params["matrix"].double(), x[:, :2]) + params["shift"].double()
    params64 = {k: v.double() for k, v in params.items()}
    back = g.invert(torch.cat([moved, x[:, 2:]], 1), params64)
    assert torch.allclose(back, x, atol=1e-12)


def test_rotation_matrices_are_orthogonal_with_the_expected_determinant():
    theta = torch.linspace(-math.pi, math.pi, 7)
    sign = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0])
    m = linear_part(theta, sign)
    eye = torch.eye(2).expand(7, 2, 2)
    assert torch.allclose(m @ m.transpose(1, 2), eye, atol=1e-6)
    assert torch.allclose(torch.linalg.det(m), sign, atol=1e-6)


def test_warp_by_integer_translation_is_an_exact_shift():
    img = torch.arange(100, dtype=torch.float32).reshape(1, 1, 10, 10)
    out = warp(img, torch.eye(2)[None], torch.tensor([[1.0, 2.0]]))
    # content at (r, c) moves to (r + 1, c + 2)
    assert torch.allclose(out[0, 0, 1:, 2:], img[0, 0, :-1, :-2], atol=1e-4)


def test_quarter_turn_moves_rows_to_columns():
    img = torch.zeros(1, 1, 9, 9)
    img[0, 0, 4, 6] = 1.0  # 2 px right of the centre
    params = {"matrix": linear_part(torch.tensor([math.pi / 2]), torch.tensor([1.0])),
              "shift": torch.zeros(1, 2)}
    out = warp(img, params["matrix"], params["shift"])
    # [[cos, -sin], [sin, cos]] maps (row, col) = (0, 2) to (-2, 0): 2 px above the centre
    assert out[0, 0, 2, 4] > 0.99


def test_noise_changes_images_but_not_properties():
    t = Noise(max_factor=3.0)
    params = t.sample((4, 1, 8, 8), torch.Generator().manual_seed(0))
    x = torch.ones(4, 1, 8, 8)
    assert not torch.equal(t.apply(x, params), x)
    assert (params["noise"].std(dim=(1, 2, 3)) < 3).all()
    props = torch.randn(4, 3)
    assert torch.equal(t.invert(props, params), props)


def test_shot_noise_grows_with_the_pixel_value_as_photon_noise_does():
    # Added variance (f^2 - 1)(1 + a max(x, 0)): with a = 0.5 a pixel at 40 gets sqrt(21) times
    # the noise of the background, a negative pixel the background's.
    t = Noise(max_factor=3.0, shot=(0.5, 0.5))
    x = torch.zeros(4000, 1, 1, 3)
    x[..., 1], x[..., 2] = 40.0, -5.0
    params = t.sample(x.shape, torch.Generator().manual_seed(0))
    added = t.apply(x, params) - x
    scale = added[..., 1].std() / added[..., 0].std()
    assert abs(scale.item() / math.sqrt(21) - 1) < 0.03
    assert abs(added[..., 2].std() / added[..., 0].std() - 1) < 0.05
    assert torch.allclose(added[..., 1], params["noise"][..., 1] * math.sqrt(21), atol=1e-4)


def test_shot_noise_off_draws_and_adds_exactly_the_background_noise():
    x = torch.rand(8, 1, 6, 6) * 50
    plain, off = Noise(max_factor=3.0), Noise(max_factor=3.0, shot=(0.0, 0.0))
    a = plain.apply(x, plain.sample(x.shape, torch.Generator().manual_seed(3)))
    b = off.apply(x, off.sample(x.shape, torch.Generator().manual_seed(3)))
    assert torch.equal(a, b)


@pytest.mark.parametrize("shot", [(0.0, 1.0), (1.0, 0.5), (-0.1, 0.2)])
def test_shot_noise_range_must_be_off_or_positive_and_ordered(shot):
    with pytest.raises(ValueError, match="shot noise range"):
        Noise(max_factor=3.0, shot=shot)


def test_decode_places_positions_on_the_pooled_grid_for_odd_sizes():
    rows, cols = output_grid(3, 4, 2)
    assert rows.tolist() == [0.5, 2.5, 4.5]
    raw = torch.zeros(1, 4, 3, 4)
    raw[0, 3] = 2.0
    P, rho = decode(raw, 2, origin=(1.0, 2.0))
    assert P.shape == (1, 3, 3, 4) and rho.shape == (1, 3, 4)
    assert P[0, 0, 2, 0] == 4.5 - 1.0 and P[0, 1, 0, 3] == 6.5 - 2.0
    assert torch.all(P[0, 2] == 0) and torch.all(rho == 2.0)


def test_normalization_ignores_gain_offset_and_object_count():
    from starloc.lodestar.model import normalize

    rng = np.random.default_rng(0)
    sparse = sim.add_poisson_noise(sim.render("point", (128, 128), [(60.2, 70.7)]), 10, rng=rng)
    crowded = sim.add_poisson_noise(
        sim.render("point", (128, 128), [(60.2, 70.7)] + [(r, c) for r in (15, 40, 100) for c in (15, 40, 100)]),
        10, rng=rng)
    a, b = (normalize(torch.from_numpy(x)[None, None]) for x in (sparse, crowded))
    assert abs(float(a[0, 0, 60, 71]) - float(b[0, 0, 60, 71])) < 0.1 * float(a[0, 0, 60, 71])
    c = normalize(torch.from_numpy(sparse * 7.0 + 100)[None, None])
    assert torch.allclose(a, c, atol=1e-4)


@pytest.mark.parametrize("units", [1e17, 1e30, 1e-30])
def test_normalization_of_frames_in_extreme_units(units):
    # float32 squares of such values overflow (or underflow): the frames are first brought to unit peak
    from starloc.lodestar.model import normalize

    image = torch.from_numpy(sim.add_poisson_noise(sim.render("point", (64, 64), [(30.2, 33.7)]), 10, rng=2))
    frames = torch.stack([image, image * 3 + 5])[:, None]
    assert torch.allclose(normalize(frames * units), normalize(frames), atol=1e-4)


def test_a_frame_under_uneven_illumination_is_normalized_as_under_even_illumination():
    from starloc.lodestar.model import LodeSTAR, flatten_background, normalize
    from tests.conftest import TINY

    rng = np.random.default_rng(4)
    centres = rng.uniform(10, 246, (25, 2))
    flat = sim.add_poisson_noise(sim.render("sphere", (256, 256), centres), 10, rng=rng)
    ramp = np.linspace(0.0, 0.3 * float(np.median(flat)), 256)  # 30 % brighter on the right
    uneven, uneven_t = flat + ramp[None, :], flat + ramp[:, None]
    model = LodeSTAR.new(TINY, seed=0)
    want = model.normalize(torch.from_numpy(flat)[None, None])
    for frame in (uneven, uneven_t):
        x = torch.from_numpy(frame.astype(np.float32))[None, None]
        diff = (model.normalize(x) - want).abs()
        # (the background's pixel noise is ~1.4 here, the spheres several units)
        assert float(diff.mean()) < 0.05 and float(diff.quantile(0.99)) < 0.25
        edges = torch.cat([diff[..., :, :8].flatten(), diff[..., :, -8:].flatten(), diff[..., :8, :].flatten(),
                           diff[..., -8:, :].flatten()])
        assert float(edges.mean()) < 0.06  # the trend is extrapolated to the border, not clamped
        assert float((normalize(x) - want).abs().mean()) > 0.3  # one level for the whole frame: off
    # frames of fewer than two tiles (training crops) are left alone
    crop = torch.from_numpy(uneven[:64, :64].astype(np.float32))[None, None]
    assert flatten_background(crop, 4 * TINY.receptive_field) is crop


def test_hot_and_dead_pixels_are_replaced_by_their_neighbours_median_and_objects_are_not():
    from starloc.lodestar.model import LodeSTAR, suppress_hot_pixels
    from tests.conftest import TINY

    x = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 1, 48, 48)).astype(np.float32))
    assert suppress_hot_pixels(x) is x  # nothing stands out: the frame itself
    bright = x + 500.0 * torch.from_numpy(sim.render("point", (48, 48), np.array([[20.0, 30.0]])))[None, None]
    assert torch.equal(suppress_hot_pixels(bright), bright)  # an object's peak, however bright, stays
    # so does an undersampled spot's: a pixel-integrated Gaussian of sigma 0.45 px centred on a pixel
    from scipy.special import erf

    edges = (np.arange(49) - 24.5) / (0.45 * np.sqrt(2))
    profile = np.diff(erf(edges)) / 2
    spot = x + 5000.0 * torch.from_numpy(np.outer(profile, profile).astype(np.float32))[None, None]
    assert torch.equal(suppress_hot_pixels(spot), spot)
    spiky = bright.clone()
    spiky[0, 0, 5, 5], spiky[0, 0, 40, 10] = 6000.0, -800.0
    out = suppress_hot_pixels(spiky)
    for r, c in ((5, 5), (40, 10)):
        around = torch.cat([spiky[0, 0, r - 1:r + 2, c - 1].flatten(), spiky[0, 0, r - 1:r + 2, c + 1].flatten(),
                            spiky[0, 0, [r - 1, r + 1], c]])
        assert float(out[0, 0, r, c]) == float(around.median())  # (torch's lower median of 8)
    keep = torch.ones_like(out, dtype=torch.bool)
    keep[0, 0, 5, 5] = keep[0, 0, 40, 10] = False
    assert torch.equal(out[keep], spiky[keep])
    # the model sees a frame with a camera's hot pixel as the frame without it, but for that pixel
    # (and the pixel's slight pull on the frame's level and scale; the noise here is ~1.4)
    model = LodeSTAR.new(TINY, seed=0)
    frame = sim.add_poisson_noise(sim.render("sphere", (64, 64), np.array([[30.0, 30.0]])), 10, rng=1)
    hot = frame.copy()
    hot[30, 40] = 60000.0
    a, b = (model.normalize(torch.from_numpy(f.astype(np.float32))[None, None]) for f in (frame, hot))
    diff = (a - b).abs()[0, 0]
    diff[30, 40] = 0
    assert float(diff.max()) < 0.02


def _background_of(normalized: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    values = normalized[..., mask]
    return float(values.mean()), float(values.std())


@pytest.mark.parametrize("sign", [1.0, -1.0])  # bright (fluorescence) and dark (bright-field) objects
def test_background_normalization_ignores_an_object_covering_a_third_of_the_crop(sign):
    from starloc.lodestar.model import normalize

    g = torch.Generator().manual_seed(0)
    background = 100.0 + 5.0 * torch.randn(1, 1, 64, 64, generator=g)
    rows, cols = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    disc = (rows - 32) ** 2 + (cols - 32) ** 2 <= 20**2  # 31 % of the crop
    alone = _background_of(normalize(background, "background"), ~disc)
    with_disc = _background_of(normalize(background + sign * 40.0 * disc, "background"), ~disc)
    assert with_disc == pytest.approx(alone, abs=0.03)
    # exactly the older 'robust' method where it is right (background std 1 / 0.7312)
    assert torch.equal(normalize(background, "background"), normalize(background, "robust"))
    assert alone[1] == pytest.approx(1 / 0.7312, rel=0.03)
    # 'robust' lets the disc set the scale (what a tight crop around a large object did)
    assert _background_of(normalize(background + sign * 40.0 * disc, "robust"), ~disc)[1] < 0.6


def test_background_normalization_is_the_robust_one_on_single_objects_at_every_snr():
    from starloc.lodestar.model import normalize

    for shape in sim.SHAPES:
        for snr in (2, 5, 20):
            images = torch.from_numpy(sim.simulate_single(shape, snr, 4, size=64, rng=snr)[0])[:, None]
            assert torch.equal(normalize(images, "background"), normalize(images, "robust"))


def test_background_normalization_of_flat_and_empty_frames_is_finite():
    from starloc.lodestar.model import normalize

    sparse = torch.zeros(1, 1, 32, 32)
    sparse[0, 0, ::7, ::5] = 1.0  # zeros between single photons: no spread in the background
    out = normalize(sparse, "background")
    assert torch.allclose(out, sparse / sparse.std())
    assert torch.equal(normalize(torch.zeros(1, 1, 8, 8), "background"), torch.zeros(1, 1, 8, 8))
    # the same at a level whose float mean does not round back to itself (it used to leave a
    # spread of ~1e-7 and scale the frame by ~1e8)
    level = 0.1
    spots = torch.zeros(1, 1, 64, 64)
    spots[0, 0, ::3, ::2] = 1.0
    shifted = spots * 12.1478 + level
    for method in ("background", "robust"):
        out = normalize(shifted, method)
        assert torch.allclose(out, (shifted - level) / shifted.std(), atol=1e-5)
    with pytest.raises(ValueError, match="unknown normalization"):
        normalize(sparse, "minmax")
    with pytest.raises(ValueError, match="model's numbers"):
        normalize(sparse, "fixed")


def test_dihedral_average_maps_grids_and_maps_back_exactly():
    import torch.nn.functional as F

    from starloc.lodestar.dihedral import dihedral_maps

    def forward(y):
        """Positions = centres of the output pixels; weight logits = 2x2 means of the input."""
        rho = F.avg_pool2d(y, 2)[:, 0]
        raw = torch.cat([torch.zeros(y.shape[0], 2, *rho.shape[-2:]), rho[:, None]], 1)
        return decode(raw, 2)

    x = torch.rand(2, 1, 6, 10)
    P, rho = dihedral_maps(forward, x)
    P0, rho0 = forward(x)
    assert P.shape == (8, *P0.shape) and rho.shape == (8, *rho0.shape)
    for k in range(8):  # every symmetry, mapped back, gives the untransformed maps exactly
        assert torch.allclose(P[k], P0, atol=1e-5) and torch.allclose(rho[k], rho0, atol=1e-6)
