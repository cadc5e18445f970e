"""A trained DeepLoco model: network + box + input scaling + forward model description.

Model files (``kind = "deeploco"``, see :mod:`starloc.io`) are self-describing: the config holds
the architecture (:class:`~starloc.deeploco.network.DeepLocoConfig`, including the box and the
input scaling), the ``normalization`` of camera frames (``camera.normalize``: ADU -> photons),
the PSF (``psf.to_dict()``, an empirical stack as a tensor), the camera (``camera.to_dict()``) and
the post-processing defaults; the metadata holds training information and versions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import InputError, ModelFileError
from ..io import load_model_file, save_model_file
from .camera import Camera
from .network import DeepLocoConfig, build_network, inference_batch
from .postprocess import cell_grid, concat_tables, empty_table, postprocess
from .psf import AstigmaticPSF, EmpiricalPSF, Gaussian2DPSF, PSFModel
from .subpixel import SubpixelCorrection

__all__ = ["DeepLoco", "MODEL_KIND", "psf_to_dict", "psf_from_dict"]

MODEL_KIND = "deeploco"

#: how frames must be prepared before :meth:`DeepLoco.localize` (stored in model files)
NORMALIZATION = {
    "method": "camera",
    "description": "frames in photons: (ADU - baseline) * e_per_adu / (em_gain * qe) (Camera.normalize)",
}


def psf_to_dict(psf: PSFModel | None) -> dict[str, Any] | None:
    if psf is None:
        return None
    to_dict = getattr(psf, "to_dict", None)
    if to_dict is None:
        raise InputError(f"PSF {psf!r} cannot describe itself (no to_dict)")
    return to_dict()


def psf_from_dict(d: dict[str, Any] | None) -> PSFModel | None:
    if d is None:
        return None
    kind = d.get("kind")
    if kind == "empirical":
        return EmpiricalPSF.from_dict(d)
    if kind == "gaussian2d":
        return Gaussian2DPSF(sigma_nm=d["sigma_nm"])
    if kind == "astigmatic":
        return AstigmaticPSF(sigma0=d["sigma0"], c=d["c"], d=d["d"], z_range=tuple(d["z_range"]))
    raise InputError(f"unknown PSF kind {kind!r}")


@dataclass
class DeepLoco:
    """A DeepLoco model ready for inference (train it with :mod:`starloc.deeploco.training`)."""

    net: torch.nn.Module
    psf: PSFModel | None = None
    camera: Camera | None = None
    link_distance: float = 100.0
    threshold: float = 0.3
    subpixel: SubpixelCorrection | None = None
    #: (lateral, axial) factors that turn the error head's output into the RMS error of the
    #: localizations, measured by the calibration (:mod:`.calibration`); None: not measured
    uncertainty_scale: tuple[float, float] | None = None
    metadata: dict = field(default_factory=dict)

    @classmethod
    def new(cls, config: DeepLocoConfig = DeepLocoConfig(), seed: int = 0, **kw: Any) -> DeepLoco:
        """Fresh, seeded weights (the global torch RNG is left untouched)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = build_network(config).eval()  # inference mode (batch norm) until trained
        return cls(net=net, **kw)

    @property
    def config(self) -> DeepLocoConfig:
        return self.net.config

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device: Any) -> DeepLoco:
        self.net.to(device)
        return self

    def inference_net(self) -> torch.nn.Module:
        """The network in eval mode for inference; for the FCN a copy with batch norm folded into
        the convs (call again after further training)."""
        fused = getattr(self.net, "fused", None)
        return fused() if fused is not None else self.net.eval()

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(positions (B, K, D) nm, weights (B, K))`` for normalized frames ``(B, 1, S, S)``."""
        return self.net(frames)

    @property
    def has_uncertainty(self) -> bool:
        """The network predicts each localization's error (an error head)."""
        return getattr(self.net, "uncertainty_head", None) is not None

    def candidates(self, net: torch.nn.Module, frames: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(positions, weights, errors or None)`` of ``net`` (this model's network or its
        :meth:`inference_net`) on normalized frames, the errors (nm per axis) scaled by
        ``uncertainty_scale`` when it has been measured."""
        if not self.has_uncertainty:
            return (*net(frames), None)
        pos, w, err = net.predict(frames)
        if self.uncertainty_scale is not None:
            lateral, axial = self.uncertainty_scale
            err = err * torch.tensor((lateral, lateral, axial)[:err.shape[-1]], dtype=err.dtype, device=err.device)
        return pos, w, err

    @torch.inference_mode()
    def localize(
        self,
        frames: Any,
        batch_size: int | None = None,
        threshold: float | None = None,
        link_distance: float | None = None,
        correct: bool = True,
    ) -> dict[str, np.ndarray]:
        """Localizations in normalized (photon) frames ``(T, 1, S, S)`` or ``(T, S, S)`` of the
        network's frame size: a table (dict of arrays) ``frame`` (0-based), ``x``, ``y``[, ``z``]
        nm (corner origin), ``confidence``; see :func:`~starloc.deeploco.postprocess.postprocess`.
        ``correct``: apply the model's sub-pixel correction (:mod:`~starloc.deeploco.subpixel`),
        if it has one. ``batch_size``: frames per network call (default
        :func:`~starloc.deeploco.network.inference_batch`: 64 frames of 64 x 64 on a CPU, 1024 on
        a GPU). A model with an error head adds ``uncertainty`` (lateral) [and ``uncertainty_z``]
        columns, nm (:func:`~starloc.deeploco.postprocess.postprocess`)."""
        t = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames)
        if t.ndim == 3:
            t = t[:, None]
        S = self.config.frame_size
        if t.ndim != 4 or t.shape[1] != 1 or tuple(t.shape[-2:]) != (S, S):
            raise InputError(f"expected frames (T, 1, {S}, {S}) or (T, {S}, {S}), got {tuple(t.shape)}")
        t = t.to(torch.float32)
        if not bool(torch.isfinite(t).all()):
            raise InputError("frames contain NaN or inf values")
        thr = self.threshold if threshold is None else float(threshold)
        link = self.link_distance if link_distance is None else float(link_distance)
        net = self.inference_net()
        cells = cell_grid(self.config, (S, S))
        tables = []
        step = inference_batch(self.device, (S, S)) if batch_size is None else int(batch_size)
        if step < 1:
            raise InputError(f"batch size must be >= 1, got {batch_size}")
        for start in range(0, t.shape[0], step):
            pos, w, err = self.candidates(net, t[start : start + step].to(self.device))
            tables.append(postprocess(pos, w, link_distance=link, threshold=thr, frame_offset=start, cells=cells,
                                      errors=err))
        if not tables:
            return empty_table(self.config.dim, self.has_uncertainty)
        table = concat_tables(tables)
        if not correct or self.subpixel is None:
            return table
        return self.subpixel.apply(table, field_area_um2=S * S * self.config.pixel_size**2 / 1e6)

    # ------------------------------------------------------------------ files
    def file_config(self) -> dict[str, Any]:
        return {
            "network": self.config.to_dict(),
            "normalization": dict(NORMALIZATION),
            "psf": psf_to_dict(self.psf),
            "camera": None if self.camera is None else self.camera.to_dict(),
            "postprocess": {"link_distance": self.link_distance, "threshold": self.threshold,
                            "subpixel": None if self.subpixel is None else self.subpixel.to_dict(),
                            "uncertainty_scale": None if self.uncertainty_scale is None
                            else [float(v) for v in self.uncertainty_scale]},
        }

    def save(self, path: Any) -> None:
        """Write one self-describing model file (atomic; see :mod:`starloc.io`)."""
        save_model_file(path, MODEL_KIND, self.file_config(), self.net.state_dict(), self.metadata)

    @classmethod
    def from_file_dict(cls, obj: dict[str, Any], name: str = "model") -> DeepLoco:
        try:
            cfg = obj["config"]
            config = DeepLocoConfig.from_dict(cfg["network"])
            net = build_network(config)
            net.load_state_dict(obj["state_dict"])
            net.eval()
            post = cfg.get("postprocess") or {}
            return cls(
                net=net,
                psf=psf_from_dict(cfg.get("psf")),
                camera=None if cfg.get("camera") is None else Camera.from_dict(cfg["camera"]),
                link_distance=float(post.get("link_distance", 100.0)),
                threshold=float(post.get("threshold", 0.3)),
                subpixel=None if post.get("subpixel") is None else SubpixelCorrection.from_dict(post["subpixel"]),
                uncertainty_scale=_uncertainty_scale(post.get("uncertainty_scale")),
                metadata=dict(obj.get("metadata", {})),
            )
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            text = str(exc).strip().splitlines()
            reason = text[0] if text else type(exc).__name__
            raise ModelFileError(f"{name!r}: damaged DeepLoco model file ({reason})") from None

    @classmethod
    def load(cls, path: Any, device: Any = "cpu") -> DeepLoco:
        """Load a model written by :meth:`save` without executing code from the file."""
        obj = load_model_file(path, kind=MODEL_KIND)
        return cls.from_file_dict(obj, str(path)).to(device)


def _uncertainty_scale(value: Any) -> tuple[float, float] | None:
    """A stored ``uncertainty_scale``: None, or two positive finite factors (ValueError else)."""
    if value is None:
        return None
    lateral, axial = (float(v) for v in value)
    if not all(np.isfinite(v) and v > 0 for v in (lateral, axial)):
        raise ValueError(f"uncertainty scale must be two positive numbers, got {value!r}")
    return lateral, axial
