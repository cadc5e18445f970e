"""LodeSTAR on objects larger than its receptive field, with and without downsampling.

The paper tunes the scale of what LodeSTAR tracks by downsampling the images (its Fig. 2i-j:
a 150 px plankton cell is found as a whole once downsampled 3-4x). This bench trains the
default network (receptive field 26 px) on ONE crop around one large object, at each
``--downsample`` factor, and detects the objects in scenes of many. Objects (exact truth):

- ``ring``: a thin bright ring of radius 24 px (a cell outline, 48 px across);
- ``disc``: a uniform disc of radius 16 px (a nucleus, 32 px across);
- ``blob``: a Gaussian spot of ``--blob-sigma`` px (default 7; about 25 px across where it
  exceeds 20 % of its peak: about the receptive field), its "radius" 1.79 sigma (20 % of the peak).

Both are blurred by a Gaussian of 1 px, on a background of 10 photons/px, with a peak of
``SNR² - background`` photons above it (so the peak pixel's SNR, signal over the square root
of everything it collects, is about ``--snr``), Poisson noise. The training crop is a square
of side ``max(3 R, receptive field x D)`` (or ``--crop``) around an object near its centre. Scenes: 512x512,
15 objects at least 2R + 8 px apart, 4 scenes. Matched within R / 2 px (Hungarian); RMSE per
axis in image pixels. Prints a table and one JSON line.

    python bench/lodestar_scale.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch
from scipy import ndimage

from starloc.lodestar.inference import detect_frames
from starloc.lodestar.network import NetworkConfig
from starloc.lodestar.training import TrainConfig, train
from starloc.metrics import detection_metrics
from starloc.progress import finish

RADIUS = {"ring": 24.0, "disc": 16.0, "blob": 1.79 * 7.0}
BLOB_SIGMA = 7.0
BACKGROUND = 10.0
SUPERSAMPLE = 4


def profile(shape: str, size: tuple[int, int], centres: np.ndarray) -> np.ndarray:
    """Noise-free objects (peak 1) at ``centres`` (row, col px), pixel-integrated by
    supersampling, blurred by a 1 px Gaussian."""
    s = SUPERSAMPLE
    rows = (np.arange(size[0] * s) + 0.5) / s - 0.5
    cols = (np.arange(size[1] * s) + 0.5) / s - 0.5
    fine = np.zeros((size[0] * s, size[1] * s))
    radius = RADIUS[shape]
    for r, c in centres:
        dist = np.hypot(rows[:, None] - r, cols[None, :] - c)
        if shape == "blob":
            fine += np.exp(-dist**2 / (2 * BLOB_SIGMA**2))
        else:
            fine += (np.abs(dist - radius) <= 1.0) if shape == "ring" else (dist <= radius)
    coarse = fine.reshape(size[0], s, size[1], s).mean((1, 3))
    blurred = coarse if shape == "blob" else ndimage.gaussian_filter(coarse, 1.0)
    return blurred / blurred.max() if blurred.max() > 0 else blurred


def noisy(shape: str, size, centres, snr: float, rng: np.random.Generator) -> np.ndarray:
    peak = max(snr**2 - BACKGROUND, 1.0)
    return rng.poisson(BACKGROUND + peak * profile(shape, size, centres)).astype(np.float32)


def place(n: int, size: int, distance: float, margin: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` (row, col) centres at least ``distance`` apart, ``margin`` px from the border."""
    out: list[np.ndarray] = []
    while len(out) < n:
        p = rng.uniform(margin, size - 1 - margin, 2)
        if all(np.hypot(*(p - q)) >= distance for q in out):
            out.append(p)
    return np.array(out)


def run(shape: str, d: int, snr: float, device: str, max_steps: int | None, seed: int = 0,
        crop: int | None = None) -> dict:
    rng = np.random.default_rng(seed)
    radius = RADIUS[shape]
    crop = crop or int(max(3 * radius, NetworkConfig().receptive_field * d))
    centre = (crop - 1) / 2 + rng.uniform(-1, 1, 2)
    image = noisy(shape, (crop, crop), centre[None], snr, rng)
    log = []
    config = TrainConfig(device=device, downsample=d, seed=seed, max_steps=max_steps)
    model = finish(train([image], config), log.append)
    pred, truth, seconds = [], [], 0.0
    for _ in range(4):
        centres = place(15, 512, 2 * radius + 8, radius + 2, rng)
        scene = noisy(shape, (512, 512), centres, snr, rng)
        start = time.perf_counter()
        found = detect_frames(model, scene[None, None])
        seconds += time.perf_counter() - start
        pred.append(found.positions[:, :2])
        truth.append(centres)
    m = [detection_metrics(p, t, tolerance=radius / 2) for p, t in zip(pred, truth)]
    tp, fp, fn = (sum(x[key] for x in m) for key in ("tp", "fp", "fn"))
    sq = sum(x["rmse"] ** 2 * x["tp"] for x in m if x["tp"])
    return {"shape": shape, "radius": radius, "downsample": d, "crop": crop, "snr": snr,
            "steps": len(log), "train_s": log[-1].elapsed, "objects": tp + fn,
            "precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1),
            "f1": 2 * tp / max(2 * tp + fp + fn, 1), "rmse": float(np.sqrt(sq / max(tp, 1))),
            "detect_s_per_frame": seconds / 4}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shapes", nargs="+", default=list(RADIUS), choices=list(RADIUS))
    ap.add_argument("--downsample", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--snr", type=float, default=10.0)
    ap.add_argument("--steps", type=int, default=None, help="maximum training steps (default: the training's)")
    ap.add_argument("--blob-sigma", type=float, default=BLOB_SIGMA, help="px, the blob's Gaussian sigma")
    ap.add_argument("--crop", type=int, default=None,
                    help="side of the training crop, px (default: max(3 R, receptive field x D))")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.blob_sigma != BLOB_SIGMA:
        globals()["BLOB_SIGMA"] = args.blob_sigma
        RADIUS["blob"] = 1.79 * args.blob_sigma
    rows = [run(shape, d, args.snr, args.device, args.steps, crop=args.crop)
            for shape in args.shapes for d in args.downsample]
    print(f"# LodeSTAR on large objects, one training crop each, SNR {args.snr:g}, {args.threads} threads")
    print(f"{'shape':6s} {'R px':>5s} {'D':>3s} {'crop':>5s} {'steps':>6s} {'train s':>8s} {'objects':>8s} "
          f"{'prec':>6s} {'recall':>6s} {'F1':>6s} {'RMSE px':>8s} {'detect s':>9s}")
    for r in rows:
        print(f"{r['shape']:6s} {r['radius']:5.0f} {r['downsample']:3d} {r['crop']:5d} {r['steps']:6d} "
              f"{r['train_s']:8.1f} {r['objects']:8d} {r['precision']:6.3f} {r['recall']:6.3f} {r['f1']:6.3f} "
              f"{r['rmse']:8.3f} {r['detect_s_per_frame']:9.3f}")
    print(json.dumps({"bench": "lodestar_scale", "machine": platform.node(), "threads": args.threads,
                      "device": args.device, "results": rows}))


if __name__ == "__main__":
    main()
