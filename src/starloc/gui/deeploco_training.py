"""The DeepLoco widget's **Train** tab: a model from a bead z-stack layer, trained on a worker.

Pick the bead z-stack (an image layer ``(Z, Y, X)`` in camera ADU) or a parametric PSF for
users without beads, say how the stack was taken (pixel size, z step, z of its first slice,
all in nm; read from the layer when its axes carry length units, or from the metadata of
the TIFF it was opened from), optionally a CSV of the beads' true positions (the PSF is then
centred on them, not on the beads' images), and which camera the SMLM
data come from, then **Train**. The same core as ``starloc deeploco train`` builds the empirical PSF, simulates frames with the default
training ranges (``starloc.deeploco.recipes``; photons and background can be narrowed here),
trains, calibrates the confidence threshold and writes the model file (atomically) when it is
done. **Cancel** stops between steps and writes nothing. **Measure** sets the Photons and
Background ranges to cover an SMLM stack of your data (``starloc deeploco brightness``).

Bad input (a stack without usable beads, NaN, a missing folder…) is a one-line notification.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import napari
import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from starloc.deeploco.brightness import DEFAULT_FRAMES, measure_brightness
from starloc.deeploco.camera import camera_preset
from starloc.deeploco.psf import AstigmaticPSF, EmpiricalPSF, Gaussian2DPSF, bead_summary, centred_z0
from starloc.deeploco.recipes import BACKGROUND, BACKGROUND_VARIATION, DEFOCUS_2D, PHOTONS, default_simulator
from starloc.deeploco.stack import to_photons
from starloc.deeploco.training import DeepLocoTrainConfig, Progress, train
from starloc.errors import InputError, StarlocError
from starloc.gui.jobs import JobSlot, available_devices
from starloc.gui.layer_watch import LayerWatch
from starloc.gui.units import stated_spacing_nm
from starloc.smlm_io import read_bead_positions

#: PSF choices that need no bead stack (the bead-stack layers are listed before them)
GAUSSIAN, ASTIGMATIC = "Gaussian 2D (no beads)", "Astigmatic 3D (no beads)"
#: camera choice -> ``camera_preset`` name (None: frames already in photons)
CAMERAS = {"SMLM 2016 EMCCD": "smlm2016", "EMCCD": "emccd", "sCMOS": "scmos", "none (photons)": None}
#: camera settings shown in the form: keyword -> (label, low, high, decimals)
CAMERA_FIELDS = {
    "baseline": ("Baseline (ADU)", -1e5, 1e5, 1),
    "e_per_adu": ("e⁻ per ADU", 1e-3, 1e4, 3),
    "em_gain": ("EM gain", 1.0, 1e4, 1),
    "qe": ("Quantum efficiency", 0.01, 1.0, 3),
    "read_noise": ("Read noise (e⁻ rms)", 0.0, 1e4, 2),
}
BUSY = "DeepLoco: a training is running; wait for it or click Cancel"


def preset_values(kind: str) -> dict[str, float]:
    """The settings of a camera preset that the form shows (EM gain 1 for an sCMOS)."""
    camera = camera_preset(kind)
    return {k: float(getattr(camera, k)) for k in CAMERA_FIELDS}


def form_camera(kind: str, settings: dict):
    """A :func:`camera_preset` with the form's settings (an sCMOS has no EM gain)."""
    return camera_preset(kind, **{k: v for k, v in settings.items() if not (kind == "scmos" and k == "em_gain")})


@dataclasses.dataclass(frozen=True)
class TrainRequest:
    """Everything a training needs, read from the form on the GUI thread (lengths in nm)."""

    psf: str  # a layer's name, GAUSSIAN or ASTIGMATIC
    stack: np.ndarray | None  # the bead z-stack (Z, Y, X), ADU
    in_focus: bool
    bead_positions: Path | None  # CSV of the beads' true (x, y) in nm, or None: centre on their images
    pixel_size: float
    z_step: float
    z0: float
    camera: str | None
    camera_settings: dict
    photons: tuple[float, float]
    background: tuple[float, float]
    background_variation: float
    config: DeepLocoTrainConfig
    output: Path

    def build_psf(self):
        """The PSF model: empirical from the bead stack, or a parametric one."""
        if self.psf == GAUSSIAN:
            return Gaussian2DPSF()
        if self.psf == ASTIGMATIC:
            return AstigmaticPSF()
        anchor = {}
        if self.bead_positions is not None:
            anchor = {"positions": read_bead_positions(self.bead_positions), "anchor": "positions"}
        psf = EmpiricalPSF.from_bead_stack(self.stack, pixel_size=self.pixel_size, z_step=self.z_step, z0=self.z0,
                                           **anchor)
        return psf.in_focus(DEFOCUS_2D) if self.in_focus else psf

    def build_camera(self):
        return None if self.camera is None else form_camera(self.camera, self.camera_settings)


def train_job(request: TrainRequest):
    """Build the PSF, camera and simulator, train (yielding :class:`Progress`), write the model;
    returns the model's path and what the bead PSF averaged (None for a parametric PSF)."""
    psf = request.build_psf()
    sim = default_simulator(psf, request.build_camera(), pixel_size=request.pixel_size,
                            photons_range=request.photons, background_range=request.background,
                            background_variation=request.background_variation, device=request.config.device)
    model = yield from train(sim, request.config)
    model.metadata = {**model.metadata, "source": {"command": "napari DeepLoco widget", "psf": request.psf}}
    try:
        model.save(request.output)
    except OSError as exc:
        raise InputError(f"could not write {str(request.output)!r}: {exc}") from None
    return request.output, bead_summary(psf.meta) if isinstance(psf, EmpiricalPSF) else None


def _named_like_beads(name: str) -> bool:
    """Whether a layer's name says it is a PSF calibration stack ('beads-AS', 'PSF_zstack', …):
    the one hint left when its TIFF states no z step."""
    return re.search(r"bead|psf|z-?stack|calib", name, re.IGNORECASE) is not None


def looks_like_beads(layer) -> bool:
    """Whether an image layer looks like a bead z-stack rather than SMLM data: its first axis is
    a length (in the layer's units or its TIFF's z step), or its name says so."""
    return stated_spacing_nm(layer)[1] is not None or _named_like_beads(layer.name)


def measure_job(data, camera, name: str, max_frames: int = DEFAULT_FRAMES):
    """:func:`~starloc.deeploco.brightness.measure_brightness` of the first ``max_frames`` frames
    of ``data`` (ADU with ``camera``, else photons), checked on the worker so that numbers that
    cannot be emitters' fail there (:meth:`~starloc.deeploco.brightness.Brightness.check`)."""
    block = np.asarray(data[:max_frames] if np.ndim(data) == 3 else data[None])
    yield len(block)
    found = measure_brightness(to_photons(block, camera, 0, repr(name)))
    found.check()
    return found


class DeepLocoTrainPanel(QWidget):
    """Train a DeepLoco model in napari (see the module docstring).

    Signals: ``model_written(path)`` when a model file has been written; ``job_finished(outcome)``
    after every training (returned, aborted, failed). ``use_threads = False`` trains on the
    calling thread (tests). ``extra_settings``: more :class:`DeepLocoTrainConfig` fields, as the
    CLI's ``--set`` (e.g. a smaller validation set in tests).
    """

    model_written = Signal(str)
    job_finished = Signal(str)
    measure_finished = Signal(str)

    def __init__(self, viewer: napari.viewer.Viewer, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self.use_threads = True
        self.extra_settings: dict = {}
        self.jobs = JobSlot(self._set_running, self.job_finished.emit)
        self.measuring = JobSlot(self._set_measuring, self.measure_finished.emit)
        self._build_ui()
        self._layers = LayerWatch(viewer, self._refresh_layer_choices)
        self._refresh_layer_choices()
        self._on_camera_changed()
        self._set_running(False)

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        self.psf_combo = QComboBox()
        self.psf_combo.setToolTip("A bead z-stack image layer (Z, Y, X) in camera ADU, or a parametric PSF")
        self.psf_combo.currentTextChanged.connect(self._on_psf_changed)
        self._scale_read_from = None  # the bead layer whose units set the pixel size and z step
        self._unstated_said = None  # the bead layer whose missing pixel size / z step was said
        self._psf_picked = False  # whether the user chose a PSF (then a new layer does not replace it)
        self.psf_combo.activated.connect(self._on_psf_picked)
        self.in_focus_check = QCheckBox(f"2D model (emitters within ±{DEFOCUS_2D:g} nm of focus)")
        self.pixel_spin = self._spin(1.0, 10_000.0, 100.0, 1, "camera pixel size (nm)")
        self.z_step_spin = self._spin(0.1, 10_000.0, 10.0, 1, "nm between the bead stack's slices")
        self.z_step_spin.valueChanged.connect(self._centre_z0)
        self.z0_spin = self._spin(-100_000.0, 100_000.0, -750.0, 1,
                                  "z of the stack's first slice (nm); focus at 0, centred by default")
        self.positions_edit = QLineEdit()
        self.positions_edit.setPlaceholderText("optional: CSV of the beads' true x, y (nm)")
        self.positions_edit.setToolTip(
            "The beads' true lateral positions, when known (CSV with x and y columns in nm, x along columns, "
            "origin at the stack's top-left corner, e.g. the SMLM Challenge's bead list): the PSF is centred on "
            "them instead of on the beads' images, so localizations come out in their frame (for the "
            "challenge's astigmatic beads the two differ by 46 nm). Empty: centred on the images.")
        self.positions_browse = QToolButton()
        self.positions_browse.setText("…")
        self.positions_browse.clicked.connect(self._ask_positions)
        self.camera_combo = QComboBox()
        self.camera_combo.addItems(list(CAMERAS))
        self.camera_combo.setToolTip("The camera of the SMLM data the model will localize")
        self.camera_combo.currentTextChanged.connect(self._on_camera_changed)
        self.camera_spins = {k: self._spin(lo, hi, 0.0, dec, label)
                             for k, (label, lo, hi, dec) in CAMERA_FIELDS.items()}
        self.measure_combo = QComboBox()
        self.measure_combo.setToolTip("An SMLM stack of your data (camera ADU, converted with the camera below)")
        self._measure_picked = False  # whether the user chose the stack (then new layers do not replace it)
        self.measure_combo.activated.connect(lambda *_: setattr(self, "_measure_picked", True))
        self.measure_button = QPushButton("Measure")
        self.measure_button.setToolTip("Set Photons and Background to the ranges that cover this stack's "
                                       "isolated spots and background (as `starloc deeploco brightness`)")
        self.measure_button.clicked.connect(self.measure_brightness)
        self.photons_spins = self._range_spins(PHOTONS, 1.0, 1e7, "photons per emitter (log-uniform)")
        self.background_spins = self._range_spins(BACKGROUND, 0.0, 1e5, "background photons per pixel")
        self.variation_spin = self._spin(0.0, 0.95, BACKGROUND_VARIATION, 2,
                                         "how far each training frame's background varies over the frame "
                                         "(0.5-4 µm), as a fraction of its level; 0: flat")
        self.variation_spin.setSingleStep(0.1)
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 1_000_000)
        self.steps_spin.setValue(DeepLocoTrainConfig().steps)
        self.steps_spin.setToolTip("optimizer steps; the default takes about 25 min on a 2-core CPU "
                                   "(the widget leaves one core to napari), a few on a GPU")
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.device_combo = QComboBox()
        devices = available_devices()
        self.device_combo.addItems(devices)
        self.device_combo.setCurrentText("cuda" if "cuda" in devices else "cpu")
        self.output_edit = QLineEdit()
        self.output_edit.setPlaceholderText("model file (.pt)")
        browse = QToolButton()
        browse.setText("…")
        browse.clicked.connect(self._ask_output)
        self.train_button = QPushButton("Train")
        self.train_button.clicked.connect(self.train)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.status = QLabel("")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("PSF", self.psf_combo)
        form.addRow("", self.in_focus_check)
        form.addRow("Pixel size (nm)", self.pixel_spin)
        form.addRow("Z step (nm)", self.z_step_spin)
        form.addRow("First slice z (nm)", self.z0_spin)
        positions = QHBoxLayout()
        positions.addWidget(self.positions_edit)
        positions.addWidget(self.positions_browse)
        form.addRow("Bead positions", positions)
        form.addRow("Camera", self.camera_combo)
        for key, spin in self.camera_spins.items():
            form.addRow(CAMERA_FIELDS[key][0], spin)
        measure = QHBoxLayout()
        measure.addWidget(self.measure_combo)
        measure.addWidget(self.measure_button)
        form.addRow("Ranges from", measure)
        form.addRow("Photons", self._pair(self.photons_spins))
        form.addRow("Background", self._pair(self.background_spins))
        form.addRow("Background variation", self.variation_spin)
        form.addRow("Steps", self.steps_spin)
        form.addRow("Seed", self.seed_spin)
        form.addRow("Device", self.device_combo)
        out = QHBoxLayout()
        out.addWidget(self.output_edit)
        out.addWidget(browse)
        form.addRow("Save to", out)
        buttons = QHBoxLayout()
        buttons.addWidget(self.train_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addStretch(1)

    @staticmethod
    def _spin(lo: float, hi: float, value: float, decimals: int, tip: str) -> QDoubleSpinBox:
        spin = QDoubleSpinBox()
        spin.setRange(lo, hi)
        spin.setDecimals(decimals)
        spin.setValue(value)
        spin.setToolTip(tip)
        return spin

    def _range_spins(self, default, lo, hi, tip) -> tuple[QDoubleSpinBox, QDoubleSpinBox]:
        return (self._spin(lo, hi, default[0], 1, tip + ", low end"),
                self._spin(lo, hi, default[1], 1, tip + ", high end"))

    @staticmethod
    def _pair(spins) -> QHBoxLayout:
        row = QHBoxLayout()
        row.addWidget(spins[0])
        row.addWidget(QLabel("to"))
        row.addWidget(spins[1])
        return row

    def _bead_layers(self) -> list:
        """3D single-channel image layers; those whose first axis is a length (z: in the layer's
        units, or the z step of the TIFF it was opened from) come first, then those named like a
        bead stack, since a time-lapse SMLM stack is 3D too."""
        layers = [layer for layer in self.viewer.layers
                  if isinstance(layer, napari.layers.Image) and not layer.rgb and layer.ndim == 3]
        def rank(layer) -> tuple[bool, bool]:
            unstated = stated_spacing_nm(layer)[1] is None
            return unstated, unstated and not _named_like_beads(layer.name)

        return sorted(layers, key=rank)

    def _refresh_layer_choices(self, *_) -> None:
        self._refresh_psf_choices()
        self._refresh_measure_choices()

    def _refresh_measure_choices(self) -> None:
        current = self.measure_combo.currentText()
        names = [layer.name for layer in self.viewer.layers
                 if isinstance(layer, napari.layers.Image) and not layer.rgb and layer.ndim in (2, 3)]
        self.measure_combo.clear()
        self.measure_combo.addItems(names)
        psf = self.psf_combo.currentText()
        stacks = [n for n in names if n != psf and not looks_like_beads(self.viewer.layers[n])]
        if current in names and (self._measure_picked or current in stacks):
            self.measure_combo.setCurrentText(current)
        elif names:  # the newest layer that is not a bead stack: likely the SMLM data
            self.measure_combo.setCurrentText((stacks or names)[-1])

    def _refresh_psf_choices(self, *_) -> None:
        current = self.psf_combo.currentText()
        names = [layer.name for layer in self._bead_layers()] + [GAUSSIAN, ASTIGMATIC]
        self.psf_combo.blockSignals(True)
        self.psf_combo.clear()
        self.psf_combo.addItems(names)
        self.psf_combo.blockSignals(False)
        # the user's pick stays; else the best guess: a z-stack before other 3D layers before a model
        keep = current in names and self._psf_picked
        self.psf_combo.setCurrentText(current if keep else names[0])
        self._on_psf_changed()

    def _on_psf_picked(self, *_) -> None:
        self._psf_picked = True
        self._refresh_measure_choices()  # the bead stack is not the data to measure
        layer = self._bead_layer()
        if layer is not None:
            self._say_unstated(layer)

    def _bead_layer(self):
        name = self.psf_combo.currentText()
        if name in (GAUSSIAN, ASTIGMATIC) or name not in self.viewer.layers:
            return None
        return self.viewer.layers[name]

    def _on_psf_changed(self, *_) -> None:
        layer = self._bead_layer()
        for w in (self.in_focus_check, self.z_step_spin, self.z0_spin, self.positions_edit, self.positions_browse):
            w.setEnabled(layer is not None)
        if layer is not None and layer.name != self._scale_read_from:
            self._scale_read_from = layer.name  # not again on every layer-list event: the
            self._read_layer_scale(layer)  # user's values stay until another stack is chosen
            self._centre_z0()
            if looks_like_beads(layer):  # not for a guess that may be the SMLM data
                self._say_unstated(layer)

    def _read_layer_scale(self, layer) -> None:
        """Take the pixel size and z step from a bead layer whose axes are in physical units, or
        from the metadata of the TIFF file it was opened from."""
        pixel, z_step = stated_spacing_nm(layer)
        if pixel is not None:
            self.pixel_spin.setValue(pixel)
        if z_step is not None:
            self.z_step_spin.setValue(z_step)

    def _say_unstated(self, layer) -> None:
        """Say (once per layer) which of the pixel size and z step a bead layer does not state:
        the form's values are then defaults, and a wrong z step silently stretches the model's z."""
        if layer.name == self._unstated_said:
            return
        self._unstated_said = layer.name
        pixel, z_step = stated_spacing_nm(layer)
        missing = [f"{label} ({spin.value():g} nm kept)" for label, spin, value in
                   (("pixel size", self.pixel_spin, pixel), ("z step", self.z_step_spin, z_step)) if value is None]
        if missing:
            show_info(f"DeepLoco: {layer.name!r} states no {' and no '.join(missing)}: check them against your "
                      "bead stack in the Train tab")

    def _centre_z0(self, *_) -> None:
        """Put the focus (z = 0) at the stack's middle slice, as a symmetric scan has it."""
        layer = self._bead_layer()
        if layer is not None:
            slices = (layer.data[0] if layer.multiscale else layer.data).shape[0]
            self.z0_spin.setValue(centred_z0(slices, self.z_step_spin.value()))

    def _on_camera_changed(self, *_) -> None:
        kind = CAMERAS[self.camera_combo.currentText()]
        values = preset_values(kind) if kind is not None else {}
        for key, spin in self.camera_spins.items():
            spin.setEnabled(kind is not None and not (kind == "scmos" and key == "em_gain"))
            if key in values:
                spin.setValue(values[key])

    def _ask_output(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save the DeepLoco model as", "deeploco.pt",
                                              "starloc model (*.pt)")
        if path:
            self.output_edit.setText(path)

    def _ask_positions(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "The beads' true positions", "", "CSV (*.csv);;All files (*)")
        if path:
            self.positions_edit.setText(path)

    def _bead_positions(self, layer) -> Path | None:
        """The bead-positions file the form names (only for a bead-stack PSF), or None."""
        text = self.positions_edit.text().strip()
        if layer is None or not text:
            return None
        path = Path(text).expanduser()
        if not path.is_file():
            raise InputError(f"bead positions file {str(path)!r} not found")
        return path

    @property
    def worker(self):
        """The napari worker of the current training (None inline or before the first)."""
        return self.jobs.worker

    def _set_measuring(self, running: bool) -> None:
        self.measure_button.setEnabled(not running)

    def _set_running(self, running: bool) -> None:
        self.train_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def shutdown(self) -> None:
        """Stop a running training and let go of the viewer's events (the widget is closing)."""
        self.jobs.close()
        self._layers.close()

    # ------------------------------------------------------------------ train
    def request(self) -> TrainRequest:
        """The form as a :class:`TrainRequest`; raises :class:`InputError` for what cannot work."""
        text = self.output_edit.text().strip()
        if not text:
            raise InputError("choose where to save the model (Save to)")
        output = Path(text).expanduser()
        if output.suffix == "":
            output = output.with_suffix(".pt")
        if not output.parent.is_dir():
            raise InputError(f"cannot save to {str(output)!r}: folder {str(output.parent)!r} does not exist")
        layer = self._bead_layer()
        stack = None
        if layer is not None:
            stack = np.asarray(layer.data[0] if layer.multiscale else layer.data)
        elif self.psf_combo.currentText() not in (GAUSSIAN, ASTIGMATIC):
            raise InputError("the bead z-stack layer is gone; pick another PSF")
        photons = tuple(s.value() for s in self.photons_spins)
        background = tuple(s.value() for s in self.background_spins)
        for name, (lo, hi) in (("photons", photons), ("background", background)):
            if lo > hi:
                raise InputError(f"the {name} range runs backwards ({lo:g} to {hi:g})")
        config = DeepLocoTrainConfig(**{"steps": self.steps_spin.value(), "seed": self.seed_spin.value(),
                                        "device": self.device_combo.currentText(), **self.extra_settings})
        return TrainRequest(
            psf=self.psf_combo.currentText(), stack=stack, in_focus=self.in_focus_check.isChecked(),
            bead_positions=self._bead_positions(layer),
            pixel_size=self.pixel_spin.value(), z_step=self.z_step_spin.value(), z0=self.z0_spin.value(),
            camera=CAMERAS[self.camera_combo.currentText()],
            camera_settings=self._camera_settings(),
            photons=photons, background=background, background_variation=self.variation_spin.value(),
            config=config, output=output,
        )

    def train(self):
        """Start a training from the form; returns the worker (None inline or on bad input)."""
        if self.jobs.running:
            show_error(BUSY)
            return None
        try:
            request = self.request()
        except StarlocError as exc:
            show_error(f"DeepLoco: {exc}")
            return None
        self.progress.setMaximum(request.config.steps)
        self.progress.setValue(0)
        self.status.setText("building the PSF and the validation frames…")

        def progress(p: Progress):
            self.progress.setValue(p.step)
            val = f" · validation Jaccard {p.val_jaccard:.3f}" if p.val_jaccard is not None else ""
            self.status.setText(f"step {p.step}/{p.max_steps} · loss {p.loss:.4g}{val} · {p.elapsed:.0f} s")
            if p.step == p.max_steps and request.config.calibration_frames:
                self.status.setText(self.status.text() + " · calibrating the threshold…")

        def written(result):
            path, beads = result
            self.status.setText(f"model written to {path}")
            show_info(f"DeepLoco: model written to {path}" + (f" (PSF of {request.psf!r} {beads})" if beads else ""))
            self.model_written.emit(str(path))

        def failed(error):
            show_error(f"DeepLoco: {error}")
            self.status.setText("failed; nothing written")

        return self.jobs.start(train_job(request), self.use_threads, progress, written, failed)

    def measure_brightness(self):
        """Measure the chosen stack's brightness on a worker and set the Photons and Background
        ranges to cover it; returns the worker (None inline or on bad input)."""
        name = self.measure_combo.currentText()
        if name not in self.viewer.layers:
            show_error("DeepLoco: no image to measure; open an SMLM stack of your data")
            return None
        if self.measuring.running:
            return None
        layer = self.viewer.layers[name]
        data = layer.data[0] if layer.multiscale else layer.data
        kind = CAMERAS[self.camera_combo.currentText()]
        try:
            camera = None if kind is None else form_camera(kind, self._camera_settings())
        except StarlocError as exc:
            show_error(f"DeepLoco: {exc}")
            return None
        self.status.setText(f"measuring {name!r}…")

        def done(found):
            (p_lo, p_hi), (b_lo, b_hi) = found.suggested_ranges()
            for spin, value in zip((*self.photons_spins, *self.background_spins), (p_lo, p_hi, b_lo, b_hi)):
                spin.setValue(value)
            p5, p50, p95 = np.percentile(found.photons, [5, 50, 95])
            self.status.setText(f"{name}: {p5:.0f} / {p50:.0f} / {p95:.0f} photons (5th / 50th / 95th "
                                f"percentile of {len(found.photons)} isolated spots), background "
                                f"{np.median(found.background):.1f} photons/px")

        def failed(error):
            show_error(f"DeepLoco: {error}")
            self.status.setText("")

        return self.measuring.start(measure_job(data, camera, name), self.use_threads, lambda _: None, done, failed)

    def _camera_settings(self) -> dict:
        return {k: s.value() for k, s in self.camera_spins.items()}

    def cancel(self) -> None:
        """Stop the training after the current step; no model file is written."""
        if self.jobs.cancel():
            self.status.setText("cancelled; nothing written")
