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
from copy import deepcopy
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..errors import InputError

__all__ = ["ARCHITECTURES", "CELL", "CELL_ARCHITECTURES", "DeepLocoConfig", "DeepLocoFCN", "DeepLocoNet",
           "DeepLocoUNet", "DOWNSAMPLING", "build_network", "inference_batch"]

Tensor = torch.Tensor

#: total spatial downsampling of the conv stack (2 * 2 * 4)
DOWNSAMPLING = 16
#: side in pixels of the cell that owns one candidate in the fully convolutional network
CELL = 4
ARCHITECTURES = ("paper", "fcn", "unet")
#: the fully convolutional architectures: one candidate per ``CELL x CELL`` cell, any frame size
CELL_ARCHITECTURES = ("fcn", "unet")
#: largest offset of an FCN candidate from its cell centre, in cells (0.5 = the cell border):
#: the default of DeepLocoConfig and of model files written before it was a setting
OFFSET_RANGE = 0.6


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
    architecture : ``"paper"`` (:class:`DeepLocoNet`, the paper's conv stack + FC ResNet with K
        global candidates), ``"fcn"`` (:class:`DeepLocoFCN`, fully convolutional: one candidate
        per 4x4-pixel cell; ``n_candidates``, ``fc_width`` and ``n_res_blocks`` are unused) or
        ``"unet"`` (:class:`DeepLocoUNet`, the same cells with full-resolution skip connections).
    offset_range : ``"fcn"``/``"unet"``: how far a cell's candidate can sit from the cell centre,
        in cells (0.5 = the cell border; files written before it existed hold 0.6).
    uncertainty : ``"fcn"``/``"unet"``: also predict each candidate's localization error (nm
        per axis) with a small head on the cell features (:meth:`DeepLocoFCN.predict`); files
        written before it existed have none.
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
    architecture: str = "paper"
    offset_range: float = OFFSET_RANGE
    uncertainty: bool = False

    def __post_init__(self) -> None:
        if int(self.frame_size) < DOWNSAMPLING or int(self.frame_size) % DOWNSAMPLING:
            raise InputError(f"frame_size must be a positive multiple of {DOWNSAMPLING}, got {self.frame_size!r}")
        if self.architecture not in ARCHITECTURES:
            raise InputError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
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
        if not 0.5 <= self.offset_range <= 2.0:
            raise InputError(f"offset_range must lie in [0.5, 2] cells, got {self.offset_range!r}")
        if self.uncertainty and self.architecture not in CELL_ARCHITECTURES:
            raise InputError(f"per-localization uncertainty needs a cell architecture {CELL_ARCHITECTURES}, "
                             f"not {self.architecture!r}")

    @property
    def cellular(self) -> bool:
        """One candidate per ``CELL x CELL`` cell (the fully convolutional architectures)."""
        return self.architecture in CELL_ARCHITECTURES

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
            architecture=str(d.get("architecture", "paper")),
            offset_range=float(d.get("offset_range", OFFSET_RANGE)),
            uncertainty=bool(d.get("uncertainty", False)),
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
        return _median_scaled(frames, self.config)

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

    def predict(self, frames: Tensor) -> tuple[Tensor, Tensor, None]:
        """:meth:`forward` and no errors: the networks' common contract (see
        :meth:`DeepLocoFCN.predict`); the paper's network has no error head."""
        return (*self(frames), None)


def _median_scaled(frames: Tensor, config: DeepLocoConfig) -> Tensor:
    x = frames
    if config.subtract_median:
        x = x - x.flatten(1).median(dim=1).values.view(-1, *([1] * (x.ndim - 1)))
    return x / config.input_scale


def _conv(i: int, o: int, k: int = 3, **kw: Any) -> list[nn.Module]:
    """Conv (no bias) + batch norm + ReLU; ``padding`` defaults to ``k // 2``."""
    # batch norm: 2D validation Jaccard 0.86 -> 0.93 and RMSE 33 -> 24 nm after 300 steps
    return [nn.Conv2d(i, o, k, padding=kw.pop("padding", k // 2), bias=False, **kw),
            nn.BatchNorm2d(o), nn.ReLU()]


def _fuse_sequential(seq: nn.Sequential) -> nn.Sequential:
    """``seq`` with each conv followed by a batch norm replaced by one conv (eval mode)."""
    layers, mods, i = [], list(seq), 0
    while i < len(mods):
        if isinstance(mods[i], nn.Conv2d) and i + 1 < len(mods) and isinstance(mods[i + 1], nn.BatchNorm2d):
            layers.append(fuse_conv_bn_eval(mods[i], mods[i + 1]))
            i += 2
        else:
            layers.append(mods[i])
            i += 1
    return type(seq)(*layers)  # keeps a decoder block's own two-input forward


class DeepLocoFCN(nn.Module):
    """Fully convolutional DeepLoco: one weighted candidate per ``CELL x CELL`` pixel cell.

    The same contract as :class:`DeepLocoNet` (``forward -> (positions (B, K, D) nm, weights
    (B, K))``, the same kernel loss and post-processing) with ``K = (H / 4) * (W / 4)`` for a
    frame of ``H x W`` pixels (any multiple of 4): translation equivariant, so it learns from far
    fewer examples, costs ~0.1 GFLOP per 64x64 frame instead of ~1, and runs on whole frames of
    any size.

    Layers (widths ``(c0, c1, c2)``; each conv followed by batch norm and ReLU): two 3x3 convs
    at full resolution, a 2x2/2 conv and two 3x3 convs at 1/2, a 2x2/2 conv and three 3x3 convs
    (the last dilated by 2 for context) at 1/4, then 1x1 heads. Candidate ``k`` of cell
    ``(i, j)`` sits at the cell centre ``((j + 0.5) * 4, (i + 0.5) * 4)`` px plus ``tanh``
    offsets of at most ``config.offset_range`` cells: each cell owns the emitters inside it (a
    little beyond, so an emitter on a border can be claimed from either side, and two cells
    sharing one are linked and summed by the post-processing); ``z = sigmoid`` mapped into
    ``z_range``; weight = sigmoid.

    With ``config.uncertainty`` a second head (1x1 convs, ``uncertainty_head``) reads the
    same cell features, *detached*, and predicts each candidate's localization error per axis
    (nm, :meth:`predict`): it learns from the other heads' errors without changing what they
    learn. It is added after every other layer (:func:`build_network`), so the rest of a
    network of a given seed is initialised exactly as without it.
    """

    def __init__(self, config: DeepLocoConfig):
        super().__init__()
        self.config = config
        self.uncertainty_head: nn.Module | None = None  # see add_uncertainty_head
        self.features = nn.Sequential(*(layer for block in self._encoder_blocks() for layer in block))
        self.head = nn.Conv2d(int(config.conv_widths[2]), 1 + config.dim, 1)
        with torch.no_grad():
            self.head.bias[0].fill_(-4.0)  # start with low weights everywhere (few emitters)
        self.to(memory_format=torch.channels_last)

    def _encoder_blocks(self) -> tuple[list[nn.Module], list[nn.Module], list[nn.Module]]:
        """The layers at full, 1/2 and 1/4 resolution (each block ends at its resolution)."""
        c0, c1, c2 = (int(c) for c in self.config.conv_widths)
        return ([*_conv(1, c0), *_conv(c0, c0)],
                [*_conv(c0, c1, 2, stride=2, padding=0), *_conv(c1, c1), *_conv(c1, c1)],
                [*_conv(c1, c2, 2, stride=2, padding=0), *_conv(c2, c2), *_conv(c2, c2),
                 *_conv(c2, c2, dilation=2, padding=2), *_conv(c2, c2, 1)])

    def fused(self) -> DeepLocoFCN:
        """An inference-only copy with each batch norm folded into its conv (~15 % faster) and
        ReLUs in place (each acts on a conv's fresh output: another 15-20 % for the FCN, 35-40 %
        for the U-Net on 2 CPU threads, same output bit for bit)."""
        net = deepcopy(self).eval()
        for name, child in list(net.named_children()):
            if isinstance(child, nn.Sequential):
                setattr(net, name, _fuse_sequential(child))
        for module in net.modules():
            if isinstance(module, nn.ReLU):
                module.inplace = True
        return net.to(memory_format=torch.channels_last)

    def add_uncertainty_head(self) -> None:
        """The error head (see the class docstring): two 1x1 convs, c2 -> 32 -> D."""
        c2 = int(self.config.conv_widths[2])
        self.uncertainty_head = nn.Sequential(nn.Conv2d(c2, 32, 1), nn.ReLU(), nn.Conv2d(32, self.config.dim, 1))
        self.uncertainty_head.to(memory_format=torch.channels_last)

    def cell_features(self, x: Tensor) -> Tensor:
        """Normalized frames ``(B, 1, H, W)`` -> the features the heads read ``(B, c2, H / 4, W / 4)``."""
        return self.features(x)

    def cell_outputs(self, x: Tensor) -> Tensor:
        """Normalized frames ``(B, 1, H, W)`` -> raw head outputs ``(B, 1 + D, H / 4, W / 4)``."""
        return self.head(self.cell_features(x))

    def error_scale(self) -> tuple[float, ...]:
        """nm per unit of the error head's output along x, y[, z]: a quarter cell laterally,
        a fifteenth of the z range axially (100 nm for 100 nm pixels and ±750 nm)."""
        c = self.config
        lateral = CELL * c.pixel_size / 4.0
        return (lateral, lateral) + (((c.z_range[1] - c.z_range[0]) / 15.0,) if c.dim == 3 else ())

    def forward(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        positions, weights, _ = self.predict(frames)
        return positions, weights

    def predict(self, frames: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(positions (B, K, D) nm, weights (B, K), errors (B, K, D) nm or None)``: the
        :meth:`forward` outputs and, with an error head, each candidate's predicted
        localization error per axis (x, y[, z]; a standard deviation in nm, > 1 nm)."""
        c = self.config
        if frames.ndim != 4 or frames.shape[1] != 1 or frames.shape[-1] % CELL or frames.shape[-2] % CELL \
                or min(frames.shape[-2:]) < 4 * CELL:
            raise InputError(f"{type(self).__name__} expects frames (B, 1, H, W) with H, W multiples of {CELL} "
                             f"and >= {4 * CELL}, got {tuple(frames.shape)}")
        x = _median_scaled(frames, c).contiguous(memory_format=torch.channels_last)
        feats = self.cell_features(x)
        out = self.head(feats)  # (B, 1 + D, H/4, W/4)
        B, _, h, w = out.shape
        out = out.permute(0, 2, 3, 1).reshape(B, h * w, 1 + c.dim)
        weights = torch.sigmoid(out[..., 0])
        dev, dt = out.device, out.dtype
        rows, cols = torch.meshgrid(torch.arange(h, device=dev, dtype=dt), torch.arange(w, device=dev, dtype=dt),
                                    indexing="ij")
        cell_nm = CELL * c.pixel_size
        centre = torch.stack([(cols.reshape(-1) + 0.5) * cell_nm, (rows.reshape(-1) + 0.5) * cell_nm], -1)
        xy = centre + torch.tanh(out[..., 1:3]) * (c.offset_range * cell_nm)
        if c.dim == 3:
            lo, hi = c.z_range
            z = lo + torch.sigmoid(out[..., 3:4]) * (hi - lo)
            xy = torch.cat([xy, z], -1)
        errors = None
        if self.uncertainty_head is not None:
            raw = self.uncertainty_head(feats.detach()).permute(0, 2, 3, 1).reshape(B, h * w, c.dim)
            errors = nn.functional.softplus(raw) * torch.tensor(self.error_scale(), dtype=dt, device=dev) + 1.0
        return xy, weights, errors


#: ``T[k, t]``: a 3x3 conv tap ``t`` (offsets -1, 0, +1) of a conv on a nearest-x2 upsampled input
#: contributes to tap ``k`` of the equal 4x4 stride-2 transposed conv (padding 1) on the input itself
_UP_TAPS = ((0.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 0.0))


def upsampled_conv_as_transposed(weight: Tensor) -> Tensor:
    """The weight ``(C, O, 4, 4)`` of ``conv_transpose2d(x, ., stride=2, padding=1)`` that equals
    ``conv2d(nearest_x2(x), weight, padding=1)`` for a 3x3 ``weight (O, C, 3, 3)`` (differentiable).

    Each output pixel of the upsampled conv reads only a 2x2 block of ``x`` (its 3x3 taps fall on
    two rows and two columns of ``x``), so the transposed conv does 4/9 of the multiplications
    and never materializes the upsampled input."""
    taps = torch.tensor(_UP_TAPS, dtype=weight.dtype, device=weight.device)
    return torch.einsum("kt,octs,ls->cokl", taps, weight, taps)


def _rest(block: nn.Sequential, y: Tensor) -> Tensor:
    for layer in list(block)[1:]:
        y = layer(y)
    return y


class _UpBlock(nn.Sequential):
    """Decoder step: its layers applied to ``cat(nearest_x2(low), skip)`` (first layer a 3x3 conv).

    The first conv is computed split over the concatenation, the ``low`` part as the equal
    transposed conv (:func:`upsampled_conv_as_transposed`): no upsampled or concatenated copy
    is made. Equal to the concatenated form up to float rounding; on 2 CPU threads the U-Net's
    network runs 1.6x faster at inference and a training step ~15 % faster."""

    def forward(self, low: Tensor, skip: Tensor) -> Tensor:  # type: ignore[override]
        conv, c = self[0], low.shape[1]
        y = nn.functional.conv_transpose2d(low, upsampled_conv_as_transposed(conv.weight[:, :c]), stride=2,
                                           padding=1)
        return _rest(self, y.add_(nn.functional.conv2d(skip, conv.weight[:, c:], conv.bias, padding=1)))


class _JoinBlock(nn.Sequential):
    """Its layers applied to ``cat(pixel_unshuffle(fine, CELL), coarse)`` (first layer a 1x1
    conv): each cell's full-resolution features joined with its 1/4-resolution ones. The 1x1
    conv of the unshuffled cells is computed as the equal 4x4 stride-4 conv of ``fine``."""

    def forward(self, fine: Tensor, coarse: Tensor) -> Tensor:  # type: ignore[override]
        conv, c = self[0], fine.shape[1]
        n = CELL * CELL * c  # pixel_unshuffle's channel order: channel * CELL² + row * CELL + col
        cells = conv.weight[:, :n].reshape(-1, c, CELL, CELL)
        y = nn.functional.conv2d(fine, cells, stride=CELL)
        return _rest(self, y.add_(nn.functional.conv2d(coarse, conv.weight[:, n:], conv.bias)))


class DeepLocoUNet(DeepLocoFCN):
    """:class:`DeepLocoFCN` with a decoder: the same cells, candidates and contract, but each
    cell's head also sees full-resolution features.

    The FCN's heads see only 1/4-resolution features, made by two strided convs. Here the 1/4
    features are brought back up (nearest-neighbour x2, concatenated with the encoder's features
    of that scale, two 3x3 convs) to 1/2 and then full resolution; the full-resolution features of
    each 4x4 cell are folded into its channels (pixel unshuffle) and joined with the 1/4 features
    by a 1x1 conv before the heads. On the benchmarks +0.01-0.04 Jaccard over the FCN of the
    same widths and training, at ~2x its time per frame on a CPU (docs/benchmarks.md).
    """

    def __init__(self, config: DeepLocoConfig):
        super().__init__(config)  # the head; its one-piece encoder is replaced by the three blocks
        c0, c1, c2 = (int(c) for c in config.conv_widths)
        full, half, quarter = self._encoder_blocks()
        self.enc_full = nn.Sequential(*full)
        self.enc_half = nn.Sequential(*half)
        self.features = nn.Sequential(*quarter)
        self.up_half = _UpBlock(*_conv(c2 + c1, c1), *_conv(c1, c1))
        self.up_full = _UpBlock(*_conv(c1 + c0, c0), *_conv(c0, c0))
        self.join = _JoinBlock(*_conv(CELL * CELL * c0 + c2, c2, 1))
        self.to(memory_format=torch.channels_last)

    def cell_features(self, x: Tensor) -> Tensor:
        f0 = self.enc_full(x)
        f1 = self.enc_half(f0)
        f2 = self.features(f1)
        d0 = self.up_full(self.up_half(f2, f1), f0)
        return self.join(d0, f2)


def inference_batch(device: Any, tile_shape: tuple[int, int]) -> int:
    """Frames (tiles) of ``tile_shape`` (H, W) px per network call when localizing, the default
    batch: 0.25 Mpx on a CPU, e.g. 64 frames of 64x64 (256 of them ran 20-25 % slower on 2
    threads: less stays in cache), 4 Mpx on a GPU (1024 frames of 64x64: on an H100, 1.5x the
    frames/s of 256 at 0.1 emitters/µm² and 1.2x at 2, where the post-processing's many small
    kernels dominate); at least one."""
    pixels = (1024 if torch.device(device).type == "cuda" else 64) * 64 * 64
    return max(1, pixels // (int(tile_shape[0]) * int(tile_shape[1])))


def build_network(config: DeepLocoConfig) -> nn.Module:
    """The network named by ``config.architecture`` (with its error head last, if asked)."""
    if config.architecture == "paper":
        return DeepLocoNet(config)
    net = DeepLocoUNet(config) if config.architecture == "unet" else DeepLocoFCN(config)
    if config.uncertainty:
        net.add_uncertainty_head()
    return net
