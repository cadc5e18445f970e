"""Equivariant transforms for LodeSTAR training.

A transform acts on a batch of images and, inversely, on the pooled property vectors the
network predicts for the transformed images. Each transform draws its own random parameters
per image (vectorized over the batch), so ``Compose`` can chain geometric and, later,
property transforms (Fourier propagation -> z, signal scaling -> polarizability).

Conventions: images are ``(N, C, H, W)`` tensors; property vectors ``(N, K)`` with
``[row, col, *extra]``. Positions are in input pixels relative to the rotation centre
``((H - 1)/2, (W - 1)/2)`` of the image, pixel centres at integer coordinates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from starloc.lodestar.holography import Optics, propagate, to_channels, to_complex


class Transform(Protocol):
    """What LodeSTAR needs from a transform."""

    def sample(self, shape: torch.Size, generator: torch.Generator, device=None) -> dict[str, torch.Tensor]:
        """Draw parameters for a batch of images of ``shape`` ``(N, C, H, W)``."""

    def apply(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Transform the images."""

    def invert(self, properties: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Map properties predicted on transformed images back to the original frame."""


@dataclass(frozen=True)
class Geometric:
    """Random rotation, reflection and translation about the image centre, in one warp.

    The forward map of positions (relative to the centre) is ``x' = A x + t`` with ``A`` a
    rotation (optionally composed with a reflection of the row axis) and ``t`` a translation
    in pixels drawn uniformly from ``[-translate, translate]`` per axis. Images are resampled
    once (bilinear, reflect padding) so composing rotation and translation costs one
    interpolation. Property channels beyond (row, col) are unchanged.
    """

    translate: float = 2.0
    rotate: bool = True
    flip: bool = True
    interpolation: str = "bilinear"

    def sample(self, shape, generator, device=None):
        n = shape[0]
        u = torch.rand(n, 4, generator=generator, device=generator.device).to(device)
        theta = (u[:, 0] * 2 - 1) * math.pi if self.rotate else torch.zeros(n, device=device)
        sign = torch.where(u[:, 1] < 0.5, -1.0, 1.0) if self.flip else torch.ones(n, device=device)
        shift = (u[:, 2:] * 2 - 1) * self.translate
        return {"matrix": linear_part(theta, sign), "shift": shift}

    def apply(self, images, params):
        return warp(images, params["matrix"], params["shift"], self.interpolation)

    def invert(self, properties, params):
        inverse = torch.linalg.inv(params["matrix"])
        pos = torch.einsum("nij,nj->ni", inverse, properties[:, :2] - params["shift"])
        return torch.cat([pos, properties[:, 2:]], dim=1)


def linear_part(theta: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """``(N, 2, 2)`` matrices acting on (row, col): rotation by ``theta`` after scaling rows by ``sign``."""
    c, s = torch.cos(theta), torch.sin(theta)
    rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    reflect = torch.diag_embed(torch.stack([sign, torch.ones_like(sign)], -1))
    return rot @ reflect


def warp(images: torch.Tensor, matrix: torch.Tensor, shift: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Resample ``images`` so that content at ``x`` moves to ``matrix @ x + shift``.

    ``x`` is (row, col) relative to the image centre. ``mode`` is a ``grid_sample`` mode
    (bilinear or bicubic); reflect padding.
    """
    n, _, h, w = images.shape
    dtype, device = images.dtype, images.device
    rows = torch.arange(h, dtype=dtype, device=device) - (h - 1) / 2
    cols = torch.arange(w, dtype=dtype, device=device) - (w - 1) / 2
    out = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), -1).reshape(1, -1, 2)
    src = torch.einsum("nij,npj->npi", torch.linalg.inv(matrix).to(dtype), out - shift[:, None].to(dtype))
    # grid_sample wants (x=col, y=row) normalized so that -1/1 are corner pixel centres.
    norm = torch.tensor([(h - 1) / 2, (w - 1) / 2], dtype=dtype, device=device).clamp(min=0.5)
    grid = (src / norm).flip(-1).reshape(n, h, w, 2)
    return F.grid_sample(images, grid, mode=mode, padding_mode="reflection", align_corners=True)


@dataclass(frozen=True)
class Compose:
    """Apply transforms in order; invert properties in reverse order."""

    transforms: tuple

    def sample(self, shape, generator, device=None):
        return [t.sample(shape, generator, device) for t in self.transforms]

    def apply(self, images, params):
        for t, p in zip(self.transforms, params):
            images = t.apply(images, p)
        return images

    def invert(self, properties, params):
        for t, p in zip(reversed(self.transforms), reversed(params)):
            properties = t.invert(properties, p)
        return properties


def log_uniform(n: int, low: float, high: float, generator: torch.Generator, device=None) -> torch.Tensor:
    """``(n,)`` draws log-uniform in ``[low, high]`` (``0 < low <= high``)."""
    u = torch.rand(n, generator=generator, device=generator.device).to(device)
    return low * torch.exp(u * math.log(high / low))


@dataclass(frozen=True)
class Noise:
    """Add Gaussian noise to normalized images (background of unit standard deviation).

    The signal-to-noise ratio drops by a log-uniform factor in ``[1, max_factor]`` (noise of
    standard deviation ``sqrt(f**2 - 1)``); the model renormalizes the result, so a crop at
    SNR 10 teaches the network what the same object looks like at SNR ``10 / f``. Leaves every
    property unchanged: it teaches invariance, not equivariance. (Gain and offset need no
    augmentation: the per-frame normalization removes them.)

    ``shot`` adds the photon (shot) noise a camera adds on top of its background noise: the
    added variance at a pixel of normalized value ``x`` becomes ``(f**2 - 1) * (1 + a * max(x, 0))``,
    with ``a`` log-uniform in ``shot = (low, high)`` per image, ``(0, 0)`` for none. That is
    the variance of a Poisson image renormalized after ``f**2`` times fewer photons, where
    ``a`` is one over the background noise in photons (``1 / sqrt(b)`` for a Poisson
    background of ``b`` photons per pixel: ``a = 1`` at one photon, 0.5 at four, 0.03 at
    ~1000). Bright pixels are then noisier than the background, as in any photon-counting
    image, and the network learns to weigh them accordingly.
    """

    max_factor: float = 1.0
    shot: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self):
        low, high = self.shot
        if not (low == high == 0 or 0 < low <= high):
            raise ValueError(f"shot noise range {self.shot} must be (0, 0) or 0 < low <= high")

    def sample(self, shape, generator, device=None):
        view = (-1, *(1,) * (len(shape) - 1))
        factor = log_uniform(shape[0], 1.0, self.max_factor, generator, device)
        field = torch.randn(shape, generator=generator, device=generator.device).to(device)
        params = {"noise": field * torch.sqrt(factor**2 - 1).view(view)}
        low, high = self.shot
        if high > 0:
            params["shot"] = log_uniform(shape[0], low, high, generator, device).view(view)
        return params

    def apply(self, images, params):
        if "shot" in params:
            return images + params["noise"] * torch.sqrt(1 + params["shot"] * images.clamp(min=0))
        return images + params["noise"]

    def invert(self, properties, params):
        return properties


@dataclass(frozen=True)
class Propagate:
    """Fourier (angular-spectrum) propagation of a holographic field by a uniform ``dz`` in
    ``[-max_um, max_um]`` µm (see :mod:`starloc.lodestar.holography`).

    Images are ``(N, 2, H, W)`` (real, imaginary). An object at axial position ``z`` appears
    at ``z - dz`` in the propagated field, so ``invert`` adds ``dz`` back to property
    ``index`` (µm). In-plane positions are unchanged: propagation is isotropic and
    commutes with the geometric warp.
    """

    max_um: float
    optics: Optics
    index: int = 2

    def sample(self, shape, generator, device=None):
        u = torch.rand(shape[0], generator=generator, device=generator.device).to(device)
        return {"dz": (u * 2 - 1) * self.max_um}

    def apply(self, images, params):
        return to_channels(propagate(to_complex(images), params["dz"], self.optics), images.dtype)

    def invert(self, properties, params):
        out = properties.clone()
        out[:, self.index] = properties[:, self.index] + params["dz"].to(properties.dtype)
        return out


@dataclass(frozen=True)
class SignalScale:
    """Multiply images by a log-uniform factor ``s`` in ``[1 / max_factor, max_factor]``.

    For images whose background is zero (a scattered field, a background-subtracted
    fluorescence image), ``s`` scales the object's signal, and with it the polarizability
    of a small scatterer. The property ``index`` is the log of the signal: the transformed
    image's is ``log s`` larger, so ``invert`` subtracts ``log s``. Only meaningful with a
    normalization that keeps the scale (``fixed``); noise is added after it, as a camera
    adds it to a weaker or stronger object.
    """

    max_factor: float
    index: int = 3

    def sample(self, shape, generator, device=None):
        return {"scale": log_uniform(shape[0], 1.0 / self.max_factor, self.max_factor, generator, device)}

    def apply(self, images, params):
        return images * params["scale"].view(-1, *(1,) * (images.dim() - 1)).to(images.dtype)

    def invert(self, properties, params):
        out = properties.clone()
        out[:, self.index] = properties[:, self.index] - torch.log(params["scale"]).to(properties.dtype)
        return out
