"""The DeepLoco part of ``starloc demo``: bead stack -> PSF -> training -> localize -> score.

Uses the bead z-stack bundled with the package (one astigmatic bead of the SMLM Challenge 2016
calibration data, 40x40 px, z every 20 nm from -750 to +750 nm; Sage et al., Nat. Methods
2019): builds the empirical PSF from it (2D: its in-focus slice), trains a small DeepLoco
model on simulated frames for a short time, simulates a test stack in ADU with the challenge
camera as a user's acquisition would be, localizes it like ``starloc deeploco localize``,
scores against the ground truth and writes the stack, the localizations (ThunderSTORM CSV),
the truth, the model and a rendered super-resolution image.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

import numpy as np
import tifffile
import torch

from ..io import atomic_path
from ..progress import finish
from ..render import render_histogram
from ..smlm_io import write_thunderstorm_csv
from ..smlm_metrics import assess
from .camera import EMCCD
from .recipes import bead_psf, default_simulator
from .simulate import Simulator, truth_table
from .stack import localize_stack
from .training import DeepLocoTrainConfig, train

__all__ = ["BUNDLED_BEADS", "bundled_bead_stack", "run_deeploco_demo"]

BUNDLED_BEADS = "beads-AS-crop.tif"
BUNDLED_Z_STEP = 20.0
BUNDLED_Z0 = -750.0


def bundled_bead_stack() -> Path:
    """Path of the bundled bead z-stack (uint16 ADU, baseline ~100, 100 nm px, z step 20 nm)."""
    return Path(str(resources.files("starloc") / "data" / BUNDLED_BEADS))


def run_deeploco_demo(out_dir: Path, seed: int = 0, steps: int = 400, frames: int = 100,
                      density: float = 0.5) -> dict:
    """Run the demo in 2D; returns the assessment dict (see :func:`starloc.smlm_metrics.assess`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    psf = bead_psf(bundled_bead_stack(), modality="2D", z_step=BUNDLED_Z_STEP, z0=BUNDLED_Z0)
    camera = EMCCD.smlm2016()
    print(f"DeepLoco: PSF from the bundled bead z-stack ({psf}); training {steps} steps on simulated "
          "64x64 frames (challenge EMCCD camera)")
    # a constant learning rate: the recipe's five halvings cost a 400-step run ~0.03 Jaccard
    config = DeepLocoTrainConfig(steps=steps, seed=seed, val_size=0, stage_steps=steps)

    def report(p):
        if p.step % 50 == 0:
            print(f"  step {p.step:5d}  loss {p.loss:8.2f}  elapsed {p.elapsed:5.1f} s")

    model = finish(train(default_simulator(psf, camera), config), report)

    test = Simulator(psf, camera, frame_shape=(64, 64), density=density, photons_range=(1000.0, 7000.0),
                     background_range=(100.0, 100.0))
    g = torch.Generator().manual_seed(seed + 1)
    truth = test.sample_emitters(frames, g)
    adu = camera.sample(test.expected(truth), g).numpy().astype(np.uint16)
    start = time.perf_counter()
    table = localize_stack(model, adu)
    seconds = time.perf_counter() - start
    true_frame, true_xy = truth_table(truth, 2)
    m = assess(table["frame"], np.stack([table["x"], table["y"]], 1), true_frame, true_xy, 100.0, None)
    print(f"localized {len(table['frame'])} emitters in {frames} frames ({frames / seconds:.0f} frames/s); "
          f"{len(true_frame)} true: Jaccard {m['jaccard']:.3f}, RMSE {m['rmse_lateral']:.1f} nm lateral, "
          f"mean offset {m['mean_offset'][0]:+.1f}, {m['mean_offset'][1]:+.1f} nm (100 nm tolerance)")
    with atomic_path(out_dir / "smlm-stack.tif") as tmp:
        tifffile.imwrite(tmp, adu, imagej=True, resolution=(1e3 / psf.pixel_size,) * 2,
                         metadata={"unit": "um", "axes": "TYX"})
    write_thunderstorm_csv(out_dir / "smlm-locs.csv", table)
    write_thunderstorm_csv(out_dir / "smlm-truth.csv", {"frame": true_frame, "x": true_xy[:, 0],
                                                        "y": true_xy[:, 1]})
    model.save(out_dir / "deeploco.pt")
    image = render_histogram(table["x"], table["y"], 10.0, extent=(0.0, 6400.0, 0.0, 6400.0))
    with atomic_path(out_dir / "smlm-render.tif") as tmp:
        tifffile.imwrite(tmp, image.astype(np.float32), imagej=True, resolution=(1e3 / 10.0,) * 2,
                         metadata={"unit": "um"})  # 10 nm/px, as 'starloc render' states it
    print(f"wrote smlm-stack.tif, smlm-locs.csv, smlm-truth.csv, deeploco.pt and smlm-render.tif in {out_dir}")
    return m
