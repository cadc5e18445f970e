"""The DeepLoco dock widget under Xvfb: load a model → localize a stack (real worker) → Points
layer on the emitters → export ThunderSTORM CSV; cancel; bad input.

The model is a tiny untrained network: the widget must show exactly what the core
(:func:`starloc.deeploco.stack.localize_stack`) returns, placed on the image's pixels.
"""

import numpy as np
import pytest
import tifffile
import torch

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from starloc.deeploco import EMCCD  # noqa: E402
from starloc.deeploco.model import DeepLoco  # noqa: E402
from starloc.deeploco.network import DeepLocoConfig  # noqa: E402
from starloc.deeploco.stack import localize_stack  # noqa: E402
from starloc.errors import InputError  # noqa: E402
from starloc.gui import deeploco_widget as dw  # noqa: E402
from starloc.smlm_io import read_thunderstorm_csv  # noqa: E402
from tests.conftest import simulated_adu_stack  # noqa: E402

SCALE = (1.0, 0.1, 0.1)  # frame, µm, µm: the model's 100 nm pixels
UNITS = ("pixel", "um", "um")
TRANSLATE = (0.0, 2.0, -1.0)


@pytest.fixture
def messages(monkeypatch):
    seen = {"error": [], "info": []}
    monkeypatch.setattr(dw, "show_error", seen["error"].append)
    monkeypatch.setattr(dw, "show_info", seen["info"].append)
    return seen


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("deeploco_widget") / "tiny.pt"
    config = DeepLocoConfig(frame_size=32, n_candidates=8, conv_widths=(4, 8, 8), fc_width=64)
    DeepLoco.new(config, seed=0, camera=EMCCD.smlm2016(), threshold=0.3).save(path)
    return path


@pytest.fixture(scope="module")
def stack():
    return simulated_adu_stack(3, (80, 72), (3, 6))  # uint16 ADU, challenge camera


def _widget(make_napari_viewer, model_file=None):
    viewer = make_napari_viewer()
    widget = dw.DeepLocoWidget(viewer)
    viewer.window.add_dock_widget(widget)
    if model_file is not None:
        assert widget.load_model(model_file)
    return viewer, widget


def test_localize_in_a_worker_gives_the_core_table_as_points_on_the_image(make_napari_viewer, qtbot, messages,
                                                                         model_file, stack, tmp_path):
    viewer, widget = _widget(make_napari_viewer, model_file)
    assert "2D, 100 nm/px, EMCCD" in widget.model_label.text()
    assert widget.threshold_spin.text() == "model (0.30)"
    image = viewer.add_image(stack, name="stack", scale=SCALE, translate=TRANSLATE, units=UNITS)
    image.name = "smlm"  # the choices follow renamed layers
    assert widget.image_combo.currentText() == "smlm"
    with qtbot.waitSignal(widget.job_finished, timeout=60_000) as blocker:
        assert widget.localize() is not None
        assert not widget.localize_button.isEnabled() and widget.cancel_button.isEnabled()
    assert blocker.args == ["returned"]
    assert widget.localize_button.isEnabled() and not widget.cancel_button.isEnabled()

    expected = localize_stack(DeepLoco.load(model_file), stack)
    assert len(expected["frame"]) > 0
    layer = viewer.layers[dw.POINTS_LAYER]
    assert layer.data.shape == (len(expected["frame"]), 3)
    np.testing.assert_array_equal(layer.data[:, 0], expected["frame"])
    # corner origin: pixel j's centre is at (j + 0.5) * 100 nm
    np.testing.assert_allclose(layer.data[:, 1], expected["y"] / 100.0 - 0.5, atol=1e-9)
    np.testing.assert_allclose(layer.data[:, 2], expected["x"] / 100.0 - 0.5, atol=1e-9)
    np.testing.assert_allclose(layer.features["confidence"], expected["confidence"])
    np.testing.assert_allclose(layer.features["x_nm"], expected["x"])
    np.testing.assert_array_equal(layer.scale, SCALE)
    np.testing.assert_array_equal(layer.translate, TRANSLATE)
    assert layer.units == image.units
    assert f"{len(expected['frame'])} localization(s)" in widget.status.text()
    assert widget.progress.value() == widget.progress.maximum() == 3

    out = tmp_path / "locs.csv"
    assert widget.export_csv(out)
    back = read_thunderstorm_csv(out)
    np.testing.assert_array_equal(back["frame"], expected["frame"])
    np.testing.assert_allclose(back["x"], expected["x"], atol=1e-3)
    assert "z" not in back  # a 2D model
    assert messages["error"] == [] and "written to" in messages["info"][-1]

    # the threshold reaches the core; a run that keeps nothing removes the last run's points
    widget.threshold_spin.setValue(float(expected["confidence"].max()) + 0.05)
    widget.use_threads = False
    widget.localize()
    assert dw.POINTS_LAYER not in viewer.layers and len(widget.table["frame"]) == 0
    assert "no localization" in messages["info"][-1]


def test_localizations_from_a_file_are_shown_as_if_localized_here(make_napari_viewer, messages, model_file, stack,
                                                                     tmp_path):
    """`starloc deeploco localize` on a large stack, then the CSV onto the stack in napari: the
    same points, render and export as a localization in the widget; Picasso too; files from
    other localizers (no confidence column) and files of another stack refused or shown."""
    from starloc.smlm_io import write_picasso, write_thunderstorm_csv

    viewer, widget = _widget(make_napari_viewer)
    image = viewer.add_image(stack, name="smlm", scale=SCALE, translate=TRANSLATE, units=UNITS)
    expected = localize_stack(DeepLoco.load(model_file), stack, threshold=0.05)
    assert len(expected["frame"]) > 0
    csv = write_thunderstorm_csv(tmp_path / "cli.csv", expected)
    assert widget.open_localizations(csv), messages["error"]
    layer = viewer.layers[dw.POINTS_LAYER]
    np.testing.assert_array_equal(layer.data[:, 0], expected["frame"])
    np.testing.assert_allclose(layer.data[:, 1], expected["y"] / 100.0 - 0.5, atol=1e-5)
    np.testing.assert_allclose(layer.data[:, 2], expected["x"] / 100.0 - 0.5, atol=1e-5)
    np.testing.assert_array_equal(layer.scale, image.scale)
    np.testing.assert_array_equal(layer.translate, image.translate)
    assert "cli.csv on 'smlm' (100 nm pixels)" in messages["info"][-1]
    assert widget.render() is not None and widget.export_csv(tmp_path / "again.csv")

    h5, _ = write_picasso(tmp_path / "cli.hdf5", expected, pixel_size_nm=100.0, width=stack.shape[2],
                          height=stack.shape[1], n_frames=len(stack), precision_nm=10.0)
    assert widget.open_localizations(h5), messages["error"]
    np.testing.assert_allclose(viewer.layers[dw.POINTS_LAYER].data[:, 2], expected["x"] / 100.0 - 0.5, atol=1e-3)

    other = tmp_path / "other.csv"  # another localizer's columns: no confidence
    other.write_text('"frame","x [nm]","y [nm]","intensity [photon]"\n1,150.0,250.0,900\n3,400.0,50.0,1200\n')
    assert widget.open_localizations(other)
    np.testing.assert_allclose(viewer.layers[dw.POINTS_LAYER].data, [[0, 2.0, 1.0], [2, 0.0, 3.5]])

    empty = tmp_path / "empty.csv"
    empty.write_text('"frame","x [nm]","y [nm]"\n')
    assert not widget.open_localizations(empty) and "holds no localization" in messages["error"][-1]
    late = tmp_path / "late.csv"
    late.write_text('"frame","x [nm]","y [nm]"\n9,150.0,250.0\n')
    assert not widget.open_localizations(late)
    assert "frame 9 (1-based), but the image has 3 frame(s)" in messages["error"][-1]
    image.scale, image.units = (1.0, 0.16, 0.16), UNITS  # a 160 nm camera: the Picasso file is not its
    assert not widget.open_localizations(h5) and "100 nm pixels, but the image has 160 nm" in messages["error"][-1]
    viewer.add_image(stack, name="plain")  # no pixel size anywhere, no model: asked for
    widget.image_combo.setCurrentText("plain")
    assert not widget.open_localizations(csv) and "pixel size of 'plain' is unknown" in messages["error"][-1]
    assert widget.load_model(model_file) and widget.open_localizations(csv)  # the model's 100 nm


def test_one_frame_gives_row_col_points(make_napari_viewer, messages, model_file, stack):
    viewer, widget = _widget(make_napari_viewer, model_file)
    widget.use_threads = False
    viewer.add_image(stack[1], name="frame")
    widget.threshold_spin.setValue(0.01)
    widget.localize()
    expected = localize_stack(DeepLoco.load(model_file), stack[1], threshold=0.01)
    layer = viewer.layers[dw.POINTS_LAYER]
    assert layer.data.shape == (len(expected["frame"]), 2)
    np.testing.assert_allclose(layer.data[:, 0], expected["y"] / 100.0 - 0.5, atol=1e-9)


def test_cancel_adds_no_layer(make_napari_viewer, qtbot, messages, model_file):
    viewer, widget = _widget(make_napari_viewer, model_file)
    viewer.add_image(simulated_adu_stack(400, (64, 64), (3, 6)), name="long")
    with qtbot.waitSignal(widget.job_finished, timeout=60_000) as blocker:
        worker = widget.localize()
        assert worker is not None
        widget.cancel()
    assert blocker.args == ["aborted"]
    assert dw.POINTS_LAYER not in viewer.layers and widget.table is None
    assert widget.status.text() == "cancelled" and widget.localize_button.isEnabled()


def test_bad_input_tells_the_user_what_to_do(make_napari_viewer, messages, model_file, stack, tmp_path):
    viewer, widget = _widget(make_napari_viewer)
    widget.use_threads = False

    def last_error_after(action):
        n = len(messages["error"])
        action()
        assert len(messages["error"]) == n + 1, messages["error"]
        return messages["error"][-1]

    assert "no model" in last_error_after(widget.localize)
    foreign = tmp_path / "foreign.pt"
    foreign.write_bytes(b"not a model")
    assert "DeepLoco:" in last_error_after(lambda: widget.load_model(foreign))
    assert widget.model is None and widget.model_label.text() == "Model: none"
    assert "not found" in last_error_after(lambda: widget.load_model(tmp_path / "missing.pt"))
    assert widget.load_model(model_file)
    assert "no image layer" in last_error_after(widget.localize)
    assert "nothing to export" in last_error_after(lambda: widget.export_csv(tmp_path / "x.csv"))

    viewer.add_image(np.zeros((40, 40, 3), np.uint8), name="rgb", rgb=True)
    assert "RGB" in last_error_after(widget.localize)
    viewer.add_image(np.zeros((2, 2, 40, 40), np.float32), name="4d")
    widget.image_combo.setCurrentText("4d")
    assert "4 dimensions" in last_error_after(widget.localize)
    nan = stack.astype(np.float32)
    nan[1, 5, 5] = np.nan
    viewer.add_image(nan, name="nan")
    widget.image_combo.setCurrentText("nan")
    assert "NaN" in last_error_after(widget.localize)
    assert dw.POINTS_LAYER not in viewer.layers
    viewer.add_image(stack, name="rotated", rotate=30)  # results would be placed unrotated
    widget.image_combo.setCurrentText("rotated")
    assert "rotated, sheared or has an affine transform" in last_error_after(widget.localize)
    viewer.add_image(np.zeros((3, 40, 40), np.float32), name="below baseline")
    widget.image_combo.setCurrentText("below baseline")
    assert "baseline" in last_error_after(widget.localize)
    assert not (tmp_path / "x.csv").exists()


def test_the_widget_docks_through_the_manifest_and_3d_models_colour_by_z(make_napari_viewer, messages, stack,
                                                                          tmp_path):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-starloc", "DeepLoco")
    assert isinstance(widget, dw.DeepLocoWidget)
    path = tmp_path / "tiny3d.pt"
    config = DeepLocoConfig(frame_size=32, n_candidates=8, conv_widths=(4, 8, 8), fc_width=64, dim=3,
                            z_range=(-500.0, 500.0))
    DeepLoco.new(config, seed=1, camera=EMCCD.smlm2016(), threshold=0.1).save(path)
    assert widget.load_model(path) and "3D, z -500..500 nm" in widget.model_label.text()
    viewer.add_image(stack, name="smlm")
    widget.use_threads = False
    widget.localize()
    layer = viewer.layers[dw.POINTS_LAYER]
    expected = localize_stack(DeepLoco.load(path), stack)
    np.testing.assert_allclose(layer.features["z_nm"], expected["z"])
    assert np.all(np.abs(expected["z"]) <= 500.0)
    # coloured by z: points at different depths get different colours
    lo, hi = np.argmin(expected["z"]), np.argmax(expected["z"])
    assert not np.allclose(layer.face_color[lo], layer.face_color[hi])


def test_a_closed_widget_no_longer_follows_the_layers(make_napari_viewer):
    viewer, widget = _widget(make_napari_viewer)
    layer = viewer.add_image(np.zeros((8, 8), np.float32), name="a")
    layer.name = "b"

    def choices():
        return [widget.image_combo.itemText(i) for i in range(widget.image_combo.count())]

    assert choices() == ["b"]  # follows added and renamed layers while open
    widget._shutdown()  # what the widget's destroyed signal runs
    layer.name = "c"
    viewer.add_image(np.zeros((8, 8), np.float32), name="d")
    assert choices() == ["b"]


@pytest.mark.parametrize("cuda", [False, True])
def test_the_device_is_the_gpu_when_there_is_one(make_napari_viewer, monkeypatch, cuda):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    _, widget = _widget(make_napari_viewer)
    assert widget.device_combo.currentText() == ("cuda" if cuda else "cpu")
    assert widget.device_combo.itemText(0) == "cpu"


def test_an_image_in_physical_units_must_have_the_models_pixel_size(make_napari_viewer, messages, model_file, stack,
                                                                   tmp_path):
    viewer, widget = _widget(make_napari_viewer, model_file)
    widget.use_threads = False
    viewer.add_image(stack, name="160 nm", scale=(1, 0.16, 0.16), units=UNITS)
    assert widget.localize() is None
    assert "has 160 nm pixels but the model was trained for 100 nm" in messages["error"][-1]
    assert dw.POINTS_LAYER not in viewer.layers
    viewer.layers.clear()
    viewer.add_image(stack, name="100 nm", scale=(1, 100, 100), units=("pixel", "nm", "nm"))
    widget.localize()
    assert dw.POINTS_LAYER in viewer.layers and len(messages["error"]) == 1
    # a stack opened from a TIFF that states its pixel size
    path = tmp_path / "smlm-160nm.tif"
    tifffile.imwrite(path, stack, imagej=True, resolution=(1 / 0.16, 1 / 0.16), metadata={"unit": "um", "axes": "TYX"})
    viewer.layers.clear()
    (layer,) = viewer.open(path, plugin="napari")
    widget.image_combo.setCurrentText(layer.name)
    assert widget.localize() is None and "has 160 nm pixels" in messages["error"][-1]


def test_render_places_the_super_resolved_image_on_the_camera_image():
    from napari.layers import Image

    from starloc.gui.render_layer import render_image, render_placement

    table = {"frame": np.array([0, 3]), "x": np.array([250.0, 387.0]), "y": np.array([150.0, 222.0])}
    camera = Image(np.zeros((4, 6, 5)), scale=(1, 0.1, 0.1), translate=(0, 2.0, -1.0))
    image = render_image(table, (6, 5), 100.0, 10.0)
    assert image.shape == (60, 50) and image.dtype == np.float32
    np.testing.assert_allclose(image.sum(), 2.0, rtol=1e-5)  # unit mass per localization
    scale, translate = render_placement(camera.scale, camera.translate, 100.0, 10.0)
    render = Image(image, scale=scale, translate=translate)
    for x, y in zip(table["x"], table["y"]):
        # the blob's centroid, in the rendering's pixels, lands where the camera has the localization
        r0, c0 = int(y // 10), int(x // 10)
        win = image[r0 - 8 : r0 + 9, c0 - 8 : c0 + 9]
        rr, cc = np.mgrid[r0 - 8 : r0 + 9, c0 - 8 : c0 + 9]
        centroid = ((win * rr).sum() / win.sum(), (win * cc).sum() / win.sum())
        np.testing.assert_allclose(render.data_to_world(centroid),
                                   camera.data_to_world((0, y / 100 - 0.5, x / 100 - 0.5))[1:], atol=1e-5)
    rgb = render_image({**table, "z": np.array([-300.0, 400.0])}, (6, 5), 100.0, 20.0)
    assert rgb.shape == (30, 25, 3) and 0 <= rgb.min() and rgb.max() <= 1
    # with a per-localization uncertainty each blob has that σ (never below one render pixel)
    for x, y, u, sigma in ((250.0, 300.0, 30.0, 3.0), (250.0, 300.0, 2.0, 1.0)):  # σ in render pixels
        one = {"frame": np.array([0]), "x": np.array([x]), "y": np.array([y]), "uncertainty": np.array([u])}
        blurred = render_image(one, (6, 5), 100.0, 10.0)
        np.testing.assert_allclose(blurred.sum(), 1.0, rtol=1e-5)
        r0, c0 = int(y // 10), int(x // 10)
        win = blurred[r0 - 12: r0 + 13, c0 - 12: c0 + 13]
        cc = np.arange(c0 - 12, c0 + 13)
        profile = win.sum(0)
        mean = (profile * cc).sum() / profile.sum()
        spread = np.sqrt((profile * (cc - mean) ** 2).sum() / profile.sum())
        assert spread == pytest.approx(np.sqrt(sigma**2 + 1 / 12), rel=0.05)  # pixel-integrated Gaussian
    with pytest.raises(InputError, match="choose a larger render pixel"):
        render_image(table, (20_000, 20_000), 100.0, 1.0)


def test_render_button_adds_the_rendering_of_the_last_localizations(make_napari_viewer, messages, model_file,
                                                                     stack):
    viewer, widget = _widget(make_napari_viewer, model_file)
    widget.use_threads = False
    assert widget.render() is None and "nothing to render" in messages["error"][-1]
    image = viewer.add_image(stack, name="stack", scale=SCALE, translate=TRANSLATE, units=UNITS)
    widget.localize()
    n = len(widget.table["frame"])
    widget.render_spin.setValue(20.0)
    layer = widget.render()
    assert layer is viewer.layers[dw.RENDER_LAYER] and layer.data.shape == (400, 360)  # 80x72 px of 100 nm
    assert 0.9 * n < layer.data.sum() <= n + 1e-3  # unit mass each, a little lost at the border
    np.testing.assert_allclose(layer.scale, [0.02, 0.02])
    assert layer.units == image.units[1:]
    widget.render_spin.setValue(50.0)
    widget.render()  # replaces the last rendering
    assert [lay.name for lay in viewer.layers].count(dw.RENDER_LAYER) == 1
    assert viewer.layers[dw.RENDER_LAYER].data.shape == (160, 144)
    # the rendering is no stack to localize, and does not take the Image choice
    choices = [widget.image_combo.itemText(i) for i in range(widget.image_combo.count())]
    assert choices == ["stack"] and widget.image_combo.currentText() == "stack"


def test_the_image_choice_follows_the_stack_just_opened_not_the_bead_stack(make_napari_viewer, model_file, stack):
    viewer, widget = _widget(make_napari_viewer)
    viewer.add_image(stack, name="smlm")
    assert widget.image_combo.currentText() == "smlm"
    viewer.add_image(np.zeros((5, 40, 40), np.uint16), name="more data")  # opened last: taken
    assert widget.image_combo.currentText() == "more data"
    viewer.add_image(np.zeros((5, 40, 40), np.uint16), name="beads")  # but not a bead stack
    assert widget.image_combo.currentText() == "more data"
    widget.image_combo.setCurrentText("beads")
    widget.train_panel.psf_combo.setCurrentText("beads")
    widget._on_model_written(str(model_file))  # a model trained from the beads localizes the other stack
    assert widget.image_combo.currentText() == "more data" and widget.tabs.currentIndex() == 0
    # a widget opened after the stacks takes the one on top of the layer list, as napari lists it
    later = dw.DeepLocoWidget(viewer)
    assert later.image_combo.currentText() == "beads"
    viewer.layers.move(viewer.layers.index("smlm"), len(viewer.layers))
    assert dw.DeepLocoWidget(viewer).image_combo.currentText() == "smlm"


def test_uncertainty_columns_become_features():
    table = {"frame": np.array([0, 2]), "x": np.array([150.0, 250.0]), "y": np.array([50.0, 350.0]),
             "z": np.array([-100.0, 20.0]), "confidence": np.array([0.9, 0.5]),
             "uncertainty": np.array([12.0, 30.0]), "uncertainty_z": np.array([40.0, 80.0])}
    data, features = dw.points_from_table(table, 100.0, stack=True)
    np.testing.assert_allclose(data, [[0, 0.0, 1.0], [2, 3.0, 2.0]])
    assert list(features) == ["x_nm", "y_nm", "z_nm", "confidence", "uncertainty_nm", "uncertainty_z_nm"]
    np.testing.assert_allclose(features["uncertainty_nm"], [12.0, 30.0])
    without = {k: v for k, v in table.items() if not k.startswith("uncertainty")}
    assert "uncertainty_nm" not in dw.points_from_table(without, 100.0, stack=True)[1]
