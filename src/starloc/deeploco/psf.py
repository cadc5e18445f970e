"""Point-spread-function models that render emitters into expected photons per pixel.

Conventions (shared by every model here):

- ``x`` along columns, ``y`` along rows, in nm, origin at the image's top-left *corner*: pixel ``j``'s
  centre is at ``(j + 0.5) * pixel_size``, so an emitter at ``x = (j + 0.5) * pixel_size`` is centred
  on pixel column ``j``.
- ``z`` in nm, 0 at focus. A bead z-stack's slice ``k`` is at ``z0 + k * z_step``.
- ``render`` is vectorized over a batch of frames with a padded emitter list: ``x, y, z, photons``
  of shape ``(B, N)`` and an optional boolean ``mask`` ``(B, N)`` (``False`` = padding slot). It
  returns a ``(B, H, W)`` tensor of expected photons per pixel (photons that reach the camera;
  quantum efficiency is the camera's business). A PSF carries unit photon mass, so a lone emitter
  far from the borders contributes exactly ``photons`` to the frame's sum.

Rendering is done without per-frame or per-emitter Python loops: each emitter is rendered into a
small ``P x P`` patch centred on its nearest pixel (all patches in one batched tensor operation),
and the patches are added into the frames with one ``index_add_``.

Three models share the interface:

- :class:`EmpiricalPSF` from a bead z-stack (the DeepLoco forward model),
- :class:`Gaussian2DPSF` (pixel-integrated, z-independent),
- :class:`AstigmaticPSF` (pixel-integrated elliptical Gaussian,
  ``sigma_{x,y}(z) = sigma0 * sqrt(1 + ((z -/+ c) / d)^2)``).
"""

from __future__ import annotations

import abc
import math
from typing import Any

import numpy as np
import torch

from ..errors import InputError

__all__ = ["PSFModel", "EmpiricalPSF", "Gaussian2DPSF", "AstigmaticPSF", "bead_summary", "centred_z0",
           "estimate_baseline"]

Tensor = torch.Tensor


#: nm: the deepest bead scan a PSF is read from (far-reaching engineered PSFs span ~10 µm; a
#: longer scan means a wrong z step, e.g. a time-lapse's or a default 1 µm)
MAX_PSF_DEPTH = 20000.0


#: a spot whose brightest pixel holds more than this part of its signal (mean over z) is a hot
#: pixel: a bead's image spreads over its neighbours at every z
SPIKE_FRACTION = 0.6


def _spikes_and_clipped(mean_sig: np.ndarray, stored_max: float, raw: np.ndarray, cand: np.ndarray,
                        h: int) -> tuple[np.ndarray, np.ndarray]:
    """For candidate spots ``cand`` (row, col) of a bead stack: which are one hot pixel (its
    brightest pixel holds more than ``SPIKE_FRACTION`` of the signal in the 3x3 window around
    it, on the mean over z ``mean_sig``), and which touch the stored type's maximum
    ``stored_max`` anywhere within ``h`` px (a saturated bead's PSF is clipped)."""
    spiky, clipped = np.zeros(len(cand), bool), np.zeros(len(cand), bool)
    for i, (r, c) in enumerate(cand):
        win = mean_sig[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2].clip(min=0)
        spiky[i] = win.sum() > 0 and win.max() > SPIKE_FRACTION * win.sum()
        if math.isfinite(stored_max):
            clipped[i] = bool((raw[:, max(r - h, 0):r + h + 1, max(c - h, 0):c + h + 1] >= stored_max).any())
    return spiky, clipped


#: px: the farthest a bead's measured centre may lie from its given true position
#: (``anchor="positions"``); asymmetric PSFs measured here put it 0.3-0.6 px away
MAX_ANCHOR_OFFSET = 2.0


def _anchor_offset(centre_nm: tuple[float, float], given_xy: np.ndarray, ps: float) -> tuple[float, float]:
    """(x, y) nm from a bead's given position to its measured centre (both (x, y) nm, corner
    origin); InputError when farther than ``MAX_ANCHOR_OFFSET`` pixels of ``ps`` nm."""
    dx, dy = centre_nm[0] - given_xy[0], centre_nm[1] - given_xy[1]
    if math.hypot(dx, dy) > MAX_ANCHOR_OFFSET * ps:
        raise InputError(
            f"the bead given at (x={given_xy[0]:g}, y={given_xy[1]:g}) nm has its image centred at "
            f"(x={centre_nm[0]:.0f}, y={centre_nm[1]:.0f}) nm, {math.hypot(dx, dy):.0f} nm away: bead positions "
            "are in nm, origin at the image's top-left corner, x along columns"
        )
    return dx, dy


def _check_distinct(pos: np.ndarray, spacing: float) -> None:
    """InputError when two given bead positions ``(x, y)`` nm lie closer than ``spacing`` nm: one
    bead listed twice (e.g. its localizations slice by slice), or two beads whose crops overlap."""
    if len(pos) < 2:
        return
    d = np.hypot(*(pos[:, None] - pos[None]).transpose(2, 0, 1))
    i, j = np.unravel_index(np.argmin(d + np.diag(np.full(len(pos), np.inf))), d.shape)
    if d[i, j] < spacing:
        raise InputError(
            f"bead positions (x={pos[i, 0]:g}, y={pos[i, 1]:g}) and (x={pos[j, 0]:g}, y={pos[j, 1]:g}) nm are "
            f"{d[i, j]:.0f} nm apart: list each bead once, at least {spacing:g} nm from the next"
        )


def bead_summary(meta: dict) -> str | None:
    """``"averaged over N bead(s); left out: ..."`` for the ``meta`` of a PSF read from a bead
    stack (:meth:`EmpiricalPSF.from_bead_stack`), None for other PSFs."""
    if meta.get("source") != "bead_stack":
        return None
    nouns = {"hot pixel": "hot pixel(s)", "saturated": "saturated bead(s)"}
    left_out = [f"{n} {nouns.get(k, k)}" for k, n in (meta.get("rejected_spots") or {}).items() if n]
    text = f"averaged over {meta.get('n_beads')} bead(s)" + ("; left out: " + ", ".join(left_out) if left_out else "")
    if meta.get("anchor") == "positions":
        dx, dy = meta.get("centroid_offset_nm", (0.0, 0.0))
        text += (f"; centred on the given bead positions (the beads' images are centred {dx:+.0f} nm in x, "
                 f"{dy:+.0f} nm in y from them)")
    return text


def _check_positive(name: str, value: Any, low: float, high: float, unit: str = "nm") -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or not (low <= v <= high):
        raise InputError(f"{name} = {value!r} is missing or absurd: expected {low:g}..{high:g} {unit}")
    return v


def _check_frame_shape(frame_shape: Any) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in frame_shape)
    except (TypeError, ValueError):
        raise InputError(f"frame_shape must be (height, width), got {frame_shape!r}") from None
    if h < 1 or w < 1:
        raise InputError(f"frame_shape must be positive, got {frame_shape!r}")
    return h, w


class PSFModel(abc.ABC):
    """Common interface: ``render(x, y, z, photons, frame_shape, pixel_size, mask=None)``.

    Subclasses implement :meth:`_patches`, which renders unit-mass PSFs into ``P x P`` patches for
    emitters whose sub-pixel offsets from the patch's centre pixel are given; everything else
    (validation, batching, placement, borders) lives here.

    Attributes
    ----------
    z_range : (float, float)
        The z range (nm) the model is calibrated or meant for. :class:`EmpiricalPSF` clamps z to it;
        parametric models evaluate their formula anywhere.
    z_dependent : bool
        Whether the image changes with z (``False`` only for :class:`Gaussian2DPSF`).
    """

    z_range: tuple[float, float] = (0.0, 0.0)
    z_dependent: bool = True

    @abc.abstractmethod
    def _half_size(self, z: Tensor, pixel_size: float) -> int:
        """Half width ``h`` (pixels) of the square patch ``P = 2h + 1`` needed for these z values."""

    @abc.abstractmethod
    def _patches(self, z: Tensor, dr: Tensor, dc: Tensor, pixel_size: float, h: int) -> Tensor:
        """Unit-mass PSFs ``(M, 2h+1, 2h+1)`` for emitters at ``z`` (nm) whose centres lie
        ``dr, dc`` pixels (each in [-0.5, 0.5]) from the centre pixel ``(h, h)`` of the patch."""

    def render(
        self,
        x: Tensor,
        y: Tensor,
        z: Tensor | None,
        photons: Tensor,
        frame_shape: tuple[int, int],
        pixel_size: float,
        mask: Tensor | None = None,
    ) -> Tensor:
        """Expected photons per pixel, ``(B, H, W)``, of emitters given as padded ``(B, N)`` tensors.

        ``x``, ``y``, ``z`` in nm (corner origin, see the module docstring); ``z`` may be ``None``
        (all at focus); ``photons`` per emitter; ``mask`` (bool, ``(B, N)``) marks real emitters.
        Emitters whose PSF patch lies entirely outside the frame contribute nothing; photons falling
        outside the frame are lost, as on a camera. The result is on ``x``'s device, in ``x``'s
        floating dtype (float32 for integer input).
        """
        x = torch.as_tensor(x)
        if x.ndim != 2:
            raise InputError(f"x must have shape (batch, emitters), got {tuple(x.shape)}")
        device = x.device
        dtype = x.dtype if x.is_floating_point() else torch.float32
        x = x.to(dtype)
        y = torch.as_tensor(y, device=device).to(dtype)
        photons = torch.as_tensor(photons, device=device).to(dtype)
        z = torch.zeros_like(x) if z is None else torch.as_tensor(z, device=device).to(dtype)
        for name, t in (("y", y), ("z", z), ("photons", photons)):
            if t.shape != x.shape:
                raise InputError(f"{name} has shape {tuple(t.shape)}, x has {tuple(x.shape)}")
        if mask is None:
            mask = torch.ones(x.shape, dtype=torch.bool, device=device)
        else:
            mask = torch.as_tensor(mask, device=device).to(torch.bool)
            if mask.shape != x.shape:
                raise InputError(f"mask has shape {tuple(mask.shape)}, x has {tuple(x.shape)}")
        H, W = _check_frame_shape(frame_shape)
        ps = _check_positive("pixel_size", pixel_size, 1e-3, 1e6)
        B = x.shape[0]

        # Pixel-centre coordinates: column c = x / ps - 0.5 (pixel j's centre at c = j).
        col = x / ps - 0.5
        row = y / ps - 0.5
        finite = torch.isfinite(col) & torch.isfinite(row) & torch.isfinite(z) & torch.isfinite(photons)
        keep = mask & finite
        z_keep = z[keep]
        h = self._half_size(z_keep, ps) if z_keep.numel() else 1
        c0 = torch.round(col)
        r0 = torch.round(row)
        # A patch centred at r0 touches rows r0-h..r0+h: drop emitters that cannot reach the frame.
        keep &= (r0 >= -h) & (r0 <= H - 1 + h) & (c0 >= -h) & (c0 <= W - 1 + h)
        pad = 2 * h
        Hp, Wp = H + 2 * pad, W + 2 * pad
        canvas = torch.zeros(B * Hp * Wp, dtype=dtype, device=device)
        if bool(keep.any()):
            b_idx = torch.arange(B, device=device)[:, None].expand_as(x)[keep]
            r0k = r0[keep].to(torch.long)
            c0k = c0[keep].to(torch.long)
            dr = (row[keep] - r0[keep]).clamp(-0.5, 0.5)
            dc = (col[keep] - c0[keep]).clamp(-0.5, 0.5)
            patches = self._patches(z[keep], dr, dc, ps, h).to(dtype) * photons[keep][:, None, None]
            k = torch.arange(2 * h + 1, device=device)
            # patch row k <-> frame row r0 - h + k <-> padded row r0 - h + k + pad = r0 + h + k
            rows = (r0k + h)[:, None, None] + k[None, :, None]
            cols = (c0k + h)[:, None, None] + k[None, None, :]
            flat = b_idx[:, None, None] * (Hp * Wp) + rows * Wp + cols
            canvas.index_add_(0, flat.reshape(-1), patches.reshape(-1))
        return canvas.view(B, Hp, Wp)[:, pad : pad + H, pad : pad + W].contiguous()


# --------------------------------------------------------------------------- parametric models


def _erf_profile(offset: Tensor, sigma_px: Tensor, h: int) -> Tensor:
    """Pixel-integrated 1D Gaussian on pixels ``-h..h`` for centres at ``offset`` (pixels),
    renormalized to unit sum over the patch (so truncation loses no photons). ``(M, 2h+1)``."""
    k = torch.arange(-h, h + 1, device=offset.device, dtype=offset.dtype)
    lo = (k[None, :] - 0.5 - offset[:, None]) / (math.sqrt(2.0) * sigma_px[:, None])
    hi = (k[None, :] + 0.5 - offset[:, None]) / (math.sqrt(2.0) * sigma_px[:, None])
    p = 0.5 * (torch.erf(hi) - torch.erf(lo))
    return p / p.sum(dim=1, keepdim=True)


class _SeparableGaussianPSF(PSFModel):
    """Pixel-integrated (erf) elliptical Gaussian with axis-aligned widths ``sigmas(z)``."""

    #: patch half width in units of the largest sigma
    truncate: float = 5.0

    @abc.abstractmethod
    def sigmas(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(sigma_x, sigma_y)`` in nm at ``z`` (nm)."""

    def _half_size(self, z: Tensor, pixel_size: float) -> int:
        sx, sy = self.sigmas(z)
        smax = float(torch.maximum(sx, sy).max())
        return max(1, int(math.ceil(self.truncate * smax / pixel_size)))

    def _patches(self, z: Tensor, dr: Tensor, dc: Tensor, pixel_size: float, h: int) -> Tensor:
        sx, sy = self.sigmas(z)
        px = _erf_profile(dc, sx / pixel_size, h)
        py = _erf_profile(dr, sy / pixel_size, h)
        return py[:, :, None] * px[:, None, :]


class Gaussian2DPSF(_SeparableGaussianPSF):
    """Round Gaussian of standard deviation ``sigma_nm``, integrated over each pixel; ignores z.

    For users without a bead stack; a diffraction-limited PSF at ~670 nm and NA 1.4 has sigma ~
    0.21 lambda / NA ~ 100 nm (in-focus FWHM = 2.355 sigma).
    """

    z_dependent = False

    def __init__(self, sigma_nm: float = 130.0):
        self.sigma_nm = _check_positive("sigma_nm", sigma_nm, 1.0, 1e5)
        self.z_range = (0.0, 0.0)

    def sigmas(self, z: Tensor) -> tuple[Tensor, Tensor]:
        s = torch.full_like(z, self.sigma_nm)
        return s, s

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "gaussian2d", "sigma_nm": self.sigma_nm}

    def __repr__(self) -> str:
        return f"Gaussian2DPSF(sigma_nm={self.sigma_nm:g})"


class AstigmaticPSF(_SeparableGaussianPSF):
    """Astigmatic 3D PSF: ``sigma_x(z) = sigma0 sqrt(1 + ((z - c)/d)^2)``,
    ``sigma_y(z) = sigma0 sqrt(1 + ((z + c)/d)^2)`` (nm), pixel-integrated.

    So the spot is narrowest along x at ``z = +c`` and along y at ``z = -c``; elongated along y
    (``sigma_y > sigma_x``) for ``z > 0`` when ``c > 0``. ``z_range`` is the range meant for
    simulation (the formula is evaluated at any z).
    """

    def __init__(
        self,
        sigma0: float = 130.0,
        c: float = 300.0,
        d: float = 400.0,
        z_range: tuple[float, float] = (-750.0, 750.0),
    ):
        self.sigma0 = _check_positive("sigma0", sigma0, 1.0, 1e5)
        self.c = float(c)
        if not math.isfinite(self.c):
            raise InputError(f"c must be finite, got {c!r}")
        self.d = _check_positive("d", d, 1.0, 1e6)
        lo, hi = (float(v) for v in z_range)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise InputError(f"z_range must be (low, high) in nm, got {z_range!r}")
        self.z_range = (lo, hi)

    def sigmas(self, z: Tensor) -> tuple[Tensor, Tensor]:
        sx = self.sigma0 * torch.sqrt(1 + ((z - self.c) / self.d) ** 2)
        sy = self.sigma0 * torch.sqrt(1 + ((z + self.c) / self.d) ** 2)
        return sx, sy

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "astigmatic", "sigma0": self.sigma0, "c": self.c, "d": self.d,
                "z_range": list(self.z_range)}

    def __repr__(self) -> str:
        return f"AstigmaticPSF(sigma0={self.sigma0:g}, c={self.c:g}, d={self.d:g})"


# --------------------------------------------------------------------------- empirical model


def estimate_baseline(stack: np.ndarray) -> float:
    """Camera baseline (ADU) of a bead stack: the median of the voxels of the darker half of the
    field (pixels whose z-maximum is below the median z-maximum), i.e. of pixels that never see a
    bead. Robust to a few bright beads; includes any uniform fluorescence background, which is
    what should be removed from a PSF."""
    zmax = stack.max(axis=0)
    dark = zmax <= np.median(zmax)
    return float(np.median(stack[:, dark]))


def _fourier_shift_np(img: np.ndarray, dr: float, dc: float) -> np.ndarray:
    """Translate the last two axes by (dr, dc) pixels with the Fourier shift theorem (odd sizes)."""
    ny, nx = img.shape[-2:]
    fy = np.fft.fftfreq(ny)[:, None]
    fx = np.fft.rfftfreq(nx)[None, :]
    ramp = np.exp(-2j * np.pi * (fy * dr + fx * dc))
    return np.fft.irfft2(np.fft.rfft2(img) * ramp, s=(ny, nx))


def centred_z0(slices: int, z_step: float) -> float:
    """z (nm) of the first of ``slices`` slices ``z_step`` nm apart when the middle one is at focus."""
    return -(int(slices) - 1) / 2 * float(z_step)


class EmpiricalPSF(PSFModel):
    """PSF measured from a bead z-stack: ``(Z, P, P)`` slices of unit photon mass.

    The PSF's centre (the emitter position) is the centre pixel ``(P//2, P//2)`` of each slice;
    slice ``k`` is at ``z = z0 + k * z_step``. Build it with :meth:`from_bead_stack`.

    Rendering
    ---------
    - Lateral sub-pixel translation by the **Fourier shift theorem** (phase ramp on the slice's
      2D FFT, zero-padded by ``pad`` pixels so nothing wraps around). The optical PSF is
      band-limited and the 100 nm pixels sample it at about Nyquist, so this translation is exact
      up to the sampling of the bead images, and - unlike bilinear interpolation, which blurs the
      PSF by an amount that depends on the sub-pixel phase - it does not make spots at half-pixel
      positions look wider than spots at pixel centres (a source of sub-pixel grid artifacts in a
      trained localizer). Small negative ringing lobes are clipped and each patch is renormalized
      to unit mass. An emitter exactly at a pixel centre gets exactly the stored slice.
    - Linear interpolation between the two neighbouring z slices (done on the spectra, which is
      the same as on the images since both operations are linear).
    - ``z`` outside the calibrated range ``z_range = (z0, z0 + (Z-1) z_step)`` is **clamped** to it
      (the edge slice is used); :class:`~starloc.deeploco.simulate.Simulator` refuses z ranges
      outside the calibration, so clamping only matters for direct calls.
    """

    def __init__(
        self,
        stack: Any,
        pixel_size: float,
        z_step: float,
        z0: float,
        pad: int = 2,
        meta: dict[str, Any] | None = None,
        lateral: bool = False,
    ):
        arr = torch.as_tensor(np.asarray(stack, dtype=np.float64) if not isinstance(stack, Tensor) else stack)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3 or arr.shape[1] != arr.shape[2] or arr.shape[1] % 2 == 0:
            raise InputError(f"PSF stack must be (Z, P, P) with P odd, got shape {tuple(arr.shape)}")
        arr = arr.to(torch.float64)
        if not bool(torch.isfinite(arr).all()):
            raise InputError("PSF stack contains NaN or inf")
        arr = arr.clamp(min=0)
        sums = arr.sum(dim=(1, 2), keepdim=True)
        if bool((sums <= 0).any()):
            raise InputError("PSF stack has an empty (all-zero) slice")
        self.stack = (arr / sums).to(torch.float32)  # unit photon mass per slice
        self.pixel_size = _check_positive("pixel_size", pixel_size, 1.0, 10000.0)
        self.z_step = _check_positive("z_step", z_step, 0.01, 10000.0)
        self.z0 = float(z0)
        if not math.isfinite(self.z0):
            raise InputError(f"z0 must be finite, got {z0!r}")
        self.pad = int(pad)
        Z = self.stack.shape[0]
        self.z_range = (self.z0, self.z0 + (Z - 1) * self.z_step)
        self.lateral = bool(lateral)  # several slices, but a 2D model: emitters out of focus, x and y only
        self.z_dependent = Z > 1 and not self.lateral
        self.meta: dict[str, Any] = dict(meta or {})
        padded = torch.nn.functional.pad(self.stack.to(torch.float64), (self.pad,) * 4)
        self._spectra = torch.fft.rfft2(padded)  # (Z, Q, Q//2+1), complex128 on CPU
        self._cache: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    # ---------------------------------------------------------------- construction from beads
    @classmethod
    def from_bead_stack(
        cls,
        stack: Any,
        pixel_size: float = 100.0,
        z_step: float = 10.0,
        z0: float | None = None,
        baseline: float | None = None,
        positions: Any = None,
        crop: int = 21,
        n_beads: int | None = None,
        min_snr: float = 10.0,
        anchor: str = "centroid",
    ) -> EmpiricalPSF:
        """Average PSF of the isolated beads of a ``(Z, Y, X)`` bead z-stack in ADU (int or float).

        Steps: subtract ``baseline`` (ADU; estimated with :func:`estimate_baseline` when ``None``);
        find beads (``positions=None``: local maxima of the smoothed mean-over-z image, at least
        ``min_snr`` times its robust noise and 25 % of the brightest bead, with no other bead
        within ``crop`` pixels and the crop inside the image; or ``positions`` given as ``(n, 2)``
        ``(x, y)`` nm, corner origin, which must be inside the image with a full crop around them);
        keep the ``n_beads`` brightest (all usable when ``None``); measure each bead's sub-pixel
        centre (iterated centroid of its baseline-subtracted, z-summed ``crop x crop`` image after
        removing the crop border's median, i.e. the bead's axis, not its in-focus peak); translate
        each bead's crop by Fourier shift so its centre lands on the crop's centre pixel; scale each
        bead to unit mean slice mass and average the beads (bead-to-bead aberrations and noise
        average out); clip negatives and normalize every slice to unit photon mass.

        ``z0`` is the z (nm) of the first slice; by default the focus (z = 0) is the middle
        slice (:func:`centred_z0`), as a scan symmetric about focus has it (-750 nm for the
        challenge's 151 slices of 10 nm).

        ``anchor`` says which point of a bead is its position, the point a localization reports:
        ``"centroid"`` (default) the measured centre above; ``"positions"`` the given
        ``positions``, taken as the beads' true lateral positions (e.g. the SMLM Challenge's bead
        list). The two differ where the PSF is asymmetric: for the challenge's astigmatic beads
        the centroid lies 46 nm from the true position, the same for every bead, so a model
        built on centroids reports every emitter 46 nm off the challenge's ground truth.
        ``meta["centroid_offset_nm"]`` then records the mean (x, y) of centroid minus given
        position; a bead whose centroid lies more than ``MAX_ANCHOR_OFFSET`` pixels from its
        given position is refused (wrong units, origin or axis order).

        ``crop`` is the PSF's side in pixels (made odd). Raises :class:`InputError` for a stack
        that is not 3D, holds NaN/inf, has absurd ``pixel_size``/``z_step``, lies far below the
        baseline, has no usable bead, or where a given position's crop leaves the image.
        ``meta`` records the baseline, the beads' measured centres (x, y nm) and their count.
        """
        from scipy import ndimage
        from skimage.feature import peak_local_max

        try:
            arr = np.asarray(stack)
        except Exception as exc:  # pragma: no cover - exotic input
            raise InputError(f"bead stack is not an array: {exc}") from None
        if arr.ndim != 3:
            raise InputError(f"bead stack must be 3D (Z, Y, X), got shape {arr.shape}")
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise InputError(f"bead stack must hold numbers, got dtype {arr.dtype}")
        stored_max = float(np.iinfo(arr.dtype).max) if arr.dtype.kind in "iu" else math.inf
        arr = arr.astype(np.float64)
        if not np.isfinite(arr).all():
            raise InputError("bead stack contains NaN or inf values")
        ps = _check_positive("pixel_size", pixel_size, 1.0, 10000.0)
        dz = _check_positive("z_step", z_step, 0.01, 10000.0)
        Z, Y, X = arr.shape
        if anchor not in ("centroid", "positions"):
            raise InputError(f"anchor must be 'centroid' or 'positions', got {anchor!r}")
        if anchor == "positions" and positions is None:
            raise InputError("anchor='positions' needs the beads' positions")
        if (Z - 1) * dz > MAX_PSF_DEPTH:
            raise InputError(f"{Z} slices {dz:g} nm apart span {(Z - 1) * dz / 1000:g} µm: no PSF is calibrated "
                             f"over more than {MAX_PSF_DEPTH / 1000:g} µm; is the z step right?")
        crop = int(crop) | 1
        if crop < 5:
            raise InputError(f"crop must be at least 5 pixels, got {crop}")
        h = crop // 2
        if Y < crop or X < crop:
            raise InputError(f"bead stack frames {Y}x{X} are smaller than the crop {crop}x{crop}")

        if baseline is None:
            baseline = estimate_baseline(arr)
        baseline = float(baseline)
        if not math.isfinite(baseline):
            raise InputError(f"baseline must be finite, got {baseline!r}")
        sig = arr - baseline
        noise = 1.4826 * float(np.median(np.abs(sig - np.median(sig))))
        if float(np.median(sig)) < -max(5.0 * noise, 10.0):
            raise InputError(
                f"bead stack lies far below the baseline {baseline:g} ADU (median "
                f"{np.median(arr):g}): wrong baseline or camera settings?"
            )

        zsum = sig.sum(axis=0)
        if positions is None:
            sm = ndimage.gaussian_filter(sig.mean(axis=0), sigma=max(2.0, crop / 5))
            sm_noise = 1.4826 * float(np.median(np.abs(sm - np.median(sm)))) + 1e-12
            floor = float(np.median(sm)) + min_snr * sm_noise
            cand = peak_local_max(sm, min_distance=2, threshold_abs=floor, exclude_border=False)
            if len(cand) == 0:
                raise InputError("no bead found in the bead stack (nothing stands out of the noise of its "
                                 "mean over z); is it a bead z-stack (Z, Y, X)? The blinking spots of an SMLM "
                                 "time-lapse average out")
            spiky, clipped = _spikes_and_clipped(sig.mean(axis=0), stored_max, arr, cand, h)
            rejected = {"hot pixel": int(spiky.sum()), "saturated": int((clipped & ~spiky).sum())}
            cand = cand[~(spiky | clipped)]
            if len(cand) == 0:
                raise InputError("no usable bead in the bead stack: every bright spot is "
                                 + " or ".join(f"{k} ({n})" for k, n in rejected.items() if n))
            heights = sm[cand[:, 0], cand[:, 1]]
            bright = heights >= 0.25 * heights.max()
            chosen = []
            for i in np.flatnonzero(bright):
                r, c = cand[i]
                others = np.delete(cand, i, axis=0)
                if len(others) and (np.abs(others - cand[i]).max(axis=1) < crop).any():
                    continue  # not isolated
                if r < h + 1 or c < h + 1 or r > Y - h - 2 or c > X - h - 2:
                    continue  # too close to the border for a full crop after re-centring
                chosen.append((heights[i], r, c))
            if not chosen:
                raise InputError(
                    f"no usable bead in the bead stack: {int(bright.sum())} bright spot(s), none "
                    f"isolated and at least {h + 1} px from the border"
                )
            chosen.sort(key=lambda t: -t[0])
            starts = [(r, c) for _, r, c in chosen]
        else:
            pos = np.asarray(positions, dtype=np.float64)
            if pos.ndim != 2 or pos.shape[1] != 2 or len(pos) == 0 or not np.isfinite(pos).all():
                raise InputError(f"positions must be a non-empty (n, 2) array of (x, y) nm, got {pos.shape}")
            _check_distinct(pos, h * ps)
            starts = []
            for xn, yn in pos:
                r, c = int(round(yn / ps - 0.5)), int(round(xn / ps - 0.5))
                if r < h + 1 or c < h + 1 or r > Y - h - 2 or c > X - h - 2:
                    raise InputError(
                        f"bead at (x={xn:g}, y={yn:g}) nm is too close to the border for a "
                        f"{crop}x{crop} crop"
                    )
                starts.append((r, c))
        if n_beads is not None:
            starts = starts[: max(1, int(n_beads))]

        ring = np.ones((crop, crop), dtype=bool)
        ring[1:-1, 1:-1] = False
        kk = np.arange(-h, h + 1, dtype=np.float64)
        beads, centres, offsets = [], [], []
        for i, (r, c) in enumerate(starts):
            rc, cc = float(r), float(c)
            for _ in range(5):  # iterated centroid; converges in 1-2 steps
                win = zsum[r - h : r + h + 1, c - h : c + h + 1]
                win = win - np.median(win[ring])
                mass = win.sum()
                if mass <= 0:
                    break
                rc = r + float((win.sum(axis=1) * kk).sum() / mass)
                cc = c + float((win.sum(axis=0) * kk).sum() / mass)
                nr, nc = int(round(rc)), int(round(cc))
                if (nr, nc) == (r, c) or not (h <= nr < Y - h and h <= nc < X - h):
                    break
                r, c = nr, nc
            if mass <= 0 or not (h <= r < Y - h and h <= c < X - h):
                if positions is not None:
                    raise InputError(f"no bead signal around pixel (row {r}, col {c})")
                continue
            centres.append(((cc + 0.5) * ps, (rc + 0.5) * ps))
            if anchor == "positions":  # shift the given position, not the measured centre, onto the crop centre
                offsets.append(_anchor_offset(centres[-1], pos[i], ps))
                rc, cc = pos[i][1] / ps - 0.5, pos[i][0] / ps - 0.5
                r, c = int(round(rc)), int(round(cc))
            sub = sig[:, r - h : r + h + 1, c - h : c + h + 1]
            sub = sub - np.median(sub[:, ring])  # residual local background
            sub = _fourier_shift_np(np.pad(sub, ((0, 0), (2, 2), (2, 2))), r - rc, c - cc)[:, 2:-2, 2:-2]
            sub = sub / (sub.sum() / Z)
            beads.append(sub)
        if not beads:
            raise InputError("no usable bead in the bead stack")
        mean = np.mean(beads, axis=0).clip(min=0)
        if (mean.sum(axis=(1, 2)) <= 0).any():
            raise InputError("bead stack has a z slice without bead signal")
        meta = {
            "source": "bead_stack",
            "rejected_spots": rejected if positions is None else {},
            "baseline_adu": baseline,
            "n_beads": len(beads),
            "bead_centres_nm": [list(map(float, p)) for p in centres],
            "crop": crop,
            "anchor": anchor,
            **({"centroid_offset_nm": np.mean(offsets, axis=0).round(2).tolist()} if offsets else {}),
        }
        if z0 is None:
            z0 = centred_z0(mean.shape[0], z_step)
        return cls(mean, pixel_size=ps, z_step=z_step, z0=z0, meta=meta)

    # ---------------------------------------------------------------- rendering
    def render(self, x, y, z, photons, frame_shape, pixel_size, mask=None) -> Tensor:
        self._check_pixel_size(pixel_size)
        return super().render(x, y, z, photons, frame_shape, pixel_size, mask=mask)

    render.__doc__ = PSFModel.render.__doc__

    def _check_pixel_size(self, pixel_size: float) -> None:
        ps = _check_positive("pixel_size", pixel_size, 1e-3, 1e6)
        if abs(ps - self.pixel_size) > 1e-6 * self.pixel_size:
            raise InputError(
                f"pixel size mismatch: the PSF was measured at {self.pixel_size:g} nm/px, "
                f"frames asked for {ps:g} nm/px"
            )

    def _spectra_on(self, device: torch.device) -> Tensor:
        key = (torch.device(device), torch.complex64)
        if key not in self._cache:
            self._cache[key] = self._spectra.to(device=device, dtype=torch.complex64)
        return self._cache[key]

    def _half_size(self, z: Tensor, pixel_size: float) -> int:
        return self.stack.shape[-1] // 2 + self.pad

    def _slice_index(self, z: Tensor) -> tuple[Tensor, Tensor]:
        Z = self.stack.shape[0]
        zi = ((z - self.z0) / self.z_step).clamp(0, Z - 1)
        k = torch.floor(zi).clamp(max=max(Z - 2, 0))
        return k.to(torch.long), (zi - k) if Z > 1 else torch.zeros_like(zi)

    def _patches(self, z: Tensor, dr: Tensor, dc: Tensor, pixel_size: float, h: int) -> Tensor:
        spectra = self._spectra_on(z.device)
        Z = spectra.shape[0]
        Q = spectra.shape[-2]
        k, w = self._slice_index(z.to(torch.float64))
        w = w.to(torch.float32)[:, None, None]
        k1 = (k + 1).clamp(max=Z - 1)
        spec = spectra[k] * (1 - w) + spectra[k1] * w  # linear in z
        fy = torch.fft.fftfreq(Q, device=z.device, dtype=torch.float32)
        fx = torch.fft.rfftfreq(Q, device=z.device, dtype=torch.float32)
        # separable phase ramp exp(-2 pi i (fy dr + fx dc)) = ey (rows) x ex (columns)
        py = -2 * math.pi * dr.float()[:, None] * fy[None, :]
        px = -2 * math.pi * dc.float()[:, None] * fx[None, :]
        ey = torch.polar(torch.ones_like(py), py)
        ex = torch.polar(torch.ones_like(px), px)
        out = torch.fft.irfft2(spec * ey[:, :, None] * ex[:, None, :], s=(Q, Q))
        out = out.clamp(min=0)
        return out / out.sum(dim=(1, 2), keepdim=True).clamp(min=1e-30)

    def slice_at(self, z: float) -> Tensor:
        """The unshifted ``(P, P)`` PSF at ``z`` nm (linear between slices, clamped to ``z_range``)."""
        k, w = self._slice_index(torch.tensor([float(z)], dtype=torch.float64))
        k1 = min(int(k) + 1, self.stack.shape[0] - 1)
        return self.stack[int(k)] * (1 - float(w)) + self.stack[k1] * float(w)

    def in_focus(self, defocus: float = 0.0) -> EmpiricalPSF:
        """A PSF for 2D localization (``z_dependent`` False: the model learns x and y only).

        ``defocus`` 0: one slice, this PSF at z = 0. ``defocus`` > 0 (nm): the slices within
        ``±defocus`` of focus (clipped to the calibrated range), so that a simulator draws
        emitters out of focus as real 2D data have them (a sample is thicker than the depth of
        field); the model still reports x and y only. A model trained on the in-focus slice
        alone splits spots 300 nm out of focus into two localizations (docs/benchmarks.md)."""
        d = float(defocus)
        if not (math.isfinite(d) and d >= 0):
            raise InputError(f"defocus must be a distance >= 0 nm, got {defocus!r}")
        if d == 0 or self.stack.shape[0] == 1:
            return EmpiricalPSF(self.slice_at(0.0)[None], self.pixel_size, self.z_step, 0.0, pad=self.pad,
                                meta={**self.meta, "slice": "in focus (z = 0)"})
        zi = self.z0 + self.z_step * torch.arange(self.stack.shape[0], dtype=torch.float64)
        keep = torch.nonzero(zi.abs() <= d + 1e-6 * self.z_step).flatten()
        if len(keep) < 2:
            raise InputError(f"defocus {d:g} nm holds fewer than two slices of the {self.z_step:g} nm z-stack")
        first, last = int(keep[0]), int(keep[-1])
        return EmpiricalPSF(self.stack[first:last + 1], self.pixel_size, self.z_step, float(zi[first]), pad=self.pad,
                            meta={**self.meta, "slice": f"in focus +- {d:g} nm (2D)"}, lateral=True)

    def to_dict(self) -> dict[str, Any]:
        """Plain description (the stack as a tensor) for self-describing model files."""
        return {"kind": "empirical", "stack": self.stack.clone(), "pixel_size": self.pixel_size,
                "z_step": self.z_step, "z0": self.z0, "pad": self.pad, "meta": dict(self.meta),
                **({"lateral": True} if self.lateral else {})}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EmpiricalPSF:
        return cls(d["stack"], pixel_size=d["pixel_size"], z_step=d["z_step"], z0=d["z0"],
                   pad=d.get("pad", 2), meta=d.get("meta"), lateral=bool(d.get("lateral", False)))

    def __repr__(self) -> str:
        Z, P, _ = self.stack.shape
        return (f"EmpiricalPSF({Z} slices of {P}x{P} px, {self.pixel_size:g} nm/px, "
                f"z {self.z_range[0]:g}..{self.z_range[1]:g} nm{', 2D' if self.lateral else ''})")
