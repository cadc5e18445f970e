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

from collections.abc import Sequence

import torch

from ..errors import InputError

__all__ = ["kernel_loss", "KERNELS", "DEFAULT_SIGMAS"]

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
    true_pos = torch.where(mask[..., None], true_pos.to(dtype), torch.zeros((), dtype=dtype, device=pred_pos.device))
    points = torch.cat([pred_pos, true_pos], dim=1)  # (B, M, D)
    if D == 3 and z_scale != 1.0:
        points = points * torch.tensor([1.0, 1.0, float(z_scale)], dtype=dtype, device=points.device)
    v = torch.cat([pred_w.to(dtype), -mask.to(dtype)], dim=1)  # (B, M)
    diff = points[:, :, None, :] - points[:, None, :, :]  # (B, M, M, D)
    if kind == "laplacian":
        dist = diff.abs().sum(-1)
        kernel = sum(torch.exp(dist * (-1.0 / float(s))) for s in sigmas)
    else:
        dist2 = diff.square().sum(-1)
        kernel = sum(torch.exp(dist2 * (-1.0 / (4.0 * float(s) ** 2))) for s in sigmas)
    loss = torch.einsum("bi,bij,bj->b", v, kernel, v)
    return loss.mean() if reduction == "mean" else loss
