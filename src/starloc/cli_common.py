"""Pieces shared by the ``starloc`` commands of both methods (argument types, device choice,
progress bars, the dask cluster options). Light to import: torch, tqdm and dask are imported
only when used, so ``starloc --help`` stays fast."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

from starloc.errors import InputError, StarlocError


#: file name suffixes of the formats the commands write, by kind (lower case)
SUFFIXES = {
    "csv": (".csv", ".txt", ".tsv"),
    "tiff": (".tif", ".tiff"),
    "model": (".pt", ".pth"),
    "hdf5": (".hdf5", ".h5"),
    "json": (".json",),
    "numpy": (".npy", ".npz"),
    "yaml": (".yaml", ".yml"),  # written only as a Picasso .hdf5's sidecar, never as -o itself
}


def check_output(path: Any, kind: str | None = None, inputs: tuple = ()) -> None:
    """Refuse, before any work, an output path that cannot be written or would destroy data:
    its folder missing or not writable, the path itself an existing folder, the same file as
    one of ``inputs`` (the command's input files: writing would replace what is being read),
    or, for a writer of ``kind`` (a key of :data:`SUFFIXES`), a name whose suffix says another
    format (``-o stack.tif`` for a CSV). Names with no or an unknown suffix are allowed."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"cannot write {str(path)!r}: it is a folder; give a file name")
    if not path.parent.is_dir():
        raise InputError(f"cannot write {str(path)!r}: directory {str(path.parent)!r} does not exist")
    if not os.access(path.parent, os.W_OK | os.X_OK):  # said now, not after the work is done
        raise InputError(f"cannot write {str(path)!r}: directory {str(path.parent)!r} is not writable "
                         "(read-only, or not yours)")
    for source in inputs:
        if source is not None and same_file(path, Path(source)):
            raise InputError(f"cannot write {str(path)!r}: it is the input {str(source)!r}, which would be "
                             "overwritten; give another output name")
    if kind is not None:
        suffix = path.suffix.lower()
        other = next((k for k, names in SUFFIXES.items() if k != kind and suffix in names), None)
        if other is not None:
            expected = "/".join(SUFFIXES[kind])
            raise InputError(f"cannot write {str(path)!r}: this command writes a {kind.upper()} file "
                             f"({expected}), and the name says {other.upper()}; give a {SUFFIXES[kind][0]} name")


def same_file(a: Any, b: Any) -> bool:
    """The same file, existing (hard links, symlinks) or not yet (the same resolved path)."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return a.samefile(b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when a CUDA GPU is available, else ``cpu``; ``cuda`` without one is
    an error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise StarlocError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    return name


#: s between progress-bar updates when stderr is a file or a pipe (a log), not a terminal
LOG_INTERVAL = 10.0


def progress_bar(total: int, desc: str, unit: str):
    """A tqdm bar on stderr; written to a log file it updates every ``LOG_INTERVAL`` s, not
    ten times a second (a 5200-step training left a 670 kB log)."""
    from tqdm import tqdm

    logged = not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=True,
                **({"mininterval": LOG_INTERVAL} if logged else {}))


def positive(kind: type = float):
    """An argparse type: a positive finite ``kind``."""

    def parse(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not (v > 0 and math.isfinite(v)):
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return v

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def downsample_factor(text: str) -> int | str:
    """An argparse type: ``auto`` or a positive integer."""
    if text == "auto":
        return text
    try:
        return positive(int)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive integer, got {text!r}") from None


def at_least(minimum: int | float, kind: type = int):
    """An argparse type: a finite ``kind`` (an integer by default) >= ``minimum``."""
    name = "an integer" if kind is int else "a number"

    def parse(text: str) -> int | float:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None
        if not (math.isfinite(v) and v >= minimum):
            raise argparse.ArgumentTypeError(f"expected {name} >= {minimum:g}, got {text!r}")
        return v

    parse.__name__ = f"{name} >= {minimum:g}"
    return parse


def frames_type(text: str) -> slice:
    """``A:B`` (0-based, B excluded, either may be omitted or negative, as a Python slice) or
    ``A`` (one frame) -> slice."""
    m = re.fullmatch(r"\s*(-?\d+)?\s*:\s*(-?\d+)?\s*", text)
    if m:
        a, b = (None if g is None else int(g) for g in m.groups())
        return slice(a, b)
    if re.fullmatch(r"\s*-?\d+\s*", text):
        a = int(text)
        return slice(a, a + 1 if a != -1 else None)
    raise argparse.ArgumentTypeError(f"expected A:B (0-based, B excluded), got {text!r}")


def add_cluster_options(p: argparse.ArgumentParser, what: str) -> None:
    """``--scheduler`` / ``--workers`` / ``--frames-per-task`` (``what``: the input file's name)."""
    from starloc.cluster import DEFAULT_TASK_FRAMES

    g = p.add_argument_group("past one machine (dask.distributed; pip install 'napari-starloc[cluster]')")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help=f"run on an existing dask cluster, e.g. tcp://10.0.0.1:8786; the model and the {what} "
                        "must be readable at the same paths on every worker")
    g.add_argument("--workers", type=positive(int), default=None, metavar="N",
                   help="run on a local dask cluster of N worker processes (one range of frames per task)")
    g.add_argument("--frames-per-task", type=positive(int), default=None, metavar="N",
                   help="frames per cluster task (default: about four tasks per worker, at most "
                        f"{DEFAULT_TASK_FRAMES} frames each)")


def task_frames(args, client: Any, total: int) -> int:
    """``--frames-per-task``, else about four tasks per worker of ``client`` for ``total``
    frames (at most DEFAULT_TASK_FRAMES each), so that every worker has work and the progress
    bar moves: a fixed 1000 made a 600-frame stack one task for one worker of two."""
    from starloc.cluster import DEFAULT_TASK_FRAMES

    if args.frames_per_task is not None:
        return int(args.frames_per_task)
    workers = max(1, len(client.scheduler_info().get("workers", {})))
    return max(1, min(DEFAULT_TASK_FRAMES, math.ceil(total / (4 * workers))))


def cluster_client(args) -> Any:
    """A context manager giving the dask client that ``--scheduler`` / ``--workers`` ask for,
    or None when they are not given (work in this process). Write the output inside it: closing
    a cluster takes seconds, and a Ctrl-C then must not lose results already computed."""
    from starloc.cluster import open_client

    if args.workers is None and args.scheduler is None:
        return contextlib.nullcontext()
    if args.workers is not None and args.scheduler is not None:
        raise InputError("give either --scheduler (an existing cluster) or --workers (a local one), not both")
    return open_client(args.scheduler, args.workers)
