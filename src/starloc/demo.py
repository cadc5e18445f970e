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
from starloc.lodestar.network import NetworkConfig
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
          f"training on ONE {CROP_SIZE}x{CROP_SIZE} crop around the most isolated one (top-left corner at row "
          f"{crop[0]}, col {crop[1]}: --crop {crop[0]} {crop[1]} {crop[2]} {crop[3]})")
    crops = extract_crops(image, [crop])
    start = time.perf_counter()

    config = TrainConfig(seed=seed, max_steps=max_steps)
    model = finish(train(crops, config), _report_every(100, " px"))
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


def run_holography_demo(out_dir: Path, seed: int = 0, n_objects: int = 20, max_steps: int | None = None) -> int:
    """LodeSTAR's extra symmetries end to end: a simulated 256x256 hologram of small
    scatterers at different heights and strengths; train on ONE crop with the axial
    (propagation) and signal (scaling) symmetries, its z found by refocusing; detect all;
    print position, z and signal errors against the truth; write the field, model and CSV."""
    from starloc.lodestar.holography import Optics, refocus_z, simulate_hologram_scene
    from starloc.lodestar.inference import property_columns
    from starloc.metrics import match

    optics = Optics(633.0, 114.0, 1.33)
    out_dir.mkdir(parents=True, exist_ok=True)
    field, truth = simulate_hologram_scene(n_objects, z_um=(-2.0, 3.0), amplitude=(0.5, 2.0), optics=optics,
                                           min_distance=16, rng=seed)
    crop = crop_around(isolated_object(truth[:, :2]), CROP_SIZE, field.shape[-2:])
    print(f"simulated a 256x256 hologram (real, imaginary) of {len(truth)} scatterers at z -2..3 µm, "
          f"633 nm in water, 114 nm pixels; training on ONE {CROP_SIZE}x{CROP_SIZE} crop at row {crop[0]}, "
          f"col {crop[1]}")
    crops = extract_crops(field, [crop], channel_axis=0)
    crop_z = float(refocus_z(crops[0][None], optics)[0])
    print(f"the crop's object refocuses at z = {crop_z:+.2f} µm: z is reported from the focal plane, "
          "the signal as a multiple of that object's")
    config = TrainConfig(seed=seed, max_steps=max_steps, z_range_um=3.0, signal_range=3.0,
                         pixel_size_nm=optics.pixel_size_nm, crop_z_um=crop_z,
                         network=NetworkConfig(in_channels=2))
    start = time.perf_counter()
    model = finish(train(crops, config), _report_every(500))
    print(f"trained {model.metadata['training']['steps_done']} steps in {time.perf_counter() - start:.1f} s")
    found = detect_frames(model, field[None])
    columns = property_columns(model, found.positions)
    m = detection_metrics(found.positions[:, :2], truth[:, :2], tolerance=3.0)
    pi, ti = match(found.positions[:, :2], truth[:, :2], 3.0)
    reference = _crop_object(truth, crop)
    dz = columns["z_um"][pi] - truth[ti, 2]
    ratio = columns["signal"][pi] / (truth[ti, 3] / truth[reference, 3])
    if len(pi) == 0:
        print(f"detected {len(found)} of {len(truth)} scatterers, none within 3 px of one: train longer")
    else:
        print(f"detected {len(found)} of {len(truth)} scatterers: F1 {m['f1']:.3f}, RMSE {m['rmse']:.3f} px per "
              f"axis; z error {np.mean(dz) * 1000:+.0f} ± {np.std(dz) * 1000:.0f} nm; signal error "
              f"{np.mean(np.abs(ratio - 1)) * 100:.1f} % (mean absolute)")
    with atomic_path(out_dir / "hologram.tif") as tmp:  # the pixel size in ImageJ's metadata, as a camera writes it
        tifffile.imwrite(tmp, field.astype(np.float32), imagej=True, resolution=(1e3 / optics.pixel_size_nm,) * 2,
                         metadata={"unit": "um", "axes": "CYX"})
    write_points_csv(out_dir / "hologram_truth.csv", np.zeros(len(truth), dtype=int), truth[:, :2],
                     {"z_um": truth[:, 2], "amplitude": truth[:, 3]})
    write_points_csv(out_dir / "hologram_detections.csv", found.frame, found.positions[:, :2],
                     {**columns, **found.features})
    model.save(out_dir / "hologram_model.pt")
    print(f"wrote hologram.tif (2 x 256 x 256: real, imaginary), hologram_truth.csv, hologram_detections.csv "
          f"and hologram_model.pt in {out_dir}")
    return 0


def _report_every(steps: int, unit: str = ""):
    """A training callback printing the step, consistency loss (in ``unit``) and time."""
    def report(p):
        if p.step % steps == 0:
            print(f"  step {p.step:5d}  consistency {p.consistency:.4f}{unit}  elapsed {p.elapsed:5.1f} s")
    return report


def _crop_object(truth: np.ndarray, crop: tuple[int, int, int, int]) -> int:
    """Index of the object nearest the crop's centre (the one the model is trained on)."""
    centre = np.array([crop[0] + (crop[2] - 1) / 2, crop[1] + (crop[3] - 1) / 2])
    return int(np.argmin(np.hypot(*(truth[:, :2] - centre).T)))
