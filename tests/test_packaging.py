"""Packaging contracts: the core never imports a GUI toolkit, the manifest validates and ships."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import starloc

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "starloc"
GUI_MODULES = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "superqt")

# Imports every starloc module outside starloc.gui (without importing starloc.gui, which
# pkgutil.walk_packages would do) and reports what it imported and which GUI modules got loaded.
_BOUNDARY_SCRIPT = r"""
import importlib, json, pkgutil, sys

GUI = {gui!r}

def walk(path, prefix):
    for info in pkgutil.iter_modules(path, prefix):
        if info.name == "starloc.gui" or info.name.startswith("starloc.gui."):
            continue
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue
        importlib.import_module(info.name)
        yield info.name
        if info.ispkg:
            yield from walk(sys.modules[info.name].__path__, info.name + ".")

import starloc, starloc.io, starloc.errors
names = ["starloc"] + list(walk(starloc.__path__, "starloc."))
leaked = sorted(m for m in sys.modules if m.split(".")[0] in GUI)
print(json.dumps({{"imported": names, "leaked": leaked}}))
"""


def test_core_imports_no_gui_toolkit():
    script = _BOUNDARY_SCRIPT.format(gui=GUI_MODULES)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"importing the core failed:\n{proc.stderr}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"starloc", "starloc.io", "starloc.errors"} <= set(result["imported"])
    assert not any(n.startswith("starloc.gui") for n in result["imported"])
    assert result["leaked"] == [], f"core modules imported GUI modules: {result['leaked']}"


_GUI_IMPORT = re.compile(
    r"^\s*(?:from|import)\s+(?:%s)\b" % "|".join(re.escape(m) for m in GUI_MODULES), re.MULTILINE
)


def test_core_source_has_no_gui_imports():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if rel.parts[0] == "gui":
            continue
        for match in _GUI_IMPORT.finditer(path.read_text(encoding="utf-8")):
            line = path.read_text(encoding="utf-8")[: match.start()].count("\n") + 1
            offenders.append(f"src/starloc/{rel.as_posix()}:{line}: {match.group(0).strip()}")
    assert offenders == [], "GUI imports outside starloc/gui:\n" + "\n".join(offenders)


def test_root_manifest_is_a_symlink_to_the_packaged_one():
    root = ROOT / "napari.yaml"
    assert root.is_symlink(), "napari.yaml at the repository root must be a symlink"
    assert root.resolve() == (SRC / "napari.yaml").resolve()


def test_manifest_found_through_entry_point():
    eps = importlib.metadata.entry_points(group="napari.manifest")
    ours = [ep for ep in eps if ep.name == "napari-starloc"]
    assert len(ours) == 1, "napari-starloc is not installed (pip install -e .)"
    assert ours[0].value == "starloc:napari.yaml"
    spec = importlib.util.find_spec("starloc")
    manifest = Path(spec.origin).parent / "napari.yaml"
    assert manifest.is_file()


def test_manifest_valid_with_npe2():
    npe2 = pytest.importorskip("npe2", reason="npe2 is not installed (pip install -e '.[gui]')")
    manifest = npe2.PluginManifest.from_distribution("napari-starloc")
    assert manifest.name == "napari-starloc"
    assert 3 <= len(manifest.display_name) <= 90
    for command in manifest.contributions.commands or []:
        assert command.id.startswith("napari-starloc.")
    proc = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "napari-starloc", "--imports"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_wheel_contains_manifest(tmp_path):
    """Build a wheel (about 5-10 s) from a copy of the project and look inside."""
    pytest.importorskip("setuptools")
    pytest.importorskip("wheel")
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "napari.yaml"):
        if (ROOT / name).exists() or (ROOT / name).is_symlink():
            shutil.copy(ROOT / name, project / name, follow_symlinks=False)
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = out.glob("napari_starloc-*.whl")
    assert f"-{starloc.__version__}-" in wheel.name
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        manifest = zf.read("starloc/napari.yaml").decode()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entry_text = zf.read(entry_points).decode()
    assert manifest == (SRC / "napari.yaml").read_text()
    assert "starloc/io.py" in names and "starloc/errors.py" in names
    assert "napari.yaml" not in names, "the root symlink must not ship as a top-level file"
    assert not any(n.startswith("tests/") for n in names)
    assert "[napari.manifest]" in entry_text and "napari-starloc = starloc:napari.yaml" in entry_text
    assert "starloc = starloc.cli:main" in entry_text
