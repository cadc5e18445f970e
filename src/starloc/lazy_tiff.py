"""TIFF data read lazily, frame by frame: a folder of single-frame files, or a compressed stack.

Cameras and acquisition software often write one file per frame (``img_000001.tif``, …), and
the SMLM challenges distribute their sequences that way as well. :func:`read_tiff_folder`
returns a :class:`TiffFolder`: an array-like with ``shape``, ``dtype`` and slicing along
the frame axis that reads only the files a slice asks for, so
:func:`starloc.io.iter_frame_chunks` streams it like a memory-mapped stack. Frames are
ordered by file name, with runs of digits compared as numbers (``2.tif`` before ``10.tif``).
Every file must hold one image of the first file's shape and dtype.

A compressed TIFF stack cannot be memory-mapped; :class:`TiffPages` reads the pages (one per
frame) that a slice asks for instead of the whole file.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, StarlocWarning, one_line

#: TIFF and BigTIFF file name endings (lower case)
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")


def natural_key(name: str) -> list:
    """Sort key that compares runs of digits as numbers: ``f2`` < ``f10``."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", name)]


def _page_shape_and_dtype(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of the image in a TIFF file, without reading its pixels."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            return tuple(series.shape), np.dtype(series.dtype)
    except Exception as exc:
        raise InputError(f"cannot read {str(path)!r} as a TIFF image: {one_line(exc)}") from exc


class _LazyFrames:
    """An array-like ``(T, *frame_shape)`` whose frames are read one by one (``_frame``) when a
    slice along the first axis asks for them."""

    def __init__(self, n_frames: int, frame_shape: tuple[int, ...], dtype: np.dtype):
        self.n_frames = int(n_frames)
        self.frame_shape = tuple(frame_shape)
        self.dtype = np.dtype(dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.n_frames, *self.frame_shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.n_frames

    def _read(self, indices: range) -> np.ndarray:
        """Frames ``indices`` as ``(len(indices), *frame_shape)``."""
        raise NotImplementedError

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        first, rest = (key[0], key[1:]) if key else (slice(None), ())
        if isinstance(first, (int, np.integer)):
            index = range(len(self))[first]
            return self._read(range(index, index + 1))[0][rest]
        if not isinstance(first, slice):
            raise TypeError(f"frames are indexed by an integer or a slice, not {first!r}")
        return self._read(range(len(self))[first])[(slice(None), *rest)]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)


class TiffFolder(_LazyFrames):
    """Lazy ``(T, *frame_shape)`` stack of the TIFF files ``paths``, one frame each."""

    def __init__(self, paths: list[Path], frame_shape: tuple[int, ...], dtype: np.dtype):
        super().__init__(len(paths), frame_shape, dtype)
        self.paths = list(paths)

    def _read(self, indices: range) -> np.ndarray:
        out = np.empty((len(indices), *self.frame_shape), dtype=self.dtype)
        for i, index in enumerate(indices):
            out[i] = self._file(self.paths[index])
        return out

    def _file(self, path: Path) -> np.ndarray:
        import tifffile

        try:
            frame = np.asarray(tifffile.imread(path))
        except Exception as exc:
            raise InputError(f"cannot read {str(path)!r} as a TIFF image: {one_line(exc)}") from exc
        if frame.shape != self.frame_shape or frame.dtype != self.dtype:
            raise InputError(
                f"{str(path)!r} holds a {frame.dtype} image of shape {frame.shape}, unlike the folder's first "
                f"file ({self.dtype}, {self.frame_shape}): a folder is read as one frame of one shape per file"
            )
        return frame



class TiffPages(_LazyFrames):
    """Lazy ``(T, H, W)`` stack of an open :class:`tifffile.TiffFile` whose first series holds
    one page per frame (e.g. compressed): a slice reads only its pages. Closed with
    :meth:`close` or when it is collected."""

    def __init__(self, tif, name: str):
        self._tif, self.name = tif, name
        series = tif.series[0]
        super().__init__(series.shape[0], tuple(series.shape[1:]), series.dtype)

    def _read(self, indices: range) -> np.ndarray:
        try:
            pages = self._tif.asarray(key=indices, series=0)
        except Exception as exc:
            raise InputError(f"cannot read frames {indices.start}..{indices.stop - 1} of {self.name} (truncated or "
                             f"corrupt?): {one_line(exc)}") from exc
        return np.asarray(pages).reshape(len(indices), *self.frame_shape)

    def close(self) -> None:
        self._tif.close()

    def __del__(self):
        tif = getattr(self, "_tif", None)
        if tif is not None:
            tif.close()


def is_paged_stack(tif) -> bool:
    """Whether the first series of an open :class:`tifffile.TiffFile` is a ``(T, H, W)`` stack
    stored as one page per frame (so that :class:`TiffPages` can read it frame by frame)."""
    series = tif.series[0]
    return len(series.shape) == 3 and len(series.pages) == series.shape[0] > 1


def open_paged_stack(path: Path) -> TiffPages | None:
    """:class:`TiffPages` over the TIFF at ``path`` if it is a paged stack (see
    :func:`is_paged_stack`), else None (and the file is closed)."""
    import tifffile

    tif = tifffile.TiffFile(path)
    try:
        if is_paged_stack(tif):
            return TiffPages(tif, repr(str(path)))
    except Exception:
        tif.close()
        raise
    tif.close()
    return None


def read_tiff_folder(folder: str | Path) -> TiffFolder:
    """The TIFF files of ``folder`` (not its sub-folders) as a lazy stack, in natural order of
    their names. InputError when it holds none, or when its first file holds more than one
    frame (give that file itself)."""
    folder = Path(folder)
    paths = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in TIFF_SUFFIXES
                    and not p.name.startswith(".")), key=lambda p: natural_key(p.name))
    if not paths:
        raise InputError(f"{str(folder)!r} is a folder without TIFF files (.tif, .tiff); give an image file "
                         "or a folder of one TIFF per frame")
    shape, dtype = _page_shape_and_dtype(paths[0])
    is_colour = len(shape) == 3 and shape[-1] in (3, 4)
    if len(shape) != 2 and not is_colour:
        raise InputError(f"{str(paths[0])!r} in folder {str(folder)!r} holds an image of shape {shape}: a folder "
                         "is read as one 2D frame per file; give a multi-frame TIFF as a file, not its folder")
    problem = folder_series_problem([p.name for p in paths])
    if problem:
        raise InputError(f"folder {str(folder)!r}: {problem}")
    for note in folder_order_notes([p.name for p in paths]):
        warnings.warn(f"folder {str(folder)!r}: {note}", StarlocWarning, stacklevel=2)
    return TiffFolder(paths, shape, dtype)


def _shown(pattern: str) -> str:
    """A name pattern of :func:`_stems_and_patterns` as the user reads it: ``img_N.tif``."""
    return pattern.replace("#", "N") + ".tif"


def _stems_and_patterns(names: list[str]) -> tuple[list[str], list[str]]:
    """Lower-case names without the TIFF suffix, and the same with each run of digits as ``#``."""
    stems = [re.sub(r"\.(tiff?|btf|tf8|tf2)$", "", name.lower()) for name in names]
    return stems, [re.sub(r"\d+", "#", stem) for stem in stems]


def folder_series_problem(names: list[str]) -> str | None:
    """Why files ``names`` are not one series of frames, or None.

    Acquisition software writes the files of several channels, positions or z planes into one
    folder (Micro-Manager 2: ``img_channel000_position000_time000000003_z000.tif``; 1.4:
    ``img_000000003_GFP_000.tif``). Read in name order they would interleave into one stack of
    frames that belong to different series. Two signs: several name patterns with more than one
    file each (``..._GFP_...`` and ``..._DAPI_...``), or, within one pattern, two numbers that
    change while one of them repeats its values (channel 0 and 1, each at every time point).
    Numbers that change without repeating (a frame index and a time stamp) are one series.
    """
    stems, pattern = _stems_and_patterns(names)
    counts = Counter(pattern)
    series = [pat for pat, n in counts.most_common() if n > 1]
    if len(series) > 1:
        first, second = series[:2]
        return (f"its TIFF files form {len(series)} series named {_shown(first)!r} ({counts[first]} files), "
                f"{_shown(second)!r} ({counts[second]} files){', ...' if len(series) > 2 else ''}: read as "
                "one stack they would interleave (channels? positions?); put the files of one series in a "
                "folder of their own")
    common = series[0] if series else pattern[0]
    runs = [[int(n) for n in re.findall(r"\d+", stem)] for stem, pat in zip(stems, pattern) if pat == common]
    varying = [i for i in range(common.count("#")) if len({r[i] for r in runs}) > 1]
    repeating = [i for i in varying if len({r[i] for r in runs}) < len(runs)]
    if len(varying) > 1 and repeating:
        example = next(stem for stem, pat in zip(stems, pattern) if pat == common)
        fewest = min(repeating, key=lambda i: len({r[i] for r in runs}))  # the channel, not the time
        values = sorted({r[fewest] for r in runs})
        listed = ", ".join(str(v) for v in values[:4]) + (", ..." if len(values) > 4 else "")
        return (f"{len(varying)} numbers change in its file names (e.g. {example!r}), one of them taking the "
                f"values {listed} again and again: the files hold several series (channels, positions or z "
                "planes at each time point) that one stack would interleave; put the files of one series in "
                "a folder of their own")
    return None


def folder_order_notes(names: list[str]) -> list[str]:
    """What a user may not expect of frames read from files ``names`` (in reading order):
    files named unlike the others (a stray ``dark.tif`` becomes a frame, and shifts the ones
    after it), and file numbers that skip (frames are numbered by position, not by file)."""
    stems, pattern = _stems_and_patterns(names)
    common, _ = Counter(pattern).most_common(1)[0]
    notes = []
    odd = [name for name, pat in zip(names, pattern) if pat != common]
    if odd:
        notes.append(f"{len(odd)} file(s) named unlike the others ({odd[0]!r} among "
                     f"{_shown(common)!r}) are read as frames too, in name order; move them out "
                     "if they are no frames")
    runs = [[int(n) for n in re.findall(r"\d+", stem)] for stem, pat in zip(stems, pattern) if pat == common]
    varying = [i for i in range(common.count("#")) if len({r[i] for r in runs}) > 1]
    # the frame number is the one number that changes (Micro-Manager: img_<t>_Default_<z>.tif);
    # with several changing (time and z), which one counts frames is not for us to guess
    numbers = [r[varying[0]] for r in runs] if len(varying) == 1 else []
    skips = [(a, b) for a, b in zip(numbers, numbers[1:]) if b != a + 1]
    if skips:
        a, b = skips[0]
        notes.append(f"the file numbers skip ({b} follows {a}; {len(skips)} gap(s)): frames are numbered by "
                     "their position in the folder, not by the numbers in the file names")
    return notes
