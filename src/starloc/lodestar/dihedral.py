"""Test-time averaging over the 8 exact symmetries of the pixel grid (quarter turns, flips).

Quarter turns and flips move pixels without interpolation, so the network can be evaluated
on all 8 versions of an image and the maps mapped back exactly. Averaging them removes the
part of the network's error that is not equivariant (the residual the training could not
remove), at 8x the inference cost.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Forward = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _unrotate_points(pos: torch.Tensor, height: int) -> torch.Tensor:
    """Undo one ``torch.rot90(k=1)`` on (row, col) maps; ``height`` of the rotated array.

    ``rot90`` sends (r, c) of an array of width B to (B - 1 - c, r); B is the rotated
    array's height.
    """
    return torch.stack([pos[:, 1], height - 1 - pos[:, 0]], dim=1)


def dihedral_maps(forward: Forward, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``forward`` (returning absolute ``(P, rho)`` maps) on the 8 grid symmetries of ``x``,
    each mapped back to ``x``'s frame: ``(8, N, K, h, w)`` positions, ``(8, N, h, w)`` logits;
    index 0 is ``x`` itself.

    ``x`` is ``(N, C, H, W)`` with H, W multiples of the network stride, so that the output
    grid turns with the image.
    """
    width = x.shape[-1]
    out_P, out_rho = [], []
    for flip in (False, True):
        flipped = x.flip(-1) if flip else x
        for k in range(4):
            P, rho = forward(torch.rot90(flipped, k, dims=(-2, -1)))
            pos = P[:, :2]
            for turn in range(k):
                rotated_height = x.shape[-2] if (k - turn) % 2 == 0 else x.shape[-1]
                pos = _unrotate_points(pos, rotated_height)
            if flip:
                pos = torch.stack([pos[:, 0], width - 1 - pos[:, 1]], dim=1)
            P = torch.rot90(torch.cat([pos, P[:, 2:]], dim=1), -k, dims=(-2, -1))
            rho = torch.rot90(rho, -k, dims=(-2, -1))
            out_P.append(P.flip(-1) if flip else P)
            out_rho.append(rho.flip(-1) if flip else rho)
    return torch.stack(out_P), torch.stack(out_rho)
