"""LodeSTAR through the command line on images from a simulator that is not ``starloc.sim``.

The accuracy bench uses the project's own simulator; users' images come from cameras and
samples it does not model. Here three kinds of stacks are written as TIFF files by code
independent of ``starloc`` (pixel centres at integer (row, col), as everywhere in starloc):

- ``gauss``: Gaussian spots (sigma 1.3 px, 150 photons at the peak over 20 photons/px),
  an sCMOS-like camera: 2 ADU per photon, 100 ADU offset, 3 ADU read noise, uint16;
- ``dark``: bright-field-like particles, darker than the background (a dark core of
  sigma 3 px with a bright rim at 6 px) on 400 photons/px, float32;
- ``disk``: uniform disks of radius 11 px (22 px across, close to the network's 26 px
  receptive field), 40 photons over 30 photons/px, uint16.

Each: 3 frames of 256x256 px with 20-34 objects, Poisson noise. Then only the CLI:
``starloc lodestar train`` on one square crop around the most isolated object of frame 0,
``starloc lodestar detect`` on the stack with default settings, and a one-to-one match
within 3 px (Hungarian). RMSE per axis in px; ``bias`` is the mean (row, col) error.
Prints a table and one JSON line.

    python bench/lodestar_foreign.py --out /tmp/foreign
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import tifffile
from scipy.spatial.distance import cdist

from _cli import starloc  # bench/_cli.py (the script's folder is on sys.path)
from starloc.metrics import match

FRAMES, SIZE = 3, 256
CROP = {"gauss": 32, "dark": 40, "disk": 48}


def _positions(rng, n: int, margin: float, distance: float) -> np.ndarray:
    out: list[np.ndarray] = []
    while len(out) < n:
        p = rng.uniform(margin, SIZE - margin, 2)
        if all(np.hypot(*(p - q)) >= distance for q in out):
            out.append(p)
    return np.array(out)


def frame(kind: str, rng) -> tuple[np.ndarray, np.ndarray]:
    """One noisy frame and its ``(n, 2)`` true (row, col) centres."""
    rows, cols = np.mgrid[0:SIZE, 0:SIZE].astype(float)
    n = int(rng.integers(20, 35))
    if kind == "gauss":
        centres = _positions(rng, n, 8, 12)
        lam = np.full((SIZE, SIZE), 20.0)
        for r, c in centres:
            lam += 150 * np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * 1.3**2))
        adu = 100 + 2 * rng.poisson(lam) + rng.normal(0, 3, lam.shape)
        return np.clip(np.round(adu), 0, 65535).astype(np.uint16), centres
    if kind == "dark":
        centres = _positions(rng, n, 12, 22)
        lam = np.full((SIZE, SIZE), 400.0)
        for r, c in centres:
            d = np.hypot(rows - r, cols - c)
            lam += -250 * np.exp(-(d**2) / (2 * 3.0**2)) + 80 * np.exp(-((d - 6) ** 2) / 2)
        return rng.poisson(np.clip(lam, 0, None)).astype(np.float32), centres
    if kind == "disk":
        centres = _positions(rng, n, 16, 30)
        lam = np.full((SIZE, SIZE), 30.0)
        for r, c in centres:
            lam += 40 / (1 + np.exp((np.hypot(rows - r, cols - c) - 11) / 0.7))
        return rng.poisson(lam).astype(np.uint16), centres
    raise ValueError(kind)


def crop_around_most_isolated(centres: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left (row, col) of a ``size`` square crop around the object farthest from the others."""
    d = cdist(centres, centres) + np.eye(len(centres)) * 1e9
    r, c = centres[np.argmax(d.min(1))]
    top = min(max(int(round(r)) - size // 2, 0), SIZE - size)
    left = min(max(int(round(c)) - size // 2, 0), SIZE - size)
    return top, left


def score(found: np.ndarray, truth: np.ndarray, tolerance: float = 3.0) -> tuple[int, int, int, np.ndarray]:
    """tp, fp, fn and the (row, col) errors (truth - found) of the matched pairs."""
    fi, ti = match(found, truth, tolerance)
    return len(fi), len(found) - len(fi), len(truth) - len(ti), truth[ti] - found[fi]


def run(kind: str, out: Path, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    frames, truth = zip(*(frame(kind, rng) for _ in range(FRAMES)))
    tif, model, csv = out / f"{kind}.tif", out / f"{kind}.pt", out / f"{kind}.csv"
    tifffile.imwrite(tif, np.stack(frames))
    size = CROP[kind]
    top, left = crop_around_most_isolated(truth[0], size)
    start = time.perf_counter()
    starloc("lodestar", "train", str(tif), "--crop", str(top), str(left), str(size), str(size),
            "--seed", str(seed), "-o", str(model))
    train_s = time.perf_counter() - start
    starloc("lodestar", "detect", str(tif), "--model", str(model), "-o", str(csv))
    table = np.loadtxt(csv, delimiter=",", skiprows=1, ndmin=2)
    tp = fp = fn = 0
    errors = []
    for t in range(FRAMES):
        a, b, c, e = score(table[table[:, 0] == t, 1:3], truth[t])
        tp, fp, fn = tp + a, fp + b, fn + c
        errors.append(e)
    e = np.concatenate(errors)
    return {"kind": kind, "crop": size, "train_s": train_s, "objects": tp + fn, "tp": tp, "fp": fp, "fn": fn,
            "f1": 2 * tp / max(2 * tp + fp + fn, 1), "rmse": float(np.sqrt(np.mean(e**2))) if len(e) else float("nan"),
            "bias": e.mean(0).round(4).tolist() if len(e) else [float("nan")] * 2}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for the stacks, models and CSVs")
    ap.add_argument("--kinds", nargs="+", default=list(CROP), choices=list(CROP))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [run(kind, out, args.seed) for kind in args.kinds]
    print(f"# LodeSTAR via the CLI on a foreign simulator, seed {args.seed}")
    print(f"{'kind':6s} {'crop':>5s} {'train s':>8s} {'objects':>8s} {'FP':>4s} {'FN':>4s} {'F1':>6s} "
          f"{'RMSE px':>8s}  bias (row, col) px")
    for r in rows:
        print(f"{r['kind']:6s} {r['crop']:5d} {r['train_s']:8.1f} {r['objects']:8d} {r['fp']:4d} {r['fn']:4d} "
              f"{r['f1']:6.3f} {r['rmse']:8.3f}  {r['bias']}")
    print(json.dumps({"bench": "lodestar_foreign", "machine": platform.node(), "seed": args.seed, "results": rows}))


if __name__ == "__main__":
    main()
