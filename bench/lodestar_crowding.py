"""LodeSTAR multi-object detection in crowded frames: the default quantile cutoff against a fixed one.

For each shape: train LodeSTAR (default settings) on ONE 64x64 image at SNR 10, on its central
40x40 px (as ``bench/lodestar_accuracy.py``), then detect with the default ``DetectParams`` in
256x256 px scenes of 30, 100, 160 and 220 objects (``--scenes`` frames each, seeded) and in
frames of Poisson noise only. Each row compares the fixed 0.98 quantile (the cutoff before it
was lowered in crowded frames: ``DetectParams(pixels_per_peak=0)``) with the default: objects found
(matched within 3 px) and false detections, summed over the frames.

Prints a table and one JSON line.

    python bench/lodestar_crowding.py
"""

from __future__ import annotations

import argparse
import json
import platform

import numpy as np
import torch

from lodestar_accuracy import train_model  # bench/lodestar_accuracy.py (the script's folder is on sys.path)
from starloc import sim
from starloc.lodestar.detection import DetectParams
from starloc.lodestar.inference import detect_frames
from starloc.lodestar.training import TrainConfig
from starloc.metrics import detection_metrics

COUNTS = (30, 100, 160, 220)  # objects per 256x256 frame
MIN_DISTANCE = {30: None, 100: 10, 160: 10, 220: 9}  # px between centres (the simulator's default for 30)
SIZE = 256


def scenes(shape: str, count: int, n_frames: int, seed: int):
    """``(T, H, W)`` frames and their ``(row, col)`` truths; ``count`` 0: Poisson noise only."""
    frames, truths = [], []
    for s in range(n_frames):
        if count == 0:
            rng = np.random.default_rng(seed + s)
            frames.append(rng.poisson(10.0, (SIZE, SIZE)).astype(np.float32))
            truths.append(np.zeros((0, 2)))
            continue
        image, pos, _ = sim.simulate_scene(shape, count, size=SIZE, snr=10, min_distance=MIN_DISTANCE[count],
                                           rng=seed + s)
        frames.append(image)
        truths.append(pos[:, :2])
    return np.stack(frames), truths


def count(model, frames, truths, params: DetectParams) -> tuple[int, int]:
    """(found, false) over the frames, detected with ``params``."""
    found = detect_frames(model, frames[:, None], params)
    tp = fp = 0
    for t, truth in enumerate(truths):
        m = detection_metrics(found.positions[found.frame == t, :2], truth, 3.0)
        tp, fp = tp + m["tp"], fp + m["fp"]
    return tp, fp


HEADER = f"{'shape':9s} {'objects':>7s} {'truth':>6s} {'found, fixed 0.98':>18s} {'found, default':>15s} " \
         f"{'false, fixed':>13s} {'false, default':>15s}"


def print_row(r: dict) -> None:
    pct = lambda k: f"{100.0 * r[k] / r['truth']:.1f} %" if r["truth"] else "-"  # noqa: E731
    print(f"{r['shape']:9s} {r['objects'] or 'noise':>7} {r['truth']:6d} {pct('fixed_found'):>18s} {pct('found'):>15s} "
          f"{r['fixed_false']:13d} {r['false']:15d}", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=list(sim.SHAPES))
    ap.add_argument("--scenes", type=int, default=3, help="frames per object count")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    print(HEADER)
    for shape in args.shapes:
        model, _ = train_model(shape, args.seed, TrainConfig(seed=args.seed))
        for n in (*COUNTS, 0):
            frames, truths = scenes(shape, n, args.scenes, 100 + args.seed)
            fixed = count(model, frames, truths, DetectParams(pixels_per_peak=0.0))
            default = count(model, frames, truths, DetectParams())
            rows.append({"shape": shape, "objects": n, "truth": n * args.scenes,
                         "fixed_found": fixed[0], "fixed_false": fixed[1],
                         "found": default[0], "false": default[1]})
            print_row(rows[-1])
    print(json.dumps({"bench": "lodestar_crowding", "machine": platform.machine(), "threads": args.threads,
                      "seed": args.seed, "scenes": args.scenes, "pixels_per_peak": DetectParams().pixels_per_peak,
                      "rows": rows}))


if __name__ == "__main__":
    main()
