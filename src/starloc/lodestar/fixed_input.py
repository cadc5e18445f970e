"""Checks of the images given to a model with the ``fixed`` normalization (holograms, signal
strength).

Such a model normalizes every image with the numbers measured on its training crops (levels
per channel, one scale), so that a brighter object stays brighter. An image whose background
sits elsewhere (a hologram with the reference's phase left in it, another illumination) or
one of whose channels is empty (an intensity image where a field belongs) is then unlike
anything the model learned, and its objects are lost or mismeasured with no other sign: a
leftover reference phase of 0.5 rad shifted z by 0.37 µm, 1 rad lost most particles.
"""

from __future__ import annotations

import numpy as np

#: the median of an image's channel this many noise levels (the model's scale) from the
#: training crops' level is a background unlike theirs
BACKGROUND_SHIFT = 5.0
#: a channel whose spread is below this share of the widest channel's is empty
EMPTY_CHANNEL = 0.01


def fixed_input_advice(model, frames: np.ndarray) -> str | None:
    """What is wrong with ``(T, C, H, W)`` frames for a ``fixed``-normalization model, or
    None (also for other models). Medians and spreads over all the given frames' pixels."""
    if getattr(model, "normalization", None) != "fixed" or model.fixed_input is None or len(frames) == 0:
        return None
    levels, scale = model.fixed_input
    pixels = np.moveaxis(np.asarray(frames, dtype=np.float64), 1, 0).reshape(np.shape(frames)[1], -1)
    spread = pixels.std(axis=1)
    if len(spread) > 1 and spread.max() > 0 and spread.min() < EMPTY_CHANNEL * spread.max():
        empty = int(np.argmin(spread))
        return (f"channel {empty} of the image is constant: the model takes the complex field as (real, imaginary) "
                "channels; an intensity hologram (|E|²) cannot be measured by it")
    median = np.median(pixels, axis=1)
    shift = float(np.max(np.abs(median - np.asarray(levels)))) / scale
    if shift <= BACKGROUND_SHIFT:
        return None
    said = ", ".join(f"{v:.3g}" for v in median)
    crop = ", ".join(f"{v:.3g}" for v in levels)
    why = ("is the illumination removed from the field (E / E_reference - 1, zero background)? A reference phase "
           "left in it shifts z and loses particles" if len(levels) > 1 else
           "another illumination or camera offset makes every object look brighter or darker to it; train on a "
           "crop of these images")
    return (f"the image's background ({said}) lies {shift:.0f} noise levels from the training crop's ({crop}), "
            f"and this model normalizes every image with the crop's numbers: {why}")
