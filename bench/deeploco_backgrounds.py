"""DeepLoco on frames whose background is not flat: what out-of-focus light and autofluorescence
do to real SMLM frames, and what ``--background-variation`` (the simulator's smooth background
field) buys.

Test frames: ``--frame-size`` px (default 128, tiled as user stacks are) at 100 nm, emitters from
the SMLM Challenge 2016 bead stack of ``--modality`` (AS: z uniform over -750..750 nm; 2D: its
in-focus slice), 1000-7000 photons, ``--density`` emitters/µm², the challenge EMCCD. The same
emitters and the same camera-noise seed under each background (photons/px, around a level of
100):

- ``flat``: 100 everywhere (the accuracy bench's frames);
- ``ramp +-50`` / ``ramp +-80``: a linear gradient across x;
- ``haze +200``: a Gaussian blob of out-of-focus light, sigma 1.5 µm, in the middle;
- ``patchy L +-A``: a smooth random field (white noise on a grid of one node per L, bicubic
  upsampling), scaled to a peak of A photons/px: structure of about L µm.

Scored as in ``bench/deeploco_accuracy.py`` (100 nm lateral, 500 nm axial): Jaccard, precision,
recall, lateral and axial RMSE. One row per model and background; prints a table and one JSON
line.

    python bench/deeploco_backgrounds.py --model flat.pt --model varied.pt --modality AS
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import torch
from deeploco_accuracy import CAMERA, comparison_options, score  # bench/deeploco_accuracy.py (the script's folder is on sys.path)

from starloc.deeploco import Simulator
from starloc.deeploco.model import DeepLoco
from starloc.deeploco.recipes import bead_psf
from starloc.deeploco.stack import localize_stack

LEVEL = 100.0


def backgrounds(size: int, pixel_size: float, seed: int) -> dict[str, torch.Tensor]:
    """The ``(H, W)`` photons/px added to the flat level, by name (see the module docstring)."""
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    ramp = xx / (size - 1) - 0.5
    centre = (size - 1) / 2
    blob_px = 1500.0 / pixel_size
    out = {"flat": torch.zeros(size, size), "ramp +-50": 100 * ramp, "ramp +-80": 160 * ramp,
           "haze +200": 200 * torch.exp(-((xx - centre) ** 2 + (yy - centre) ** 2) / (2 * blob_px**2))}
    g = torch.Generator().manual_seed(seed)
    for length_um, peak in ((0.8, 30), (0.8, 60), (1.6, 30), (1.6, 60), (3.2, 50)):
        nodes = max(2, int(round(size * pixel_size / (length_um * 1000))))
        noise = torch.randn(1, 1, nodes, nodes, generator=g)
        field = torch.nn.functional.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False)[0, 0]
        out[f"patchy {length_um:g} um +-{peak}"] = peak * field / field.abs().max()
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    comparison_options(ap, seed=5)
    ap.add_argument("--modality", choices=("AS", "2D"), default="AS")
    ap.add_argument("--density", type=float, default=0.5, help="emitters per µm²")
    ap.add_argument("--emitters", type=int, default=4000, help="about this many true emitters")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    psf = bead_psf(args.beads / f"beads-{args.modality}.tif", modality=args.modality)
    dim = 3 if psf.z_dependent else 2
    size = args.frame_size
    sim = Simulator(psf, CAMERA, frame_shape=(size, size), density=args.density, photons_range=(1000.0, 7000.0),
                    background_range=(LEVEL, LEVEL))
    n_frames = int(np.clip(args.emitters / (args.density * (size * psf.pixel_size / 1000) ** 2), 4, 2000))
    truth = sim.sample_emitters(n_frames, torch.Generator().manual_seed(args.seed))
    mu = sim.expected(truth)
    results = []
    for name, extra in backgrounds(size, psf.pixel_size, args.seed).items():
        frames = CAMERA.normalize(CAMERA.sample((mu + extra).clamp(min=0.0),
                                                torch.Generator().manual_seed(args.seed + 1))).numpy()
        for path in args.model:
            model = DeepLoco.load(path)
            m = score(localize_stack(model, frames, input_units="photons"), truth, dim, psf.pixel_size)
            variation = model.metadata.get("training", {}).get("simulator", {}).get("background_variation", 0.0)
            results.append({"background": name, "model": str(path), "background_variation": variation,
                            **{k: m[k] for k in ("jaccard", "precision", "recall", "rmse_lateral", "rmse_axial")}})

    print(f"# DeepLoco on uneven backgrounds: {args.modality}, {n_frames} frames of {size} px, "
          f"{args.density:g} emitters/µm², 1000-7000 photons over {LEVEL:g} photons/px, {args.threads} threads")
    print(f"{'background':<22} {'model':<28} {'var':>4} {'Jaccard':>8} {'prec':>6} {'recall':>7} {'RMSE xy':>8} "
          f"{'RMSE z':>7}")
    for r in results:
        print(f"{r['background']:<22} {Path(r['model']).name:<28} {r['background_variation']:>4g} {r['jaccard']:>8.3f} "
              f"{r['precision']:>6.3f} {r['recall']:>7.3f} {r['rmse_lateral']:>8.1f} {r['rmse_axial']:>7.1f}")
    print(json.dumps({"bench": "deeploco_backgrounds", "machine": platform.node(), "threads": args.threads,
                      "modality": args.modality, "frame_size": size, "density": args.density, "frames": n_frames,
                      "results": results}))


if __name__ == "__main__":
    main()
