"""Batches of simulated SMLM frames with exact ground truth (DeepLoco's training data).

Per frame: a number of emitters (Poisson from a density, or uniform in a range), positions uniform
over the whole field ``x in [0, W * pixel_size)``, ``y in [0, H * pixel_size)`` nm (corner origin:
pixel ``j``'s centre at ``(j + 0.5) * pixel_size``) and ``z`` uniform in ``z_range`` nm, photons
uniform or log-uniform in ``photons_range``, a background (photons/pixel) drawn per frame from
``background_range``, uniform or, with ``background_variation``, varying smoothly over the frame (see
:meth:`Simulator.background_field`); the PSF model renders expected photons, the camera adds noise, and
frames are normalized back to photons with the camera's
:meth:`~starloc.deeploco.camera.Camera.normalize` (the same normalization real frames get).

Everything is vectorized torch on ``device``; randomness comes only from the ``torch.Generator``
passed to :meth:`Simulator.sample` (created on the same device), so the same seed gives the same
batch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from .camera import Camera
from .psf import PSFModel, _check_frame_shape, _check_positive

__all__ = ["Simulator", "truth_table"]

Tensor = torch.Tensor

PHOTON_DISTRIBUTIONS = ("uniform", "log-uniform")


def _range(name: str, value: Any, low: float = -math.inf) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be (low, high), got {value!r}") from None
    if not (math.isfinite(a) and math.isfinite(b)) or a > b or a < low:
        raise InputError(f"{name} = {value!r} must be finite with {low:g} <= low <= high")
    return a, b


class Simulator:
    """Random SMLM frames and their ground truth.

    Parameters
    ----------
    psf : PSFModel
        Forward model (:class:`~starloc.deeploco.psf.EmpiricalPSF`, ``Gaussian2DPSF``,
        ``AstigmaticPSF``).
    camera : Camera or None
        Noise model; ``None`` = Poisson shot noise only (frames already in photons).
    frame_shape : (H, W) pixels.
    pixel_size : nm per pixel (must match an empirical PSF's).
    density : emitters per µm²; the count per frame is ``Poisson(density * H * W * pixel_size² / 1e6)``.
    n_range : (low, high) inclusive; the count is uniform in it. Give ``density`` or ``n_range``
        (default: ``density = 1.0``).
    max_emitters : size ``N`` of the padded truth tensors; counts above it are capped. Default:
        ``n_range[1]``, or mean + 6 sqrt(mean) + 4 for a density.
    photons_range : emitter photons (default 1000..7000 as in DeepLoco's sample code).
    photons_distribution : ``"uniform"`` (default) or ``"log-uniform"`` in ``photons_range``
        (as many emitters per factor of brightness: a wide range without starving the dim end).
    background_range : background photons per pixel, one level per frame (default 100..100).
    background_variation : in [0, 1); above 0 each frame's background varies smoothly around its
        level, by up to this fraction of it (:meth:`background_field`), as out-of-focus light and
        autofluorescence make it vary in real frames. Default 0: flat.
    z_range : nm, uniform; default the PSF's ``z_range`` (``(0, 0)`` for a 2D Gaussian). For a
        z-dependent PSF it must lie inside the PSF's calibrated ``z_range``.
    device : where frames and truth are made.
    """

    def __init__(
        self,
        psf: PSFModel,
        camera: Camera | None = None,
        frame_shape: tuple[int, int] = (64, 64),
        pixel_size: float = 100.0,
        density: float | None = None,
        n_range: tuple[int, int] | None = None,
        max_emitters: int | None = None,
        photons_range: tuple[float, float] = (1000.0, 7000.0),
        photons_distribution: str = "uniform",
        background_range: tuple[float, float] = (100.0, 100.0),
        z_range: tuple[float, float] | None = None,
        device: str | torch.device = "cpu",
        background_variation: float = 0.0,
    ):
        if not isinstance(psf, PSFModel):
            raise InputError(f"psf must be a PSFModel, got {type(psf).__name__}")
        if camera is not None and not isinstance(camera, Camera):
            raise InputError(f"camera must be a Camera or None, got {type(camera).__name__}")
        self.psf = psf
        self.camera = camera
        self.frame_shape = _check_frame_shape(frame_shape)
        self.pixel_size = _check_positive("pixel_size", pixel_size, 1.0, 10000.0)
        psf_ps = getattr(psf, "pixel_size", None)
        if psf_ps is not None and abs(psf_ps - self.pixel_size) > 1e-6 * psf_ps:
            raise InputError(
                f"pixel size mismatch: PSF measured at {psf_ps:g} nm/px, simulator asked for "
                f"{self.pixel_size:g} nm/px"
            )
        H, W = self.frame_shape
        self.area_um2 = H * W * self.pixel_size**2 / 1e6
        if density is not None and n_range is not None:
            raise InputError("give either density or n_range, not both")
        if density is None and n_range is None:
            density = 1.0
        self.density: float | None = None
        self.n_range: tuple[int, int] | None = None
        if density is not None:
            self.density = _check_positive("density", density, 0.0, 1e4, unit="emitters/µm²")
            mean = self.density * self.area_um2
            default_max = int(math.ceil(mean + 6 * math.sqrt(mean) + 4))
        else:
            lo, hi = _range("n_range", n_range, low=0)
            if lo != int(lo) or hi != int(hi):
                raise InputError(f"n_range must hold integers, got {n_range!r}")
            self.n_range = (int(lo), int(hi))
            default_max = self.n_range[1]
        self.max_emitters = default_max if max_emitters is None else int(max_emitters)
        if self.max_emitters < 1 or (self.n_range is not None and self.max_emitters < self.n_range[1]):
            raise InputError(f"max_emitters = {max_emitters!r} must be >= 1 and >= n_range's high end")
        self.photons_range = _range("photons_range", photons_range, low=0.0)
        if photons_distribution not in PHOTON_DISTRIBUTIONS:
            raise InputError(f"photons_distribution must be one of {PHOTON_DISTRIBUTIONS}, "
                             f"got {photons_distribution!r}")
        if photons_distribution == "log-uniform" and self.photons_range[0] <= 0:
            raise InputError(f"a log-uniform photons_range needs a positive low end, got {photons_range!r}")
        self.photons_distribution = photons_distribution
        self.background_range = _range("background_range", background_range, low=0.0)
        try:
            self.background_variation = float(background_variation)
        except (TypeError, ValueError):
            raise InputError(f"background_variation must be a number, got {background_variation!r}") from None
        if not 0.0 <= self.background_variation < 1.0:
            raise InputError(f"background_variation must lie in [0, 1), got {background_variation!r}")
        self.z_range = _range("z_range", psf.z_range if z_range is None else z_range)
        if psf.z_dependent:
            plo, phi = psf.z_range
            if self.z_range[0] < plo - 1e-6 or self.z_range[1] > phi + 1e-6:
                raise InputError(
                    f"z_range {self.z_range} nm lies outside the PSF's calibrated range "
                    f"{psf.z_range} nm"
                )
        self.device = torch.device(device)

    def _uniform(self, shape: tuple[int, ...], lo: float, hi: float, g: torch.Generator) -> Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=g, device=self.device)

    def sample_emitters(self, batch: int, generator: torch.Generator) -> dict[str, Tensor]:
        """Ground truth only: padded ``x, y, z, photons`` ``(B, N)`` (nm, nm, nm, photons; zeros in
        padding slots), ``mask`` ``(B, N)`` bool, ``n`` ``(B,)`` counts, ``background`` ``(B,)``
        and, with ``background_variation``, ``background_field`` ``(B, H, W)`` (photons/pixel added
        to the background; mean about 0)."""
        B, N = int(batch), self.max_emitters
        if B < 1:
            raise InputError(f"batch must be >= 1, got {batch!r}")
        if torch.device(generator.device).type != self.device.type:
            raise InputError(f"generator is on {generator.device}, simulator on {self.device}")
        g = generator
        if self.density is not None:
            rate = torch.full((B,), self.density * self.area_um2, device=self.device)
            n = torch.poisson(rate, generator=g).to(torch.long)
        else:
            lo, hi = self.n_range
            n = torch.randint(lo, hi + 1, (B,), generator=g, device=self.device)
        n = n.clamp(max=N)
        mask = torch.arange(N, device=self.device)[None, :] < n[:, None]
        H, W = self.frame_shape
        x = self._uniform((B, N), 0.0, W * self.pixel_size, g)
        y = self._uniform((B, N), 0.0, H * self.pixel_size, g)
        z = self._uniform((B, N), *self.z_range, g)
        if self.photons_distribution == "log-uniform":
            lo, hi = (math.log(v) for v in self.photons_range)
            photons = torch.exp(self._uniform((B, N), lo, hi, g))
        else:
            photons = self._uniform((B, N), *self.photons_range, g)
        background = self._uniform((B,), *self.background_range, g)
        zero = torch.zeros((), device=self.device)
        truth = {
            "x": torch.where(mask, x, zero),
            "y": torch.where(mask, y, zero),
            "z": torch.where(mask, z, zero),
            "photons": torch.where(mask, photons, zero),
            "mask": mask,
            "n": n,
            "background": background,
        }
        if self.background_variation > 0:  # no draw at 0: flat batches are what they were before the option
            truth["background_field"] = background[:, None, None] * self.background_field(B, g)
        return truth

    def expected(self, truth: dict[str, Tensor]) -> Tensor:
        """Noiseless expected photons per pixel ``(B, H, W)`` for a truth dictionary."""
        img = self.psf.render(truth["x"], truth["y"], truth["z"], truth["photons"], self.frame_shape,
                              self.pixel_size, mask=truth["mask"])
        img = img + truth["background"][:, None, None]
        if "background_field" in truth:
            img = img + truth["background_field"]
        return img

    #: nm: the range (log-uniform) of the length over which a varying background changes
    FIELD_LENGTHS = (500.0, 4000.0)

    def background_field(self, batch: int, generator: torch.Generator) -> Tensor:
        """``(B, H, W)`` smooth random fields, relative to each frame's background level: white
        noise low-passed by a Gaussian of a standard deviation log-uniform in ``FIELD_LENGTHS``
        nm (in Fourier space, so periodic across the frame), scaled to a peak of ``|1|`` and then
        by a factor uniform in ``[0, background_variation]``. A frame's background is then at
        least ``1 - background_variation`` times its level, never negative."""
        H, W = self.frame_shape
        g = generator
        noise = torch.randn((batch, H, W), generator=g, device=self.device)
        lo, hi = (math.log(v / self.pixel_size) for v in self.FIELD_LENGTHS)
        sigma = torch.exp(self._uniform((batch,), lo, hi, g))[:, None, None]  # px
        ky = torch.fft.fftfreq(H, device=self.device)[:, None]
        kx = torch.fft.rfftfreq(W, device=self.device)[None, :]
        low_pass = torch.exp(-2 * math.pi**2 * sigma**2 * (kx**2 + ky**2))
        field = torch.fft.irfft2(torch.fft.rfft2(noise) * low_pass, s=(H, W))
        field = field - field.mean(dim=(1, 2), keepdim=True)
        field = field / field.abs().amax(dim=(1, 2), keepdim=True).clamp(min=1e-12)
        return field * self._uniform((batch,), 0.0, self.background_variation, g)[:, None, None]

    def sample(
        self, batch: int, generator: torch.Generator, noiseless: bool = False
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """``(frames, truth)``: frames ``(B, 1, H, W)`` float32 in normalized photons (camera
        noise applied then removed from the mean with ``camera.normalize``; ``noiseless=True``
        gives the expected photons), truth as in :meth:`sample_emitters`."""
        truth = self.sample_emitters(batch, generator)
        mu = self.expected(truth)
        if noiseless:
            frames = mu
        elif self.camera is None:
            frames = torch.poisson(mu, generator=generator)
        else:
            frames = self.camera.normalize(self.camera.sample(mu, generator))
        return frames[:, None].to(torch.float32), truth

    def to_dict(self) -> dict[str, Any]:
        """Plain settings (without the PSF and camera, which describe themselves)."""
        return {
            "frame_shape": list(self.frame_shape), "pixel_size": self.pixel_size,
            "density": self.density, "n_range": None if self.n_range is None else list(self.n_range),
            "max_emitters": self.max_emitters, "photons_range": list(self.photons_range),
            "photons_distribution": self.photons_distribution,
            "background_range": list(self.background_range), "z_range": list(self.z_range),
            "background_variation": self.background_variation,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], psf: PSFModel, camera: Camera | None = None,
                  device: str | torch.device = "cpu") -> Simulator:
        """The simulator :meth:`to_dict` described, with its PSF and camera given back."""
        try:
            kw = {k: d[k] for k in ("frame_shape", "pixel_size", "density", "n_range", "max_emitters",
                                    "photons_range", "photons_distribution", "background_range", "z_range")}
        except (KeyError, TypeError) as e:
            raise InputError(f"simulator settings are incomplete (missing {e})") from None
        for key in ("frame_shape", "n_range", "photons_range", "background_range", "z_range"):
            if kw[key] is not None:
                kw[key] = tuple(kw[key])
        # files written before background_variation existed simulated flat backgrounds
        return cls(psf, camera, device=device, background_variation=d.get("background_variation", 0.0), **kw)


def truth_table(truth: dict[str, Tensor], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The true emitters of a :meth:`Simulator.sample` batch as ``(frame (N,), positions (N, dim))``
    numpy arrays: frame 0-based within the batch, positions (x, y[, z]) in nm."""
    mask = truth["mask"].cpu().numpy()
    frame = np.nonzero(mask)[0]
    return frame, np.stack([truth[k].cpu().numpy()[mask] for k in ("x", "y", "z")[:dim]], 1)
