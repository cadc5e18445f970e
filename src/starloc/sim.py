"""Simulated microscopy images of single objects, scenes and time-lapses.

This is the benchmark setting of LodeSTAR (Midtvedt et al. 2022, Fig. 1g-k): 64x64 images
with one object within a few pixels of the centre, five object shapes and Poisson noise.

Conventions
-----------
* Coordinates are (row, col) in pixels; pixel centres lie at integer positions, so pixel
  (0, 0) covers [-0.5, 0.5] x [-0.5, 0.5] and the centre of a 64x64 image is (31.5, 31.5).
* Angles are in radians, measured from the +col axis towards the +row axis.
* The *profile* of an object is its continuous intensity (shape convolved with its blur),
  scaled so that its maximum is exactly 1. Rendered images hold the mean of the profile over
  each pixel's area (pixel integration), so a pixel value never exceeds 1 and the brightness
  does not depend on the sub-pixel position or the angle.
* SNR convention: a background of 0.1 is added to the profile, everything is scaled by
  SNR**2 photons and Poisson noise is drawn::

      image = Poisson(SNR**2 * (profile + 0.1))

  so the object peak carries SNR**2 photons above a background of 0.1 * SNR**2 photons per
  pixel. Returned images are float32 photon counts.

Shapes (geometry in pixels)
---------------------------
* ``point``: 2D Gaussian, sigma 1.5 (no extra blur).
* ``sphere``: projected sphere, I ~ sqrt(1 - r**2 / R**2), R = 4, Gaussian blur sigma 1.
* ``annulus``: uniform ring, inner radius 3, outer radius 5, blur sigma 1.
* ``ellipse``: uniform filled ellipse, semi-axes 6 (along ``angle``) and 3, blur sigma 1.
* ``crescent``: disc of radius 5 minus a disc of radius 4 whose centre is shifted by 2 px in
  the direction ``angle``, blur sigma 1. Its position is the centre of the outer disc.

Rendering is exact in the sub-pixel position (pixel values accurate to ~1e-13), each object
in a local 32x32 window. Shapes with an analytic Fourier transform are rendered from it,
multiplied by the transforms of the Gaussian blur and of the square pixel and shifted by a
phase factor; the aliased frequencies are summed explicitly and the blur makes the omitted
ones negligible (< 1e-18). The crescent (whose transform has no closed form) is the integral
of the separable blur-and-pixel kernel over the shape, turned by Green's theorem into a
contour integral along its two circular arcs and evaluated by Gauss-Legendre quadrature.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import special

SHAPES = ("point", "sphere", "annulus", "ellipse", "crescent")

#: Extent of each shape in px (distance from its position to the edge of the unblurred shape;
#: 3 sigma for the Gaussian point).
SHAPE_RADIUS = {"point": 4.5, "sphere": 4.0, "annulus": 5.0, "ellipse": 6.0, "crescent": 5.0}

_POINT_SIGMA = 1.5
_BLUR_SIGMA = 1.0
_SPHERE_RADIUS = 4.0
_ANNULUS_RADII = (3.0, 5.0)
_ELLIPSE_AXES = (6.0, 3.0)
_CRESCENT_RADII = (5.0, 4.0)
_CRESCENT_SHIFT = 2.0

_WINDOW = 32  # side of the local render window in px; holds every blurred shape
_CHUNK = 64  # objects rendered per vectorized batch (bounds the memory use)
_ALIASES = np.array([(mr, mc) for mr in (-1, 0, 1) for mc in (-1, 0, 1)], dtype=float)
_QUADRATURE = np.polynomial.legendre.leggauss(64)  # nodes per boundary arc of the crescent

Rng = np.random.Generator | int | None


def _check_shape(shape: str) -> None:
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")


def _as_size(size: int | tuple[int, int]) -> tuple[int, int]:
    if np.isscalar(size):
        return int(size), int(size)
    height, width = size
    return int(height), int(width)


def _disc_ft(radius: float, k: np.ndarray) -> np.ndarray:
    """Fourier transform of a uniform disc of value 1 at radial frequency k (cycles/px)."""
    q = radius * k
    safe = np.where(q == 0, 1.0, q)
    return radius**2 * np.where(q == 0, np.pi, special.j1(2 * np.pi * safe) / safe)


def _sphere_ft(radius: float, k: np.ndarray) -> np.ndarray:
    """Fourier transform of sqrt(1 - r**2 / R**2) (projected sphere, peak 1)."""
    x = 2 * np.pi * radius * k
    safe = np.where(x == 0, 1.0, x)
    return 2 * np.pi * radius**2 * np.where(x == 0, 1 / 3, special.spherical_jn(1, safe) / safe)


def _raw_spectrum(shape: str, kr: np.ndarray, kc: np.ndarray, angle) -> np.ndarray:
    """Fourier transform of the blurred, unnormalized shape centred at the origin.

    For every shape but the crescent. kr, kc: frequencies in cycles/px along row and col;
    angle broadcasts against them. Convention: F(k) = integral of f(x) exp(-2 pi i k.x) dx.
    """
    k = np.hypot(kr, kc)
    if shape == "point":
        return 2 * np.pi * _POINT_SIGMA**2 * np.exp(-2 * (np.pi * _POINT_SIGMA * k) ** 2)
    blur = np.exp(-2 * (np.pi * _BLUR_SIGMA * k) ** 2)
    if shape == "sphere":
        return _sphere_ft(_SPHERE_RADIUS, k) * blur
    if shape == "annulus":
        return (_disc_ft(_ANNULUS_RADII[1], k) - _disc_ft(_ANNULUS_RADII[0], k)) * blur
    a, b = _ELLIPSE_AXES
    along = np.sin(angle) * kr + np.cos(angle) * kc
    across = np.cos(angle) * kr - np.sin(angle) * kc
    return a * b * _disc_ft(1.0, np.hypot(a * along, b * across)) * blur


def _fourier_windows(shape: str, local: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Pixel-integrated, unnormalized objects at positions `local` (n, 2) in their windows.

    Sums the aliased spectrum (pixel box and blur included) and inverts it with an FFT; the
    window is periodic but large enough that the wrapped tails are negligible.
    """
    freq = np.fft.fftfreq(_WINDOW)
    kr = freq[None, :, None] + _ALIASES[:, 0, None, None]  # (alias, row, 1)
    kc = freq[None, None, :] + _ALIASES[:, 1, None, None]  # (alias, 1, col)
    pos = local[:, :, None, None, None]
    row_phase = np.exp(-2j * np.pi * kr * pos[:, 0])
    col_phase = np.exp(-2j * np.pi * kc * pos[:, 1])
    spectrum = _raw_spectrum(shape, kr, kc, angles[:, None, None, None]) * np.sinc(kr) * np.sinc(kc)
    return np.fft.ifft2((spectrum * row_phase * col_phase).sum(axis=1)).real


def _blur_cdf(z: np.ndarray) -> np.ndarray:
    return special.ndtr(z / _BLUR_SIGMA)


def _blur_pdf(z: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * (z / _BLUR_SIGMA) ** 2) / (_BLUR_SIGMA * np.sqrt(2 * np.pi))


def _blur_cdf_integral(z: np.ndarray) -> np.ndarray:
    """Antiderivative of _blur_cdf."""
    return z * _blur_cdf(z) + _BLUR_SIGMA**2 * _blur_pdf(z)


def _pixel_edges(centres: np.ndarray) -> np.ndarray:
    """Edges (n, P + 1) of consecutive unit pixels with centres (n, P)."""
    return np.concatenate([centres - 0.5, centres[:, -1:] + 0.5], axis=1)


def _crescent_profile(
    centers: np.ndarray, angles: np.ndarray, rows: np.ndarray, cols: np.ndarray, pixel: bool
) -> np.ndarray:
    """Blurred, unnormalized crescents on grids rows (n, P) x cols (n, Q) -> (n, P, Q).

    With a separable kernel g(row) g(col), Green's theorem turns the integral over the shape
    into the contour integral of g(x_r - p) G(x_c - q) dp along its boundary (p, q), where G
    is the integral of g: the outer arc counter-clockwise and the inner arc clockwise, both
    smooth in their polar angle, so Gauss-Legendre quadrature is exact to ~1e-14.
    pixel: average over unit pixels centred on the grid (consecutive integers); otherwise
    sample the continuous profile at the grid points.
    """
    outer, inner, shift = *_CRESCENT_RADII, _CRESCENT_SHIFT
    axis = np.pi / 2 - angles  # symmetry axis as a polar angle from +row towards +col
    symmetry_axis = np.stack([np.sin(angles), np.cos(angles)], axis=-1)
    nodes, weights = _QUADRATURE
    arcs = []
    crossing = (outer**2 - inner**2 + shift**2) / (2 * shift)  # along the axis, from the centre
    for center, radius, along, sign in (
        (centers, outer, crossing, 1.0),
        (centers + shift * symmetry_axis, inner, crossing - shift, -1.0),
    ):
        half_gap = np.arccos(along / radius)  # angle from the axis to the circle crossings
        span = 2 * np.pi - 2 * half_gap
        t = axis[:, None] + half_gap + (nodes + 1) / 2 * span
        dp = -sign * radius * np.sin(t) * weights * span / 2
        arcs.append((center[:, :1] + radius * np.cos(t), center[:, 1:] + radius * np.sin(t), dp))
    p, q, dp = (np.concatenate(part, axis=1) for part in zip(*arcs))
    if pixel:
        row_edges, col_edges = _pixel_edges(rows)[:, :, None], _pixel_edges(cols)[:, :, None]
        row_factor = np.diff(_blur_cdf(row_edges - p[:, None, :]), axis=1)
        col_factor = np.diff(_blur_cdf_integral(col_edges - q[:, None, :]), axis=1)
    else:
        row_factor = _blur_pdf(rows[:, :, None] - p[:, None, :])
        col_factor = _blur_cdf(cols[:, :, None] - q[:, None, :])
    return (row_factor * dp[:, None, :]) @ col_factor.transpose(0, 2, 1)


def _continuous_grid(shape: str, step: float) -> np.ndarray:
    """The blurred, unnormalized shape (angle 0) sampled on a grid of spacing `step` px."""
    if shape == "crescent":
        coords = np.arange(-8.0, 8.0, step)[None]
        return _crescent_profile(np.zeros((1, 2)), np.zeros(1), coords, coords, pixel=False)[0]
    freq = np.fft.fftfreq(int(_WINDOW / step), d=step)
    return np.fft.ifft2(_raw_spectrum(shape, freq[:, None], freq[None, :], 0.0)).real / step**2


@lru_cache(maxsize=None)
def _peak(shape: str) -> float:
    """Maximum of the continuous blurred shape (to ~1e-7), from a 1/16 px grid refined by
    parabolas. A fixed constant per shape, so the rendering stays exact."""
    profile = _continuous_grid(shape, 1 / 16)
    i, j = np.unravel_index(np.argmax(profile), profile.shape)
    best = profile[i, j]
    for left, mid, right in (np.roll(profile[:, j], 1 - i)[:3], np.roll(profile[i, :], 1 - j)[:3]):
        curvature = left - 2 * mid + right
        if curvature < 0:
            best = max(best, mid - (right - left) ** 2 / (8 * curvature))
    return float(best)


def _windows(shape: str, centers: np.ndarray, angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-integrated profiles (peak-normalized) of objects, each in a _WINDOW^2 window.

    Returns windows (n, _WINDOW, _WINDOW) and the integer (row, col) image position of each
    window's pixel (0, 0).
    """
    origins = np.rint(centers).astype(int) - _WINDOW // 2
    local = centers - origins  # object position inside its window, px
    pixels = np.arange(_WINDOW, dtype=float)
    windows = np.empty((len(centers), _WINDOW, _WINDOW))
    for start in range(0, len(centers), _CHUNK):
        part = slice(start, start + _CHUNK)
        if shape == "crescent":
            grid = np.broadcast_to(pixels, (len(local[part]), _WINDOW))
            windows[part] = _crescent_profile(local[part], angles[part], grid, grid, pixel=True)
        else:
            windows[part] = _fourier_windows(shape, local[part], angles[part])
    return np.maximum(windows / _peak(shape), 0.0), origins


def _paste(image: np.ndarray, window: np.ndarray, origin: np.ndarray) -> None:
    """Add window to image (2D) at origin, clipping whatever falls outside the image."""
    r0, c0 = origin
    r1, c1 = r0 + window.shape[0], c0 + window.shape[1]
    rs, cs = max(r0, 0), max(c0, 0)
    re, ce = min(r1, image.shape[0]), min(c1, image.shape[1])
    if rs < re and cs < ce:
        image[rs:re, cs:ce] += window[rs - r0 : re - r0, cs - c0 : ce - c0]


def _as_centers(centers, angles) -> tuple[np.ndarray, np.ndarray]:
    centers = np.asarray(centers, dtype=float).reshape(-1, 2)
    if not np.all(np.isfinite(centers)):
        raise ValueError("object centers must be finite")
    if angles is None:
        angles = np.zeros(len(centers))
    angles = np.broadcast_to(np.asarray(angles, dtype=float), (len(centers),))
    return centers, angles


def render(shape: str, size: int | tuple[int, int], centers, angles=None) -> np.ndarray:
    """Noiseless image (float64) of the pixel-integrated profiles of objects, which add up.

    shape: one of SHAPES. size: (H, W) or an int for a square image.
    centers: (N, 2) object positions (row, col) in px; objects may lie partly outside.
    angles: (N,) radians from +col towards +row (default 0); ignored by round shapes.
    """
    _check_shape(shape)
    centers, angles = _as_centers(centers, angles)
    image = np.zeros(_as_size(size))
    windows, origins = _windows(shape, centers, angles)
    for window, origin in zip(windows, origins):
        _paste(image, window, origin)
    return image


def add_poisson_noise(
    profile: np.ndarray, snr: float, background: float = 0.1, rng: Rng = None
) -> np.ndarray:
    """Photon counts Poisson(snr**2 * (profile + background)) as float32 (see module docstring)."""
    if snr <= 0:
        raise ValueError(f"snr must be positive, got {snr}")
    rng = np.random.default_rng(rng)
    return rng.poisson(snr**2 * (np.asarray(profile) + background)).astype(np.float32)


def simulate_single(
    shape: str,
    snr: float,
    n: int,
    size: int = 64,
    max_offset: float = 3.0,
    rng: Rng = None,
    random_angle: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n noisy images (n, size, size) float32, each with one object near the centre.

    Each object lies uniformly within +-max_offset px of the image centre (size - 1) / 2 on
    each axis, with angle U(0, 2 pi) if random_angle else 0.
    Returns images, true positions (n, 2) (row, col) float64 and angles (n,) in radians.
    """
    _check_shape(shape)
    rng = np.random.default_rng(rng)
    truth = (size - 1) / 2 + rng.uniform(-max_offset, max_offset, size=(n, 2))
    angles = rng.uniform(0, 2 * np.pi, size=n) if random_angle else np.zeros(n)
    profiles = np.zeros((n, size, size))
    windows, origins = _windows(shape, truth, angles)
    for profile, window, origin in zip(profiles, windows, origins):
        _paste(profile, window, origin)
    return add_poisson_noise(profiles, snr, rng=rng), truth, angles


def _place(
    n: int, size: tuple[int, int], min_distance: float, margin: float, rng: np.random.Generator
) -> np.ndarray:
    """n random positions at least min_distance apart and margin px inside the image."""
    low = np.array([margin, margin])
    high = np.array([size[0] - 1 - margin, size[1] - 1 - margin])
    if np.any(high < low) and n > 0:
        raise ValueError(f"margin {margin} px leaves no room in an image of size {size}")
    positions = np.empty((0, 2))
    for _ in range(100 * n):
        if len(positions) == n:
            break
        candidate = rng.uniform(low, high)
        if np.all(np.hypot(*(positions - candidate).T) >= min_distance):
            positions = np.vstack([positions, candidate])
    if len(positions) < n:
        raise ValueError(
            f"could place only {len(positions)} of {n} objects {min_distance} px apart in an "
            f"image of size {size} (margin {margin} px); use fewer objects, a larger image or "
            "a smaller min_distance"
        )
    return positions


def simulate_scene(
    shape: str,
    n_objects: int,
    size: int | tuple[int, int] = (256, 256),
    snr: float = 10,
    min_distance: float | None = None,
    margin: float | None = None,
    rng: Rng = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One noisy image (float32) with n_objects non-overlapping objects at random positions.

    min_distance: smallest centre-to-centre distance in px (default 2 * SHAPE_RADIUS + 4).
    margin: smallest distance from a centre to the image border (pixel centres) in px
    (default SHAPE_RADIUS). Raises ValueError when the objects cannot be placed.
    Returns image, positions (N, 2) (row, col) and angles (N,) in radians.
    """
    _check_shape(shape)
    rng = np.random.default_rng(rng)
    size = _as_size(size)
    radius = SHAPE_RADIUS[shape]
    min_distance = 2 * radius + 4 if min_distance is None else min_distance
    margin = radius if margin is None else margin
    positions = _place(n_objects, size, min_distance, margin, rng)
    angles = rng.uniform(0, 2 * np.pi, size=n_objects)
    image = add_poisson_noise(render(shape, size, positions, angles), snr, rng=rng)
    return image, positions, angles


def _reflect(x: np.ndarray, low, high) -> np.ndarray:
    """Fold positions into [low, high] (broadcasting) by mirror reflection at both ends."""
    span = high - low
    y = np.mod(x - low, 2 * span)
    return low + np.where(y > span, 2 * span - y, y)


def simulate_timelapse(
    n_frames: int,
    n_particles: int,
    size: int | tuple[int, int] = (128, 128),
    diffusion: float = 1.0,
    shape: str = "point",
    snr: float = 10,
    rng: Rng = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Noisy time-lapse (T, H, W) float32 of particles in Brownian motion, and their tracks.

    Steps are normal with std sqrt(2 * diffusion) px per axis per frame (diffusion in
    px**2/frame); positions are reflected at SHAPE_RADIUS px inside the border. Each particle
    keeps a random angle. Returns stack and tracks (T, N, 2) (row, col) in px.
    """
    _check_shape(shape)
    rng = np.random.default_rng(rng)
    height, width = _as_size(size)
    margin = SHAPE_RADIUS[shape]
    high = np.array([height, width]) - 1 - margin
    start = rng.uniform(margin, high, size=(n_particles, 2))
    steps = rng.normal(0.0, np.sqrt(2 * diffusion), size=(n_frames - 1, n_particles, 2))
    free = np.concatenate([start[None], start + np.cumsum(steps, axis=0)])
    tracks = _reflect(free, margin, high)
    angles = rng.uniform(0, 2 * np.pi, size=n_particles)
    profiles = np.zeros((n_frames, height, width))
    windows, origins = _windows(shape, tracks.reshape(-1, 2), np.tile(angles, n_frames))
    for frame, window, origin in zip(np.repeat(np.arange(n_frames), n_particles), windows, origins):
        _paste(profiles[frame], window, origin)
    return add_poisson_noise(profiles, snr, rng=rng), tracks


def cramer_rao_bound(
    shape: str,
    snr: float,
    size: int = 64,
    angle: float = 0.0,
    background: float = 0.1,
    center=None,
) -> float:
    """Per-axis Cramer-Rao bound (px) for the (row, col) position of one object.

    Poisson noise with mean mu = snr**2 * (profile + background) per pixel; Fisher information
    I_ij = sum over pixels of (d mu / d theta_i)(d mu / d theta_j) / mu, with derivatives by
    central differences of `render` (exact, so a 1e-3 px step is accurate to ~1e-6).
    Returns sqrt(trace(I^-1) / 2). center defaults to the image centre (size - 1) / 2.
    """
    _check_shape(shape)
    center = np.full(2, (size - 1) / 2) if center is None else np.asarray(center, dtype=float)
    step = 1e-3
    mu = snr**2 * (render(shape, size, center, angle) + background)
    grads = [
        snr**2
        * (render(shape, size, center + d, angle) - render(shape, size, center - d, angle))
        / (2 * step)
        for d in step * np.eye(2)
    ]
    inv_mu = np.divide(1.0, mu, out=np.zeros_like(mu), where=mu > 0)
    fisher = np.array([[np.sum(gi * gj * inv_mu) for gj in grads] for gi in grads])
    return float(np.sqrt(np.trace(np.linalg.inv(fisher)) / 2))
