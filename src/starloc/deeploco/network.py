"""The DeepLoco network: conv stack -> fully connected ResNet -> K weighted candidate emitters.

Architecture (Boyd et al., "DeepLoco", §5.4; widths and K are parameters):

- conv 5x5 (1 -> c0) + ReLU, conv 5x5 (c0 -> c0) + ReLU, strided conv 2x2/2 (c0 -> c1);
- two conv 3x3 (c1 -> c1) + ReLU, strided conv 2x2/2 (c1 -> c2);
- two conv 3x3 (c2 -> c2) + ReLU, strided conv 4x4/4 (c2 -> c2) (no activation after strided convs);
- flatten (c2 * (S/16)^2 features) -> Linear -> fc_width + ReLU -> residual blocks
  ``x + W2 relu(W1 x + b1)`` with ``W2`` initialised near zero (each block starts as the identity);
- heads: positions ``sigmoid(Linear -> K*D)`` mapped into the frame's box, weights
  ``relu(Linear -> K)``.

Coordinates (as everywhere in :mod:`starloc.deeploco`): nm, ``x`` along columns, ``y`` along rows,
origin at the frame's top-left *corner*; ``x, y`` lie in ``[0, S * pixel_size)``, ``z`` in
``z_range``. Output positions are ``(B, K, D)`` with columns ``(x, y[, z])``.

Input: frames ``(B, 1, S, S)`` in normalized photons (camera ``normalize``). The network applies
its own fixed input scaling inside :meth:`DeepLocoNet.forward`: per frame the median is subtracted
(``subtract_median``, removes the background level) and the result divided by ``input_scale``
photons, so simulated and real frames go through exactly the same arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..errors import InputError

__all__ = ["DeepLocoConfig", "DeepLocoNet", "DOWNSAMPLING"]

Tensor = torch.Tensor

#: total spatial downsampling of the conv stack (2 * 2 * 4)
DOWNSAMPLING = 16


@dataclass(frozen=True)
class DeepLocoConfig:
    """Architecture, box and input scaling (stored in model files).

    frame_size : side ``S`` of the square input frames in pixels (multiple of 16).
    dim : 2 (x, y) or 3 (x, y, z).
    n_candidates : K, the number of candidate emitters per frame.
    conv_widths : channels ``(c0, c1, c2)`` of the three conv scales (paper: 16, 64, 256).
    fc_width : width of the fully connected ResNet (paper: 1024).
    n_res_blocks : residual blocks (paper: 2).
    pixel_size : nm per pixel; the box is ``[0, S * pixel_size)`` in x and y.
    z_range : nm, the box in z (used when ``dim == 3``).
    input_scale : photons per unit of network input.
    subtract_median : subtract each frame's median before scaling.
    """

    frame_size: int = 64
    dim: int = 2
    n_candidates: int = 64
    conv_widths: tuple[int, int, int] = (16, 64, 256)
    fc_width: int = 1024
    n_res_blocks: int = 2
    pixel_size: float = 100.0
    z_range: tuple[float, float] = (0.0, 0.0)
    input_scale: float = 100.0
    subtract_median: bool = True

    def __post_init__(self) -> None:
        if int(self.frame_size) < DOWNSAMPLING or int(self.frame_size) % DOWNSAMPLING:
            raise InputError(f"frame_size must be a positive multiple of {DOWNSAMPLING}, got {self.frame_size!r}")
        if self.dim not in (2, 3):
            raise InputError(f"dim must be 2 or 3, got {self.dim!r}")
        if int(self.n_candidates) < 1 or int(self.fc_width) < 1 or int(self.n_res_blocks) < 0:
            raise InputError("n_candidates and fc_width must be >= 1, n_res_blocks >= 0")
        if len(self.conv_widths) != 3 or any(int(c) < 1 for c in self.conv_widths):
            raise InputError(f"conv_widths must be three positive ints, got {self.conv_widths!r}")
        if not (math.isfinite(self.pixel_size) and self.pixel_size > 0):
            raise InputError(f"pixel_size must be positive, got {self.pixel_size!r}")
        lo, hi = self.z_range
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise InputError(f"z_range must be (low, high) nm, got {self.z_range!r}")
        if self.dim == 3 and hi <= lo:
            raise InputError(f"a 3D network needs a z_range of positive extent, got {self.z_range!r}")
        if not (math.isfinite(self.input_scale) and self.input_scale > 0):
            raise InputError(f"input_scale must be positive, got {self.input_scale!r}")

    @property
    def n_features(self) -> int:
        """Flattened features after the conv stack."""
        return self.conv_widths[2] * (self.frame_size // DOWNSAMPLING) ** 2

    @property
    def box(self) -> tuple[tuple[float, float], ...]:
        """``((x_lo, x_hi), (y_lo, y_hi)[, (z_lo, z_hi)])`` nm."""
        extent = self.frame_size * self.pixel_size
        b = ((0.0, extent), (0.0, extent))
        return b + ((tuple(self.z_range),) if self.dim == 3 else ())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["conv_widths"] = list(self.conv_widths)
        d["z_range"] = list(self.z_range)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DeepLocoConfig:
        return cls(
            frame_size=int(d["frame_size"]), dim=int(d["dim"]), n_candidates=int(d["n_candidates"]),
            conv_widths=tuple(int(c) for c in d["conv_widths"]), fc_width=int(d["fc_width"]),
            n_res_blocks=int(d["n_res_blocks"]), pixel_size=float(d["pixel_size"]),
            z_range=tuple(float(v) for v in d["z_range"]), input_scale=float(d["input_scale"]),
            subtract_median=bool(d["subtract_median"]),
        )

    @classmethod
    def for_simulator(cls, simulator: Any, **kwargs: Any) -> DeepLocoConfig:
        """A config whose frame size, pixel size, dimension and z box match a
        :class:`~starloc.deeploco.simulate.Simulator` (square frames); ``kwargs`` override."""
        H, W = simulator.frame_shape
        if H != W:
            raise InputError(f"DeepLoco trains on square frames, the simulator makes {H}x{W}")
        dim = 3 if simulator.psf.z_dependent else 2
        base = dict(frame_size=H, dim=dim, pixel_size=simulator.pixel_size,
                    z_range=tuple(simulator.z_range) if dim == 3 else (0.0, 0.0))
        base.update(kwargs)
        return cls(**base)


class _ResBlock(nn.Module):
    """``x + W2 relu(W1 x + b1)``; ``W2`` starts near zero so the block starts as the identity."""

    def __init__(self, width: int, init_scale: float = 1e-2):
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        with torch.no_grad():
            self.fc2.weight.mul_(init_scale)
            self.fc2.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fc2(torch.relu(self.fc1(x)))


class DeepLocoNet(nn.Module):
    """``forward(frames (B, 1, S, S)) -> (positions (B, K, D) nm, weights (B, K) >= 0)``."""

    def __init__(self, config: DeepLocoConfig = DeepLocoConfig()):
        super().__init__()
        self.config = config
        c0, c1, c2 = (int(c) for c in config.conv_widths)
        relu = nn.ReLU
        self.features = nn.Sequential(
            nn.Conv2d(1, c0, 5, padding=2), relu(),
            nn.Conv2d(c0, c0, 5, padding=2), relu(),
            nn.Conv2d(c0, c1, 2, stride=2),
            nn.Conv2d(c1, c1, 3, padding=1), relu(),
            nn.Conv2d(c1, c1, 3, padding=1), relu(),
            nn.Conv2d(c1, c2, 2, stride=2),
            nn.Conv2d(c2, c2, 3, padding=1), relu(),
            nn.Conv2d(c2, c2, 3, padding=1), relu(),
            nn.Conv2d(c2, c2, 4, stride=4),
        )
        self.fc = nn.Linear(config.n_features, config.fc_width)
        self.blocks = nn.Sequential(*[_ResBlock(config.fc_width) for _ in range(config.n_res_blocks)])
        K, D = config.n_candidates, config.dim
        self.position_head = nn.Linear(config.fc_width, K * D)
        self.weight_head = nn.Linear(config.fc_width, K)
        box = torch.tensor(config.box, dtype=torch.float32)  # (D, 2)
        self.register_buffer("box_low", box[:, 0].clone(), persistent=False)
        self.register_buffer("box_extent", (box[:, 1] - box[:, 0]).clone(), persistent=False)

    def normalize_input(self, frames: Tensor) -> Tensor:
        """The fixed input scaling (see the module docstring)."""
        c = self.config
        x = frames
        if c.subtract_median:
            x = x - x.flatten(1).median(dim=1).values.view(-1, *([1] * (x.ndim - 1)))
        return x / c.input_scale

    def forward(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        c = self.config
        if frames.ndim != 4 or frames.shape[1] != 1 or frames.shape[-2:] != (c.frame_size, c.frame_size):
            raise InputError(
                f"DeepLocoNet expects frames (B, 1, {c.frame_size}, {c.frame_size}), got {tuple(frames.shape)}"
            )
        h = self.features(self.normalize_input(frames)).flatten(1)
        h = torch.relu(self.fc(h))
        h = self.blocks(h)
        u = torch.sigmoid(self.position_head(h)).view(-1, c.n_candidates, c.dim)
        positions = self.box_low + u * self.box_extent
        weights = torch.relu(self.weight_head(h))
        return positions, weights
