"""DeepLoco through the CLI on challenge-like microtubule stacks from a simulator of their own,
with emitters at the positions the SMLM Challenge 2016 would list.

The other DeepLoco benchmarks draw test frames with starloc's own PSF model. Here the stacks
come from code that shares nothing with starloc (numpy and tifffile only), written as the
challenge draws its data from the real bead stacks (``../shared/data/smlm2016-beads/``,
``beads-AS.tif`` or, with ``--modality 2D``, ``beads-2D.tif``; slice k at z = -750 + 10 k nm,
100 nm pixels):

- PSF of an emitter at (x, y, z) nm: for each of the six beads, a 41x41 px window around the
  pixel holding the bead's TRUE position (``bead-positions.csv``), baseline 100 ADU removed,
  linearly interpolated between the two slices around z, Fourier-shifted so that the bead's
  true position lands on (x, y), its central 21x21 px normalized to unit sum; the six averaged.
- Scene: four smooth random curves across a 64x64 px field (label sites with 8 nm jitter,
  z varying slowly along each curve within +-``--z-max`` nm, default 600), two-state blinking (mean 2 frames on) at
  ``--densities`` emitters per um^2 per frame, 1000-7000 photons (uniform) per emitter and frame
  over 100 photons/px, the challenge EMCCD (QE 0.9, EM gain 300 as a Gamma register, read noise
  74.4 e-, 45 e-/ADU, baseline 100 ADU), uint16.
- Truth written as the challenge's ``activations.csv`` (1-based frames, nm).

Then only the CLI: ``starloc deeploco localize STACK --model M`` with the defaults, and ``starloc
evaluate LOCS --truth activations.csv`` (100 nm lateral, 500 nm axial; 2D models are scored
in x and y). Prints a table and one JSON line.

    python bench/deeploco_microtubules.py --out /tmp/mt --model as.pt --model as_positions.pt
    python bench/deeploco_microtubules.py --out /tmp/mt2d --modality 2D --z-max 300 --model 2d.pt
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import tifffile

from _cli import starloc  # bench/_cli.py (the script's folder is on sys.path)

BEADS = Path(__file__).resolve().parents[2] / "shared" / "data" / "smlm2016-beads"
PIXEL, SIDE, BASELINE = 100.0, 64, 100.0
HALF, PAD = 10, 20  # half sides of the PSF patch (21 px) and of the window it is shifted in (41 px)
QE, EM_GAIN, READ_NOISE, E_PER_ADU, BACKGROUND = 0.9, 300.0, 74.4, 45.0, 100.0


class BeadPSF:
    """A bead stack's PSF placed by the beads' true positions (see the docstring)."""

    def __init__(self, folder: Path, modality: str = "AS"):
        stack = tifffile.imread(folder / f"beads-{modality}.tif").astype(np.float64) - BASELINE
        beads = np.loadtxt(folder / "bead-positions.csv", delimiter=",", skiprows=1)[:, 1:3]
        self.slices = len(stack)
        spectra, fractions = [], []
        for bx, by in beads:
            j, i = int(bx // PIXEL), int(by // PIXEL)
            window = stack[:, i - PAD:i + PAD + 1, j - PAD:j + PAD + 1]
            spectra.append(np.fft.fft2(window, axes=(1, 2)))
            fractions.append((bx / PIXEL - (j + 0.5), by / PIXEL - (i + 0.5)))
        self.spectra, self.fractions = np.array(spectra), np.array(fractions)
        self.freq = np.fft.fftfreq(2 * PAD + 1)

    def patch(self, x: float, y: float, z: float) -> tuple[np.ndarray, int, int]:
        """Unit-sum 21x21 image of an emitter at (x, y, z) nm and the pixel (row, col) of its corner."""
        j, i = int(np.floor(x / PIXEL)), int(np.floor(y / PIXEL))
        fx, fy = x / PIXEL - (j + 0.5), y / PIXEL - (i + 0.5)
        s = min(max((z + 750.0) / 10.0, 0.0), self.slices - 1.0)
        k = min(int(s), self.slices - 2)
        t = s - k
        total = np.zeros((2 * HALF + 1,) * 2)
        for spectrum, (bx, by) in zip(self.spectra, self.fractions):
            f = (1 - t) * spectrum[k] + t * spectrum[k + 1]
            ramp = np.exp(-2j * np.pi * (self.freq[:, None] * (fy - by) + self.freq[None, :] * (fx - bx)))
            img = np.fft.ifft2(f * ramp).real[PAD - HALF:PAD + HALF + 1, PAD - HALF:PAD + HALF + 1]
            total += img / img.sum()
        return total / len(self.spectra), i - HALF, j - HALF


def filaments(rng, z_max: float, curves: int = 4, points: int = 20000) -> np.ndarray:
    """Label sites ``(n, 3)`` (x, y, z nm) along smooth random curves across the field, |z| <= z_max."""
    field = SIDE * PIXEL
    t = np.linspace(0, 1, points)
    sites = []
    for _ in range(curves):
        start, end = rng.uniform(0, field, 2), rng.uniform(0, field, 2)
        axis = int(rng.random() < 0.5)
        start[axis], end[axis] = 0, field
        xy = start + t[:, None] * (end - start)
        for h in (1, 2, 3):
            xy += rng.normal(0, 600 / h, 2) * np.sin(np.pi * h * t)[:, None]
        z = z_max / 600 * (rng.uniform(-250, 250) + rng.uniform(250, 350) * np.sin(
            2 * np.pi * (rng.uniform(0.3, 1.2) * t + rng.random())))
        sites.append(np.c_[xy, z])
    s = np.vstack(sites)
    s[:, :2] += rng.normal(0, 8, (len(s), 2))
    s[:, 2] = np.clip(s[:, 2] + rng.normal(0, 8, len(s)), -z_max, z_max)
    return s[((s[:, :2] >= 0) & (s[:, :2] < field)).all(1)]


def simulate(psf: BeadPSF, frames: int, density: float, seed: int, stack: Path, truth: Path,
             z_max: float = 600.0) -> int:
    """Write a uint16 stack and its activations.csv; returns the number of emitters."""
    rng = np.random.default_rng(seed)
    sites = filaments(rng, z_max)
    on_per_frame = density * (SIDE * PIXEL / 1000) ** 2
    stay = 0.5  # mean on-time 2 frames
    switch_on = on_per_frame * (1 - stay) / (len(sites) - on_per_frame)  # the steady state
    on = rng.random(len(sites)) < on_per_frame / len(sites)
    out = np.empty((frames, SIDE, SIDE), np.uint16)
    rows = []
    for f in range(frames):
        if f:
            on = np.where(on, rng.random(len(sites)) < stay, rng.random(len(sites)) < switch_on)
        photons = np.full((SIDE + 2 * HALF,) * 2, BACKGROUND)
        for x, y, z in sites[on]:
            n = rng.uniform(1000, 7000)
            p, i0, j0 = psf.patch(x, y, z)
            photons[i0 + HALF:i0 + 3 * HALF + 1, j0 + HALF:j0 + 3 * HALF + 1] += n * p
            rows.append(f"{len(rows) + 1},{f + 1},{x:.3f},{y:.3f},{z:.3f},{n:.1f}\n")
        electrons = rng.poisson(QE * photons[HALF:HALF + SIDE, HALF:HALF + SIDE])
        electrons = np.where(electrons > 0, rng.gamma(np.maximum(electrons, 1), EM_GAIN), 0.0)
        electrons += rng.normal(0, READ_NOISE, electrons.shape)
        out[f] = np.clip(np.round(electrons / E_PER_ADU + BASELINE), 0, 65535)
    tifffile.imwrite(stack, out)
    truth.write_text("Ground-truth,frame,xnano,ynano,znano,intensity\n" + "".join(rows))
    return len(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the stacks, truths and localizations")
    ap.add_argument("--model", action="append", required=True, help="model file (repeatable)")
    ap.add_argument("--modality", choices=("AS", "2D"), default="AS", help="bead stack the frames are drawn from")
    ap.add_argument("--z-max", type=float, default=600.0, help="nm: emitters lie within +-z-max of focus")
    ap.add_argument("--densities", type=float, nargs="+", default=[0.1, 1.0], help="emitters per um^2 per frame")
    ap.add_argument("--frames", type=int, nargs="+", default=[1000, 300], help="frames per density")
    ap.add_argument("--beads", type=Path, default=BEADS)
    args = ap.parse_args(argv)
    if len(args.frames) != len(args.densities):
        ap.error("give one --frames per density")
    args.out.mkdir(parents=True, exist_ok=True)
    psf = BeadPSF(args.beads, args.modality)
    rows = []
    for k, (density, frames) in enumerate(zip(args.densities, args.frames)):
        stack, truth = args.out / f"mt_{density:g}.tif", args.out / f"mt_{density:g}_activations.csv"
        emitters = simulate(psf, frames, density, seed=1 + k, stack=stack, truth=truth, z_max=args.z_max)
        for i, model in enumerate(args.model):
            locs, metrics = args.out / f"mt_{density:g}_m{i}.csv", args.out / f"mt_{density:g}_m{i}.json"
            start = time.perf_counter()
            starloc("deeploco", "localize", str(stack), "--model", model, "-o", str(locs))
            seconds = time.perf_counter() - start
            starloc("evaluate", str(locs), "--truth", str(truth), "--json", str(metrics))
            m = json.loads(metrics.read_text())
            rows.append({"density": density, "frames": frames, "emitters": emitters, "model": model,
                         "localize_s": seconds, **{key: m[key] for key in ("jaccard", "recall", "precision",
                                                                          "rmse_lateral", "rmse_axial",
                                                                          "mean_offset")}})
    print(f"# DeepLoco via the CLI on challenge-like {args.modality} microtubule stacks (independent simulator, "
          f"real bead PSF at the beads' true positions, |z| <= {args.z_max:g} nm, challenge EMCCD); 100 nm "
          "lateral, 500 nm axial")
    print(f"{'density':>7s} {'frames':>6s} {'model':28s} {'Jaccard':>8s} {'recall':>7s} {'precis.':>7s} "
          f"{'RMSE xy':>8s} {'RMSE z':>7s}  mean offset x, y, z (nm)")
    for r in rows:
        off = ", ".join(f"{v:+.1f}" for v in r["mean_offset"])
        axial = "-" if r["rmse_axial"] is None else f"{r['rmse_axial']:.1f}"  # 2D: no z
        print(f"{r['density']:7g} {r['frames']:6d} {Path(r['model']).name[:28]:28s} {r['jaccard']:8.3f} "
              f"{r['recall']:7.3f} {r['precision']:7.3f} {r['rmse_lateral']:8.1f} {axial:>7s}  {off}")
    print(json.dumps({"bench": "deeploco_microtubules", "machine": platform.node(), "modality": args.modality,
                      "z_max": args.z_max, "results": rows}))


if __name__ == "__main__":
    main()
