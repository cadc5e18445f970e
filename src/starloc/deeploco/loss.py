"""DeepLoco's loss: multi-scale kernel MMD between weighted point sets (paper §2, §5.2).

Prediction and truth are weighted point measures ``mu_hat = sum_j w_hat_j delta(theta_hat_j)`` and
``mu = sum_i delta(theta_i)`` (true weights are 1). The loss per frame is the squared RKHS distance

    l = sum_sigma v^T K_sigma v,   v = [w_hat; -m],

over the stacked points ``[theta_hat; theta]`` (``m`` the truth mask), i.e. the squared L2 distance
of the two measures rendered with the kernel's convolution root. Frames with different emitter
counts are handled by padding the truth with masked (zero-weight) slots: no per-frame loops.

Kernels (unnormalized, ``K(a, a) = 1``), on coordinates whose z has been multiplied by ``z_scale``:

- ``"laplacian"``: ``exp(-||a - b||_1 / sigma)`` (DeepLoco's training kernel);
- ``"gaussian"``: ``exp(-||a - b||_2^2 / (4 sigma^2))``, the overlap of two Gaussian blobs of
  standard deviation ``sigma`` (the paper's rendering kernel, eq. 6, without its constant).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..errors import InputError

__all__ = ["kernel_loss", "cell_loss", "error_loss", "KERNELS", "DEFAULT_SIGMAS"]

Tensor = torch.Tensor

KERNELS = ("laplacian", "gaussian")
DEFAULT_SIGMAS = (64.0, 320.0, 640.0, 1920.0)


def kernel_loss(
    pred_pos: Tensor,
    pred_w: Tensor,
    true_pos: Tensor,
    true_mask: Tensor,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    kind: str = "laplacian",
    z_scale: float = 0.2,
    reduction: str = "mean",
) -> Tensor:
    """Multi-scale kernel MMD between predicted and true point sets, batched.

    pred_pos : ``(B, K, D)`` nm (x, y[, z]); pred_w : ``(B, K)``;
    true_pos : ``(B, N, D)`` nm; true_mask : ``(B, N)`` bool (``False`` = padding slot, ignored
    whatever its position). ``reduction``: ``"mean"`` over frames (default), ``"none"`` gives
    ``(B,)``. Differentiable in ``pred_pos`` and ``pred_w``.
    """
    if kind not in KERNELS:
        raise InputError(f"kernel kind must be one of {KERNELS}, got {kind!r}")
    if reduction not in ("mean", "none"):
        raise InputError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    if pred_pos.ndim != 3 or true_pos.ndim != 3 or pred_pos.shape[-1] != true_pos.shape[-1]:
        raise InputError(f"positions must be (B, K, D) and (B, N, D), got {tuple(pred_pos.shape)}, "
                         f"{tuple(true_pos.shape)}")
    B, K, D = pred_pos.shape
    if pred_w.shape != (B, K) or true_pos.shape[0] != B or true_mask.shape != true_pos.shape[:2]:
        raise InputError("weights/mask shapes do not match the positions")
    if len(sigmas) == 0 or any(float(s) <= 0 for s in sigmas):
        raise InputError(f"sigmas must be positive, got {tuple(sigmas)!r}")
    dtype = pred_pos.dtype
    mask = true_mask.to(torch.bool)
    if mask.shape[1] and bool(mask.any()):
        # Drop padding slots that are empty in every frame (training batches pad to the largest
        # possible count; the loss only needs the largest count present).
        n_used = int(mask.sum(1).max())
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :n_used]
        true_pos = torch.gather(true_pos, 1, order[..., None].expand(-1, -1, D))
        mask = torch.gather(mask, 1, order)
    else:
        true_pos, mask = true_pos[:, :0], mask[:, :0]
    true_pos = torch.where(mask[..., None], true_pos.to(dtype), torch.zeros((), dtype=dtype, device=pred_pos.device))
    points = torch.cat([pred_pos, true_pos], dim=1)  # (B, M, D)
    if D == 3 and z_scale != 1.0:
        points = points * torch.tensor([1.0, 1.0, float(z_scale)], dtype=dtype, device=points.device)
    v = torch.cat([pred_w.to(dtype), -mask.to(dtype)], dim=1)  # (B, M)
    loss = _KernelQuadraticForm.apply(points, v, tuple(float(s) for s in sigmas), kind)
    return loss.mean() if reduction == "mean" else loss


def _kernel_and_slope(points: Tensor, sigmas: tuple[float, ...], kind: str) -> tuple[Tensor, Tensor]:
    """``K`` (B, M, M) summed over scales and its derivative with respect to the distance
    (Laplacian: d/d||a-b||_1) or to the squared distance (Gaussian: d/d||a-b||_2^2)."""
    if kind == "laplacian":
        dist = torch.cdist(points, points, p=1.0)
        scale = [-1.0 / s for s in sigmas]
    else:
        dist = torch.cdist(points, points, p=2.0).square_()
        scale = [-1.0 / (4.0 * s * s) for s in sigmas]
    kernel = torch.zeros_like(dist)
    slope = torch.zeros_like(dist)
    k = torch.empty_like(dist)  # one buffer for every scale: (B, M, M) allocations cost as much as the math
    for a in scale:
        # Clamped so far-apart pairs give e^-80 instead of float denormals, which are ~10x
        # slower to compute with on x86 CPUs (the error is < 1e-34 per pair).
        torch.mul(dist, a, out=k).clamp_(min=-80.0).exp_()
        kernel += k
        slope.add_(k, alpha=a)
    return kernel, slope


class _KernelQuadraticForm(torch.autograd.Function):
    """``l_b = v_b^T K(points_b) v_b`` with a hand-written backward.

    Autograd through the (B, M, M, D) pairwise differences is memory-bound and ~3x slower on CPU;
    here the backward needs only (B, M, M) tensors: ``dl/dv = 2 K v`` and, with
    ``G_ij = v_i v_j K'_ij``, ``dl/dx_i = 2 sum_j G_ij sign(x_i - x_j)`` (Laplacian, per axis) or
    ``4 sum_j G_ij (x_i - x_j)`` (Gaussian, two matrix products).
    """

    @staticmethod
    def forward(ctx, points: Tensor, v: Tensor, sigmas: tuple[float, ...], kind: str) -> Tensor:
        kernel, slope = _kernel_and_slope(points, sigmas, kind)
        kv = torch.bmm(kernel, v[..., None])[..., 0]
        ctx.kind = kind
        ctx.save_for_backward(points, v, kv, slope)
        return (v * kv).sum(-1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        points, v, kv, slope = ctx.saved_tensors
        g = grad[:, None]
        grad_v = 2.0 * g * kv if ctx.needs_input_grad[1] else None
        grad_points = None
        if ctx.needs_input_grad[0]:
            G = torch.mul(v[:, :, None], v[:, None, :]).mul_(slope)
            if ctx.kind == "laplacian":
                cols, signs = [], torch.empty_like(G)
                for d in range(points.shape[-1]):
                    x = points[..., d]
                    torch.sub(x[:, :, None], x[:, None, :], out=signs).sign_()
                    cols.append(signs.mul_(G).sum(-1))
                grad_points = 2.0 * torch.stack(cols, -1)
            else:
                grad_points = 4.0 * (G.sum(-1, keepdim=True) * points - torch.bmm(G, points))
            grad_points = grad_points * g[..., None]
        return grad_points, grad_v, None, None


def cell_loss(
    pred_pos: Tensor,
    pred_w: Tensor,
    true_pos: Tensor,
    true_mask: Tensor,
    grid: tuple[int, int],
    cell_nm: float,
    z_scale: float = 0.2,
    reduction: str = "mean",
    reach: float = 0.5,
) -> Tensor:
    """Auxiliary per-cell loss for the fully convolutional network (candidate ``k`` belongs to
    cell ``(k // w, k % w)`` of a ``grid = (h, w)`` of ``cell_nm`` cells, x along columns).

    ``sum_cells BCE(w_k, occupied_k) + sum_cells |pos_k - e_k|_1 / cell_nm`` per frame, where
    ``occupied_k`` says whether an emitter lies inside cell ``k`` and ``e_k`` is the emitter
    nearest to the cell's centre among those within ``reach`` cells of it along x and y (cells
    with none have no position term; z multiplied by ``z_scale``; training uses 1, so an axial
    error costs as much as a lateral one of the same nm). It tells each cell directly whether
    it owns an emitter and where, which the set-level MMD conveys only through slowly vanishing
    gradients on low-weight candidates; weights must lie in (0, 1).

    ``reach`` 0.5: only the cell holding an emitter points at it. Beyond 0.5 (up to the
    network's offset range), a neighbouring cell also learns to point at an emitter close to
    its border: the network cannot tell on which side of a border an emitter lies to better than
    its error, splits the weight between the two cells, and the post-processing sums the two
    only if both candidates point at the emitter.
    """
    if reduction not in ("mean", "none"):
        raise InputError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    h, w = (int(v) for v in grid)
    B, K, D = pred_pos.shape
    if K != h * w or pred_w.shape != (B, K):
        raise InputError(f"{K} candidates do not form a {h}x{w} grid of cells")
    mask = true_mask.to(torch.bool)
    true_pos = true_pos.to(pred_pos.dtype)
    target, has_target = cell_targets(true_pos, mask, (h, w), cell_nm, reach)
    col = torch.div(true_pos[..., 0], cell_nm, rounding_mode="floor").clamp(0, w - 1).long()
    row = torch.div(true_pos[..., 1], cell_nm, rounding_mode="floor").clamp(0, h - 1).long()
    cell = torch.where(mask, row * w + col, torch.zeros_like(col))
    occupied = torch.zeros(B, K, dtype=pred_w.dtype, device=pred_w.device)
    occupied.scatter_(1, cell, mask.to(pred_w.dtype))
    occupied.clamp_(max=1.0)
    bce = torch.nn.functional.binary_cross_entropy(pred_w.clamp(1e-6, 1 - 1e-6), occupied, reduction="none").sum(1)
    scale = torch.ones(D, dtype=pred_pos.dtype, device=pred_pos.device)
    if D == 3:
        scale[2] = z_scale
    err = ((pred_pos - target).abs() * scale).sum(-1) / cell_nm
    loss = bce + (err * has_target).sum(1)
    return loss.mean() if reduction == "mean" else loss


def cell_targets(true_pos: Tensor, mask: Tensor, grid: tuple[int, int], cell_nm: float,
                 reach: float) -> tuple[Tensor, Tensor]:
    """Each cell's target emitter: ``(target (B, K, D) nm, has_target (B, K) bool)``, the
    emitter nearest to the cell's centre among those within ``reach`` cells of it along x and
    y (see :func:`cell_loss`); cells without one get an arbitrary emitter and ``False``."""
    h, w = grid
    D = true_pos.shape[-1]
    rows, cols = torch.meshgrid(torch.arange(h, device=true_pos.device, dtype=true_pos.dtype),
                                torch.arange(w, device=true_pos.device, dtype=true_pos.dtype), indexing="ij")
    centre = torch.stack([cols.reshape(-1) + 0.5, rows.reshape(-1) + 0.5], -1)  # (K, 2) cells
    offset = true_pos[:, None, :, :2] / cell_nm - centre[None, :, None, :]  # (B, K, M, 2) cells
    within = (offset.abs().amax(-1) <= reach) & mask[:, None, :]
    dist2 = torch.where(within, (offset**2).sum(-1), torch.full_like(offset[..., 0], math.inf))
    target = torch.gather(true_pos, 1, dist2.argmin(-1)[..., None].expand(-1, -1, D))
    return target, within.any(-1)


def error_loss(
    pred_pos: Tensor,
    pred_err: Tensor,
    pred_w: Tensor,
    true_pos: Tensor,
    true_mask: Tensor,
    grid: tuple[int, int],
    cell_nm: float,
    reach: float = 0.5,
) -> Tensor:
    """Gaussian negative log-likelihood of each cell candidate's position error under its
    predicted error ``pred_err (B, K, D)`` (nm, a standard deviation per axis), the mean over
    the cells that have a target (:func:`cell_targets`) weighted by the candidates' weights:
    ``sum_d e_d² / (2 s_d²) + log s_d``. Positions and weights are detached: only the error
    prediction learns from it, and at its optimum ``s_d²`` is the mean squared error of such
    candidates. Zero without any target."""
    h, w = (int(v) for v in grid)
    B, K, D = pred_pos.shape
    if K != h * w or pred_err.shape != pred_pos.shape or pred_w.shape != (B, K):
        raise InputError(f"{K} candidates with errors {tuple(pred_err.shape)} do not form a {h}x{w} grid of cells")
    target, has_target = cell_targets(true_pos.to(pred_pos.dtype), true_mask.to(torch.bool), (h, w), cell_nm, reach)
    err2 = (pred_pos.detach() - target) ** 2
    nll = (err2 / (2 * pred_err**2) + torch.log(pred_err)).sum(-1)
    weight = pred_w.detach() * has_target
    return (nll * weight).sum() / weight.sum().clamp(min=1e-6)
