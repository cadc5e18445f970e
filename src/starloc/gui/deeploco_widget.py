"""napari dock widget: localize an SMLM stack with a trained DeepLoco model (the **Localize**
tab), or train one from a bead z-stack (the **Train** tab, :mod:`starloc.gui.deeploco_training`;
the model it writes is loaded here when it is done).

Load a model file (``starloc deeploco train``), pick an image layer (a ``(T, Y, X)`` stack or
one ``(Y, X)`` frame, camera ADU or photons), click **Localize**: the stack is localized on a
worker (progress bar, **Cancel** between chunks of frames) by the same core as ``starloc
deeploco localize``, and the result becomes the Points layer ``DeepLoco localizations``.

Points are ``(frame, row, col)`` (``(row, col)`` for one frame) in the image's pixels, with the
image layer's scale, translate and units, so they sit on the emitters. An image whose axes carry
length units, or whose TIFF file states a pixel size, must have the model's pixel size. The
model's nm positions use a corner origin (pixel ``j``'s centre at ``(j + 0.5) * pixel_size``),
hence ``row = y / px - 0.5``.
Features: ``x_nm``, ``y_nm`` (and ``z_nm`` for 3D models), ``confidence``, and for models with
an error head ``uncertainty_nm`` (lateral) [and ``uncertainty_z_nm``]; colour by z (3D) or
confidence (2D). **Export…** writes the localizations as a ThunderSTORM CSV (nm, 1-based frames);
**Render** adds them as a super-resolved image layer (:mod:`starloc.gui.render_layer`).
**Open localizations…** shows a ThunderSTORM CSV or Picasso HDF5 (``starloc deeploco localize``
on a large stack, or another localizer's) on the chosen image the same way.

Bad input is reported with ``show_error`` (one line saying what to do), never a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import napari
import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from starloc.deeploco.model import DeepLoco
from starloc.deeploco.stack import StackProgress, iter_localize_stack
from starloc.errors import InputError, StarlocError
from starloc.gui.deeploco_training import DeepLocoTrainPanel, looks_like_beads
from starloc.gui.jobs import JobSlot, available_devices, stop_when_closed
from starloc.gui.layer_watch import LayerWatch
from starloc.gui.lodestar_source import OUTPUT_KEY
from starloc.gui.render_layer import render_image, render_placement
from starloc.gui.units import check_axis_aligned, placement, stated_pixel_size_nm
from starloc.smlm_io import picasso_pixel_size, read_picasso, read_thunderstorm_csv, write_thunderstorm_csv

POINTS_LAYER = "DeepLoco localizations"
RENDER_LAYER = "DeepLoco render"
UNITS = {"camera ADU": "adu", "photons": "photons"}
BUSY = "DeepLoco: a localization is running; wait for it or click Cancel"


@dataclass(frozen=True)
class Source:
    """The image layer a localization ran on, as its outputs need it: ``stack`` for ``(T, Y, X)``
    data, the layer's scale, translate and units (None without napari units), its frame size
    ``field`` (rows, cols) in pixels, and the model's ``pixel_size`` (nm)."""

    name: str
    stack: bool
    scale: tuple
    translate: tuple
    units: tuple | None
    field: tuple[int, int]
    pixel_size: float


def points_from_table(table: dict, pixel_size: float, stack: bool) -> tuple[np.ndarray, dict]:
    """Points ``(N, 3)`` ``(frame, row, col)`` (``(N, 2)`` without ``stack``) in image pixels,
    and their features, from a localization table in nm (corner origin)."""
    x, y = (np.asarray(table[k], dtype=float) for k in ("x", "y"))
    row, col = y / pixel_size - 0.5, x / pixel_size - 0.5
    cols = [np.asarray(table["frame"], dtype=float), row, col] if stack else [row, col]
    features = {"x_nm": x, "y_nm": y}
    if "z" in table:
        features["z_nm"] = np.asarray(table["z"], dtype=float)
    if "confidence" in table:  # files of other localizers have none
        features["confidence"] = np.asarray(table["confidence"], dtype=float)
    for name in ("uncertainty", "uncertainty_z"):  # models with an error head: nm
        if name in table:
            features[f"{name}_nm"] = np.asarray(table[name], dtype=float)
    return np.stack(cols, axis=1), features


def read_localizations(path, pixel_size: float, data) -> dict:
    """A ThunderSTORM CSV (``.csv``; columns in px converted with ``pixel_size``) or Picasso HDF5
    (``.hdf5``/``.h5``; the pixel size its YAML states, if any, must be ``pixel_size``) as a
    localization table in nm, checked against the image ``data`` it is to be shown on:
    ``(T, Y, X)`` frames or one ``(Y, X)`` frame. InputError for a file of no localizations."""
    p = Path(path)
    if p.suffix.lower() in (".hdf5", ".h5"):
        stated = picasso_pixel_size(p)
        if stated is not None and abs(stated - pixel_size) > 0.01 * pixel_size:
            raise InputError(f"{p.name} was localized on {stated:g} nm pixels, but the image has {pixel_size:g} nm "
                             "pixels: choose the stack it came from")
        table = read_picasso(p, pixel_size_nm=pixel_size)
    else:
        table = read_thunderstorm_csv(p, pixel_size_nm=pixel_size)
    frames = np.asarray(table["frame"])
    if not len(frames):
        raise InputError(f"{p.name} holds no localization")
    n_frames = data.shape[0] if data.ndim == 3 else 1
    if frames.max() >= n_frames:
        raise InputError(f"{p.name} has localizations on frame {int(frames.max()) + 1} (1-based), but the image "
                         f"has {n_frames} frame(s): choose the stack they came from")
    return table


class DeepLocoWidget(QWidget):
    """Localize SMLM stacks with a trained DeepLoco model, as a napari Points layer.

    Signal (for scripts and tests): ``job_finished(outcome)`` after every localization
    (returned, aborted, failed). ``use_threads = False`` runs it on the calling thread.
    """

    job_finished = Signal(str)

    def __init__(self, viewer: napari.viewer.Viewer, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self.use_threads = True
        self.model: DeepLoco | None = None
        self.model_path: Path | None = None
        self.table: dict | None = None  # the last localizations, nm
        self.source: Source | None = None  # where self.table came from
        self.jobs = JobSlot(self._set_running, self.job_finished.emit)
        self._build_ui()
        self._layers = LayerWatch(viewer, self._refresh_image_choices)
        self._refresh_image_choices()
        self._set_running(False)
        stop_when_closed(self, self._shutdown)

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        self.load_button = QPushButton("Load model…")
        self.load_button.setToolTip("A model file written by `starloc deeploco train` (.pt)")
        self.load_button.clicked.connect(self._ask_model)
        self.model_label = QLabel("Model: none")
        self.model_label.setWordWrap(True)
        self.device_combo = QComboBox()
        devices = available_devices()
        self.device_combo.addItems(devices)
        self.device_combo.setCurrentText("cuda" if "cuda" in devices else "cpu")  # as --device auto
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("A (T, Y, X) stack or one (Y, X) frame, pixel size as the model's")
        self.units_combo = QComboBox()
        self.units_combo.addItems(list(UNITS))
        self.units_combo.setToolTip("camera ADU: converted to photons with the model's camera; "
                                    "photons: already converted")
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(0.0, 10.0)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setDecimals(2)
        self.threshold_spin.setSpecialValueText("model")
        self.threshold_spin.setToolTip("Keep localizations whose confidence (summed candidate weights) is at "
                                       "least this; 'model' = the threshold calibrated at training")
        self.localize_button = QPushButton("Localize")
        self.localize_button.clicked.connect(self.localize)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.export_button = QPushButton("Export ThunderSTORM CSV…")
        self.export_button.clicked.connect(self._ask_export)
        self.open_button = QPushButton("Open localizations…")
        self.open_button.setToolTip("A ThunderSTORM CSV or Picasso HDF5 (e.g. from `starloc deeploco localize`), "
                                    "shown on the chosen image as if localized here")
        self.open_button.clicked.connect(self._ask_open)
        self.render_spin = QDoubleSpinBox()
        self.render_spin.setRange(1.0, 1000.0)
        self.render_spin.setDecimals(1)
        self.render_spin.setValue(10.0)
        self.render_spin.setSuffix(" nm")
        self.render_spin.setToolTip("pixel size of the super-resolved rendering (Gaussian splats of σ = each "
                                    "localization's uncertainty, at least one pixel; one pixel without one)")
        self.render_button = QPushButton("Render")
        self.render_button.setToolTip("Add the localizations of all frames as a super-resolved image "
                                      "(coloured by z for 3D models)")
        self.render_button.clicked.connect(self.render)

        form = QFormLayout()
        form.addRow("Device", self.device_combo)
        form.addRow("Image", self.image_combo)
        form.addRow("Units", self.units_combo)
        form.addRow("Threshold", self.threshold_spin)
        buttons = QHBoxLayout()
        buttons.addWidget(self.localize_button)
        buttons.addWidget(self.cancel_button)
        page = QWidget()
        layout = QVBoxLayout(page)
        for w in (self.load_button, self.model_label):
            layout.addWidget(w)
        layout.addLayout(form)
        layout.addLayout(buttons)
        for w in (self.progress, self.status, self.export_button, self.open_button):
            layout.addWidget(w)
        render_row = QHBoxLayout()
        render_row.addWidget(self.render_button)
        render_row.addWidget(self.render_spin)
        layout.addLayout(render_row)
        layout.addStretch(1)
        self.train_panel = DeepLocoTrainPanel(self.viewer)
        self.train_panel.model_written.connect(self._on_model_written)
        self.tabs = QTabWidget()
        self.tabs.addTab(page, "Localize")
        self.tabs.addTab(self.train_panel, "Train")
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self.tabs)

    def _stacks(self) -> list:
        """The image layers one may localize: not the plugins' own outputs (renders, maps)."""
        return [layer for layer in self.viewer.layers
                if isinstance(layer, napari.layers.Image) and not layer.metadata.get(OUTPUT_KEY)]

    def _refresh_image_choices(self, event=None) -> None:
        current = self.image_combo.currentText()
        names = [layer.name for layer in self._stacks()]
        self.image_combo.clear()
        self.image_combo.addItems(names)
        added = getattr(event, "value", None) if getattr(event, "type", "") == "inserted" else None
        if added is not None and added.name in names and not looks_like_beads(added):
            self.image_combo.setCurrentText(added.name)  # the stack just opened is the one to localize
        elif current in names:
            self.image_combo.setCurrentText(current)
        elif names:  # the widget opened after the stacks: the one on top of the layer list
            self.image_combo.setCurrentText(names[-1])

    @property
    def worker(self):
        """The napari worker of the current localization (None inline or before the first)."""
        return self.jobs.worker

    def _set_running(self, running: bool) -> None:
        for button in (self.load_button, self.localize_button, self.export_button, self.render_button,
                       self.open_button):
            button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _shutdown(self) -> None:
        self.train_panel.shutdown()
        self.jobs.close()
        self._layers.close()

    # ------------------------------------------------------------------ model
    def _ask_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load a DeepLoco model", "", "starloc model (*.pt);;All files (*)")
        if path:
            self.load_model(path)

    def load_model(self, path) -> bool:
        """Load a model file (weights only, no code executed); on error the current model stays."""
        try:
            model = DeepLoco.load(path)
        except StarlocError as exc:
            show_error(f"DeepLoco: {exc}")
            return False
        self.model, self.model_path = model, Path(path)
        self.threshold_spin.setSpecialValueText(f"model ({model.threshold:.2f})")
        self.model_label.setText(f"Model: {self.model_path.name} — {self.describe(model)}")
        return True

    def _on_model_written(self, path: str) -> None:
        """A model trained in the Train tab becomes the one that localizes (on a stack other
        than the bead z-stack it was trained from, when there is one)."""
        if self.load_model(path):
            beads = self.train_panel.psf_combo.currentText()
            others = [layer.name for layer in self._stacks() if layer.name != beads]
            if self.image_combo.currentText() == beads and others:
                self.image_combo.setCurrentText(others[-1])
            self.tabs.setCurrentIndex(0)

    @staticmethod
    def describe(model: DeepLoco) -> str:
        """One line: dimension, pixel size, z range, camera."""
        c = model.config
        kind = f"3D, z {c.z_range[0]:g}..{c.z_range[1]:g} nm" if c.dim == 3 else "2D"
        camera = type(model.camera).__name__ if model.camera is not None else "no camera (photons input)"
        return f"{kind}, {c.pixel_size:g} nm/px, {camera}"

    # ------------------------------------------------------------------ localize
    def _image_layer(self):
        name = self.image_combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def localize(self):
        """Localize every frame of the chosen image layer; returns the worker (None inline or on error)."""
        if self.jobs.running:
            show_error(BUSY)
            return None
        if self.model is None:
            show_error("DeepLoco: no model; load one trained with `starloc deeploco train`")
            return None
        layer = self._image_layer()
        if layer is None:
            show_error("DeepLoco: no image layer; open an SMLM stack first")
            return None
        if layer.rgb:
            show_error(f"DeepLoco: {layer.name!r} is an RGB image; SMLM frames are single-channel camera images")
            return None
        try:
            check_axis_aligned(layer)
        except InputError as exc:
            show_error(f"DeepLoco: {exc}")
            return None
        data = layer.data[0] if layer.multiscale else layer.data
        if data.ndim not in (2, 3):
            show_error(f"DeepLoco: {layer.name!r} has {data.ndim} dimensions; expected one (Y, X) frame "
                       "or a (T, Y, X) stack")
            return None
        pixel = stated_pixel_size_nm(layer)
        model_pixel = float(self.model.config.pixel_size)
        if pixel is not None and abs(pixel - model_pixel) > 0.01 * model_pixel:
            show_error(f"DeepLoco: {layer.name!r} has {pixel:g} nm pixels but the model was trained for "
                       f"{model_pixel:g} nm; train a model for this camera's pixel size")
            return None
        threshold = self.threshold_spin.value() or None
        try:
            self.model.to(self.device_combo.currentText())
            gen = iter_localize_stack(self.model, data, input_units=UNITS[self.units_combo.currentText()],
                                      threshold=threshold)
        except StarlocError as exc:
            show_error(f"DeepLoco: {exc}")
            return None
        source = Source(layer.name, data.ndim == 3, tuple(layer.scale), tuple(layer.translate),
                        getattr(layer, "units", None), tuple(data.shape[-2:]), model_pixel)
        return self._start(gen, source)

    def _start(self, gen, source: Source):
        self.progress.setValue(0)
        self.status.setText("localizing…")

        def progress(p: StackProgress):
            self.progress.setMaximum(max(p.frames_total, 1))
            self.progress.setValue(p.frames_done)
            self.status.setText(f"frame {p.frames_done}/{p.frames_total} · {p.localizations} localizations "
                                f"· {p.elapsed:.1f} s")

        def failed(error):
            show_error(f"DeepLoco: {error}")
            self.status.setText("failed")

        return self.jobs.start(gen, self.use_threads, progress,
                               lambda table: self._show_result(table, source, str(self.model_path)), failed)

    def cancel(self) -> None:
        """Stop the localization between two chunks of frames; no layer is added or changed."""
        if self.jobs.cancel():
            self.status.setText("cancelled")

    def _show_result(self, table: dict, source: Source, origin: str) -> None:
        """Show ``table`` (nm) on the image of ``source``; ``origin``: the model (or file) it came from."""
        self.table, self.source = table, source
        name = source.name
        n = len(table["frame"])
        self.status.setText(f"{n} localization(s) in {name!r}")
        if POINTS_LAYER in self.viewer.layers:  # a new run replaces the last one's points
            self.viewer.layers.remove(POINTS_LAYER)
        if n == 0:
            show_info(f"DeepLoco: no localization in {name!r} above the threshold")
            return
        data, features = points_from_table(table, source.pixel_size, source.stack)
        colour_by = "z_nm" if "z_nm" in features else "confidence" if "confidence" in features else None
        colours = {"face_color": "yellow"} if colour_by is None else {
            "face_color": colour_by, "face_colormap": "turbo" if colour_by == "z_nm" else "viridis"}
        self.viewer.add_points(
            data, name=POINTS_LAYER, features=features, **placement(source.scale, source.translate, source.units),
            size=1.5, **colours,
            border_width=0, metadata={"pixel_size_nm": source.pixel_size, "model": origin, "source": name},
        )

    # ------------------------------------------------------------------ render
    def render(self):
        """Add (or replace) the layer ``DeepLoco render``: the last localizations of every frame
        as Gaussian splats on ``render_spin`` nm pixels over the camera field, placed on the image."""
        if self.table is None or not len(self.table["frame"]):
            show_error("DeepLoco: nothing to render; localize a stack first")
            return None
        src, render_px = self.source, self.render_spin.value()
        try:
            image = render_image(self.table, src.field, src.pixel_size, render_px)
        except StarlocError as exc:
            show_error(f"DeepLoco: {exc}")
            return None
        if RENDER_LAYER in self.viewer.layers:
            self.viewer.layers.remove(RENDER_LAYER)
        r_scale, r_translate = render_placement(src.scale, src.translate, src.pixel_size, render_px)
        look = {"rgb": True} if image.ndim == 3 else {"colormap": "magma"}
        meta = {OUTPUT_KEY: True, "render_pixel_nm": render_px, "source": src.name,
                "localizations": len(self.table["frame"])}
        r_units = None if src.units is None else src.units[-2:]
        return self.viewer.add_image(image, name=RENDER_LAYER, **look, **placement(r_scale, r_translate, r_units),
                                     blending="additive", metadata=meta)

    # ------------------------------------------------------------------ open
    def _ask_open(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open localizations", "",
                                              "Localizations (*.csv *.hdf5 *.h5);;All files (*)")
        if path:
            self.open_localizations(path)

    def open_localizations(self, path) -> bool:
        """Show a ThunderSTORM CSV or Picasso HDF5 on the chosen image layer, as the Points layer
        (and the table behind Render and Export) a localization here would give: positions in nm
        from the image's top-left corner, converted with the image's pixel size (its units or
        TIFF metadata), else the loaded model's."""
        if self.jobs.running:
            show_error(BUSY)
            return False
        layer = self._image_layer()
        if layer is None:
            show_error("DeepLoco: no image layer; open the stack the localizations belong to first")
            return False
        data = layer.data[0] if layer.multiscale else layer.data
        pixel = stated_pixel_size_nm(layer)
        if pixel is None and self.model is not None:
            pixel = float(self.model.config.pixel_size)
        if pixel is None:
            show_error(f"DeepLoco: the pixel size of {layer.name!r} is unknown; load the model the localizations "
                       "came from, or give the layer a scale in nm")
            return False
        try:
            table = read_localizations(path, pixel, data)
        except StarlocError as exc:
            show_error(f"DeepLoco: {exc}")
            return False
        source = Source(layer.name, data.ndim == 3, tuple(layer.scale), tuple(layer.translate),
                        getattr(layer, "units", None), tuple(data.shape[-2:]), pixel)
        self._show_result(table, source, str(path))
        show_info(f"DeepLoco: {len(table['frame'])} localization(s) from {Path(path).name} on {layer.name!r} "
                  f"({pixel:g} nm pixels)")
        return True

    # ------------------------------------------------------------------ export
    def _ask_export(self) -> None:
        if self.table is None:
            show_error("DeepLoco: nothing to export; localize a stack first")
            return
        path, _ = QFileDialog.getSaveFileName(self, "Export localizations", "localizations.csv",
                                              "ThunderSTORM CSV (*.csv)")
        if path:
            self.export_csv(path)

    def export_csv(self, path) -> bool:
        """Write the last localizations as a ThunderSTORM CSV (nm, 1-based frames; atomic)."""
        if self.table is None:
            show_error("DeepLoco: nothing to export; localize a stack first")
            return False
        try:
            out = write_thunderstorm_csv(path, self.table)
        except (StarlocError, OSError) as exc:
            show_error(f"DeepLoco: could not write {str(path)!r}: {exc}")
            return False
        show_info(f"DeepLoco: {len(self.table['frame'])} localization(s) written to {out}")
        return True
