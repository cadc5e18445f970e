"""Reading and writing: images, frame normalization, crops, point tables and model files.

This module is part of the core: it never imports napari or Qt, and it imports torch only
inside the model-file functions (so reading a CSV or sniffing a file stays cheap).

Conventions (see the package docstring): pixel coordinates are ``(row, col)`` with pixel
centres at integer positions, frames are 0-based.

Errors meant for the user are raised as :class:`starloc.errors.InputError` (bad images,
crops, tables) and :class:`starloc.errors.ModelFileError` (model files), each with a
one-line message that names the file or the shape and the problem.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import math
import os
import pickle
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, ModelFileError, StarlocWarning, one_line
from .lazy_tiff import TIFF_SUFFIXES, open_paged_stack, read_tiff_folder

__all__ = [
    "no_file",
    "TIFF_SUFFIXES",
    "select_channel",
    "IMAGE_SUFFIXES",
    "read_image",
    "as_frames",
    "frames_shape",
    "iter_frame_chunks",
    "select_frames",
    "image_frame_range",
    "validate_crop",
    "atomic_path",
    "atomic_write",
    "POINTS_HEADER",
    "write_points_csv",
    "read_points_csv",
    "is_points_csv",
    "read_header_line",
    "MODEL_FORMAT",
    "MODEL_FORMAT_VERSION",
    "save_model_file",
    "load_model_file",
]

# --------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------

IMAGE_SUFFIXES = TIFF_SUFFIXES + (".npy",)


def no_file(p: Path, what: str) -> InputError:
    """The error for a ``what`` file ``p`` that cannot be read as one: missing, a folder, or not
    a regular file (a pipe such as ``/dev/stdin``, which starloc cannot read twice to sniff it)."""
    if not p.exists():
        return InputError(f"{what} file {str(p)!r} not found")
    if p.is_dir():
        return InputError(f"{what} file {str(p)!r} is a folder")
    return InputError(f"{what} file {str(p)!r} is not a regular file (a pipe?): save it to a file first")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a TIFF (``.tif``/``.tiff``, incl. OME/ImageJ) or ``.npy`` image as an array.

    The data are *not* loaded into memory when that can be avoided: uncompressed TIFFs and
    ``.npy`` files come back as a read-only :class:`numpy.memmap`, so a 20,000-frame stack
    costs nothing until frames are sliced (use :func:`iter_frame_chunks`). Compressed or
    non-contiguous TIFF stacks cannot be memory-mapped: those stored as one page per frame
    are read page by page as they are sliced (:class:`starloc.lazy_tiff.TiffPages`), others
    fully. For multi-series TIFFs the first series is returned. A folder of single-frame TIFF
    files is read as a lazy stack, one frame per file in the natural order of their names
    (:mod:`starloc.lazy_tiff`). The array is returned as stored (no dtype conversion, no axis
    interpretation): :func:`as_frames` does that.

    Raises InputError for a missing, unreadable, corrupt or unsupported file.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"image file {str(p)!r} not found")
    if p.is_dir():
        return read_tiff_folder(p)
    suffix = p.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(p, mmap_mode="r", allow_pickle=False)
        except Exception as exc:  # ValueError (pickled/object data, bad header), OSError, ...
            raise InputError(f"cannot read {str(p)!r} as a .npy array: {_npy_problem(p, exc)}") from exc
        if not isinstance(arr, np.ndarray):  # pragma: no cover - np.load of .npy gives arrays
            raise InputError(f"{str(p)!r} does not contain a single array")
        return arr
    if suffix in TIFF_SUFFIXES:
        with tiff_damage(p):
            return _read_tiff(p)
    raise InputError(
        f"cannot read {str(p)!r}: unsupported file type {suffix or '(no extension)'!r}; "
        f"expected one of {', '.join(IMAGE_SUFFIXES)}"
    )


def _npy_problem(p: Path, exc: Exception) -> str:
    """Why ``np.load`` refused ``p``, in the user's terms: numpy takes any file without its .npy
    header for pickled data and suggests ``allow_pickle``, which would run code from the file."""
    try:
        with open(p, "rb") as f:
            head = f.read(6)
    except OSError:
        return one_line(exc)
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "it is a TIFF file; rename it to .tif"
    if head != b"\x93NUMPY":
        return "it is not a .npy file (no .npy header)"
    if any(word in str(exc).lower() for word in ("pickle", "object")):
        return "it holds Python objects, which starloc does not load (they could run code); save a numeric array"
    return one_line(exc)


def _read_tiff(p: Path) -> np.ndarray:
    import tifffile

    from .tiff_metadata import other_series_note, planar_samples_axis

    planar = None
    try:
        with tifffile.TiffFile(p) as tif:
            note = other_series_note(tif)
            planar = planar_samples_axis(tif.series[0])
        if note:
            warnings.warn(f"{str(p)!r}: {note}", StarlocWarning, stacklevel=4)
    except tifffile.TiffFileError as exc:
        raise InputError(f"cannot read {str(p)!r}: not a valid TIFF file ({one_line(exc)})") from exc
    except OSError:
        pass  # reported by the reads below
    if planar is not None:
        # RGB stored plane by plane: samples last, as numpy (and as_frames' RGB check) expect
        return np.moveaxis(_read_tiff_array(p), planar, -1)
    return _read_tiff_array(p)


def _read_tiff_array(p: Path) -> Any:
    import tifffile

    try:
        return tifffile.memmap(p, mode="r")
    except tifffile.TiffFileError as exc:
        raise InputError(f"cannot read {str(p)!r}: not a valid TIFF file ({one_line(exc)})") from exc
    except Exception:
        pass  # compressed, tiled, non-contiguous, truncated, ...: read by pages, or whole
    try:
        paged = open_paged_stack(p)
        return paged if paged is not None else np.asarray(tifffile.imread(p))
    except Exception as exc:
        raise InputError(f"cannot read {str(p)!r} as a TIFF image (truncated or corrupt?): {one_line(exc)}") from exc


def _frames_text(frames: Any) -> str:
    """A frame selection as the CLI's ``--frames`` spells it (``5:9``), ranges and slices alike."""
    if isinstance(frames, (range, slice)):
        start, stop = frames.start, frames.stop
    else:
        start, stop = frames
    return f"{'' if start is None else start}:{'' if stop is None else stop}"


#: what tifffile logs (and then reads on, returning what it could: e.g. the first frame of a
#: stack cut short by an interrupted copy) when a file's structure is broken
_TIFF_DAMAGE = ("invalid page offset", "corrupted", "truncated")


@contextlib.contextmanager
def tiff_damage(p: Path) -> Iterator[None]:
    """Turn the damage tifffile only logs while reading ``p`` into an InputError."""
    import logging

    import tifffile

    seen: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    logger = tifffile.logger()
    handler = _Collect(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    damage = [m for m in seen if any(key in m.lower() for key in _TIFF_DAMAGE)]
    if damage:
        detail = damage[0].split("> ", 1)[-1]  # without tifffile's "<tifffile.TiffFile 'x.tif'>" prefix
        raise InputError(f"cannot read {str(p)!r}: the file is truncated or corrupt ({detail}); "
                         "was it copied completely?")


#: Luminance weights (ITU-R BT.709, as scikit-image's ``rgb2gray``) for RGB -> gray.
_LUMINANCE = np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)

#: A trailing axis of size 3 or 4 is taken as colour only when the two axes before it are at
#: least this long (so that e.g. a (T, H, W) stack with W == 3 is not mistaken for colour).
RGB_MIN_SIZE = 16

_RGB_MODES = ("error", "gray")


@dataclass(frozen=True)
class _Layout:
    """How the axes of a user array map to (T, C, H, W)."""

    shape: tuple[int, ...]
    time_axis: int | None  # None: a single frame
    channel_axis: int | None  # None: one channel (or RGB, see below)
    rgb: bool  # the last axis holds RGB(A) samples to be converted to gray

    @property
    def frames(self) -> int:
        return 1 if self.time_axis is None else self.shape[self.time_axis]

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        spatial = [a for a in range(len(self.shape)) if a not in (self.time_axis, self.channel_axis)]
        if self.rgb:
            spatial = spatial[:-1]
        h, w = (self.shape[a] for a in spatial)
        c = 1 if self.channel_axis is None else self.shape[self.channel_axis]
        return (self.frames, c, h, w)


def _looks_rgb(shape: tuple[int, ...]) -> bool:
    return shape[-1] in (3, 4) and shape[-3] >= RGB_MIN_SIZE and shape[-2] >= RGB_MIN_SIZE


#: a last axis this short, after two long ones, is more likely frames than pixels
_SHORT_LAST_AXIS = 16


def time_last_note(shape: tuple[int, ...]) -> str | None:
    """A note when a 3D array looks stored as ``(H, W, T)``: its last axis is shorter than 16
    and shorter than a quarter of each other axis (``(128, 128, 10)``), which as ``(T, H, W)``
    makes frames of 10 px in one direction. None otherwise."""
    if len(shape) != 3:
        return None
    t, h, w = shape
    if w < _SHORT_LAST_AXIS and 4 * w < min(t, h) and w not in (3, 4):
        return (f"shape {tuple(shape)} is read as {t} frames of {h}×{w} px; if its last axis is time (an "
                f"(H, W, T) array), move it first: numpy.moveaxis(a, -1, 0)")
    return None


def _singleton_channel(shape: tuple[int, ...]) -> int | None:
    """The axis of length 1 that a 4D ``(T, 1, H, W)``, ``(1, T, H, W)`` or ``(T, H, W, 1)``, or
    a 3D ``(H, W, 1)`` array holds besides its frames: one channel, unambiguous (ImageJ
    hyperstacks with C = 1, arrays saved with a trailing axis). None for other shapes."""
    if len(shape) == 4:
        for axis in (1, 3, 0):  # (1, H, W, 1): the channel is last, the single frame first
            if shape[axis] == 1:
                return axis
    if len(shape) == 3 and shape[-1] == 1 and min(shape[:2]) >= RGB_MIN_SIZE:
        return 2
    return None


def _layout(shape: tuple[int, ...], dtype: np.dtype, rgb: str, channel_axis: int | None) -> _Layout:
    if rgb not in _RGB_MODES:
        raise ValueError(f"rgb must be one of {_RGB_MODES}, got {rgb!r}")
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf":
        raise InputError(
            f"image has data type {dtype}; expected integer or floating-point intensities"
        )
    if ndim < 2 or ndim > 4:
        raise InputError(
            f"image has shape {shape} ({ndim}D); expected a 2D image (H, W), a stack (T, H, W), "
            "an RGB image (H, W, 3|4) or a multichannel stack with a channel axis"
        )
    if 0 in shape:
        raise InputError(f"image is empty (shape {shape})")

    if channel_axis is not None:
        if ndim == 2:
            raise InputError(f"image has shape {shape} (2D): it has no channel axis to pick")
        if not -ndim <= int(channel_axis) < ndim:
            raise InputError(f"channel axis {channel_axis} is out of range for an image of shape {shape}")
        ca = int(channel_axis) % ndim
        rest = [a for a in range(ndim) if a != ca]
        time_axis = rest[0] if ndim == 4 else None
        return _Layout(shape, time_axis, ca, False)

    singleton = _singleton_channel(shape)
    if singleton is not None:
        rest = [a for a in range(ndim) if a != singleton]
        return _Layout(shape, rest[0] if ndim == 4 else None, singleton, False)
    if ndim >= 3 and _looks_rgb(shape):
        if rgb == "error":
            raise InputError(
                f"image of shape {shape} looks like RGB/RGBA colour (last axis of size {shape[-1]}); "
                "pass rgb='gray' (CLI: --rgb gray) to convert it to gray by luminance, "
                "or give a channel axis to use the colours as input channels"
            )
        return _Layout(shape, 0 if ndim == 4 else None, None, True)
    if ndim == 2:
        return _Layout(shape, None, None, False)
    if ndim == 3:
        return _Layout(shape, 0, None, False)
    raise InputError(
        f"image has shape {shape} (4D) and no channel axis; pass channel_axis (CLI: --channel-axis) "
        "to say which axis holds the channels, or give a (T, H, W) stack"
    )


def _convert(block: Any, layout: _Layout) -> np.ndarray:
    """Convert a block of frames with the given layout to float32 (t, C, H, W)."""
    arr = np.asarray(block)
    is_float = arr.dtype.kind == "f"
    t_ax, c_ax = layout.time_axis, layout.channel_axis
    if t_ax is None:
        arr = arr[np.newaxis]
        t_ax = 0
        c_ax = None if c_ax is None else c_ax + 1
    if layout.rgb:
        # (t, H, W, 3|4): drop alpha, luminance over R, G, B.
        arr = np.tensordot(arr[..., :3].astype(np.float32, copy=False), _LUMINANCE, axes=([-1], [0]))
        out = arr[:, np.newaxis]
    elif c_ax is None:
        out = np.moveaxis(arr, t_ax, 0)[:, np.newaxis]
    else:
        out = np.moveaxis(arr, (t_ax, c_ax), (0, 1))
    with np.errstate(over="ignore", invalid="ignore"):  # too large for float32 -> inf, caught below
        out = np.ascontiguousarray(out, dtype=np.float32)
    if is_float:
        finite = np.isfinite(out)
        if not finite.all():
            bad = out.size - int(np.count_nonzero(finite))
            raise InputError(
                f"image contains {bad} NaN or infinite pixel value(s) (or values too large for "
                "float32); replace them (e.g. with 0) before running starloc"
            )
    return out


def select_channel(image: Any, channel_axis: int, channel: int) -> Any:
    """Channel ``channel`` (0-based) of a multichannel ``image`` whose channels lie along
    ``channel_axis``: a view without that axis (nothing read from a memory-mapped file).
    InputError for an axis or channel out of range, or an image that cannot be sliced so."""
    shape = tuple(np.shape(image))
    ndim = len(shape)
    if ndim < 3 or not -ndim <= int(channel_axis) < ndim:
        raise InputError(f"channel axis {channel_axis} is out of range for an image of shape {shape}")
    axis = int(channel_axis) % ndim
    if not 0 <= int(channel) < shape[axis]:
        raise InputError(f"channel {channel} does not exist: axis {axis} of the image (shape {shape}) holds "
                         f"channels 0..{shape[axis] - 1}")
    if not isinstance(image, np.ndarray):
        image = np.asarray(image)  # lazy stacks of one page per frame hold no channel axis anyway
    return image[(slice(None),) * axis + (int(channel),)]


def as_frames(image: Any, *, rgb: str = "error", channel_axis: int | None = None) -> np.ndarray:
    """Validate a user image and return it as a float32 array of shape (T, C, H, W).

    Accepted layouts (``channel_axis`` not given):

    - ``(H, W)`` -> ``(1, 1, H, W)``
    - ``(T, H, W)`` -> ``(T, 1, H, W)``
    - ``(H, W, 3|4)`` and ``(T, H, W, 3|4)`` are colour (RGB/RGBA) — *only* when the last axis
      has size 3 or 4 and the two axes before it are both >= 16 pixels (``RGB_MIN_SIZE``); the
      dtype plays no role. Otherwise a 3D array is a stack: ``(3, H, W)`` is three frames,
      never colour. Colour raises InputError with ``rgb="error"`` (default); with
      ``rgb="gray"`` it is converted by luminance (0.2125 R + 0.7154 G + 0.0721 B, alpha
      dropped) to one channel.

    With ``channel_axis`` the image is multichannel and no colour detection is done:
    ``(…)`` 3D -> ``(1, C, H, W)``, 4D -> ``(T, C, H, W)`` where T is the first of the
    remaining axes and H, W the last two.

    InputError for: fewer than 2 or more than 4 dimensions, empty arrays, non-numeric dtypes,
    NaN/inf values, 4D without a channel axis (and not colour).

    This loads and converts the whole image; for big stacks use :func:`iter_frame_chunks`.
    """
    layout = _layout(np.shape(image), _dtype_of(image), rgb, channel_axis)
    return _convert(image, layout)


def frames_shape(image: Any, *, rgb: str = "error", channel_axis: int | None = None) -> tuple[int, int, int, int]:
    """The (T, C, H, W) shape :func:`as_frames` would return, without reading any pixels.

    Raises the same shape errors as :func:`as_frames` (not the NaN check, which needs the data).
    """
    return _layout(np.shape(image), _dtype_of(image), rgb, channel_axis).out_shape


def iter_frame_chunks(
    image: Any, chunk: int, *, rgb: str = "error", channel_axis: int | None = None, frames: Any = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, frames)`` with ``frames`` float32 ``(t, C, H, W)``, ``t <= chunk``.

    ``image`` may be a numpy array or memmap (e.g. from :func:`read_image`), or any lazy
    array with ``shape``, ``dtype`` and slicing (dask, zarr): only one chunk of frames is read
    and converted at a time, so memory stays bounded by the chunk size. The axes are
    interpreted once from the full shape, with the rules of :func:`as_frames`, and
    ``start`` is the 0-based index of the chunk's first frame in the whole image.
    ``frames``: only these frames (see :func:`select_frames`; default all).
    """
    chunk = int(chunk)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    layout = _layout(np.shape(image), _dtype_of(image), rgb, channel_axis)
    selected = select_frames(frames, layout.frames, "the image")
    if layout.time_axis is None:
        yield 0, _convert(image, layout)
        return
    index: list[Any] = [slice(None)] * len(layout.shape)
    for start in range(selected.start, selected.stop, chunk):
        index[layout.time_axis] = slice(start, min(start + chunk, selected.stop))
        block = image[tuple(index)]
        yield start, _convert(block, layout)


def select_frames(frames: Any, n: int, name: str) -> range:
    """The contiguous range of 0-based frames that ``frames`` (None, slice, range or
    ``(start, stop)``) selects from a stack of ``n`` frames called ``name``; InputError when none."""
    if frames is None:
        r = range(n)
    elif isinstance(frames, range):
        if frames.step != 1:
            raise InputError("frames must be a contiguous range (step 1)")
        r = range(*slice(frames.start, frames.stop).indices(n))
    elif isinstance(frames, slice):
        if frames.step not in (None, 1):
            raise InputError("frames must be a contiguous range (step 1)")
        r = range(*slice(frames.start, frames.stop).indices(n))
    elif isinstance(frames, (tuple, list)) and len(frames) == 2:
        r = range(*slice(*frames).indices(n))
    else:
        raise InputError(f"frames must be a slice or range of frame indices, got {frames!r}")
    if len(r) == 0:
        raise InputError(f"the frame selection {_frames_text(frames)} selects no frame of {name} ({n} frame(s), "
                         f"0 to {n - 1})")
    return r


def image_frame_range(image: Any, frames: Any = None, *, rgb: str = "error", channel_axis: int | None = None,
                      name: str = "the image") -> range:
    """The frames of ``image`` (read as :func:`as_frames` would) that ``frames`` selects (see
    :func:`select_frames`), without reading any pixels."""
    return select_frames(frames, frames_shape(image, rgb=rgb, channel_axis=channel_axis)[0], name)


def _dtype_of(image: Any) -> np.dtype:
    dtype = getattr(image, "dtype", None)
    try:
        return np.dtype(dtype) if dtype is not None else np.asarray(image).dtype
    except TypeError:  # e.g. a torch dtype: let numpy convert the data
        return np.asarray(image).dtype


# --------------------------------------------------------------------------------------
# Crops
# --------------------------------------------------------------------------------------


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def validate_crop(
    image_shape_hw: tuple[int, int], crop: tuple[float, float, float, float], min_size: int | tuple[int, int]
) -> tuple[int, int, int, int]:
    """Check a crop rectangle against an image and return it as integers.

    ``crop`` is ``(row, col, height, width)`` in pixels: the top-left pixel (row, col) and the
    size; it covers rows ``row .. row+height-1`` and columns ``col .. col+width-1``. Values are
    rounded to the nearest integer (halves up), e.g. from a rectangle drawn in napari.
    ``min_size`` (an int or ``(min_height, min_width)``) is the smallest crop the network can
    use (its receptive field).

    InputError when the crop is malformed, empty (height or width <= 0), partly or wholly
    outside the image, or smaller than ``min_size``.
    """
    h_img, w_img = (int(s) for s in image_shape_hw)
    try:
        values = [float(v) for v in crop]
    except (TypeError, ValueError) as exc:
        raise InputError(f"crop must be four numbers (row, col, height, width), got {crop!r}") from exc
    if len(values) != 4:
        raise InputError(f"crop must be four numbers (row, col, height, width), got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise InputError(f"crop must be finite numbers (row, col, height, width), got {tuple(crop)}")
    row, col, height, width = (_round_half_up(v) for v in values)
    if height <= 0 or width <= 0:
        raise InputError(
            f"crop is empty (height={height}, width={width}); select a rectangle around one object"
        )
    if row < 0 or col < 0 or row + height > h_img or col + width > w_img:
        raise InputError(
            f"crop rows {row}..{row + height - 1}, cols {col}..{col + width - 1} lies outside the "
            f"image of size {h_img}x{w_img} (rows 0..{h_img - 1}, cols 0..{w_img - 1})"
        )
    if isinstance(min_size, (tuple, list)):
        min_h, min_w = (int(m) for m in min_size)
    else:
        min_h = min_w = int(min_size)
    if height < min_h or width < min_w:
        raise InputError(
            f"crop is {height}x{width} pixels, smaller than the minimum {min_h}x{min_w} "
            "(the network's receptive field at this downsampling); select a larger rectangle"
        )
    return row, col, height, width


# --------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Context manager giving a temporary path next to ``path``; on success it replaces ``path``.

    Write the complete file to the yielded path inside the ``with`` block. When the block
    finishes, the file is flushed to disk and atomically renamed onto ``path``
    (:func:`os.replace`). If the block raises (or is interrupted), the temporary file is removed
    and an existing file at ``path`` is left untouched — a reader never sees a half-written file;
    a system error (a full disk) names ``path``, not the temporary file.
    The temporary name keeps ``path``'s suffix (writers such as ``np.save`` that append
    extensions behave). InputError if the directory does not exist.
    """
    target = Path(path)
    directory = target.parent
    if not directory.is_dir():
        raise InputError(f"cannot write {str(target)!r}: directory {str(directory)!r} does not exist")
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=f".tmp{target.suffix}")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if not tmp.exists():
            raise OSError(f"nothing was written to the temporary file for {str(target)!r}")
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        mode = (target.stat().st_mode & 0o777) if target.exists() else (0o666 & ~_UMASK)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and exc.strerror and exc.filename in (None, str(tmp)):  # name the user's file
            raise OSError(exc.errno, exc.strerror, str(target)) from exc
        raise


def atomic_write(path: str | os.PathLike, write_fn: Callable[[Path], Any]) -> Path:
    """Call ``write_fn(tmp_path)`` and atomically move the result to ``path`` (see :func:`atomic_path`).

    Returns ``path`` as a Path. If ``write_fn`` raises, the exception propagates, no temporary
    file is left behind and the old file at ``path`` (if any) is unchanged.
    """
    with atomic_path(path) as tmp:
        write_fn(tmp)
    return Path(path)


# --------------------------------------------------------------------------------------
# Point tables (detections): frame,row,col,<features...>
# --------------------------------------------------------------------------------------

POINTS_HEADER = ("frame", "row", "col")


#: rows formatted at a time by :func:`write_csv_rows` (bounded memory for millions of rows)
CSV_BLOCK_ROWS = 65536


def _format_column(values: np.ndarray) -> list[str]:
    if values.dtype.kind == "b":
        values = values.astype(np.int64)
    if values.dtype.kind in "iu":
        return [str(v) for v in values.tolist()]
    # repr of a Python float is the shortest string that round-trips exactly.
    return [repr(v) for v in values.astype(np.float64).tolist()]


def write_csv_rows(fh: Any, columns: Sequence[np.ndarray]) -> None:
    """Write the rows of equal-length 1D ``columns`` to the text file ``fh`` as CSV lines:
    integers as integers, floats by ``repr`` (the shortest exact round trip). Formatted
    :data:`CSV_BLOCK_ROWS` rows at a time: the text of every row at once cost ~390 bytes per
    row (2 GB for 5 million localizations)."""
    n = len(columns[0]) if len(columns) else 0
    for start in range(0, n, CSV_BLOCK_ROWS):
        text = [_format_column(c[start:start + CSV_BLOCK_ROWS]) for c in columns]
        fh.writelines(",".join(row) + "\n" for row in zip(*text))


def write_points_csv(
    path: str | os.PathLike,
    frames: Any,
    positions: Any,
    features: Mapping[str, Any] | None = None,
) -> Path:
    """Write detections as CSV with header ``frame,row,col,<feature names...>`` (atomically).

    ``frames``: (N,) 0-based integer frame indices; ``positions``: (N, 2) ``(row, col)`` pixel
    coordinates (pixel centres at integers); ``features``: name -> (N,) numeric array. Floats are
    written with Python's ``repr`` (shortest exact round trip), integers as integers, so
    :func:`read_points_csv` returns exactly the values written.
    """
    features = dict(features or {})
    frames_arr = np.asarray(frames).reshape(-1)
    pos = np.asarray(positions, dtype=np.float64)
    n = frames_arr.shape[0]
    if pos.size == 0 and n == 0:
        pos = pos.reshape(0, 2)
    if pos.ndim != 2 or pos.shape != (n, 2):
        raise ValueError(f"positions must have shape ({n}, 2) to match frames, got {pos.shape}")
    if n and frames_arr.dtype.kind not in "iu":
        as_float = frames_arr.astype(np.float64)
        if not np.all(np.isfinite(as_float)) or not np.all(as_float == np.round(as_float)):
            raise ValueError("frames must be integers")
    frames_arr = frames_arr.astype(np.int64)
    if n and frames_arr.min() < 0:
        raise ValueError("frames must be >= 0 (0-based)")
    columns = [frames_arr, pos[:, 0], pos[:, 1]]
    names = list(POINTS_HEADER)
    for name, values in features.items():
        name = str(name)
        if not name or any(ch in name for ch in ',"\r\n') or name != name.strip():
            raise ValueError(f"feature name {name!r} cannot be a CSV column name")
        if name in names:
            raise ValueError(f"duplicate column name {name!r}")
        arr = np.asarray(values).reshape(-1)
        if arr.shape[0] != n:
            raise ValueError(f"feature {name!r} has {arr.shape[0]} values, expected {n}")
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"feature {name!r} must be numeric, got dtype {arr.dtype}")
        names.append(name)
        columns.append(arr)

    def _write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            fh.write(",".join(names) + "\n")
            write_csv_rows(fh, columns)

    return atomic_write(path, _write)


def _parse_column(name: str, tokens: list[str], path: Path) -> np.ndarray:
    try:
        return np.array(tokens, dtype=np.int64) if tokens else np.zeros(0, dtype=np.int64)
    except (ValueError, OverflowError):
        pass
    try:
        return np.array([float(t) for t in tokens], dtype=np.float64)
    except ValueError as exc:
        raise InputError(f"{str(path)!r}: column {name!r} has a non-numeric value ({one_line(exc)})") from exc


def read_points_csv(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Read a table written by :func:`write_points_csv`.

    Returns ``(frames, positions, features)``: frames int64 (N,), positions float64 (N, 2)
    ``(row, col)``, features a dict name -> (N,) array (int64 when every value is an integer
    literal, else float64), in file order. InputError for a missing file, a header that does
    not start with ``frame,row,col``, ragged rows, non-numeric values or non-integer frames.
    """
    p = Path(path)
    if not p.is_file():
        raise no_file(p, "points")
    rows = None
    for encoding in ("utf-8-sig", "cp1252"):  # spreadsheets on Windows save CSVs in cp1252 (µ as 0xB5)
        try:
            with open(p, newline="", encoding=encoding) as fh:
                rows = list(csv.reader(fh))
            break
        except UnicodeDecodeError:
            continue
        except (OSError, csv.Error) as exc:
            raise InputError(f"cannot read {str(p)!r}: {one_line(exc)}") from exc
    if rows is None or any("\x00" in field for row in rows[:5] for field in row):
        raise InputError(f"{str(p)!r} is not a starloc points table: not a text (CSV) file")
    if not rows or _points_header(rows[0])[:3] != list(POINTS_HEADER):
        raise InputError(f"{str(p)!r} is not a starloc points table: the header must start with frame,row,col")
    header = [*POINTS_HEADER, *(h.strip() for h in rows[0][3:])]
    if len(set(header)) != len(header):
        raise InputError(f"{str(p)!r}: duplicate column names in the header")
    body = [r for r in rows[1:] if r and any(c.strip() for c in r)]
    for lineno, r in enumerate(body, start=2):
        if len(r) != len(header):
            raise InputError(f"{str(p)!r}: a row near line {lineno} has {len(r)} fields, expected {len(header)}")
    cols = list(zip(*body)) if body else [()] * len(header)
    parsed = {
        name: _parse_column(name, [t.strip() for t in col], p) for name, col in zip(header, cols)
    }
    frames = parsed.pop("frame")
    if frames.dtype.kind == "f":
        if not np.all(np.isfinite(frames)) or not np.all(frames == np.round(frames)) or np.any(frames >= 2**53):
            raise InputError(f"{str(p)!r}: the frame column must hold integers")
        frames = frames.astype(np.int64)
    if np.any(frames < 0):
        raise InputError(f"{str(p)!r}: the frame column holds a negative frame ({int(frames.min())}); frames are "
                         "0-based")
    rows_ = parsed.pop("row").astype(np.float64)
    cols_ = parsed.pop("col").astype(np.float64)
    if not (np.all(np.isfinite(rows_)) and np.all(np.isfinite(cols_))):
        raise InputError(f"{str(p)!r}: the row and col columns must hold finite numbers (NaN or inf found)")
    positions = np.stack([rows_, cols_], axis=1) if rows_.size else np.zeros((0, 2))
    return frames, positions, parsed


def read_header_line(path: str | os.PathLike) -> str | None:
    """The first line of a text file (BOM and line ending removed), read from at most its
    first 4 KiB; None when the file cannot be read. Never raises: for cheap format sniffing."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except (OSError, TypeError, ValueError):
        return None
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    return head.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "replace")


def _points_header(fields: Sequence[str]) -> list[str]:
    """Column names as compared with ``POINTS_HEADER``: stripped, lower case (``Frame``, as
    spreadsheets capitalize it, is ``frame``)."""
    return [f.strip().lower() for f in fields]


def is_points_csv(path: str | os.PathLike) -> bool:
    """Cheap sniff: True when ``path`` is a file whose first line starts with ``frame,row,col``
    (any case, quoted or not, as R's ``write.csv`` writes it).

    Reads at most 4 KiB whatever the file is; never raises.
    """
    try:
        if not Path(path).is_file():
            return False
    except (TypeError, ValueError):
        return False
    first = read_header_line(path)
    if first is None:
        return False
    try:
        fields = next(csv.reader([first]), [])
    except csv.Error:
        return False
    return _points_header(fields)[:3] == list(POINTS_HEADER)


# --------------------------------------------------------------------------------------
# Model files
# --------------------------------------------------------------------------------------

MODEL_FORMAT = "starloc-model"
MODEL_FORMAT_VERSION = 1

_PLAIN_SCALARS = (str, int, float, bool, type(None))


def _plain(value: Any, where: str) -> Any:
    """Return ``value`` as plain Python data (numpy scalars/arrays converted); TypeError otherwise."""
    import torch

    if isinstance(value, _PLAIN_SCALARS):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu").clone()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: keys must be strings, got {k!r}")
            out[k] = _plain(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, (list, tuple)):
        items = [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    raise TypeError(
        f"{where}: {type(value).__name__} cannot be stored in a model file "
        "(use str/int/float/bool/None, lists, tuples, dicts and tensors)"
    )


def save_model_file(
    path: str | os.PathLike,
    kind: str,
    config: Mapping[str, Any],
    state_dict: Mapping[str, Any],
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Save a model as one self-describing file (``torch.save``, written atomically).

    The file holds a dict ``{"format": "starloc-model", "format_version": 1, "kind": kind,
    "config": config, "state_dict": state_dict, "metadata": {...}}`` made only of plain Python
    data and CPU tensors, so :func:`load_model_file` reads it with ``weights_only=True`` (no code
    is ever unpickled). ``config`` holds what is needed to rebuild the model (architecture,
    hyper-parameters, normalization); ``metadata`` anything informative (training crop, steps,
    seed, ...) and gets ``starloc_version``, ``torch_version`` and ``created`` (ISO 8601, UTC)
    added. numpy scalars/arrays are converted to Python numbers/lists; anything else that is
    not plain data raises TypeError.
    """
    import torch

    from . import __version__

    if not isinstance(kind, str) or not kind:
        raise ValueError(f"kind must be a non-empty string, got {kind!r}")
    if not isinstance(state_dict, Mapping):
        raise TypeError("state_dict must be a mapping of parameter names to tensors")
    tensors: dict[str, Any] = {}
    for name, t in state_dict.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            raise TypeError(f"state_dict entries must be str -> torch.Tensor, got {name!r} -> {type(t).__name__}")
        tensors[name] = t.detach().to("cpu").clone()  # clone: do not save a larger shared storage
    meta = _plain(dict(metadata or {}), "metadata")
    meta.update(
        starloc_version=__version__,
        torch_version=str(torch.__version__),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    payload = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "kind": kind,
        "config": _plain(dict(config), "config"),
        "state_dict": tensors,
        "metadata": meta,
    }
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_model_file(path: str | os.PathLike, kind: str | None = None) -> dict[str, Any]:
    """Load a file written by :func:`save_model_file`, safely (``weights_only=True``, on CPU).

    Returns the dict with keys format, format_version, kind, config, state_dict, metadata.
    ModelFileError (one line, naming the file) when the file is missing or unreadable, not a torch file,
    corrupt or truncated, contains anything but plain data and tensors (nothing is executed),
    is a torch file but not a starloc model (e.g. a bare state dict), was written by a newer
    format version, or holds a model of another ``kind`` than requested.
    """
    import torch

    p = Path(path)
    name = str(p)
    if not p.exists():
        raise ModelFileError(f"model file {name!r} not found")
    if not p.is_file():
        raise ModelFileError(f"model file {name!r} is not a regular file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's note on pickle protocols of foreign files
            obj = torch.load(p, weights_only=True, map_location="cpu")
    except Exception as exc:  # UnpicklingError, RuntimeError (zip), EOFError, KeyError, ...
        text = str(exc).lower()
        if isinstance(exc, OSError):  # e.g. permission denied
            reason = one_line(exc)
        elif isinstance(exc, pickle.UnpicklingError) and "global" in text:
            reason = (
                "it contains Python objects other than plain data and tensors, "
                "which are not loaded (no code is executed)"
            )
        elif zipfile.is_zipfile(p):
            reason = f"the file is corrupt ({one_line(exc)})"
        else:
            reason = "not a torch file, or truncated/corrupt"
        raise ModelFileError(f"cannot read model file {name!r}: {reason}") from None
    if not isinstance(obj, dict) or obj.get("format") != MODEL_FORMAT:
        raise ModelFileError(
            f"{name!r} is not a starloc model file (a torch file without the starloc header, "
            "e.g. a bare state dict); train a model with starloc to get one"
        )
    version = obj.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelFileError(f"{name!r}: invalid starloc model format version {version!r}")
    if version > MODEL_FORMAT_VERSION:
        raise ModelFileError(
            f"{name!r} was written by a newer napari-starloc (model format version {version}, "
            f"this version reads up to {MODEL_FORMAT_VERSION}); upgrade napari-starloc"
        )
    for key, typ in (("kind", str), ("config", dict), ("state_dict", dict), ("metadata", dict)):
        if not isinstance(obj.get(key), typ):
            raise ModelFileError(f"{name!r}: damaged starloc model file (missing or invalid {key!r})")
    if kind is not None and obj["kind"] != kind:
        raise ModelFileError(f"{name!r} is a {obj['kind']} model, expected {kind}")
    return obj
