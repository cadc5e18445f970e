"""``starloc demo``: the main LodeSTAR job end to end on simulated data with ground truth.

Simulates a 256x256 scene of particles, trains LodeSTAR from ONE crop around one of them,
detects all of them, prints accuracy against the ground truth and writes the scene (TIFF),
the model and the detections (CSV) so the same files can be fed to the CLI.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import tifffile
from scipy.spatial import cKDTree

from starloc import sim
from starloc.errors import InputError
from starloc.io import atomic_path, write_points_csv
from starloc.lodestar.inference import detect_frames, extract_crops
from starloc.lodestar.training import TrainConfig, train
from starloc.metrics import detection_metrics
from starloc.progress import finish

CROP_SIZE = 40


def isolated_object(truth: np.ndarray) -> np.ndarray:
    """The ``(row, col)`` of the object farthest from its nearest neighbour: the one a user
    would crop, since LodeSTAR learns from a crop that holds one object. (The object nearest
    the centre of the demo's scene has two others inside its 40 px crop, and a model trained
    on that crop found none of the 30 points.)"""
    nearest = cKDTree(truth).query(truth, k=2)[0][:, 1]
    return truth[int(np.argmax(nearest))]


def crop_around(position: np.ndarray, size: int, image_shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(row, col, size, size)`` crop centred on ``position``, shifted to stay inside the image."""
    top_left = np.round(position - (size - 1) / 2).astype(int)
    top_left = np.clip(top_left, 0, np.array(image_shape) - size)
    return int(top_left[0]), int(top_left[1]), size, size


def run_demo(out_dir: Path, shape: str = "point", seed: int = 0, n_objects: int = 30, snr: float = 10,
             max_steps: int | None = None) -> int:
    """Run the demo; returns the exit code (0). ``max_steps=None``: the default training budget."""
    if shape not in sim.SHAPES:
        raise InputError(f"unknown shape {shape!r}; choose one of {', '.join(sim.SHAPES)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    image, truth, _ = sim.simulate_scene(shape, n_objects, size=(256, 256), snr=snr, rng=seed)
    crop = crop_around(isolated_object(truth), CROP_SIZE, image.shape)
    print(f"simulated a 256x256 scene of {n_objects} {shape} particles at SNR {snr}; "
          f"training on ONE {CROP_SIZE}x{CROP_SIZE} crop around the most isolated one, at row {crop[0]}, "
          f"col {crop[1]}")
    crops = extract_crops(image, [crop])
    start = time.perf_counter()

    def report(p):
        if p.step % 100 == 0:
            print(f"  step {p.step:5d}  consistency {p.consistency:.4f} px  elapsed {p.elapsed:5.1f} s")

    config = TrainConfig(seed=seed, max_steps=max_steps)
    model = finish(train(crops, config), report)
    print(f"trained {model.metadata['training']['steps_done']} steps in {time.perf_counter() - start:.1f} s")
    found = detect_frames(model, image[None, None])
    m = detection_metrics(found.positions[:, :2], truth, tolerance=3.0)
    print(f"detected {len(found)} of {n_objects} particles: precision {m['precision']:.3f}, "
          f"recall {m['recall']:.3f}, F1 {m['f1']:.3f}, RMSE {m['rmse']:.3f} px per axis "
          "(matched within 3 px)")
    with atomic_path(out_dir / "scene.tif") as tmp:
        tifffile.imwrite(tmp, image)
    write_points_csv(out_dir / "truth.csv", np.zeros(len(truth), dtype=int), truth)
    write_points_csv(out_dir / "detections.csv", found.frame, found.positions[:, :2], found.features)
    model.save(out_dir / "model.pt")
    print(f"wrote {out_dir / 'scene.tif'}, truth.csv, detections.csv and model.pt in {out_dir}")
    return 0
