"""DeepLoco on the real bead images: where do localizations land against the challenge's truth?

``bench/deeploco_accuracy.py`` simulates its test frames with the same PSF the models train on,
so any offset between a bead image's centre and the emitter's true position cancels out. Here
the test frames are the SMLM Challenge 2016 bead stack's own slices (150x150 px at 100 nm,
slice k at z = -750 + 10 k nm, six beads whose true positions the challenge lists in
``bead-positions.csv``), brought to SMLM brightness: each slice's signal above its median is
scaled from the beads' 30,000 photons to ``--photons``, ``--background`` photons/px are added
and the challenge EMCCD draws the noise (the stack's own noise, scaled down, stays within it).
Each frame then goes through ``starloc deeploco localize`` with the model's defaults, and the
localizations are matched one-to-one to the six true positions within 250 nm.

Reports, per model: the beads matched, the mean error (truth - localization) in x and y over
all slices and per z band, and the mean and RMS axial error for 3D models. The beads are those
the PSF was built from, so this measures where the PSF is centred and how the network reads
real images, not generalization to other beads (their centres agree to 2-3 nm). Prints a table
and one JSON line.

    python bench/deeploco_beads.py --modality AS --model as.pt --model as_positions.pt
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import numpy as np
import tifffile
import torch

from _cli import starloc  # bench/_cli.py (the script's folder is on sys.path)
from starloc.deeploco.camera import EMCCD
from starloc.smlm_io import read_bead_positions, read_thunderstorm_csv
from starloc.smlm_metrics import match_localizations

BEADS = Path(__file__).resolve().parents[2] / "shared" / "data" / "smlm2016-beads"
BEAD_PHOTONS = 30000.0  # the challenge's bead list
Z_BANDS = ((-750, -450), (-450, -150), (-150, 150), (150, 450), (450, 751))


def bead_frames(modality: str, photons: float, background: float, repeats: int, seed: int):
    """uint16 ADU frames ``(repeats * 151, 150, 150)`` from the bead stack and each frame's z (nm)."""
    raw = tifffile.imread(BEADS / f"beads-{modality}.tif").astype(np.float64)
    camera = EMCCD.smlm2016()
    adu_per_photon = camera.qe * camera.em_gain / camera.e_per_adu
    signal = np.clip(raw - np.median(raw), 0, None) / adu_per_photon * (photons / BEAD_PHOTONS)
    g = torch.Generator().manual_seed(seed)
    frames = [camera.sample(torch.as_tensor(s + background, dtype=torch.float32), g).numpy()
              for _ in range(repeats) for s in signal]
    z = np.tile(-750.0 + 10.0 * np.arange(len(raw)), repeats)
    return np.clip(np.round(np.stack(frames)), 0, 65535).astype(np.uint16), z


def score(table: dict, truth_xy: np.ndarray, z: np.ndarray) -> dict:
    """Matched fraction and mean errors (truth - localization, nm), overall and per z band."""
    n = len(z)
    true_frame = np.repeat(np.arange(n), len(truth_xy))
    true_xy = np.tile(truth_xy, (n, 1))
    true_z = np.repeat(z, len(truth_xy))
    found_xy = np.stack([table["x"], table["y"]], 1)
    pi, ti = match_localizations(table["frame"], found_xy, true_frame, true_xy, lateral_tol=250.0)
    e = true_xy[ti] - found_xy[pi]
    ez = true_z[ti] - table["z"][pi] if "z" in table else None
    row = {"beads": len(true_xy), "matched": len(pi), "unmatched_locs": len(found_xy) - len(pi),
           "mean_error_xy": e.mean(0).round(1).tolist(), "rmse_xy": np.sqrt((e ** 2).mean(0)).round(1).tolist(),
           "within_100nm": float((np.hypot(*e.T) < 100).mean().round(3)), "bands": []}
    for lo, hi in Z_BANDS:
        s = (true_z[ti] >= lo) & (true_z[ti] < hi)
        band = {"z": [lo, min(hi, 750)], "n": int(s.sum()), "dx": float(e[s, 0].mean().round(1)),
                "dy": float(e[s, 1].mean().round(1))}
        if ez is not None:
            band.update(dz=float(ez[s].mean().round(1)), rmse_z=float(np.sqrt((ez[s] ** 2).mean()).round(1)))
        row["bands"].append(band)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modality", choices=("2D", "AS", "DH"), default="AS")
    ap.add_argument("--model", action="append", required=True, help="model file (repeatable)")
    ap.add_argument("--photons", type=float, default=5000.0, help="photons per bead (default 5000)")
    ap.add_argument("--background", type=float, default=50.0, help="photons per pixel (default 50)")
    ap.add_argument("--repeats", type=int, default=3, help="noise draws of each slice (default 3)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    truth = read_bead_positions(BEADS / "bead-positions.csv")
    frames, z = bead_frames(args.modality, args.photons, args.background, args.repeats, args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        stack = Path(tmp) / "beads.tif"
        tifffile.imwrite(stack, frames)
        for i, model in enumerate(args.model):
            locs = Path(tmp) / f"locs{i}.csv"
            starloc("deeploco", "localize", str(stack), "--model", model, "-o", str(locs))
            rows.append({"model": model, **score(read_thunderstorm_csv(locs), truth, z)})
    print(f"# DeepLoco on the {args.modality} bead stack's own slices ({len(frames)} frames, {args.photons:g} "
          f"photons per bead, {args.background:g}/px, challenge EMCCD); errors truth - localization (nm)")
    print(f"{'model':32s} {'matched':>9s} {'mean dx':>8s} {'mean dy':>8s} {'<100nm':>7s}  per z band: dx/dy[/dz]")
    for r in rows:
        bands = "  ".join(f"{b['z'][0]}..{b['z'][1]}: {b['dx']:+.0f}/{b['dy']:+.0f}"
                          + (f"/{b['dz']:+.0f}" if "dz" in b else "") for b in r["bands"])
        print(f"{Path(r['model']).name[:32]:32s} {r['matched']:4d}/{r['beads']:<4d} {r['mean_error_xy'][0]:8.1f} "
              f"{r['mean_error_xy'][1]:8.1f} {r['within_100nm']:7.3f}  {bands}")
    print(json.dumps({"bench": "deeploco_beads", "machine": platform.node(), "modality": args.modality,
                      "photons": args.photons, "background": args.background, "results": rows}))


if __name__ == "__main__":
    main()
