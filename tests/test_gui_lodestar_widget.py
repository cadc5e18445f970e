"""The LodeSTAR dock widget under Xvfb: crop → train (real worker) → layers → tune → export.

A tiny network (conftest.TINY) keeps training to a few seconds on a 2-core machine.
"""

import copy
import dataclasses

import numpy as np
import pytest
import torch

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

import napari  # noqa: E402

from starloc import sim  # noqa: E402
from starloc.gui import lodestar_widget as lw  # noqa: E402
from starloc.gui import lodestar_layers  # noqa: E402
from starloc.gui.lodestar_source import (  # noqa: E402
    ALL_POINTS_LAYER,
    CENTRE_LAYER,
    CHANNELS_FIRST_KEY,
    CROP_LAYER,
    CROP_POINT,
    CROP_RECTANGLE,
    POINTS_LAYER,
    SCORE_LAYER,
    TRACKS_LAYER,
    WEIGHT_LAYER,
    image_source,
    points_in_image,
    rectangles_in_image,
)
from starloc.lodestar.detection import DetectParams, Detections  # noqa: E402
from starloc.lodestar.network import NetworkConfig  # noqa: E402
from starloc.errors import InputError  # noqa: E402
from starloc.io import read_points_csv  # noqa: E402
from starloc.lodestar.training import TrainConfig, step_budget, train  # noqa: E402
from starloc.progress import finish  # noqa: E402
from tests.conftest import TINY  # noqa: E402

SCALE = (0.5, 0.25)
TRANSLATE = (10.0, -5.0)
CROP = 20  # px; TINY's receptive field is 16
OUTPUTS = (WEIGHT_LAYER, SCORE_LAYER, POINTS_LAYER, ALL_POINTS_LAYER)


@pytest.fixture
def messages(monkeypatch):
    """What the user is told: errors and infos shown by the widget."""
    seen = {"error": [], "info": []}
    monkeypatch.setattr(lw, "show_error", seen["error"].append)
    monkeypatch.setattr(lw, "show_info", seen["info"].append)
    return seen


@pytest.fixture(scope="module")
def scene():
    image, truth, _ = sim.simulate_scene("point", 12, size=(96, 96), snr=10, rng=5)
    return image.astype(np.float32), truth


def _crop_around(image, center, size=CROP):
    r0, c0 = (int(round(v)) - size // 2 for v in center)
    return image[r0 : r0 + size, c0 : c0 + size]


@pytest.fixture(scope="module")
def point_model(scene):
    """A tiny model trained with the core (no Qt) for tests that only need some model."""
    image, truth = scene
    config = TrainConfig(max_steps=150, min_steps=150, network=TINY, seed=0)
    return finish(train([_crop_around(image, truth[0])], config))


def _widget(make_napari_viewer, steps=150):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-starloc", "LodeSTAR")
    assert isinstance(widget, lw.LodeSTARWidget)
    assert widget.crop_size_spin.value() == 40  # Point + size default
    widget.set_network_config(TINY)
    widget.max_steps_spin.setValue(steps)
    widget.advanced_box.setChecked(True)
    widget.min_steps_spin.setValue(steps)
    widget.seed_spin.setValue(0)
    widget.crop_size_spin.setValue(CROP)
    return viewer, widget


def _draw(widget, center, size=CROP):
    """Draw a size×size rectangle (in image pixels) around ``center`` in the crop layer."""
    widget.start_drawing()
    shapes = widget.viewer.layers[CROP_LAYER]
    r0, c0 = (int(round(v)) - size // 2 for v in center)
    # The crop layer has the image's transform: its data coordinates are image pixels.
    shapes.add_rectangles(np.array([[r0 - 0.5, c0 - 0.5], [r0 + size - 0.5, c0 + size - 0.5]]))
    return shapes


def _fraction_within(found, truth, tol=1.0):
    d = np.hypot(*(truth[:, None, :] - found[None, :, :]).transpose(2, 0, 1))
    return float(np.mean(d.min(axis=1) <= tol)) if len(found) else 0.0


def _wait_job(qtbot, widget, kind, timeout=60_000):
    return qtbot.waitSignal(widget.job_finished, timeout=timeout,
                            check_params_cb=lambda k, outcome: k == kind)


def _detect_all_frames(qtbot, viewer, widget, model, messages):
    """Detect all frames with ``model`` at a ratio cutoff of 0.3 (worker); the Points layer."""
    widget.mode_combo.setCurrentText("ratio")
    widget.cutoff_spin.setValue(0.3)
    widget.model = model
    with _wait_job(qtbot, widget, "detect_all") as blocker:
        widget.detect_all()
    assert blocker.args == ["detect_all", "returned"], messages["error"]
    return viewer.layers[ALL_POINTS_LAYER]


def test_train_in_a_worker_then_tune_save_load_and_export(make_napari_viewer, qtbot, messages, scene, tmp_path):
    image, truth = scene
    viewer, widget = _widget(make_napari_viewer)
    layer = viewer.add_image(image, name="scene", scale=SCALE, translate=TRANSLATE)
    assert widget.image_layer() is layer
    shapes = _draw(widget, truth[0])
    assert shapes.mode == "add_rectangle"
    widget._update_crop_preview()
    assert f"{CROP}×{CROP}" in widget.crop_info.text() and not widget.thumbnail.pixmap().isNull()

    with _wait_job(qtbot, widget, "train") as blocker:
        worker = widget.train()
        assert worker is not None and widget.is_busy()
        assert not widget.train_button.isEnabled()
    assert blocker.args == ["train", "returned"], messages["error"]
    assert widget.model is not None and widget.progress.value() == 150
    assert "step 150/150" in widget.status.text() or "done" in widget.status.text()
    assert "150 steps (the whole budget: the loss had not levelled off)" in widget.model_info.text()

    weight, score, points = (viewer.layers[n] for n in (WEIGHT_LAYER, SCORE_LAYER, POINTS_LAYER))
    for out in (weight, score):
        assert out.data.shape == image.shape
    for out in (weight, score, points):
        np.testing.assert_allclose(out.scale, SCALE)
        np.testing.assert_allclose(out.translate, TRANSLATE)
    assert points.data.shape[1] == 2
    assert set(points.features.columns) >= {"score", "weight", "consistency"}

    # Tuning reruns only the detection on the cached maps (debounced).
    maps = widget._maps
    with qtbot.waitSignal(widget.detection_updated, timeout=5000):
        widget.mode_combo.setCurrentText("ratio")
        widget.cutoff_spin.setValue(0.3)
    assert widget._maps is maps
    assert _fraction_within(points.data, truth) >= 0.9
    assert len(points.data) <= len(truth) + 1
    # Deblending (on by default) can be switched off; detection reruns on the same maps.
    assert widget.detect_params().deblend
    with qtbot.waitSignal(widget.detection_updated, timeout=5000):
        widget.deblend_check.setChecked(False)
    assert not widget.detect_params().deblend and widget._maps is maps
    with qtbot.waitSignal(widget.detection_updated, timeout=5000):
        widget.deblend_check.setChecked(True)
    # Min weight (as --min-weight) reaches the detection: the layer holds what the core keeps on
    # the same maps with it (this model saturates its weights on the spots: 1.0 drops one).
    assert widget.detect_params().min_weight == DetectParams().min_weight
    n_default = len(points.data)
    with qtbot.waitSignal(widget.detection_updated, timeout=5000):
        widget.min_weight_spin.setValue(1.0)
    strict = lw.run_detect(widget.model, widget._frame, widget._maps, widget.detect_params(), False).detections
    assert widget.detect_params().min_weight == 1.0
    assert len(points.data) == len(strict) < n_default, (len(points.data), n_default)
    with qtbot.waitSignal(widget.detection_updated, timeout=5000):
        widget.min_weight_spin.setValue(DetectParams().min_weight)
    assert len(points.data) == n_default
    # Max consistency (as --max-consistency; "off" by default) drops the detections that disagree more
    assert widget.detect_params().max_consistency is None
    limit = float(np.median(points.features["consistency"]))
    with qtbot.waitSignal(widget.detection_updated, timeout=5000):
        widget.max_consistency_spin.setValue(limit)
    assert widget.detect_params().max_consistency == pytest.approx(limit, abs=1e-3)
    assert 0 < len(points.data) < n_default and points.features["consistency"].max() <= limit + 1e-3
    with qtbot.waitSignal(widget.detection_updated, timeout=5000):
        widget.max_consistency_spin.setValue(0.0)
    assert len(points.data) == n_default
    # Deblending runs the network: above deblend_worker_pixels detection goes to a worker.
    widget.deblend_worker_pixels = 0
    with _wait_job(qtbot, widget, "detect") as blocker, qtbot.waitSignal(widget.detection_updated, timeout=5000):
        widget.cutoff_spin.setValue(0.25)
    assert blocker.args == ["detect", "returned"] and widget._maps is maps
    assert _fraction_within(points.data, truth) >= 0.9
    assert messages["error"] == []

    model_file = tmp_path / "model.pt"
    assert widget.save_model(model_file)
    foreign = tmp_path / "foreign.pt"
    foreign.write_bytes(b"not a model")
    trained = widget.model
    assert not widget.load_model(foreign)
    assert widget.model is trained and len(messages["error"]) == 1
    with _wait_job(qtbot, widget, "maps"):
        assert widget.load_model(model_file)
    assert widget.model is not trained and "loaded" in widget.model_info.text()

    csv = tmp_path / "points.csv"
    assert widget.export_points(csv)
    frames, positions, features = read_points_csv(csv)
    np.testing.assert_allclose(positions, viewer.layers[POINTS_LAYER].data)
    assert set(features) >= {"score", "weight", "consistency"} and np.all(frames == 0)


def test_cancel_keeps_the_previous_model_and_adds_no_layers(make_napari_viewer, qtbot, messages, scene, point_model):
    image, truth = scene
    viewer, widget = _widget(make_napari_viewer, steps=5000)
    viewer.add_image(image, name="scene")
    _draw(widget, truth[0])

    def cancel_at_step_3(progress):
        if progress.step == 3:
            widget.cancel()

    with _wait_job(qtbot, widget, "train") as blocker:
        widget.train().yielded.connect(cancel_at_step_3)
    assert blocker.args == ["train", "aborted"]
    assert widget.model is None
    assert not any(n in viewer.layers for n in OUTPUTS)
    assert widget.train_button.isEnabled() and not widget.is_busy()

    widget.model = point_model
    widget.max_steps_spin.setValue(0)  # auto: the budget of the crop's size
    widget.min_steps_spin.setValue(-1)
    budget = step_budget(widget.train_config(), [(CROP, CROP)])[0]
    assert budget == 5200  # a crop under 45 px trains twice the base 2600 steps
    maxima = []
    with _wait_job(qtbot, widget, "train") as blocker:
        worker = widget.train()
        worker.yielded.connect(lambda p: maxima.append((p.max_steps, widget.progress.maximum())))
        worker.yielded.connect(cancel_at_step_3)
    assert blocker.args == ["train", "aborted"] and widget.model is point_model
    assert maxima and all(m == (budget, budget) for m in maxima)
    assert messages["error"] == []


def test_closing_the_dock_stops_the_training_and_lets_go_of_the_viewer(make_napari_viewer, qtbot, messages, scene):
    image, truth = scene
    stack = np.stack([image, image])
    viewer, widget = _widget(make_napari_viewer, steps=5000)
    viewer.add_image(stack, name="scene")
    _draw(widget, truth[0])
    worker = widget.train()
    qtbot.waitUntil(lambda: widget.progress.value() >= 2, timeout=60_000)
    viewer.window.remove_dock_widget(widget)  # what the dock's close button does
    qtbot.waitUntil(lambda: not worker.is_running, timeout=60_000)
    viewer.dims.set_current_step(0, 1)  # a frame change once brought the maps back
    viewer.layers["scene"].data = stack * 2  # and so could new pixels
    qtbot.wait(500)  # past the debounce of a maps computation that must not start
    assert widget.model is None and not any(n in viewer.layers for n in OUTPUTS)
    assert messages["error"] == []


def test_detect_all_frames_of_a_timelapse(make_napari_viewer, qtbot, messages, point_model, monkeypatch):
    stack, tracks = sim.simulate_timelapse(4, 5, size=(64, 64), diffusion=1.0, rng=3)
    viewer, widget = _widget(make_napari_viewer)
    layer = viewer.add_image(stack.astype(np.float32), name="movie", scale=(2.0, *SCALE), translate=(0, *TRANSLATE),
                             units=("s", "um", "um"))
    assert any("first axis" in m for m in messages["info"])
    advised = []  # the detections reach the background advice, told with the widget's own box name
    monkeypatch.setattr(lw, "noise_detections_advice",
                        lambda features, limit, option: advised.append((len(features["weight"]), limit, option))
                        or "many look like background")
    points = _detect_all_frames(qtbot, viewer, widget, point_model, messages)
    assert advised == [(len(points.data), None, "Max consistency")]
    assert "LodeSTAR: many look like background" in messages["info"]
    assert points.data.shape[1] == 3
    assert set(np.unique(points.data[:, 0])) == {0, 1, 2, 3}
    np.testing.assert_allclose(points.scale, layer.scale)
    np.testing.assert_allclose(points.translate, layer.translate)
    assert points.units == layer.units  # napari would otherwise warn of inconsistent units
    for t in range(4):
        assert _fraction_within(points.data[points.data[:, 0] == t, 1:], tracks[t]) >= 0.8

    # The current-frame layers follow the frame slider (maps recomputed in a worker).
    with qtbot.waitSignal(widget.detection_updated, timeout=20_000):
        viewer.dims.set_current_step(0, 2)
    current = viewer.layers[POINTS_LAYER]
    assert np.all(current.data[:, 0] == 2) and len(current.data) > 0
    assert viewer.layers[WEIGHT_LAYER].data.shape == (64, 64)
    assert messages["error"] == []


def test_closing_the_image_during_training_keeps_the_model_without_an_error(make_napari_viewer, qtbot, messages,
                                                                            scene):
    image, truth = scene
    viewer, widget = _widget(make_napari_viewer, steps=30)
    viewer.add_image(image, name="scene")
    _draw(widget, truth[0])

    def close_image(progress):
        if progress.step == 3 and "scene" in viewer.layers:
            viewer.layers.remove("scene")

    with _wait_job(qtbot, widget, "train") as blocker:
        widget.train().yielded.connect(close_image)
    assert blocker.args == ["train", "returned"] and widget.model is not None
    qtbot.wait(300)  # past the debounce of a maps computation that must not start
    assert messages["error"] == [] and WEIGHT_LAYER not in viewer.layers


def test_new_pixels_in_the_image_layer_are_detected_again(make_napari_viewer, qtbot, messages, scene, point_model):
    image, truth = scene
    other, other_truth, _ = sim.simulate_scene("point", 12, size=(96, 96), snr=10, rng=8)
    viewer, widget = _widget(make_napari_viewer)
    layer = viewer.add_image(image, name="scene")
    widget.model = point_model
    widget.mode_combo.setCurrentText("ratio")
    with qtbot.waitSignal(widget.detection_updated, timeout=20_000):
        widget._follow_frame()
    assert _fraction_within(viewer.layers[POINTS_LAYER].data, truth) >= 0.8
    with qtbot.waitSignal(widget.detection_updated, timeout=20_000):  # e.g. a script or another plugin
        layer.data = other.astype(np.float32)
    assert _fraction_within(viewer.layers[POINTS_LAYER].data, other_truth) >= 0.8
    assert messages["error"] == []


def test_inline_mode_and_rgb_layers(make_napari_viewer, messages, scene):
    image, truth = scene
    viewer, widget = _widget(make_napari_viewer, steps=3)
    widget.use_threads = False
    rgb = np.repeat(image[..., None], 3, axis=-1)
    viewer.add_image(rgb, name="colour", rgb=True)
    assert "RGB" in widget.image_info.text()
    _draw(widget, truth[0])
    assert widget.train() is None and widget.model is not None
    assert viewer.layers[WEIGHT_LAYER].data.shape == image.shape
    assert messages["error"] == []


def test_bad_input_tells_the_user_what_to_do(make_napari_viewer, messages, scene, tmp_path):
    image, truth = scene
    viewer, widget = _widget(make_napari_viewer)

    def last_error_after(action):
        n = len(messages["error"])
        action()
        assert len(messages["error"]) == n + 1, messages["error"]
        return messages["error"][-1]

    assert "no image layer" in last_error_after(widget.train)
    assert "no image layer" in last_error_after(widget.start_drawing)
    viewer.add_image(image, name="scene")
    assert "no rectangle" in last_error_after(widget.train)
    assert "no model" in last_error_after(widget.detect_all)
    assert "no model to save" in last_error_after(lambda: widget.save_model(tmp_path / "m.pt"))
    assert "no detections" in last_error_after(lambda: widget.export_points(tmp_path / "p.csv"))
    shapes = _draw(widget, truth[0], size=8)
    assert "smaller than the minimum 16x16" in last_error_after(widget.train)
    shapes.data = []
    shapes.add_rectangles(np.array([[80.0, 80.0], [120.0, 120.0]]))
    assert "outside the image" in last_error_after(widget.train)
    (tmp_path / "foreign.pt").write_bytes(b"\x00junk")
    assert "foreign.pt" in last_error_after(lambda: widget.load_model(tmp_path / "foreign.pt"))
    viewer.add_image(np.zeros((2, 3, 32, 32), np.float32), name="4d")
    widget.set_image_layer(viewer.layers["4d"])
    assert "T×Y×X" in last_error_after(widget.train)
    viewer.add_image(image, name="sheared", shear=[0.3])
    widget.set_image_layer(viewer.layers["sheared"])
    assert "rotated, sheared or has an affine transform" in last_error_after(widget.train)
    assert widget.model is None


def test_rectangles_map_between_layers_with_different_transforms():
    image = napari.layers.Image(np.zeros((5, 40, 60)), scale=(1, 0.5, 2.0), translate=(0, 3.0, -4.0))
    shapes = napari.layers.Shapes(ndim=2)  # identity transform: data = world
    # image pixels rows 10..29, cols 5..24 → world = pixel * scale + translate
    top_left = np.array([9.5 * 0.5 + 3.0, 4.5 * 2.0 - 4.0])
    bottom_right = np.array([29.5 * 0.5 + 3.0, 24.5 * 2.0 - 4.0])
    shapes.add_rectangles(np.array([top_left, bottom_right]))
    shapes.add_rectangles(np.array([[0.0, 0.0], [10.0, 10.0]]))
    assert rectangles_in_image(shapes, image, use_all=False) == [(-6, 2, 21, 6)]
    assert rectangles_in_image(shapes, image, use_all=True)[0] == (10, 5, 20, 20)


def test_step_settings_default_to_auto_and_explicit_values_reach_the_training_config(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-starloc", "LodeSTAR")
    assert widget.max_steps_spin.text() == "auto" and widget.min_steps_spin.text() == "auto"
    config = widget.train_config()
    assert config.max_steps is None and config.min_steps is None
    widget.max_steps_spin.setValue(700)
    widget.min_steps_spin.setValue(0)
    config = widget.train_config()
    assert (config.max_steps, config.min_steps) == (700, 0)


def test_downsampling_sets_the_smallest_crop_and_advanced_settings_reach_the_training_config(make_napari_viewer, qtbot, scene):
    image, truth = scene
    viewer, widget = _widget(make_napari_viewer, steps=20)
    viewer.add_image(image, name="scene", scale=SCALE, translate=TRANSLATE)
    _draw(widget, truth[0])
    assert widget.crops()[1][0].shape[-2:] == (CROP, CROP)
    widget.downsample_auto.setChecked(False)
    assert widget.downsample_spin.isEnabled()
    widget.downsample_spin.setValue(2)
    assert widget.train_config().downsample == 2
    assert widget.train_config().shot_noise == TrainConfig.shot_noise
    widget.shot_check.setChecked(False)
    assert widget.train_config().shot_noise == (0.0, 0.0)
    assert widget.train_config().signal_range is None and widget.signal_spin.text() == "off"
    widget.signal_spin.setValue(3.0)
    assert widget.train_config().signal_range == 3.0
    widget.signal_spin.setValue(1.0)
    assert widget.crop_size_spin.minimum() == 2 * TINY.receptive_field
    assert widget.rf_label.text().startswith(f"{2 * TINY.receptive_field} px")
    with pytest.raises(InputError, match="smaller than the minimum"):
        widget.crops()
    _draw(widget, (48.0, 48.0), size=2 * TINY.receptive_field + 8)
    widget.use_threads = False
    assert widget.train() is None and widget.model.downsample == 2
    assert "downsampled ×2" in widget.model_info.text()
    assert viewer.layers[WEIGHT_LAYER].data.shape == image.shape  # maps at the image's resolution


@pytest.mark.parametrize("cuda", [False, True])
def test_the_device_is_the_gpu_when_there_is_one(make_napari_viewer, monkeypatch, cuda):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    _, widget = _widget(make_napari_viewer, steps=20)
    assert widget.device == ("cuda" if cuda else "cpu")
    assert [widget.device_combo.itemText(i) for i in range(widget.device_combo.count())][0] == "cpu"


def test_crop_info_suggests_downsampling_for_a_large_object(make_napari_viewer, qtbot):
    rows, cols = np.indices((100, 100))
    ring = 10.0 + 60.0 * np.exp(-((np.hypot(rows - 50, cols - 50) - 24.0) ** 2) / 4.5)
    viewer, widget = _widget(make_napari_viewer, steps=3)
    viewer.add_image(np.random.default_rng(0).poisson(ring).astype(np.float32), name="ring")
    _draw(widget, (50.0, 50.0), size=80)
    # Auto (the default): the ring, ~54 px across, is trained downsampled by 3
    widget._update_crop_preview()
    assert "object ≈" in widget.crop_info.text() and "Downsample 3 (auto)" in widget.crop_info.text()
    assert widget.downsample_spin.value() == 3 and not widget.downsample_spin.isEnabled()
    assert widget.min_crop_size == TINY.receptive_field
    # the default network sees 26 px: a crop of 72 px holds 2 of them, so Auto takes 2 and says
    # what 3 needs
    widget.set_network_config(NetworkConfig())
    viewer.layers[CROP_LAYER].data = []
    _draw(widget, (50.0, 50.0), size=72)
    widget._update_crop_preview()
    assert "Downsample 2 (auto); 3 needs a crop of ≥ 78 px" in widget.crop_info.text()
    widget.use_threads = False
    assert widget.train() is None and widget.model.downsample == 2
    # set by hand: a suggestion instead
    widget.downsample_auto.setChecked(False)
    widget.downsample_spin.setValue(1)
    viewer.layers[CROP_LAYER].data = []
    _draw(widget, (50.0, 50.0), size=80)
    widget._update_crop_preview()
    assert "Downsample 3 suggested" in widget.crop_info.text() and widget.downsample_spin.value() == 1
    widget.downsample_spin.setValue(3)
    widget._update_crop_preview()
    assert "suggested" not in widget.crop_info.text()


def test_crop_info_warns_about_a_crop_with_several_objects_or_none(make_napari_viewer, qtbot):
    image = sim.add_poisson_noise(sim.render("point", (80, 80), np.array([[30.0, 30.0], [50.0, 52.0]])), 10, rng=3)
    viewer, widget = _widget(make_napari_viewer, steps=3)
    viewer.add_image(image, name="two")
    _draw(widget, (40.0, 40.0), size=60)
    widget._update_crop_preview()
    assert "crop 1 seems to hold 2 objects" in widget.crop_info.text()
    viewer.layers[CROP_LAYER].data = []
    _draw(widget, (30.0, 30.0), size=30)
    widget._update_crop_preview()
    assert "seems to hold" not in widget.crop_info.text()
    viewer.layers[CROP_LAYER].data = []
    _draw(widget, (14.0, 66.0), size=26)  # background only
    widget._update_crop_preview()
    assert "crop 1 seems to hold no object" in widget.crop_info.text()
    # moving the crop layer moves the crop: the line follows (debounced)
    with qtbot.waitSignal(widget._preview_timer.timeout, timeout=2_000):
        viewer.layers[CROP_LAYER].translate = (200.0, 0.0)
    assert "outside the image" in widget.crop_info.text()


def test_point_and_size_crop_matches_the_rectangle_and_trains(make_napari_viewer, qtbot, messages, scene):
    image, truth = scene
    viewer, widget = _widget(make_napari_viewer, steps=20)
    layer = viewer.add_image(image, name="scene", scale=SCALE, translate=TRANSLATE)
    assert widget.crop_size_spin.minimum() == TINY.receptive_field
    _draw(widget, truth[0])
    boxes_rect, crops_rect, _, _ = widget.crops()

    widget.crop_source_combo.setCurrentText(CROP_POINT)
    widget.start_drawing()
    points = viewer.layers[CENTRE_LAYER]
    assert isinstance(points, napari.layers.Points) and points.mode == "add"
    assert viewer.layers.selection.active is points
    points.add(np.asarray(truth[0]))  # the layer has the image's transform: data = image pixels
    boxes, crops, _, _ = widget.crops()
    expected = tuple(int(round(v)) - CROP // 2 for v in truth[0]) + (CROP, CROP)
    assert boxes == boxes_rect == [expected]
    np.testing.assert_array_equal(crops[0], crops_rect[0])
    widget._update_crop_preview()
    assert f"{CROP}×{CROP}" in widget.crop_info.text() and not widget.thumbnail.pixmap().isNull()

    points.add(np.asarray(truth[1]))
    assert len(widget.crops()[1]) == 1
    widget.all_rects_check.setChecked(True)
    assert len(widget.crops()[1]) == 2
    widget.all_rects_check.setChecked(False)

    with _wait_job(qtbot, widget, "train") as blocker:
        widget.train()
    assert blocker.args == ["train", "returned"], messages["error"]
    assert "1 crop(s)" in widget.model_info.text()
    assert viewer.layers[WEIGHT_LAYER].data.shape == image.shape

    # Near the border the square sticks out: the core's message, no silent clipping.
    points.add(np.array([3.0, 50.0]))
    widget.train()
    assert len(messages["error"]) == 1 and "outside the image" in messages["error"][0]
    widget._update_crop_preview()
    assert "outside the image" in widget.crop_info.text()

    # No point at all, and back to rectangles.
    points.data = np.zeros((0, 2))
    widget.train()
    assert "no crop centre" in messages["error"][-1]
    widget.crop_source_combo.setCurrentText(CROP_RECTANGLE)
    assert widget.crops()[0] == boxes_rect and layer is widget.image_layer()


def test_points_map_between_layers_with_different_transforms():
    image = napari.layers.Image(np.zeros((5, 40, 60)), scale=(1, 0.5, 2.0), translate=(0, 3.0, -4.0))
    points = napari.layers.Points(np.array([[0.0, 0.0], [12.0 * 0.5 + 3.0, 20.0 * 2.0 - 4.0]]))
    assert points_in_image(points, image, 10) == [(7, 15, 10, 10)]  # centre pixel (12, 20)
    assert points_in_image(points, image, 9, use_all=True) == [(-10, -2, 9, 9), (8, 16, 9, 9)]


def test_detections_stay_visible_with_a_nan_score():
    viewer = napari.components.ViewerModel()
    src = image_source(viewer.add_image(np.zeros((32, 32), np.float32), scale=SCALE))

    def found(scores):
        n = len(scores)
        return Detections(np.zeros(n, np.int64), np.full((n, 2), 5.0),
                          {"score": np.array(scores), "weight": np.ones(n), "consistency": np.ones(n)})

    points = lodestar_layers.show_points(viewer, POINTS_LAYER, found([1.0, np.nan]), src, with_frame=False)
    assert np.all(points.face_color[:, 3] > 0) and np.all(np.isfinite(points.face_color))
    lodestar_layers.show_points(viewer, POINTS_LAYER, found([1.0, 2.0, 3.0]), src, with_frame=False)
    assert viewer.layers[POINTS_LAYER] is points and points._face.color_mode == "colormap"
    assert not np.allclose(points.face_color[0], points.face_color[2])
    lodestar_layers.show_points(viewer, POINTS_LAYER, found([np.nan]), src, with_frame=False)
    assert points._face.color_mode == "direct" and np.all(points.face_color[:, 3] > 0)


def test_export_reports_a_writer_failure_that_napari_only_logs(make_napari_viewer, messages, tmp_path,
                                                               monkeypatch):
    viewer, widget = _widget(make_napari_viewer)
    viewer.add_points(np.array([[3.0, 4.0]]), name=POINTS_LAYER)
    monkeypatch.setattr(napari, "save_layers", lambda *args, **kwargs: [])
    assert widget.export_points(tmp_path / "p.csv") == []
    assert "could not export" in messages["error"][-1]
    assert not (tmp_path / "p.csv").exists()


def test_a_signal_model_shows_and_exports_the_signal(make_napari_viewer, qtbot, messages, scene, tmp_path):
    """A model trained with signal scaling (core, no Qt) adds a ``signal`` feature to the
    detections, which the CSV export keeps."""
    image, truth = scene
    flat = image - np.median(image)  # signal scaling wants a zero background
    config = TrainConfig(max_steps=150, min_steps=150, network=TINY, seed=0, signal_range=3.0)
    model = finish(train([_crop_around(flat, truth[0])], config))
    viewer, widget = _widget(make_napari_viewer)
    viewer.add_image(flat, name="scene")
    points = _detect_all_frames(qtbot, viewer, widget, model, messages)
    assert len(points.data) > 0 and "signal" in points.features
    assert np.all(points.features["signal"] > 0)
    written = widget.export_points(tmp_path / "found.csv")
    _, _, features = read_points_csv(written[0])
    np.testing.assert_allclose(features["signal"], points.features["signal"])


def test_first_axis_as_channels_reads_one_multichannel_image(make_napari_viewer, messages):
    viewer, widget = _widget(make_napari_viewer)
    stack = viewer.add_image(np.random.default_rng(0).normal(size=(2, 48, 48)).astype(np.float32), name="c",
                             scale=(1.0, 0.5, 0.5))
    assert "time-lapse: 2 frames" in widget.image_info.text()
    widget.channels_check.setChecked(True)
    assert widget.image_info.text() == "one image of 2 channels (first axis), 48×48 px"
    src = image_source(stack, channels_first=True)
    assert (src.n_frames, src.channels, src.channel_axis, src.scale, src.full_scale) == (1, 2, 0, (0.5, 0.5),
                                                                                        (0.5, 0.5))
    assert not src.is_timelapse
    widget.crop_source_combo.setCurrentText(CROP_POINT)
    widget.start_drawing()
    viewer.layers[CENTRE_LAYER].add(np.array([24.0, 24.0]))
    _, crops, frame, _ = widget.crops()
    assert frame == 0 and crops[0].shape == (2, CROP, CROP)
    np.testing.assert_array_equal(crops[0], stack.data[:, 14:34, 14:34])
    # layers that are neither C×Y×X nor C×T×Y×X say so instead of guessing
    for data, hint in ((np.zeros((48, 48)), "untick"), (np.zeros((3, 2, 48, 48)), "np.moveaxis(layer.data, 1, 0)")):
        layer = viewer.add_image(data, name=f"bad{data.ndim}")
        widget.set_image_layer(layer)
        assert not widget.channels_check.isChecked()  # choosing a layer that cannot be C×Y×X unticks it
        widget.channels_check.setChecked(True)
        assert "C×T×Y×X" in widget.image_info.text() and hint in widget.image_info.text()
    # a layer whose metadata says its first axis holds channels (or not) sets the box itself
    widget.channels_check.setChecked(False)
    viewer.add_image(stack.data, name="marked", metadata={CHANNELS_FIRST_KEY: True})
    widget.set_image_layer(viewer.layers["marked"])
    assert widget.channels_check.isChecked() and "2 channels" in widget.image_info.text()
    viewer.add_image(stack.data, name="frames", metadata={CHANNELS_FIRST_KEY: False})
    widget.set_image_layer(viewer.layers["frames"])
    assert not widget.channels_check.isChecked() and "time-lapse" in widget.image_info.text()


def test_a_hologram_trains_the_axial_position_in_the_widget(make_napari_viewer, qtbot, messages, tmp_path):
    """The hologram sample: refocus the crop, train with the Hologram box, detections carry
    their z (µm) as a feature and in the exported CSV."""
    from starloc.demo import isolated_object
    from starloc.metrics import match

    viewer, widget = _widget(make_napari_viewer, steps=600)
    widget.set_network_config(NetworkConfig())  # fringes need the default network's field of view
    widget.refocus_crop()
    assert "no image layer" in messages["error"][-1]
    viewer.open_sample("napari-starloc", "hologram")
    layer = viewer.layers["hologram (real, imaginary)"]
    widget.set_image_layer(layer)
    truth = layer.metadata["ground_truth"]
    assert widget.channels_check.isChecked() and "2 channels" in widget.image_info.text()
    assert widget.pixel_nm_spin.value() == 114.0 and widget.wavelength_spin.value() == 633.0
    widget.crop_size_spin.setValue(40)
    widget.crop_source_combo.setCurrentText(CROP_POINT)
    widget.start_drawing()
    target = truth[np.argmin(np.hypot(*(truth[:, :2] - isolated_object(truth[:, :2])).T))]
    viewer.layers[CENTRE_LAYER].add(target[:2])
    widget.hologram_box.setChecked(True)
    z = widget.refocus_crop()
    assert abs(z - target[2]) < 0.15 and widget.crop_z_spin.value() == pytest.approx(z, abs=1e-3)
    config = widget.train_config()
    assert (config.z_range_um, config.pixel_size_nm, config.crop_z_um, config.downsample) == (3.0, 114.0,
                                                                                              round(z, 3), 1)
    widget._update_crop_preview()
    assert "Downsample" not in widget.crop_info.text()  # fringes are not the object's size

    with _wait_job(qtbot, widget, "train", timeout=120_000) as blocker:
        widget.train()
    assert blocker.args == ["train", "returned"], messages["error"]
    assert widget.model.metadata["properties"] == ["row", "col", "z_um"] and widget.model.config.in_channels == 2
    points = viewer.layers[POINTS_LAYER]
    assert "z_um" in points.features
    with _wait_job(qtbot, widget, "detect_all") as blocker:
        widget.detect_all()
    assert blocker.args == ["detect_all", "returned"], messages["error"]
    points = viewer.layers[ALL_POINTS_LAYER]
    pi, ti = match(points.data, truth[:, :2], 3.0)
    assert len(pi) >= 15, (len(pi), len(points.data))
    # z is learnt within the z range around the crop's object (farther ones are not ordered)
    near = np.abs(truth[ti, 2] - z) <= 2.5
    z_found = points.features["z_um"].to_numpy()[pi]
    assert near.sum() >= 10 and np.corrcoef(z_found[near], truth[ti[near], 2])[0, 1] > 0.85
    written = widget.export_points(tmp_path / "holo.csv")
    _, _, features = read_points_csv(written[0])
    np.testing.assert_allclose(features["z_um"], points.features["z_um"])
    # coloured by z, as DeepLoco's 3D localizations: viridis' green rises with the value
    green = points.face_color[np.argsort(points.features["z_um"].to_numpy()), 1]
    assert np.all(np.diff(green) >= -1e-6) and green[-1] > green[0]

    # without the pixel size (a layer that does not state it) training asks for it
    widget.pixel_nm_spin.setValue(0.0)
    assert widget.train() is None and "Pixel size" in messages["error"][-1]
    # the 2-channel model on the layer read as 2 frames of 1 channel: a message, not garbage
    with _wait_job(qtbot, widget, "maps") as blocker:
        widget.channels_check.setChecked(False)
    assert blocker.args == ["maps", "failed"] and "takes images of 2 channel(s)" in messages["error"][-1]


def test_the_hologram_pixel_size_comes_from_the_tiff_a_layer_was_opened_from(make_napari_viewer, tmp_path):
    import tifffile

    path = tmp_path / "field.tif"
    field = np.random.default_rng(0).normal(size=(2, 48, 48)).astype(np.float32)
    tifffile.imwrite(path, field, imagej=True, resolution=(1 / 0.114, 1 / 0.114),
                     metadata={"unit": "um", "axes": "CYX"})
    viewer, widget = _widget(make_napari_viewer)
    (layer,) = viewer.open(path, plugin="napari")
    widget.set_image_layer(layer)
    assert widget.pixel_nm_spin.value() == pytest.approx(114.0)


@pytest.fixture
def preview_every_step(monkeypatch):
    """Training previews after every step, however long they take."""
    monkeypatch.setattr("starloc.gui.lodestar_jobs.PREVIEW_SHARE", float("inf"))


def test_training_previews_leave_the_model_unchanged(scene, preview_every_step):
    from starloc.gui.lodestar_jobs import TrainingPreview, train_job

    image, truth = scene
    crop = _crop_around(image, truth[0])[None]
    frame = image[None, None]
    config = TrainConfig(max_steps=12, min_steps=12, network=TINY, seed=0)
    items = []
    model, maps = finish(train_job([crop], config, frame, augment=False, preview_seconds=0.0), items.append)
    previews = [p for p in items if isinstance(p, TrainingPreview)]
    assert [p.step for p in previews] == list(range(1, 12))  # after every step but the last
    assert all(p.weights.shape == image.shape and np.all((p.weights >= 0) & (p.weights <= 1)) for p in previews)
    assert not np.array_equal(previews[0].weights, previews[-1].weights)  # the map forms as it learns
    plain, _ = finish(train_job([crop], config, frame, augment=False, preview_seconds=None))
    rare = []
    finish(train_job([crop], config, frame, augment=False, preview_seconds=1e9), rare.append)
    assert not any(isinstance(p, TrainingPreview) for p in rare)
    for a, b in zip(model.net.state_dict().values(), plain.net.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    np.testing.assert_array_equal(maps.weights, plain.maps(frame).weights)


def test_the_weight_layer_shows_the_training_and_a_cancel_restores_it(make_napari_viewer, qtbot, messages, scene,
                                                                     preview_every_step):
    from starloc.gui.lodestar_jobs import TrainingPreview

    image, truth = scene
    viewer, widget = _widget(make_napari_viewer, steps=20)
    widget.preview_seconds = 0.0
    viewer.add_image(image, name="scene")
    _draw(widget, truth[0])
    shown = []

    def record(item):
        if isinstance(item, TrainingPreview):
            shown.append((item.step, viewer.layers[WEIGHT_LAYER].data.copy()))

    with _wait_job(qtbot, widget, "train") as blocker:
        widget.train().yielded.connect(record)
    assert blocker.args == ["train", "returned"], messages["error"]
    assert len(shown) >= 10 and not np.array_equal(shown[0][1], shown[-1][1])
    final = viewer.layers[WEIGHT_LAYER].data
    np.testing.assert_allclose(final, lw.weight_image(widget._maps))

    # Cancelled: the previews were of a model that is dropped; the kept model's map is back.
    kept = final.copy()
    widget.max_steps_spin.setValue(5000)
    widget.min_steps_spin.setValue(5000)

    def cancel_after_previews(item):
        if isinstance(item, TrainingPreview) and item.step == 3:
            assert not np.array_equal(viewer.layers[WEIGHT_LAYER].data, kept)
            widget.cancel()

    with _wait_job(qtbot, widget, "train") as blocker:
        widget.train().yielded.connect(cancel_after_previews)
    assert blocker.args == ["train", "aborted"]
    np.testing.assert_array_equal(viewer.layers[WEIGHT_LAYER].data, kept)
    # ... and without a model before, no weight layer is left.
    widget.model, widget._maps, widget._maps_key = None, None, None
    lodestar_layers.remove(viewer, *OUTPUTS)
    with _wait_job(qtbot, widget, "train") as blocker:
        widget.train().yielded.connect(cancel_after_previews)
    assert blocker.args == ["train", "aborted"] and WEIGHT_LAYER not in viewer.layers
    assert messages["error"] == []


def test_detect_all_frames_links_tracks(make_napari_viewer, qtbot, messages, point_model, tmp_path):
    stack, tracks = sim.simulate_timelapse(5, 5, size=(64, 64), diffusion=0.5, rng=3)
    viewer, widget = _widget(make_napari_viewer)
    layer = viewer.add_image(stack.astype(np.float32), name="movie", scale=(2.0, *SCALE), translate=(0, *TRANSLATE))
    widget.link_check.setChecked(True)
    widget.link_distance_spin.setValue(4.0)
    points = _detect_all_frames(qtbot, viewer, widget, point_model, messages)
    linked = viewer.layers[TRACKS_LAYER]
    np.testing.assert_allclose(linked.scale, layer.scale)
    np.testing.assert_allclose(linked.translate, layer.translate)
    ids = points.features["track"].to_numpy().astype(int)
    expected = np.column_stack([ids, points.data])
    np.testing.assert_array_equal(linked.data, expected[np.lexsort((expected[:, 1], expected[:, 0]))])
    nearest = [int(np.argmin(np.hypot(*(tracks[int(f)] - p).T))) for f, *p in points.data]
    assert all(len({n for n, i in zip(nearest, ids) if i == k}) == 1 for k in set(ids))  # one particle each
    assert "track(s)" in widget.status.text()
    assert widget.export_points(tmp_path / "tracks.csv")
    assert "track" in read_points_csv(tmp_path / "tracks.csv")[2]
    assert messages["info"][-1].startswith(f"LodeSTAR: {len(points.data)} detection(s) of '{ALL_POINTS_LAYER}'")
    assert "row, col in pixels of the image" in messages["info"][-1]
    # another model since: its detections are not those of the all-frames layer, which stays unexported
    widget.model = copy.deepcopy(point_model)
    assert not widget.export_points(tmp_path / "stale.csv") and not (tmp_path / "stale.csv").exists()
    assert "no detections to export" in messages["error"].pop()
    widget.model = point_model
    # detected again without linking: the old tracks go
    widget.link_check.setChecked(False)
    _detect_all_frames(qtbot, viewer, widget, point_model, messages)
    assert TRACKS_LAYER not in viewer.layers
    assert widget.export_points(tmp_path / "all.csv") and "settings changed" not in messages["info"][-1]
    # other detection settings since: the all-frames layer no longer shows them, and the export says so
    widget.cutoff_spin.setValue(0.5)
    qtbot.waitUntil(lambda: POINTS_LAYER in viewer.layers, timeout=30_000)
    written = widget.export_points(tmp_path / "changed.csv")
    assert written and "settings changed since 'Detect all frames'" in messages["info"][-1]
    assert f"of '{POINTS_LAYER}'" in messages["info"][-1]
    assert messages["error"] == []
    # nothing detected: no tracks, no error
    widget.link_check.setChecked(True)
    widget.mode_combo.setCurrentText("absolute")
    widget.cutoff_spin.setValue(1e9)
    with _wait_job(qtbot, widget, "detect_all") as blocker:
        widget.detect_all()
    assert blocker.args == ["detect_all", "returned"] and len(points.data) == 0
    assert TRACKS_LAYER not in viewer.layers and messages["error"] == []


def test_a_z_stack_is_detected_slice_by_slice_and_not_linked(make_napari_viewer, qtbot, messages, point_model):
    """A layer whose first axis is a length (z in µm) holds slices, not frames in time: each is
    detected on its own, and 'Link into tracks' does not join objects across z."""
    stack, _ = sim.simulate_timelapse(4, 5, size=(64, 64), diffusion=0.5, rng=3)
    viewer, widget = _widget(make_napari_viewer)
    viewer.add_image(stack.astype(np.float32), name="z", scale=(0.2, 0.1, 0.1), units=("um", "um", "um"))
    assert widget.image_info.text() == "z-stack: 4 slices of 64×64 px (each detected on its own)"
    assert not any("taken as time" in m for m in messages["info"])
    widget.link_check.setChecked(True)
    points = _detect_all_frames(qtbot, viewer, widget, point_model, messages)
    assert len(points.data) > 0 and set(points.data[:, 0]) == {0, 1, 2, 3}
    assert TRACKS_LAYER not in viewer.layers and "track" not in points.features
    assert "(z-slices: not linked into tracks)" in widget.status.text()


def test_linking_that_fails_keeps_the_detections(make_napari_viewer, qtbot, messages, point_model, monkeypatch):
    from starloc.errors import InputError

    def crowded(*args):
        raise InputError("too many detections within 50 px of each other to link them: give a smaller linking "
                         "distance")

    monkeypatch.setattr("starloc.gui.lodestar_jobs.link_tracks", crowded)
    stack, _ = sim.simulate_timelapse(3, 5, size=(64, 64), diffusion=0.5, rng=3)
    viewer, widget = _widget(make_napari_viewer)
    viewer.add_image(stack.astype(np.float32), name="movie")
    widget.link_check.setChecked(True)
    widget.mode_combo.setCurrentText("ratio")
    widget.cutoff_spin.setValue(0.3)
    widget.model = point_model
    with _wait_job(qtbot, widget, "detect_all") as blocker:
        widget.detect_all()
    assert blocker.args == ["detect_all", "returned"]
    assert len(viewer.layers[ALL_POINTS_LAYER].data) >= 10 and TRACKS_LAYER not in viewer.layers
    assert "track" not in viewer.layers[ALL_POINTS_LAYER].features
    assert len(messages["error"]) == 1 and "shown without tracks" in messages["error"][0]


def test_a_frame_change_during_training_drops_the_preview(make_napari_viewer, qtbot, messages, preview_every_step,
                                                          point_model):
    from starloc.gui.lodestar_jobs import TrainingPreview

    stack, tracks = sim.simulate_timelapse(3, 5, size=(64, 64), diffusion=0.5, rng=3)
    viewer, widget = _widget(make_napari_viewer, steps=5000)
    widget.preview_seconds = 0.0
    viewer.add_image(stack.astype(np.float32), name="movie")
    widget.model = point_model
    _draw(widget, np.clip(tracks[0, 0], CROP / 2, 64 - CROP / 2))
    seen = []

    def move_then_cancel(item):
        if isinstance(item, TrainingPreview) and len(seen) < 3:  # previews queued before the cancel may follow
            seen.append(WEIGHT_LAYER in viewer.layers)
            if len(seen) == 2:
                viewer.dims.set_current_step(0, 2)  # another frame: the preview of frame 0 goes
                seen.append(WEIGHT_LAYER in viewer.layers)
                widget.cancel()

    with _wait_job(qtbot, widget, "train") as blocker:
        worker = widget.train()
        assert worker is not None, messages["error"]
        worker.yielded.connect(move_then_cancel)
    assert blocker.args == ["train", "aborted"] and seen == [True, True, False]
    assert "cancelled" in widget.status.text()  # not overwritten by progress queued before the cancel
    # the kept model's maps of the frame now on screen follow
    qtbot.waitUntil(lambda: widget._maps_key == ("movie", 2, False) and WEIGHT_LAYER in viewer.layers,
                    timeout=20_000)
    assert widget.model is point_model and messages["error"] == []


def test_brighter_objects_setting_and_notice(make_napari_viewer, qtbot, messages, point_model):
    viewer, widget = _widget(make_napari_viewer)
    widget.brighter_spin.setValue(10)
    assert widget.train_config().gain == 10.0
    bright, _, _ = sim.simulate_scene("point", 8, size=(96, 96), snr=60, rng=6)  # ~6x the crop's contrast
    viewer.add_image(bright.astype(np.float32), name="bright")
    widget.model = point_model
    for _ in range(2):  # told once per model and image
        with qtbot.waitSignal(widget.detection_updated, timeout=20_000):
            widget._follow_frame()
    told = [m for m in messages["info"] if "brighter than the training crop's" in m]
    assert len(told) == 1 and "Advanced › Brighter objects to" in told[0]
    assert messages["error"] == []


def test_a_crop_with_too_little_background_is_told(make_napari_viewer, qtbot, messages, point_model, scene):
    """A model whose crop's object read 10x fainter in the crop than in its image (a crop the
    object fills): the widget says so once, with what to do in napari's terms."""
    import copy

    viewer, widget = _widget(make_napari_viewer)
    image, _ = scene
    viewer.add_image(image.astype(np.float32), name="img")
    model = copy.copy(point_model)
    training = dict(point_model.metadata["training"])
    training["crop_alone_peak"] = training["object_peak"] / 10
    model.metadata = {**point_model.metadata, "training": training}
    widget.model = model
    for _ in range(2):  # told once per model and image
        with qtbot.waitSignal(widget.detection_updated, timeout=20_000):
            widget._follow_frame()
    told = [m for m in messages["info"] if "too little background" in m]
    assert len(told) == 1 and "10x brighter in its image" in told[0] and "draw a larger crop" in told[0]
    assert messages["error"] == []


def test_a_time_lapse_of_multichannel_frames_lines_up_with_its_layer(make_napari_viewer, qtbot, messages, scene):
    """C×T×Y×X (e.g. a hologram video: real and imaginary parts over time): each frame is one
    multichannel image; crops, maps and points refer to the frame on screen and line up with
    the layer's T, Y, X axes."""
    image, truth = scene
    frames = np.stack([np.roll(image, 3 * t, axis=1) for t in range(3)])  # T×Y×X, moving right
    stack = np.stack([frames, 0.5 * frames]).astype(np.float32)  # C×T×Y×X
    viewer, widget = _widget(make_napari_viewer)
    layer = viewer.add_image(stack, name="video", scale=(1.0, 2.0, SCALE[0], SCALE[1]),
                             metadata={CHANNELS_FIRST_KEY: True})
    assert widget.channels_check.isChecked()
    assert widget.image_info.text() == f"time-lapse: 3 frames of 2 channels (C×T×Y×X), {image.shape[0]}×{image.shape[1]} px"
    src = image_source(layer, channels_first=True)
    assert (src.n_frames, src.channels, src.time_axis, src.full_scale) == (3, 2, 1, (2.0, *SCALE))
    viewer.dims.set_point(1, 2 * 2.0)  # frame 2 on screen (world units of the T axis)
    widget.crop_source_combo.setCurrentText(CROP_POINT)
    widget.start_drawing()
    centre = np.asarray(truth[0]) + [0, 6]  # where the object is in frame 2
    viewer.layers[CENTRE_LAYER].add(centre)  # the centre layer has the image's transform: image pixels
    _, crops, frame, _ = widget.crops()
    r0, c0 = (int(round(v)) - CROP // 2 for v in centre)
    assert frame == 2 and crops[0].shape == (2, CROP, CROP)
    np.testing.assert_array_equal(crops[0], stack[:, 2, r0:r0 + CROP, c0:c0 + CROP])

    config = TrainConfig(max_steps=150, min_steps=150, network=dataclasses.replace(TINY, in_channels=2), seed=0)
    model = finish(train([crops[0]], config))
    points = _detect_all_frames(qtbot, viewer, widget, model, messages)
    assert points.ndim == 3 and tuple(points.scale) == (2.0, *SCALE)  # (t, row, col) on the layer's T, Y, X
    for t in range(3):
        found = points.data[points.data[:, 0] == t, 1:]
        moved = np.asarray(truth) + [0, 3 * t]
        near = [np.min(np.hypot(*(found - p).T)) for p in moved if 8 < p[1] < image.shape[1] - 8]
        assert np.median(near) < 1.0  # each frame's objects, where they moved to


@pytest.mark.parametrize("error", [MemoryError(), torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")])
def test_running_out_of_memory_in_a_job_is_a_one_line_failure_not_a_traceback(error):
    from starloc.gui.jobs import Failure, guarded
    from starloc.progress import finish

    def job():
        yield 1
        raise error

    result = finish(guarded(job()))
    assert isinstance(result, Failure)
    assert str(result.error).startswith("out of memory (") and "run on the CPU (device cpu)" in str(result.error)

    def bug():
        yield 1
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        finish(guarded(bug()))
