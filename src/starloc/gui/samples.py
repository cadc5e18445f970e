"""Sample data for napari (npe2 ``sample_data`` contributions): small, seeded, with ground truth.

Every function returns a list with one napari layer data tuple ``(data, kwargs, "image")``.
The LodeSTAR images are float32 photon counts simulated by :mod:`starloc.sim` (Poisson noise,
SNR convention of that module). The DeepLoco samples are camera data: the bead z-stack bundled
with the package and an SMLM stack simulated from it (uint16 ADU, the SMLM Challenge 2016
EMCCD), in physical units (nm). The true object positions travel with the layer in
``layer.metadata["ground_truth"]``; for the LodeSTAR samples:

* units: pixels of the image, in napari's axis order ``(row, col)`` (``(frame, particle, (row,
  col))`` for the time-lapse), pixel centres at integer coordinates, frames 0-based;
* the same numbers for every call (fixed seeds), so tests and tutorials can rely on them.

The images are computed on demand (each takes well under a second).
"""

from __future__ import annotations

import numpy as np
from scipy import special

from starloc import sim

#: Fixed seeds of the samples (changing one changes the documented ground truth).
SEEDS = {"single-particle": 2022, "diffusing-particles": 7, "cell-like-blobs": 11, "membrane-cells": 5,
         "smlm-astigmatic": 3, "hologram": 0}

_UNITS = "pixels; (row, col) with pixel centres at integers"


def single_particle() -> list[tuple]:
    """One 64x64 image with one point particle (Gaussian, sigma 1.5 px) within 3 px of the
    centre at SNR 10. Ground truth: (1, 2) array (row, col) in px."""
    images, truth, _ = sim.simulate_single("point", snr=10, n=1, size=64, max_offset=3.0,
                                           rng=SEEDS["single-particle"])
    meta = {"ground_truth": truth, "units": _UNITS, "shape": "point", "snr": 10.0}
    return [(images[0], {"name": "single particle", "metadata": meta}, "image")]


def diffusing_particles() -> list[tuple]:
    """Time-lapse of 10 frames of 128x128 with 12 point particles in Brownian motion
    (D = 1 px^2/frame) at SNR 10. Ground truth: tracks (T, N, 2) = (10, 12, 2), (row, col) in
    px; ``tracks[t]`` are the positions in frame t."""
    stack, tracks = sim.simulate_timelapse(
        n_frames=10, n_particles=12, size=(128, 128), diffusion=1.0, shape="point", snr=10,
        rng=SEEDS["diffusing-particles"],
    )
    meta = {
        "ground_truth": tracks,
        "units": _UNITS + "; axis 0 of the tracks is the frame (0-based), axis 1 the particle",
        "shape": "point",
        "snr": 10.0,
        "diffusion_px2_per_frame": 1.0,
    }
    return [(stack, {"name": "diffusing particles", "metadata": meta}, "image")]


def _place_blobs(n: int, size: int, radii: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random centres for blobs of the given radii: inside the image by one radius, and each
    pair apart by the sum of their radii plus 2 px (so no two blobs overlap)."""
    positions = np.empty((0, 2))
    for radius in radii:
        for _ in range(10_000):
            candidate = rng.uniform(radius, size - 1 - radius, size=2)
            gaps = np.hypot(*(positions - candidate).T) - radii[: len(positions)]
            if np.all(gaps >= radius + 2):
                positions = np.vstack([positions, candidate])
                break
        else:  # pragma: no cover - the fixed seed below places every blob
            raise RuntimeError("could not place the sample blobs")
    return positions


def _gaussian_blobs(size: int, centers: np.ndarray, sigmas: np.ndarray,
                    amplitudes: np.ndarray) -> np.ndarray:
    """Noiseless sum of isotropic Gaussian blobs, integrated over each pixel (exact): the pixel
    value is the mean of amplitude * exp(-r^2 / (2 sigma^2)) over the pixel's area."""
    edges = np.arange(size + 1) - 0.5  # pixel edges; pixel centres at integers
    image = np.zeros((size, size))
    for (row, col), sigma, amplitude in zip(centers, sigmas, amplitudes):
        # 1D integrals of exp(-x^2 / (2 sigma^2)) over each pixel
        along_row = np.diff(special.ndtr((edges - row) / sigma)) * sigma * np.sqrt(2 * np.pi)
        along_col = np.diff(special.ndtr((edges - col) / sigma)) * sigma * np.sqrt(2 * np.pi)
        image += amplitude * np.outer(along_row, along_col)
    return image


def cell_like_blobs() -> list[tuple]:
    """A 256x256 scene of 25 non-overlapping Gaussian blobs of varied size (sigma 1.5-5 px) and
    brightness (peak 0.3-1 of the SNR-10 scale) with Poisson noise (background 0.1).

    Ground truth in the metadata: ``ground_truth`` (25, 2) centres (row, col) in px, plus
    ``sigma`` (25,) in px and ``amplitude`` (25,) (peak of each blob before noise, in the units
    of :func:`starloc.sim.add_poisson_noise`'s profile).
    """
    rng = np.random.default_rng(SEEDS["cell-like-blobs"])
    n, size, snr = 25, 256, 10.0
    sigmas = rng.uniform(1.5, 5.0, size=n)
    amplitudes = rng.uniform(0.3, 1.0, size=n)
    radii = 3 * sigmas
    positions = _place_blobs(n, size, radii, rng)
    profile = _gaussian_blobs(size, positions, sigmas, amplitudes)
    image = sim.add_poisson_noise(profile, snr, rng=rng)
    meta = {
        "ground_truth": positions,
        "sigma": sigmas,
        "amplitude": amplitudes,
        "units": _UNITS,
        "snr": snr,
    }
    return [(image, {"name": "cell-like blobs", "metadata": meta}, "image")]


def _rings(size: int, centers: np.ndarray, radii: np.ndarray, width: float = 1.5,
           supersample: int = 4) -> np.ndarray:
    """Noiseless thin rings (Gaussian cross-section of standard deviation ``width`` px, peak
    1), averaged over each pixel by supersampling, each rendered in its own window."""
    image = np.zeros((size, size))
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    for (row, col), radius in zip(centers, radii):
        reach = int(np.ceil(radius + 5 * width))
        r0, c0 = max(0, int(row) - reach), max(0, int(col) - reach)
        r1, c1 = min(size, int(row) + reach + 2), min(size, int(col) + reach + 2)
        rows = (np.arange(r0, r1)[:, None] + offsets[None, :]).ravel()
        cols = (np.arange(c0, c1)[:, None] + offsets[None, :]).ravel()
        dist = np.hypot(rows[:, None] - row, cols[None, :] - col)
        ring = np.exp(-((dist - radius) ** 2) / (2 * width**2))
        ring = ring.reshape(r1 - r0, supersample, c1 - c0, supersample).mean(axis=(1, 3))
        image[r0:r1, c0:c1] = np.maximum(image[r0:r1, c0:c1], ring)
    return image


def membrane_cells() -> list[tuple]:
    """A 384x384 scene of 12 membrane-stained cells: thin bright rings of radius 20-26 px
    (40-52 px across, twice the network's receptive field) at SNR 10, Poisson noise
    (background 0.1), no two touching. LodeSTAR needs ``Downsample`` 3 for them (see the
    guide). Ground truth: ``ground_truth`` (12, 2) centres (row, col) in px, ``radius`` (12,)
    in px."""
    rng = np.random.default_rng(SEEDS["membrane-cells"])
    n, size, snr = 12, 384, 10.0
    radii = rng.uniform(20.0, 26.0, size=n)
    positions = _place_blobs(n, size, radii + 3, rng)
    image = sim.add_poisson_noise(_rings(size, positions, radii), snr, rng=rng)
    meta = {"ground_truth": positions, "radius": radii, "units": _UNITS, "snr": snr}
    return [(image, {"name": "membrane cells", "metadata": meta}, "image")]


def hologram() -> list[tuple]:
    """A 256x256 hologram of 20 small scatterers at z -2..3 µm from the focal plane and of
    amplitude 0.5-2, as the scattered complex field: a (2, 256, 256) float32 layer, real and
    imaginary parts on the first axis (the layer's metadata says so, and the LodeSTAR widget
    then reads it as one 2-channel image), 114 nm pixels (scale, in nm), 633 nm light in water
    (``metadata["optics"]``); the simulation of ``starloc demo --method holography``.

    Ground truth: ``ground_truth`` (20, 4) ``(row, col, z_um, amplitude)``: (row, col) in
    pixels as the other LodeSTAR samples, z in µm (positive: farther from the objective)."""
    from starloc.gui.lodestar_source import CHANNELS_FIRST_KEY
    from starloc.lodestar.holography import Optics, simulate_hologram_scene

    optics = Optics(633.0, 114.0, 1.33)
    field, truth = simulate_hologram_scene(20, z_um=(-2.0, 3.0), amplitude=(0.5, 2.0), optics=optics,
                                           rng=SEEDS["hologram"])
    meta = {"ground_truth": truth, "units": _UNITS + "; z in µm; amplitude relative", "optics": optics.to_dict(),
            CHANNELS_FIRST_KEY: True, "channels": ("real", "imaginary")}
    kwargs = {"name": "hologram (real, imaginary)", "scale": (1.0, 114.0, 114.0), "units": ("pixel", "nm", "nm"),
              "metadata": meta}
    return [(field.astype(np.float32), kwargs, "image")]


def astigmatic_beads() -> list[tuple]:
    """The bead z-stack bundled with the package: one astigmatic bead of the SMLM Challenge 2016
    calibration data, (76, 40, 40) uint16 ADU, z every 20 nm from -750 nm, 100 nm pixels (the
    layer's scale, in nm). Train a DeepLoco model from it in the DeepLoco widget's Train tab."""
    import tifffile

    from starloc.deeploco.demo import BUNDLED_Z0, BUNDLED_Z_STEP, bundled_bead_stack

    stack = tifffile.imread(bundled_bead_stack())
    meta = {"z0_nm": BUNDLED_Z0, "z_step_nm": BUNDLED_Z_STEP, "pixel_size_nm": 100.0,
            "source": "SMLM Challenge 2016 bead calibration (astigmatic), Sage et al., Nat. Methods 2019"}
    kwargs = {"name": "AS bead z-stack", "scale": (BUNDLED_Z_STEP, 100.0, 100.0), "units": ("nm", "nm", "nm"),
              "metadata": meta}
    return [(stack, kwargs, "image")]


def smlm_astigmatic() -> list[tuple]:
    """An astigmatic SMLM stack to localize: 40 frames of 64x64 px (100 nm), 0.5 emitters/µm²,
    1000-7000 photons, 100 background photons/px, z uniform over ±750 nm, rendered with the
    empirical PSF of :func:`astigmatic_beads` and the challenge EMCCD (uint16 ADU, baseline 100).

    Ground truth: a dict of ``frame`` (0-based), ``x``, ``y``, ``z`` (nm; x along columns, y
    along rows, origin at the image's top-left corner, so pixel ``j``'s centre is at
    ``(j + 0.5) * 100`` nm) and ``photons``."""
    import torch

    from starloc.deeploco.camera import EMCCD
    from starloc.deeploco.demo import BUNDLED_Z0, BUNDLED_Z_STEP, bundled_bead_stack
    from starloc.deeploco.recipes import bead_psf
    from starloc.deeploco.simulate import Simulator, truth_table

    psf = bead_psf(bundled_bead_stack(), z_step=BUNDLED_Z_STEP, z0=BUNDLED_Z0)
    camera = EMCCD.smlm2016()
    sim = Simulator(psf, camera, frame_shape=(64, 64), density=0.5, photons_range=(1000.0, 7000.0),
                    background_range=(100.0, 100.0))
    g = torch.Generator().manual_seed(SEEDS["smlm-astigmatic"])
    truth = sim.sample_emitters(40, g)
    adu = camera.sample(sim.expected(truth), g).numpy().astype(np.uint16)
    frame, xyz = truth_table(truth, 3)
    photons = truth["photons"][truth["mask"]].numpy()
    meta = {"ground_truth": {"frame": frame, "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "photons": photons},
            "units": "nm, corner origin; frames 0-based", "camera": camera.to_dict(), "pixel_size_nm": 100.0}
    kwargs = {"name": "AS SMLM stack", "scale": (1.0, 100.0, 100.0), "units": ("pixel", "nm", "nm"),
              "metadata": meta}
    return [(adu, kwargs, "image")]
