"""Localization tables of SMLM: challenge ground truth, ThunderSTORM CSV, Picasso HDF5.

In memory a localization table is a plain ``dict`` of equal-length 1-D numpy arrays:

- ``frame``: int64, **0-based** (whatever the file's convention);
- ``x``, ``y`` (and ``z`` for 3D): float64, **nm**, x along columns, y along rows, origin at the
  image's top-left *corner* (pixel j's centre at ``(j + 0.5)·pixel_size``), as ThunderSTORM and
  the SMLM Challenge; z in nm;
- optional float64 columns: ``sigma`` (nm), ``intensity`` (photons), ``offset`` (photons),
  ``bkgstd`` (photons), ``uncertainty`` (lateral, nm), ``uncertainty_z`` (axial, nm; written as
  ``"uncertainty_z [nm]"``), ``id`` (int64); any other column is carried under its own name.

Files:

- SMLM Challenge 2016 ground truth ``activations.csv``: header
  ``Ground-truth,frame,xnano,ynano,znano,intensity`` (fields may be space-padded), frames
  **1-based** in the file -> ``frame`` is returned 0-based (file frame − 1).
- ThunderSTORM CSV: quoted header ``"id","frame","x [nm]","y [nm]",["z [nm]",]"sigma [nm]",
  "intensity [photon]","offset [photon]","bkgstd [photon]","uncertainty_xy [nm]"[,"uncertainty_z [nm]"]``,
  frames **1-based** in the file. The writer writes ``id``, ``frame``, ``x``, ``y`` (``z``) always and
  an optional column *only when the table has it* (missing values are omitted, never written
  as 0, which would read as e.g. a perfect 0 nm uncertainty); extra columns follow under their
  own names. The reader accepts any subset of ThunderSTORM's columns as long as ``frame``,
  ``x`` and ``y`` are there (including its other spellings such as older versions'
  ``"uncertainty [nm]"``);
  positions in px need ``pixel_size_nm``.
- Picasso: HDF5 with a structured dataset ``/locs`` and a YAML sidecar (same name, ``.yaml``)
  with ``Width``, ``Height``, ``Frames``, ``Pixelsize`` (see :func:`write_picasso`).

All writers write atomically (:func:`starloc.io.atomic_path`). Malformed or foreign files
raise :class:`starloc.errors.InputError` with a one-line message naming the file.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, one_line
from .io import atomic_path, no_file, read_header_line, write_csv_rows

__all__ = [
    "ACTIVATIONS_HEADER",
    "THUNDERSTORM_COLUMNS",
    "read_activations",
    "read_bead_positions",
    "write_thunderstorm_csv",
    "read_thunderstorm_csv",
    "picasso_pixel_size",
    "is_thunderstorm_csv",
    "write_picasso",
    "read_picasso",
    "picasso_field_nm",
]

Table = dict[str, np.ndarray]

ACTIVATIONS_HEADER = ("Ground-truth", "frame", "xnano", "ynano", "znano", "intensity")

#: Table key -> ThunderSTORM header, in ThunderSTORM's column order (z only for 3D tables).
THUNDERSTORM_COLUMNS: dict[str, str] = {
    "id": "id",
    "frame": "frame",
    "x": "x [nm]",
    "y": "y [nm]",
    "z": "z [nm]",
    "sigma": "sigma [nm]",
    "intensity": "intensity [photon]",
    "offset": "offset [photon]",
    "bkgstd": "bkgstd [photon]",
    "uncertainty": "uncertainty_xy [nm]",
    "uncertainty_z": "uncertainty_z [nm]",  # as ThunderSTORM's 3D (astigmatic) results
}

#: Other spellings ThunderSTORM versions write, read as the same table key.
_THUNDERSTORM_ALIASES = {
    "uncertainty [nm]": "uncertainty",  # older ThunderSTORM versions
    "frame number": "frame",
}

_PX_COLUMNS = {"x [px]": "x", "y [px]": "y"}


def _read_rows(path: str | os.PathLike, what: str) -> tuple[Path, list[list[str]]]:
    p = Path(path)
    if not p.is_file():
        raise no_file(p, what)
    try:
        with open(p, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh, skipinitialspace=True))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read {str(p)!r} as a {what} CSV: {one_line(exc)}") from exc
    rows = [[c.strip() for c in r] for r in rows]
    return p, [r for r in rows if any(r)]


def _numbers(tokens: list[str], name: str, p: Path, integer: bool = False) -> np.ndarray:
    try:
        values = np.array([float(t) for t in tokens], dtype=np.float64)
    except ValueError as exc:
        raise InputError(f"{str(p)!r}: column {name!r} has a non-numeric value ({one_line(exc)})") from None
    if integer:
        if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
            raise InputError(f"{str(p)!r}: column {name!r} must hold integers")
        return values.astype(np.int64)
    return values


# --------------------------------------------------------------------------------------
# SMLM Challenge 2016 ground truth
# --------------------------------------------------------------------------------------


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_activations(path: str | os.PathLike) -> Table:
    """Read an SMLM Challenge 2016 ``activations.csv`` (ground truth).

    Returns ``{"id", "frame", "x", "y", "z", "intensity"}``: ``frame`` **0-based** (the file's
    1-based frame − 1), positions in nm (corner origin), ``intensity`` in photons (NaN where a
    row has no intensity field, as some challenge tools write). Space padding around fields
    and a trailing space after the header are accepted, and so are the same columns under
    plain names (``index,frame,x,y,z[,intensity]``) or without a header. InputError for a
    missing file, a header other than ``Ground-truth,frame,xnano,ynano,znano[,intensity]`` or
    those, short rows, non-numeric values or frames < 1.
    """
    p, rows = _read_rows(path, "activations")
    header = [h.lower() for h in (rows[0] if rows else [])]
    headerless = bool(rows) and 5 <= len(rows[0]) <= 6 and all(_is_number(v) for v in rows[0] if v)
    # the challenge's names, or the same columns named plainly (index,frame,x,y,z[,intensity])
    named = (len(header) in (5, 6) and header[1] == "frame" and [h[:1] for h in header[2:5]] == ["x", "y", "z"]
             and not any("[" in h for h in header))  # units in brackets: a ThunderSTORM table
    if not (headerless or named):
        found = ",".join(rows[0])[:80] if rows else "an empty file"
        raise InputError(
            f"{str(p)!r} is not an SMLM Challenge activations.csv: expected the header "
            f"{','.join(ACTIVATIONS_HEADER)} (or none, 5-6 numbers per row), found {found!r}"
        )
    first = 1 if headerless else 2
    body = rows[first - 1:]
    for lineno, r in enumerate(body, start=first):
        if len(r) < 5 or len(r) > 6 and any(r[6:]):
            raise InputError(f"{str(p)!r}: a row near line {lineno} has {len(r)} fields, expected 5 or 6")
    cols = [[r[k] if k < len(r) and r[k] else "nan" for r in body] for k in range(6)]
    frame = _numbers(cols[1], "frame", p, integer=True)
    if len(frame) and frame.min() < 1:
        raise InputError(f"{str(p)!r}: frames in activations.csv are 1-based, found frame {frame.min()}")
    return {
        "id": _numbers(cols[0], "Ground-truth", p, integer=True),
        "frame": frame - 1,
        "x": _numbers(cols[2], "xnano", p),
        "y": _numbers(cols[3], "ynano", p),
        "z": _numbers(cols[4], "znano", p),
        "intensity": _numbers(cols[5], "intensity", p),
    }


def _coordinate_column(name: str) -> tuple[str, str] | None:
    """``("x" | "y", unit)`` for a header naming a lateral coordinate (``x``, ``x_nm``,
    ``x [nm]``, ``X (px)``, ``xnano``), else None; unit ``""`` when the name states none."""
    n = name.strip().strip('"').lower()
    for axis in ("x", "y"):
        if n in (axis, f"{axis}nano"):
            return axis, "nm" if n.endswith("nano") else ""
        for sep in ("_", " [", " (", "[", "("):
            if n.startswith(axis + sep):
                return axis, n[len(axis) + len(sep):].rstrip("])").strip()
    return None


def read_bead_positions(path: str | os.PathLike) -> np.ndarray:
    """The beads' true lateral positions, an ``(n, 2)`` array of distinct ``(x, y)`` in nm
    (x along columns, origin at the image's top-left corner), from a CSV that names its ``x``
    and ``y`` columns (``x_nm``, ``x [nm]``, ``xnano``, or a bare ``x`` taken as nm; e.g. the
    SMLM Challenge's bead list or a ThunderSTORM table), or from an SMLM Challenge
    ``activations.csv`` without a header. Rows repeating a position (a bead listed once per
    z slice) count once. InputError for a missing or foreign file, positions stated in
    another unit than nm, non-numeric or non-finite values, or no row.
    """
    p, rows = _read_rows(path, "bead positions")
    header = rows[0] if rows else []
    columns = {c[0]: (i, c[1]) for i, c in ((i, _coordinate_column(h)) for i, h in enumerate(header)) if c}
    if {"x", "y"} <= set(columns):
        for axis, (_, unit) in columns.items():
            if unit not in ("", "nm", "nano"):
                raise InputError(f"{str(p)!r} gives bead {axis} in {unit!r}: bead positions must be in nm")
        body = rows[1:]
        for lineno, r in enumerate(body, start=2):
            if len(r) <= max(columns["x"][0], columns["y"][0]):
                raise InputError(f"{str(p)!r}: a row near line {lineno} has {len(r)} fields")
        xy = np.stack([_numbers([r[columns[a][0]] for r in body], a, p) for a in ("x", "y")], axis=1)
    elif header and all(_is_number(v) for v in header if v):
        table = read_activations(p)
        xy = np.stack([table["x"], table["y"]], axis=1)
    else:
        found = ",".join(header)[:80] if header else "an empty file"
        raise InputError(f"{str(p)!r} holds no bead positions: expected a header naming x and y columns in nm "
                         f"(e.g. x_nm,y_nm or \"x [nm]\",\"y [nm]\") or a challenge activations.csv, found {found!r}")
    if len(xy) == 0:
        raise InputError(f"{str(p)!r} lists no bead")
    if not np.isfinite(xy).all():
        raise InputError(f"{str(p)!r}: bead positions must be finite numbers")
    _, first = np.unique(xy.round(3), axis=0, return_index=True)
    return xy[np.sort(first)]


# --------------------------------------------------------------------------------------
# ThunderSTORM CSV
# --------------------------------------------------------------------------------------


def _validated_table(table: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], int]:
    cols = {str(k): np.asarray(v).reshape(-1) for k, v in table.items()}
    for key in ("frame", "x", "y"):
        if key not in cols:
            raise ValueError(f"a localization table needs a {key!r} column (has {sorted(cols)})")
    n = len(cols["frame"])
    for key, values in cols.items():
        if len(values) != n:
            raise ValueError(f"column {key!r} has {len(values)} values, 'frame' has {n}")
        if values.dtype.kind not in "biuf":
            raise ValueError(f"column {key!r} must be numeric, got dtype {values.dtype}")
    frame = cols["frame"]
    if n and frame.dtype.kind not in "iu":
        as_float = frame.astype(np.float64)
        if not (np.all(np.isfinite(as_float)) and np.all(as_float == np.round(as_float))):
            raise ValueError("frames must be integers")
    cols["frame"] = frame.astype(np.int64)
    if n and cols["frame"].min() < 0:
        raise ValueError("frames must be >= 0 (0-based in memory)")
    return cols, n


def write_thunderstorm_csv(path: str | os.PathLike, table: Mapping[str, Any]) -> Path:
    """Write a localization table as a ThunderSTORM CSV (atomically).

    ``table``: see the module docstring; ``frame`` 0-based (written +1), positions in nm.
    Columns: ``"id"`` (``table["id"]`` or 1..N), ``"frame"``, ``"x [nm]"``, ``"y [nm]"``,
    ``"z [nm]"`` if the table has ``z``, then ``sigma``, ``intensity``, ``offset``, ``bkgstd``,
    ``uncertainty`` under their ThunderSTORM names *if present* (absent ones are omitted), then
    any other column under its own name. Floats are written with Python's ``repr`` so that
    :func:`read_thunderstorm_csv` returns exactly the values written.
    """
    cols, n = _validated_table(table)
    cols.setdefault("id", np.arange(1, n + 1, dtype=np.int64))
    known = [k for k in THUNDERSTORM_COLUMNS if k in cols]
    extra = [k for k in cols if k not in THUNDERSTORM_COLUMNS]
    headers = set(THUNDERSTORM_COLUMNS.values()) | set(_THUNDERSTORM_ALIASES) | set(_PX_COLUMNS)
    for name in extra:
        if not name or any(ch in name for ch in ',"\r\n') or name != name.strip() or name in headers:
            raise ValueError(f"column {name!r} cannot be written as a ThunderSTORM column name")
    names = [THUNDERSTORM_COLUMNS[k] for k in known] + extra
    values = [cols[key] + 1 if key == "frame" else cols[key] for key in known + extra]

    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            fh.write(",".join(f'"{name}"' for name in names) + "\n")
            write_csv_rows(fh, values)
    return Path(path)


def read_thunderstorm_csv(path: str | os.PathLike, pixel_size_nm: float | None = None) -> Table:
    """Read a ThunderSTORM CSV (quoted or unquoted header) into a localization table.

    Returns ``frame`` 0-based (file frame − 1, int64), ``x``, ``y`` (``z`` if present) in nm
    and every other column: ThunderSTORM's known ones under the keys of
    :data:`THUNDERSTORM_COLUMNS` (``"uncertainty [nm]"`` also as ``uncertainty``), others
    under their header (e.g. ``"chi2"``, ``"sigma1 [nm]"``); ``id`` int64, the rest float64.
    Files with positions in px (``"x [px]"``) need ``pixel_size_nm`` (x_nm = x_px·pixel size).
    InputError for a missing/unreadable file, a header without frame and x/y columns (not a
    ThunderSTORM file), ragged rows, non-numeric values, non-integer frames or frames < 1.
    """
    p, rows = _read_rows(path, "ThunderSTORM")
    header = rows[0] if rows else []
    keys: list[str] = []
    for h in header:
        key = next((k for k, v in THUNDERSTORM_COLUMNS.items() if v == h), None)
        key = key or _THUNDERSTORM_ALIASES.get(h) or _PX_COLUMNS.get(h)
        if key is None and h in THUNDERSTORM_COLUMNS:  # e.g. a bare "x": unit unknown, foreign
            key = ""
        keys.append(key if key is not None else h)
    in_px = any(h in _PX_COLUMNS for h in header)
    if not {"frame", "x", "y"} <= set(keys) or "" in keys:
        found = ",".join(header)[:80] if header else "an empty file"
        raise InputError(
            f"{str(p)!r} is not a ThunderSTORM CSV: its header needs \"frame\", \"x [nm]\" and "
            f"\"y [nm]\" columns, found {found!r}"
        )
    if len(set(keys)) != len(keys):
        raise InputError(f"{str(p)!r}: duplicate columns in the header")
    if in_px and not (pixel_size_nm and math.isfinite(pixel_size_nm) and pixel_size_nm > 0):
        raise InputError(f"{str(p)!r} gives positions in px; pass the camera pixel size in nm to read it")
    body = rows[1:]
    for lineno, r in enumerate(body, start=2):
        if len(r) != len(keys):
            raise InputError(f"{str(p)!r}: a row near line {lineno} has {len(r)} fields, expected {len(keys)}")
    cols = list(zip(*body)) if body else [()] * len(keys)
    table: Table = {}
    for key, tokens in zip(keys, cols):
        table[key] = _numbers(list(tokens), key, p, integer=key in ("frame", "id"))
    if len(table["frame"]) and table["frame"].min() < 1:
        raise InputError(
            f"{str(p)!r}: frames in ThunderSTORM files are 1-based, found frame {table['frame'].min()}"
        )
    table["frame"] = table["frame"] - 1
    if in_px:
        for h, key in _PX_COLUMNS.items():
            if h in header:
                table[key] = table[key] * float(pixel_size_nm)
    order = [k for k in ("frame", "x", "y", "z") if k in table]
    return {**{k: table[k] for k in order}, **{k: v for k, v in table.items() if k not in order}}


def is_thunderstorm_csv(path: str | os.PathLike) -> bool:
    """Cheap sniff: a file whose first line names frame and x/y [nm|px] columns. Never raises."""
    first = read_header_line(path)
    if first is None:
        return False
    names = {n.strip().strip('"') for n in first.split(",")}
    return "frame" in names and (
        {"x [nm]", "y [nm]"} <= names or {"x [px]", "y [px]"} <= names
    )


# --------------------------------------------------------------------------------------
# Picasso HDF5 + YAML
# --------------------------------------------------------------------------------------


def write_picasso(
    path: str | os.PathLike,
    table: Mapping[str, Any],
    *,
    pixel_size_nm: float,
    width: int,
    height: int,
    n_frames: int | None = None,
    precision_nm: float | None = None,
    origin: str = "pixel-center",
    info: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write a localization table as Picasso HDF5 (``/locs``) plus its YAML sidecar.

    ``path`` is the ``.hdf5`` file; the sidecar is ``path`` with suffix ``.yaml``. Both are
    written atomically, as a pair (both complete before either replaces the old one).
    Returns ``(hdf5_path, yaml_path)``.

    ``/locs`` is a structured dataset with fields ``frame`` (uint32, 0-based), ``x``, ``y``
    (float32, camera pixels), ``photons`` (from ``intensity``), ``sx``, ``sy`` (from ``sigma``,
    nm -> px), ``bg`` (from ``offset``), ``lpx``, ``lpy`` (from ``uncertainty``, nm -> px),
    then ``z`` (float32, **nm**, as Picasso stores z) for 3D tables, and ``lpz`` (float32, nm, as
    Picasso's 3D fits) from ``uncertainty_z`` when the table has it. Missing photons, sigma
    and offset are written as 0. Picasso drops localizations whose ``lpx``/``lpy`` are not
    > 0 when it loads a file, so a table without ``uncertainty`` needs ``precision_nm`` (one
    value for all); ValueError otherwise.

    Pixel convention: Picasso Localize reports a spot fitted in the centre of camera pixel
    column j at ``x = j`` (its fitters add the sub-pixel offset from the box's central pixel to
    that pixel's integer index), i.e. pixel centres at integers. With the default
    ``origin="pixel-center"``, ``x_px = x_nm / pixel_size_nm - 0.5`` (same for y), which puts a
    localization where Picasso Localize would have put it. Picasso's own ThunderSTORM import
    (``picasso csv2hdf``) does not subtract the half pixel; ``origin="corner"``
    (``x_px = x_nm / pixel_size_nm``) reproduces that. (Picasso Render bins ``floor(x)``, and
    on load keeps only ``0 <= x < Width``, ``0 <= y < Height``: with the default convention the
    outer half of the first row/column is dropped there, as for Picasso Localize's own output.)

    YAML sidecar (``yaml.dump_all`` of one document, as Picasso writes): ``Width``, ``Height``,
    ``Frames`` (``n_frames`` or max frame + 1), ``Pixelsize`` (nm), ``Generated by``, plus
    ``info``. Needs h5py and PyYAML (imported here only).
    """
    import h5py
    import yaml

    cols, n = _validated_table(table)
    if not (isinstance(pixel_size_nm, (int, float)) and math.isfinite(pixel_size_nm) and pixel_size_nm > 0):
        raise ValueError(f"pixel_size_nm must be a positive number, got {pixel_size_nm!r}")
    for name, v in (("width", width), ("height", height)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer number of camera pixels, got {v!r}")
    if origin not in ("pixel-center", "corner"):
        raise ValueError(f"origin must be 'pixel-center' or 'corner', got {origin!r}")
    frames_needed = int(cols["frame"].max()) + 1 if n else 0
    if n_frames is None:
        n_frames = frames_needed
    elif n_frames < frames_needed:
        raise ValueError(f"n_frames={n_frames} but the table has frame index {frames_needed - 1}")
    if "uncertainty" in cols:
        lp = cols["uncertainty"].astype(np.float64)
    elif precision_nm is not None and math.isfinite(precision_nm) and precision_nm > 0:
        lp = np.full(n, float(precision_nm))
    else:
        raise ValueError(
            "Picasso needs a localization precision > 0 for every localization: the table has no "
            "'uncertainty' column, pass precision_nm"
        )
    shift = 0.5 if origin == "pixel-center" else 0.0
    zeros = np.zeros(n)
    fields: list[tuple[str, np.dtype, np.ndarray]] = [
        ("frame", np.dtype(np.uint32), cols["frame"]),
        ("x", np.dtype(np.float32), cols["x"] / pixel_size_nm - shift),
        ("y", np.dtype(np.float32), cols["y"] / pixel_size_nm - shift),
        ("photons", np.dtype(np.float32), cols.get("intensity", zeros)),
        ("sx", np.dtype(np.float32), cols.get("sigma", zeros) / pixel_size_nm),
        ("sy", np.dtype(np.float32), cols.get("sigma", zeros) / pixel_size_nm),
        ("bg", np.dtype(np.float32), cols.get("offset", zeros)),
        ("lpx", np.dtype(np.float32), lp / pixel_size_nm),
        ("lpy", np.dtype(np.float32), lp / pixel_size_nm),
    ]
    if "z" in cols:
        fields.append(("z", np.dtype(np.float32), cols["z"]))
        if "uncertainty_z" in cols:
            fields.append(("lpz", np.dtype(np.float32), cols["uncertainty_z"]))
    locs = np.empty(n, dtype=[(name, dt) for name, dt, _ in fields])
    for name, _, values in fields:
        locs[name] = values

    from . import __version__

    doc = {
        "Width": int(width),
        "Height": int(height),
        "Frames": int(n_frames),
        "Pixelsize": float(pixel_size_nm),
        "Generated by": f"napari-starloc {__version__}",
    }
    doc.update(dict(info or {}))
    h5_path = Path(path)
    yaml_path = h5_path.with_suffix(".yaml")
    if yaml_path == h5_path:
        raise ValueError(f"{str(h5_path)!r}: give the HDF5 file a .hdf5 suffix")
    # Both files are complete before either replaces its old one, and the two renames follow
    # each other: a failure or Ctrl-C while writing (the HDF5 takes long) leaves the old pair
    # whole. Writing one file after the other left a new YAML beside the old HDF5.
    with atomic_path(yaml_path) as yaml_tmp, atomic_path(h5_path) as h5_tmp:
        with h5py.File(h5_tmp, "w") as fh:
            fh.create_dataset("locs", data=locs)
        with open(yaml_tmp, "w", encoding="utf-8") as fh:
            yaml.dump_all([doc], fh, default_flow_style=False)
    return h5_path, yaml_path


def read_picasso(path: str | os.PathLike, pixel_size_nm: float | None = None,
                 origin: str = "pixel-center") -> Table:
    """Read Picasso HDF5 localizations (``/locs``, as :func:`write_picasso` or Picasso itself
    writes them) into a localization table: ``frame`` (0-based, int64), ``x``, ``y`` in nm from
    the image's top-left corner, ``z`` (nm) when present, ``uncertainty`` (nm, the mean of
    ``lpx`` and ``lpy``) and ``uncertainty_z`` (``lpz``) where they are > 0, ``intensity`` from
    ``photons`` when any is non-zero.

    The pixel size is the YAML sidecar's ``Pixelsize`` (nm), or ``pixel_size_nm`` (which wins).
    ``origin`` as in :func:`write_picasso`: Picasso's pixel centres at integers, so
    ``x_nm = (x_px + 0.5) * pixel size`` by default. InputError for a file that is no HDF5, has no
    ``/locs`` with frame, x and y, or whose pixel size is not known."""
    import h5py

    p = Path(path)
    if not p.is_file():
        raise no_file(p, "localization")
    try:
        with h5py.File(p, "r") as fh:
            if not isinstance(fh.get("locs"), h5py.Dataset):
                raise InputError(f"{str(p)!r} has no /locs dataset: not a Picasso localization file")
            locs = fh["locs"][()]
    except OSError as exc:
        raise InputError(f"cannot read {str(p)!r} as HDF5: {one_line(exc)}") from None
    names = locs.dtype.names or ()
    if not {"frame", "x", "y"} <= set(names):
        raise InputError(f"{str(p)!r}: /locs needs frame, x and y fields, has {', '.join(names) or 'none'}")
    ps = pixel_size_nm if pixel_size_nm is not None else _picasso_value(p.with_suffix(".yaml"), "Pixelsize")
    if ps is None or not (math.isfinite(ps) and ps > 0):
        raise InputError(f"{str(p)!r}: the pixel size is unknown (no Pixelsize in {p.with_suffix('.yaml').name}); "
                         "give the camera pixel size in nm")
    if origin not in ("pixel-center", "corner"):
        raise ValueError(f"origin must be 'pixel-center' or 'corner', got {origin!r}")
    shift = 0.5 if origin == "pixel-center" else 0.0
    table: Table = {"frame": locs["frame"].astype(np.int64),
                    "x": (locs["x"].astype(np.float64) + shift) * ps,
                    "y": (locs["y"].astype(np.float64) + shift) * ps}
    if "z" in names:
        table["z"] = locs["z"].astype(np.float64)
    if {"lpx", "lpy"} <= set(names) and np.all(locs["lpx"] > 0) and np.all(locs["lpy"] > 0):
        table["uncertainty"] = (locs["lpx"].astype(np.float64) + locs["lpy"]) / 2 * ps
    if "lpz" in names and np.all(locs["lpz"] > 0):
        table["uncertainty_z"] = locs["lpz"].astype(np.float64)
    if "photons" in names and np.any(locs["photons"] != 0):
        table["intensity"] = locs["photons"].astype(np.float64)
    return table


def picasso_field_nm(path: str | os.PathLike, pixel_size_nm: float | None = None) -> tuple[float, float] | None:
    """``(width, height)`` in nm of the camera frames a Picasso HDF5 file's localizations come
    from: the YAML sidecar's ``Width`` and ``Height`` (camera pixels) times its ``Pixelsize``, or
    ``pixel_size_nm`` (which wins). None where the sidecar does not state them. Never raises."""
    yaml_path = Path(path).with_suffix(".yaml")
    ps = pixel_size_nm if pixel_size_nm is not None else _picasso_value(yaml_path, "Pixelsize")
    width, height = _picasso_value(yaml_path, "Width"), _picasso_value(yaml_path, "Height")
    if ps is None or width is None or height is None:
        return None
    field = (width * ps, height * ps)
    return field if all(math.isfinite(v) and v > 0 for v in field) else None


def picasso_pixel_size(path: str | os.PathLike) -> float | None:
    """The camera pixel size (nm) a Picasso HDF5 file's YAML sidecar states (``Pixelsize``), or
    None. Never raises."""
    ps = _picasso_value(Path(path).with_suffix(".yaml"), "Pixelsize")
    return ps if ps is not None and math.isfinite(ps) and ps > 0 else None


def _plain_yaml_loader():
    """A safe YAML loader that reads Python-specific tags (``!!python/tuple``, which PyYAML's
    default dumper writes for tuples in Picasso's info) as plain lists, mappings and scalars:
    with ``safe_load`` the whole file, ``Pixelsize`` included, would be unreadable. Nothing is
    constructed but plain data, so no code runs."""
    import yaml

    class PlainLoader(yaml.SafeLoader):
        pass

    def plain(loader, suffix, node):
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node, deep=True)
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node, deep=True)
        return loader.construct_scalar(node)

    PlainLoader.add_multi_constructor("tag:yaml.org,2002:python/", plain)
    return PlainLoader


def _picasso_value(yaml_path: Path, key: str) -> float | None:
    """The number under ``key`` in the first YAML document that states one, or None."""
    import yaml

    try:
        with open(yaml_path, encoding="utf-8") as fh:
            for doc in yaml.load_all(fh, Loader=_plain_yaml_loader()):
                if isinstance(doc, dict) and key in doc:
                    return float(doc[key])
    except (OSError, yaml.YAMLError, TypeError, ValueError):
        return None
    return None
