"""DeepLoco on whole SMLM stacks: any frame size, read lazily chunk by chunk, tiled.

A stack ``(T, H, W)`` (or one frame ``(H, W)``) in camera ADU (or photons) is read
``chunk_frames`` frames at a time (:func:`open_stack`: numpy arrays and memmaps, any lazy
array with ``shape``/``dtype``/slicing such as zarr or dask, ``.npy`` files memory-mapped,
TIFF stacks memory-mapped when uncompressed and read page by page otherwise), so memory is
bounded by the chunk, never the whole stack. Each chunk is normalized with the camera
(``camera.normalize``: ADU -> photons) and cut into overlapping tiles the network accepts
(:func:`plan_tiles`):

- ``"paper"`` networks take tiles of exactly ``frame_size x frame_size`` pixels;
- ``"fcn"`` and ``"unet"`` networks take any tile whose sides are multiples of 4 (>= 16): the whole frame
  when it is at most ``FCN_MAX_TILE`` (512) px a side, else, per axis, the tile side in 128-512 px
  that covers the frame with the fewest pixels (``tile`` overrides), starting on multiples of
  CELL px so that each tile pools the whole frame's cells (all but a last tile flush with an
  end that is not on a cell; :func:`_axis`). A whole frame has no seams
  and computes no pixel twice: 256 px frames localize 2.8x, 512 px frames 1.8x faster than in
  the 128 px tiles used before. A side that is not a multiple of 4 is not padded: a tile of
  the side rounded down covers it from the start and a narrow strip flush with its end covers
  the rest (e.g. rows 0-47 and 26-49 of a 50 px frame; :func:`_strip_axis` says why).

Frames smaller than a tile (the paper's network, or sides under 16 px) are padded at the
bottom/right with the frame's median (the network sees background there) and localizations in
the padding are dropped. Tiles overlap
by ``overlap`` pixels (default: 2 µm worth of pixels, at least 16, at most half a tile).
Every tile is post-processed (:func:`~starloc.deeploco.postprocess.postprocess`), shifted to
frame coordinates, and a localization is kept only in the tile that *owns* its position: the
Voronoi cell of the tile centres (overlaps split halfway, half-open intervals, so a position
belongs to exactly one tile and seams make no duplicates by construction). A final safety
merge drops the lower-confidence one of two same-frame localizations from *different* tiles
closer than ``merge_distance`` nm (default: the link distance; a k-d tree). A frame of exactly
the network's size is one tile without padding: the result equals
:meth:`~starloc.deeploco.model.DeepLoco.localize`.

Output: a localization table (dict of numpy arrays) ``frame`` (int64, 0-based index in the
*source* stack), ``x``, ``y`` [, ``z``] nm (corner origin: pixel ``j``'s centre at
``(j + 0.5) * pixel_size``), ``confidence``; rows sorted by frame, then x.

:func:`iter_localize_stack` is a generator (yields :class:`StackProgress` after every chunk:
show progress, cancel by closing it) returning the table; :func:`localize_stack` runs it to the
end. Bad input raises :class:`~starloc.errors.InputError` with a one-line message; frames the
model was not trained on (background, brightness, hot pixels, camera settings) get warnings from
the first chunk (:mod:`~starloc.deeploco.stack_checks`).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from scipy.spatial import cKDTree

from ..errors import InputError, StarlocWarning, one_line
from ..io import read_image, select_frames, tiff_damage, time_last_note
from ..lazy_tiff import TIFF_SUFFIXES, TiffPages, is_paged_stack, read_tiff_folder
from ..progress import finish
from ..tiff_metadata import (other_series_note, several_channels, tiff_pixel_size, tiff_pixel_size_problem,
                             tiff_spacing, tiff_z_step)
from .camera import Camera
from .network import CELL, CELL_ARCHITECTURES, inference_batch
from .postprocess import cell_grid, concat_tables, empty_table, frame_separated, postprocess, sorted_by_frame
from .stack_checks import check_first_frames, check_saturation

__all__ = [
    "FrameSource",
    "StackProgress",
    "TilePlan",
    "open_stack",
    "plan_tiles",
    "iter_localize_stack",
    "localize_stack",
    "tiff_pixel_size",
    "to_photons",
    "tiff_spacing",
    "tiff_z_step",
    "INPUT_UNITS",
    "FCN_MAX_TILE",
]

Table = dict[str, np.ndarray]

INPUT_UNITS = ("adu", "photons")
#: fully convolutional networks: frames up to this side (px) go whole, larger ones in tiles of at most this side
FCN_MAX_TILE = 512
#: smallest tile side chosen for frames larger than FCN_MAX_TILE (px)
FCN_MIN_AUTO_TILE = 128
#: smallest tile side of a fully convolutional network (px)
FCN_MIN_TILE = 4 * CELL
#: default overlap: this much of the sample (nm), at least MIN_OVERLAP px
OVERLAP_NM = 2000.0
MIN_OVERLAP = 16
#: bytes of float32 frames per chunk when ``chunk_frames`` is not given
CHUNK_BYTES = 32 << 20
_PIXEL_SIZE_RANGE = (1.0, 10000.0)  # nm


# ------------------------------------------------------------------------------------------
# Reading stacks lazily
# ------------------------------------------------------------------------------------------


class FrameSource:
    """A stack of frames read on demand: ``shape`` ``(T, H, W)``, ``dtype``, ``read(start, stop)``.

    Made by :func:`open_stack`. ``pixel_size_nm`` is the pixel size stated by the file's
    metadata (ImageJ or OME TIFF), or None; ``pixel_size_problem`` why a stated one could not be
    used (non-square pixels, a unit that is no length), or None. Close it (or use it as a
    context manager) to release an open file.
    """

    def __init__(self, shape: tuple[int, int, int], dtype: np.dtype, reader: Callable[[int, int], Any],
                 name: str = "stack", pixel_size_nm: float | None = None,
                 closer: Callable[[], None] | None = None, pixel_size_problem: str | None = None):
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.name = name
        self.pixel_size_nm = pixel_size_nm
        self.pixel_size_problem = pixel_size_problem
        self._reader = reader
        self._closer = closer

    @property
    def n_frames(self) -> int:
        return self.shape[0]

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self.shape[1], self.shape[2]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Frames ``start .. stop - 1`` as an array ``(stop - start, H, W)`` of the stored dtype."""
        start, stop = int(start), int(stop)
        if not 0 <= start < stop <= self.shape[0]:
            raise IndexError(f"frames {start}:{stop} out of range for {self.shape[0]} frame(s)")
        try:
            block = np.asarray(self._reader(start, stop))
        except InputError:
            raise
        except Exception as exc:  # truncated or corrupt file, I/O error, ...
            raise InputError(f"cannot read frames {start}..{stop - 1} of {self.name}: {one_line(exc)}") from exc
        return block.reshape((stop - start,) + self.shape[1:])

    def close(self) -> None:
        if self._closer is not None:
            closer, self._closer = self._closer, None
            closer()

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FrameSource({self.name}, shape={self.shape}, dtype={self.dtype})"


def _check_layout(shape: tuple[int, ...], dtype: Any, name: str, rgb: bool = False) -> tuple[int, int, int]:
    """(T, H, W) of a user stack, or InputError (dimensionality, RGB, dtype, empty)."""
    shape = tuple(int(s) for s in shape)
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = np.dtype(np.float64)
    if dt.kind not in "iuf":
        raise InputError(f"{name} has data type {dt}; expected integer or floating-point intensities")
    looks_rgb = len(shape) == 3 and shape[-1] in (3, 4) and min(shape[:2]) >= 16
    if rgb or looks_rgb:
        raise InputError(f"{name} looks like an RGB image (shape {shape}); SMLM needs single-channel "
                         "camera frames (T, H, W)")
    if len(shape) not in (2, 3):
        raise InputError(f"{name} has shape {shape} ({len(shape)}D); expected one frame (H, W) or a "
                         "stack of single-channel frames (T, H, W)")
    if 0 in shape:
        raise InputError(f"{name} is empty (shape {shape})")
    note = time_last_note(shape)
    if note:
        warnings.warn(f"{name}: {note}", StarlocWarning, stacklevel=4)
    return (1,) + shape if len(shape) == 2 else shape  # type: ignore[return-value]


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A shape of more than 3 axes without its axes of length 1 (T x 1 x H x W, T x H x W x 1:
    a channel or z axis of one is unambiguous), when at most 3 remain; else as it is."""
    big = tuple(n for n in shape if n > 1)
    if len(shape) <= 3 or len(big) > 3:
        return tuple(shape)
    return big if len(big) >= 2 else tuple(shape[-2:])


def _array_source(arr: Any, name: str, pixel_size_nm: float | None = None,
                  closer: Callable[[], None] | None = None, pixel_size_problem: str | None = None) -> FrameSource:
    shape = tuple(np.shape(arr)) if not hasattr(arr, "shape") else tuple(arr.shape)
    dtype = getattr(arr, "dtype", None)
    if dtype is None:
        arr = np.asarray(arr)
        dtype = arr.dtype
    try:
        dtype = np.dtype(dtype)
    except TypeError:  # e.g. a torch dtype
        arr = np.asarray(arr)
        dtype = arr.dtype
    if isinstance(arr, np.ndarray) and _squeezed(shape) != shape:
        shape = _squeezed(shape)
        arr = arr.reshape(shape)  # a view: a memory map stays one
    full = _check_layout(shape, dtype, name)
    if len(shape) == 2:
        def reader(start: int, stop: int) -> Any:
            return np.asarray(arr)[None]
    else:
        def reader(start: int, stop: int) -> Any:
            return arr[start:stop]
    return FrameSource(full, dtype, reader, name=name, pixel_size_nm=pixel_size_nm, closer=closer,
                       pixel_size_problem=pixel_size_problem)


def _open_tiff(p: Path) -> FrameSource:
    """A TIFF stack, memory-mapped or read page by page where it can be; a file cut short (an
    interrupted copy), of which tifffile would return the first frame only, is refused."""
    with tiff_damage(p):
        return _open_tiff_stack(p)


def _open_tiff_stack(p: Path) -> FrameSource:
    import tifffile

    name = repr(str(p))
    try:
        tif = tifffile.TiffFile(p)
    except Exception as exc:
        raise InputError(f"cannot read {name}: not a valid TIFF file ({one_line(exc)})") from exc
    try:
        series = tif.series[0]
        shape, dtype = tuple(series.shape), series.dtype
        found = several_channels(series)
        if found:
            colour, channels = found
            if colour or len(_squeezed(shape)) > 3:
                raise InputError(f"{name} holds {channels}; SMLM needs single-channel camera frames: save the "
                                 "channel to localize as a T×Y×X stack")
            warnings.warn(f"{name}'s metadata names its first axis C ({channels}): they are read as frames",
                          StarlocWarning, stacklevel=3)
        _check_layout(_squeezed(shape), dtype, name)
        note = other_series_note(tif)
        if note:
            warnings.warn(f"{name}: {note}", StarlocWarning, stacklevel=3)
        stated = {"pixel_size_nm": tiff_pixel_size(tif), "pixel_size_problem": tiff_pixel_size_problem(tif)}
        try:  # uncompressed and contiguous: memory-map (nothing is read until sliced)
            mm = tifffile.memmap(p, mode="r", series=0)
        except Exception:
            mm = None
        if mm is not None and tuple(mm.shape) == shape:
            tif.close()
            return _array_source(mm, name, **stated)
        if is_paged_stack(tif):  # one page per frame: read only the pages asked for
            return _array_source(TiffPages(tif, name), name, closer=tif.close, **stated)
        # anything else (e.g. one compressed page holding several frames): read it all
        data = series.asarray()
        tif.close()
        return _array_source(data, name, **stated)
    except InputError:
        tif.close()
        raise
    except Exception as exc:
        tif.close()
        raise InputError(f"cannot read {name} as a TIFF stack (truncated or corrupt?): {one_line(exc)}") from exc


def _folder_source(folder: Path) -> FrameSource:
    """A folder of one TIFF per frame (:func:`starloc.lazy_tiff.read_tiff_folder`), with the
    pixel size its first file states."""
    import tifffile

    frames = read_tiff_folder(folder)
    with tifffile.TiffFile(frames.paths[0]) as tif:
        stated = {"pixel_size_nm": tiff_pixel_size(tif), "pixel_size_problem": tiff_pixel_size_problem(tif)}
    return _array_source(frames, repr(str(folder)), **stated)


def open_stack(source: Any) -> FrameSource:
    """A :class:`FrameSource` over ``source``: a path to a TIFF (``.tif``/``.tiff``) or ``.npy``
    stack (read lazily) or to a folder of one TIFF file per frame, a numpy array or memmap,
    any array-like with ``shape``, ``dtype`` and slicing along the first axis (zarr, dask,
    h5py), or a FrameSource (returned as is).

    ``(H, W)`` is one frame, ``(T, H, W)`` a stack; anything else (1D, 4D+, RGB) raises
    InputError, as do empty stacks, non-numeric data and missing or unreadable files.
    """
    if isinstance(source, FrameSource):
        return source
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if not p.exists():
            raise InputError(f"stack file {str(p)!r} not found")
        if p.is_dir():
            return _folder_source(p)
        suffix = p.suffix.lower()
        if suffix in TIFF_SUFFIXES:
            return _open_tiff(p)
        if suffix == ".npy":
            return _array_source(read_image(p), repr(str(p)))  # memory-mapped
        raise InputError(f"cannot read {str(p)!r}: unsupported file type {suffix or '(no extension)'!r}; "
                         "expected .tif, .tiff or .npy")
    if isinstance(source, torch.Tensor):
        source = source.detach().cpu().numpy()
    if not hasattr(source, "shape"):
        try:
            source = np.asarray(source)
        except Exception as exc:
            raise InputError(f"the stack is not an array: {one_line(exc)}") from None
    return _array_source(source, "the stack")


# ------------------------------------------------------------------------------------------
# Tiling
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TilePlan:
    """How frames of ``frame_shape`` are cut into tiles.

    ``y_starts``/``x_starts``: tile origins (px) along rows/columns, ``y_sizes``/``x_sizes``
    their sides (px); ``y_own``/``x_own``: the half-open interval ``[lo, hi)`` (px, corner
    origin, may be infinite) of positions each tile owns along that axis; ``pad``: pixels of
    padding added at the bottom and right (frames smaller than a tile). ``tile``: the largest
    tile ``(th, tw)``; every tile has it except the edge strips of a side that is not a
    multiple of 4 (see :func:`_strip_axis`)."""

    frame_shape: tuple[int, int]
    tile: tuple[int, int]
    overlap: int
    y_starts: tuple[int, ...]
    x_starts: tuple[int, ...]
    y_own: tuple[tuple[float, float], ...]
    x_own: tuple[tuple[float, float], ...]
    pad: tuple[int, int]
    y_sizes: tuple[int, ...]
    x_sizes: tuple[int, ...]

    @property
    def n_tiles(self) -> int:
        return len(self.y_starts) * len(self.x_starts)

    @property
    def padded_shape(self) -> tuple[int, int]:
        return self.frame_shape[0] + self.pad[0], self.frame_shape[1] + self.pad[1]

    def tiles(self) -> list[tuple[int, int, tuple[float, float], tuple[float, float], int, int]]:
        """``(y0, x0, y_own, x_own, h, w)`` per tile, row-major."""
        return [(y0, x0, yo, xo, h, w)
                for y0, yo, h in zip(self.y_starts, self.y_own, self.y_sizes)
                for x0, xo, w in zip(self.x_starts, self.x_own, self.x_sizes)]


#: one axis of a plan: tile starts, owned intervals, sides, padding
Axis = tuple[list[int], list[tuple[float, float]], list[int], int]


def _axis(length: int, tile: int, overlap: int, cell: int = 1) -> Axis:
    """Tiles of one side ``tile`` covering ``length`` px, the first and last flush with the ends
    (or one padded tile when the axis is shorter), overlapping by at least ``overlap`` px.

    cell: tile starts are multiples of it (but the last, flush with the end), so that a fully
    convolutional network pools the same cells of CELL px in every tile as in the whole frame:
    tiles at other offsets (e.g. 405 px) moved localizations by 22-28 nm (median) against the
    whole frame, and results depended on the frame size."""
    if length <= tile:
        pad = tile - length
        return [0], [(-math.inf, float(length) if pad else math.inf)], [tile], pad
    n = math.ceil((length - overlap) / (tile - overlap))
    while True:
        starts = [int(s) for s in np.round(np.linspace(0, length - tile, n)).astype(int)]
        starts = [cell * round(s / cell) for s in starts[:-1]] + starts[-1:]
        gaps = np.diff(starts)
        if gaps.max() <= tile - overlap and gaps.min() > 0:
            break
        n += 1  # snapping to cells narrowed an overlap below ``overlap``
    centres = [s + tile / 2 for s in starts]
    cuts = [(a + b) / 2 for a, b in zip(centres[:-1], centres[1:])]
    bounds = [-math.inf] + cuts + [math.inf]
    return starts, list(zip(bounds[:-1], bounds[1:])), [tile] * n, 0


def _strip_axis(length: int, overlap: int) -> Axis:
    """An axis of at most FCN_MAX_TILE px that is not a multiple of CELL: one tile of the side
    rounded down, flush with the start, and a narrow strip flush with the end (the 1-3 px left
    over plus ``overlap`` of context, rounded up to CELL), which owns the half beyond its
    middle.

    Why not pad the axis up to a multiple of CELL: the network then sees a flat strip it never
    saw in training next to the frame's last pixels, and emitters there were pulled ~80 nm
    inwards (recall in the last 2 px fell from 0.95 to 0.64-0.83 in 2D, 0.75 to 0.45 with the
    astigmatic PSF). Why not two full tiles: twice the network time along the axis."""
    main = length // CELL * CELL
    strip = min(main, max(FCN_MIN_TILE, _round_up(length - main + overlap, CELL)))
    cut = length - strip / 2
    return [0, length - strip], [(-math.inf, cut), (cut, math.inf)], [main, strip], 0


def _round_up(v: int, m: int) -> int:
    return -(-int(v) // m) * m


def _whole_axis(length: int, overlap: int) -> Axis:
    """One tile over the whole axis for a fully convolutional network: padded only below
    FCN_MIN_TILE, a length that is not a multiple of CELL with an edge strip."""
    if length % CELL == 0 or length < FCN_MIN_TILE:
        return _axis(length, max(_round_up(length, CELL), FCN_MIN_TILE), overlap)
    return _strip_axis(length, overlap)


def _cell_axis(length: int, overlap: int) -> Axis:
    """Tiles along an axis of ``length`` px for a fully convolutional network (sides multiples
    of CELL): the whole axis up to FCN_MAX_TILE (padded only below FCN_MIN_TILE; a length
    that is not a multiple of CELL gets an edge strip, :func:`_strip_axis`), else tiles of
    the side in FCN_MIN_AUTO_TILE..FCN_MAX_TILE that covers the axis with the fewest pixels
    (ties: fewer tiles)."""
    if length <= FCN_MAX_TILE:
        return _whole_axis(length, overlap)

    def covered(side: int) -> tuple[int, int]:
        n = len(_axis(length, side, min(overlap, side // 2), CELL)[0])
        return n * side, n

    side = min(range(FCN_MIN_AUTO_TILE, FCN_MAX_TILE + 1, CELL), key=covered)
    return _axis(length, side, min(overlap, side // 2), CELL)


def plan_tiles(frame_shape: tuple[int, int], config: Any, tile: int | None = None,
               overlap: int | None = None) -> TilePlan:
    """The tiles for frames of ``frame_shape`` (H, W) and a network ``config``
    (:class:`~starloc.deeploco.network.DeepLocoConfig`); see the module docstring."""
    H, W = (int(s) for s in frame_shape)
    arch = getattr(config, "architecture", "paper")
    S = int(config.frame_size)
    if overlap is None:
        overlap = max(MIN_OVERLAP, math.ceil(OVERLAP_NM / float(config.pixel_size)))
    overlap = int(overlap)
    if overlap < 0:
        raise InputError(f"overlap must be >= 0 pixels, got {overlap}")
    if arch in CELL_ARCHITECTURES and tile is None:
        ys, yo, yn, ph = _cell_axis(H, overlap)
        xs, xo, xn, pw = _cell_axis(W, overlap)
        overlap = min(overlap, max(yn) // 2, max(xn) // 2)
    else:
        if arch in CELL_ARCHITECTURES:
            if int(tile) < 1:
                raise InputError(f"tile must be a positive number of pixels, got {tile!r}")
            side = max(_round_up(int(tile), CELL), FCN_MIN_TILE)
        else:
            if tile is not None and int(tile) != S:
                raise InputError(f"this model (architecture 'paper') takes tiles of exactly {S} px, "
                                 f"not {tile}; leave the tile size unset")
            side = S
        overlap = min(overlap, side // 2)
        if arch in CELL_ARCHITECTURES:  # a tile at least as long as an axis: that axis whole, unpadded
            ys, yo, yn, ph = _whole_axis(H, overlap) if side >= H else _axis(H, side, overlap, CELL)
            xs, xo, xn, pw = _whole_axis(W, overlap) if side >= W else _axis(W, side, overlap, CELL)
        else:
            ys, yo, yn, ph = _axis(H, side, overlap)
            xs, xo, xn, pw = _axis(W, side, overlap)
    return TilePlan((H, W), (max(yn), max(xn)), overlap, tuple(ys), tuple(xs), tuple(yo), tuple(xo), (ph, pw),
                    tuple(yn), tuple(xn))


# ------------------------------------------------------------------------------------------
# Localization
# ------------------------------------------------------------------------------------------


class StackProgress(NamedTuple):
    """After each chunk: frames done and in total (of the selection), localizations so far,
    seconds since the start."""

    frames_done: int
    frames_total: int
    localizations: int
    elapsed: float


def _check_pixel_size(model_ps: float, given: float | None, stated: float | None, name: str,
                      problem: str | None = None) -> None:
    """Refuse a pixel size (given, else stated by the file's metadata) unlike the model's, or
    metadata stating non-square pixels; warn when the metadata state one that cannot be read."""
    lo, hi = _PIXEL_SIZE_RANGE
    if given is not None:
        try:
            v = float(given)
        except (TypeError, ValueError):
            raise InputError(f"pixel size must be a number of nm, got {given!r}") from None
        if not (math.isfinite(v) and lo <= v <= hi):
            raise InputError(f"pixel size {given!r} nm is absurd (expected {lo:g}..{hi:g} nm)")
        if abs(v - model_ps) > 1e-3 * model_ps:
            raise InputError(
                f"model/stack pixel-size mismatch: the stack has {v:g} nm pixels, the model was trained "
                f"at {model_ps:g} nm/px; train a model for this camera (starloc deeploco train "
                f"--pixel-size {v:g})")
    elif stated is not None and abs(stated - model_ps) > 1e-2 * model_ps:
        raise InputError(
            f"model/stack pixel-size mismatch: the metadata of {name} say {stated:g} nm/px, the model "
            f"was trained at {model_ps:g} nm/px; train a model for this pixel size, or give the pixel "
            "size explicitly (--pixel-size) if the metadata are wrong")
    elif problem is not None and problem.startswith("non-square"):
        raise InputError(f"the metadata of {name} state {problem}: DeepLoco's models take square pixels "
                         f"({model_ps:g} nm); give the pixel size explicitly (--pixel-size) if the metadata are wrong")
    elif problem is not None:
        warnings.warn(f"the metadata of {name} state a pixel size starloc cannot read ({problem}): not "
                      f"checked against the model's {model_ps:g} nm/px; give --pixel-size to check it",
                      StarlocWarning, stacklevel=4)


def _check_finite(block: np.ndarray, start: int, name: str) -> None:
    if block.dtype.kind == "f" and not np.isfinite(block).all():
        bad = int(np.flatnonzero(~np.isfinite(block.reshape(len(block), -1)).all(axis=1))[0])
        raise InputError(f"frame {start + bad} (0-based) of {name} contains NaN or inf values")


def _writable_float32(a: np.ndarray) -> np.ndarray:
    """``a`` as a C-contiguous float32 array torch may share: copied only when it is not one
    already, or is read-only (a TIFF read by memory map; torch warns on those)."""
    out = np.ascontiguousarray(a, dtype=np.float32)
    return out if out.flags.writeable else out.copy()


def to_photons(block: np.ndarray, camera: Camera | None, start: int = 0, name: str = "stack",
               check: bool = True) -> np.ndarray:
    """Frames ``(T, H, W)`` (frame ``start`` first, of the stack called ``name``) in photons:
    converted with ``camera`` (checked against its baseline), or as they are without one."""
    _check_finite(block, start, name)
    if camera is None:
        return block.astype(np.float32, copy=False)
    t = torch.from_numpy(_writable_float32(block))
    if check:
        try:
            camera.check_adu(t, what=f"the frames of {name}")
        except InputError as exc:
            raise InputError(f"{exc} (wrong camera settings? if the stack is already in photons, use "
                             "input units 'photons')") from None
    return camera.normalize(t).to(torch.float32).numpy()


def _pad_frames(frames: np.ndarray, pad: tuple[int, int]) -> np.ndarray:
    ph, pw = pad
    if not (ph or pw):
        return frames
    t, H, W = frames.shape
    med = np.median(frames.reshape(t, -1), axis=1).astype(frames.dtype)
    out = np.empty((t, H + ph, W + pw), dtype=frames.dtype)
    out[:] = med[:, None, None]
    out[:, :H, :W] = frames
    return out


def _merge_across_seams(table: Table, tile_id: np.ndarray, distance: float) -> np.ndarray:
    """Keep-mask: of two same-frame localizations from different tiles closer than ``distance`` nm
    (lateral), the lower-confidence one is dropped (greedy, strongest first)."""
    n = len(tile_id)
    keep = np.ones(n, dtype=bool)
    if n < 2 or not distance > 0:
        return keep
    pts = frame_separated(np.column_stack([table["x"], table["y"]]), table["frame"], distance)
    pairs = cKDTree(pts).query_pairs(float(distance), output_type="ndarray")
    if not len(pairs):
        return keep
    a, b = pairs[:, 0], pairs[:, 1]
    cross = (tile_id[a] != tile_id[b]) & (table["frame"][a] == table["frame"][b])
    a, b = a[cross], b[cross]
    if not len(a):
        return keep
    rank = np.empty(n, dtype=np.int64)
    rank[np.lexsort((np.arange(n), -table["confidence"]))] = np.arange(n)
    strong = np.where(rank[a] < rank[b], a, b)
    weak = np.where(rank[a] < rank[b], b, a)
    for s, w in zip(*(v[np.argsort(rank[strong], kind="stable")] for v in (strong, weak))):
        if keep[s]:
            keep[w] = False
    return keep


@torch.inference_mode()
def _localize_chunk(model: Any, forward: Any, frames: np.ndarray, plan: TilePlan, batch_size: int,
                    threshold: float, link_distance: float, z_scale: float, merge_distance: float) -> Table:
    """Localizations in photon frames ``(t, H, W)``; ``frame`` 0-based within the chunk.

    ``forward``: the model's inference network (see :meth:`DeepLoco.inference_net`), run on
    normalized tiles ``(B, 1, h, w)`` through :meth:`DeepLoco.candidates`."""
    cfg = model.config
    ps = float(cfg.pixel_size)
    padded = torch.from_numpy(_writable_float32(_pad_frames(frames, plan.pad)))
    tiles = plan.tiles()
    n_tiles = len(tiles)
    tile_y0 = np.array([t[0] for t in tiles], dtype=np.float64)
    tile_x0 = np.array([t[1] for t in tiles], dtype=np.float64)
    own = np.array([[t[2][0], t[2][1], t[3][0], t[3][1]] for t in tiles], dtype=np.float64) * ps  # nm
    whole = n_tiles == 1 and tuple(padded.shape[1:]) == plan.tile
    parts: list[Table] = []
    part_tiles: list[np.ndarray] = []
    for th, tw in sorted({t[4:] for t in tiles}, reverse=True):  # one network shape at a time
        cells = cell_grid(cfg, (th, tw))
        jobs = [(f, k) for f in range(frames.shape[0]) for k in range(n_tiles) if tiles[k][4:] == (th, tw)]
        per_call = max(1, batch_size * plan.tile[0] * plan.tile[1] // (th * tw))  # edge strips: as many pixels
        for b0 in range(0, len(jobs), per_call):
            batch = jobs[b0 : b0 + per_call]
            batch_f = np.array([f for f, _ in batch], dtype=np.int64)
            batch_k = np.array([k for _, k in batch], dtype=np.int64)
            if whole:
                x = padded[batch_f[0] : batch_f[-1] + 1]  # consecutive whole frames: a view, no copy
            else:
                x = torch.stack([padded[f, tiles[k][0] : tiles[k][0] + th, tiles[k][1] : tiles[k][1] + tw]
                                 for f, k in batch])
            pos, w, err = model.candidates(forward, x[:, None].to(model.device))
            tb = postprocess(pos, w, link_distance=link_distance, threshold=threshold, z_scale=z_scale,
                             cells=cells, errors=err)
            if not len(tb["frame"]):
                continue
            if model.subpixel is not None:  # tile coordinates: the network's
                tb = model.subpixel.apply(tb, field_area_um2=th * tw * ps**2 / 1e6)
            f, k = batch_f[tb["frame"]], batch_k[tb["frame"]]  # tb["frame"] indexes the batch
            xs = tb["x"] + tile_x0[k] * ps
            ys = tb["y"] + tile_y0[k] * ps
            o = own[k]
            mine = (ys >= o[:, 0]) & (ys < o[:, 1]) & (xs >= o[:, 2]) & (xs < o[:, 3])
            table = {"frame": f[mine], "x": xs[mine], "y": ys[mine]}
            table.update({key: v[mine] for key, v in tb.items() if key not in table})  # z, confidence, uncertainty
            parts.append(table)
            part_tiles.append((f * n_tiles + k)[mine])
    if not parts:
        return empty_table(int(cfg.dim), model.has_uncertainty)
    table = concat_tables(parts)
    tile_id = np.concatenate(part_tiles)
    if n_tiles > 1:
        keep = _merge_across_seams(table, tile_id, merge_distance)
        table = {key: v[keep] for key, v in table.items()}
    return sorted_by_frame(table)


def iter_localize_stack(
    model: Any,
    source: Any,
    *,
    camera: Camera | None = None,
    pixel_size: float | None = None,
    frames: Any = None,
    chunk_frames: int | None = None,
    batch_size: int | None = None,
    threshold: float | None = None,
    link_distance: float | None = None,
    input_units: str = "adu",
    tile: int | None = None,
    overlap: int | None = None,
    merge_distance: float | None = None,
    z_scale: float = 0.2,
) -> Generator[StackProgress, None, Table]:  # returns a generator (see _run)
    """Localize every selected frame of a stack with a :class:`~starloc.deeploco.model.DeepLoco`
    model: a generator that yields :class:`StackProgress` after every chunk and returns the
    localization table. The settings, the stack's shape and its pixel size are checked when
    this function is *called* (InputError at once); the pixels (NaN/inf, camera baseline) as
    they are read. A file opened here is closed when the generator ends or is closed.

    source : path (TIFF/.npy, read lazily), array ``(T, H, W)`` or ``(H, W)``, lazy array-like,
        or a :class:`FrameSource` (see :func:`open_stack`). ADU (any int or float dtype) unless
        ``input_units="photons"``.
    camera : ADU -> photons conversion; default the model's camera (needed for ADU input).
    pixel_size : the stack's pixel size (nm) if known: must equal the model's. When None, the
        pixel size in the file's metadata (if any) is checked instead.
    frames : slice/range (or ``(start, stop)``) of 0-based frame indices; default all. Output
        frames keep the source numbering.
    chunk_frames : frames read at a time (default: about 32 MiB of float32 frames).
    batch_size : tiles per network call (default
        :func:`~starloc.deeploco.network.inference_batch`: on a CPU 16 tiles of 128 x 128 px,
        4 frames of 256 x 256); of the largest tiles, edge strips go as many pixels per call.
    threshold, link_distance : post-processing (default the model's).
    tile, overlap : see :func:`plan_tiles`.
    merge_distance : nm, the seam safety merge (default the link distance; 0 disables it).
    """
    if input_units not in INPUT_UNITS:
        raise InputError(f"input units must be one of {INPUT_UNITS}, got {input_units!r}")
    cfg = model.config
    thr = float(model.threshold if threshold is None else threshold)
    link = float(model.link_distance if link_distance is None else link_distance)
    if not (math.isfinite(thr) and thr >= 0):
        raise InputError(f"threshold must be >= 0, got {threshold!r}")
    merge = link if merge_distance is None else float(merge_distance)
    cam = None
    if input_units == "adu":
        cam = camera if camera is not None else getattr(model, "camera", None)
        if cam is None:
            raise InputError("the model has no camera to convert ADU to photons: give the camera settings, "
                             "or input units 'photons' if the stack is already in photons")
    src = open_stack(source)
    owned = src is not source
    try:
        _check_pixel_size(float(cfg.pixel_size), pixel_size, src.pixel_size_nm, src.name,
                          getattr(src, "pixel_size_problem", None))
        selected = select_frames(frames, src.n_frames, src.name)
        H, W = src.frame_shape
        plan = plan_tiles((H, W), cfg, tile=tile, overlap=overlap)
        if batch_size is None:
            batch_size = inference_batch(model.device, plan.tile)
        batch_size = int(batch_size)
        if batch_size < 1:
            raise InputError(f"batch size must be >= 1, got {batch_size}")
        if chunk_frames is None:
            chunk_frames = max(1, min(1024, CHUNK_BYTES // (4 * H * W)))
        chunk_frames = int(chunk_frames)
        if chunk_frames < 1:
            raise InputError(f"chunk_frames must be >= 1, got {chunk_frames}")
    except BaseException:
        if owned:
            src.close()
        raise
    return _run(model, src, owned, cam, selected, plan, chunk_frames, batch_size, thr, link, z_scale, merge)


def _run(model: Any, src: FrameSource, owned: bool, cam: Camera | None, selected: range, plan: TilePlan,
         chunk_frames: int, batch_size: int, thr: float, link: float, z_scale: float,
         merge: float) -> Generator[StackProgress, None, Table]:
    tables: list[Table] = []
    try:
        forward = model.inference_net()
        start_time = time.perf_counter()
        found = 0
        total = len(selected)
        for c0 in range(selected.start, selected.stop, chunk_frames):
            c1 = min(c0 + chunk_frames, selected.stop)
            block = src.read(c0, c1)
            if c0 == selected.start:
                check_saturation(block, src.name)
            photons = to_photons(block, cam, c0, src.name, check=(c0 == selected.start))
            del block
            if c0 == selected.start:
                check_first_frames(photons, model, cam, src.name)
            table = _localize_chunk(model, forward, photons, plan, batch_size, thr, link, z_scale, merge)
            table["frame"] = table["frame"] + c0
            tables.append(table)
            found += len(table["frame"])
            yield StackProgress(c1 - selected.start, total, found, time.perf_counter() - start_time)
    finally:
        if owned:
            src.close()
    return concat_tables(tables)


def localize_stack(model: Any, source: Any, *, progress: Callable[[StackProgress], None] | None = None,
                   **kwargs: Any) -> Table:
    """:func:`iter_localize_stack` run to the end; ``progress(StackProgress)`` after every chunk."""
    return finish(iter_localize_stack(model, source, **kwargs), progress)
