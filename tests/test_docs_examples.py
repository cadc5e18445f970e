"""The Python examples of the docs run as written, on tiny data, so the scripting API they show
cannot drift from the code. Only the training length and the inputs are the test's own."""

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks() -> list[tuple[str, str]]:
    """``(file name, code)`` of every fenced ``python`` block of the README and docs."""
    return [(doc.name, code) for doc in DOCS
            for code in re.findall(r"^```python\n(.*?)^```", doc.read_text(encoding="utf-8"), re.M | re.S)]


def _kind(code: str) -> str:
    kinds = {kind for kind in ("lodestar", "deeploco") if f"from starloc.{kind}" in code}
    assert len(kinds) == 1, f"a docs example should use one method; add a runner for:\n{code}"
    return kinds.pop()


def test_every_docs_example_has_a_runner():
    kinds = [_kind(code) for _, code in python_blocks()]
    assert sorted(set(kinds)) == ["deeploco", "lodestar"]


def _short_lodestar_training(monkeypatch):
    monkeypatch.setattr("starloc.lodestar.training.step_budget", lambda config, shapes: (200, 100))


PARTICLE = np.array([79.3, 108.6])  # (row, col) px of the particle in the docs' crop


def _lodestar_inputs(folder: Path) -> None:
    from starloc.sim import render

    # one point particle inside the docs' crop (row 59, col 89, 40 x 40) and two more elsewhere
    image = 100 * render("point", (160, 160), np.array([PARTICLE, [30.0, 30.0], [130.0, 40.0]])) + 10
    tifffile.imwrite(folder / "scene.tif", np.random.default_rng(0).poisson(image).astype(np.uint16))


def _short_deeploco_training(monkeypatch):
    from starloc.deeploco import training

    @dataclass(frozen=True)
    class Short(training.DeepLocoTrainConfig):
        steps: int = 6
        batch: int = 4
        conv_widths: tuple[int, int, int] = (4, 8, 8)
        val_size: int = 0
        calibration_frames: int = 0

    monkeypatch.setattr(training, "DeepLocoTrainConfig", Short)


def _deeploco_inputs(folder: Path) -> None:
    from starloc.deeploco.demo import bundled_bead_stack
    from tests.conftest import simulated_adu_stack

    shutil.copy(bundled_bead_stack(), folder / "beads-AS.tif")
    tifffile.imwrite(folder / "stack.tif", simulated_adu_stack(4, (32, 32), (1, 3)), photometric="minisblack")


RUNNERS = {"lodestar": (_short_lodestar_training, _lodestar_inputs),
           "deeploco": (_short_deeploco_training, _deeploco_inputs)}


@pytest.mark.parametrize("doc, code", python_blocks(), ids=lambda v: v if v.endswith(".md") else "")
def test_docs_example_runs(doc, code, tmp_path, monkeypatch, one_thread):
    shorten, make_inputs = RUNNERS[_kind(code)]
    shorten(monkeypatch)
    make_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, f"{doc} example", "exec"), namespace)
    if "found" in namespace:  # the LodeSTAR example: it found the particle in its crop, and wrote its files
        nearest = np.linalg.norm(namespace["found"].positions[:, :2] - PARTICLE, axis=1).min()
        assert nearest < 0.5 and (tmp_path / "my-detections.csv").is_file() and (tmp_path / "my-model.pt").is_file()
        crop_origin = (59, 89)
        assert np.hypot(*(np.array([namespace["row"], namespace["col"]]) + crop_origin - PARTICLE)) < 0.5
    if "table" in namespace:  # the DeepLoco example: a localization table of the stack's frames
        assert {"frame", "x", "y"} <= set(namespace["table"])
