"""DeepLoco on emitters along filaments, as in the microtubule data of the SMLM Challenge 2016,
against the same number of emitters scattered uniformly (the accuracy bench's frames).

Labelled structures put emitters close together along their lines: at the same emitters per
µm² of frame, many more have a neighbour within a PSF's width. This bench measures what that
costs, so that the densities of the uniform benchmarks can be read for real samples.

Test frames: ``--frame-size`` px (default 128) at 100 nm, emitters from the SMLM Challenge 2016
bead stack of ``--modality`` (AS: z over -750..750 nm; 2D: its in-focus slice), 1000-7000
photons over 100 photons/px, the challenge EMCCD. For each density, the same per-frame emitter
counts, photons and camera-noise seed twice:

- ``uniform``: positions (and z) uniform over the frame, as the training simulator draws them;
- ``filaments``: ``--filaments`` worm-like chains per frame (persistence length 1-10 µm, 13 µm
  long, reflected at the frame's edges so that they stay in it; z drifts along each by 10 nm per
  40 nm step from a uniform start), each emitter at a random point of a random filament, 15 nm
  away from it (the linkage) in x, y and z.

Also printed: the share of emitters with another within 250 nm (``near``), the crowding that
decides. Scored as in ``bench/deeploco_accuracy.py`` (100 nm lateral, 500 nm axial). One row per
model, density and layout; prints a table and one JSON line.

    python bench/deeploco_filaments.py --model model.pt --modality 2D
"""

from __future__ import annotations

import argparse
import json
import math
import platform
from pathlib import Path

import numpy as np
import torch
from deeploco_accuracy import CAMERA, comparison_options, score  # bench/deeploco_accuracy.py (the script's folder is on sys.path)
from scipy.spatial import cKDTree

from starloc.deeploco import Simulator
from starloc.deeploco.model import DeepLoco
from starloc.deeploco.recipes import bead_psf
from starloc.deeploco.stack import localize_stack

#: nm between the points of a filament, and points per filament (13 µm)
STEP, POINTS = 40.0, 320
#: nm: how far an emitter sits from its filament (antibody linkage), per axis
LINKAGE = 15.0


def reflect(v: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Fold values into [lo, hi] by reflection at its ends (a path leaving the frame comes back)."""
    span = hi - lo
    r = torch.remainder(v - lo, 2 * span)
    return lo + torch.where(r > span, 2 * span - r, r)


def on_filaments(truth: dict, size_nm: float, z_range: tuple[float, float] | None, filaments: int,
                 g: torch.Generator) -> dict:
    """The same emitters (counts, photons) moved onto ``filaments`` random worm-like chains per
    frame (module docstring); positions in nm, corner origin."""
    B, N = truth["x"].shape
    F, S = filaments, POINTS

    def u(*shape):
        return torch.rand(*shape, generator=g)

    persistence = 1000.0 + 9000.0 * u(B, F, 1)
    angle = 2 * math.pi * u(B, F, 1) + torch.cumsum(torch.randn(B, F, S, generator=g) * torch.sqrt(STEP / persistence),
                                                    -1)
    start = size_nm * u(B, F, 1, 2)
    path = start + torch.cumsum(STEP * torch.stack([angle.cos(), angle.sin()], -1), 2)
    point = (torch.minimum((u(B, N) * F).long(), torch.tensor(F - 1)) * S
             + torch.randint(0, S, (B, N), generator=g))  # a random point of a random filament
    jitter = torch.randn(B, N, 3, generator=g) * LINKAGE
    out = dict(truth)
    zero = torch.zeros(())
    for axis, k in (("x", 0), ("y", 1)):
        moved = reflect(path[..., k].reshape(B, -1).gather(1, point) + jitter[..., k], 0.0, size_nm)
        out[axis] = torch.where(truth["mask"], moved, zero)
    if z_range is not None:
        lo, hi = z_range
        z = reflect(lo + (hi - lo) * u(B, F, 1) + torch.cumsum(torch.randn(B, F, S, generator=g) * 10.0, -1), lo, hi)
        moved = reflect(z.reshape(B, -1).gather(1, point) + jitter[..., 2], lo, hi)
        out["z"] = torch.where(truth["mask"], moved, zero)
    return out


def near_share(truth: dict, radius: float = 250.0) -> float:
    """Share of the emitters with another emitter of their frame within ``radius`` nm (laterally)."""
    near = total = 0
    for b in range(truth["x"].shape[0]):
        keep = truth["mask"][b].numpy()
        points = np.stack([truth["x"][b].numpy()[keep], truth["y"][b].numpy()[keep]], 1)
        total += len(points)
        if len(points) > 1:
            d, _ = cKDTree(points).query(points, k=2)
            near += int((d[:, 1] < radius).sum())
    return near / max(total, 1)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    comparison_options(ap, seed=7)
    ap.add_argument("--modality", choices=("AS", "2D"), default="2D")
    ap.add_argument("--densities", type=float, nargs="+", default=[0.1, 0.5, 2.0], help="emitters/µm² of frame")
    ap.add_argument("--filaments", type=int, default=8, help="filaments per frame")
    ap.add_argument("--emitters", type=int, default=3000, help="about this many true emitters per density")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    psf = bead_psf(args.beads / f"beads-{args.modality}.tif", modality=args.modality)
    dim = 3 if psf.z_dependent else 2
    size = args.frame_size
    size_nm = size * psf.pixel_size
    z_range = (-750.0, 750.0) if dim == 3 else None
    models = {path: DeepLoco.load(path) for path in args.model}
    results = []
    for density in args.densities:
        sim = Simulator(psf, CAMERA, frame_shape=(size, size), density=density, photons_range=(1000.0, 7000.0),
                        background_range=(100.0, 100.0), z_range=z_range)
        n_frames = int(np.clip(args.emitters / (density * (size_nm / 1000) ** 2), 4, 2000))
        uniform = sim.sample_emitters(n_frames, torch.Generator().manual_seed(args.seed))
        layouts = {"uniform": uniform,
                   "filaments": on_filaments(uniform, size_nm, z_range, args.filaments,
                                             torch.Generator().manual_seed(args.seed + 1))}
        for layout, truth in layouts.items():
            frames = CAMERA.normalize(CAMERA.sample(sim.expected(truth),
                                                   torch.Generator().manual_seed(args.seed + 2))).numpy()
            near = near_share(truth)
            for path, model in models.items():
                m = score(localize_stack(model, frames, input_units="photons"), truth, dim, psf.pixel_size)
                results.append({"density": density, "layout": layout, "model": str(path), "near_250nm": near,
                                "emitters": int(truth["n"].sum()),
                                **{k: m[k] for k in ("jaccard", "precision", "recall", "rmse_lateral", "rmse_axial")}})

    print(f"# DeepLoco on emitters along filaments: {args.modality}, frames of {size} px, {args.filaments} "
          f"filaments per frame, 1000-7000 photons over 100 photons/px, {args.threads} threads")
    print(f"{'density':>7} {'layout':<10} {'near':>5} {'model':<24} {'Jaccard':>8} {'prec':>6} {'recall':>7} "
          f"{'RMSE xy':>8} {'RMSE z':>7}")
    for r in results:
        print(f"{r['density']:>7g} {r['layout']:<10} {r['near_250nm']:>5.2f} {Path(r['model']).name:<24} "
              f"{r['jaccard']:>8.3f} {r['precision']:>6.3f} {r['recall']:>7.3f} {r['rmse_lateral']:>8.1f} "
              f"{r['rmse_axial']:>7.1f}")
    print(json.dumps({"bench": "deeploco_filaments", "machine": platform.node(), "threads": args.threads,
                      "modality": args.modality, "frame_size": size, "filaments": args.filaments,
                      "results": results}))


if __name__ == "__main__":
    main()
