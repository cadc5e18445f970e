"""The LodeSTAR network: a small fully convolutional net and the decoding of its output.

Coordinates: property channel 0 is the row, channel 1 the column (napari order), in input
pixels with pixel centres at integer positions. Further channels (z, log-signal, ...) are
passed through unchanged by the decoding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class NetworkConfig:
    """Architecture hyper-parameters (stored in model files).

    ``full_res_widths`` are the 3x3 convs before the 2x2 max-pool, ``half_res_widths`` the
    3x3 convs after it; a final 1x1 conv maps to ``n_properties + 1`` channels (the last one
    is the weight logit rho).
    """

    in_channels: int = 1
    n_properties: int = 2
    full_res_widths: tuple[int, ...] = (16, 32)
    half_res_widths: tuple[int, ...] = (32,) * 5

    def to_dict(self) -> dict:
        d = asdict(self)
        d["full_res_widths"] = list(self.full_res_widths)
        d["half_res_widths"] = list(self.half_res_widths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> NetworkConfig:
        return cls(
            in_channels=int(d["in_channels"]),
            n_properties=int(d["n_properties"]),
            full_res_widths=tuple(int(v) for v in d["full_res_widths"]),
            half_res_widths=tuple(int(v) for v in d["half_res_widths"]),
        )

    @property
    def stride(self) -> int:
        """Input pixels per output pixel along each axis."""
        return 2

    @property
    def receptive_field(self) -> int:
        """Receptive field of one output pixel, in input pixels."""
        n_full, n_half = len(self.full_res_widths), len(self.half_res_widths)
        return 1 + 2 * n_full + 1 + 4 * n_half


class LodeSTARNet(nn.Module):
    """Fully convolutional LodeSTAR network. Returns the raw output ``(B, K + 1, h, w)``.

    h = H // 2, w = W // 2 for an input of ``(B, C, H, W)``; use :func:`decode` to turn it
    into absolute property maps and weights.
    """

    def __init__(self, config: NetworkConfig = NetworkConfig()):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        c = config.in_channels
        for width in config.full_res_widths:
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU(inplace=True)]
            c = width
        layers.append(nn.MaxPool2d(2))
        for width in config.half_res_widths:
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU(inplace=True)]
            c = width
        layers.append(nn.Conv2d(c, config.n_properties + 1, 1))
        self.body = nn.Sequential(*layers)
        # oneDNN convolutions are ~1.7x faster in channels-last layout on CPU (measured).
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.contiguous(memory_format=torch.channels_last))


def output_grid(h: int, w: int, stride: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Input-pixel (row, col) coordinates of the centres of the ``h x w`` output pixels.

    Output pixel i pools input pixels ``i*stride ... i*stride + stride - 1``; its centre is
    at ``i*stride + (stride - 1)/2``. This holds for odd input sizes too (the pool drops the
    last row/column, it does not rescale).
    """
    offset = (stride - 1) / 2
    rows = torch.arange(h, device=device, dtype=torch.float32) * stride + offset
    cols = torch.arange(w, device=device, dtype=torch.float32) * stride + offset
    return rows, cols


def decode(
    raw: torch.Tensor, stride: int, origin: tuple[float, float] = (0.0, 0.0)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn raw network output into property maps ``P`` and weight logits ``rho``.

    Parameters
    ----------
    raw : (B, K + 1, h, w) network output.
    stride : input pixels per output pixel.
    origin : (row, col) input-pixel coordinate that becomes 0 in the returned positions.
        ``(0, 0)`` gives absolute image coordinates; training passes the rotation centre
        ``((H - 1)/2, (W - 1)/2)``. The frame is always explicit, never a mode flag.

    Returns
    -------
    P : (B, K, h, w) properties; channels 0, 1 are (row, col) in input pixels relative to
        ``origin``; other channels pass through.
    rho : (B, h, w) weight logits; ``sigmoid(rho)`` is the weight map.
    """
    k = raw.shape[1] - 1
    rows, cols = output_grid(raw.shape[2], raw.shape[3], stride, device=raw.device)
    grid = torch.stack(torch.broadcast_tensors(rows[:, None] - origin[0], cols[None, :] - origin[1]))
    positions = raw[:, :2] + grid.to(raw.dtype)
    P = torch.cat([positions, raw[:, 2:k]], dim=1)
    return P, raw[:, k]
