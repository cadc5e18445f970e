"""The ``starloc`` command line.

Exit codes: 0 success, 2 bad input or usage (one-line message on stderr), 130 interrupted.
Pixel coordinates are (row, col), pixel centres at integers, frames 0-based. The DeepLoco
commands (``deeploco train|calibrate|localize|brightness``), ``render`` and ``evaluate`` live in
:mod:`starloc.cli_deeploco`; their tables are in nm (x along columns, y along rows, origin at the
image's top-left corner).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
import warnings
from pathlib import Path

from starloc import __version__
from starloc.cli_common import (add_cluster_options, at_least, check_output, cluster_client, downsample_factor,
                                frames_type, positive, progress_bar, resolve_device, task_frames)
from starloc.errors import InputError, StarlocError, StarlocWarning, one_line
from starloc.memory import out_of_memory_message

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
#: the system refused (a full disk, a read-only folder), after the input was accepted
EXIT_SYSTEM_ERROR = 1
#: what to do about a training crop with too little background (crop_scale_advice)
LARGER_CROP = "draw a larger --crop, with background around the object, and train again"


def _announce_downsample(downsample: int, suggested: int, extent: float, field: int, smallest: int,
                         n_crops: int = 1) -> None:
    """Say on stderr what ``--downsample auto`` chose, when that is not 1 or not the suggestion."""
    from tqdm import tqdm

    if downsample < suggested:
        better = f"; a crop of {field * (downsample + 1)} px already allows {downsample + 1}" \
            if downsample + 1 < suggested else ""
        risk = (" (at full resolution a model of an object this large tends to follow its edges and texture, "
                "not the object)") if downsample == 1 else ""
        which = ("the largest object in the crops", "the smallest crop") if n_crops > 1 else \
            ("the object in the crop", "this one")
        warnings.warn(f"{which[0]} is about {extent:.0f} px across, more than the network sees whole; "
                      f"--downsample {suggested} would fit it but needs a crop of at least {field * suggested} px "
                      f"({which[1]}: {smallest} px{better}): training at --downsample {downsample}{risk}. Where "
                      "a crop that large would hold a neighbour too, keep this (give --downsample "
                      f"{downsample} to say so)", StarlocWarning)
    elif downsample > 1:
        tqdm.write(f"starloc: the object in the crop is about {extent:.0f} px across: training on images "
                   f"downsampled by {downsample} (--downsample auto; give --downsample 1 to keep full resolution)",
                   file=sys.stderr)


def cmd_lodestar_train(args) -> int:
    from starloc.io import read_image
    from starloc.lodestar.crop_content import crop_advice, crops_without_one_object, objects_at_border
    from starloc.lodestar.downsampling import auto_downsample, smallest_side, suggest_downsample
    from starloc.lodestar.brightness import crop_scale_advice, record_crop_peaks
    from starloc.lodestar.inference import crops_from_frame, read_frame
    from starloc.lodestar.network import NetworkConfig
    from starloc.lodestar.training import TrainConfig, step_budget, train

    check_output(args.output, "model", inputs=(args.image,))
    _resolve_symmetry_options(args)
    image = _pick_channel(args, read_image(args.image))
    _check_axes(args, image)
    field = NetworkConfig().receptive_field
    hologram = args.z_range is not None  # a field propagates at the camera's pixels: never downsampled
    auto = args.downsample == "auto" and not hologram
    if args.downsample == "auto" and hologram:
        args.downsample = 1
    frames = _crop_frames(args.frame, len(args.crop))
    min_size = field * (1 if auto else args.downsample)
    crops: list = [None] * len(args.crop)
    frames_and_boxes = []  # each frame read once, for its crops and their brightness after training
    for f in sorted(set(frames)):
        mine = [i for i, g in enumerate(frames) if g == f]
        boxes = [args.crop[i] for i in mine]
        frame = read_frame(image, f, rgb=args.rgb, channel_axis=args.channel_axis)
        frames_and_boxes.append((frame, boxes))
        for i, crop in zip(mine, crops_from_frame(frame, boxes, min_size)):
            crops[i] = crop
    if auto:
        downsample, suggested, extent = auto_downsample(crops, field)
        _announce_downsample(downsample, suggested, extent, field, smallest_side(crops), len(crops))
    elif hologram:  # fringes spread far beyond the object: its size says nothing here
        downsample = args.downsample
    else:
        suggested, extent = suggest_downsample(crops)
        downsample = args.downsample
        if suggested > downsample:
            allowed = smallest_side(crops) // field
            crop_note = "" if allowed >= suggested else \
                f" with a crop of at least {field * suggested} px (this one allows up to {max(allowed, 1)})"
            warnings.warn(f"the object in the crop is about {extent:.0f} px across, more than the network sees "
                          f"whole at --downsample {downsample}: consider --downsample {suggested}{crop_note}",
                          StarlocWarning)
    for index, count in ([] if hologram else crops_without_one_object(crops)):  # fringes are no objects
        warnings.warn(crop_advice(index, count, objects_at_border(crops[index])), StarlocWarning)
    copies = TrainConfig.copies if args.copies is None else args.copies
    optics = {k: getattr(args, k) for k in ("wavelength_nm", "n_medium") if getattr(args, k) is not None}
    reference = {"crop_signal": args.crop_signal} if args.crop_signal is not None else {}
    if args.crop_z is not None:
        reference["crop_z_um"] = _crop_z(args, crops, optics)
    brighter = {} if args.brighter is None else {"gain": args.brighter}
    config = TrainConfig(max_steps=args.steps, min_steps=args.min_steps, copies=copies, seed=args.seed, **brighter,
                         device=resolve_device(args.device), downsample=downsample,
                         z_range_um=args.z_range, signal_range=args.signal_range,
                         pixel_size_nm=args.pixel_size, **optics, **reference,
                         network=NetworkConfig(in_channels=crops[0].shape[0]))
    max_steps, _ = step_budget(config, [c.shape[-2:] for c in crops])
    gen = train(crops, config)
    with progress_bar(max_steps, "training", "step") as bar:
        while True:
            try:
                p = next(gen)
            except StopIteration as stop:
                model = stop.value
                break
            bar.update(1)
            # the two loss terms, shown at the bar's next refresh (a log file gets one every LOG_INTERVAL s)
            bar.set_postfix(between=f"{p.consistency:.4f}px", within=f"{p.within:.3f}px", refresh=False)
    model.metadata["source"] = {"image": str(args.image), "crops": [list(c) for c in args.crop],
                                "frame": frames[0] if len(set(frames)) == 1 else frames}
    record_crop_peaks(model, frames_and_boxes)
    advice = crop_scale_advice(model, how=LARGER_CROP)
    if advice:
        warnings.warn(advice, StarlocWarning)
    model.save(args.output)
    steps = model.metadata["training"]["steps_done"]
    budget = " (the whole step budget: the loss had not levelled off; --steps N trains longer)" \
        if args.steps is None and steps >= model.metadata["training"].get("max_steps", math.inf) else ""
    print(f"trained {steps} steps{budget} in {p.elapsed:.1f} s (loss: the copies' predictions disagree by "
          f"{p.consistency:.4f} px); "
          f"model written to {args.output}")
    return 0


def _crop_frames(given: list[int] | None, n_crops: int) -> list[int]:
    """The frame of each crop: ``--frame`` given once (or not: 0) for all of them, or once per
    ``--crop``, in order."""
    if not given:
        return [0] * n_crops
    if len(given) == 1:
        return given * n_crops
    if len(given) != n_crops:
        raise InputError(f"--frame given {len(given)} times for {n_crops} crop(s): give it once (for every crop) "
                         "or once per --crop, in the same order")
    return list(given)


def _pick_channel(args, image):
    """With ``--channel K``: channel K of the image along ``--channel-axis``, read from then on as
    a single-channel image (``args.channel_axis`` is cleared)."""
    if args.channel is None:
        return image
    from starloc.io import select_channel

    if args.channel_axis is None:
        raise InputError("--channel K picks one channel along --channel-axis A: give the axis too (e.g. 1 for a "
                         "T×C×Y×X stack)")
    picked = select_channel(image, args.channel_axis, args.channel)
    args.channel_axis = None
    return picked


def _check_axes(args, image) -> None:
    """Say how the axes are read when that is likely not what they are: an (H, W, T) array (a
    warning), an ImageJ/OME TIFF's channels read as frames (a warning), or four axes (an error
    that names them, and the --channel-axis to give where one of them is C)."""
    from starloc.io import time_last_note
    from starloc.tiff_metadata import stated_axes

    note = time_last_note(tuple(image.shape)) if args.channel_axis is None else None
    if note:
        warnings.warn(f"{Path(args.image).name}: {note}", StarlocWarning)
    axes = stated_axes(args.image)
    if args.channel_axis is not None or axes is None or len(axes) != len(image.shape):
        return
    name = Path(args.image).name
    if len(axes) == 3 and axes[0] == "C":
        warnings.warn(f"{name}'s metadata names its first axis C (axes {axes}): its {image.shape[0]} channels are "
                      "read as frames; give --channel-axis 0 to read them as the channels of one image",
                      StarlocWarning)
    elif len(axes) == 4 and "C" in axes:
        raise InputError(f"{name} has axes {axes} (shape {tuple(image.shape)}): give --channel-axis "
                         f"{axes.index('C')} to read its C axis as the channels of each frame, and --channel K "
                         "to use channel K alone")
    elif len(axes) == 4:
        raise InputError(f"{name} has axes {axes} (shape {tuple(image.shape)}): starloc reads 2D frames (T×Y×X), "
                         "with --channel-axis for a channel axis; save the slices to analyse as a T×Y×X stack")


def _resolve_symmetry_options(args) -> None:
    """Refuse the axial and signal options that would be ignored; with ``--z-range``, resolve
    the pixel size (:func:`_resolve_pixel_size`)."""
    if args.z_range is None:
        unused = [opt for opt, value in (("--pixel-size", args.pixel_size), ("--wavelength", args.wavelength_nm),
                                         ("--n-medium", args.n_medium), ("--crop-z", args.crop_z))
                  if value is not None]
        if unused:
            raise InputError(f"{', '.join(unused)}: only for the axial training of a hologram; "
                             "give --z-range UM too")
    else:
        _resolve_pixel_size(args)
    if args.signal_range is None and args.crop_signal is not None:
        raise InputError("--crop-signal sets the unit of the learned signal: give --signal-range R too")
    if args.signal_range is not None and args.brighter is not None:
        raise InputError("--brighter: --signal-range teaches the objects' brightness itself (it replaces --brighter)")


def _resolve_pixel_size(args) -> None:
    """``--pixel-size``, else the TIFF's ImageJ/OME metadata (said on stderr); a given size
    that the metadata contradict is warned about, since detection checks files against it."""
    from starloc.tiff_metadata import tiff_spacing

    name = Path(args.image).name
    stated = tiff_spacing(args.image)[0]
    if args.pixel_size is not None:
        if stated is not None and abs(stated - args.pixel_size) > 0.01 * stated:
            warnings.warn(f"--pixel-size {args.pixel_size:g} nm, where {name}'s metadata say {stated:g} nm: training "
                          f"at {args.pixel_size:g} nm (detecting on such files will need --pixel-size "
                          f"{args.pixel_size:g} too)", StarlocWarning)
        return
    if stated is None:
        raise InputError("--z-range propagates the field in physical units: give --pixel-size NM (the "
                         f"pixel size in the sample; {name} states none)")
    args.pixel_size = stated
    print(f"starloc: from {name}'s metadata: pixel size {stated:g} nm", file=sys.stderr)


def _crop_z(args, crops, optics: dict) -> float:
    """``--crop-z``: the number given, or with ``auto`` the crops' mean z by refocusing (a
    classical focus search on each crop; see :func:`starloc.lodestar.holography.refocus_z`)."""
    from starloc.lodestar.holography import Optics, refocus_crops

    if args.crop_z != "auto":
        return float(args.crop_z)
    if args.z_range is None or args.pixel_size is None:
        raise InputError("--crop-z auto refocuses the crop's field: it needs --z-range and --pixel-size")
    z = refocus_crops(crops, Optics(pixel_size_nm=args.pixel_size, **optics), args.z_range)
    print(f"crop refocused at z = {z:+.3f} µm: z is reported from the focal plane", file=sys.stderr)
    return z


def _float_or_auto(text: str):
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _warn_about_frames(model, image, selected: range, layout: dict) -> None:
    """Warn, from the image's first, middle and last frame, when its objects are far brighter
    than those the model was trained for (:mod:`starloc.lodestar.brightness`), or when a
    fixed-normalization model is given images unlike its crops (:mod:`starloc.lodestar.fixed_input`)."""
    import numpy as np

    from starloc.io import iter_frame_chunks
    from starloc.lodestar.brightness import brightness_advice, brightness_ratio, crop_scale_advice
    from starloc.lodestar.fixed_input import fixed_input_advice

    picks = sorted({selected[0], selected[len(selected) // 2], selected[-1]}) if len(selected) else []
    blocks = [block for i in picks for _, block in iter_frame_chunks(image, 1, frames=range(i, i + 1), **layout)]
    ratios = [brightness_ratio(model, block) for block in blocks]
    for advice in (crop_scale_advice(model, how=LARGER_CROP),
                   brightness_advice(model, max((r for r in ratios if r is not None), default=None)),
                   fixed_input_advice(model, np.concatenate(blocks)) if blocks else None):
        if advice is not None:
            warnings.warn(advice, StarlocWarning)


def cmd_lodestar_detect(args) -> int:
    from starloc.io import image_frame_range, read_image
    from starloc.lodestar.detection import DetectParams, noise_detections_advice
    from starloc.lodestar.holography import check_pixel_size
    from starloc.lodestar.inference import iter_detect, iter_single
    from starloc.lodestar.model import LodeSTAR
    from starloc.tiff_metadata import tiff_spacing
    from starloc.tracks import require_trackpy

    check_output(args.output, "csv", inputs=(args.image, args.model))
    given = {k: getattr(args, k) for k in ("alpha", "beta", "cutoff", "mode", "pixels_per_peak", "min_weight",
                                           "max_consistency", "radius", "cluster_radius", "crowded_distance",
                                           "deblend")}
    given = {k: v for k, v in given.items() if v is not None}
    if args.single and given:
        names = ", ".join("--" + k.replace("_", "-") if k != "deblend" else "--(no-)deblend" for k in given)
        raise InputError(f"{names}: options of multi-object detection; --single pools one object per frame "
                         "and takes none of them")
    if args.memory is not None and args.link is None:
        raise InputError("--memory is an option of --link: give the linking distance too")
    if args.link is not None:
        if args.single:
            raise InputError("--link: --single gives one object per frame, one track already")
        require_trackpy()
    params = DetectParams(**given)
    if args.channel is not None and (args.scheduler is not None or args.workers is not None):
        raise InputError("--channel: the tasks on a cluster read the whole image; save the channel as an image of "
                         "its own to detect on a cluster")
    image = _pick_channel(args, read_image(args.image))
    _check_axes(args, image)
    layout = {"rgb": args.rgb, "channel_axis": args.channel_axis}
    selected = image_frame_range(image, args.frames, name=str(args.image), **layout)
    total = len(selected)
    augment = args.single if args.tta is None else args.tta
    on_cluster = args.scheduler is not None or args.workers is not None
    # On a cluster the tasks load the model themselves; here it only names the output columns.
    model = LodeSTAR.load(args.model, device="cpu" if on_cluster else resolve_device(args.device))
    stated = args.pixel_size if args.pixel_size is not None else tiff_spacing(args.image)[0]
    check_pixel_size(model, stated, Path(args.image).name, "--pixel-size" if args.pixel_size else "its metadata")
    _warn_about_frames(model, image, selected, layout)
    with cluster_client(args) as client:
        if client is not None:
            found = _detect_on_cluster(args, client, params, augment, layout, total)
        elif args.single:
            found = _run_frames(iter_single(model, image, augment=augment, frames=args.frames, **layout), total)
        else:
            found = _run_frames(iter_detect(model, image, params, augment=augment, frames=args.frames, **layout),
                                total)
        _write_detections(args, model, found, total)
    if not args.single:
        advice = noise_detections_advice(found.features, params.max_consistency)
        if advice is not None:
            warnings.warn(advice, StarlocWarning)
    return 0


def _write_detections(args, model, found, total: int) -> None:
    """The detections CSV, linked into tracks with ``--link``; a one-line summary."""
    from starloc.io import write_points_csv
    from starloc.lodestar.inference import property_columns
    from starloc.tracks import link_tracks

    columns = {**property_columns(model, found.positions), **found.features}
    try:
        if args.link is not None:
            columns["track"] = link_tracks(found.frame, found.positions[:, :2], args.link, args.memory or 0)
    except InputError as exc:  # the detections took long: keep them, without tracks
        write_points_csv(args.output, found.frame, found.positions[:, :2], columns)
        raise InputError(f"{exc}. The {len(found)} detection(s) were written to {args.output} without tracks; "
                         "link them with 'starloc lodestar link'") from None
    write_points_csv(args.output, found.frame, found.positions[:, :2], columns)
    linked = f" in {int(columns['track'].max(initial=-1)) + 1} track(s)" if "track" in columns else ""
    print(f"{len(found)} detection(s){linked} in {total} frame(s) written to {args.output}")


def cmd_lodestar_link(args) -> int:
    from starloc.io import read_points_csv, write_points_csv
    from starloc.tracks import link_tracks, require_trackpy

    check_output(args.output, "csv")  # the detections CSV itself is allowed: it is read first
    require_trackpy()
    frames, positions, features = read_points_csv(args.detections)
    features["track"] = link_tracks(frames, positions, args.distance, args.memory)  # replaces an old one
    write_points_csv(args.output, frames, positions, features)
    print(f"{len(frames)} detection(s) in {int(features['track'].max(initial=-1)) + 1} track(s) written to "
          f"{args.output}")
    return 0


def _run_frames(gen, total: int):
    """Drive a ``(frames_done, frames_total)`` generator under a progress bar; its result."""
    with progress_bar(total, "detecting", "frame") as bar:
        while True:
            try:
                done, _ = next(gen)
            except StopIteration as stop:
                return stop.value
            bar.update(done - bar.n)


def _detect_on_cluster(args, client, params, augment: bool, layout: dict, total: int):
    """``--scheduler`` / ``--workers``: the same detection as tasks on the dask cluster of ``client``."""
    from starloc.lodestar.cluster import iter_detect_on_cluster

    gen = iter_detect_on_cluster(args.model, args.image, client, single=args.single, params=params,
                                 augment=augment, frames=args.frames, frames_per_task=task_frames(args, client, total),
                                 device=args.device, **layout)
    return _run_frames(gen, total)


def cmd_demo(args) -> int:
    from starloc.deeploco.demo import run_deeploco_demo
    from starloc.demo import run_demo, run_holography_demo

    if args.method == "holography":
        steps = {} if args.steps is None else {"max_steps": args.steps}
        return run_holography_demo(out_dir=Path(args.out), seed=args.seed, **steps)
    if args.method in ("all", "lodestar"):
        steps = {} if args.steps is None else {"max_steps": args.steps}
        run_demo(out_dir=Path(args.out), shape=args.shape, seed=args.seed, **steps)
    if args.method in ("all", "deeploco"):
        run_deeploco_demo(out_dir=Path(args.out), seed=args.seed, steps=args.deeploco_steps)
    return 0


def _add_common_image_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rgb", choices=("error", "gray"), default="error",
                   help="what to do with RGB/RGBA images: refuse (default) or convert to gray")
    p.add_argument("--channel-axis", type=int, default=None,
                   help="axis of a multichannel image that holds the channels (no colour detection)")
    p.add_argument("--channel", type=int, default=None, metavar="K",
                   help="use channel K (0-based) of the --channel-axis alone, as a single-channel image")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="compute device (default: cuda when available, else cpu)")


def build_parser() -> argparse.ArgumentParser:
    from starloc.cli_deeploco import add_commands as add_deeploco_commands

    parser = argparse.ArgumentParser(prog="starloc", description=__doc__.splitlines()[0] + " "
                                     "LodeSTAR (self-supervised tracking from one crop) and DeepLoco.")
    parser.add_argument("--version", action="version", version=f"starloc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    lode = sub.add_parser("lodestar", help="LodeSTAR: train from one crop, detect objects")
    lsub = lode.add_subparsers(dest="action", required=True)

    t = lsub.add_parser("train", help="train a model from one or more crops of an image",
                        description="Train LodeSTAR on crops around single objects. Coordinates "
                                    "are pixels: ROW, COL of the crop's top-left pixel, then its size.")
    t.add_argument("image", type=Path,
                   help="TIFF (2D or T×Y×X) or .npy image, or a folder of one TIFF per frame")
    t.add_argument("--crop", nargs=4, type=float, action="append", required=True,
                   metavar=("ROW", "COL", "HEIGHT", "WIDTH"),
                   help="crop rectangle in pixels; repeat for several crops")
    t.add_argument("--frame", type=int, action="append", default=None,
                   help="0-based frame of a stack to crop from (default 0): once for every crop, or once per "
                        "--crop, in the same order, to train on objects from several frames")
    t.add_argument("--steps", type=at_least(1), default=None, metavar="N",
                   help="maximum training steps; training stops earlier on a loss plateau (default: 2600 for a "
                        "crop of 64x64 px or more, up to twice that for smaller crops, which train about as "
                        "long)")
    t.add_argument("--min-steps", type=at_least(0), default=None, metavar="N",
                   help="no early stop before this step (default: 2200, scaled with the crop as --steps; "
                        "never above --steps)")
    t.add_argument("--copies", type=at_least(2), default=None, metavar="N",
                   help="transformed copies of the crop per step (default 12); more average "
                        "each step over more transforms and noise draws, at a higher cost per step. On a GPU "
                        "'--copies 32 --steps 5200 --min-steps 4400' trains a more precise model in about a "
                        "minute (docs/benchmarks.md)")
    t.add_argument("--brighter", type=at_least(1.0, float), default=None, metavar="X",
                   help="train for objects up to X times brighter than the cropped one (default 3); raise it "
                        "when some objects are much brighter ('detect' warns when it sees such objects)")
    t.add_argument("--seed", type=int, default=0,
                   help="random seed (same seed, same model on the same machine and thread count)")
    t.add_argument("--downsample", type=downsample_factor, default="auto", metavar="D",
                   help="look at the image in blocks of DxD pixels (their mean), in training and in "
                        "'detect', for objects larger than the network's receptive field (26 px). "
                        "Default 'auto': measure the object in the crop and pick the smallest D that brings "
                        "it to at most 20 px across (1 for objects up to 20 px); give 1 to keep full resolution")
    h = t.add_argument_group("holography and signal (the paper's extra symmetries)")
    h.add_argument("--z-range", type=positive(), metavar="UM",
                   help="learn the axial position from a complex field (2 channels, real and imaginary: give "
                        "--channel-axis) by propagating the crop up to UM µm either way; z is reported in µm "
                        "relative to the crop's object. Needs the pixel size: --pixel-size, else the TIFF's ImageJ/OME "
                        "metadata")
    h.add_argument("--pixel-size", type=positive(), metavar="NM",
                   help="pixel size in the sample, nm (default: the TIFF's ImageJ/OME metadata)")
    h.add_argument("--wavelength", dest="wavelength_nm", type=positive(), metavar="NM",
                   help="vacuum wavelength of the illumination, nm (default 633)")
    h.add_argument("--n-medium", type=positive(), metavar="N",
                   help="refractive index of the medium around the objects (default 1.33)")
    h.add_argument("--signal-range", type=positive(), metavar="R",
                   help="learn the signal strength (for a small scatterer, its polarizability) by scaling the "
                        "crop by up to R times either way; reported as a multiple of the crop's object. For "
                        "images with zero background (a scattered field)")
    h.add_argument("--crop-z", type=_float_or_auto, metavar="UM|auto",
                   help="the crop's object is at this z (µm from the focal plane), so z is reported absolute; "
                        "'auto' finds it by refocusing the crop's field (default: z relative to the crop)")
    h.add_argument("--crop-signal", type=positive(), metavar="S",
                   help="the crop's object has this signal (e.g. a known polarizability), so the signal is "
                        "reported in its unit (default 1: a multiple of the crop's)")
    _add_common_image_options(t)
    t.add_argument("-o", "--output", type=Path, required=True, help="model file to write")
    t.set_defaults(func=cmd_lodestar_train)

    d = lsub.add_parser("detect", help="detect objects in every frame and write a CSV",
                        description="Write frame,row,col (pixels, frames 0-based), the model's other "
                                    "properties (z_um, signal) and features.")
    d.add_argument("image", type=Path,
                   help="TIFF (2D or T×Y×X) or .npy image, or a folder of one TIFF per frame")
    d.add_argument("--model", type=Path, required=True, help="model file from 'lodestar train'")
    d.add_argument("--single", action="store_true",
                   help="exactly one object per frame (weighted pooling of the whole frame)")
    d.add_argument("--alpha", type=float, help="weight exponent of the score (default 0.2)")
    d.add_argument("--beta", type=float, help="clustering exponent (default 1 - alpha)")
    d.add_argument("--cutoff", type=float, help="score threshold, its meaning set by --mode (default 0.98)")
    d.add_argument("--mode", choices=("quantile", "ratio", "absolute"),
                   help="cutoff as a quantile of the score map (default; lowered in a crowded frame to keep "
                        "--pixels-per-peak output pixels per candidate peak: on a textured image, where every "
                        "local maximum is a candidate, raising --cutoff then changes nothing), a fraction of its "
                        "maximum (ratio), or an absolute value")
    d.add_argument("--pixels-per-peak", type=float, metavar="N",
                   help="quantile mode: keep at least N output pixels per candidate peak above the cutoff "
                        "(default 4; 0: the paper's fixed quantile, which --cutoff then sets alone)")
    d.add_argument("--max-consistency", type=float, metavar="PX2",
                   help="drop detections whose consistency column (how much the predictions behind them "
                        "disagree, px²) exceeds this: false detections on texture or background often disagree "
                        "more than objects like the crop (default: keep all)")
    d.add_argument("--min-weight", type=float,
                   help="keep a detection only if one of the predictions it is refined from weighs at "
                        "least this (default 0.002)")
    d.add_argument("--radius", type=positive(), metavar="PX",
                   help="half-size of the neighbourhood for peak finding and refinement (default 4; pixels "
                        "of the network's input, i.e. of the downsampled image for a --downsample model)")
    d.add_argument("--cluster-radius", type=positive(), metavar="PX",
                   help="predictions farther than this from a detection do not refine it (default 2; same pixels)")
    d.add_argument("--crowded-distance", type=float, metavar="PX",
                   help="a detection with a neighbour closer than this is refined with its less self-consistent "
                        "predictions down-weighted and located again with its neighbours masked "
                        "(default: the receptive field; 0 turns both off)")
    d.add_argument("--deblend", action=argparse.BooleanOptionalAction, default=None,
                   help="locate crowded detections again on patches in which their neighbours are replaced "
                        "by background noise (default: on)")
    d.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average the network over the 8 quarter-turns and flips of each frame: more "
                        "accurate, 8x slower (default: on with --single, off otherwise)")
    d.add_argument("--frames", type=frames_type, default=None, metavar="A:B",
                   help="0-based frames A..B-1 of a stack (Python slice; a negative start counts from the end: "
                        "write --frames=-3:); the CSV keeps the stack's numbering")
    d.add_argument("--link", type=positive(), metavar="PX",
                   help="link the detections of a time-lapse into trajectories (trackpy): detections join "
                        "trajectories within PX pixels of their last positions, assigned jointly among nearby "
                        "ones (keep PX below half the distance between neighbours), and the CSV gets a 'track' "
                        "column (0-based ids)")
    d.add_argument("--memory", type=at_least(0), metavar="N",
                   help="with --link: frames an object may go undetected and keep its track (default 0); it must "
                        "reappear within the link distance of where it was last seen, which does not grow with "
                        "the gap")
    d.add_argument("--pixel-size", type=positive(), metavar="NM",
                   help="hologram models: the frames' pixel size in the sample, nm, checked against the one the "
                        "model was trained at (default: the TIFF's ImageJ/OME metadata; give it when they are "
                        "wrong)")
    _add_common_image_options(d)
    d.add_argument("-o", "--output", type=Path, required=True, help="CSV file to write")
    add_cluster_options(d, "image")
    d.set_defaults(func=cmd_lodestar_detect)

    k = lsub.add_parser("link", help="link the detections of a time-lapse CSV into trajectories",
                        description="Read a detection CSV (frame,row,col,...; 'lodestar detect'), link its "
                                    "detections frame to frame with trackpy and write it again with a "
                                    "'track' column (0-based ids). The same as 'detect --link'.")
    k.add_argument("detections", type=Path, help="CSV from 'lodestar detect' (frame,row,col,...)")
    k.add_argument("--distance", type=positive(), required=True, metavar="PX",
                   help="farthest an object moves from one frame to the next (pixels); keep it below half "
                        "the distance between neighbours")
    k.add_argument("--memory", type=at_least(0), default=0, metavar="N",
                   help="frames an object may go undetected and keep its track (default 0); it must reappear "
                        "within --distance of where it was last seen, which does not grow with the gap")
    k.add_argument("-o", "--output", type=Path, required=True, help="CSV file to write (may be the input)")
    k.set_defaults(func=cmd_lodestar_link)

    add_deeploco_commands(sub)

    demo = sub.add_parser("demo", help="simulate, train from one crop, detect, score, write a CSV")
    demo.add_argument("--out", default="starloc-demo", help="folder for the demo's files")
    demo.add_argument("--shape", default="point",
                      help="particle shape to simulate: point, sphere, annulus, ellipse or crescent")
    demo.add_argument("--seed", type=int, default=0, help="random seed of the simulation and training")
    demo.add_argument("--steps", type=at_least(1), default=None, metavar="N",
                      help="maximum LodeSTAR training steps (default: as 'lodestar train')")
    demo.add_argument("--method", choices=("all", "lodestar", "deeploco", "holography"), default="all",
                      help="which demo to run (default: LodeSTAR and DeepLoco; 'holography': LodeSTAR's axial "
                           "and signal symmetries on a simulated hologram, 2-3 minutes)")
    demo.add_argument("--deeploco-steps", type=int, default=400,
                      help="DeepLoco training steps (a short demo run; the default recipe trains longer)")
    demo.set_defaults(func=cmd_demo)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Our own warnings as one ``starloc: warning:`` line (above any progress bar); others as
    Python shows them."""
    if issubclass(category, StarlocWarning):
        from tqdm import tqdm

        tqdm.write(f"starloc: warning: {message}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


@contextlib.contextmanager
def _quiet_tifffile():
    """tifffile logs what it finds wrong in a file (``<tifffile.TiffPages @8> invalid page
    offset``) to stderr; the commands say it in their own one-line error instead."""
    logger = logging.getLogger("tifffile")
    handler, propagate = logging.NullHandler(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings(), _quiet_tifffile():
            warnings.showwarning = _show_warning
            return args.func(args)
    except StarlocError as exc:
        print(f"starloc: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("starloc: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader of stdout left (`starloc ... | head`): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit would fail
        return EXIT_SYSTEM_ERROR
    except OSError as exc:  # the system refused (a full disk, a read-only folder): one line, not a traceback
        print(f"starloc: error: {_os_error(exc)}", file=sys.stderr)
        return EXIT_SYSTEM_ERROR
    except (MemoryError, RuntimeError) as exc:
        message = out_of_memory_message(exc)
        if message is None:
            raise
        print(f"starloc: error: {message}", file=sys.stderr)
        return EXIT_SYSTEM_ERROR


def _os_error(exc: OSError) -> str:
    """``[Errno 28] No space left on device: 'x.csv'`` (io.atomic_path names the file the user
    gave, not its temporary)."""
    if exc.strerror is None:
        return one_line(exc)
    errno = f"[Errno {exc.errno}] " if exc.errno is not None else ""
    return f"{errno}{exc.strerror}" + (f": {str(exc.filename)!r}" if exc.filename is not None else "")


if __name__ == "__main__":
    sys.exit(main())
