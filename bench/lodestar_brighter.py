"""LodeSTAR on objects brighter than the training crop's, by the trained brightness range.

Trains a point model on one 40x40 crop at SNR 10 for each ``--gains`` value (``TrainConfig.gain``,
``train --brighter``), then detects on 256x256 scenes of 30 points, half at the crop's
brightness and half ``factor`` times brighter (Poisson noise, SNR 10 for the dim ones), and
reports per half the fraction found within 1 px and their RMSE per axis, with the brightness
ratio the detection check measures (``starloc.lodestar.brightness``). Prints a table and one
JSON line.

    python bench/lodestar_brighter.py --threads 2 [--gains 3 10] [--factors 1 3 5 10 30] [--steps 1500]
"""

from __future__ import annotations

import argparse
import json
import platform

import numpy as np
import torch

from starloc import sim
from starloc.lodestar.brightness import brightness_ratio
from starloc.lodestar.inference import detect_frames
from starloc.lodestar.training import TrainConfig, train
from starloc.progress import finish


def scene(factor: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(1, 1, 256, 256) frame, positions (30, 2), and whether each is the bright kind."""
    positions = sim._place(30, (256, 256), 14, 10, rng)
    bright = np.arange(30) % 2 == 1
    profile = sum((factor if b else 1.0) * sim.render("point", (256, 256), p[None]) for p, b in zip(positions, bright))
    return sim.add_poisson_noise(profile, 10, rng=rng)[None, None], positions, bright


def found_and_rmse(truth: np.ndarray, found: np.ndarray) -> tuple[float, float]:
    if len(found) == 0:
        return 0.0, float("nan")
    d = np.hypot(*(truth[:, None] - found[None]).transpose(2, 0, 1)).min(axis=1)
    hit = d < 1.0
    return float(hit.mean()), float(np.sqrt(np.mean(d[hit] ** 2) / 2)) if hit.any() else float("nan")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gains", type=float, nargs="+", default=[3.0, 10.0])
    ap.add_argument("--factors", type=float, nargs="+", default=[1.0, 3.0, 5.0, 10.0, 30.0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--scenes", type=int, default=3, help="scenes per factor")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    crop = sim.simulate_single("point", 10, 1, size=40, max_offset=1.0, rng=0)[0][0]
    rows = []
    for gain in args.gains:
        model = finish(train([crop], TrainConfig(seed=0, gain=gain, max_steps=args.steps, min_steps=args.steps)))
        for factor in args.factors:
            rng = np.random.default_rng(5)
            per_kind = {False: ([], []), True: ([], [])}
            ratios = []
            for _ in range(args.scenes):
                frame, positions, bright = scene(factor, rng)
                ratios.append(brightness_ratio(model, frame))
                found = detect_frames(model, frame).positions[:, :2]
                for kind in (False, True):
                    per_kind[kind][0].append(positions[bright == kind])
                    per_kind[kind][1].append(found)
            row = {"gain": gain, "factor": factor, "ratio": float(np.max(ratios))}
            for kind, name in ((False, "dim"), (True, "bright")):
                hits = [found_and_rmse(t, f) for t, f in zip(*per_kind[kind])]
                row[f"{name}_found"] = float(np.mean([h[0] for h in hits]))
                row[f"{name}_rmse"] = float(np.nanmean([h[1] for h in hits]))
            rows.append(row)

    print(f"{'gain':>5s} {'factor':>6s} {'ratio':>6s} {'dim found':>9s} {'dim RMSE':>8s} {'bright found':>12s} "
          f"{'bright RMSE':>11s}")
    for r in rows:
        print(f"{r['gain']:5g} {r['factor']:6g} {r['ratio']:6.1f} {r['dim_found']:9.2f} {r['dim_rmse']:8.3f} "
              f"{r['bright_found']:12.2f} {r['bright_rmse']:11.3f}")
    print(json.dumps({"bench": "lodestar_brighter", "machine": platform.machine(), "threads": args.threads,
                      "torch": torch.__version__, "steps": args.steps, "rows": rows}))


if __name__ == "__main__":
    main()
