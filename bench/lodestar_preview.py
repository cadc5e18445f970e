"""What the widget's weight-map previews cost a training: the same training job with and without them.

Runs the LodeSTAR widget's training job (``starloc.gui.lodestar_jobs.train_job``, no Qt needed)
on a 40x40 crop of a point, with a frame on screen of ``--frame-size`` px (the previews are
its weight map), once with previews at the widget's default spacing and once without; checks
that both give the same weights. Prints a table and one JSON line.

    python bench/lodestar_preview.py --threads 2 [--frame-size 1024] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from starloc import sim
from starloc.gui.lodestar_jobs import PREVIEW_SECONDS, TrainingPreview, train_job
from starloc.lodestar.training import TrainConfig
from starloc.progress import finish


def run(crop, frame, config, preview_seconds):
    items = []
    start = time.perf_counter()
    model, _ = finish(train_job([crop], config, frame, augment=False, preview_seconds=preview_seconds), items.append)
    seconds = time.perf_counter() - start
    previews = [p for p in items if isinstance(p, TrainingPreview)]
    steps = max(p.step for p in items if not isinstance(p, TrainingPreview))
    return model, {"previews": len(previews), "seconds": seconds, "steps": steps,
                   "first_preview_step": previews[0].step if previews else None}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--frame-size", type=int, default=1024, help="side of the frame on screen (px)")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the crop's budget)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    crop = sim.simulate_single("point", 10, 1, size=40, max_offset=1.0, rng=0)[0][0][None]
    frame = sim.simulate_scene("point", max(1, args.frame_size**2 // 2600), size=args.frame_size, snr=10,
                               rng=1)[0][None, None]
    config = TrainConfig(seed=0, max_steps=args.steps)
    run(crop, frame, TrainConfig(seed=0, max_steps=20, min_steps=20), None)  # warm-up: not timed
    with_model, with_previews = run(crop, frame, config, PREVIEW_SECONDS)
    plain_model, without = run(crop, frame, config, None)
    same = all(torch.equal(a, b) for a, b in zip(with_model.net.state_dict().values(),
                                                 plain_model.net.state_dict().values()))
    cost = with_previews["seconds"] / without["seconds"] - 1

    print(f"frame {args.frame_size}x{args.frame_size}, crop 40x40, {with_previews['steps']} steps")
    print(f"{'run':18s} {'seconds':>8s} {'previews':>9s}")
    print(f"{'with previews':18s} {with_previews['seconds']:8.1f} {with_previews['previews']:9d}")
    print(f"{'without':18s} {without['seconds']:8.1f} {0:9d}")
    print(f"previews cost {100 * cost:+.1f} % of the training time; same weights: {same}")
    print(json.dumps({"bench": "lodestar_preview", "machine": platform.machine(), "threads": args.threads,
                      "torch": torch.__version__, "frame_size": args.frame_size, "with": with_previews,
                      "without": without, "cost": cost, "same_weights": same}))


if __name__ == "__main__":
    main()
