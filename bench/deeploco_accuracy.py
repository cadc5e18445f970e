"""DeepLoco accuracy on frames simulated from the real SMLM Challenge 2016 bead stacks.

Test frames: 64x64 px (``--frame-size``; larger frames go through the tiled stack
localization) at 100 nm, emitters drawn from the bead-stack PSF (astigmatic ``AS`` and
double-helix ``DH``, not run unless asked: z uniform in -750..750 nm; ``2D``: the stack's
in-focus slice), the challenge's EMCCD camera (``EMCCD.smlm2016``), 1000-7000 photons per
emitter, 100 photons/px background, at densities 0.1, 0.5, 1 and 2 emitters/µm² (Poisson
counts per frame). Fixed seeds: every run scores the same frames.

Methods: a trained DeepLoco model per modality (``--model-as``, ``--model-2d``,
``--model-dh``; trained here with the default recipe when not given) and, for AS and 2D, the
classical baseline of :mod:`starloc.deeploco.baseline` (DoG detection + MLE Gaussian fit,
astigmatic z from a calibration made from the same PSF). Beside them, ``CRB (alone)``: what
a localizer reaching the Cramér-Rao bound of the forward model (:mod:`starloc.deeploco.crb`)
would score if every emitter were alone - the best any method can do on these emitters, and
the yardstick to read the paper's figures against (they come from real data whose photon
counts the paper does not state).

Scored as the SMLM Challenge 2016 (100 nm lateral and 500 nm axial tolerance): Jaccard, RMSE
lateral/axial, efficiency, mean offset (truth - pred), the RMSE of x alone (what the paper
reports), and the flatness of the fractional-pixel positions of all localizations (chi-square
p-value of a 10-bin histogram: small p = grid artifact). For models with an error head, ``u
ratio``: how well their per-localization uncertainty states the error, the RMS over matched
localizations of error / uncertainty, lateral (per axis) and axial (1 = exact on average);
the JSON line also holds the observed and stated RMS error per quartile of the stated
uncertainty. Prints a table and one JSON line.

    python bench/deeploco_accuracy.py --model-as as.pt --model-2d 2d.pt --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import chisquare

from starloc.deeploco import EMCCD, EmpiricalPSF, Simulator
from starloc.deeploco.baseline import GaussianFitLocalizer
from starloc.deeploco.crb import crb_covariance
from starloc.deeploco.model import DeepLoco
from starloc.deeploco.simulate import truth_table
from starloc.deeploco.recipes import DEFOCUS_2D, bead_psf, default_simulator
from starloc.deeploco.stack import localize_stack
from starloc.deeploco.training import DeepLocoTrainConfig, train
from starloc.progress import finish
from starloc.smlm_io import read_bead_positions
from starloc.smlm_metrics import assess, efficiency, match_localizations

BEADS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "smlm2016-beads"
CAMERA = EMCCD.smlm2016()  # the challenge's camera: test frames, their bound, and a model trained here
MODALITIES = ("AS", "2D", "DH")
PAPER = {"AS": {0.1: "J 0.83, x 11.8 nm, z 24.8 nm (real MT0.N1 LD)", 2.0: "J 0.51 (HD)"},
         "2D": {0.1: "J 0.89, 11.6 nm (real MT0.N1 LD)", 2.0: "J 0.61, 18.2 nm (HD)"}}


def comparison_options(ap: argparse.ArgumentParser, seed: int) -> None:
    """The options of the benches that score saved models on frames of their own (backgrounds,
    filaments, defocus): ``--model`` (repeatable), ``--beads``, ``--frame-size``, ``--seed``,
    ``--threads``."""
    ap.add_argument("--model", type=Path, action="append", required=True, help="a DeepLoco model (repeat to compare)")
    ap.add_argument("--beads", type=Path, default=BEADS, help="folder with the SMLM 2016 bead stacks (beads-AS.tif, ...)")
    ap.add_argument("--frame-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=seed)
    ap.add_argument("--threads", type=int, default=2)


def test_set(psf: EmpiricalPSF, density: float, frames: int, seed: int, z_range=None, size: int = 64,
             photons=(1000.0, 7000.0), background=100.0):
    sim = Simulator(psf, CAMERA, frame_shape=(size, size), density=density,
                    photons_range=tuple(photons), background_range=(background, background),
                    z_range=z_range if psf.z_dependent else None)
    return sim.sample(frames, torch.Generator().manual_seed(seed))


def score(table: dict, truth: dict, dim: int, pixel_size: float) -> dict:
    tf, txyz = truth_table(truth, dim)
    pxyz = np.stack([table[k] for k in ("x", "y", "z")[:dim]], 1)
    m = assess(table["frame"], pxyz, tf, txyz, 100.0, 500.0 if dim == 3 else None)
    pi, ti = match_localizations(table["frame"], pxyz, tf, txyz, 100.0, 500.0 if dim == 3 else None)
    # the paper reports the RMSE of x alone ("x RMSE"); rmse_lateral is the challenge's sqrt(dx² + dy²)
    m["rmse_x"] = float(np.sqrt(np.mean((pxyz[pi, 0] - txyz[ti, 0]) ** 2))) if len(pi) else float("nan")
    # fractional pixel positions of the predictions (corner origin: pixel centre at .5)
    frac = np.concatenate([np.mod(table["x"] / pixel_size, 1.0), np.mod(table["y"] / pixel_size, 1.0)])
    hist = np.histogram(frac, bins=10, range=(0, 1))[0]
    m["fraction_hist"] = hist.tolist()
    m["fraction_p"] = float(chisquare(hist).pvalue) if hist.sum() else float("nan")
    m["mean_offset"] = [float(v) for v in m["mean_offset"]]
    if "uncertainty" in table and len(pi):
        m.update(uncertainty_report(table, pi, pxyz[pi] - txyz[ti]))
    return m


def uncertainty_report(table: dict, pi: np.ndarray, err: np.ndarray) -> dict:
    """Stated uncertainty against the errors ``err (M, D)`` nm of the matched rows ``pi``: the
    RMS of error / uncertainty (lateral per axis, axial), and per quartile of the lateral
    uncertainty the observed and the stated lateral RMS error (nm)."""
    u = table["uncertainty"][pi]
    lateral_sq = (err[:, 0] ** 2 + err[:, 1] ** 2) / 2
    out = {"uncertainty_ratio": [float(np.sqrt(np.mean(lateral_sq / u**2)))]}
    if "uncertainty_z" in table and err.shape[1] == 3:
        out["uncertainty_ratio"].append(float(np.sqrt(np.mean(err[:, 2] ** 2 / table["uncertainty_z"][pi] ** 2))))
    edges = np.quantile(u, [0.0, 0.25, 0.5, 0.75, 1.0])
    quartile = np.clip(np.searchsorted(edges, u, side="right") - 1, 0, 3)
    out["uncertainty_quartiles"] = [
        {"observed_nm": float(np.sqrt(lateral_sq[quartile == q].mean())),
         "stated_nm": float(np.sqrt((u[quartile == q] ** 2).mean()))}
        for q in range(4) if np.any(quartile == q)]
    return out


def crb_reference(psf, truth: dict, dim: int, seed: int = 0) -> dict:
    """What an ideal localizer reaching the Cramér-Rao bound would score on these emitters if
    each were alone: every true emitter gets a Gaussian error drawn from its own bound (its
    photons, z, the test background and camera); beyond the tolerances it counts as one false
    positive and one false negative, as in the challenge's matching. Overlaps and detection
    failures are ignored, so this is an upper bound on Jaccard and a lower bound on RMSE."""
    mask = truth["mask"].numpy()
    photons = truth["photons"].numpy()[mask]
    background = np.repeat(truth["background"].numpy(), mask.sum(1))
    z = truth["z"].numpy()[mask] if dim == 3 else 0.0
    cov = crb_covariance(psf, photons, background, z, CAMERA, psf.pixel_size)
    noise = np.random.default_rng(seed).standard_normal((len(cov), dim))
    err = np.einsum("mij,mj->mi", np.linalg.cholesky(cov), noise)
    lateral = np.hypot(err[:, 0], err[:, 1])
    ok = lateral <= 100.0
    if dim == 3:
        ok &= np.abs(err[:, 2]) <= 500.0
    tp, n = int(ok.sum()), len(ok)
    jac = tp / (tp + 2 * (n - tp))
    rl = float(np.sqrt(np.mean(lateral[ok] ** 2)))
    ra = float(np.sqrt(np.mean(err[ok, 2] ** 2))) if dim == 3 else float("nan")
    return {"jaccard": jac, "rmse_lateral": rl, "rmse_axial": ra,
            "rmse_x": float(np.sqrt(np.mean(err[ok, 0] ** 2))), "efficiency_lateral": efficiency(jac, rl, 1.0),
            "efficiency_axial": efficiency(jac, ra, 0.5) if dim == 3 else float("nan"),
            "mean_offset": [float(v) for v in -err[ok].mean(0)], "fraction_p": float("nan")}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--beads", type=Path, default=BEADS, help="folder with beads-AS.tif and beads-2D.tif")
    ap.add_argument("--modalities", nargs="+", default=["AS", "2D"], choices=MODALITIES,
                    help="DH (double helix) has no baseline row: the Gaussian fit cannot model it")
    ap.add_argument("--model-as", type=Path, default=None)
    ap.add_argument("--model-2d", type=Path, default=None)
    ap.add_argument("--model-dh", type=Path, default=None)
    ap.add_argument("--densities", type=float, nargs="+", default=[0.1, 0.5, 1.0, 2.0])
    ap.add_argument("--emitters", type=int, default=4000, help="about this many true emitters per density")
    ap.add_argument("--frame-size", type=int, default=64,
                    help="px: side of the test frames (larger than the training frames: tiled localization)")
    ap.add_argument("--as-z-range", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                    help="nm: z range of the AS test emitters (default: the whole bead stack, -750..750)")
    ap.add_argument("--photons", type=float, nargs=2, default=[1000.0, 7000.0], metavar=("LO", "HI"),
                    help="photons per emitter, uniform (default 1000 7000, DeepLoco's sample code)")
    ap.add_argument("--background", type=float, default=100.0, help="background photons per pixel (default 100)")
    ap.add_argument("--truth-positions", action="store_true",
                    help="draw the test frames with the PSF centred on the challenge's true bead positions "
                         "(bead-positions.csv), where the challenge's own data put their emitters; default: "
                         "centred on the bead images' centroid, as a model trained without --bead-positions")
    ap.add_argument("--json", type=Path, default=None, help="also write the JSON line here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    centre = {}
    if args.truth_positions:
        centre = {"positions": read_bead_positions(args.beads / "bead-positions.csv"), "anchor": "positions"}

    results = []
    for mod in args.modalities:
        psf = bead_psf(args.beads / f"beads-{mod}.tif", modality=mod, **centre)
        dim = 3 if psf.z_dependent else 2
        path = {"AS": args.model_as, "2D": args.model_2d, "DH": args.model_dh}[mod]
        if path is not None:
            model = DeepLoco.load(path, device=args.device)
            train_s = model.metadata.get("training", {}).get("seconds")
        else:
            log = []
            train_psf = psf if mod != "2D" else bead_psf(args.beads / "beads-2D.tif", modality=mod,
                                                         defocus=DEFOCUS_2D, **centre)  # as the CLI trains 2D
            model = finish(train(default_simulator(train_psf, CAMERA),
                                 DeepLocoTrainConfig(device=args.device)), log.append)
            train_s = log[-1].elapsed
        model.to(args.device)
        baseline = None if mod == "DH" else GaussianFitLocalizer(pixel_size=psf.pixel_size, psf=psf)
        for i, d in enumerate(args.densities):
            size = args.frame_size
            n_frames = int(np.clip(args.emitters / (d * size * size * 1e-2), 8, 2000))
            frames, truth = test_set(psf, d, n_frames, seed=1000 + i,
                                     z_range=args.as_z_range if mod == "AS" else None, size=size,
                                     photons=args.photons, background=args.background)
            methods = [("DeepLoco", lambda f: localize_stack(model, f[:, 0].numpy(), input_units="photons"))]
            if baseline is not None:
                methods.append(("Gaussian fit", lambda f: baseline.localize(f[:, 0].numpy())))
            for name, run in methods:
                start = time.perf_counter()
                table = run(frames)
                seconds = time.perf_counter() - start
                m = score(table, truth, dim, psf.pixel_size)
                results.append({"modality": mod, "density": d, "method": name, "frames": n_frames,
                                "emitters": int(truth["mask"].sum()), "frames_per_s": n_frames / seconds,
                                "train_seconds": train_s if name == "DeepLoco" else None, **m})
            results.append({"modality": mod, "density": d, "method": "CRB (alone)", "frames": n_frames,
                            "emitters": int(truth["mask"].sum()), "frames_per_s": float("nan"),
                            "train_seconds": None, **crb_reference(psf, truth, dim, seed=i)})

    print(f"# DeepLoco accuracy: frames simulated from the SMLM 2016 bead stacks, challenge EMCCD, "
          f"{args.threads} threads" + (", PSF centred on the true bead positions" if args.truth_positions else ""))
    head = (f"{'mod':<4} {'dens':>5} {'method':<13} {'Jaccard':>8} {'RMSE xy':>8} {'RMSE z':>7} "
            f"{'RMSE x':>7} {'E_lat':>6} {'E_ax':>6} {'offset x,y[,z] nm':>20} {'grid p':>7} {'frames/s':>9} "
            f"{'u ratio':>9}")
    print(head)
    for r in results:
        off = ",".join(f"{v:.1f}" for v in r["mean_offset"])
        print(f"{r['modality']:<4} {r['density']:>5g} {r['method']:<13} {r['jaccard']:>8.3f} "
              f"{r['rmse_lateral']:>8.1f} {r['rmse_axial']:>7.1f} {r['rmse_x']:>7.1f} {r['efficiency_lateral']:>6.1f} "
              f"{r['efficiency_axial']:>6.1f} {off:>20} {r['fraction_p']:>7.3f} {r['frames_per_s']:>9.0f} "
              f"{','.join(f'{v:.2f}' for v in r.get('uncertainty_ratio', [])) or '-':>9}")
    print("paper (real data, 100 nm tolerance):", json.dumps(PAPER))
    line = json.dumps({"bench": "deeploco_accuracy", "machine": platform.node(), "threads": args.threads,
                       "as_z_range": args.as_z_range, "photons": args.photons, "background": args.background,
                       "truth_positions": args.truth_positions,
                       "results": results})
    print(line)
    if args.json:
        args.json.write_text(line + "\n")


if __name__ == "__main__":
    main()
