"""LodeSTAR speed: default training wall time and inference throughput.

Trains the default model on one crop per shape (as a user would: a 40x40 crop and the
64x64 benchmark image), then times detection (network + maps + peaks + refinement +
deblending, and without deblending) on a 1024x1024 frame of 400 points with the last point
model trained (``--model``: with that file, no training) and single-object pooling on
batches of 64x64 frames. Prints a table and one JSON line. Timings on a shared machine
vary: compare ratios within one run.

    python bench/lodestar_speed.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform

import torch

from starloc import sim
from starloc.lodestar.detection import DetectParams, pool_single
from starloc.lodestar.inference import detect_frames
from starloc.lodestar.model import LodeSTAR
from starloc.lodestar.training import TrainConfig, train
from starloc.progress import finish

from _timing import best_of  # bench/_timing.py (the script's folder is on sys.path)



def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shapes", nargs="+", default=["point", "annulus"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default=None, help="time inference with this model file only (no training)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    rows = []
    model = None if args.model is None else LodeSTAR.load(args.model, device=args.device)
    for shape in args.shapes if args.model is None else ():
        for size in (40, 64):
            image, _, _ = sim.simulate_single(shape, 10, 1, size=size, max_offset=1.0, rng=0)
            log = []
            trained = finish(train([image[0]], TrainConfig(device=args.device)), log.append)
            if model is None or shape == "point":  # the detection frame below holds points
                model = trained
            rows.append({"shape": shape, "crop": size, "steps": len(log), "seconds": log[-1].elapsed,
                         "ms_per_step": 1000 * log[-1].elapsed / len(log)})

    frame, _, _ = sim.simulate_scene("point", 400, size=(1024, 1024), snr=10, rng=1)
    big = frame[None, None]
    detect_1024 = best_of(lambda: detect_frames(model, big), args.repeats)
    plain_1024 = best_of(lambda: detect_frames(model, big, DetectParams(deblend=False)), args.repeats)
    maps_1024 = best_of(lambda: model.maps(big), args.repeats)
    small, _, _ = sim.simulate_single("point", 10, 256, size=64, rng=2)
    single_64 = best_of(lambda: pool_single(model.maps(small[:, None], batch_size=64)), args.repeats)

    print(f"{'shape':9s} {'crop':>5s} {'steps':>6s} {'train s':>8s} {'ms/step':>8s}")
    for r in rows:
        print(f"{r['shape']:9s} {r['crop']:5d} {r['steps']:6d} {r['seconds']:8.1f} {r['ms_per_step']:8.1f}")
    print()
    print(f"detect 1024x1024 frame (network + detection): {detect_1024:.3f} s  (without deblending "
          f"{plain_1024:.3f} s, network alone {maps_1024:.3f} s)")
    print(f"single-object 64x64 frames: {256 / single_64:.0f} frames/s")
    summary = {"bench": "lodestar_speed", "machine": platform.machine(), "device": args.device,
               "threads": args.threads, "torch": torch.__version__, "training": rows,
               "detect_1024_s": detect_1024, "detect_1024_no_deblend_s": plain_1024, "maps_1024_s": maps_1024,
               "single_64_fps": 256 / single_64}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
