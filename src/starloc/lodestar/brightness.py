"""How bright an image's objects are next to the training crop's, as the network sees them.

A model learns objects from its crop's brightness up to ``TrainConfig.gain`` times it (the
intensity augmentation); far brighter objects lie outside what it saw and are missed or
misplaced. ``bench/lodestar_brighter.py`` (a point model trained at SNR 10 for 1500 steps):
with the default gain of 3, objects 3x / 5x brighter than the crop were found at 0.052 /
0.090 px RMSE and 10x brighter ones not at all; with a gain of 10 at 0.043 / 0.036 / 0.029 px
up to 10x, but objects like the crop at 0.065-0.078 px instead of 0.053-0.062, so the default
stays 3. Training records the peak of its crop's object (:func:`object_peak` of the
normalized crop; the CLI and the widget measure it in the crop's whole frame instead,
:func:`record_crop_peaks`), and detection compares the image's brightest object with it
(in the first, middle and last frame on the command line, the frame shown in napari).

Units: frames as the network sees them (:meth:`LodeSTAR.network_input`: background level 0,
background noise 1), the peak of a 3x3 median so that single pixels (hot pixels) do not count.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from starloc.io import validate_crop
from starloc.lodestar.model import LodeSTAR

#: an image's objects may be this much brighter than the trained range before a warning
MARGIN = 1.3
#: the trained range the warning assumes at least: equal objects read 1.1-1.8x apart (noise)
FLOOR = 2.0


def object_peak(normalized: torch.Tensor) -> float:
    """Largest absolute 3x3 median (channels averaged) of normalized ``(N, C, H, W)`` frames:
    an object's peak contrast, whether brighter or darker than the background. The median
    ignores hot pixels and other single-pixel outliers, which are no objects."""
    from scipy.ndimage import median_filter

    x = normalized.detach().float().mean(dim=1).cpu().numpy()
    return float(np.abs(median_filter(x, size=(1, 3, 3), mode="nearest")).max()) if x.size else 0.0


def _as_seen(model: LodeSTAR, frames: np.ndarray) -> torch.Tensor:
    """``(T, C, H, W)`` frames as the network sees them (downsampled, normalized whole)."""
    return model.network_input(torch.from_numpy(np.require(frames, np.float32, ["C", "W"])))


def record_crop_peaks(model: LodeSTAR, frames_and_boxes) -> None:
    """Measure the crops' object peak in their whole frames, normalized as detection
    normalizes frames, and store it in the model (replacing the one ``train`` measured on the
    crops alone). The crops' own normalization misreads a crop that an object nearly fills, or
    one on an illumination gradient (frames are flattened, crops are not); in its frame the
    cropped object reads as its like elsewhere. ``frames_and_boxes``: pairs of a ``(1, C, H,
    W)`` frame and the ``(row, col, height, width)`` boxes of the crops cut from it (pixels)."""
    if model.normalization == "fixed" or "training" not in model.metadata:
        return
    d, peaks = model.downsample, []
    for frame, boxes in frames_and_boxes:
        seen = _as_seen(model, frame)
        for box in boxes:
            row, col, height, width = validate_crop(tuple(frame.shape[-2:]), box, 1)
            r0, c0 = row // d, col // d
            peaks.append(object_peak(seen[..., r0 : max(r0 + 1, (row + height) // d),
                                          c0 : max(c0 + 1, (col + width) // d)]))
    if peaks:
        training = model.metadata["training"]
        training.setdefault("crop_alone_peak", training.get("object_peak"))
        training["object_peak"] = max(peaks)


#: a crop's object may read this much brighter in its frame than in the crop alone before a warning
#: (measured on the SMLM 2016 2D beads: crops of 32 / 40 / 52 / 56 / 64 px read 24 / 19 / 13 / 3.5 /
#: 1.0; the 32 and 56 px crops' models found none of the 6 beads, the 64 px crop's all 6; a 125 px
#: cell in a 200 px crop read 3.0 and was found, at the limit). It is the default brightness range
#: of training (TrainConfig.gain), but a fixed number: training for brighter objects (a larger
#: gain) did not rescue the 32 px crop (the halo that fills it misleads more than the scale).
CROP_SCALE_LIMIT = 3.0


def crop_scale_advice(model: LodeSTAR, how: str = "draw a larger crop, with background around the object, "
                                                  "and train again") -> str | None:
    """What to tell the user when the training crop's object reads far brighter in its whole
    frame than in the crop alone, None otherwise. Training normalizes each crop by its own
    background and noise; a crop that its object nearly fills (a bright bead and its halo in
    32 px) has little background, reads noisy, and the network learns the object many times
    fainter than detection, which normalizes whole frames, then sees it: on the SMLM 2016 2D
    beads 32 and 56 px crops found none of 6 beads (rings of false detections around them), a
    64 px crop all 6 within 0.11 px."""
    training = model.metadata.get("training", {})
    alone, in_frame = training.get("crop_alone_peak"), training.get("object_peak")
    if not alone or not in_frame or model.normalization == "fixed":
        return None
    ratio = float(in_frame) / float(alone)
    if ratio <= CROP_SCALE_LIMIT:
        return None
    return (f"the training crop's object reads {ratio:.0f}x brighter in its image than in the crop alone: the crop "
            f"holds too little background, so the model learned the object {ratio:.0f}x fainter than detection sees "
            f"it and may miss it or find rings around it; {how}")


def brightness_ratio(model: LodeSTAR, frames: np.ndarray) -> float | None:
    """The brightest object of ``(T, C, H, W)`` frames over the training crop's (see the module
    docstring); None for models that did not record their crop's peak (older files) or that
    teach brightness themselves (holograms, signal)."""
    crop_peak = model.metadata.get("training", {}).get("object_peak")
    if not crop_peak or model.normalization == "fixed" or len(frames) == 0:
        return None
    return object_peak(_as_seen(model, frames)) / float(crop_peak)


def brightness_advice(model: LodeSTAR, ratio: float | None, how: str = "train with --brighter {x}") -> str | None:
    """What to tell the user when ``ratio`` (:func:`brightness_ratio`) lies beyond the
    brightness the model was trained for; None when it does not. ``how`` says how to train
    for brighter objects, ``{x}`` standing for the factor to train with (a power of two
    above the ratio, with the margin)."""
    gain = float(model.metadata.get("training", {}).get("gain", 1.0))
    if ratio is None or ratio <= MARGIN * max(gain, FLOOR):
        return None
    x = 2 ** math.ceil(math.log2(ratio * MARGIN))
    return (f"objects in this image are up to ~{ratio:.0f}x brighter than the training crop's, and the model "
            f"learned objects up to {gain:g}x as bright: the brighter ones may be missed or misplaced. To find "
            f"them, {how.format(x=x)}, or train on a crop of a bright object too")
