"""A trained LodeSTAR model: network + input normalization + metadata, and its maps.

Coordinates: (row, col) in input pixels, pixel centres at integers, frames 0-based.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from starloc.errors import ModelFileError
from starloc.io import load_model_file, save_model_file
from starloc.lodestar.network import LodeSTARNet, NetworkConfig, decode

MODEL_KIND = "lodestar"

NORMALIZATIONS = ("robust",)


def normalize(frames: torch.Tensor, method: str = "robust") -> torch.Tensor:
    """Normalize ``(N, C, H, W)`` frames per frame and channel.

    ``robust``: subtract the median (the background of sparse images) and divide by the
    standard deviation, so an image means the same to the network at any gain, offset or
    photon count. Computed per frame, so crops and whole frames are treated alike only if
    their content is similar; that is what lets a model trained on one crop at one SNR
    generalize across SNR (Fig. 1g-k of the paper).
    """
    if method != "robust":
        raise ValueError(f"unknown normalization {method!r}; expected one of {NORMALIZATIONS}")
    flat = frames.flatten(2)
    med = flat.median(dim=2).values[..., None, None]
    std = flat.std(dim=2)[..., None, None]
    return (frames - med) / (std + 1e-6 * std.mean().abs() + 1e-12)


@dataclass
class Maps:
    """Network output for a batch of frames, in absolute input-pixel coordinates.

    positions : (T, K, h, w) properties per output pixel; channels 0, 1 are (row, col).
    weights : (T, h, w) weight map in [0, 1].
    stride : input pixels per output pixel; output pixel (i, j) is centred at
        ``(i*stride + (stride-1)/2, j*stride + (stride-1)/2)``.
    image_shape : (H, W) of the input frames.
    """

    positions: np.ndarray
    weights: np.ndarray
    stride: int
    image_shape: tuple[int, int]


@dataclass
class LodeSTAR:
    """A LodeSTAR model ready for inference (see :mod:`starloc.lodestar.training`)."""

    net: LodeSTARNet
    normalization: str = "robust"
    metadata: dict = field(default_factory=dict)

    @classmethod
    def new(cls, config: NetworkConfig = NetworkConfig(), seed: int = 0, **kw) -> LodeSTAR:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = LodeSTARNet(config)
        return cls(net=net, **kw)

    @property
    def config(self) -> NetworkConfig:
        return self.net.config

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device) -> LodeSTAR:
        self.net.to(device)
        return self

    def forward(self, frames: torch.Tensor, origin=(0.0, 0.0)) -> tuple[torch.Tensor, torch.Tensor]:
        """``(P, rho)`` of :func:`decode` for raw ``(N, C, H, W)`` frames."""
        return self.forward_normalized(normalize(frames, self.normalization), origin)

    def forward_normalized(self, frames: torch.Tensor, origin=(0.0, 0.0)) -> tuple[torch.Tensor, torch.Tensor]:
        """``(P, rho)`` of :func:`decode` for frames already passed through :func:`normalize`."""
        return decode(self.net(frames), self.config.stride, origin)

    @torch.inference_mode()
    def maps(self, frames: np.ndarray | torch.Tensor, batch_size: int = 16) -> Maps:
        """Property and weight maps for ``(T, C, H, W)`` frames (any H, W >= 2)."""
        frames = torch.from_numpy(np.require(frames, np.float32, ["C", "W"]))
        self.net.eval()
        pos, wts = [], []
        for start in range(0, frames.shape[0], batch_size):
            batch = frames[start : start + batch_size].to(self.device)
            P, rho = self.forward(batch)
            pos.append(P.float().cpu().numpy())
            wts.append(torch.sigmoid(rho).float().cpu().numpy())
        return Maps(np.concatenate(pos), np.concatenate(wts), self.config.stride, tuple(frames.shape[-2:]))

    def save(self, path) -> None:
        """Write the model as one self-describing file (atomic; see :mod:`starloc.io`)."""
        config = {"network": self.config.to_dict(), "normalization": self.normalization}
        save_model_file(path, MODEL_KIND, config, self.net.state_dict(), self.metadata)

    @classmethod
    def load(cls, path, device="cpu") -> LodeSTAR:
        """Load a model written by :meth:`save` without executing code from the file."""
        obj = load_model_file(path, kind=MODEL_KIND)
        try:
            config = NetworkConfig.from_dict(obj["config"]["network"])
            model = cls(net=LodeSTARNet(config), normalization=obj["config"]["normalization"],
                        metadata=obj["metadata"])
            model.net.load_state_dict(obj["state_dict"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ModelFileError(f"{str(path)!r}: damaged LodeSTAR model ({exc})") from None
        model.net.eval()
        return model.to(device)
