"""2D DeepLoco on emitters out of focus: real 2D SMLM data are never all in the focal plane.

The accuracy bench's 2D frames put every emitter in focus (the 2D bead stack's z = 0 slice).
Here the emitters lie uniformly within ``±Z`` nm of focus, for each ``Z`` of ``--depths``, and
are rendered with the whole 2D bead stack of the SMLM Challenge 2016 (its out-of-focus slices);
scored laterally as the accuracy bench does (100 nm tolerance). ``--frame-size`` px (default
128) at 100 nm, ``--density`` emitters/µm², 1000-7000 photons over 100 photons/px, the
challenge EMCCD; the same emitters (x, y, photons) and noise seed at every depth. One row per
model and depth; prints a table and one JSON line.

    python bench/deeploco_defocus.py --model 2d.pt --model 2d-in-focus.pt
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
from deeploco_accuracy import CAMERA, comparison_options, score  # bench/deeploco_accuracy.py (the script's folder is on sys.path)

from starloc.deeploco import Simulator
from starloc.deeploco.model import DeepLoco
from starloc.deeploco.recipes import bead_psf
from starloc.deeploco.stack import localize_stack


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    comparison_options(ap, seed=3)
    ap.add_argument("--density", type=float, default=0.5, help="emitters per µm²")
    ap.add_argument("--depths", type=float, nargs="+", default=[0.0, 150.0, 300.0, 500.0, 750.0],
                    help="nm: emitters within +- this of focus")
    ap.add_argument("--frames", type=int, default=40)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    stack = bead_psf(args.beads / "beads-2D.tif", modality="3D")  # every slice: emitters out of focus
    size = args.frame_size
    models = {path: DeepLoco.load(path) for path in args.model}
    results = []
    for depth in args.depths:
        z_range = (-depth, depth) if depth > 0 else (-1e-3, 1e-3)
        sim = Simulator(stack, CAMERA, frame_shape=(size, size), density=args.density, photons_range=(1000.0, 7000.0),
                        background_range=(100.0, 100.0), z_range=z_range)
        truth = sim.sample_emitters(args.frames, torch.Generator().manual_seed(args.seed))
        frames = CAMERA.normalize(CAMERA.sample(sim.expected(truth), torch.Generator().manual_seed(args.seed + 1)))
        for path, model in models.items():
            m = score(localize_stack(model, frames.numpy(), input_units="photons"), truth, 2, stack.pixel_size)
            results.append({"depth_nm": depth, "model": str(path), "emitters": int(truth["n"].sum()),
                            **{k: m[k] for k in ("jaccard", "precision", "recall", "rmse_x")},
                            "mean_offset": m["mean_offset"]})

    print(f"# 2D DeepLoco, emitters within +-depth of focus (2D bead stack): frames of {size} px, "
          f"{args.density:g} emitters/µm², 1000-7000 photons over 100 photons/px, {args.threads} threads")
    print(f"{'depth nm':>8} {'model':<28} {'Jaccard':>8} {'prec':>6} {'recall':>7} {'x RMSE':>7}")
    for r in results:
        print(f"{r['depth_nm']:>8g} {Path(r['model']).name:<28} {r['jaccard']:>8.3f} {r['precision']:>6.3f} "
              f"{r['recall']:>7.3f} {r['rmse_x']:>7.1f}")
    print(json.dumps({"bench": "deeploco_defocus", "machine": platform.node(), "threads": args.threads,
                      "frame_size": size, "density": args.density, "frames": args.frames, "results": results}))


if __name__ == "__main__":
    main()
