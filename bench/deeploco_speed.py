"""DeepLoco speed: localization throughput on 64x64 frames and training step time.

For each density, times ``DeepLoco.localize`` (network + post-processing) on simulated 64x64
frames already in photons: trained model files given with ``--model`` (e.g. the default
U-Net recipe) and the paper's network with untrained weights (threshold 0, so
its post-processing handles all K = 64 candidates: its network cost does not depend on the
weights). Also times the Gaussian-fit baseline on the same frames, and the mean training step
(simulation + forward + loss + backward, ``--train-steps`` of them) at the default batch for
each architecture. With ``--frame-sizes``, also times ``localize_stack`` (tiles, post-processing
and seams included) on larger frames at 1 emitter/µm² for each ``--model``. Prints a table and
one JSON line. Timings on a shared machine vary: compare ratios within one run.

    python bench/deeploco_speed.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from starloc.deeploco import EMCCD, EmpiricalPSF, Gaussian2DPSF, Simulator
from starloc.deeploco.baseline import GaussianFitLocalizer
from starloc.deeploco.model import DeepLoco
from starloc.deeploco.stack import localize_stack, plan_tiles
from starloc.deeploco.training import DeepLocoTrainConfig, Trainer

from _timing import best_of  # bench/_timing.py (the script's folder is on sys.path)

BEADS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "smlm2016-beads" / "beads-AS.tif"



def make_psf(path: Path):
    if path.is_file():
        import tifffile

        return EmpiricalPSF.from_bead_stack(tifffile.imread(path)), "AS beads"
    return Gaussian2DPSF(130.0), "Gaussian 2D (bead stack not found)"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--beads", type=Path, default=BEADS, help="bead z-stack TIFF (default: the AS stack)")
    ap.add_argument("--densities", type=float, nargs="+", default=[0.1, 0.5, 1.0, 2.0])
    ap.add_argument("--frames", type=int, default=512, help="frames per timing")
    ap.add_argument("--model", type=Path, action="append", default=[], help="trained model file(s) to time")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--frame-sizes", type=int, nargs="*", default=[],
                    help="also time localize_stack on frames of these sides (px), e.g. 256 512")
    ap.add_argument("--train-steps", type=int, default=30,
                    help="training steps timed per architecture (after one warm-up step)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    psf, psf_name = make_psf(args.beads)
    models = {}
    for arch in ("paper", "fcn", "unet"):
        sim = Simulator(psf, EMCCD.smlm2016(), density=1.0, device=device)
        # the paper's widths for its network; the default recipe's for the FCN and the U-Net
        widths = {"conv_widths": (16, 64, 256), "fc_width": 1024} if arch == "paper" else {}
        cfg = DeepLocoTrainConfig(architecture=arch, device=str(device), val_size=0, **widths)
        trainer = Trainer(sim, cfg)
        models[f"{arch} (untrained)"] = (trainer, sim)
    for path in args.model:
        models[f"{path.name}"] = (DeepLoco.load(path, device=device), None)

    rows = []
    for d in args.densities:
        sim = Simulator(psf, EMCCD.smlm2016(), density=d)
        frames, truth = sim.sample(args.frames, torch.Generator().manual_seed(1))
        frames = frames.to(device)
        for name, (obj, _) in models.items():
            if isinstance(obj, Trainer) and obj.config.architecture != "paper":
                continue  # an untrained FCN keeps every cell's candidate: time trained ones (--model)
            model = obj.model if isinstance(obj, Trainer) else obj
            model.to(device)
            if isinstance(obj, Trainer):
                model.threshold = 0.0  # untrained: let the post-processing see every candidate
            fps = args.frames / best_of(lambda: model.localize(frames), args.repeats)  # default batch
            rows.append({"method": f"DeepLoco {name}", "density": d, "frames_per_s": fps})
        base = GaussianFitLocalizer(pixel_size=psf.pixel_size if hasattr(psf, "pixel_size") else 100.0, psf=psf)
        cpu_frames = frames[:, 0].cpu().numpy()
        fps = args.frames / best_of(lambda: base.localize(cpu_frames), args.repeats)
        rows.append({"method": "Gaussian fit baseline", "density": d, "frames_per_s": fps})

    stack_rows = []
    for size in args.frame_sizes:
        sim = Simulator(psf, EMCCD.smlm2016(), frame_shape=(size, size), density=1.0)
        n = max(2, (args.frames * 64 * 64) // (size * size))  # about --frames 64x64 frames' worth of pixels
        frames = sim.sample(n, torch.Generator().manual_seed(2))[0][:, 0].numpy()
        for name, (obj, _) in models.items():
            if isinstance(obj, Trainer):
                continue
            fps = n / best_of(lambda: localize_stack(obj, frames, input_units="photons"), args.repeats)
            stack_rows.append({"model": name, "frame_size": size, "frames_per_s": fps,
                               "tiles": plan_tiles((size, size), obj.config).n_tiles})

    train_rows = []
    for name, (obj, sim) in models.items():
        if not isinstance(obj, Trainer):
            continue
        gen = obj.run()
        next(gen)  # warm-up step
        start = time.perf_counter()
        n = max(1, args.train_steps)
        for _ in range(n):
            next(gen)
        train_rows.append({"architecture": obj.config.architecture, "batch": obj.config.batch,
                           "s_per_step": (time.perf_counter() - start) / n,
                           "default_steps": obj.config.steps})

    print(f"# DeepLoco speed ({psf_name}, 64x64 frames, {args.threads} threads, {device})")
    print(f"{'method':<34} " + " ".join(f"{f'{d:g}/µm²':>10}" for d in args.densities) + "   (frames/s)")
    for method in dict.fromkeys(r["method"] for r in rows):
        vals = [r["frames_per_s"] for r in rows if r["method"] == method]
        print(f"{method:<34} " + " ".join(f"{v:>10.0f}" for v in vals))
    if stack_rows:
        print()
        print(f"{'localize_stack, 1/µm²':<34} {'frame px':>9} {'tiles':>6} {'frames/s':>9} {'64x64 worth/s':>14}")
        for r in stack_rows:
            print(f"{r['model']:<34} {r['frame_size']:>9} {r['tiles']:>6} {r['frames_per_s']:>9.1f} "
                  f"{r['frames_per_s'] * r['frame_size'] ** 2 / 4096:>14.0f}")
    print()
    print(f"{'training':<12} {'batch':>6} {'s/step':>8} {'default steps':>14} {'est. minutes':>13}")
    for r in train_rows:
        print(f"{r['architecture']:<12} {r['batch']:>6} {r['s_per_step']:>8.3f} {r['default_steps']:>14} "
              f"{r['s_per_step'] * r['default_steps'] / 60:>13.1f}")
    print(json.dumps({"bench": "deeploco_speed", "machine": platform.node(), "threads": args.threads,
                      "device": str(device), "psf": psf_name, "localize": rows, "stacks": stack_rows,
                      "training": train_rows}))


if __name__ == "__main__":
    main()
