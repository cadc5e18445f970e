"""LodeSTAR on a dask.distributed cluster: wall time of one stack, one process vs N workers.

Trains a point model briefly (the weights do not change the cost), writes a simulated
time-lapse of point scenes (``--frames`` frames of ``--size``², 30 points each, SNR 10) to a
temporary TIFF, detects in it in this process (``iter_detect``, ``--threads`` torch threads)
and on a local cluster of N worker processes with one torch thread each
(``iter_detect_on_cluster``, the path of ``starloc lodestar detect --workers N``), checks the
detections are equal and prints frames/s, a table and one JSON line. The workers are started
and have imported torch before the clock starts. On one machine this measures the cluster
path's overhead and its scaling over cores; across machines the same tasks go to a remote
scheduler.

    python bench/lodestar_cluster.py --frames 400 --workers 1 2
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from starloc import sim
from starloc.cluster import local_cluster
from starloc.io import read_image
from starloc.lodestar.cluster import iter_detect_on_cluster
from starloc.lodestar.inference import iter_detect
from starloc.lodestar.training import TrainConfig, train
from starloc.progress import finish


def _warm_up() -> None:
    importlib.import_module("starloc.lodestar.inference")  # imports torch: 2-3 s in a new worker process


def main(argv=None):
    from distributed import Client

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=400)
    ap.add_argument("--size", type=int, default=256, help="frame side (px)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the single-process run")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="cluster sizes to time")
    ap.add_argument("--frames-per-task", type=int, default=50)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    crop, _, _ = sim.simulate_single("point", 10, 1, size=40, max_offset=1.0, rng=0)
    model = finish(train([crop[0]], TrainConfig(max_steps=200, min_steps=200)))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_path, stack = Path(tmp) / "model.pt", Path(tmp) / "stack.tif"
        model.save(model_path)
        scenes = [sim.simulate_scene("point", 30, size=(args.size, args.size), snr=10, rng=i)[0]
                  for i in range(args.frames)]
        tifffile.imwrite(stack, np.stack(scenes).astype(np.float32))
        start = time.perf_counter()
        local = finish(iter_detect(model, read_image(stack)))
        seconds = time.perf_counter() - start
        rows.append({"run": f"one process, {args.threads} threads", "seconds": seconds,
                     "frames_per_s": args.frames / seconds, "detections": len(local), "equal": True})
        for n in args.workers:
            with local_cluster(n) as cluster, Client(cluster) as client:
                client.run(_warm_up)  # workers up, torch imported: time the work, not the start-up
                start = time.perf_counter()
                found = finish(iter_detect_on_cluster(model_path, stack, client,
                                                      frames_per_task=args.frames_per_task))
                seconds = time.perf_counter() - start
            equal = (np.array_equal(found.frame, local.frame)
                     and np.allclose(found.positions, local.positions, atol=1e-4))
            rows.append({"run": f"cluster, {n} worker(s) x 1 thread", "seconds": seconds,
                         "frames_per_s": args.frames / seconds, "detections": len(found), "equal": bool(equal)})
    print(f"# LodeSTAR on a local dask cluster: {args.frames} frames of {args.size}x{args.size}, "
          f"{os.cpu_count()} cores, {args.frames_per_task} frames per task")
    print(f"{'run':<34} {'seconds':>8} {'frames/s':>9} {'detections':>11} {'same result':>12}")
    for r in rows:
        print(f"{r['run']:<34} {r['seconds']:>8.1f} {r['frames_per_s']:>9.1f} {r['detections']:>11d} "
              f"{str(r['equal']):>12}")
    print(json.dumps({"bench": "lodestar_cluster", "machine": platform.node(), "cores": os.cpu_count(),
                      "frames": args.frames, "size": args.size, "rows": rows}))


if __name__ == "__main__":
    main()
