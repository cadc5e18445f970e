"""DeepLoco network shapes/box, kernel MMD loss and post-processing."""

import math

import numpy as np
import pytest
import torch

from starloc.deeploco.loss import cell_loss, kernel_loss
from starloc.deeploco.network import (CELL, DeepLocoConfig, DeepLocoFCN, DeepLocoNet, DeepLocoUNet, build_network,
                                      upsampled_conv_as_transposed)
from starloc.deeploco.postprocess import CellGrid, postprocess
from starloc.errors import InputError

SIGMAS = (64.0, 320.0, 640.0, 1920.0)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kw) -> DeepLocoConfig:
    base = dict(frame_size=32, n_candidates=8, conv_widths=(4, 8, 16), fc_width=32)
    base.update(kw)
    return DeepLocoConfig(**base)


# ----------------------------------------------------------------------------- network


@pytest.mark.parametrize("dim", [2, 3])
def test_network_output_shapes_box_and_nonnegative_weights(dim):
    cfg = tiny(dim=dim, z_range=(-750.0, 750.0) if dim == 3 else (0.0, 0.0), pixel_size=110.0)
    torch.manual_seed(0)
    net = DeepLocoNet(cfg)
    frames = 100 + 30 * torch.randn(5, 1, 32, 32)
    frames[:, :, 10:13, 20:23] += 2000
    pos, w = net(frames)
    assert pos.shape == (5, 8, dim) and w.shape == (5, 8)
    assert bool((w >= 0).all())
    assert bool(((pos[..., :2] >= 0) & (pos[..., :2] <= 32 * 110.0)).all())
    if dim == 3:
        assert bool(((pos[..., 2] >= -750) & (pos[..., 2] <= 750)).all())
    assert cfg.n_features == 16 * 2 * 2


@pytest.mark.parametrize("arch", ["fcn", "unet"])
@pytest.mark.parametrize("dim", [2, 3])
def test_fcn_gives_one_candidate_per_cell_inside_its_cell_neighbourhood(dim, arch):
    cfg = tiny(dim=dim, z_range=(-750.0, 750.0) if dim == 3 else (0.0, 0.0), architecture=arch)
    assert cfg.cellular
    torch.manual_seed(0)
    net = build_network(cfg)
    assert isinstance(net, DeepLocoUNet if arch == "unet" else DeepLocoFCN)
    frames = 100 + 30 * torch.randn(2, 1, 48, 40)  # any multiple of the cell size, not just 32
    pos, w = net(frames)
    K = (48 // CELL) * (40 // CELL)
    assert pos.shape == (2, K, dim) and w.shape == (2, K)
    assert bool(((w > 0) & (w < 1)).all())
    cell = CELL * cfg.pixel_size
    rows, cols = np.divmod(np.arange(K), 40 // CELL)
    centre = np.stack([(cols + 0.5) * cell, (rows + 0.5) * cell], 1)
    assert np.abs(pos[0, :, :2].detach().numpy() - centre).max() <= 0.6 * cell + 1e-3
    if dim == 3:
        assert bool(((pos[..., 2] >= -750) & (pos[..., 2] <= 750)).all())
    with pytest.raises(InputError, match="multiples"):
        net(torch.zeros(1, 1, 30, 32))


@pytest.mark.parametrize("arch", ["fcn", "unet"])
def test_fcn_is_translation_equivariant_by_whole_cells(arch):
    torch.manual_seed(0)
    net = build_network(tiny(architecture=arch)).eval()
    frame = 100 + 10 * torch.randn(1, 1, 128, 128)
    frame[..., 60:63, 60:63] += 500
    shifted = torch.roll(frame, shifts=(8, 4), dims=(-2, -1))
    with torch.no_grad():
        p0, w0 = net(frame)
        p1, w1 = net(shifted)
    g = 128 // CELL
    w0, w1 = w0.view(g, g), w1.view(g, g)
    # away from the borders (receptive field 48 px for fcn, ~64 for unet) the maps move by (2, 1) cells and the
    # positions by (800, 400) nm
    assert torch.allclose(w0[10:20, 10:20], w1[12:22, 11:21], atol=1e-5)
    d = p1.view(g, g, 2)[12:22, 11:21] - p0.view(g, g, 2)[10:20, 10:20]
    assert torch.allclose(d, torch.tensor([400.0, 800.0]).expand_as(d), atol=1e-2)


@pytest.mark.parametrize("arch", ["fcn", "unet"])
def test_fcn_with_batch_norm_folded_gives_the_same_output(arch):
    torch.manual_seed(0)
    net = build_network(tiny(architecture=arch, dim=3, z_range=(-500.0, 500.0)))
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    for _ in range(3):  # move the batch-norm statistics away from their initial values
        pos, w = net(100 + 30 * torch.randn(8, 1, 32, 32))
        (pos.mean() * 1e-3 + w.mean()).backward()
        opt.step()
        opt.zero_grad()
    net.eval()
    frames = 100 + 30 * torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        a, b = net(frames), net.fused()(frames)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.fused().modules())
    relus = [m.inplace for m in net.fused().modules() if isinstance(m, torch.nn.ReLU)]
    assert relus and all(relus)  # in place in the inference copy...
    assert not any(m.inplace for m in net.modules() if isinstance(m, torch.nn.ReLU))  # ...not in training
    assert torch.allclose(a[0], b[0], atol=1e-2) and torch.allclose(a[1], b[1], atol=1e-5)


@pytest.mark.parametrize("shape", [(3, 5, 7), (1, 4, 4)])
def test_a_conv_of_an_upsampled_input_equals_its_transposed_form(shape):
    """The identity the U-Net's inference decoder rests on, borders included (zero padding)."""
    c, h, w = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, c, h, w, generator=g, dtype=torch.float64)
    weight = torch.randn(6, c, 3, 3, generator=g, dtype=torch.float64)
    direct = torch.nn.functional.conv2d(torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"),
                                        weight, padding=1)
    transposed = torch.nn.functional.conv_transpose2d(x, upsampled_conv_as_transposed(weight), stride=2, padding=1)
    assert transposed.shape == direct.shape == (2, 6, 2 * h, 2 * w)
    assert torch.allclose(transposed, direct, rtol=0, atol=1e-12)


def test_unet_decoder_equals_its_concatenated_form_with_gradients():
    """The U-Net's decoder steps skip the upsampled and concatenated copies; outputs and weight
    gradients are those of the plain layers applied to the concatenation."""
    torch.manual_seed(0)
    net = build_network(tiny(architecture="unet")).train().double()  # float64: equal to rounding, ~1e-15
    low, skip = torch.randn(2, 16, 6, 4).double(), torch.randn(2, 8, 12, 8).double()
    plain_up = torch.nn.Sequential(*net.up_half)  # the same layers, called the usual way
    fine, coarse = torch.randn(2, 4, 12, 8).double(), torch.randn(2, 16, 3, 2).double()
    plain_join = torch.nn.Sequential(*net.join)
    cases = [(net.up_half(low, skip), plain_up(torch.cat([torch.nn.functional.interpolate(low, scale_factor=2.0),
                                                           skip], 1)), net.up_half[0].weight),
             (net.join(fine, coarse), plain_join(torch.cat([torch.nn.functional.pixel_unshuffle(fine, CELL),
                                                            coarse], 1)), net.join[0].weight)]
    for ours, plain, weight in cases:
        assert ours.shape == plain.shape
        assert torch.allclose(ours, plain, rtol=0, atol=1e-12)
        (g_ours,) = torch.autograd.grad(ours.square().sum(), weight)
        (g_plain,) = torch.autograd.grad(plain.square().sum(), weight)
        assert torch.allclose(g_ours, g_plain, rtol=1e-12, atol=1e-12)


def test_default_architecture_matches_the_paper():
    cfg = DeepLocoConfig()
    assert cfg.n_features == 4096 and cfg.fc_width == 1024 and cfg.n_candidates == 64
    net = DeepLocoNet(cfg)
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs] == [
        (1, 16, 5, 1), (16, 16, 5, 1), (16, 64, 2, 2), (64, 64, 3, 1), (64, 64, 3, 1),
        (64, 256, 2, 2), (256, 256, 3, 1), (256, 256, 3, 1), (256, 256, 4, 4)]


def test_residual_blocks_start_near_identity():
    net = DeepLocoNet(tiny(fc_width=64))
    x = torch.randn(4, 64)
    for block in net.blocks:
        with torch.no_grad():
            y = block(x)
        assert float((y - x).abs().max()) < 0.05 * float(x.abs().max())


def test_network_input_scaling_ignores_a_constant_background():
    net = DeepLocoNet(tiny())
    frames = 50 * torch.randn(2, 1, 32, 32)
    a = net(frames)
    b = net(frames + 123.0)
    assert torch.allclose(a[0], b[0], atol=1e-4) and torch.allclose(a[1], b[1], atol=1e-4)


def test_network_config_validation_and_round_trip():
    with pytest.raises(InputError):
        tiny(frame_size=40)
    with pytest.raises(InputError):
        tiny(dim=4)
    with pytest.raises(InputError):
        tiny(dim=3)  # needs a z range
    cfg = tiny(dim=3, z_range=(-500.0, 600.0))
    assert DeepLocoConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(InputError, match="expects frames"):
        DeepLocoNet(cfg)(torch.zeros(1, 1, 64, 64))


# ----------------------------------------------------------------------------- loss


def _truth(B=3, N=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(B, N, 2, generator=g) * 6400
    mask = torch.arange(N)[None] < torch.tensor([5, 2, 0])[:B, None]
    return pos, mask


def test_loss_is_zero_when_prediction_equals_truth():
    true_pos, mask = _truth()
    K = 8
    pred = torch.rand(3, K, 2) * 6400
    w = torch.zeros(3, K)
    pred[:, :5] = true_pos
    w[:, :5] = mask.float()
    for kind in ("laplacian", "gaussian"):
        assert float(kernel_loss(pred, w, true_pos, mask, kind=kind)) == pytest.approx(0.0, abs=1e-4)


def test_loss_is_positive_otherwise():
    true_pos, mask = _truth()
    pred = torch.rand(3, 8, 2) * 6400
    w = torch.rand(3, 8)
    loss = kernel_loss(pred, w, true_pos, mask, reduction="none")
    assert loss.shape == (3,) and bool((loss > 0).all())


def test_loss_equals_a_hand_computed_value():
    # One predicted point (weight 0.7) 30 nm in x and 40 nm in y from one true point.
    pred = torch.tensor([[[1000.0, 1000.0]]])
    w = torch.tensor([[0.7]])
    true = torch.tensor([[[1030.0, 1040.0]]])
    mask = torch.tensor([[True]])
    lap = sum(0.7**2 + 1 - 2 * 0.7 * math.exp(-70.0 / s) for s in SIGMAS)
    gau = sum(0.7**2 + 1 - 2 * 0.7 * math.exp(-2500.0 / (4 * s * s)) for s in SIGMAS)
    assert float(kernel_loss(pred, w, true, mask)) == pytest.approx(lap, rel=1e-5)
    assert float(kernel_loss(pred, w, true, mask, kind="gaussian")) == pytest.approx(gau, rel=1e-5)
    assert lap != pytest.approx(gau, rel=1e-3)


def test_loss_is_symmetric():
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(2, 6, 2, generator=g) * 3000, torch.rand(2, 4, 2, generator=g) * 3000
    ones_a, ones_b = torch.ones(2, 6), torch.ones(2, 4)
    for kind in ("laplacian", "gaussian"):
        ab = kernel_loss(a, ones_a, b, ones_b.bool(), kind=kind)
        ba = kernel_loss(b, ones_b, a, ones_a.bool(), kind=kind)
        assert float(ab) == pytest.approx(float(ba), rel=1e-5)


@pytest.mark.parametrize("kind", ["laplacian", "gaussian"])
def test_loss_decreases_as_the_predicted_point_moves_to_the_truth(kind):
    true = torch.tensor([[[2000.0, 3000.0], [5000.0, 1000.0]]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    losses = []
    for offset in (800.0, 400.0, 200.0, 100.0, 50.0, 10.0, 0.0):
        pred = true.clone()
        pred[0, 0, 0] += offset
        losses.append(float(kernel_loss(pred, torch.ones(1, 2), true, mask, kind=kind)))
    assert all(a > b for a, b in zip(losses, losses[1:]))
    assert losses[-1] == pytest.approx(0.0, abs=1e-5)


def test_padded_truth_slots_have_no_effect():
    true_pos, mask = _truth()
    pred, w = torch.rand(3, 8, 2) * 6400, torch.rand(3, 8)
    ref = kernel_loss(pred, w, true_pos, mask, reduction="none")
    garbage = true_pos.clone()
    garbage[~mask] = torch.tensor([1e6, float("nan")])
    assert torch.allclose(kernel_loss(pred, w, garbage, mask, reduction="none"), ref)
    # Extra padding slots change nothing either.
    padded = torch.cat([true_pos, torch.full((3, 4, 2), 777.0)], 1)
    pmask = torch.cat([mask, torch.zeros(3, 4, dtype=torch.bool)], 1)
    assert torch.allclose(kernel_loss(pred, w, padded, pmask, reduction="none"), ref)


def test_batched_loss_equals_per_frame_loss():
    true_pos, mask = _truth()
    pred, w = torch.rand(3, 8, 2) * 6400, torch.rand(3, 8)
    batched = kernel_loss(pred, w, true_pos, mask, reduction="none")
    for b in range(3):
        m = mask[b]
        single = kernel_loss(pred[b : b + 1], w[b : b + 1], true_pos[b : b + 1, m], m[m][None])
        assert float(single) == pytest.approx(float(batched[b]), rel=1e-5)
    assert float(kernel_loss(pred, w, true_pos, mask)) == pytest.approx(float(batched.mean()), rel=1e-6)


def test_z_is_scaled_before_distances():
    true = torch.tensor([[[1000.0, 1000.0, 0.0]]])
    mask = torch.ones(1, 1, dtype=torch.bool)
    dz = kernel_loss(torch.tensor([[[1000.0, 1000.0, 500.0]]]), torch.ones(1, 1), true, mask, z_scale=0.2)
    dx = kernel_loss(torch.tensor([[[1100.0, 1000.0, 0.0]]]), torch.ones(1, 1), true, mask, z_scale=0.2)
    assert float(dz) == pytest.approx(float(dx), rel=1e-5)


def test_gradients_flow_and_are_finite_even_at_coincident_points():
    true_pos, mask = _truth()
    pred = true_pos.clone().requires_grad_(True)  # coincident points: |d| = 0
    extra = (torch.rand(3, 3, 2) * 6400).requires_grad_(True)
    w = torch.rand(3, 8, requires_grad=True)
    for kind in ("laplacian", "gaussian"):
        loss = kernel_loss(torch.cat([pred, extra], 1), w, true_pos, mask, kind=kind)
        gp, ge, gw = torch.autograd.grad(loss, (pred, extra, w))
        for g in (gp, ge, gw):
            assert bool(torch.isfinite(g).all())
        assert float(ge.abs().sum()) > 0 and float(gw.abs().sum()) > 0


def _reference_loss(pp, pw, tp, tm, kind, z_scale=0.2):
    """Plain autograd version of the kernel loss, to check the hand-written backward."""
    tp = torch.where(tm[..., None], tp, torch.zeros((), dtype=tp.dtype))
    pts = torch.cat([pp, tp], 1) * torch.tensor([1.0, 1.0, z_scale], dtype=pp.dtype)
    v = torch.cat([pw, -tm.to(pp.dtype)], 1)
    diff = pts[:, :, None] - pts[:, None]
    if kind == "laplacian":
        K = sum(torch.exp(-diff.abs().sum(-1) / s) for s in SIGMAS)
    else:
        K = sum(torch.exp(-diff.square().sum(-1) / (4 * s * s)) for s in SIGMAS)
    return torch.einsum("bi,bij,bj->b", v, K, v)


@pytest.mark.parametrize("kind", ["laplacian", "gaussian"])
def test_hand_written_gradient_equals_autograd(kind):
    g = torch.Generator().manual_seed(0)
    pp = (torch.rand(3, 7, 3, generator=g, dtype=torch.float64) * 1000).requires_grad_()
    pw = torch.rand(3, 7, generator=g, dtype=torch.float64).requires_grad_()
    tp = torch.rand(3, 5, 3, generator=g, dtype=torch.float64) * 1000
    tm = torch.rand(3, 5, generator=g) < 0.6
    tm[:, 4] = False  # a slot empty in every frame is trimmed
    ours = kernel_loss(pp, pw, tp, tm, SIGMAS, kind, reduction="none")
    ref = _reference_loss(pp, pw, tp, tm, kind)
    assert torch.allclose(ours, ref, rtol=1e-12, atol=1e-10)
    for a, b in zip(torch.autograd.grad(ours.sum(), [pp, pw]), torch.autograd.grad(ref.sum(), [pp, pw])):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-10)
    assert torch.autograd.gradcheck(lambda p, w: kernel_loss(p, w, tp, tm, SIGMAS, kind, reduction="none"),
                                    (pp, pw))


def test_cell_loss_on_a_hand_computed_case():
    # 2x2 grid of 400 nm cells; one emitter in cell (row 1, col 0) at (x=100, y=500) nm
    true_pos = torch.tensor([[[100.0, 500.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, False]])
    pos = torch.tensor([[[200.0, 200.0], [600.0, 200.0], [140.0, 480.0], [600.0, 600.0]]])
    w = torch.tensor([[0.5, 1e-9, 0.8, 1e-9]])
    got = cell_loss(pos, w, true_pos, mask, (2, 2), 400.0)
    want = -math.log(0.5) - math.log(0.8) + (40.0 + 20.0) / 400.0
    assert got.item() == pytest.approx(want, rel=1e-5)
    perfect = cell_loss(torch.tensor([[[0.0, 0.0], [0.0, 0.0], [100.0, 500.0], [0.0, 0.0]]]),
                        torch.tensor([[0.0, 0.0, 1.0, 0.0]]), true_pos, mask, (2, 2), 400.0)
    assert perfect.item() < 1e-4
    with pytest.raises(InputError, match="grid"):
        cell_loss(pos, w, true_pos, mask, (3, 2), 400.0)


def test_cell_loss_reach_trains_neighbouring_cells_on_emitters_near_their_border():
    # 1x2 grid of 400 nm cells (centres x = 200, 600); emitters at x = 380 (cell 0, 20 nm from the
    # border) and x = 700 (cell 1, 300 nm from the border)
    true_pos = torch.tensor([[[380.0, 200.0], [700.0, 200.0]]])
    mask = torch.tensor([[True, True]])
    pos = torch.tensor([[[300.0, 200.0], [650.0, 200.0]]])
    w = torch.tensor([[0.5, 0.5]])
    bce = -2 * math.log(0.5)
    # reach 0.5: each cell points at the emitter inside it: |300 - 380| + |650 - 700|
    assert cell_loss(pos, w, true_pos, mask, (1, 2), 400.0).item() == pytest.approx(bce + 130 / 400, rel=1e-5)
    # reach 0.6 (240 nm): cell 1 also reaches x = 380 (220 nm from its centre), but its own
    # emitter (100 nm) is nearer, so the targets are unchanged
    assert cell_loss(pos, w, true_pos, mask, (1, 2), 400.0, reach=0.6).item() == pytest.approx(bce + 130 / 400,
                                                                                              rel=1e-5)
    # without the second emitter, cell 1 (weight target 0) must point at x = 380: |650 - 380| more
    alone = torch.tensor([[True, False]])
    got = cell_loss(pos, w, true_pos, alone, (1, 2), 400.0, reach=0.6).item()
    assert got == pytest.approx(bce + (80 + 270) / 400, rel=1e-5)
    # x = 380 is 0.55 cells from cell 1's centre: out of a 0.54 reach, no position term for cell 1
    assert cell_loss(pos, w, true_pos, alone, (1, 2), 400.0, reach=0.54).item() == pytest.approx(bce + 80 / 400,
                                                                                                rel=1e-5)


def test_loss_rejects_bad_arguments():
    true_pos, mask = _truth()
    pred, w = torch.rand(3, 8, 2), torch.rand(3, 8)
    with pytest.raises(InputError):
        kernel_loss(pred, w, true_pos, mask, kind="cauchy")
    with pytest.raises(InputError):
        kernel_loss(pred, w[:, :4], true_pos, mask)
    with pytest.raises(InputError):
        kernel_loss(pred, w, true_pos, mask, sigmas=(0.0,))


# ----------------------------------------------------------------------------- post-processing


def test_postprocess_merges_close_candidates_and_keeps_distant_ones():
    pos = torch.tensor([[[1000.0, 1000.0], [1030.0, 1000.0], [3000.0, 3000.0], [3300.0, 3000.0]]])
    w = torch.tensor([[0.2, 0.6, 0.9, 0.8]])
    t = postprocess(pos, w)
    assert list(t) == ["frame", "x", "y", "confidence"]
    np.testing.assert_array_equal(t["frame"], [0, 0, 0])
    np.testing.assert_allclose(t["x"], [(0.2 * 1000 + 0.6 * 1030) / 0.8, 3000.0, 3300.0])
    np.testing.assert_allclose(t["y"], [1000.0, 3000.0, 3000.0])
    np.testing.assert_allclose(t["confidence"], [0.8, 0.9, 0.8], rtol=1e-6)


def test_postprocess_links_chains_drops_small_weights_and_thresholds():
    # A chain 80 + 80 nm is one component (160 nm end to end); the 1e-4 candidate is ignored
    # (it would otherwise link the lone 0.2 candidate); below-threshold components are dropped.
    pos = torch.tensor([[[1000.0, 1000.0], [1080.0, 1000.0], [1160.0, 1000.0],
                         [4000.0, 4000.0], [4090.0, 4000.0], [4180.0, 4000.0]]])
    w = torch.tensor([[0.1, 0.1, 0.2, 0.2, 1e-4, 0.25]])
    t = postprocess(pos, w)
    np.testing.assert_allclose(t["confidence"], [0.4])
    np.testing.assert_allclose(t["x"], [(100 + 108 + 232) / 0.4], rtol=1e-6)
    t = postprocess(pos, w, threshold=0.2)
    np.testing.assert_allclose(t["confidence"], [0.4, 0.2, 0.25])


def test_postprocess_keeps_frames_apart_and_scales_z():
    pos = torch.tensor([[[500.0, 500.0, 0.0], [500.0, 500.0, 400.0]],
                        [[500.0, 500.0, 0.0], [500.0, 500.0, 600.0]]])
    w = torch.full((2, 2), 0.5)
    t = postprocess(pos, w, frame_offset=10)
    # Frame 10: dz = 400 nm -> 80 nm after scaling: merged. Frame 11: 600 -> 120 nm: kept apart.
    np.testing.assert_array_equal(t["frame"], [10, 11, 11])
    np.testing.assert_allclose(t["z"], [200.0, 0.0, 600.0])
    np.testing.assert_allclose(t["confidence"], [1.0, 0.5, 0.5])
    empty = postprocess(pos, torch.zeros(2, 2))
    assert all(len(v) == 0 for v in empty.values()) and "z" in empty


def cell_candidates(B, h, w, dim, seed, cell_nm=400.0, offset_range=0.75):
    """Random candidates laid out as a fully convolutional network's: one per cell, within
    ``offset_range`` cells of its centre; clusters of close candidates across cells, chains,
    weights from far below ``min_weight`` to 1, a few NaNs."""
    g = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    centre = torch.stack([(cols.reshape(-1) + 0.5), (rows.reshape(-1) + 0.5)], -1) * cell_nm
    offset = (2 * torch.rand(B, h * w, 2, generator=g) - 1) * offset_range * cell_nm
    # pull half of the candidates onto a few attractors so that neighbours link, often in chains
    attract = torch.rand(B, h * w, generator=g) < 0.5
    corner = (torch.round(centre / cell_nm) * cell_nm)[None] + 20 * torch.randn(B, h * w, 2, generator=g)
    xy = torch.where(attract[..., None], corner, centre[None] + offset)
    xy = centre[None] + ((xy - centre[None]).clamp(-0.999 * offset_range * cell_nm, 0.999 * offset_range * cell_nm))
    pos = xy if dim == 2 else torch.cat([xy, 300 * torch.randn(B, h * w, 1, generator=g)], -1)
    wt = torch.rand(B, h * w, generator=g) ** 3
    wt[torch.rand(B, h * w, generator=g) < 0.05] = float("nan")
    return pos, wt


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("link", [100.0, 250.0, 700.0])
def test_grid_postprocess_equals_the_kd_tree_one(dim, link):
    """Linking only candidates of cells within reach, by label propagation, gives the k-d tree's
    components: the same table to float rounding."""
    h, w = 6, 9
    pos, wt = cell_candidates(5, h, w, dim, seed=int(link) + dim)
    cells = CellGrid(h, w, 400.0, 0.75)
    for threshold in (0.0, 0.3, 1.0):
        a = postprocess(pos, wt, link_distance=link, threshold=threshold, frame_offset=3)
        b = postprocess(pos, wt, link_distance=link, threshold=threshold, frame_offset=3, cells=cells)
        assert len(a["x"]) > (10 if threshold == 0.0 else 0) and list(a) == list(b)
        for key in a:
            assert a[key].dtype == b[key].dtype
            np.testing.assert_allclose(b[key], a[key], rtol=0, atol=1e-6)
    # components that merged several candidates exist, so the test exercises the propagation
    assert len(postprocess(pos, wt, link_distance=link, threshold=0.0)["x"]) < int((wt >= 1e-3).sum())


def test_grid_postprocess_refuses_candidates_off_the_grid():
    with pytest.raises(InputError, match="4x4 cell grid"):
        postprocess(torch.zeros(1, 10, 2), torch.ones(1, 10), cells=CellGrid(4, 4, 400.0, 0.75))

