"""DeepLoco through the command line on SMLM stacks from a simulator that is not starloc's.

``bench/deeploco_accuracy.py`` scores frames from ``starloc.deeploco.Simulator``, the simulator
the models train on. Here the test stacks come from code of its own, written from the usual
definitions: each emitter's photons spread by a Gaussian PSF (sigma 130 nm) integrated over
each 100 nm pixel with ``erf``; 1000-5000 photons (uniform) over 50 photons/px; an sCMOS
camera, ``Poisson(0.8 * photons)`` electrons + ``N(0, 1.5)`` read noise, 2 ADU per electron,
offset 100 ADU, uint16. Positions in nm, uniform over the field, origin at the image's
top-left corner (x along columns), as in ThunderSTORM. Two stacks: 200 frames of 64x64 px
and 10 frames of 300x300 px (tiled by ``localize``), 0.5 emitters/um^2.

Then only the CLI: ``starloc deeploco train --psf gaussian`` with this camera's settings
(default photon and background ranges, nothing taken from the test), ``starloc deeploco
localize`` with the defaults, and a one-to-one match within 100 nm (Hungarian, per frame).
Reports Jaccard, RMSE x / y and the mean error (truth - localization) in nm. Prints a table
and one JSON line.

    python bench/deeploco_foreign.py --out /tmp/dlforeign          # trains --arch fcn, 1000 steps
    python bench/deeploco_foreign.py --out /tmp/dlforeign --model M.pt   # an existing model
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import tifffile
from scipy.special import erf

from _cli import starloc  # bench/_cli.py (the script's folder is on sys.path)
from starloc.smlm_io import read_thunderstorm_csv
from starloc.smlm_metrics import match_localizations

PIXEL, SIGMA, BACKGROUND, PHOTONS, DENSITY = 100.0, 130.0, 50.0, (1000.0, 5000.0), 0.5
QE, READ_NOISE, ADU_PER_E, OFFSET = 0.8, 1.5, 2.0, 100.0
STACKS = {"64px": (200, 64), "300px": (10, 300)}


def simulate(frames: int, size: int, rng) -> tuple[np.ndarray, list[np.ndarray]]:
    """uint16 ``(T, size, size)`` ADU stack and, per frame, the ``(n, 2)`` true (x, y) in nm."""
    edges = np.arange(size + 1) * PIXEL
    stack, truth = [], []
    for _ in range(frames):
        n = rng.poisson(DENSITY * (size * PIXEL / 1000) ** 2)
        xy = rng.uniform(0, size * PIXEL, (n, 2))
        photons = rng.uniform(*PHOTONS, n)
        expected = np.full((size, size), BACKGROUND)
        for (x, y), p in zip(xy, photons):
            gx = 0.5 * np.diff(erf((edges - x) / (np.sqrt(2) * SIGMA)))
            gy = 0.5 * np.diff(erf((edges - y) / (np.sqrt(2) * SIGMA)))
            expected += p * np.outer(gy, gx)
        electrons = rng.poisson(QE * expected) + rng.normal(0, READ_NOISE, expected.shape)
        stack.append(np.clip(np.round(electrons * ADU_PER_E + OFFSET), 0, 65535).astype(np.uint16))
        truth.append(xy)
    return np.stack(stack), truth


def score(table: dict, truth: list[np.ndarray], tolerance: float = 100.0) -> dict:
    """Jaccard, RMSE x / y and mean error (truth - localization) of a localization table (nm)."""
    true_frame = np.concatenate([np.full(len(t), i) for i, t in enumerate(truth)])
    true_xy = np.concatenate(truth)
    found_xy = np.stack([table["x"], table["y"]], 1)
    pi, ti = match_localizations(table["frame"], found_xy, true_frame, true_xy, lateral_tol=tolerance)
    tp, fp, fn = len(pi), len(found_xy) - len(pi), len(true_xy) - len(ti)
    e = true_xy[ti] - found_xy[pi]
    return {"emitters": tp + fn, "tp": tp, "fp": fp, "fn": fn, "jaccard": tp / max(tp + fp + fn, 1),
            "rmse_x": float(np.sqrt(np.mean(e[:, 0] ** 2))), "rmse_y": float(np.sqrt(np.mean(e[:, 1] ** 2))),
            "mean_error_xy": e.mean(0).round(2).tolist()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for the stacks, the model and the CSVs")
    ap.add_argument("--model", help="an existing model for this camera and PSF (default: train one)")
    ap.add_argument("--steps", type=int, default=1000, help="training steps when training (default 1000)")
    ap.add_argument("--arch", default="fcn", choices=("fcn", "unet"))
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, train_s = args.model, float("nan")
    if model is None:
        model = str(out / "model.pt")
        start = time.perf_counter()
        starloc("deeploco", "train", "--psf", "gaussian", "--sigma", str(SIGMA), "--pixel-size", str(PIXEL),
                "--camera", "scmos", "--baseline", str(OFFSET), "--e-per-adu", str(1 / ADU_PER_E),
                "--qe", str(QE), "--read-noise", str(READ_NOISE), "--arch", args.arch,
                "--steps", str(args.steps), "--seed", "0", "-o", model)
        train_s = time.perf_counter() - start
    rng = np.random.default_rng(args.seed)
    rows = []
    for name, (frames, size) in STACKS.items():
        stack, truth = simulate(frames, size, rng)
        tif, locs = out / f"{name}.tif", out / f"{name}.csv"
        tifffile.imwrite(tif, stack)
        start = time.perf_counter()
        starloc("deeploco", "localize", str(tif), "--model", model, "-o", str(locs))
        rows.append({"stack": name, "frames": frames, "size": size, "localize_s": time.perf_counter() - start,
                     **score(read_thunderstorm_csv(locs), truth)})
    print(f"# DeepLoco via the CLI on a foreign simulator (Gaussian PSF, sCMOS); model {model}, "
          f"train {train_s:.0f} s")
    print(f"{'stack':6s} {'frames':>6s} {'emitters':>8s} {'Jaccard':>8s} {'FP':>5s} {'FN':>5s} {'RMSE x':>7s} "
          f"{'RMSE y':>7s}  mean error x, y (nm)")
    for r in rows:
        print(f"{r['stack']:6s} {r['frames']:6d} {r['emitters']:8d} {r['jaccard']:8.3f} {r['fp']:5d} {r['fn']:5d} "
              f"{r['rmse_x']:7.1f} {r['rmse_y']:7.1f}  {r['mean_error_xy']}")
    print(json.dumps({"bench": "deeploco_foreign", "machine": platform.node(), "model": model,
                      "train_s": train_s, "results": rows}))


if __name__ == "__main__":
    main()
