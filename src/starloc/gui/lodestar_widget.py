"""The LodeSTAR dock widget: draw one crop, train, inspect maps and detections, export.

Wiring only; the controls are built in :mod:`.lodestar_controls`, reading layers is in
:mod:`.lodestar_source`, the work that runs on napari workers in :mod:`.lodestar_jobs`, the
result layers in :mod:`.lodestar_layers`.
Bad input is reported with ``show_error`` (one line saying what to do), never a traceback.

No ``from __future__ import annotations`` here: napari injects the viewer by reading the
real annotation of ``__init__`` (a string annotation breaks ``add_plugin_dock_widget``).
"""

import os
from pathlib import Path

import napari
import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QFileDialog, QWidget

from starloc.errors import InputError, StarlocError
from starloc.gui import lodestar_layers as layers_
from starloc.gui.jobs import Failure, start_job, stop_when_closed
from starloc.gui.lodestar_controls import THUMBNAIL_PX, LodeSTARControls
from starloc.gui.lodestar_jobs import (
    PREVIEW_SECONDS,
    Detected,
    TrainingPreview,
    describe_training,
    detect_all_job,
    detect_job,
    downsampling_note,
    maps_job,
    run_detect,
    train_job,
    weight_image,
)
from starloc.gui.lodestar_source import (
    ALL_POINTS_LAYER,
    CENTRE_LAYER,
    CHANNELS_FIRST_KEY,
    CROP_LAYER,
    CROP_POINT,
    NO_IMAGE,
    OUTPUT_KEY,
    POINTS_LAYER,
    SCORE_LAYER,
    TRACKS_LAYER,
    WEIGHT_LAYER,
    current_frame,
    image_source,
    points_in_image,
    read_frame,
    rectangles_in_image,
    to_uint8,
)
from starloc.gui.units import placement, stated_pixel_size_nm
from starloc.lodestar.brightness import brightness_advice, brightness_ratio, crop_scale_advice
from starloc.lodestar.crop_content import crops_without_one_object, objects_at_border
from starloc.lodestar.detection import DetectParams, noise_detections_advice
from starloc.lodestar.downsampling import auto_downsample, suggest_downsample
from starloc.lodestar.fixed_input import fixed_input_advice
from starloc.lodestar.holography import Optics, check_pixel_size, refocus_crops
from starloc.lodestar.inference import crops_from_frame, property_columns
from starloc.lodestar.model import LodeSTAR
from starloc.lodestar.network import NetworkConfig
from starloc.lodestar.training import TrainConfig, step_budget

DEBOUNCE_MS = 200
#: layer events that move a layer on screen (the crop preview is recomputed)
TRANSFORM_EVENTS = ("scale", "translate", "rotate", "shear", "affine")
BUSY = "LodeSTAR: busy; wait for the current job or cancel it"


class LodeSTARWidget(LodeSTARControls, QWidget):
    """Train LodeSTAR on a drawn crop and detect objects, without leaving napari.

    Signals (for scripts and tests): ``job_finished(kind, outcome)`` after every job
    (kind: train, maps, detect, detect_all; outcome: returned, aborted, failed) and
    ``detection_updated()`` whenever the detection layers have been refreshed.

    ``use_threads = False`` runs the jobs on the calling thread (debugging, tests).
    ``preview_seconds``: while training, the weight layer shows the model's weight map on the
    frame at most this often (None: only when done).
    ``network_config`` is the architecture of newly trained models (``in_channels`` is
    set from the image).
    """

    job_finished = Signal(str, str)
    detection_updated = Signal()

    def __init__(self, viewer: napari.viewer.Viewer, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self.use_threads = True
        self.network_config = NetworkConfig()
        #: Re-run detection on a worker when the frame has more pixels than this; with
        #: deblending (a network pass over the crowded objects) above the second figure.
        self.worker_pixels = 2048 * 2048
        self.deblend_worker_pixels = 512 * 512
        self.model = None
        self.model_origin = ""
        #: (image layer, model) of the all-frames detections layer
        self._all_frames_of: tuple = (None, None, None)  # image layer, model, detection settings
        self.worker = None
        self._job_kind = None
        self._job_id = 0
        self._cancelled = False
        self._maps = None  # Maps of one frame, cached: detection reruns without the network
        self._frame = None  # that frame (1, C, H, W), for deblending crowded detections
        self._maps_key = None  # (layer name, frame, augment) the cached maps belong to
        self._previewed = None  # step of the model in training that the weight layer shows
        self._training_key = None  # (layer name, frame, augment) of the training's frame
        self.preview_seconds = PREVIEW_SECONDS  # between weight-map previews in training (None: off)
        self._announced = set()
        self._brightness_told = set()  # (model id, layer name) already checked for brighter objects

        self._detect_timer = self._timer(self._redetect)
        self._frame_timer = self._timer(self._follow_frame)
        self._preview_timer = self._timer(self._update_crop_preview, 100)
        self._build_ui()

        self.viewer.layers.events.inserted.connect(self._on_layers_changed)
        self.viewer.layers.events.removed.connect(self._on_layers_changed)
        self.viewer.layers.events.moved.connect(self._on_layers_changed)
        self.viewer.dims.events.current_step.connect(self._on_step)
        self.job_finished.connect(self._on_job_finished)
        for layer in self.viewer.layers:
            self._watch(layer)
        self._refresh_image_choices()
        self._set_busy(None)
        # Results of a job that ends after the widget is closed (or the viewer) are dropped.
        stop_when_closed(self, self._shutdown)

    def _shutdown(self) -> None:
        self._job_id += 1
        self._job_kind = None
        if self.worker is not None:
            self.worker.quit()
        try:
            self.viewer.dims.events.current_step.disconnect(self._on_step)
            self.viewer.layers.events.inserted.disconnect(self._on_layers_changed)
            self.viewer.layers.events.removed.disconnect(self._on_layers_changed)
            self.viewer.layers.events.moved.disconnect(self._on_layers_changed)
            for layer in self.viewer.layers:
                self._unwatch(layer)
        except Exception:  # the viewer may be gone already
            pass

    # ------------------------------------------------------------------ UI
    def _timer(self, slot, ms=DEBOUNCE_MS) -> QTimer:
        timer = QTimer(self)
        timer.setSingleShot(True)
        timer.setInterval(ms)
        timer.timeout.connect(slot)
        return timer

    @property
    def min_crop_size(self) -> int:
        """Smallest crop side (image px): the receptive field, downsampling included (with
        Auto, the factor adapts to the crop, so the receptive field itself)."""
        factor = 1 if self.downsample_auto.isChecked() else self.downsample_spin.value()
        return self.network_config.receptive_field * factor

    def _on_downsample_auto(self, auto: bool) -> None:
        self.downsample_spin.setEnabled(not auto)
        self._update_rf_label()

    def _update_rf_label(self, *_) -> None:
        rf = self.min_crop_size
        self.rf_label.setText(f"{rf} px (smallest crop)")
        self.crop_size_spin.setMinimum(rf)
        self._schedule_preview()

    def set_network_config(self, config: NetworkConfig) -> None:
        """Architecture of the next trained model (e.g. deeper for objects > 20 px)."""
        self.network_config = config
        self._update_rf_label()

    # ------------------------------------------------------------------ parameters
    @property
    def hologram(self) -> bool:
        """Axial training on a complex field is on (the Hologram box is ticked)."""
        return self.hologram_box.isChecked()

    def _hologram_settings(self) -> dict:
        """TrainConfig fields of the Hologram box (none when it is off)."""
        if not self.hologram:
            return {}
        pixel = self.pixel_nm_spin.value()
        return dict(z_range_um=self.z_range_spin.value(), pixel_size_nm=pixel if pixel > 0 else None,
                    wavelength_nm=self.wavelength_spin.value(), n_medium=self.n_medium_spin.value(),
                    crop_z_um=self.crop_z_spin.value())

    def _require_pixel_size(self) -> float:
        """The Hologram box's pixel size (nm); InputError while it is not set."""
        if self.pixel_nm_spin.value() <= 0:
            raise InputError("set the Pixel size (nm) in the Hologram box: the layer does not state it")
        return self.pixel_nm_spin.value()

    def train_config(self) -> TrainConfig:
        """The training settings of the widget, frozen (handed to the worker)."""
        return TrainConfig(
            max_steps=self.max_steps_spin.value() or None,
            min_steps=None if self.min_steps_spin.value() < 0 else self.min_steps_spin.value(),
            patience=self.patience_spin.value(),
            copies=self.copies_spin.value(),
            lr=self.lr_spin.value(),
            noise=self.noise_spin.value(),
            gain=self.brighter_spin.value(),
            shot_noise=TrainConfig.shot_noise if self.shot_check.isChecked() else (0.0, 0.0),
            translate=self.translate_spin.value(),
            signal_range=self.signal_spin.value() if self.signal_spin.value() > 1 else None,
            seed=self.seed_spin.value(),
            device=self.device,
            downsample=1 if self.hologram else self.downsample_spin.value(),
            network=self.network_config,
            **self._hologram_settings(),
        )

    def detect_params(self) -> DetectParams:
        beta = self.beta_spin.value()
        return DetectParams(
            alpha=self.alpha_spin.value(),
            beta=None if beta <= self.beta_spin.minimum() else beta,
            cutoff=self.cutoff_spin.value(),
            min_weight=self.min_weight_spin.value(),
            max_consistency=self.max_consistency_spin.value() or None,
            mode=self.mode_combo.currentText(),
            deblend=self.deblend_check.isChecked(),
        )

    @property
    def device(self) -> str:
        return self.device_combo.currentText()

    # ------------------------------------------------------------------ layers
    def _image_layers(self):
        return [
            layer for layer in self.viewer.layers
            if isinstance(layer, napari.layers.Image) and not layer.metadata.get(OUTPUT_KEY)
        ]

    def _refresh_image_choices(self) -> None:
        current = self.image_combo.currentText()
        names = [layer.name for layer in self._image_layers()]
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentText(current)
        self.image_combo.blockSignals(False)
        if self.image_combo.currentText() != current:
            self._on_image_changed()

    def _watch(self, layer) -> None:
        """Follow renames of a layer, edits of the crop rectangles / centres, and new data in
        the image layer (e.g. ``layer.data = ...`` from a script or another plugin)."""
        layer.events.name.connect(self._on_layers_changed)
        if layer.name in (CROP_LAYER, CENTRE_LAYER):
            layer.events.data.connect(self._schedule_preview)
        else:
            layer.events.data.connect(self._on_layer_data)
        for name in TRANSFORM_EVENTS:  # a moved crop or image layer changes what the crop holds
            getattr(layer.events, name).connect(self._schedule_preview)

    def _unwatch(self, layer) -> None:
        layer.events.name.disconnect(self._on_layers_changed)
        layer.events.data.disconnect(self._schedule_preview)
        layer.events.data.disconnect(self._on_layer_data)
        for name in TRANSFORM_EVENTS:
            getattr(layer.events, name).disconnect(self._schedule_preview)

    def _on_layer_data(self, event=None) -> None:
        """The chosen image layer's pixels changed: the cached maps are of the old ones."""
        if getattr(event, "source", None) is not self.image_layer():
            return
        self._maps, self._maps_key, self._frame = None, None, None
        self._schedule_preview()
        if self.model is not None:
            self._frame_timer.start()

    def _on_layers_changed(self, event=None) -> None:
        if event is not None and getattr(event, "type", "") == "inserted":
            self._watch(event.value)
        self._refresh_image_choices()

    def image_layer(self):
        name = self.image_combo.currentText()
        for layer in self._image_layers():
            if layer.name == name:
                return layer
        return None

    def set_image_layer(self, layer) -> None:
        self.image_combo.setCurrentText(layer.name)

    def _crop_layer(self):
        return layers_.find_layer(self.viewer, CROP_LAYER, "Shapes")

    def _centre_layer(self):
        return layers_.find_layer(self.viewer, CENTRE_LAYER, "Points")

    def _point_mode(self) -> bool:
        return self.crop_source_combo.currentText() == CROP_POINT

    def _on_image_changed(self, *_, adopt: bool = True) -> None:
        """A new image layer was chosen (``adopt``: take the settings it states) or the way of
        reading it changed."""
        self._maps, self._maps_key, self._frame = None, None, None
        self._drop_stale_preview()
        layer = self.image_layer()
        if layer is None:
            self.image_info.setText("no image layer: open an image or a sample (File › Open Sample)")
        else:
            if adopt:
                self._adopt_layer_hints(layer)
            try:
                src = self._image_source(layer)
            except InputError as exc:
                self.image_info.setText(str(exc))
            else:
                self.image_info.setText(src.describe())
                if src.is_timelapse and src.channel_axis is None and not src.z_stack \
                        and layer.name not in self._announced:
                    self._announced.add(layer.name)
                    show_info(
                        f"LodeSTAR: the first axis of {layer.name!r} ({src.n_frames}) is taken as time; "
                        "each frame is a separate 2D image (a z-stack is treated the same way)"
                    )
                if self.model is not None:
                    self._frame_timer.start()
        self._schedule_preview()

    def _adopt_layer_hints(self, layer) -> None:
        """Settings the layer states itself: whether its first axis holds channels (metadata; a
        layer that cannot be C×Y×X or C×T×Y×X unticks the box), its pixel size (length units, or the
        ImageJ/OME metadata of the TIFF it was opened from) and optics (``metadata["optics"]``)
        for the Hologram box."""
        stated = layer.metadata.get(CHANNELS_FIRST_KEY)
        channels = bool(stated) if stated is not None else self.channels_check.isChecked()
        if layer.ndim not in (3, 4) or getattr(layer, "rgb", False) or (layer.ndim == 4 and stated is None):
            channels = False  # a 4D layer without metadata is more often T×Z×Y×X: the message says to tick
        self.channels_check.blockSignals(True)
        self.channels_check.setChecked(channels)
        self.channels_check.blockSignals(False)
        pixel = stated_pixel_size_nm(layer)
        if pixel is not None:
            self.pixel_nm_spin.setValue(pixel)
        optics = layer.metadata.get("optics") or {}
        if "wavelength_nm" in optics:
            self.wavelength_spin.setValue(float(optics["wavelength_nm"]))
        if "n_medium" in optics:
            self.n_medium_spin.setValue(float(optics["n_medium"]))

    def _image_source(self, layer):
        return image_source(layer, self.channels_check.isChecked())

    def _require_source(self):
        """``(layer, ImageSource)`` of the chosen image; InputError when there is none."""
        layer = self.image_layer()
        if layer is None:
            raise InputError(NO_IMAGE)
        return layer, self._image_source(layer)

    def _source(self):
        """``(layer, ImageSource)`` of the chosen image, or None after telling the user why."""
        try:
            return self._require_source()
        except InputError as exc:
            show_error(f"LodeSTAR: {exc}")
            return None

    def _quiet_source(self):
        """``(layer, ImageSource)`` of the chosen image, or None (nothing said)."""
        try:
            return self._require_source()
        except InputError:
            return None

    def _frame_of(self, layer) -> int:
        return current_frame(layer, self.viewer.dims.point, self.channels_check.isChecked())

    # ------------------------------------------------------------------ crop
    def _on_crop_source_changed(self, *_) -> None:
        point = self._point_mode()
        self.crop_size_spin.setEnabled(point)
        if point:
            self.draw_button.setText("Place centre")
            self.draw_button.setToolTip(f"Click the centre of ONE object in the {CENTRE_LAYER!r} layer")
            self.all_rects_check.setText("Use all points")
            self.all_rects_check.setToolTip("Train on a square around every point (one object each)")
        else:
            self.draw_button.setText("Draw crop")
            self.draw_button.setToolTip(f"Add a rectangle around ONE object in the {CROP_LAYER!r} layer")
            self.all_rects_check.setText("Use all rectangles")
            self.all_rects_check.setToolTip("Train on every rectangle (one object each) instead of the last one")
        self._schedule_preview()

    def start_drawing(self) -> None:
        """Create (or reuse) the crop input layer: Shapes in rectangle mode, or (Point + size)
        Points in add mode."""
        found = self._source()
        if found is None:
            return
        _, src = found
        if self._point_mode():
            layer = self._centre_layer()
            if layer is None:
                layer = self.viewer.add_points(
                    ndim=2, name=CENTRE_LAYER, **placement(src.scale, src.translate, src.units),
                    face_color="yellow", border_color="black", size=3,
                )
            mode, hint = "add", f"click the centre of ONE object ({self.crop_size_spin.value()} px square)"
        else:
            layer = self._crop_layer()
            if layer is None:
                layer = self.viewer.add_shapes(
                    ndim=2, name=CROP_LAYER, **placement(src.scale, src.translate, src.units),
                    edge_color="yellow", face_color="transparent", edge_width=0.5,
                )
            mode, hint = "add_rectangle", "drag a rectangle around ONE object (a bit larger than it)"
        self.viewer.layers.selection.active = layer
        layer.mode = mode
        show_info(f"LodeSTAR: {hint}, then click Train")

    def crop_boxes(self, image_layer) -> list:
        """Crops ``(row, col, height, width)`` in ``image_layer``'s pixels from the chosen input
        (rectangles, or squares around points); InputError when there is none."""
        use_all = self.all_rects_check.isChecked()
        if self._point_mode():
            return points_in_image(self._centre_layer(), image_layer, self.crop_size_spin.value(), use_all)
        return rectangles_in_image(self._crop_layer(), image_layer, use_all)

    def crops(self):
        """``(boxes, crops, frame, src)`` for training, or raises InputError."""
        return self._cut_crops()[:4]

    def _cut_crops(self):
        """:meth:`crops` and the frame they were cut from, ``(1, C, H, W)``, read once."""
        layer, src = self._require_source()
        boxes = self.crop_boxes(layer)
        frame = self._frame_of(layer)
        if not boxes:
            raise InputError("no crop given; select a rectangle around one object")
        frame_data = read_frame(src, frame)
        return boxes, crops_from_frame(frame_data, boxes, self.min_crop_size), frame, src, frame_data

    def _apply_auto_downsample(self, crops) -> tuple[int, int, float] | None:
        """With Auto ticked: set Downsample for these crops and return ``(factor, suggested,
        extent)`` (see :func:`~starloc.lodestar.downsampling.auto_downsample`); else None."""
        if not self.downsample_auto.isChecked():
            return None
        chosen = auto_downsample(crops, self.network_config.receptive_field)
        self.downsample_spin.setValue(chosen[0])
        return chosen

    def _downsample_hint(self, crops) -> str:
        """With Auto: the factor it set, when not 1; else a note when the object's size calls
        for another value."""
        chosen = self._apply_auto_downsample(crops)
        if chosen is not None:
            factor, suggested, extent = chosen
            if factor < suggested:
                field = self.network_config.receptive_field
                risk = " (a full-resolution model may follow its edges: crop wider)" if factor == 1 else ""
                step = f"{factor + 1} needs a crop of ≥ {(factor + 1) * field} px, " if factor + 1 < suggested else ""
                return (f"; object ≈ {extent:.0f} px across: Downsample {factor} (auto){risk}; {step}{suggested} "
                        f"needs a crop of ≥ {suggested * field} px")
            return f"; object ≈ {extent:.0f} px across: Downsample {factor} (auto)" if factor > 1 else ""
        suggested, extent = suggest_downsample(crops)
        if suggested == self.downsample_spin.value():
            return ""
        return f"; object ≈ {extent:.0f} px across: Downsample {suggested} suggested (Advanced)"

    @staticmethod
    def _one_object_hint(crops) -> str:
        """A note for each crop that seems to hold no object or several."""
        def hint(i, n):
            if n == 0:
                return f"; crop {i + 1} seems to hold no object: LodeSTAR learns from ONE"
            border = objects_at_border(crops[i])
            if n - border == 1:
                return f"; crop {i + 1} cuts {border} neighbour(s) at its edge: fine if small, else crop without"
            return f"; crop {i + 1} seems to hold {n} objects: LodeSTAR learns from ONE"

        return "".join(hint(i, n) for i, n in crops_without_one_object(crops))

    def _schedule_preview(self, *_) -> None:
        self._preview_timer.start()

    def _update_crop_preview(self) -> None:
        try:
            rects, crops, frame, src = self.crops()
        except InputError as exc:
            self.crop_info.setText(str(exc))
            self.thumbnail.clear()
            return
        sizes = ", ".join(f"{h}×{w}" for _, _, h, w in rects)
        where = f" (frame {frame})" if src.is_timelapse else ""
        # a field's fringes reach far beyond its object: its extent says nothing about size or count
        hints = "" if self.hologram else self._downsample_hint(crops) + self._one_object_hint(crops)
        self.crop_info.setText(f"{len(crops)} crop(s): {sizes} px{where}; minimum {self.min_crop_size} px" + hints)
        pixels = to_uint8(crops[-1], magnitude=self.hologram)
        h, w = pixels.shape
        image = QImage(pixels.data, w, h, w, QImage.Format_Grayscale8).copy()
        self.thumbnail.setPixmap(
            QPixmap.fromImage(image).scaled(THUMBNAIL_PX, THUMBNAIL_PX, Qt.KeepAspectRatio, Qt.FastTransformation)
        )

    # ------------------------------------------------------------------ jobs
    def _set_busy(self, kind) -> None:
        self._job_kind = kind
        long_job = kind in ("train", "detect_all")
        for button in (self.train_button, self.detect_all_button, self.load_button, self.draw_button):
            button.setEnabled(not long_job)
        self.cancel_button.setEnabled(kind is not None)

    def is_busy(self) -> bool:
        return self._job_kind is not None

    def _start(self, kind, gen, on_yield, on_return):
        """Run ``gen`` on a napari worker (or inline); returns the worker (None inline)."""
        if self._job_kind is not None:
            if self._job_kind in ("maps", "detect"):  # short jobs give way to any new one
                self._quit_worker()
            else:
                show_error(BUSY)
                return None
        self._job_id += 1
        job = self._job_id
        self._cancelled = False
        self._set_busy(kind)

        def returned(result):
            if job != self._job_id:
                return
            self._set_busy(None)
            if self._cancelled:
                self.job_finished.emit(kind, "aborted")
                return
            if isinstance(result, Failure):
                show_error(f"LodeSTAR: {result.error}")
                self.job_finished.emit(kind, "failed")
                return
            on_return(result)
            self.job_finished.emit(kind, "returned")
            self._after_job()

        def aborted():
            if job != self._job_id:
                return
            self._set_busy(None)
            self.job_finished.emit(kind, "aborted")

        def errored(exc):  # a bug: napari also shows it with its traceback
            if job != self._job_id:
                return
            self._set_busy(None)
            self.job_finished.emit(kind, "failed")

        def yielded(value):
            if job == self._job_id and not self._cancelled:  # progress queued before a Cancel is old news
                on_yield(value)

        self.worker = None  # not the last job's, should this one raise inline
        self.worker = start_job(gen, self.use_threads, yielded, returned, aborted, errored)
        return self.worker

    def _quit_worker(self) -> None:
        self._job_id += 1  # results of the old job are ignored from now on
        if self.worker is not None:
            self.worker.quit()
        self._set_busy(None)

    def cancel(self) -> None:
        """Stop the running job; training keeps the previous model and layers."""
        if self._job_kind is None:
            return
        self._cancelled = True
        if self.worker is not None:
            self.worker.quit()
        self.status.setText(f"{self._job_kind.replace('_', ' ')}: cancelled")

    def _after_job(self) -> None:
        """Maps of the frame now shown, if the user moved while a job ran."""
        if self._maps_stale():
            self._frame_timer.start()

    # ------------------------------------------------------------------ train
    def train(self):
        """Train a new model on the drawn crop(s) in a worker; returns the worker."""
        if self._job_kind in ("train", "detect_all"):
            show_error(BUSY)
            return None
        try:
            boxes, crops, frame, src, frame_data = self._cut_crops()
            if self.hologram:
                self._require_pixel_size()
        except InputError as exc:
            show_error(f"LodeSTAR: {exc}")
            return None
        if not self.hologram:
            self._apply_auto_downsample(crops)
        config = self.train_config()
        augment = self.augment_check.isChecked()
        key = (src.name, frame, augment)
        self._training_key = key
        self.progress.setRange(0, step_budget(config, [c.shape[-2:] for c in crops])[0])
        self.progress.setValue(0)
        self.status.setText("training…")

        def on_yield(p):
            if isinstance(p, TrainingPreview):
                self._show_preview(p, key)
                return
            self.progress.setMaximum(p.max_steps)
            self.progress.setValue(p.step)
            shown = "" if self._previewed is None else f" · weight map: step {self._previewed}"
            self.status.setText(f"step {p.step}/{p.max_steps} · loss {p.loss:.4f} · {p.elapsed:.1f} s{shown}")

        def on_return(result):
            model, maps = result
            self.model = model
            self.model_origin = describe_training(model, len(crops))
            self.model_info.setText(f"Model: {self.model_origin}")
            self.progress.setValue(self.progress.maximum())
            self.status.setText(f"done: {self.model_origin}")
            self._set_maps(maps, key, frame_data)

        job = train_job(crops, config, frame_data, augment, self.preview_seconds, boxes)
        return self._start("train", job, on_yield, on_return)

    def _show_preview(self, preview: TrainingPreview, key) -> None:
        """The weight map of the model in training, on the frame it was trained from, if that
        frame is still the one on screen."""
        found = self._quiet_source() if key == self._wanted_maps_key() else None
        if found is None:
            return
        self._previewed = preview.step
        layers_.show_map(self.viewer, WEIGHT_LAYER, preview.weights, found[1], "magma", key[1])

    def _drop_stale_preview(self) -> None:
        """The frame or image on screen is no longer the one being trained on: its preview goes."""
        if self._previewed is not None and self._job_kind == "train" and self._training_key != self._wanted_maps_key():
            self._previewed = None
            layers_.remove(self.viewer, WEIGHT_LAYER)

    def _on_job_finished(self, kind: str, outcome: str) -> None:
        """After a cancelled or failed training the weight layer shows the kept model again
        (the previews were of the model that was dropped), on the frame now on screen."""
        if kind != "train":
            return
        previewed, self._previewed = self._previewed, None
        if outcome == "returned":
            return
        if previewed is not None:
            shown = self._maps is not None and self._maps_key == self._wanted_maps_key()
            found = self._quiet_source() if shown else None
            if found is None:
                layers_.remove(self.viewer, WEIGHT_LAYER)
            else:
                layers_.show_map(self.viewer, WEIGHT_LAYER, weight_image(self._maps), found[1], "magma",
                                 self._maps_key[1])
        self._after_job()  # the user may have moved to another frame while it trained

    def refocus_crop(self):
        """Set Crop z to the z where the crops' field comes into focus
        (:func:`~starloc.lodestar.holography.refocus_crops`). Returns it in µm, or None after
        telling the user what is missing."""
        try:
            crops = self.crops()[1]
            if any(c.shape[0] != 2 for c in crops):
                raise InputError("refocusing needs a complex field: a 2×Y×X layer (real, imaginary) with "
                                 "'First axis = channels' ticked")
            optics = Optics(self.wavelength_spin.value(), self._require_pixel_size(), self.n_medium_spin.value())
            z = refocus_crops(crops, optics, self.z_range_spin.value())
        except InputError as exc:
            show_error(f"LodeSTAR: {exc}")
            return None
        self.crop_z_spin.setValue(z)
        show_info(f"LodeSTAR: the crop's object refocuses at z = {z:+.3f} µm; z is now reported from the focal plane")
        return z

    # ------------------------------------------------------------------ maps and detection
    def _maps_stale(self) -> bool:
        """A model exists but the cached maps are not those of the image/frame on screen."""
        return self.model is not None and self._maps_key != self._wanted_maps_key()

    def _wanted_maps_key(self):
        layer = self.image_layer()
        if layer is None:
            return None
        try:
            return (layer.name, self._frame_of(layer), self.augment_check.isChecked())
        except InputError:
            return None

    def _on_step(self, event=None) -> None:
        self._drop_stale_preview()
        if self._maps_key is not None and self._maps_stale():
            self._frame_timer.start()
        self._schedule_preview()

    def _on_augment_changed(self, *_) -> None:
        if self.model is not None:
            self._frame_timer.start()

    def _follow_frame(self):
        """(Re)compute the maps of the frame on screen (worker); returns the worker."""
        if self.model is None or self._job_kind in ("train", "detect_all"):
            return None
        layer = self.image_layer()
        if layer is None:
            return None
        try:
            src = self._image_source(layer)
            self._check_pixel_size(layer)
            frame = self._frame_of(layer)
            frame_data = read_frame(src, frame)
        except InputError as exc:
            show_error(f"LodeSTAR: {exc}")
            return None
        key = (src.name, frame, self.augment_check.isChecked())
        self.status.setText(f"computing maps of frame {frame}…" if src.is_timelapse else "computing maps…")
        return self._start("maps", maps_job(self.model, frame_data, key[2]), lambda _: None,
                           lambda maps: self._set_maps(maps, key, frame_data))

    def _set_maps(self, maps, key, frame) -> None:
        if key != self._wanted_maps_key():
            # The layer (or frame) on screen changed while these maps were computed, e.g. the
            # image was closed during training: they belong to nothing shown. Compute the
            # right ones, if there is an image; the model is kept either way.
            self._maps, self._maps_key, self._frame = None, None, None
            if self.model is not None and self.image_layer() is not None:
                self._frame_timer.start()
            return
        self._maps, self._maps_key, self._frame = maps, key, frame
        found = self._source()
        if found is None:
            return
        _, src = found
        layers_.show_map(self.viewer, WEIGHT_LAYER, weight_image(maps), src, "magma", key[1])
        self._tell_about_frame(key[0], frame)
        if self.status.text().startswith("computing maps"):
            self.status.setText(f"maps of frame {key[1]} ready" if src.is_timelapse else "maps ready")
        self._redetect()

    def _check_pixel_size(self, layer) -> None:
        """InputError when a hologram model meets a layer of another pixel size than it was
        trained at (the Hologram box's value: the layer's, or the user's correction)."""
        check_pixel_size(self.model, self.pixel_nm_spin.value() or None, repr(layer.name), "the Hologram box")

    def _tell_about_frame(self, layer_name: str, frame) -> None:
        """Once per model and image: say so when the image holds objects far brighter than
        those the model was trained for (:mod:`starloc.lodestar.brightness`), or is unlike the
        crops of a fixed-normalization model (:mod:`starloc.lodestar.fixed_input`)."""
        told = (id(self.model), layer_name)
        if told in self._brightness_told:
            return
        self._brightness_told.add(told)
        for advice in (crop_scale_advice(self.model, how="draw a larger crop, with background around the object, "
                                                       "and train again"),
                       brightness_advice(self.model, brightness_ratio(self.model, frame),
                                         how="set Advanced › Brighter objects to {x} and train again"),
                       fixed_input_advice(self.model, frame)):
            if advice is not None:
                show_info(f"LodeSTAR: {advice}")

    def _on_mode_changed(self, mode: str) -> None:
        if mode == "absolute":
            self.cutoff_spin.setMaximum(1e9)
        else:
            self.cutoff_spin.setMaximum(1.0)
            if mode == "ratio" and self.cutoff_spin.value() > 0.9:
                self.cutoff_spin.setValue(0.3)
        self._schedule_detect()

    def _schedule_detect(self, *_) -> None:
        if self._maps is not None:
            self._detect_timer.start()

    def redetect(self) -> None:
        """Detection on the cached maps with the current α, β, cutoff (no debounce)."""
        self._redetect(force_sync=True)

    def _redetect(self, force_sync: bool = False):
        if self._maps is None:
            return None
        params = self.detect_params()
        key = self._maps_key
        if self._job_kind == "maps":
            return None  # new maps are on their way; they trigger detection themselves
        limit = self.deblend_worker_pixels if params.deblend else self.worker_pixels
        large = int(np.prod(self._maps.image_shape)) > limit
        if large and not force_sync and self._job_kind in (None, "detect"):
            return self._start("detect", detect_job(self.model, self._frame, self._maps, params, key[2]),
                               lambda _: None,
                               lambda res: self._show_detections(res, key))
        try:
            result = run_detect(self.model, self._frame, self._maps, params, key[2])
        except ValueError as exc:
            show_error(f"LodeSTAR: {exc}")
            return None
        self._show_detections(result, key)
        return None

    def _show_detections(self, result: Detected, key) -> None:
        found = self._source()
        if found is None or self._maps is None:
            return
        _, src = found
        frame = key[1]
        detections = result.detections
        detections.frame = np.full(len(detections), frame, dtype=np.int64)
        layers_.show_map(self.viewer, SCORE_LAYER, result.score, src, "viridis", frame)
        layers_.show_points(self.viewer, POINTS_LAYER, detections, src, with_frame=src.is_timelapse,
                            metadata={"frame": frame}, properties=property_columns(self.model, detections.positions))
        where = f" on frame {frame}" if src.is_timelapse else ""
        self.detect_info.setText(f"{len(detections)} detection(s){where}")
        self.detection_updated.emit()

    def detect_all(self):
        """Detect on every frame (worker) → one Points layer (frame, row, col); returns the worker."""
        if self.model is None:
            show_error("LodeSTAR: no model; train one on a crop or load one first")
            return None
        found = self._source()
        if found is None:
            return None
        image_layer, src = found
        try:
            self._check_pixel_size(image_layer)
        except InputError as exc:
            show_error(f"LodeSTAR: {exc}")
            return None
        params = self.detect_params()
        self.progress.setRange(0, src.n_frames)
        self.progress.setValue(0)
        self.status.setText("detecting on all frames…")

        def on_yield(p):
            done, total = p
            self.progress.setMaximum(total)
            self.progress.setValue(done)
            self.status.setText(f"detecting: frame {done}/{total}")

        def on_return(result):
            detections, track = result.detections, result.track
            properties = {**property_columns(model, detections.positions),
                          **({} if track is None else {"track": track})}
            layers_.show_points(self.viewer, ALL_POINTS_LAYER, detections, src, with_frame=src.is_timelapse,
                                properties=properties)
            self._all_frames_of = (image_layer, model, settings)
            linked = ""
            if track is None or len(track) == 0:
                layers_.remove(self.viewer, TRACKS_LAYER)  # not those of these detections
            else:
                layers_.show_tracks(self.viewer, TRACKS_LAYER, detections, track, src)
            if track is not None:
                linked = f" in {int(track.max(initial=-1)) + 1} track(s)"
            elif self.link_check.isChecked() and not src.is_timelapse:
                linked = " (one frame: nothing to link)"
            elif self.link_check.isChecked() and src.z_stack:
                linked = " (z-slices: not linked into tracks)"
            self.status.setText(f"{len(detections)} detection(s){linked} in {src.n_frames} frame(s)")
            advice = noise_detections_advice(detections.features, params.max_consistency, option="Max consistency")
            if advice is not None:
                show_info(f"LodeSTAR: {advice}")
            if result.link_error is not None:
                show_error(f"LodeSTAR: {result.link_error}; the detections are shown without tracks")

        model = self.model  # the one this job runs, even if another is loaded meanwhile
        settings = self._detect_settings()
        link = ((self.link_distance_spin.value(), self.link_memory_spin.value())
                if self.link_check.isChecked() and src.is_timelapse and not src.z_stack else None)
        gen = detect_all_job(model, src.data, params, src.rgb, self.augment_check.isChecked(),
                             channel_axis=src.channel_axis, link=link)
        return self._start("detect_all", gen, on_yield, on_return)

    # ------------------------------------------------------------------ files
    def save_model(self, path) -> bool:
        if self.model is None:
            show_error("LodeSTAR: no model to save; train one first")
            return False
        try:
            self.model.save(path)
        except (StarlocError, OSError) as exc:
            show_error(f"LodeSTAR: could not save the model: {exc}")
            return False
        show_info(f"LodeSTAR: model saved to {path}")
        return True

    def load_model(self, path) -> bool:
        """Load a model file; a foreign or damaged file keeps the current model."""
        try:
            model = LodeSTAR.load(path, device=self.device)
        except StarlocError as exc:
            show_error(f"LodeSTAR: {exc}")
            return False
        self.model = model
        self.model_origin = f"loaded from {Path(path).name}{downsampling_note(model)}"
        self.model_info.setText(f"Model: {self.model_origin}")
        self._maps, self._maps_key, self._frame = None, None, None
        if self.image_layer() is not None:
            self._follow_frame()
        return True

    def _detect_settings(self) -> tuple:
        """What decides the detections besides the image and the model."""
        return self.detect_params(), self.augment_check.isChecked()

    def export_points(self, path) -> list:
        """Write the detections as CSV (frame, row, col in the image's pixels): of all frames when
        they were detected on the image layer chosen now, with the model and the detection
        settings of now, else of the current frame (and say why)."""
        layer = layers_.find_layer(self.viewer, ALL_POINTS_LAYER, "Points")
        image, model, settings = self._all_frames_of
        stale = ""
        if layer is not None and (image is not self.image_layer() or model is not self.model):
            layer = None  # of another image or model
        elif layer is not None and settings != self._detect_settings():
            layer = None
            stale = ("; the detection settings changed since 'Detect all frames', so these are the current "
                     "frame's: run it again to export every frame")
        if layer is None:
            layer = layers_.find_layer(self.viewer, POINTS_LAYER, "Points")
        if layer is None:
            show_error("LodeSTAR: no detections to export; train or load a model first")
            return []
        try:
            written = napari.save_layers(os.fspath(path), [layer], plugin="napari-starloc")
        except (ValueError, OSError) as exc:
            show_error(f"LodeSTAR: could not export {layer.name!r}: {exc}")
            return []
        if not written:  # napari reports some writer failures only in its log
            show_error(f"LodeSTAR: could not export {layer.name!r} to {path}; see the napari log")
            return []
        show_info(f"LodeSTAR: {len(layer.data)} detection(s) of {layer.name!r} written to {path} (row, col in "
                  f"pixels of the image, frames 0-based){stale}")
        return written

    def _save_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save LodeSTAR model", "lodestar.pt", "LodeSTAR model (*.pt)")
        if path:
            self.save_model(path)

    def _load_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load LodeSTAR model", "", "LodeSTAR model (*.pt);;All files (*)")
        if path:
            self.load_model(path)

    def _export_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export detections", "detections.csv", "CSV (*.csv)")
        if path:
            self.export_points(path)
