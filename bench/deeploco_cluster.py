"""DeepLoco on a dask.distributed cluster: wall time of one stack, one process vs N workers.

Writes a simulated ADU stack (64x64 frames, 1 emitter/µm², challenge EMCCD) to a temporary
TIFF, localizes it in this process (``localize_stack``, ``--threads`` torch threads) and on a
local cluster of N worker processes with one torch thread each (``iter_localize_stack_on_cluster``,
the path of ``starloc deeploco localize --workers N``), checks the tables are equal and prints
frames/s, a table and one JSON line. The workers are started and have imported torch before
the clock starts (a long-running cluster's case; a new worker takes 2-3 s more). On one machine this measures the cluster path's overhead
and its scaling over cores; across machines the same tasks go to a remote scheduler.

    python bench/deeploco_cluster.py --model as.pt --frames 4000 --workers 1 2
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

from starloc.deeploco import EMCCD, Simulator
from starloc.deeploco.cluster import iter_localize_stack_on_cluster, local_cluster
from starloc.deeploco.model import DeepLoco
from starloc.deeploco.stack import localize_stack
from starloc.progress import finish


def write_stack(model: DeepLoco, path: Path, frames: int, seed: int = 0) -> None:
    cam = model.camera or EMCCD.smlm2016()
    sim = Simulator(model.psf, cam, frame_shape=(64, 64), density=1.0, pixel_size=model.config.pixel_size)
    g = torch.Generator().manual_seed(seed)
    chunks = []
    for start in range(0, frames, 512):
        f, _ = sim.sample(min(512, frames - start), g)
        chunks.append(cam.to_adu(f[:, 0]).round().clamp(0, 65535).numpy().astype(np.uint16))
    tifffile.imwrite(path, np.concatenate(chunks), photometric="minisblack")


def _warm_up() -> None:
    importlib.import_module("starloc.deeploco.stack")  # imports torch: 2-3 s in a new worker process



def main(argv=None):
    from distributed import Client

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="a DeepLoco model file (with its PSF and camera)")
    ap.add_argument("--frames", type=int, default=4000)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the single-process run")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="cluster sizes to time")
    ap.add_argument("--frames-per-task", type=int, default=500)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = DeepLoco.load(args.model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        stack = Path(tmp) / "stack.tif"
        write_stack(model, stack, args.frames)
        start = time.perf_counter()
        local = localize_stack(model, stack)
        seconds = time.perf_counter() - start
        rows.append({"run": f"one process, {args.threads} threads", "seconds": seconds,
                     "frames_per_s": args.frames / seconds, "equal": True})
        for n in args.workers:
            with local_cluster(n) as cluster, Client(cluster) as client:
                client.run(_warm_up)  # workers up, torch imported: time the work, not the start-up
                start = time.perf_counter()
                table = finish(iter_localize_stack_on_cluster(args.model, stack, client,
                                                              frames_per_task=args.frames_per_task))
                seconds = time.perf_counter() - start
            equal = all(np.allclose(table[k], local[k], atol=1e-3) for k in local) and len(table["x"]) == len(local["x"])
            rows.append({"run": f"cluster, {n} worker(s) x 1 thread", "seconds": seconds,
                         "frames_per_s": args.frames / seconds, "equal": bool(equal)})
    print(f"# DeepLoco on a local dask cluster: {args.frames} frames of 64x64, {args.model.name}, "
          f"{os.cpu_count()} cores, {args.frames_per_task} frames per task")
    print(f"{'run':<34} {'seconds':>8} {'frames/s':>9} {'same table':>11}")
    for r in rows:
        print(f"{r['run']:<34} {r['seconds']:>8.1f} {r['frames_per_s']:>9.0f} {str(r['equal']):>11}")
    print(json.dumps({"bench": "deeploco_cluster", "machine": platform.node(), "cores": os.cpu_count(),
                      "frames": args.frames, "rows": rows}))


if __name__ == "__main__":
    main()
