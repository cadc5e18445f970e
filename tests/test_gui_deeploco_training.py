"""The DeepLoco widget's Train tab under Xvfb: bead z-stack layer → a few training steps (real
worker) → model file written and loaded by the Localize tab; cancel; parametric PSFs; cameras;
bad input.

Tiny networks and a handful of steps: these check the wiring (what reaches the core, what is
written, what the user sees), not accuracy.
"""

import numpy as np
import pytest
import tifffile

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from starloc.deeploco.camera import EMCCD  # noqa: E402
from starloc.deeploco.demo import BUNDLED_Z0, BUNDLED_Z_STEP, bundled_bead_stack  # noqa: E402
from starloc.deeploco.model import DeepLoco  # noqa: E402
from starloc.gui import deeploco_training as dt  # noqa: E402
from starloc.gui import deeploco_widget as dw  # noqa: E402

TINY = {"conv_widths": (4, 8, 8), "n_candidates": 8, "batch": 2, "val_size": 4, "val_every": 2,
        "calibration_frames": 0}


@pytest.fixture
def messages(monkeypatch):
    seen = {"error": [], "info": []}
    for module in (dt, dw):
        monkeypatch.setattr(module, "show_error", seen["error"].append)
        monkeypatch.setattr(module, "show_info", seen["info"].append)
    return seen


@pytest.fixture(scope="module")
def beads():
    return tifffile.imread(bundled_bead_stack())  # (76, 40, 40) uint16 ADU, z every 20 nm


def _panel(make_napari_viewer, beads=None, steps=3):
    viewer = make_napari_viewer()
    widget = dw.DeepLocoWidget(viewer)
    viewer.window.add_dock_widget(widget)
    if beads is not None:
        viewer.add_image(beads, name="beads")
    panel = widget.train_panel
    panel.extra_settings = dict(TINY)
    panel.steps_spin.setValue(steps)
    return viewer, widget, panel


def test_train_from_a_bead_layer_in_a_worker_writes_and_loads_the_model(make_napari_viewer, qtbot, messages,
                                                                       beads, tmp_path):
    viewer, widget, panel = _panel(make_napari_viewer, beads)
    assert panel.psf_combo.currentText() == "beads"
    panel.z_step_spin.setValue(BUNDLED_Z_STEP)
    assert panel.z0_spin.value() == BUNDLED_Z0  # the focus at the middle slice
    assert panel.camera_combo.currentText() == "SMLM 2016 EMCCD"
    assert panel.camera_spins["e_per_adu"].value() == 45.0
    out = tmp_path / "beads.pt"
    panel.output_edit.setText(str(out))
    with qtbot.waitSignal(panel.job_finished, timeout=120_000) as blocker:
        assert panel.train() is not None
        assert not panel.train_button.isEnabled() and panel.cancel_button.isEnabled()
    assert blocker.args == ["returned"], messages
    assert panel.train_button.isEnabled() and not panel.cancel_button.isEnabled()
    assert panel.progress.value() == 3
    assert "model written to" in panel.status.text()
    told = [m for m in messages["info"] if "model written to" in m]
    assert len(told) == 1 and "(PSF of 'beads' averaged over 1 bead(s))" in told[0]  # the bundled crop: 1 bead

    model = DeepLoco.load(out)
    assert model.config.dim == 3 and model.config.conv_widths == (4, 8, 8)
    assert model.psf.z_range == (-750.0, 750.0)
    assert model.camera.to_dict() == EMCCD.smlm2016().to_dict()
    training = model.metadata["training"]
    assert training["steps_done"] == 3
    assert training["simulator"]["photons_range"] == [500.0, 20000.0]
    assert model.metadata["source"]["command"] == "napari DeepLoco widget"
    # the Localize tab now holds the new model
    assert widget.model_path == out and widget.tabs.currentIndex() == 0
    assert "3D, z -750..750 nm, 100 nm/px, EMCCD" in widget.model_label.text()
    assert messages["error"] == []


def test_same_form_same_seed_same_model(make_napari_viewer, messages, beads, tmp_path):
    viewer, widget, panel = _panel(make_napari_viewer, beads, steps=2)
    panel.use_threads = False
    panel.in_focus_check.setChecked(True)
    weights = []
    for name in ("a.pt", "b.pt"):
        panel.output_edit.setText(str(tmp_path / name))
        panel.train()
        model = DeepLoco.load(tmp_path / name)
        assert model.config.dim == 2 and model.psf.lateral  # 2D, emitters within +-DEFOCUS_2D of focus
        weights.append(model.net.state_dict())
    for key in weights[0]:
        np.testing.assert_array_equal(weights[0][key].numpy(), weights[1][key].numpy())


def test_cancel_writes_nothing(make_napari_viewer, qtbot, messages, beads, tmp_path):
    viewer, widget, panel = _panel(make_napari_viewer, beads, steps=100_000)
    out = tmp_path / "never.pt"
    panel.output_edit.setText(str(out))
    with qtbot.waitSignal(panel.job_finished, timeout=120_000) as blocker:
        panel.train()
        qtbot.waitUntil(lambda: panel.progress.value() >= 1, timeout=60_000)
        panel.cancel()
    assert blocker.args == ["aborted"]
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert "nothing written" in panel.status.text()
    assert panel.train_button.isEnabled() and widget.model is None


def test_closing_the_dock_stops_the_training(make_napari_viewer, qtbot, messages, beads, tmp_path):
    viewer, widget, panel = _panel(make_napari_viewer, beads, steps=100_000)
    out = tmp_path / "never.pt"
    panel.output_edit.setText(str(out))
    panel.train()
    qtbot.waitUntil(lambda: panel.progress.value() >= 1, timeout=60_000)
    worker = panel.jobs.worker
    viewer.window.remove_dock_widget(widget)  # what the dock's close button does
    qtbot.waitUntil(lambda: not worker.is_running, timeout=60_000)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    viewer.layers.remove("beads")  # the closed widget no longer follows the layers
    assert messages["error"] == []


def test_parametric_psfs_and_a_photon_camera_need_no_beads(make_napari_viewer, messages, tmp_path):
    viewer, widget, panel = _panel(make_napari_viewer)
    panel.use_threads = False
    assert [panel.psf_combo.itemText(i) for i in range(panel.psf_combo.count())] == [dt.GAUSSIAN, dt.ASTIGMATIC]
    assert not panel.z_step_spin.isEnabled()
    panel.camera_combo.setCurrentText("none (photons)")
    assert not any(s.isEnabled() for s in panel.camera_spins.values())
    panel.photons_spins[0].setValue(1000)
    panel.photons_spins[1].setValue(5000)
    assert panel.variation_spin.value() == 0.5  # recipes.BACKGROUND_VARIATION
    for psf, dim, variation in ((dt.GAUSSIAN, 2, 0.5), (dt.ASTIGMATIC, 3, 0.0)):
        panel.psf_combo.setCurrentText(psf)
        panel.variation_spin.setValue(variation)
        panel.output_edit.setText(str(tmp_path / "m"))  # ".pt" is added
        panel.train()
        model = DeepLoco.load(tmp_path / "m.pt")
        assert model.config.dim == dim and model.camera is None
        simulated = model.metadata["training"]["simulator"]
        assert simulated["photons_range"] == [1000.0, 5000.0] and simulated["background_variation"] == variation
    assert messages["error"] == []


def test_camera_presets_fill_the_form_and_reach_the_model(make_napari_viewer, messages, tmp_path):
    viewer, widget, panel = _panel(make_napari_viewer)
    panel.use_threads = False
    panel.camera_combo.setCurrentText("sCMOS")
    assert not panel.camera_spins["em_gain"].isEnabled()
    assert panel.camera_spins["read_noise"].value() == dt.preset_values("scmos")["read_noise"]
    panel.camera_spins["baseline"].setValue(400)
    panel.output_edit.setText(str(tmp_path / "s.pt"))
    panel.train()
    camera = DeepLoco.load(tmp_path / "s.pt").camera.to_dict()
    assert camera["kind"] == "SCMOS" and camera["baseline"] == 400.0


def test_bead_positions_centre_the_psf_on_the_beads_true_positions(make_napari_viewer, messages, beads, tmp_path):
    from starloc.deeploco.psf import EmpiricalPSF

    viewer, widget, panel = _panel(make_napari_viewer, beads, steps=1)
    panel.use_threads = False
    panel.z_step_spin.setValue(BUNDLED_Z_STEP)
    (cx, cy), = EmpiricalPSF.from_bead_stack(beads, z_step=BUNDLED_Z_STEP).meta["bead_centres_nm"]
    table = tmp_path / "beads.csv"
    table.write_text(f"x_nm,y_nm\n{cx - 25:.3f},{cy + 10:.3f}\n")
    panel.output_edit.setText(str(tmp_path / "m.pt"))
    panel.positions_edit.setText(str(tmp_path / "missing.csv"))
    panel.train()
    assert messages["error"][-1].startswith("DeepLoco: bead positions file") and "not found" in messages["error"][-1]
    assert not (tmp_path / "m.pt").exists()
    panel.positions_edit.setText(str(table))
    panel.train()
    told = [m for m in messages["info"] if "model written to" in m]
    assert len(told) == 1 and "the beads' images are centred +25 nm in x, -10 nm in y from them" in told[0]
    meta = DeepLoco.load(tmp_path / "m.pt").psf.meta
    assert meta["anchor"] == "positions" and meta["centroid_offset_nm"] == pytest.approx([25.0, -10.0], abs=0.01)
    panel.psf_combo.setCurrentText(dt.GAUSSIAN)  # no beads: the file has nothing to centre
    assert not panel.positions_edit.isEnabled()
    panel.output_edit.setText(str(tmp_path / "g.pt"))
    panel.train()
    assert "anchor" not in DeepLoco.load(tmp_path / "g.pt").psf.to_dict().get("meta", {})


def test_bad_input_is_one_notification_and_writes_nothing(make_napari_viewer, messages, beads, tmp_path):
    viewer, widget, panel = _panel(make_napari_viewer, beads)
    panel.use_threads = False
    assert panel.train() is None
    assert "choose where to save" in messages["error"][-1]

    panel.output_edit.setText(str(tmp_path / "missing" / "m.pt"))
    panel.train()
    assert "does not exist" in messages["error"][-1]

    panel.output_edit.setText(str(tmp_path / "m.pt"))
    panel.photons_spins[0].setValue(9000)
    panel.photons_spins[1].setValue(100)
    panel.train()
    assert "photons range runs backwards" in messages["error"][-1]
    panel.photons_spins[1].setValue(20000)

    flat = np.full((20, 40, 40), 100, np.uint16)  # no bead in it
    viewer.add_image(flat, name="no beads")
    panel.psf_combo.setCurrentText("no beads")
    panel.train()
    assert "bead" in messages["error"][-1] and messages["error"][-1].startswith("DeepLoco: ")
    assert "failed" in panel.status.text() and panel.train_button.isEnabled()

    nan = beads.astype(np.float32)
    nan[3, 5, 5] = np.nan
    viewer.add_image(nan, name="nan beads")
    panel.psf_combo.setCurrentText("nan beads")
    panel.train()
    assert "NaN" in messages["error"][-1] or "nan" in messages["error"][-1].lower()
    assert list(tmp_path.iterdir()) == [] and widget.model is None
    # 2D and RGB layers are not bead stacks
    viewer.add_image(beads[0], name="one slice")
    viewer.add_image(np.zeros((8, 8, 3), np.uint8), name="rgb", rgb=True)
    names = [panel.psf_combo.itemText(i) for i in range(panel.psf_combo.count())]
    assert "one slice" not in names and "rgb" not in names


def test_pixel_size_and_z_step_come_from_a_layer_in_physical_units(make_napari_viewer, messages, beads):
    viewer, widget, panel = _panel(make_napari_viewer)
    viewer.add_image(beads, name="beads", scale=(0.02, 0.16, 0.16), units=("um", "um", "um"))
    assert panel.pixel_spin.value() == pytest.approx(160.0)
    assert panel.z_step_spin.value() == pytest.approx(20.0)
    assert panel.z0_spin.value() == pytest.approx(-750.0)
    panel.pixel_spin.setValue(110.0)  # the user's values survive unrelated layer events
    panel.z0_spin.setValue(-600.0)
    viewer.add_image(beads[0], name="slice")
    assert panel.pixel_spin.value() == 110.0 and panel.z0_spin.value() == -600.0
    panel.z_step_spin.setValue(10.0)  # a new z step centres the stack again
    assert panel.z0_spin.value() == pytest.approx(-375.0)


def test_pixel_size_and_z_step_come_from_the_tiff_a_layer_was_opened_from(make_napari_viewer, messages, beads,
                                                                          tmp_path):
    path = tmp_path / "beads.tif"
    tifffile.imwrite(path, beads, imagej=True, resolution=(1 / 0.16, 1 / 0.16),
                     metadata={"unit": "um", "spacing": 0.02, "axes": "ZYX"})
    viewer, widget, panel = _panel(make_napari_viewer)
    (layer,) = viewer.open(path, plugin="napari")
    assert str(layer.source.path) == str(path)
    assert panel.psf_combo.currentText() == layer.name
    assert panel.pixel_spin.value() == pytest.approx(160.0) and panel.z_step_spin.value() == pytest.approx(20.0)


def test_psf_choices_follow_the_layers(make_napari_viewer, messages, beads):
    viewer, widget, panel = _panel(make_napari_viewer)
    layer = viewer.add_image(beads, name="beads")
    assert panel.psf_combo.currentText() == "beads" and panel.z_step_spin.isEnabled()
    layer.name = "AS beads"
    assert panel.psf_combo.currentText() == "AS beads"
    viewer.layers.remove(layer)
    assert panel.psf_combo.currentText() == dt.GAUSSIAN and not panel.z_step_spin.isEnabled()
    # an SMLM time-lapse is 3D too: a stack whose first axis is a length (z) is offered first
    viewer.add_image(np.zeros((5, 16, 16), np.uint16), name="smlm", units=("pixel", "nm", "nm"))
    assert panel.psf_combo.currentText() == "smlm"  # the only 3D layer
    viewer.add_image(beads, name="z-stack", scale=(20, 100, 100), units=("nm", "nm", "nm"))
    names = [panel.psf_combo.itemText(i) for i in range(panel.psf_combo.count())]
    assert names == ["z-stack", "smlm", dt.GAUSSIAN, dt.ASTIGMATIC]
    assert panel.psf_combo.currentText() == "z-stack"  # a z-stack opened later replaces the guess
    panel.psf_combo.setCurrentText("smlm")
    panel.psf_combo.activated.emit(1)  # the user's own pick
    viewer.add_image(beads, name="more beads", scale=(20, 100, 100), units=("nm", "nm", "nm"))
    assert panel.psf_combo.currentText() == "smlm"


def test_the_samples_from_beads_to_a_rendered_csv(make_napari_viewer, qtbot, messages, tmp_path):
    """The napari flow of docs/deeploco.md on the bundled samples: train on the bead sample,
    localize the SMLM sample with the new model, render, export."""
    viewer, widget, panel = _panel(make_napari_viewer, steps=2)
    viewer.open_sample("napari-starloc", "astigmatic-beads")
    assert panel.psf_combo.currentText() == "AS bead z-stack" and panel.z_step_spin.value() == 20.0
    panel.output_edit.setText(str(tmp_path / "as.pt"))
    with qtbot.waitSignal(panel.job_finished, timeout=120_000) as blocker:
        panel.train()
    assert blocker.args == ["returned"], messages["error"]
    assert widget.model is not None and widget.model.config.dim == 3

    viewer.open_sample("napari-starloc", "smlm-astigmatic")
    widget.image_combo.setCurrentText("AS SMLM stack")
    widget.threshold_spin.setValue(0.01)  # an untrained network: keep what it finds
    with qtbot.waitSignal(widget.job_finished, timeout=120_000) as blocker:
        widget.localize()
    assert blocker.args == ["returned"], messages["error"]
    points = viewer.layers[dw.POINTS_LAYER]
    assert points.units == viewer.layers["AS SMLM stack"].units and "z_nm" in points.features
    render = widget.render()
    assert render.rgb and render.data.shape == (640, 640, 3)
    assert widget.export_csv(tmp_path / "locs.csv") and (tmp_path / "locs.csv").stat().st_size > 0
    assert messages["error"] == []


def test_a_bead_stack_without_metadata_is_taken_for_the_psf_whatever_the_order(make_napari_viewer, messages,
                                                                                 beads):
    """A bead TIFF that states no z step (as the challenge's) is told from the SMLM data by its
    name, or by being the chosen PSF: it is not the stack to measure or to localize."""
    viewer, widget, panel = _panel(make_napari_viewer)
    viewer.open_sample("napari-starloc", "smlm-astigmatic")
    assert panel.psf_combo.currentText() == "AS SMLM stack"  # the only 3D layer: a guess
    assert not any("states no" in m for m in messages["info"])  # about a guess: nothing said
    viewer.add_image(beads, name="beads-AS")
    assert panel.psf_combo.currentText() == "beads-AS"
    said = [m for m in messages["info"] if "states no" in m]
    assert said == ["DeepLoco: 'beads-AS' states no pixel size (100 nm kept) and no z step (10 nm kept): check "
                    "them against your bead stack in the Train tab"]
    assert panel.measure_combo.currentText() == "AS SMLM stack"
    assert widget.image_combo.currentText() == "AS SMLM stack"

    viewer, widget, panel = _panel(make_napari_viewer)
    viewer.add_image(beads, name="beads-AS")
    viewer.open_sample("napari-starloc", "smlm-astigmatic")
    assert panel.psf_combo.currentText() == "beads-AS" and panel.measure_combo.currentText() == "AS SMLM stack"
    # named like nothing in particular: the first 3D layer is the PSF's guess, then not measured
    viewer, widget, panel = _panel(make_napari_viewer)
    viewer.add_image(beads, name="stack 2")
    assert panel.psf_combo.currentText() == "stack 2" == panel.measure_combo.currentText()
    viewer.open_sample("napari-starloc", "smlm-astigmatic")
    assert panel.psf_combo.currentText() == "stack 2" and panel.measure_combo.currentText() == "AS SMLM stack"
    # the user's PSF pick moves the measurement off it
    panel.measure_combo.setCurrentText("stack 2")
    panel.psf_combo.setCurrentText("AS SMLM stack")
    panel.psf_combo.activated.emit(panel.psf_combo.currentIndex())
    panel.psf_combo.setCurrentText("stack 2")
    panel.psf_combo.activated.emit(panel.psf_combo.currentIndex())
    assert panel.measure_combo.currentText() == "AS SMLM stack"


def test_measure_sets_the_ranges_from_an_smlm_stack(make_napari_viewer, qtbot, messages):
    viewer, widget, panel = _panel(make_napari_viewer)
    viewer.open_sample("napari-starloc", "astigmatic-beads")
    viewer.open_sample("napari-starloc", "smlm-astigmatic")  # 1000-7000 photons, 100 photons/px
    assert panel.measure_combo.currentText() == "AS SMLM stack"
    with qtbot.waitSignal(panel.measure_finished, timeout=60_000) as blocker:
        assert panel.measure_brightness() is not None
    assert blocker.args == ["returned"], messages["error"]
    lo, hi = (s.value() for s in panel.photons_spins)
    assert 300 <= lo <= 1000 and 7000 <= hi <= 15000
    b_lo, b_hi = (s.value() for s in panel.background_spins)
    assert b_lo < 100 < b_hi <= 150
    assert "isolated spots" in panel.status.text()
    # wrong camera settings: a notification, the ranges stay
    panel.use_threads = False
    panel.camera_spins["baseline"].setValue(5000.0)
    panel.measure_brightness()
    assert "below" in messages["error"][-1] and panel.photons_spins[1].value() == hi
