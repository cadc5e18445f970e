"""``starloc deeploco train|localize`` and ``starloc render`` (registered by :mod:`starloc.cli`).

SMLM tables are physical: nm, x along columns, y along rows, origin at the image's top-left
corner; frames 0-based in memory, 1-based in ThunderSTORM files (as ThunderSTORM writes them).
Errors meant for the user are :class:`~starloc.errors.StarlocError` (exit 2, one line);
Ctrl-C exits 130 (``deeploco train`` first saves the model trained so far).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import signal
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

from starloc.cli_common import (SUFFIXES, add_cluster_options, check_output, cluster_client, frames_type, positive,
                                progress_bar, resolve_device, same_file, task_frames)
from starloc.errors import InputError, StarlocWarning

#: starloc.deeploco.camera.CAMERA_PRESETS, written out so that `starloc --help` imports no torch
CAMERA_KINDS = ("smlm2016", "emccd", "scmos")
#: starloc.deeploco.network.ARCHITECTURES, written out so that `starloc --help` imports no torch
ARCHITECTURES = ("paper", "fcn", "unet")
#: starloc.deeploco.recipes.DEFOCUS_2D, written out so that `starloc --help` imports no torch
DEFOCUS_2D = 400.0
#: EmpiricalPSF.from_bead_stack's spacing when neither the TIFF nor an option states it (nm)
BEAD_DEFAULTS = {"pixel_size": 100.0, "z_step": 10.0}
#: camera options: argparse dest -> Camera keyword
CAMERA_OPTIONS = {"baseline": "baseline", "e_per_adu": "e_per_adu", "em_gain": "em_gain", "qe": "qe",
                  "read_noise": "read_noise"}
#: Picasso needs a localization precision: this one for models without an error head (their
#: tables have no ``uncertainty`` column)
PICASSO_PRECISION_NM = 10.0
HDF5_SUFFIXES = SUFFIXES["hdf5"]


# ------------------------------------------------------------------------------------------
# argument types
# ------------------------------------------------------------------------------------------


#: files a per-pixel camera map may come in
MAP_SUFFIXES = (".tif", ".tiff", ".npy")


def _number_or_map(number: Any):
    """An argparse type: a number (parsed by ``number``) or a per-pixel map, a 2D TIFF or .npy
    file (an sCMOS calibration), read as a float32 array."""

    def parse(text: str) -> Any:
        if Path(text).suffix.lower() not in MAP_SUFFIXES:
            return number(text)
        return _read_camera_map(Path(text))

    parse.__name__ = "number or map file"
    return parse


def _read_camera_map(path: Path) -> Any:
    import numpy as np

    from starloc.io import read_image

    try:
        arr = np.asarray(read_image(path))
    except InputError as exc:
        raise argparse.ArgumentTypeError(f"cannot read the camera map {str(path)!r}: {exc}") from None
    while arr.ndim > 2 and arr.shape[0] == 1:  # a map saved as one frame of a stack; keep 1-px-wide maps 2D
        arr = arr[0]
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise argparse.ArgumentTypeError(f"the camera map {str(path)!r} must be one 2D image (rows x columns of "
                                         f"the camera), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise argparse.ArgumentTypeError(f"the camera map {str(path)!r} holds NaN or inf values")
    return arr.astype(np.float32)


def _range_type(kind: type = float):
    """``LO:HI`` -> (lo, hi) (argparse type)."""

    def parse(text: str) -> tuple[Any, Any]:
        parts = text.split(":")
        try:
            if len(parts) != 2:
                raise ValueError
            lo, hi = (kind(p.strip()) for p in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected LO:HI ({kind.__name__}s), got {text!r}") from None
        if not lo <= hi:
            raise argparse.ArgumentTypeError(f"expected LO <= HI, got {text!r}")
        return lo, hi

    parse.__name__ = f"{kind.__name__} range"
    return parse


# ------------------------------------------------------------------------------------------
# cameras
# ------------------------------------------------------------------------------------------


def _camera_overrides(args) -> dict[str, float]:
    return {kw: getattr(args, dest) for dest, kw in CAMERA_OPTIONS.items() if getattr(args, dest, None) is not None}


def _refuse_camera_for_photons(args) -> None:
    """Camera options convert ADU to photons: with ``--units photons`` they would be ignored."""
    given = ([f"--camera {args.camera}"] if getattr(args, "camera", None) else []) + \
        [f"--{dest.replace('_', '-')}" for dest in CAMERA_OPTIONS if getattr(args, dest, None) is not None]
    if args.units == "photons" and given:
        raise InputError(f"{', '.join(given)}: camera options convert ADU to photons, and --units photons says the "
                         "stack is in photons already; give one or the other")


def build_camera(kind: str | None, overrides: dict[str, float], base: Any = None):
    """A camera of ``kind`` (smlm2016, emccd, scmos) with ``overrides``; with ``kind=None`` the
    ``base`` camera (e.g. a model's) with ``overrides``, or None when neither is given."""
    from starloc.deeploco.camera import Camera, camera_preset

    maps = [f"--{k.replace('_', '-')}" for k, v in overrides.items() if not isinstance(v, (int, float))]
    scmos = kind == "scmos" or (kind is None and base is not None and base.to_dict().get("kind") == "SCMOS")
    if maps and not scmos:
        raise InputError(f"{', '.join(maps)}: per-pixel camera maps are for an sCMOS camera (--camera scmos)")
    if kind is None:
        if base is None:
            if overrides:
                raise InputError("camera settings (" + ", ".join("--" + k.replace("_", "-") for k in overrides)
                                 + ") need --camera smlm2016|emccd|scmos")
            return None
        if not overrides:
            return base
        d = base.to_dict()
        if d.get("kind") == "SCMOS" and "em_gain" in overrides:
            raise InputError("--em-gain does not apply to an sCMOS camera")
        return Camera.from_dict({**d, **overrides})
    if kind == "scmos" and "em_gain" in overrides:
        raise InputError("--em-gain does not apply to an sCMOS camera")
    return camera_preset(kind, **overrides)


def _add_camera_options(p: argparse.ArgumentParser, what: str, per_pixel: bool = False) -> None:
    """The camera options; ``per_pixel``: baseline, e-/ADU and read noise also take sCMOS maps
    (commands that convert whole frames: training simulates frames anywhere on the chip)."""
    g = p.add_argument_group("camera", what)
    g.add_argument("--camera", choices=CAMERA_KINDS, default=None,
                   help="camera model: smlm2016 (the SMLM Challenge 2016 EMCCD), emccd or scmos "
                        "(their defaults, see starloc.deeploco.camera), changed by the options below")
    maps = " (sCMOS: or a per-pixel map, a 2D .tif/.npy of the frames' size)" if per_pixel else ""
    number = _number_or_map if per_pixel else (lambda parse: parse)
    g.add_argument("--baseline", type=number(float), default=None, help=f"camera offset (ADU){maps}")
    g.add_argument("--e-per-adu", type=number(positive()), default=None,
                   help=f"electrons per ADU (after EM gain){maps}")
    g.add_argument("--em-gain", type=positive(), default=None, help="EM gain (EMCCD)")
    g.add_argument("--qe", type=positive(), default=None, help="quantum efficiency (0..1)")
    g.add_argument("--read-noise", type=number(float), default=None, help=f"read noise (electrons rms){maps}")


# ------------------------------------------------------------------------------------------
# deeploco train
# ------------------------------------------------------------------------------------------


def _build_psf(args):
    from starloc.deeploco.psf import AstigmaticPSF, EmpiricalPSF, Gaussian2DPSF, bead_summary

    spec = str(args.psf)
    bead_opts = {"z_step": args.psf_z_step, "z0": args.psf_z0, "baseline": args.psf_baseline}
    bead_given = [k for k, v in bead_opts.items() if v is not None]
    kind = spec.lower()
    if kind in ("gaussian", "astigmatic"):
        if args.in_focus or args.defocus is not None:
            raise InputError("--in-focus and --defocus apply to a bead-stack PSF")
        if bead_given or args.bead_positions is not None:
            raise InputError("--psf-z-step, --psf-z0, --psf-baseline and --bead-positions apply to a bead-stack "
                             f"PSF, not to --psf {kind}")
        if kind == "gaussian":
            if args.astig_c is not None or args.astig_d is not None:
                raise InputError("--astig-c and --astig-d apply to --psf astigmatic")
            if args.z_range is not None:
                raise InputError("--z-range applies to 3D PSFs (astigmatic, or a bead z-stack without --in-focus): "
                                 "--psf gaussian trains a 2D model")
            return Gaussian2DPSF(**({} if args.sigma is None else {"sigma_nm": args.sigma}))
        kw: dict[str, Any] = {}
        if args.sigma is not None:
            kw["sigma0"] = args.sigma
        if args.astig_c is not None:
            kw["c"] = args.astig_c
        if args.astig_d is not None:
            kw["d"] = args.astig_d
        if args.z_range is not None:
            kw["z_range"] = args.z_range
        return AstigmaticPSF(**kw)
    path = Path(spec)
    if not path.exists():
        raise InputError(f"--psf {spec!r} is neither 'gaussian', 'astigmatic' nor an existing bead z-stack file")
    if args.sigma is not None or args.astig_c is not None or args.astig_d is not None:
        raise InputError("--sigma, --astig-c and --astig-d apply to the gaussian and astigmatic PSFs, "
                         "not to a bead stack")
    from starloc.io import read_image

    import numpy as np

    stack = np.asarray(read_image(path))
    kw = {k: v for k, v in bead_opts.items() if v is not None}
    if args.pixel_size is not None:
        kw["pixel_size"] = args.pixel_size
    kw.update(_stated_spacing(path, kw))
    if args.bead_positions is not None:
        from starloc.smlm_io import read_bead_positions

        kw.update(positions=read_bead_positions(args.bead_positions), anchor="positions")
    if args.in_focus and args.z_range is not None:
        raise InputError("--z-range applies to 3D models: --in-focus trains a 2D one (--defocus sets how far "
                         "out of focus its emitters lie)")
    if args.defocus is not None and not args.in_focus:
        raise InputError("--defocus applies to 2D models (--in-focus); a 3D model's range is --z-range")
    psf = EmpiricalPSF.from_bead_stack(stack, **kw)  # the focus at the middle slice unless --psf-z0
    hint = "" if args.bead_positions else "; centred on their images (--bead-positions: on the beads' true positions)"
    print(f"starloc: PSF of {path.name} {bead_summary(psf.meta)}{hint}", file=sys.stderr)
    return psf.in_focus(DEFOCUS_2D if args.defocus is None else args.defocus) if args.in_focus else psf


def _stated_spacing(path: Path, given: dict[str, Any]) -> dict[str, float]:
    """The pixel size and z step a bead TIFF's metadata states, for those the options left out
    (said on stderr); an option that contradicts the file is kept, with a warning. A pixel
    size the file states in a form starloc cannot use (non-square, an unknown unit) needs
    ``--pixel-size`` rather than the default."""
    from starloc.tiff_metadata import tiff_spacing, tiff_spacing_problem

    stated = dict(zip(("pixel_size", "z_step"), tiff_spacing(path)))
    if stated["pixel_size"] is None and "pixel_size" not in given:
        problem = tiff_spacing_problem(path)
        if problem:
            raise InputError(f"{path.name} states its pixel size as {problem}: give --pixel-size (nm)")
    options = {"pixel_size": "--pixel-size", "z_step": "--psf-z-step"}
    used: dict[str, float] = {}
    for key, value in stated.items():
        if value is None:
            continue
        if key not in given:
            used[key] = value
        elif abs(given[key] - value) > 0.01 * value:
            print(f"starloc: warning: {path.name} states {key.replace('_', ' ')} {value:g} nm; using "
                  f"{options[key]} {given[key]:g}", file=sys.stderr)
    if used:
        print(f"starloc: from {path.name}'s metadata: " + ", ".join(f"{k.replace('_', ' ')} {v:g} nm"
                                                                  for k, v in used.items()), file=sys.stderr)
    assumed = [f"{key.replace('_', ' ')} {BEAD_DEFAULTS[key]:g} nm ({options[key]} to change)"
               for key in options if key not in given and key not in used]
    if assumed:
        print(f"starloc: {path.name} states no " + " or ".join(k.replace('_', ' ') for k in options
                                                              if k not in given and k not in used)
              + ": assuming " + ", ".join(assumed), file=sys.stderr)
    return used


def _parse_value(key: str, text: str, default: Any) -> Any:
    t = text.strip()
    try:
        if isinstance(default, bool):
            low = t.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(default, int):
            return int(t)
        if isinstance(default, float):
            return float(t)
        if isinstance(default, (tuple, list)):
            kind = type(default[0]) if len(default) else float
            kind = float if kind is bool else kind
            return tuple(kind(v.strip()) for v in t.split(",") if v.strip())
        if isinstance(default, str):
            return t
        for kind in (int, float):
            try:
                return kind(t)
            except ValueError:
                pass
        return t
    except ValueError:
        raise InputError(f"--set {key}={text}: expected a value like {default!r}") from None


def parse_settings(items: list[str] | None, cls: type) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> keyword arguments of the dataclass ``cls`` (values typed like the
    fields' defaults; tuples comma-separated)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise InputError(f"--set {item!r}: unknown training setting; known: {', '.join(sorted(fields))}")
        f = fields[key]
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        out[key] = _parse_value(key, value, default)
    return out


def _train_config(args, device: str, sim: Any):
    """The DeepLocoTrainConfig (only the options the user set; the rest keeps the defaults, or the
    checkpoint's settings when resuming) and, when the architecture is not a config field, the
    new model to pass to ``train``."""
    from starloc.deeploco.training import DeepLocoTrainConfig, Trainer

    names = {f.name for f in dataclasses.fields(DeepLocoTrainConfig)}
    given = parse_settings(args.set, DeepLocoTrainConfig)
    for dest in ("steps", "batch", "lr", "seed"):
        value = getattr(args, dest)
        if value is not None:
            given[dest] = value
    given["device"] = device
    arch = args.arch
    if args.resume is not None and arch is not None:
        raise InputError("--arch cannot be combined with --resume: the architecture comes from the checkpoint")
    if arch is not None and "architecture" in names:
        given["architecture"] = arch
        arch = None
    if args.resume is not None:
        stored = Trainer.from_checkpoint(args.resume, sim).config
        return dataclasses.replace(stored, **given), None
    config = DeepLocoTrainConfig(**given)
    if arch is None:
        return config, None
    from starloc.deeploco.model import DeepLoco

    net_cfg = dataclasses.replace(config.network_config(sim), architecture=arch)
    model = DeepLoco.new(net_cfg, seed=config.seed, psf=sim.psf, camera=sim.camera,
                         link_distance=config.link_distance, threshold=config.threshold)
    return config, model


class _Interrupt:
    """SIGINT -> a flag checked between training steps (a second Ctrl-C stops at once)."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def _handler(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _Interrupt:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None


#: train options that describe the simulation (argparse dest -> option), all left out with --resume
SIMULATION_OPTIONS = {"sigma": "--sigma", "astig_c": "--astig-c", "astig_d": "--astig-d", "psf_z_step": "--psf-z-step",
                      "psf_z0": "--psf-z0", "psf_baseline": "--psf-baseline", "bead_positions": "--bead-positions",
                      "pixel_size": "--pixel-size",
                      "frame_size": "--frame-size", "density": "--density", "emitters": "--emitters",
                      "photons": "--photons", "photons_distribution": "--photons-distribution",
                      "background": "--background", "background_variation": "--background-variation",
                      "z_range": "--z-range", "camera": "--camera",
                      **{dest: "--" + dest.replace("_", "-") for dest in CAMERA_OPTIONS}}


def _resumed_simulator(args, device: str):
    """``--resume`` without ``--psf``: the checkpoint's own simulation (any simulation option is an error)."""
    from starloc.deeploco.training import checkpoint_simulator

    if args.resume is None:
        raise InputError("--psf is required: a bead z-stack TIFF, 'gaussian' or 'astigmatic'")
    given = [opt for dest, opt in SIMULATION_OPTIONS.items() if getattr(args, dest, None) is not None]
    given += ["--in-focus"] if args.in_focus else []
    given += ["--defocus"] if args.defocus is not None else []
    if given:
        raise InputError(f"{', '.join(given)} without --psf: --resume continues on the checkpoint's own simulation; "
                         "leave the simulation options out (or give all of them, --psf included, as in the first run)")
    return checkpoint_simulator(args.resume, device)


def _simulator_from_options(args, device: str):
    """The training simulator the PSF, camera and simulation options describe (defaults for the rest)."""
    from starloc.deeploco.recipes import default_simulator

    psf = _build_psf(args)
    camera = build_camera(args.camera, _camera_overrides(args))
    sim_kw: dict[str, Any] = {"device": device}
    if args.frame_size is not None:
        sim_kw["frame_shape"] = (args.frame_size, args.frame_size)
    pixel_size = args.pixel_size if args.pixel_size is not None else getattr(psf, "pixel_size", None)
    if pixel_size is not None:
        sim_kw["pixel_size"] = pixel_size
    for dest, key in (("density", "density"), ("emitters", "n_range"), ("photons", "photons_range"),
                      ("background", "background_range"), ("z_range", "z_range"),
                      ("photons_distribution", "photons_distribution"),
                      ("background_variation", "background_variation")):
        if getattr(args, dest) is not None:
            sim_kw[key] = getattr(args, dest)
    return default_simulator(psf, camera, **sim_kw)


def cmd_deeploco_train(args) -> int:
    from starloc.cli import EXIT_INTERRUPTED
    from starloc.deeploco import training
    from starloc.deeploco.training import Trainer

    check_output(args.output, "model", inputs=(args.psf, args.resume))
    if args.checkpoint is not None:
        check_output(args.checkpoint, inputs=(args.psf,))
        if same_file(args.checkpoint, args.output):
            raise InputError(f"--checkpoint and -o name the same file ({str(args.checkpoint)!r}): the checkpoints "
                             "would be replaced by the model and the model by checkpoints; give two names")
    if args.checkpoint_every is not None and args.checkpoint is None:
        raise InputError("--checkpoint-every needs --checkpoint PATH")
    device = resolve_device(args.device)
    if args.psf is None:
        sim = _resumed_simulator(args, device)
    else:
        sim = _simulator_from_options(args, device)
    config, model = _train_config(args, device, sim)

    own_ckpt = args.checkpoint is None
    if own_ckpt:  # a private checkpoint, so that Ctrl-C can save the model trained so far
        fd, name = tempfile.mkstemp(dir=Path(args.output).parent, prefix=f".{Path(args.output).name}.",
                                    suffix=".ckpt")
        os.close(fd)
        os.unlink(name)
        ckpt = Path(name)
    else:
        ckpt = Path(args.checkpoint)
    gen = training.train(sim, config, model=model, resume=args.resume, checkpoint_path=ckpt,
                         checkpoint_every=args.checkpoint_every or 0)
    last = None
    finished = False  # the generator returned: a Ctrl-C during its calibration changes nothing
    replaces = Path(args.output).exists()
    val: dict[str, str] = {}
    try:
        with _Interrupt() as interrupt, progress_bar(config.steps, "training", "step") as bar:
            while True:
                if interrupt.requested:
                    gen.close()
                    break
                try:
                    p = next(gen)
                except StopIteration as stop:
                    model, finished = stop.value, True
                    break
                last = p
                bar.update(p.step - bar.n)
                if p.val_jaccard is not None:
                    val = {"val_J": f"{p.val_jaccard:.3f}"}
                    if p.val_rmse_lateral is not None and math.isfinite(p.val_rmse_lateral):
                        val["rmse"] = f"{p.val_rmse_lateral:.1f}nm"
                bar.set_postfix(loss=f"{p.loss:.4g}", **val, refresh=False)
        if interrupt.requested and not finished:
            if last is None:
                print("starloc: interrupted before the first training step; nothing written", file=sys.stderr)
                return EXIT_INTERRUPTED
            trainer = Trainer.from_checkpoint(ckpt, sim, config)
            model = trainer.model
            model.metadata = {**model.metadata, "training": {**trainer.training_metadata(last), "interrupted": True}}
            model.net.eval()
            _record_source(model, args)
            out = _interrupted_name(Path(args.output)) if replaces else Path(args.output)
            model.save(out)
            kept = f" ({args.output} was there before and is kept)" if replaces else ""
            tail = "" if own_ckpt else f"; resume with --resume {ckpt}"
            print(f"starloc: interrupted after step {trainer.step}: the model so far was written to {out}{kept}, "
                  f"not calibrated (default confidence threshold; before localizing with it, run 'starloc "
                  f"deeploco calibrate {out} -o {out}'){tail}", file=sys.stderr)
            return EXIT_INTERRUPTED
    finally:
        if own_ckpt and ckpt.exists():
            ckpt.unlink()
    _record_source(model, args)
    model.save(args.output)
    meta = model.metadata.get("training", {})
    done = meta.get("steps_done", last.step if last else 0)
    extra = f", validation Jaccard {val['val_J']}" if "val_J" in val else ""
    seconds = f" in {last.elapsed:.1f} s" if last is not None else ""
    loss = f" (loss {last.loss:.4g}{extra})" if last is not None else ""
    print(f"trained {done} steps{seconds}{loss}; model written to {args.output}")
    cal = meta.get("calibration")
    if cal:
        chosen = "chosen" if cal.get("threshold") is not None else "kept"
        print(f"calibrated on {cal['frames']} simulated frames: confidence threshold {model.threshold:g} "
              f"({chosen}; Jaccard {cal['jaccard']:.3f} there), {_correction_name(model)} stored")
    elif config.calibration_frames:
        print(f"starloc: warning: not calibrated: too few localizations of {config.calibration_frames} simulated "
              f"frames matched their emitters (too little training?); the confidence threshold stays "
              f"{model.threshold:g} and no sub-pixel correction is stored", file=sys.stderr)
    if model.camera is None:
        print("note: the model has no camera model: localize stacks already in photons (--units photons) "
              "or give camera settings to 'starloc deeploco localize'")
    return 0


def _interrupted_name(path: Path) -> Path:
    """Where an interrupted training writes when ``path`` already holds a file (never replaced
    by an unfinished model): ``model.interrupted.pt``, numbered if that exists too."""
    candidate, n = path.with_name(f"{path.stem}.interrupted{path.suffix}"), 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}.interrupted{n}{path.suffix}")
    return candidate


def _record_source(model: Any, args) -> None:
    model.metadata = {**model.metadata, "source": {"command": "deeploco train", "psf": str(args.psf)}}


# ------------------------------------------------------------------------------------------
# deeploco calibrate
# ------------------------------------------------------------------------------------------


def cmd_deeploco_calibrate(args) -> int:
    from starloc.deeploco.calibration import calibrate
    from starloc.deeploco.model import DeepLoco
    from starloc.deeploco.simulate import Simulator

    check_output(Path(args.output), "model")  # the input model itself is allowed: it is read first
    device = resolve_device(args.device)
    model = DeepLoco.load(args.model, device=device)
    training = model.metadata.get("training") or {}
    if not isinstance(training.get("simulator"), dict) or model.psf is None:
        raise InputError(f"{args.model}: the model file does not record its training simulator and PSF; "
                         "only models from 'starloc deeploco train' (or starloc.deeploco.train) can be recalibrated")
    sim = Simulator.from_dict(training["simulator"], model.psf, model.camera, device=device)
    cal = calibrate(model, sim, frames=args.frames, tolerance=training.get("tolerance", 100.0),
                    axial_tolerance=training.get("axial_tolerance", 500.0), choose_threshold=not args.keep_threshold)
    if cal is None:
        raise InputError(f"{args.model}: too few localizations matched the simulated truth to calibrate "
                         f"(is --frames {args.frames} too few? or the model untrained or failed?); "
                         "nothing written")
    before = model.threshold
    cal.apply(model)
    model.metadata = {**model.metadata, "training": {**training, "calibration": cal.to_dict()}}
    model.save(args.output)
    print(f"calibrated on {args.frames} simulated frames: confidence threshold {before:g} -> {model.threshold:g} "
          f"(Jaccard {cal.jaccard:.3f} there), {_correction_name(model)} remeasured; model written to {args.output}")
    return 0


def _correction_name(model) -> str:
    axial = model.subpixel is not None and model.subpixel.axial is not None
    name = "sub-pixel and axial correction" if axial else "sub-pixel correction"
    return name + (" and uncertainty scale" if model.uncertainty_scale is not None else "")


# ------------------------------------------------------------------------------------------
# deeploco localize
# ------------------------------------------------------------------------------------------


def _run_with_bar(gen: Any, total: int) -> dict[str, Any]:
    """Drive a localization generator under a progress bar (frames); return its table."""

    with progress_bar(total, "localizing", "frame") as bar:
        while True:
            try:
                p = next(gen)
            except StopIteration as stop:
                return stop.value
            bar.update(p.frames_done - bar.n)
            bar.set_postfix(locs=p.localizations, refresh=False)


def _localize_on_cluster(args, client, camera: Any, options: dict[str, Any], total: int) -> dict[str, Any]:
    """``--scheduler`` / ``--workers``: the same localization as tasks on the dask cluster of ``client``."""
    from starloc.deeploco.cluster import iter_localize_stack_on_cluster

    gen = iter_localize_stack_on_cluster(args.model, args.stack, client, frames=args.frames,
                                         frames_per_task=task_frames(args, client, total), device=args.device,
                                         camera=camera, input_units=args.units, **options)
    return _run_with_bar(gen, total)


def cmd_deeploco_localize(args) -> int:
    from starloc.deeploco.model import DeepLoco
    from starloc.deeploco.stack import iter_localize_stack, open_stack

    out = Path(args.output)
    fmt = args.format or ("picasso" if out.suffix.lower() in HDF5_SUFFIXES else "thunderstorm")
    if fmt == "picasso" and out.suffix.lower() not in HDF5_SUFFIXES:
        raise InputError(f"Picasso output needs a .hdf5 file name, got {str(out)!r}")
    check_output(out, "hdf5" if fmt == "picasso" else "csv", inputs=(args.stack, args.model))
    _refuse_camera_for_photons(args)
    on_cluster = args.scheduler is not None or args.workers is not None
    # On a cluster each worker loads the model on its own --device (the GPU may be theirs, not this machine's).
    model = DeepLoco.load(args.model, device="cpu" if on_cluster else resolve_device(args.device))
    camera = build_camera(args.camera, _camera_overrides(args), base=model.camera)
    options = {"pixel_size": args.pixel_size, "batch_size": args.batch_size, "threshold": args.threshold,
               "tile": args.tile, "overlap": args.overlap, "chunk_frames": args.chunk_frames}
    options = {k: v for k, v in options.items() if v is not None}
    with open_stack(args.stack) as src, cluster_client(args) as client:
        frames = args.frames or slice(None)
        total = len(range(*frames.indices(src.n_frames)))
        if client is not None:
            table = _localize_on_cluster(args, client, camera, options, total)
        else:
            table = _run_with_bar(iter_localize_stack(model, src, camera=camera, input_units=args.units,
                                                      frames=args.frames, **options), total)
        _write_localizations(args, out, fmt, model, table, total, (src.n_frames, *src.frame_shape))
    return 0


def _write_localizations(args, out: Path, fmt: str, model: Any, table: dict[str, Any], total: int,
                         stack_shape: tuple[int, int, int]) -> None:
    """The ThunderSTORM CSV or Picasso HDF5 (+ YAML) of ``table``; a one-line summary."""
    from starloc.smlm_io import write_picasso, write_thunderstorm_csv

    n = len(table["frame"])
    if fmt == "picasso":
        T, H, W = stack_shape
        precision = PICASSO_PRECISION_NM if args.precision is None else args.precision
        if args.precision is not None:  # given: it replaces the model's per-localization uncertainty
            table = {k: v for k, v in table.items() if k != "uncertainty"}
        h5, yml = write_picasso(out, table, pixel_size_nm=float(model.config.pixel_size), width=W, height=H,
                                n_frames=T, precision_nm=precision,
                                info={"Localized by": "starloc deeploco localize", "Model": str(args.model)})
        print(f"{n} localization(s) in {total} frame(s) written to {h5} (+ {yml.name}){_precision_note(table)}")
    else:
        write_thunderstorm_csv(out, table)
        print(f"{n} localization(s) in {total} frame(s) written to {out}{_precision_note(table)}")


def _precision_note(table: dict) -> str:
    """``"; median uncertainty 24 nm lateral[, 51 nm axial]"`` for a table with uncertainty
    columns and rows, else empty."""
    import numpy as np

    if "uncertainty" not in table or not len(table["uncertainty"]):
        return ""
    axial = f", {np.median(table['uncertainty_z']):.0f} nm axial" if "uncertainty_z" in table else ""
    return f"; median uncertainty {np.median(table['uncertainty']):.0f} nm lateral{axial}"


# ------------------------------------------------------------------------------------------
# deeploco brightness
# ------------------------------------------------------------------------------------------

#: frames read by 'deeploco brightness' when --frames is not given (= brightness.DEFAULT_FRAMES,
#: written out so that `starloc --help` imports no torch)
BRIGHTNESS_FRAMES = 1000


def cmd_deeploco_brightness(args) -> int:
    import numpy as np

    from starloc.deeploco.brightness import measure_brightness
    from starloc.deeploco.stack import open_stack, to_photons

    _refuse_camera_for_photons(args)
    camera = build_camera(args.camera, _camera_overrides(args))
    if args.units == "adu" and camera is None:
        raise InputError("frames in camera ADU need --camera smlm2016|emccd|scmos (and its settings) to be "
                         "converted to photons; give --units photons for frames already in photons")
    with open_stack(args.stack) as src:
        frames = range(*(args.frames or slice(0, BRIGHTNESS_FRAMES)).indices(src.n_frames))
        if not len(frames):
            raise InputError(f"--frames selects no frame of {src.n_frames}")
        block = src.read(frames.start, frames.stop)[:: frames.step]
    name = repr(str(args.stack))
    photons = to_photons(block, camera if args.units == "adu" else None, frames.start, name)
    found = measure_brightness(photons, window=args.window)
    b5, b50, b95 = np.percentile(found.background, [5, 50, 95])
    p5, p50, p95 = np.percentile(found.photons, [5, 50, 95])
    print(f"background: {b5:.1f} / {b50:.1f} / {b95:.1f} photons/px (5th / 50th / 95th percentile over "
          f"{found.frames} frames)")
    print(f"emitters:   {p5:.0f} / {p50:.0f} / {p95:.0f} photons ({len(found.photons)} isolated spots, "
          f"{args.window}x{args.window} px each)")
    (p_lo, p_hi), (b_lo, b_hi) = found.suggested_ranges()  # after the numbers, which it may refuse
    print(f"train with: --photons {p_lo:g}:{p_hi:g} --background {b_lo:g}:{b_hi:g}")
    return 0


# ------------------------------------------------------------------------------------------
# render
# ------------------------------------------------------------------------------------------


def _read_locs(path: Path, camera_pixel_size: float | None) -> dict[str, Any]:
    import numpy as np

    from starloc.io import is_points_csv, no_file, read_points_csv
    from starloc.smlm_io import is_thunderstorm_csv, read_picasso, read_thunderstorm_csv

    if not path.is_file():
        raise no_file(path, "localization")
    reader = (read_picasso if path.suffix.lower() in HDF5_SUFFIXES
              else read_thunderstorm_csv if is_thunderstorm_csv(path) else None)
    if reader is not None:
        try:
            return reader(path, pixel_size_nm=camera_pixel_size)
        except InputError as exc:  # the library's words for the option that gives it
            if camera_pixel_size is None and "pixel size" in str(exc):
                raise InputError(f"{exc} with --camera-pixel-size NM") from None
            raise
    if is_points_csv(path):
        if camera_pixel_size is None:
            raise InputError(f"{str(path)!r} is a starloc points table (row, col in camera pixels): give "
                             "--camera-pixel-size NM to place it in nm")
        frames, pos, features = read_points_csv(path)
        table = {"frame": frames, "x": (pos[:, 1] + 0.5) * camera_pixel_size,
                 "y": (pos[:, 0] + 0.5) * camera_pixel_size}
        table.update({k: np.asarray(v) for k, v in features.items() if k not in table})
        return table
    raise InputError(f"{str(path)!r} is neither a ThunderSTORM CSV (\"frame\",\"x [nm]\",\"y [nm]\",...) nor "
                     "a starloc points table (frame,row,col,...)")


def cmd_render(args) -> int:
    import numpy as np
    import tifffile

    from starloc.io import atomic_write
    from starloc.render import render_gaussian, render_histogram, render_z_rgb
    from starloc.smlm_io import picasso_field_nm

    out = Path(args.output)
    check_output(out, "tiff", inputs=(args.locs,))
    table = _finite_rows(_read_locs(Path(args.locs), args.camera_pixel_size), Path(args.locs).name, ("x", "y", "z"),
                         "localization(s)")
    x, y = np.asarray(table["x"], np.float64), np.asarray(table["y"], np.float64)
    p = float(args.pixel_size)
    sigma: Any = args.sigma
    if sigma is None and args.method == "gaussian":
        sigma = table["uncertainty"] if "uncertainty" in table else p
    extent = args.extent
    if extent is None and Path(args.locs).suffix.lower() in HDF5_SUFFIXES:
        camera_field = picasso_field_nm(args.locs, args.camera_pixel_size)  # the frames' Width x Height
        extent = None if camera_field is None else (0.0, camera_field[0], 0.0, camera_field[1])
    if extent is not None:
        field: dict[str, Any] = {"extent": tuple(extent)}
        x0, x1, y0, y1 = extent
        inside = int(np.count_nonzero((x >= x0) & (x < x1) & (y >= y0) & (y < y1)))
    elif len(x):
        # From the origin to past the last localization, by the kernel's reach (4 sigma, the
        # renderer's truncation) for a Gaussian rendering, so that the edge localizations keep
        # their whole kernel.
        margin = 4.0 * float(np.max(sigma)) if args.method == "gaussian" else 0.0
        field = {"shape": (int((max(float(y.max()), 0.0) + margin) // p) + 1,
                           int((max(float(x.max()), 0.0) + margin) // p) + 1)}
        inside = int(np.count_nonzero((x >= 0) & (y >= 0)))
    else:
        raise InputError(f"{str(args.locs)!r} holds no localization: give --extent to render an empty field")
    try:
        if args.color_by_z:
            if "z" not in table:
                raise InputError(f"--color-by-z: {str(args.locs)!r} has no z column")
            rgb = render_z_rgb(x, y, table["z"], p, sigma_nm=sigma if args.method == "gaussian" else None,
                               **field)
            image = np.round(rgb * 255).astype(np.uint8)
        elif args.method == "histogram":
            image = render_histogram(x, y, p, **field)
        else:
            image = render_gaussian(x, y, p, sigma, **field)
    except ValueError as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"cannot render {str(args.locs)!r}: {exc}") from None
    extra = {"photometric": "rgb"} if image.ndim == 3 else {}
    atomic_write(out, lambda tmp: tifffile.imwrite(tmp, image, imagej=True, resolution=(1000.0 / p, 1000.0 / p),
                                                   metadata={"unit": "um"}, **extra))
    outside = f" ({len(x) - inside} outside the field left out)" if inside < len(x) else ""
    print(f"{inside} localization(s) rendered into a {image.shape[0]}x{image.shape[1]} image "
          f"({p:g} nm/px) written to {out}{outside}")
    return 0


def _read_truth(path: Path, camera_pixel_size: float | None) -> dict[str, Any]:
    """Ground truth: any table ``render`` reads (ThunderSTORM CSV, starloc points CSV), else an
    SMLM Challenge activations.csv (with or without its header)."""
    from starloc.io import is_points_csv, no_file
    from starloc.smlm_io import is_thunderstorm_csv, read_activations

    if not path.is_file():
        raise no_file(path, "ground-truth")
    if is_thunderstorm_csv(path) or is_points_csv(path) or path.suffix.lower() in HDF5_SUFFIXES:
        return _read_locs(path, camera_pixel_size)
    return read_activations(path)


#: (key of smlm_metrics.assess, label, format) of the rows ``evaluate`` prints
_EVALUATE_ROWS = (("jaccard", "Jaccard", "{:.3f}"), ("recall", "recall", "{:.3f}"),
                  ("precision", "precision", "{:.3f}"), ("rmse_lateral", "RMSE lateral (nm)", "{:.1f}"),
                  ("rmse_axial", "RMSE axial (nm)", "{:.1f}"), ("efficiency_lateral", "efficiency lateral", "{:.1f}"),
                  ("efficiency_axial", "efficiency axial", "{:.1f}"))


def cmd_evaluate(args) -> int:
    import json

    import numpy as np

    from starloc.io import atomic_write
    from starloc.smlm_metrics import assess

    if args.json is not None:
        check_output(args.json, "json", inputs=(args.locs, args.truth))
    pred = _without_empty_z(_read_locs(Path(args.locs), args.camera_pixel_size), Path(args.locs).name)
    truth = _without_empty_z(_read_truth(Path(args.truth), args.camera_pixel_size), Path(args.truth).name)
    dim = 3 if ("z" in pred and "z" in truth and not args.lateral_only) else 2
    axes = ("x", "y", "z")[:dim]
    pred = _finite_rows(pred, Path(args.locs).name, axes, "localization(s)")
    truth = _finite_rows(truth, Path(args.truth).name, axes, "true emitter(s)")
    if len(truth["x"]) == 0:
        raise InputError(f"{str(args.truth)!r} lists no true emitter to score against")

    def score(shift: int = 0) -> dict[str, Any]:
        return assess(pred["frame"], np.stack([pred[a] for a in axes], 1), truth["frame"] + shift,
                      np.stack([truth[a] for a in axes], 1), args.tolerance,
                      args.axial_tolerance if dim == 3 else None)

    result = score()
    _warn_frame_mismatch(pred["frame"], truth["frame"], result, score)
    tol = f"{args.tolerance:g} nm lateral" + (f", {args.axial_tolerance:g} nm axial" if dim == 3 else "")
    print(f"{len(pred['x'])} localization(s) against {len(truth['x'])} true emitter(s), {dim}D, matched within {tol}: "
          f"{result['tp']} matched, {result['fp']} false, {result['fn']} missed")
    for key, label, fmt in _EVALUATE_ROWS:
        if dim == 3 or "axial" not in key:
            print(f"  {label:<20} {fmt.format(result[key])}")
    offset = ", ".join(f"{a} {v:+.1f}" for a, v in zip(axes, result["mean_offset"]))
    print(f"  {'mean offset (nm)':<20} {offset}  (truth - localization)")
    if args.json is not None:
        record = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in result.items()}
        record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1) + "\n"))
    return 0


def _without_empty_z(table: dict[str, Any], name: str) -> dict[str, Any]:
    """The table without its z column when no row has a finite z (an empty ``znano`` column of
    a 2D ground truth): a 2D table, said on stderr."""
    import numpy as np

    if "z" in table and len(table["z"]) and not np.isfinite(np.asarray(table["z"], np.float64)).any():
        print(f"starloc: note: {name} has no z values: scored in 2D", file=sys.stderr)
        return {k: v for k, v in table.items() if k != "z"}
    return table


#: frames of ground truth outside the localized frames, as a fraction of it, that are worth a warning
UNLOCALIZED_FRAMES_SHARE = 0.05


def _warn_frame_mismatch(pred_frame, truth_frame, result: dict[str, Any], score) -> None:
    """Warn when much of the truth lies in frames before the first or after the last localized
    one (a stack localized with --frames), or when shifting the truth by one frame matches far
    more (0- against 1-based frame numbers); ``score(shift)`` re-scores with shifted truth."""
    import numpy as np

    if len(pred_frame):
        lo, hi = int(np.min(pred_frame)), int(np.max(pred_frame))
        outside = int(np.count_nonzero((truth_frame < lo) | (truth_frame > hi)))
        if outside > UNLOCALIZED_FRAMES_SHARE * len(truth_frame):
            warnings.warn(f"{outside} of the {len(truth_frame)} true emitters lie in frames outside the localized "
                          f"ones ({lo + 1}-{hi + 1}, 1-based) and count as missed: was only part of the stack "
                          "localized (--frames)?", StarlocWarning, stacklevel=2)
    if result["tp"] < 0.5 * max(len(truth_frame), 1):
        for shift in (-1, 1):
            if score(shift)["tp"] > 2 * result["tp"] + 10:
                warnings.warn(f"the truth matches {'more' if result['tp'] else 'many'} localizations with its frame "
                              f"numbers {shift:+d}: does one file count frames from 0 and the other from 1?",
                              StarlocWarning, stacklevel=2)
                return


def _finite_rows(table: dict[str, Any], name: str, axes: tuple[str, ...], noun: str) -> dict[str, Any]:
    """The rows of a table whose ``axes`` columns are finite; says how many were not. (Other
    tools write NaN for failed fits.)"""
    import numpy as np

    keys = [k for k in axes if k in table]
    ok = np.logical_and.reduce([np.isfinite(np.asarray(table[k], np.float64)) for k in keys])
    if ok.all():
        return table
    print(f"starloc: note: {int((~ok).sum())} {noun} of {name} without finite {'/'.join(keys)} left out",
          file=sys.stderr)
    n = len(ok)
    return {k: (np.asarray(v)[ok] if np.ndim(v) and len(v) == n else v) for k, v in table.items()}


# ------------------------------------------------------------------------------------------
# parsers
# ------------------------------------------------------------------------------------------


def add_commands(sub) -> None:
    """Add ``deeploco`` (train, calibrate, localize) and ``render`` to the ``starloc`` subparsers."""
    deep = sub.add_parser("deeploco", help="DeepLoco SMLM: train on simulated frames, localize stacks")
    dsub = deep.add_subparsers(dest="action", required=True)

    t = dsub.add_parser(
        "train", help="train a DeepLoco model on frames simulated from a PSF and a camera model",
        description="Train DeepLoco on simulated SMLM frames. Options left out keep the defaults of "
                    "starloc.deeploco (Simulator, DeepLocoTrainConfig) - or the checkpoint's settings "
                    "with --resume. Ctrl-C stops cleanly and saves the model trained so far.")
    t.add_argument("-o", "--output", type=Path, required=True, help="model file to write")
    g = t.add_argument_group("PSF")
    g.add_argument("--psf", default=None,
                   help="'gaussian', 'astigmatic', or a bead z-stack TIFF (Z, Y, X) in ADU for an empirical PSF "
                        "(required, except with --resume: the checkpoint's simulation is used)")
    g.add_argument("--sigma", type=positive(), default=None,
                   help="nm: the Gaussian PSF's sigma, or the astigmatic PSF's in-focus sigma0")
    g.add_argument("--astig-c", type=float, default=None, help="nm: astigmatic focal offset c")
    g.add_argument("--astig-d", type=positive(), default=None, help="nm: astigmatic depth of focus d")
    g.add_argument("--psf-z-step", type=positive(), default=None,
                   help="nm between bead-stack slices (default: the TIFF's ImageJ/OME metadata, else 10)")
    g.add_argument("--psf-z0", type=float, default=None,
                   help="nm: z of the bead stack's first slice (default: the focus at the middle slice, "
                        "-(Z-1)/2 x z step)")
    g.add_argument("--psf-baseline", type=float, default=None,
                   help="bead stack camera baseline (ADU; estimated when left out)")
    g.add_argument("--bead-positions", type=Path, default=None, metavar="CSV",
                   help="the beads' true lateral positions (CSV with x and y columns in nm, x along columns, "
                        "origin at the top-left corner, e.g. x_nm,y_nm or a challenge activations.csv): the "
                        "PSF is centred on them instead of on the beads' images, so localizations come out in "
                        "their frame (for the SMLM Challenge 2016 astigmatic beads the two differ by 46 nm)")
    g.add_argument("--pixel-size", type=positive(), default=None,
                   help="camera pixel size (nm; default: the bead TIFF's ImageJ/OME metadata, else 100)")
    g.add_argument("--in-focus", action="store_true",
                   help="bead stack: train a 2D model (x, y only) on the stack's slices within --defocus of focus")
    g.add_argument("--defocus", type=float, default=None, metavar="NM",
                   help=f"with --in-focus: training emitters lie up to NM out of focus, as in real 2D data "
                        f"(default {DEFOCUS_2D:g}; 0: the in-focus slice only)")
    _add_camera_options(t, "the simulated camera (without --camera: Poisson noise only, and the model then expects frames in photons)")
    s = t.add_argument_group("simulation")
    s.add_argument("--frame-size", type=int, default=None, help="side of the square training frames (px, a multiple of 16; default 64)")
    dens = s.add_mutually_exclusive_group()
    dens.add_argument("--density", type=positive(), default=None, help="emitters per µm² (Poisson counts)")
    dens.add_argument("--emitters", type=_range_type(int), default=None, metavar="LO:HI",
                      help="emitters per frame, uniform in LO..HI (default: 0 to 2.5 per µm² of frame)")
    s.add_argument("--photons", type=_range_type(), default=None, metavar="LO:HI",
                   help="photons per emitter (default 500:20000)")
    # = simulate.PHOTON_DISTRIBUTIONS, spelled out so that --help does not import torch
    s.add_argument("--photons-distribution", choices=("uniform", "log-uniform"), default=None,
                   help="how photons are drawn in their range (default log-uniform)")
    s.add_argument("--background", type=_range_type(), default=None, metavar="LO:HI",
                   help="background photons per pixel (default 20:200)")
    s.add_argument("--background-variation", type=float, default=None, metavar="F",
                   help="let each training frame's background vary smoothly (over 0.5-4 µm) by up to this "
                        "fraction of its level, 0 <= F < 1, as out-of-focus light and autofluorescence do "
                        "in real frames (default 0.5; 0: flat)")
    s.add_argument("--z-range", type=_range_type(), default=None, metavar="LO:HI",
                   help="nm (3D PSFs); write --z-range=-750:750 for a negative LO")
    r = t.add_argument_group("training")
    r.add_argument("--steps", type=int, default=None, help="optimizer steps (default 3000; with --resume, the checkpoint's)")
    r.add_argument("--batch", type=int, default=None, help="frames per step (default 32; with --resume, the checkpoint's)")
    r.add_argument("--lr", type=positive(), default=None,
                   help="initial learning rate, halved every fifth of the steps (default 0.001; with --resume, the "
                        "checkpoint's)")
    r.add_argument("--arch", choices=ARCHITECTURES, default=None,
                   help="network: 'unet' (fully convolutional with full-resolution skip connections, the "
                        "default), 'fcn' (the same without them: about twice as fast, less accurate) "
                        "or 'paper' (conv + fully connected, fixed frame size)")
    r.add_argument("--seed", type=int, default=None,
                   help="random seed (same seed, same model on the same machine and thread count)")
    r.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                   help="any other DeepLocoTrainConfig setting, e.g. --set val_every=250 or "
                        "--set conv_widths=16,64,256; repeatable")
    r.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="compute device (default: cuda when available, else cpu)")
    r.add_argument("--checkpoint", type=Path, default=None,
                   help="checkpoint file (weights, optimizer, RNG), written at the end, on Ctrl-C and "
                        "every --checkpoint-every steps")
    r.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints")
    r.add_argument("--resume", type=Path, default=None,
                   help="continue a run from its checkpoint, on the simulation it records (leave out --psf "
                        "and the simulation options, or give exactly those of the first run)")
    t.set_defaults(func=cmd_deeploco_train)

    c = dsub.add_parser(
        "calibrate", help="re-measure a trained model's confidence threshold and sub-pixel (and axial) correction",
        description="Run the calibration that ends every training again on an existing model file: "
                    "localize frames from the model's own training simulator, choose the confidence "
                    "threshold with the best Jaccard index and measure the sub-pixel bias, and write "
                    "the model with both. For model files trained before starloc chose thresholds.")
    c.add_argument("model", type=Path, help="model file from 'deeploco train'")
    c.add_argument("-o", "--output", type=Path, required=True, help="output model file (may be the input)")
    c.add_argument("--frames", type=positive(int), default=2048, help="simulated frames (default 2048)")
    c.add_argument("--keep-threshold", action="store_true",
                   help="keep the model's threshold; only remeasure the sub-pixel (and axial) correction")
    c.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="compute device (default: cuda when available, else cpu)")
    c.set_defaults(func=cmd_deeploco_calibrate)

    lo = dsub.add_parser(
        "localize", help="localize emitters in a stack of any frame size -> ThunderSTORM CSV or Picasso HDF5",
        description="Localize every frame of a TIFF/.npy stack (read chunk by chunk, tiled for the network). "
                    "Writes a ThunderSTORM CSV: x, y (z) in nm from the image's top-left corner (pixel j's "
                    "centre at (j + 0.5) x pixel size), frames 1-based, a confidence column and, for models "
                    "with an error head, uncertainty columns (nm); or Picasso HDF5 + YAML: x, y in camera "
                    "pixels (pixel centres at integers, as Picasso Localize), z in nm, frames 0-based, "
                    "lpx/lpy from the uncertainty (photons, sx, sy, bg are 0: DeepLoco does not fit them).")
    lo.add_argument("stack", type=Path, help="TIFF (T×H×W or H×W) or .npy stack, or a folder of one TIFF per frame; "
                         "camera ADU by default")
    lo.add_argument("--model", type=Path, required=True, help="model file from 'deeploco train'")
    lo.add_argument("-o", "--output", type=Path, required=True, help="output .csv (or .hdf5 for Picasso)")
    lo.add_argument("--pixel-size", type=float, default=None,
                    help="the stack's pixel size (nm): checked against the model's (must match)")
    lo.add_argument("--frames", type=frames_type, default=None, metavar="A:B",
                    help="0-based frames A..B-1 (Python slice; a negative start counts from the end: write "
                         "--frames=-3:); output frame numbers keep the stack's numbering")
    lo.add_argument("--threshold", type=float, default=None,
                    help="confidence threshold (default: the model's, chosen at training). A localization's "
                         "confidence is the summed weight of the network's candidates merged into it: about 1 "
                         "for a sure emitter, above 1 where neighbouring cells both claim it")
    lo.add_argument("--batch-size", type=int, default=None,
                    help="tiles per network call (default: 0.25 Mpx worth on a CPU, e.g. 16 tiles of "
                         "128 px; 4 Mpx on a GPU)")
    lo.add_argument("--tile", type=int, default=None,
                    help="tile side in px for fully convolutional models, rounded up to a multiple of 4 and "
                         "at least 16 (default: the whole frame up to 512 px, else tiles of 128-512 px)")
    lo.add_argument("--overlap", type=int, default=None, help="tile overlap in px (default: 2 µm, >= 16 px)")
    lo.add_argument("--chunk-frames", type=int, default=None, help="frames read at a time (default: ~32 MiB)")
    lo.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="compute device (default: cuda when available, else cpu)")
    lo.add_argument("--format", choices=("thunderstorm", "picasso"), default=None,
                    help="output format (default: picasso for .hdf5/.h5 names, else thunderstorm)")
    lo.add_argument("--precision", type=positive(), default=None,
                    help=f"Picasso only: localization precision (nm) written for every localization instead "
                         f"of the model's per-localization uncertainty (default: that uncertainty; "
                         f"{PICASSO_PRECISION_NM:g} for models without one)")
    lo.add_argument("--units", choices=("adu", "photons"), default="adu",
                    help="stack units: camera ADU (converted with the model's camera, default) or photons")
    _add_camera_options(lo, "override the model's camera (e.g. --baseline for another offset)", per_pixel=True)
    add_cluster_options(lo, "stack")
    lo.set_defaults(func=cmd_deeploco_localize)

    br = dsub.add_parser(
        "brightness", help="measure the emitters' photons and the background of a stack, to narrow the training",
        description="Photons per isolated spot and background photons per pixel of an SMLM stack "
                    "(starloc.deeploco.brightness), and the --photons / --background ranges that cover them "
                    "for 'deeploco train'. The dimmest emitters are below the detector's cut; dense frames "
                    "have few isolated spots.")
    br.add_argument("stack", type=Path, help="TIFF or .npy stack, or a folder of one TIFF per frame")
    br.add_argument("--frames", type=frames_type, default=None, metavar="A:B",
                    help=f"0-based frames A..B-1 to measure (default: the first {BRIGHTNESS_FRAMES})")
    br.add_argument("--window", type=int, default=13, help="box side (px, odd) summed around each spot (default 13)")
    br.add_argument("--units", choices=("adu", "photons"), default="adu",
                    help="the stack's units (default adu: converted with the camera options)")
    _add_camera_options(br, "the stack's camera (ADU -> photons)", per_pixel=True)
    br.set_defaults(func=cmd_deeploco_brightness)

    rd = sub.add_parser("render", help="render a localization table as a super-resolution image",
                        description="Render a ThunderSTORM CSV (or a starloc points table with "
                                    "--camera-pixel-size) as a TIFF with pixel-size metadata.")
    rd.add_argument("locs", type=Path, help="ThunderSTORM CSV, Picasso .hdf5 (+ .yaml) or starloc points CSV")
    rd.add_argument("-o", "--output", type=Path, required=True, help="TIFF image to write")
    rd.add_argument("--pixel-size", type=positive(), default=10.0, help="output pixel size in nm (default 10)")
    rd.add_argument("--method", choices=("histogram", "gaussian"), default="histogram",
                    help="histogram (counts per pixel) or gaussian (each localization a unit-mass Gaussian)")
    rd.add_argument("--sigma", type=positive(), default=None,
                    help="gaussian: sigma in nm (default: the 'uncertainty' column, else one output pixel)")
    rd.add_argument("--color-by-z", action="store_true", help="RGB image, hue by z (needs a z column)")
    rd.add_argument("--extent", type=float, nargs=4, default=None, metavar=("XMIN", "XMAX", "YMIN", "YMAX"),
                    help="field in nm (default: a Picasso file's camera field, Width x Height in its .yaml; "
                         "else from 0 to the largest x and y, plus 4 sigma for gaussian)")
    rd.add_argument("--camera-pixel-size", type=positive(), default=None,
                    help="camera pixel size (nm) for tables in camera pixels (points CSV, x [px])")
    rd.set_defaults(func=cmd_render)

    ev = sub.add_parser(
        "evaluate", help="score localizations against ground truth (SMLM Challenge 2016 metrics)",
        description="Match localizations to the true emitters one to one within a tolerance, frame by frame "
                    "(Hungarian), and print the SMLM Challenge 2016 metrics: Jaccard, recall, precision, RMSE "
                    "lateral (and axial), efficiency and the mean offset. 3D when both tables have z.")
    ev.add_argument("locs", type=Path, help="localizations: ThunderSTORM CSV (e.g. from 'deeploco localize'), "
                                            "Picasso .hdf5 (+ .yaml) or starloc points CSV (with --camera-pixel-size)")
    ev.add_argument("--truth", type=Path, required=True,
                    help="ground truth: an SMLM Challenge activations.csv, or a ThunderSTORM CSV")
    ev.add_argument("--tolerance", type=positive(), default=100.0,
                    help="lateral matching distance in nm (default 100, the DeepLoco paper's; the challenge used 250)")
    ev.add_argument("--axial-tolerance", type=positive(), default=500.0,
                    help="axial matching distance in nm for 3D tables (default 500)")
    ev.add_argument("--lateral-only", action="store_true", help="ignore z even when both tables have it")
    ev.add_argument("--camera-pixel-size", type=positive(), default=None,
                    help="camera pixel size (nm) for tables in camera pixels (points CSV, x [px])")
    ev.add_argument("--json", type=Path, default=None, help="also write the metrics to this JSON file")
    ev.set_defaults(func=cmd_evaluate)
