"""A trained LodeSTAR model: network + input normalization + metadata, and its maps.

Coordinates: (row, col) in input pixels, pixel centres at integers, frames 0-based.

A model may look at its images downsampled by an integer factor ``d`` (the mean of d x d
pixel blocks, as camera binning): the paper tunes the scale of what LodeSTAR tracks this way
(a cell larger than the receptive field is found as a whole once downsampled). Training sees
downsampled crops, inference downsampled frames; the maps and every position handed back are
in the pixels of the user's image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from starloc import memory
from starloc.errors import InputError, ModelFileError
from starloc.io import load_model_file, save_model_file
from starloc.lodestar.dihedral import dihedral_maps
from starloc.lodestar.network import LodeSTARNet, NetworkConfig, decode

MODEL_KIND = "lodestar"

NORMALIZATIONS = ("background", "robust", "fixed")


BACKGROUND_QUANTILE = 0.75
CLIP_SIGMA = 3.0
CLIPPED_STD = 0.98658  # std of a unit Gaussian cut at +-3 sigma
MAD_TO_SIGMA = 1.4826  # sigma / median absolute deviation of a Gaussian
ROBUST_SCALE = 0.73123  # std of a unit Gaussian's values below its 75th percentile
CROWDED_RATIO = 1.25  # robust scale / MAD scale above which objects are taken to inflate it

#: host memory that the maps and the detection on them take per pixel the network sees, bytes,
#: beside the 4 bytes per pixel of the frames themselves and the network's activations on a
#: 1024 x 1024 px tile (per frame of a batch; less on smaller frames, in proportion). Fitted to
#: the peaks of one frame of 2048², 4096² and 8192² px: ~0.3 GB plus 17-22 B/px; with the 8
#: grid symmetries 72 B/px in all on 4096² (docs/lodestar-method.md)
MAPS_BYTES_PER_PIXEL = {False: 24, True: 60}
MAPS_TILE_BYTES = 4 * 10**8  # per tile of MAPS_TILE_PIXELS network pixels
MAPS_TILE_PIXELS = 1024**2


def check_downsample(factor) -> int:
    """The downsampling factor as an int >= 1, or InputError naming the bad value."""
    if isinstance(factor, bool) or not float(factor).is_integer() or int(factor) < 1:
        raise InputError(f"downsample must be a whole number >= 1, got {factor!r}")
    return int(factor)


def downsample_frames(frames: torch.Tensor, factor: int) -> torch.Tensor:
    """Means of ``factor x factor`` pixel blocks of ``(N, C, H, W)`` frames; the last
    ``H % factor`` rows and ``W % factor`` columns, which fill no whole block, are dropped.
    Downsampled pixel ``b`` is centred at input pixel ``factor * b + (factor - 1) / 2``. Frames
    need at least 2 (downsampled) pixels per side: a line of pixels has no 2D object to find."""
    if min(frames.shape[-2:]) < 2 * factor:
        by = f" for downsampling by {factor}" if factor != 1 else ""
        raise InputError(f"an image of {tuple(frames.shape[-2:])} px is too small{by}: it needs at least "
                         f"{2 * factor} px per side")
    return frames if factor == 1 else F.avg_pool2d(frames, factor)


def to_image_coordinates(rowcol: np.ndarray, factor: int) -> np.ndarray:
    """(row, col) in downsampled pixels -> input pixels (see :func:`downsample_frames`)."""
    return rowcol * factor + (factor - 1) / 2 if factor != 1 else rowcol


def to_network_coordinates(rowcol: np.ndarray, factor: int) -> np.ndarray:
    """Inverse of :func:`to_image_coordinates`."""
    return (rowcol - (factor - 1) / 2) / factor if factor != 1 else rowcol


def _map_positions(positions: np.ndarray, convert, factor: int) -> np.ndarray:
    """``positions (..., K, h, w)`` with channels 0, 1 (row, col) passed through
    ``convert(rowcol, factor)``; the other properties unchanged. A new array."""
    out = positions.copy()
    rowcol = np.moveaxis(out[..., :2, :, :], -3, -1)
    out[..., :2, :, :] = np.moveaxis(convert(rowcol, factor), -1, -3)
    return out


def normalize(frames: torch.Tensor, method: str = "background") -> torch.Tensor:
    """Normalize ``(N, C, H, W)`` frames per frame and channel: subtract the background level,
    divide by a measure of the background noise, so that an object looks the same to the
    network in a 40 px training crop and in a crowded 2048 px frame, at any gain or offset of
    the camera.

    ``background`` (the default for new models): the ``robust`` estimate below, unless
    objects cover so much of the image that it is inflated: more than 1.25 times the
    scale given by the median absolute deviation (MAD). Then the background pixels are
    found by iterative 3-sigma clipping (median and clipped standard deviation, started from
    the MAD), which leaves out bright *and* dark objects as long as they cover less than
    half the image; the level is their median, the scale their standard deviation times
    0.7312, the ratio ``robust`` gives on a pure Gaussian background. On sparse images the
    result is exactly the ``robust`` one.

    ``robust`` (model files written before ``background``): subtract the median and divide
    by the standard deviation of the pixels at or below the 75th percentile, i.e. of the
    background of an image whose bright objects cover less than a quarter of it. A crop
    drawn tightly around a large object breaks that assumption: the object then sets the
    scale of the crop, not of the frames it is applied to (a disc 32 px across in a 52 px
    crop was then found 5 px off).
    """
    if method not in NORMALIZATIONS or method == "fixed":
        raise ValueError(f"unknown normalization {method!r} of a frame by itself; expected 'background' or "
                         "'robust' ('fixed' takes the model's numbers: LodeSTAR.normalize)")
    flat = frames.flatten(2)
    if flat.dtype == torch.float32:
        # Squared deviations of values beyond ~1e15 overflow float32 sums, those of values below
        # ~1e-15 underflow; the result does not depend on the units, so such frames are first
        # brought to unit peak (exactly, by a power of two). Other frames are left bit for bit.
        peak = flat.abs().amax(dim=2, keepdim=True)
        odd = torch.isfinite(peak) & ((peak > 1e15) | ((peak < 1e-15) & (peak > 0)))
        if bool(odd.any()):
            flat = flat * torch.where(odd, torch.exp2(-torch.ceil(torch.log2(peak))), torch.ones_like(peak))
    level, scale = _low_quantile_background(flat)
    if method == "background":
        level, scale = _clipped_where_crowded(flat, level, scale)
    # A flat background (e.g. zeros between sparse photons) has no spread: use the whole frame's.
    scale = torch.where(scale > 0, scale, flat.std(dim=2, keepdim=True))
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return ((flat - level) / scale).view_as(frames)


#: tiles of the background trend, in receptive fields (see :func:`flatten_background`)
TREND_BLOCKS = 4
#: a normalized pixel this far above (below) the median of its 8 neighbours, standing out of
#: them all by at least HOT_ISOLATION of that, is a hot (dead) pixel (see :func:`suppress_hot_pixels`)
HOT_EXCESS = 30.0
HOT_ISOLATION = 0.9


def suppress_hot_pixels(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` normalized frames with each hot or dead pixel replaced by the median of
    its 8 neighbours: a pixel more than :data:`HOT_EXCESS` above (below) that median and above
    (below) all of its neighbours by :data:`HOT_ISOLATION` of that excess. A single pixel of a
    camera's 60000 counts beside a nucleus made the network lose the nucleus 8-12 px away.
    An object's peak pixel has brighter neighbours (the simulator's point: 0.8 of its peak; a
    pixel-integrated Gaussian spot of sigma 0.45 px, centred on a pixel: 0.18) and is left
    alone, however bright.

    Memory: two frame-sized running extremes; the median only at the few candidates."""
    n, c, h, w = x.shape
    if h < 3 or w < 3:
        return x
    m = n * c
    padded = F.pad(x.reshape(m, 1, h, w), (1, 1, 1, 1), mode="replicate")[:, 0]
    shifts = [(dy, dx) for dy in range(3) for dx in range(3) if (dy, dx) != (1, 1)]
    highest = padded[:, 0:h, 0:w].clone()
    lowest = highest.clone()
    for dy, dx in shifts[1:]:
        torch.maximum(highest, padded[:, dy:dy + h, dx:dx + w], out=highest)
        torch.minimum(lowest, padded[:, dy:dy + h, dx:dx + w], out=lowest)
    centre = x.reshape(m, h, w)
    margin = HOT_ISOLATION * HOT_EXCESS
    candidates = ((centre - highest) > margin) | ((lowest - centre) > margin)
    del highest, lowest
    if not bool(candidates.any()):
        return x  # no pixel stands out of all its neighbours enough to be a spike (the usual case)
    i, r, col = candidates.nonzero(as_tuple=True)
    around = torch.stack([padded[i, r + dy, col + dx] for dy, dx in shifts], dim=1)  # (k, 8)
    value = centre[i, r, col]
    median = around.median(dim=1).values
    excess = value - median
    spikes = ((excess > HOT_EXCESS) & (value - around.amax(dim=1) > HOT_ISOLATION * excess)) | \
        ((excess < -HOT_EXCESS) & (around.amin(dim=1) - value > -HOT_ISOLATION * excess))
    out = centre.clone()
    out[i[spikes], r[spikes], col[spikes]] = median[spikes]
    return out.reshape(n, c, h, w)


def _linear_weights(n: int, tiles: int, like: torch.Tensor) -> torch.Tensor:
    """``(n, tiles)`` weights that interpolate values at the centres of ``tiles`` equal tiles
    of ``n`` pixels linearly to every pixel, and extrapolate them linearly beyond the outer
    centres (clamping there would leave the outer half tile's trend in the frame)."""
    w = torch.zeros(n, tiles, dtype=like.dtype, device=like.device)
    if tiles == 1:
        return w + 1
    u = (torch.arange(n, dtype=like.dtype, device=like.device) + 0.5) * tiles / n - 0.5
    i0 = u.floor().clamp(0, tiles - 2).long()
    t = u - i0
    w[torch.arange(n), i0] = 1 - t
    w[torch.arange(n), i0 + 1] = t
    return w


def border_background(frames: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(level, spread)``, each ``(N, C, 1, 1)``: the median and the robust standard deviation
    (1.4826 x the median absolute deviation; the standard deviation where that is 0) of each
    frame's pixels within ``width`` px of its border (the whole frame when it is narrower
    than two bands), for a margin that continues the frame's background."""
    n, c, h, w = frames.shape
    b = max(1, min(int(width), h // 2, w // 2))
    band = torch.cat([frames[..., :b, :].flatten(2), frames[..., h - b:, :].flatten(2),
                      frames[..., b:h - b, :b].flatten(2), frames[..., b:h - b, w - b:].flatten(2)], dim=2)
    level = band.median(dim=2, keepdim=True).values
    spread = 1.4826 * (band - level).abs().median(dim=2, keepdim=True).values
    spread = torch.where(spread > 0, spread, band.std(dim=2, keepdim=True).nan_to_num(0.0))
    return level[..., None], spread[..., None]


def flatten_background(frames: torch.Tensor, block: int) -> torch.Tensor:
    """``(N, C, H, W)`` frames less their slowly varying background: the median of each
    ``block x block`` tile, interpolated (and at the border extrapolated) linearly between
    tile centres. Frames of fewer than two tiles (every training crop) are returned as they are.

    A frame is normalized by one level and one scale; under uneven illumination (a bright-field
    field 30 % brighter on one side) those are neither the background of its dark side nor of
    its bright side, and the network, trained on a crop of flat background, saw false objects
    all along the dark border and pulled the particles near it by up to 1 px. Tiles of four
    receptive fields are far larger than an object, so their medians are the background's."""
    n, c, h, w = frames.shape
    block = max(int(block), 1)
    rows, cols = max(h // block, 1), max(w // block, 1)
    if rows * cols == 1:
        return frames
    r_edges = [round(i * h / rows) for i in range(rows + 1)]
    c_edges = [round(j * w / cols) for j in range(cols + 1)]
    medians = torch.stack([torch.stack([frames[..., r_edges[i]:r_edges[i + 1], c_edges[j]:c_edges[j + 1]]
                                        .flatten(2).median(dim=2).values for j in range(cols)], -1)
                           for i in range(rows)], -2)
    return frames - _linear_weights(h, rows, frames) @ medians @ _linear_weights(w, cols, frames).T


def fixed_normalization(crops: list[torch.Tensor]) -> tuple[tuple[float, ...], float]:
    """``(levels, scale)`` of the ``fixed`` normalization measured on ``(C, H, W)`` crops:
    per channel, the median over the crops of the clipped background level (see
    :func:`clipped_background`); one scale for all channels, the median of their clipped
    standard deviations, so that the channels of a complex field keep their ratio and the
    phase is unchanged. Frames are then normalized with these numbers, not their own, so a
    brighter object stays brighter: what signal scaling needs."""
    stats = [clipped_background(c.flatten(1)[None].to(torch.float64)) for c in crops]
    levels = torch.stack([level[0, :, 0] for level, _ in stats]).median(dim=0).values
    scale = float(torch.stack([s[0, :, 0] for _, s in stats]).median())
    if not scale > 0:
        raise InputError("the crop has no background noise to normalize by (constant image?)")
    return tuple(float(v) for v in levels), scale


def _clipped_where_crowded(flat: torch.Tensor, level: torch.Tensor, scale: torch.Tensor):
    """``(level, scale)`` of the ``robust`` estimate (``level`` is the median), replaced by
    the clipped background's for the frames where objects inflate it (see :func:`normalize`).
    A zero MAD (most pixels equal, e.g. zeros between single photons) says nothing: kept."""
    mad_scale = ROBUST_SCALE * MAD_TO_SIGMA * (flat - level).abs().median(dim=2, keepdim=True).values
    crowded = (scale > CROWDED_RATIO * mad_scale) & (mad_scale > 0)
    if not bool(crowded.any()):
        return level, scale
    clipped_level, clipped_sigma = clipped_background(flat)
    return (torch.where(crowded, clipped_level, level),
            torch.where(crowded, clipped_sigma * ROBUST_SCALE, scale))


def _low_quantile_background(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``robust``: median of all pixels; standard deviation of those at or below the 75th
    percentile (``(N, C, P)`` -> two ``(N, C, 1)``)."""
    n = flat.shape[-1]
    med = flat.median(dim=2, keepdim=True).values
    # Moments of the values minus the median: where most pixels are equal (zeros between
    # sparse photons, at any offset) they are then exactly 0 and so is their spread; the
    # rounding of a mean of equal values left ~1e-7, which scaled a frame up by ~1e8.
    centred = flat - med
    cut = centred.kthvalue(max(1, int(BACKGROUND_QUANTILE * n)), dim=2, keepdim=True).values
    low = (centred <= cut).to(flat.dtype)
    count = low.sum(dim=2, keepdim=True)
    mean = (centred * low).sum(dim=2, keepdim=True) / count
    return med, torch.sqrt(((centred - mean) ** 2 * low).sum(dim=2, keepdim=True) / count)


def clipped_background(flat: torch.Tensor, iterations: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Median and standard deviation (corrected for the clipping) of the pixels within
    ``CLIP_SIGMA`` standard deviations of the median, iterated to convergence
    (``(N, C, P)`` -> two ``(N, C, 1)``). Starts from the median absolute deviation, which
    stays right while objects cover less than half the image."""
    level = flat.median(dim=2, keepdim=True).values
    scale = MAD_TO_SIGMA * (flat - level).abs().median(dim=2, keepdim=True).values
    keep = None
    for _ in range(iterations):
        new = (flat - level).abs() <= CLIP_SIGMA * scale
        if keep is not None and torch.equal(new, keep):
            break
        keep = new
        values = torch.where(keep, flat, torch.full_like(flat, float("nan")))
        level = values.nanmedian(dim=2, keepdim=True).values
        count = keep.sum(dim=2, keepdim=True).clamp(min=1)
        mean = values.nansum(dim=2, keepdim=True) / count
        var = ((values - mean) ** 2).nansum(dim=2, keepdim=True) / count
        scale = torch.sqrt(var) / CLIPPED_STD
    return level, scale


@dataclass
class Maps:
    """Network output for a batch of frames, in absolute input-pixel coordinates.

    positions : (T, K, h, w) properties per output pixel; channels 0, 1 are (row, col).
    weights : (T, h, w) weight map in [0, 1].
    stride : input pixels per output pixel; output pixel (i, j) is centred at
        ``(i*stride + (stride-1)/2, j*stride + (stride-1)/2)``.
    image_shape : (H, W) of the input frames.
    receptive_field : input pixels one output pixel sees (None: unknown).
    downsample : the model's downsampling factor (stride and receptive field include it).
    """

    positions: np.ndarray
    weights: np.ndarray
    stride: int
    image_shape: tuple[int, int]
    receptive_field: int | None = None
    downsample: int = 1

    def averaged(self) -> Maps:
        """Mean over a leading axis (e.g. the 8 grid symmetries of :meth:`LodeSTAR.symmetry_maps`)."""
        return Maps(self.positions.mean(0), self.weights.mean(0), self.stride, self.image_shape,
                    self.receptive_field, self.downsample)

    def network_view(self) -> Maps:
        """The same maps in the pixels the network saw (the downsampled image), where the
        detection settings in pixels were chosen; ``self`` when there is no downsampling."""
        d = self.downsample
        if d == 1:
            return self
        positions = _map_positions(self.positions, to_network_coordinates, d)
        rf = None if self.receptive_field is None else self.receptive_field // d
        return Maps(positions, self.weights, self.stride // d, (self.image_shape[0] // d, self.image_shape[1] // d),
                    rf, 1)


@dataclass
class LodeSTAR:
    """A LodeSTAR model ready for inference (see :mod:`starloc.lodestar.training`).

    ``position_offset``: (row, col) in the network's pixels, subtracted from every predicted
    position at inference, in the network's own frame (before the maps of a rotated or
    flipped frame are turned back). Training measures it at its end: a constant offset the
    network kept although the flips and rotations penalize it; see
    :func:`~starloc.lodestar.training.measure_position_offset`.

    ``property_offset``: subtracted from the properties after (row, col) (z, log-signal;
    see :mod:`.transforms`), whose equivariances fix differences only: training sets it so
    that its crops read 0, i.e. z and log-signal are relative to the training crop.
    ``fixed_input``: ``(levels per channel, scale)`` of the ``fixed`` normalization.
    """

    net: LodeSTARNet
    normalization: str = "background"
    metadata: dict = field(default_factory=dict)
    downsample: int = 1
    position_offset: tuple[float, float] = (0.0, 0.0)
    property_offset: tuple[float, ...] = ()
    fixed_input: tuple[tuple[float, ...], float] | None = None

    @classmethod
    def new(cls, config: NetworkConfig = NetworkConfig(), seed: int = 0, **kw) -> LodeSTAR:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = LodeSTARNet(config)
        return cls(net=net, **kw)

    @property
    def config(self) -> NetworkConfig:
        return self.net.config

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device) -> LodeSTAR:
        self.net.to(device)
        return self

    def forward(self, frames: torch.Tensor, origin=(0.0, 0.0)) -> tuple[torch.Tensor, torch.Tensor]:
        """``(P, rho)`` of :func:`decode` for raw ``(N, C, H, W)`` frames."""
        return self.forward_normalized(self.normalize(frames), origin)

    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` frames normalized as this model's network expects them: by each
        frame's own background (:func:`normalize`), or by the numbers measured on the
        training crops (``fixed``)."""
        if self.normalization != "fixed":
            return suppress_hot_pixels(normalize(flatten_background(frames, TREND_BLOCKS * self.config.receptive_field),
                                                 self.normalization))
        if self.fixed_input is None:
            raise InputError("the model's fixed normalization has not been measured")
        levels, scale = self.fixed_input
        level = torch.tensor(levels, dtype=frames.dtype, device=frames.device).view(1, -1, 1, 1)
        return (frames - level) / scale

    def renormalize(self, copies: torch.Tensor) -> torch.Tensor:
        """Transformed copies of already normalized crops, normalized again as a frame
        would be (training): the per-frame normalizations again; ``fixed`` has nothing to
        redo, and must not, or it would undo signal scaling."""
        return copies if self.normalization == "fixed" else normalize(copies, self.normalization)

    def forward_normalized(self, frames: torch.Tensor, origin=(0.0, 0.0)) -> tuple[torch.Tensor, torch.Tensor]:
        """``(P, rho)`` of :func:`decode` for frames already passed through :func:`normalize`."""
        return decode(self.net(frames), self.config.stride, origin)

    @property
    def receptive_field(self) -> int:
        """Input pixels of the user's image one output pixel sees (downsampling included)."""
        return self.config.receptive_field * self.downsample

    @torch.inference_mode()
    def maps(self, frames: np.ndarray | torch.Tensor, batch_size: int = 16, tile: int = 1024,
             augment: bool = False) -> Maps:
        """Property and weight maps for ``(T, C, H, W)`` frames of any size (H, W >= 2, or twice
        the downsampling factor), in the frames' pixels.

        Frames are normalized whole, then frames larger than ``tile`` pixels along an axis
        go through the network in overlapping tiles, so memory stays bounded; the result
        is the same as in one piece. ``augment`` averages the maps over the 8 quarter-turns
        and flips of each frame (more accurate, 8x slower; see :mod:`.dihedral`).
        """
        return self._maps(frames, batch_size, tile, symmetries=augment)[0].averaged()

    def symmetry_maps(self, frames: np.ndarray | torch.Tensor, batch_size: int = 16, tile: int = 1024) -> Maps:
        """Like :meth:`maps` but for each of the 8 grid symmetries of each frame, mapped back:
        positions ``(8, T, K, h, w)`` and weights ``(8, T, h, w)``."""
        return self._maps(frames, batch_size, tile, symmetries=True)[0]

    def maps_and_input(self, frames: np.ndarray | torch.Tensor, batch_size: int = 16, tile: int = 1024,
                       augment: bool = False) -> tuple[Maps, np.ndarray]:
        """:meth:`maps`, and the frames as the network saw them (:meth:`network_input`, on the
        CPU), which deblending needs: it then does not normalize the frames again."""
        maps, seen = self._maps(frames, batch_size, tile, symmetries=augment, keep_input=True)
        return maps.averaged(), seen

    @torch.inference_mode()
    def _maps(self, frames, batch_size: int, tile: int, symmetries: bool,
              keep_input: bool = False) -> tuple[Maps, np.ndarray | None]:
        """The maps (leading axis: symmetries) and, with ``keep_input``, the network's input."""
        frames = torch.from_numpy(np.require(frames, np.float32, ["C", "W"]))
        _require_maps_memory(tuple(frames.shape), symmetries, self.downsample, batch_size, tile)
        d = self.downsample
        pos, wts, seen = [], [], []
        for start in range(0, frames.shape[0], batch_size):
            x = self.network_input(frames[start : start + batch_size])
            if keep_input:
                seen.append(x.cpu().numpy())
            m = self.network_maps(x, tile, symmetries)
            pos.append(_map_positions(m.positions, to_image_coordinates, d) if d != 1 else m.positions)
            wts.append(m.weights)
        maps = Maps(np.concatenate(pos, axis=1), np.concatenate(wts, axis=1), self.config.stride * d,
                    tuple(frames.shape[-2:]), self.receptive_field, d)
        return maps, (np.concatenate(seen) if keep_input else None)

    @torch.inference_mode()
    def network_input(self, frames: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` frames as the network sees them: downsampled, then normalized
        (``(N, C, H // d, W // d)``, on the model's device). InputError when C is not the
        network's number of input channels (a fixed normalization would broadcast one channel
        to two silently)."""
        self.check_channels(int(frames.shape[1]))
        return self.normalize(downsample_frames(frames.to(self.device), self.downsample))

    def check_channels(self, got: int) -> None:
        """InputError, saying how to fix it, when images of ``got`` channels are not what the
        network takes."""
        want = self.config.in_channels
        if got == want:
            return
        colour = " (for colour images into a 1-channel model: convert to gray, --rgb gray)" \
            if want == 1 and got in (3, 4) else ""
        if want == 1 and got > 1:
            colour += (f"; to analyse one of its {got} channels with this model: --channel K with the "
                       "--channel-axis (napari: split the layer's channels)")
        raise InputError(f"the model takes images of {want} channel(s), this one has {got}: give the image "
                         "its channels as the model was trained (napari: 'First axis = channels'; command "
                         f"line: --channel-axis, e.g. 0 for a {want}×Y×X image){colour}")

    @torch.inference_mode()
    def network_maps(self, x: torch.Tensor, tile: int = 1024, symmetries: bool = False, margin: bool = True) -> Maps:
        """Maps of frames already through :meth:`network_input`, in their own (network)
        pixels, with a leading axis: the 8 grid symmetries, or 1 without ``symmetries``.

        ``margin=False`` skips the noise margin of :meth:`_forward_padded`: for patches whose
        outer half receptive field only serves the output pixels inside it (H, W must then
        be multiples of the stride).
        """
        self.net.eval()
        if margin:
            P, rho = self._forward_padded(x, tile, symmetries)
        elif symmetries:
            P, rho = dihedral_maps(lambda y: self._forward_tiled(y, tile), x)
        else:
            P, rho = (v[None] for v in self._forward_tiled(x, tile))
        return Maps(P.float().cpu().numpy(), torch.sigmoid(rho).float().cpu().numpy(), self.config.stride,
                    tuple(x.shape[-2:]), self.config.receptive_field, 1)

    def _forward_padded(self, x: torch.Tensor, tile: int, symmetries: bool):
        """:meth:`_forward_tiled` on frames extended by background noise around their border.

        Zero padding inside the network shows it a flat, noise-free margin that it never saw
        in training and biases objects near the image border; a margin of noise like the
        frame's background along its border (:func:`border_background`) is what it saw. The
        normalized background is N(0, 1) only on average: under uneven illumination its level
        and spread at the border differ, and a margin of N(0, 1) noise then drew false
        detections along the border (on a sparse 200-frame single-particle movie, 852 of 2167
        false detections lay within 3 px of the border; 507 of 1741 with the matched margin,
        with the same particles found). The margin is half the receptive
        field, a multiple of the stride, and cut off again from the output. The padded
        size is a multiple of the stride, so the output grid turns with the image.
        Every frame of a shape gets the same margin noise, drawn on the CPU from a fixed seed and
        scaled to that frame's border, so a frame's maps depend on that frame alone: not on the
        device, nor on the frames batched with it (a stack split into chunks or cluster tasks
        gives the one-piece result).
        Returns maps with a leading axis: 8 grid symmetries, or 1 without ``symmetries``.
        """
        s = self.config.stride
        m = -(-self.config.receptive_field // (2 * s)) * s
        n, c, h, w = x.shape
        size = (h + 2 * m + (-h) % s, w + 2 * m + (-w) % s)
        margin = torch.randn((1, c, *size), generator=torch.Generator().manual_seed(0), dtype=x.dtype)
        level, spread = border_background(x, m)
        padded = margin.to(x.device) * spread + level
        padded[..., m : m + h, m : m + w] = x
        if symmetries:
            P, rho = dihedral_maps(lambda y: self._forward_tiled(y, tile), padded)
        else:
            P, rho = (v[None] for v in self._forward_tiled(padded, tile))
        P[:, :, :2] -= m
        k = m // s
        return P[..., k : k + h // s, k : k + w // s], rho[..., k : k + h // s, k : k + w // s]

    def _forward_tiled(self, x: torch.Tensor, tile: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward_normalized` in absolute coordinates, tile by tile, less the model's
        ``position_offset``.

        Tiles start at multiples of the stride and overlap by half the receptive field, so
        every output pixel is computed with its whole receptive field in view.
        """
        P, rho = self._forward_tiles(x, tile)
        if any(self.position_offset):
            P[:, :2] -= torch.tensor(self.position_offset, dtype=P.dtype, device=P.device).view(1, 2, 1, 1)
        if any(self.property_offset):
            offset = torch.tensor(self.property_offset, dtype=P.dtype, device=P.device)
            P[:, 2:] -= offset.view(1, -1, 1, 1)
        return P, rho

    def _forward_tiles(self, x: torch.Tensor, tile: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.config.stride
        h, w = x.shape[-2:]
        if h <= tile and w <= tile:
            return self.forward_normalized(x)
        tile = max(s, tile - tile % s)
        margin = -(-self.config.receptive_field // (2 * s)) * s
        P = x.new_empty((x.shape[0], self.config.n_properties, h // s, w // s))
        rho = x.new_empty((x.shape[0], h // s, w // s))
        for r0 in range(0, h - h % s, tile):
            for c0 in range(0, w - w % s, tile):
                r1, c1 = max(0, r0 - margin), max(0, c0 - margin)
                part = x[..., r1 : min(h, r0 + tile + margin), c1 : min(w, c0 + tile + margin)]
                p, q = self.forward_normalized(part, origin=(-r1, -c1))
                nr, nc = min(tile // s, h // s - r0 // s), min(tile // s, w // s - c0 // s)
                src = (slice((r0 - r1) // s, (r0 - r1) // s + nr), slice((c0 - c1) // s, (c0 - c1) // s + nc))
                dst = (slice(r0 // s, r0 // s + nr), slice(c0 // s, c0 // s + nc))
                P[(..., *dst)] = p[(..., *src)]
                rho[(..., *dst)] = q[(..., *src)]
        return P, rho

    def save(self, path) -> None:
        """Write the model as one self-describing file (atomic; see :mod:`starloc.io`)."""
        config = {"network": self.config.to_dict(), "normalization": self.normalization,
                  "downsample": self.downsample, "position_offset": [float(v) for v in self.position_offset],
                  "property_offset": [float(v) for v in self.property_offset]}
        if self.fixed_input is not None:
            config["fixed_input"] = {"levels": [float(v) for v in self.fixed_input[0]],
                                     "scale": float(self.fixed_input[1])}
        save_model_file(path, MODEL_KIND, config, self.net.state_dict(), self.metadata)

    @classmethod
    def load(cls, path, device="cpu") -> LodeSTAR:
        """Load a model written by :meth:`save` without executing code from the file."""
        obj = load_model_file(path, kind=MODEL_KIND)
        try:
            config = NetworkConfig.from_dict(obj["config"]["network"])
            normalization = obj["config"]["normalization"]
            if normalization not in NORMALIZATIONS:
                raise ValueError(f"unknown normalization {normalization!r}")
            offset = tuple(float(v) for v in obj["config"].get("position_offset", (0.0, 0.0)))
            if len(offset) != 2 or not np.all(np.isfinite(offset)):
                raise ValueError(f"position_offset must be two finite numbers, got {offset}")
            extra = tuple(float(v) for v in obj["config"].get("property_offset", ()))
            if len(extra) not in (0, config.n_properties - 2) or not np.all(np.isfinite(extra)):
                raise ValueError(f"property_offset must be {config.n_properties - 2} finite numbers, got {extra}")
            fixed = _fixed_input(obj["config"].get("fixed_input"), normalization, config.in_channels)
            model = cls(net=LodeSTARNet(config), normalization=normalization, metadata=obj["metadata"],
                        downsample=check_downsample(obj["config"].get("downsample", 1)), position_offset=offset,
                        property_offset=extra, fixed_input=fixed)
            model.net.load_state_dict(obj["state_dict"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ModelFileError(f"{str(path)!r}: damaged LodeSTAR model ({exc})") from None
        model.net.eval()
        return model.to(device)


def _require_maps_memory(shape: tuple[int, ...], symmetries: bool, downsample: int = 1, batch_size: int = 16,
                         tile: int = 1024) -> None:
    """InputError before the maps of ``(T, C, H, W)`` frames are computed when they and the
    detection on them would not fit in the free memory (see :data:`MAPS_BYTES_PER_PIXEL`; a
    model that downsamples by d sees d² times fewer pixels; ``batch_size`` frames go through
    the network at once, in tiles of ``tile`` px)."""
    n, c, h, w = shape
    per_pixel = 4 * c + MAPS_BYTES_PER_PIXEL[bool(symmetries)] / downsample**2
    tiles = min(h * w / downsample**2, tile**2) / MAPS_TILE_PIXELS * min(n, batch_size)  # through the network at once
    need = n * h * w * per_pixel + MAPS_TILE_BYTES * tiles
    free = memory.available_bytes()
    if need <= free:
        return
    # pieces whose maps take half of what is free: a margin for the estimate and for other programs
    side = max(1024, int((max(free - MAPS_TILE_BYTES, 0) / 2 / per_pixel) ** 0.5) // 1024 * 1024)
    raise InputError(f"LodeSTAR on {n} frame(s) of {h} x {w} px needs about {memory.size_text(need)} of memory, "
                     f"more than the {memory.size_text(free)} free: cut the image into pieces of at most about "
                     f"{side} x {side} px and detect each")


def _fixed_input(stored, normalization: str, channels: int) -> tuple[tuple[float, ...], float] | None:
    """The ``fixed_input`` of a model file, checked (``ValueError`` if damaged)."""
    if normalization != "fixed":
        return None
    levels = tuple(float(v) for v in stored["levels"])
    scale = float(stored["scale"])
    if len(levels) != channels or not np.all(np.isfinite(levels)) or not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"fixed normalization needs {channels} finite levels and a positive scale")
    return levels, scale
