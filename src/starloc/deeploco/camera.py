"""Camera models: expected photons -> noisy ADU, and the mean conversion ADU <-> photons.

Input to :meth:`Camera.sample` is the expected number of photons reaching each pixel (a PSF
render plus background). Output is ADU as a float tensor holding integer values.

The same normalization is used for simulated and for real frames, so a network trained on the
simulator sees the same numbers on real data::

    normalize(adu) = to_photons(adu) = (adu - baseline) * e_per_adu / (em_gain * qe)

i.e. detected-photon units referred to the camera input (``to_adu`` is its exact inverse). Two small
known offsets remain in the *mean* of real or simulated frames: the ADC's ``floor`` lowers the mean
by about 0.5 ADU, and EMCCD spurious charge raises it by ``spurious_charge / qe`` photons per pixel
(both far below any realistic background).

Randomness comes from an explicit ``torch.Generator`` on the same device as the input.
"""

from __future__ import annotations

import abc
import math
from typing import Any

import torch

from ..errors import InputError

__all__ = ["Camera", "EMCCD", "SCMOS", "CAMERA_PRESETS", "camera_preset"]

#: names of :func:`camera_preset`
CAMERA_PRESETS = ("smlm2016", "emccd", "scmos")

Tensor = torch.Tensor


def _num(name: str, value: Any, low: float, high: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"camera {name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or not (low <= v <= high):
        raise InputError(f"camera {name} = {value!r} is out of range {low:g}..{high:g}")
    return v


def _typical(value: float | Tensor) -> float:
    """A scalar setting, or the median of a per-pixel map."""
    return float(torch.median(value)) if isinstance(value, Tensor) else float(value)


def _check_expected(expected: Any) -> Tensor:
    t = torch.as_tensor(expected)
    if not t.is_floating_point():
        t = t.to(torch.float32)
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise InputError("expected photons must be finite and non-negative")
    return t


class Camera(abc.ABC):
    """Interface shared by :class:`EMCCD` and :class:`SCMOS`.

    Attributes common to both: ``qe`` (quantum efficiency, 0..1), ``e_per_adu`` (electrons per ADU
    after any EM gain), ``read_noise`` (electrons rms), ``baseline`` (ADU offset), ``em_gain``
    (1 for sCMOS), ``adu_max`` (saturation; output is clipped to ``[0, adu_max]``).
    """

    qe: float
    e_per_adu: float | Tensor
    read_noise: float | Tensor
    baseline: float | Tensor
    em_gain: float = 1.0
    adu_max: float = 65535.0

    # ------------------------------------------------------------------ noise
    @abc.abstractmethod
    def _electrons(self, expected: Tensor, generator: torch.Generator) -> Tensor:
        """Electrons at the output amplifier (before read noise) for ``expected`` photons."""

    @abc.abstractmethod
    def _signal_variance(self, photons: float) -> float:
        """Variance (electrons², at the output amplifier) of the signal of a pixel that
        receives ``photons`` on average."""

    def pixel_noise(self, photons: float) -> float:
        """Standard deviation, in the photons of :meth:`to_photons`, of a pixel that receives
        ``photons`` on average: signal noise, read noise and the ADU rounding (median of
        per-pixel maps)."""
        e_per_adu = _typical(self.e_per_adu)
        variance = self._signal_variance(max(float(photons), 0.0)) + _typical(self.read_noise) ** 2 + e_per_adu**2 / 12
        return math.sqrt(variance) / (self.em_gain * self.qe)

    def sample(self, expected_photons: Tensor, generator: torch.Generator) -> Tensor:
        """Noisy frames in ADU (float tensor of integers) for expected photons per pixel (any shape).

        Photons -> Poisson photo-electrons (QE) -> [EMCCD: spurious charge, Gamma EM register]
        -> Gaussian read noise -> / e_per_adu -> floor -> + baseline -> clip to ``[0, adu_max]``.
        """
        t = _check_expected(expected_photons)
        e = self._electrons(t, generator)
        read = self._on(self.read_noise, t)
        e = e + read * torch.randn(t.shape, generator=generator, device=t.device, dtype=t.dtype)
        adu = torch.floor(e / self._on(self.e_per_adu, t)) + self._on(self.baseline, t)
        return adu.clamp(0, self.adu_max)

    # ------------------------------------------------------------------ mean conversion
    def _on(self, value: float | Tensor, like: Tensor) -> float | Tensor:
        if isinstance(value, Tensor):
            if value.shape != like.shape[-value.ndim :]:
                raise InputError(
                    f"per-pixel camera map of shape {tuple(value.shape)} does not match frames "
                    f"of shape {tuple(like.shape)}"
                )
            return value.to(device=like.device, dtype=like.dtype)
        return value

    def _as_float(self, x: Any) -> Tensor:
        t = torch.as_tensor(x)
        return t if t.is_floating_point() else t.to(torch.float32)

    @property
    def photons_per_adu(self) -> float | Tensor:
        """Detected photons per ADU (mean conversion factor, per pixel for sCMOS maps)."""
        return self.e_per_adu / (self.em_gain * self.qe)

    def to_photons(self, adu: Any) -> Tensor:
        """Mean conversion ADU -> photons: ``(adu - baseline) * e_per_adu / (em_gain * qe)``."""
        a = self._as_float(adu)
        return (a - self._on(self.baseline, a)) * self._on(self.photons_per_adu, a)

    def to_adu(self, photons: Any) -> Tensor:
        """Exact inverse of :meth:`to_photons` (the mean ADU for a photon count, without noise)."""
        p = self._as_float(photons)
        return p / self._on(self.photons_per_adu, p) + self._on(self.baseline, p)

    def normalize(self, adu: Any) -> Tensor:
        """The normalization used for simulated *and* real frames (= :meth:`to_photons`)."""
        return self.to_photons(adu)

    def check_adu(self, adu: Any, what: str = "frames") -> None:
        """Raise :class:`InputError` when frames lie far below the baseline (wrong camera settings)."""
        a = self._as_float(adu)
        if not bool(torch.isfinite(a).all()):
            raise InputError(f"{what} contain NaN or inf values")
        base = self._on(self.baseline, a)
        read_adu = self._on(self.read_noise, a) / self._on(self.e_per_adu, a)
        below = base - a - 5 * read_adu - 5
        if float(torch.median((below > 0).to(torch.float32))) > 0:  # most pixels far below
            raise InputError(
                f"{what} lie far below the camera baseline (median {float(torch.median(a)):g} ADU): "
                "check the camera settings (baseline, e-/ADU)"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain description for model files (per-pixel maps as tensors)."""
        d = {"kind": type(self).__name__}
        d.update({k: (v.clone() if isinstance(v, Tensor) else v) for k, v in vars(self).items()})
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Camera:
        kinds = {"EMCCD": EMCCD, "SCMOS": SCMOS}
        if d.get("kind") not in kinds:
            raise InputError(f"unknown camera kind {d.get('kind')!r}")
        return kinds[d["kind"]](**{k: v for k, v in d.items() if k != "kind"})

    def __repr__(self) -> str:
        def show(v: Any) -> str:
            return f"map{tuple(v.shape)}" if isinstance(v, Tensor) else repr(v)

        args = ", ".join(f"{k}={show(v)}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class EMCCD(Camera):
    """Electron-multiplying CCD.

    ``n ~ Poisson(qe * photons + spurious_charge)`` electrons, amplified by the EM register as
    ``Gamma(shape=n, scale=em_gain)`` (excess noise factor F^2 = 2: the variance of the
    photon-normalized signal is about ``2 * photons / qe``), then ``N(0, read_noise)`` electrons,
    ``/ e_per_adu``, ``floor``, ``+ baseline``.

    ``spurious_charge`` (clock-induced charge) is in electrons per pixel per frame, before the EM
    register.
    """

    def __init__(
        self,
        qe: float = 0.9,
        em_gain: float = 300.0,
        e_per_adu: float = 45.0,
        read_noise: float = 74.4,
        baseline: float = 100.0,
        spurious_charge: float = 0.0,
        adu_max: float = 65535.0,
    ):
        self.qe = _num("qe", qe, 1e-6, 1.0)
        self.em_gain = _num("em_gain", em_gain, 1.0, 1e5)
        self.e_per_adu = _num("e_per_adu", e_per_adu, 1e-6, 1e6)
        self.read_noise = _num("read_noise", read_noise, 0.0, 1e6)
        self.baseline = _num("baseline", baseline, -1e6, 1e6)
        self.spurious_charge = _num("spurious_charge", spurious_charge, 0.0, 100.0)
        self.adu_max = _num("adu_max", adu_max, 1.0, 1e12)

    @classmethod
    def smlm2016(cls) -> EMCCD:
        """The SMLM Challenge 2016 camera: QE 0.9, EM gain 300, 45 e-/ADU, read noise 74.4 e-,
        baseline 100 ADU (about 6 ADU per photon). The challenge does not state its clock-induced
        charge; we assume 0.002 e-/pixel/frame, a typical value for an EMCCD at this gain."""
        return cls(qe=0.9, em_gain=300.0, e_per_adu=45.0, read_noise=74.4, baseline=100.0,
                   spurious_charge=0.002)

    def _signal_variance(self, photons: float) -> float:
        return 2.0 * self.em_gain**2 * (self.qe * photons + self.spurious_charge)  # excess noise factor 2

    def _electrons(self, expected: Tensor, generator: torch.Generator) -> Tensor:
        n = torch.poisson(self.qe * expected + self.spurious_charge, generator=generator)
        # Gamma(n, gain) for n >= 1; zero electrons stay zero (Gamma(0) is a point mass at 0).
        g = torch._standard_gamma(n.clamp(min=1.0), generator=generator)
        return torch.where(n > 0, g * self.em_gain, torch.zeros_like(g))


class SCMOS(Camera):
    """Scientific CMOS: ``Poisson(qe * photons)`` electrons + ``N(0, read_noise)``, ``/ e_per_adu``,
    ``floor``, ``+ baseline``; no EM gain.

    ``read_noise`` (e- rms), ``e_per_adu`` and ``baseline`` (ADU) are scalars or per-pixel ``(H, W)``
    maps (from a camera calibration); maps must match the frames' last two dimensions. Defaults
    are typical of a current back-illuminated sCMOS; use your camera's values.
    """

    def __init__(
        self,
        qe: float = 0.8,
        read_noise: float | Any = 1.6,
        e_per_adu: float | Any = 0.5,
        baseline: float | Any = 100.0,
        adu_max: float = 65535.0,
    ):
        self.qe = _num("qe", qe, 1e-6, 1.0)
        self.read_noise = self._scalar_or_map("read_noise", read_noise, 0.0, 1e6)
        self.e_per_adu = self._scalar_or_map("e_per_adu", e_per_adu, 1e-6, 1e6)
        self.baseline = self._scalar_or_map("baseline", baseline, -1e6, 1e6)
        self.adu_max = _num("adu_max", adu_max, 1.0, 1e12)
        maps = (self.read_noise, self.e_per_adu, self.baseline)
        shapes = {tuple(v.shape) for v in maps if isinstance(v, Tensor)}
        if len(shapes) > 1:
            raise InputError(f"sCMOS per-pixel maps have different shapes: {sorted(shapes)}")
        self.em_gain = 1.0

    @staticmethod
    def _scalar_or_map(name: str, value: Any, low: float, high: float) -> float | Tensor:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _num(name, value, low, high)
        t = torch.as_tensor(value, dtype=torch.float32).cpu()
        if t.ndim == 0:
            return _num(name, float(t), low, high)
        if t.ndim != 2:
            raise InputError(f"sCMOS {name} map must be 2D (H, W), got shape {tuple(t.shape)}")
        if not bool(torch.isfinite(t).all()) or bool((t < low).any()) or bool((t > high).any()):
            raise InputError(f"sCMOS {name} map has values outside {low:g}..{high:g} or NaN")
        return t

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d.pop("em_gain", None)
        return d

    def _signal_variance(self, photons: float) -> float:
        return self.qe * photons  # Poisson

    def _electrons(self, expected: Tensor, generator: torch.Generator) -> Tensor:
        return torch.poisson(self.qe * expected, generator=generator)


def camera_preset(kind: str, **overrides: Any) -> Camera:
    """A camera by name, with ``overrides`` replacing any of its settings: ``"smlm2016"`` (the
    SMLM Challenge 2016 EMCCD, :meth:`EMCCD.smlm2016`), ``"emccd"`` or ``"scmos"`` (their class
    defaults). ``em_gain`` is refused for an sCMOS."""
    if kind == "smlm2016":
        d = EMCCD.smlm2016().to_dict()
        d.pop("kind")
        return EMCCD(**{**d, **overrides})
    if kind == "emccd":
        return EMCCD(**overrides)
    if kind == "scmos":
        if "em_gain" in overrides:
            raise InputError("em_gain does not apply to an sCMOS camera")
        return SCMOS(**overrides)
    raise InputError(f"unknown camera {kind!r}; choose one of {', '.join(CAMERA_PRESETS)}")
