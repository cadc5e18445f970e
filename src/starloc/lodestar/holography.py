"""Holographic fields: angular-spectrum propagation, and a simulator of small scatterers.

A hologram is a complex field; LodeSTAR sees it as two channels, (real, imaginary), of an
``(N, 2, H, W)`` array, the field scattered by the objects with the illumination removed
(zero background), e.g. ``E / E_reference - 1`` of an off-axis hologram.

Axial convention: light travels along +z and the focal plane is at z = 0. An object at
axial position ``z`` (µm, in the medium) is seen in the focal plane as its own-plane field
propagated by ``-z``. Propagating an image by ``dz`` shows the plane at ``dz``, where the
same object sits at ``z - dz``: this is the equivariance :class:`~.transforms.Propagate`
teaches.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from starloc.errors import InputError


@dataclass(frozen=True)
class Optics:
    """What propagation needs: the vacuum wavelength (nm), the camera pixel size in the
    sample (nm) and the refractive index of the medium the objects are in. Axial distances
    come out in µm in that medium (the paper's 'apparent z' times n_oil / n_medium is then
    not needed: the medium's wavelength is used)."""

    wavelength_nm: float = 633.0
    pixel_size_nm: float = 114.0
    n_medium: float = 1.33

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise InputError(f"{name} must be a positive number, got {value!r}")
        if self.pixel_size_nm > 10 * self.wavelength_nm or self.pixel_size_nm < 1:
            raise InputError(f"pixel size {self.pixel_size_nm} nm is absurd for a {self.wavelength_nm} nm "
                             "wavelength: give the pixel size in the sample, in nm")

    @property
    def medium_wavelength_um(self) -> float:
        return self.wavelength_nm / self.n_medium / 1000.0

    def to_dict(self) -> dict:
        return asdict(self)


def check_pixel_size(model: Any, stated_nm: float | None, name: str, source: str = "its metadata") -> None:
    """Refuse (InputError) frames whose stated pixel size (nm; ``source`` says who states it)
    is not the one a hologram model (trained with a pixel size: the axial property) learned
    its propagation at: its z would scale by about the square of the ratio, with no other
    sign (1.41x for 100 nm frames to a 120 nm model). Nothing to check without a statement
    or for other models."""
    trained = (getattr(model, "metadata", None) or {}).get("training", {}).get("pixel_size_nm")
    if stated_nm is None or trained is None or abs(stated_nm - trained) <= 0.01 * trained:
        return
    raise InputError(f"{name} has {stated_nm:g} nm pixels ({source}), but the hologram model was trained at "
                     f"{trained:g} nm: its z would be off by about {(trained / stated_nm) ** 2:.2f}x; train a "
                     "model on frames of this pixel size, or, if the stated size is wrong, give the true one "
                     "(command line: --pixel-size; napari: the Hologram box)")


def transfer_function(shape: tuple[int, int], dz_um: torch.Tensor, optics: Optics) -> torch.Tensor:
    """``(N, H, W)`` angular-spectrum transfer functions (FFT order) for ``(N,)`` distances
    ``dz_um``: ``exp(i k dz (sqrt(1 - (λ fx)² - (λ fy)²) - 1))`` with λ the wavelength in the
    medium. The ``- 1`` drops the plane wave's own phase, so the illumination (zero spatial
    frequency) is unchanged.

    Evanescent frequencies (``(λ f)² >= 1``) are passed unchanged (1), not set to zero as
    physics would: no light reaches the camera there, so in a hologram they hold only the
    camera's noise, and zeroing them would leave propagated training copies with smoother
    noise than the frames the model meets (with 633 nm in water at 114 nm pixels that is
    most of the spectrum)."""
    per_um = _phase_per_um(tuple(shape), optics, str(dz_um.device))
    phase = dz_um.to(torch.float64).view(-1, 1, 1) * per_um
    return torch.polar(torch.ones_like(phase), phase)


@functools.lru_cache(maxsize=16)
def _phase_per_um(shape: tuple[int, int], optics: Optics, device: str) -> torch.Tensor:
    """``(H, W)`` phase of the transfer function per µm of propagation, 0 beyond the cutoff
    (cached: training propagates same-sized copies at every step)."""
    h, w = shape
    lam = optics.medium_wavelength_um
    px = optics.pixel_size_nm / 1000.0
    fy = torch.fft.fftfreq(h, d=px, dtype=torch.float64, device=device)
    fx = torch.fft.fftfreq(w, d=px, dtype=torch.float64, device=device)
    s2 = (lam * fy[:, None]) ** 2 + (lam * fx[None, :]) ** 2
    per_um = (2 * math.pi / lam) * (torch.sqrt(torch.clamp(1 - s2, min=0)) - 1)
    return torch.where(s2 < 1, per_um, torch.zeros_like(per_um))


def propagate(field: torch.Tensor, dz_um: torch.Tensor, optics: Optics, pad: int | None = None) -> torch.Tensor:
    """Propagate ``(N, H, W)`` complex fields by ``(N,)`` distances in µm (see the module's
    axial convention). The fields are zero-padded by ``pad`` pixels per side (default: half
    the larger side) so that what spreads out of the frame does not wrap around into it."""
    n, h, w = field.shape
    pad = max(h, w) // 2 if pad is None else int(pad)
    big = torch.zeros((n, h + 2 * pad, w + 2 * pad), dtype=field.dtype, device=field.device)
    big[:, pad:pad + h, pad:pad + w] = field
    transfer = transfer_function(big.shape[-2:], dz_um, optics).to(field.dtype)
    return torch.fft.ifft2(torch.fft.fft2(big) * transfer)[:, pad:pad + h, pad:pad + w]


def to_complex(channels: torch.Tensor) -> torch.Tensor:
    """``(N, 2, H, W)`` real, imaginary channels -> ``(N, H, W)`` complex (complex64 for
    float32 channels, complex128 for float64)."""
    if channels.shape[1] != 2:
        raise InputError(f"a holographic field has 2 channels (real, imaginary), got {channels.shape[1]}")
    real = channels[:, 0] if channels.dtype in (torch.float32, torch.float64) else channels[:, 0].float()
    return torch.complex(real, channels[:, 1].to(real.dtype))


def to_channels(field: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """``(N, H, W)`` complex -> ``(N, 2, H, W)`` real, imaginary channels."""
    return torch.stack([field.real, field.imag], dim=1).to(dtype)


def refocus_z(fields: np.ndarray, optics: Optics, span_um: float = 3.5, step_um: float = 0.1,
              window: int = 8) -> np.ndarray:
    """The classical axial position of the one object near the centre of each ``(N, 2, H, W)``
    field: propagated over planes ``-span..span`` µm apart by ``step``, the plane where
    the largest |E|² within the central ``window`` x ``window`` px peaks, refined by a parabola
    through its neighbours (the paper's 'traditional focusing approach'). ``(N,)`` µm, in the
    module's axial convention (absolute: 0 is the focal plane). Near-ideal for a small
    scatterer; used to give a training crop its absolute z."""
    field = to_complex(torch.from_numpy(np.asarray(fields, dtype=np.float32)))
    planes = np.arange(-span_um, span_um + step_um / 2, step_um)
    h, w = field.shape[-2:]
    r0, c0 = max(0, h // 2 - window // 2), max(0, w // 2 - window // 2)
    peaks = []
    for dz in planes:
        out = propagate(field, torch.full((len(field),), float(dz)), optics)
        peaks.append((out[:, r0:r0 + window, c0:c0 + window].abs() ** 2).flatten(1).max(dim=1).values.numpy())
    peaks = np.stack(peaks, axis=1)  # (N, planes)
    i = np.clip(peaks.argmax(axis=1), 1, len(planes) - 2)
    rows = np.arange(len(i))
    left, mid, right = peaks[rows, i - 1], peaks[rows, i], peaks[rows, i + 1]
    curvature = left - 2 * mid + right
    shift = np.where(curvature < 0, 0.5 * (left - right) / np.where(curvature < 0, curvature, -1), 0.0)
    return planes[i] + np.clip(shift, -1, 1) * step_um


def refocus_crops(crops, optics: Optics, z_range_um: float) -> float:
    """The axial position (µm) of the training crops' object: the mean over the crops
    ``(2, h, w)`` of :func:`refocus_z`, searched over ±max(3.5, 2 × ``z_range_um``) µm, so the
    search covers the range the model will learn. InputError for a crop without 2 channels."""
    if any(np.shape(c)[0] != 2 for c in crops):
        raise InputError("refocusing needs a complex field: crops of 2 channels (real, imaginary)")
    span = max(3.5, 2 * float(z_range_um))
    return float(np.mean([refocus_z(np.asarray(c)[None], optics, span_um=span)[0] for c in crops]))


def scatterer_fields(positions: np.ndarray, z_um: np.ndarray, amplitude: np.ndarray, shape: tuple[int, int],
                     optics: Optics = Optics(), na: float = 1.0, phase: float = 0.5) -> np.ndarray:
    """``(N, H, W)`` complex fields in the focal plane of ``N`` small scatterers at ``(N, 2)``
    (row, col) pixels, axial positions ``z_um`` and ``amplitude`` (periodic frame).

    Each is a point whose field, in its own plane, is the coherent in-focus image of the
    objective (numerical aperture ``na``): ``amplitude * exp(i phase)`` times the pupil's
    inverse Fourier transform, normalized to a peak of ``amplitude``, placed exactly by a
    Fourier shift and propagated by ``-z`` to the focal plane.
    """
    if not 0 < na < optics.n_medium:
        raise InputError(f"numerical aperture {na} must be in (0, n_medium = {optics.n_medium})")
    h, w = shape
    px = optics.pixel_size_nm / 1000.0
    fy = np.fft.fftfreq(h, d=px)[:, None]
    fx = np.fft.fftfreq(w, d=px)[None, :]
    pupil = (np.hypot(fy, fx) <= na / (optics.wavelength_nm / 1000.0)).astype(np.complex128)
    peak = np.abs(np.fft.ifft2(pupil)).max()
    pos = np.asarray(positions, dtype=np.float64)
    shift = np.exp(-2j * np.pi * px * (fy[None] * pos[:, 0, None, None] + fx[None] * pos[:, 1, None, None]))
    spectrum = (np.asarray(amplitude) * np.exp(1j * phase) / peak)[:, None, None] * pupil[None] * shift
    spectrum = spectrum * transfer_function((h, w), torch.from_numpy(-np.asarray(z_um, dtype=np.float64)),
                                            optics).numpy()
    return np.fft.ifft2(spectrum)


def _with_noise(field: np.ndarray, noise: float, gen: np.random.Generator) -> np.ndarray:
    """Complex Gaussian noise of ``noise`` per channel added; as float32 (..., 2, H, W)."""
    field = field + noise * (gen.standard_normal(field.shape) + 1j * gen.standard_normal(field.shape))
    return np.stack([field.real, field.imag], axis=-3).astype(np.float32)


def _draw_amplitudes(gen: np.random.Generator, n: int, amplitude: tuple[float, float]) -> np.ndarray:
    lo, hi = amplitude
    return lo * np.exp(gen.uniform(0, 1, n) * math.log(hi / lo)) if hi > lo else np.full(n, float(lo))


def simulate_holograms(
    n: int, size: int = 64, z_um: tuple[float, float] = (-2.0, 2.0), amplitude: tuple[float, float] = (1.0, 1.0),
    optics: Optics = Optics(), na: float = 1.0, max_offset: float = 3.0, noise: float = 0.05, phase: float = 0.5,
    rng=0,
) -> tuple[np.ndarray, np.ndarray]:
    """Holograms of one small scatterer each (see :func:`scatterer_fields`), with exact
    ground truth: within ``max_offset`` px of the centre, ``z`` uniform in ``z_um``,
    log-uniform ``amplitude``, complex Gaussian noise of standard deviation ``noise`` per
    channel.

    Returns ``(N, 2, size, size)`` float32 (real, imaginary) and ``(N, 4)`` truth
    ``(row, col, z_um, amplitude)``, rows and cols in pixels (pixel centres at integers).
    """
    gen = np.random.default_rng(rng)
    pos = (size - 1) / 2 + gen.uniform(-max_offset, max_offset, (n, 2))
    z = gen.uniform(*z_um, n)
    amp = _draw_amplitudes(gen, n, amplitude)
    field = scatterer_fields(pos, z, amp, (size, size), optics, na, phase)
    return _with_noise(field, noise, gen), np.column_stack([pos, z, amp])


def simulate_hologram_scene(
    n_objects: int, size: tuple[int, int] = (256, 256), z_um: tuple[float, float] = (-2.0, 2.0),
    amplitude: tuple[float, float] = (1.0, 1.0), optics: Optics = Optics(), na: float = 1.0,
    min_distance: float = 12.0, margin: float = 8.0, noise: float = 0.05, phase: float = 0.5, rng=0,
) -> tuple[np.ndarray, np.ndarray]:
    """One hologram of ``n_objects`` scatterers (their fields add), at least ``min_distance``
    px apart and ``margin`` px from the border: ``(2, H, W)`` float32 and ``(n, 4)`` truth
    ``(row, col, z_um, amplitude)``. Fewer objects if they do not fit."""
    gen = np.random.default_rng(rng)
    h, w = size
    pos: list[np.ndarray] = []
    for _ in range(100 * n_objects):
        if len(pos) == n_objects:
            break
        p = gen.uniform((margin, margin), (h - 1 - margin, w - 1 - margin))
        if all(np.hypot(*(p - q)) >= min_distance for q in pos):
            pos.append(p)
    pos_arr = np.array(pos).reshape(-1, 2)
    z = gen.uniform(*z_um, len(pos_arr))
    amp = _draw_amplitudes(gen, len(pos_arr), amplitude)
    field = scatterer_fields(pos_arr, z, amp, size, optics, na, phase).sum(axis=0)
    return _with_noise(field, noise, gen), np.column_stack([pos_arr, z, amp])
