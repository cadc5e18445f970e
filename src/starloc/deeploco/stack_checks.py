"""What localizing a stack checks on its first frames (in photons) against the model and the
camera: warnings (:class:`~starloc.errors.StarlocWarning`), never refusals, for frames the
network was not trained on. Each check is also callable alone; :func:`check_first_frames` runs
them all (:func:`~starloc.deeploco.stack.iter_localize_stack` on its first chunk).

- :func:`check_background`: the background level outside the model's training range;
- :func:`check_photons`: most emitters brighter or dimmer than the training's;
- :func:`check_uneven_background`: a model trained on flat backgrounds, a stack whose
  background varies over the frame;
- :func:`check_hot_pixels`: pixels bright in every frame unlike their neighbours;
- :func:`check_noise`: frames far less noisy than the camera settings predict;
- :func:`check_saturation` (on the frames as stored): pixels at the integer type's maximum.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import InputError, StarlocWarning
from .brightness import measure_brightness
from .camera import Camera

__all__ = ["check_first_frames", "check_background", "check_photons", "check_uneven_background",
           "check_hot_pixels", "check_noise", "check_saturation"]

#: pixels of the first frames that the checks measuring spots or maps read at most (~0.1 s)
CHECK_PIXELS = 2 ** 21


def check_first_frames(photons: np.ndarray, model: Any, camera: Camera | None, name: str) -> None:
    """Every check of this module on frames in photons ``(T, H, W)`` of the stack called
    ``name`` (the noise check only when a ``camera`` converted them). The checks warn with a
    ``stacklevel`` that names the code that called this function's caller, the localization
    generator's consumer."""
    check_background(photons, model, name)
    check_uneven_background(photons, model, name)
    check_photons(photons, model, name)
    check_hot_pixels(photons, name)
    if camera is not None:
        check_noise(photons, camera, name)


def _trained_simulation(model: Any) -> dict:
    """The simulator settings the model file records for its training (empty when it does not)."""
    return (getattr(model, "metadata", None) or {}).get("training", {}).get("simulator") or {}


def _leading_frames(photons: np.ndarray, at_least: int = 1) -> np.ndarray:
    """The first frames, ``CHECK_PIXELS`` worth (at least ``at_least``)."""
    return photons[: max(at_least, CHECK_PIXELS // max(1, photons[0].size))]


#: warn when a stack's background lies beyond this factor outside the model's training range
BACKGROUND_MARGIN = 2.0


def check_background(photons: np.ndarray, model: Any, name: str) -> float | None:
    """Warn (:class:`~starloc.errors.StarlocWarning`) when the background of frames in photons
    ``(T, H, W)`` lies more than ``BACKGROUND_MARGIN`` times outside the background range the model
    was trained on: the network has never seen such frames, and a wrong camera setting (gain,
    baseline, QE) is the usual cause. The background is the median over frames of each frame's
    median pixel (SMLM frames are mostly background). Returns it (photons/px), or None when the
    model file does not record its training range."""
    trained = _trained_simulation(model).get("background_range")
    if not trained or not len(photons):
        return None
    lo, hi = float(trained[0]), float(trained[1])
    background = float(np.median(np.median(photons.reshape(len(photons), -1), axis=1)))
    if background > BACKGROUND_MARGIN * hi or background < lo / BACKGROUND_MARGIN:
        warnings.warn(f"the background of {name} (median {background:.3g} photons/px in its first frames) lies "
                      f"outside the model's training range {lo:g}-{hi:g} photons/px. A wrong camera gain (e-/ADU, "
                      "EM gain, QE) or a real background unlike the training's means missed or spurious "
                      "localizations (a wrong baseline alone is harmless: each frame's median is subtracted). "
                      "Check the camera settings or train a model with a matching --background range",
                      StarlocWarning, stacklevel=4)
    return background


#: warn when more than this share of a stack's isolated emitters lie outside the model's photon range
PHOTONS_OUTSIDE = 0.25


def check_photons(photons: np.ndarray, model: Any, name: str) -> tuple[float, float] | None:
    """Warn (:class:`~starloc.errors.StarlocWarning`) when more than ``PHOTONS_OUTSIDE`` of the
    isolated emitters in frames in photons ``(T, H, W)`` are brighter than the brightest, or
    dimmer than the dimmest, emitter the model was trained on. Brighter ones come out as
    duplicates (an astigmatic model trained up to 20000 photons, 1000 training steps: at 20000-40000
    photons precision 0.53, against 0.81 at 1000-7000), dimmer ones are missed. Emitters are
    measured as :func:`~starloc.deeploco.brightness.measure_brightness` does (its 13 px box and
    1.3 px spots scaled to the model's pixel size), on at most ``CHECK_PIXELS`` pixels.
    Returns the shares ``(brighter, dimmer)``, or None when not checked: no training range in
    the model file, or too few isolated spots to judge."""
    trained = _trained_simulation(model).get("photons_range")
    if not trained or not len(photons):
        return None
    lo, hi = float(trained[0]), float(trained[1])
    scale = 100.0 / float(model.config.pixel_size)
    window = max(3, 2 * int(round(6.5 * scale)) + 1)
    try:
        found = measure_brightness(_leading_frames(photons), window=window, sigma_px=1.3 * scale)
    except InputError:  # too few isolated spots to say
        return None
    brighter = float(np.mean(found.photons > hi))
    dimmer = float(np.mean(found.photons < lo))
    median = float(np.median(found.photons))
    advice = ("Train a model whose --photons range covers them (starloc deeploco brightness measures "
              "a stack)")
    if brighter > PHOTONS_OUTSIDE:
        warnings.warn(f"{brighter:.0%} of the isolated emitters in the first frames of {name} (median {median:.0f} "
                      f"photons) are brighter than any the model was trained on ({lo:g}-{hi:g} photons): expect "
                      f"duplicate localizations. {advice}", StarlocWarning, stacklevel=4)
    elif dimmer > PHOTONS_OUTSIDE:
        warnings.warn(f"{dimmer:.0%} of the isolated emitters in the first frames of {name} (median {median:.0f} "
                      f"photons) are dimmer than any the model was trained on ({lo:g}-{hi:g} photons): expect "
                      f"missed emitters. {advice}", StarlocWarning, stacklevel=4)
    return brighter, dimmer


#: warn a model trained on flat backgrounds when a stack's background varies by more than +- this
#: fraction of its level over the frame (flat simulated frames read 0.01-0.10, a +-50 % ramp 0.32-0.46)
UNEVEN_BACKGROUND = 0.15
#: side (px) of the blocks whose low percentile maps the background of a frame
_BACKGROUND_BLOCK = 16


def check_uneven_background(photons: np.ndarray, model: Any, name: str) -> float | None:
    """Warn (:class:`~starloc.errors.StarlocWarning`) when the model was trained on flat
    backgrounds (``background_variation`` 0, or a model file from before the setting) and the
    background of frames in photons ``(T, H, W)`` varies over the frame by more than
    ``UNEVEN_BACKGROUND`` of its level: such a model takes the brighter parts for emitters
    (docs/benchmarks.md, "Uneven backgrounds"). The background map is the median over frames of
    the 25th percentile of each 16x16 px block (emitters add to the top of a block, noise
    averages out over frames), on at most ``CHECK_PIXELS`` pixels. Returns the
    variation (half the map's range over its median), or None when not checked: a model
    trained with a varying background, no training record, frames too small for two 16x16 px
    blocks or a background under 1 photon/px."""
    sim = _trained_simulation(model)
    if not sim or float(sim.get("background_variation", 0.0)) > 0 or not len(photons):
        return None
    b = _BACKGROUND_BLOCK
    rows, cols = photons.shape[1] // b, photons.shape[2] // b
    if rows * cols < 2:
        return None
    lead = _leading_frames(photons)[:, : rows * b, : cols * b]
    blocks = lead.reshape(len(lead), rows, b, cols, b).transpose(0, 1, 3, 2, 4)
    field = np.median(np.percentile(blocks.reshape(*blocks.shape[:3], b * b), 25, axis=-1), axis=0)
    level = float(np.median(field))
    if level < 1.0:
        return None
    variation = float(field.max() - field.min()) / (2 * level)
    if variation > UNEVEN_BACKGROUND:
        warnings.warn(f"the background of {name} varies over the frame by about +-{variation:.0%} of its level "
                      f"({level:.3g} photons/px) in its first frames, and the model was trained on flat backgrounds: "
                      "expect false localizations where the background is higher. Train a new model: 'starloc "
                      "deeploco train' trains on uneven backgrounds by default (--background-variation)",
                      StarlocWarning, stacklevel=4)
    return variation


#: frames of the first chunk that :func:`check_hot_pixels` needs (its median must hide emitters)
HOT_PIXEL_FRAMES = 16
#: photons/px above its neighbours that make a pixel of the median frame hot (and a false emitter)
HOT_PIXEL_EXCESS = 100.0


def check_hot_pixels(photons: np.ndarray, name: str) -> int | None:
    """Warn (:class:`~starloc.errors.StarlocWarning`) when pixels of frames in photons ``(T, H,
    W)`` are bright in every frame unlike their neighbours: hot pixels (an sCMOS pixel's dark
    current or offset) that the network takes for emitters (30 hot pixels of +1000 photons in a
    128 px frame cut the default 2D model's precision from 0.99 to 0.84, of +5000 to 0.38). On
    the median over frames (emitters blink, so it holds the background and fixed patterns), a
    pixel is hot when it stands more than ``HOT_PIXEL_EXCESS`` photons and 10 noise levels above
    the median of its 8 neighbours, none of which stands more than a third as high (a bead or
    any spot spreads over its neighbours). Returns how many, or None when not checked: fewer
    than ``HOT_PIXEL_FRAMES`` frames or frames under 3 px."""
    if len(photons) < HOT_PIXEL_FRAMES or min(photons.shape[1:]) < 3:
        return None
    lead = _leading_frames(photons, at_least=HOT_PIXEL_FRAMES)
    median = np.median(lead, axis=0).astype(np.float64)
    ring = np.ones((3, 3), dtype=bool)
    ring[1, 1] = False
    around = ndimage.median_filter(median, footprint=ring, mode="nearest")
    excess = median - around
    noise = 1.4826 * float(np.median(np.abs(excess - np.median(excess))))
    brightest_neighbour = ndimage.maximum_filter(excess, footprint=ring, mode="nearest")
    hot = (excess > max(HOT_PIXEL_EXCESS, 10 * noise)) & (brightest_neighbour < excess / 3)
    count = int(hot.sum())
    if count:
        warnings.warn(f"{count} pixel(s) of {name} stand {np.median(excess[hot]):.0f} photons (median) above their "
                      f"neighbours in every one of its first {len(lead)} frames: hot pixels, which the network takes "
                      "for emitters. Give the camera's per-pixel offset map (--baseline offset.tif) or correct "
                      "them before localizing", StarlocWarning, stacklevel=4)
    return count


def check_saturation(frames: np.ndarray, name: str) -> int | None:
    """Warn (:class:`~starloc.errors.StarlocWarning`) when frames as stored ``(T, H, W)`` of an
    integer type hold pixels at that type's maximum (65535 for 16 bits): a saturated camera or
    cosmic rays. Such a pixel is a spike the network takes for emitters (4 random pixels at
    65535 in each 64 px frame of the AS sample stack: 2231 localizations instead of 622), and a
    saturated emitter's position is biased. Returns how many such pixels the first frames hold,
    or None for float frames."""
    dtype = np.asarray(frames[:0]).dtype
    if dtype.kind not in "iu":
        return None
    lead = _leading_frames(frames)
    top = np.iinfo(dtype).max
    at_top = np.asarray(lead) == top
    count = int(at_top.sum())
    if count:
        hit = int(at_top.any(axis=(1, 2)).sum())
        warnings.warn(f"{count} pixel(s) in {hit} of the first {len(lead)} frames of {name} sit at {top} ADU, the "
                      f"maximum of its {dtype} data: saturated pixels or cosmic rays, which the network takes for "
                      "emitters; localizations at them are spurious or biased", StarlocWarning, stacklevel=3)
    return count


#: warn when the median frame is this much less noisy than the camera settings predict
LOW_NOISE = 0.6
#: photons/px below which the noise check is skipped (an EMCCD's noise is far from Gaussian there)
NOISE_CHECK_MIN_LEVEL = 10.0
#: the lower quantiles of a frame's pixels that give its background noise (emitters add to the top)
_NOISE_QUANTILES = (5.0, 25.0)
_Z5, _Z25 = -1.6448536, -0.6744898  # standard normal quantiles of _NOISE_QUANTILES


def check_noise(photons: np.ndarray, camera: Camera, name: str) -> float | None:
    """Warn (:class:`~starloc.errors.StarlocWarning`) when frames converted to photons ``(T,
    H, W)`` are far less noisy than the camera settings that converted them predict: too few
    electrons per ADU (or too low a gain) scales the photons by ``k < 1`` and their predicted
    noise by ``sqrt(k)`` only. Returns the median frame's noise over the prediction (None when
    not checked: no frames, or backgrounds under :data:`NOISE_CHECK_MIN_LEVEL`).

    Per frame, the background's spread from its lower quantiles (5th to 25th percentile, as a
    normal distribution's; emitters add light to the upper ones) against
    :meth:`Camera.pixel_noise` at its level. Emitters and background gradients only widen it,
    so only "less noisy" is told, from :data:`LOW_NOISE`: e-/ADU 10x too small reads 0.26-0.37
    on simulated frames. "Noisier" is not: dense or bright frames with the right settings read
    up to 4.6x, as much as a wrong gain or camera (an sCMOS preset on EMCCD frames: 2-2.8x)."""
    if len(photons) == 0:
        return None
    flat = photons.reshape(len(photons), -1).astype(np.float64)
    p5, p25 = np.percentile(flat, _NOISE_QUANTILES, axis=1)
    sigma = (p25 - p5) / (_Z25 - _Z5)
    level = p25 - _Z25 * sigma
    if np.median(level) < NOISE_CHECK_MIN_LEVEL:
        return None
    ratio = float(np.median(sigma / np.array([camera.pixel_noise(v) for v in level])))
    if ratio < LOW_NOISE:
        warnings.warn(f"the frames of {name} are ~{ratio:.1f}x less noisy than the camera settings predict "
                      f"({camera!r}): with wrong settings the photon counts are off by about the square of "
                      "that and the network sees frames unlike its training. Check the camera settings (e-/ADU, "
                      "EM gain, QE; or --units photons for frames already in photons)",
                      StarlocWarning, stacklevel=4)
    return ratio
