"""The LodeSTAR widget's controls: its boxes of lists, buttons, spin boxes and labels.

Layout only. :class:`LodeSTARControls` is mixed into
:class:`~starloc.gui.lodestar_widget.LodeSTARWidget`, which holds the behaviour the controls
are connected to (``self._on_image_changed``, ``self.train``, ...) and reads their values.
"""

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from starloc.gui.jobs import available_devices
from starloc.gui.lodestar_source import CENTRE_LAYER, CROP_LAYER, CROP_SOURCES
from starloc.lodestar.detection import CUTOFF_MODES, DetectParams
from starloc.lodestar.training import BASE_STEPS, MAX_STEP_SCALE, REFERENCE_SIDE, TrainConfig

THUMBNAIL_PX = 96
DEFAULT_CROP_SIZE = 40  # px, side of the square crop around a clicked centre


class LodeSTARControls:
    """Builds the widget's controls as attributes of ``self`` (a QWidget)."""

    def _build_ui(self) -> None:
        # The controls scroll rather than squash when the dock is shorter than them (Advanced
        # and Hologram unfolded on a laptop screen): napari does not put docks in a scroll area.
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        self.scroll_area = QScrollArea()
        self.scroll_area.setWidgetResizable(True)
        self.scroll_area.setFrameShape(QFrame.NoFrame)
        self.scroll_area.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        content = QWidget()
        root = QVBoxLayout(content)
        self._build_image_rows(root)
        root.addWidget(self._build_crop_box())
        root.addWidget(self._build_training_box())
        root.addWidget(self._build_detection_box())
        root.addWidget(self._build_io_box())
        root.addStretch(1)
        self.scroll_area.setWidget(content)
        outer.addWidget(self.scroll_area)
        bar = self.scroll_area.verticalScrollBar().sizeHint().width()
        self.scroll_area.setMinimumWidth(content.sizeHint().width() + bar)
        self._update_rf_label()

    def _build_image_rows(self, root) -> None:
        """Image choice, the channels box and the line about the image."""
        top = QFormLayout()
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("2D image, T×Y×X time-lapse (first axis = time) or RGB (used as gray)")
        self.image_combo.currentIndexChanged.connect(self._on_image_changed)
        top.addRow("Image", self.image_combo)
        self.channels_check = QCheckBox("First axis = channels")
        self.channels_check.setToolTip(
            "Read a C×Y×X layer as ONE image of C channels, e.g. a hologram's real and imaginary parts "
            "(2×Y×X), instead of a time-lapse of C frames")
        self.channels_check.toggled.connect(lambda _: self._on_image_changed(adopt=False))
        top.addRow("", self.channels_check)
        self.image_info = QLabel("no image layer")
        self.image_info.setWordWrap(True)
        top.addRow(self.image_info)
        root.addLayout(top)

    def _build_crop_box(self) -> QGroupBox:
        """Training crop: rectangle or clicked centre, its size, the thumbnail."""
        crop_box = QGroupBox("Training crop")
        crop_layout = QVBoxLayout(crop_box)
        row = QHBoxLayout()
        self.crop_source_combo = QComboBox()
        self.crop_source_combo.addItems(CROP_SOURCES)
        self.crop_source_combo.setToolTip(
            f"Rectangle: drag a box in {CROP_LAYER!r}; Point + size: click the centre of one object "
            f"in {CENTRE_LAYER!r}, the crop is a square of the size on the right"
        )
        row.addWidget(self.crop_source_combo)
        self.crop_size_spin = self._int_spin(
            self.network_config.receptive_field, 4096, DEFAULT_CROP_SIZE,
            "Side of the square crop around the clicked centre (px); at least the receptive field",
        )
        self.crop_size_spin.setSuffix(" px")
        self.crop_size_spin.valueChanged.connect(self._schedule_preview)
        row.addWidget(self.crop_size_spin)
        crop_layout.addLayout(row)
        row = QHBoxLayout()
        self.draw_button = QPushButton()
        self.draw_button.clicked.connect(self.start_drawing)
        row.addWidget(self.draw_button)
        self.all_rects_check = QCheckBox()
        self.all_rects_check.toggled.connect(self._schedule_preview)
        row.addWidget(self.all_rects_check)
        crop_layout.addLayout(row)
        self.crop_source_combo.currentTextChanged.connect(self._on_crop_source_changed)
        self._on_crop_source_changed()
        row = QHBoxLayout()
        self.thumbnail = QLabel()
        self.thumbnail.setFixedSize(THUMBNAIL_PX, THUMBNAIL_PX)
        self.thumbnail.setAlignment(Qt.AlignCenter)
        self.thumbnail.setStyleSheet("border: 1px solid gray;")
        row.addWidget(self.thumbnail)
        self.crop_info = QLabel("no crop yet")
        self.crop_info.setWordWrap(True)
        row.addWidget(self.crop_info, 1)
        crop_layout.addLayout(row)
        return crop_box

    def _build_training_box(self) -> QGroupBox:
        """Device, seed, steps, Advanced, Hologram, Train/Cancel and progress."""
        train_box = QGroupBox("Training")
        train_layout = QVBoxLayout(train_box)
        form = QFormLayout()
        self.device_combo = QComboBox()
        devices = available_devices()
        self.device_combo.addItems(devices)
        # the GPU when there is one, as the command line's --device auto (training 6-10x faster)
        self.device_combo.setCurrentText("cuda" if "cuda" in devices else "cpu")
        form.addRow("Device", self.device_combo)
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        form.addRow("Seed", self.seed_spin)
        self.max_steps_spin = QSpinBox()
        self.max_steps_spin.setRange(0, 100_000)
        self.max_steps_spin.setSpecialValueText("auto")  # shown at 0: TrainConfig.max_steps = None
        self.max_steps_spin.setValue(0)
        self.max_steps_spin.setToolTip(
            f"Upper bound; training stops earlier when the loss stops improving. auto: {BASE_STEPS[0]} for a "
            f"crop of {REFERENCE_SIDE}x{REFERENCE_SIDE} px or more, up to {MAX_STEP_SCALE:g}x that for smaller "
            "crops (they train about as long)")
        form.addRow("Max steps", self.max_steps_spin)
        train_layout.addLayout(form)
        train_layout.addWidget(self._build_advanced_box())
        self._build_hologram_box(train_layout)

        row = QHBoxLayout()
        self.train_button = QPushButton("Train")
        self.train_button.clicked.connect(self.train)
        row.addWidget(self.train_button)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        row.addWidget(self.cancel_button)
        train_layout.addLayout(row)
        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m")
        train_layout.addWidget(self.progress)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        train_layout.addWidget(self.status)
        self.model_info = QLabel("Model: none")
        self.model_info.setWordWrap(True)
        train_layout.addWidget(self.model_info)
        return train_box

    def _build_advanced_box(self) -> QGroupBox:
        """The training settings most users leave alone (folded while unticked)."""
        self.advanced_box = QGroupBox("Advanced")
        self.advanced_box.setCheckable(True)
        self.advanced_box.setChecked(False)
        adv_outer = QVBoxLayout(self.advanced_box)
        self._advanced_content = QWidget()
        adv = QFormLayout(self._advanced_content)
        adv.setContentsMargins(0, 0, 0, 0)
        self.min_steps_spin = self._int_spin(-1, 100_000, -1, f"No early stop before this step (auto: "
                                             f"{BASE_STEPS[1]}, scaled with the crop as Max steps)")
        self.min_steps_spin.setSpecialValueText("auto")  # shown at -1: TrainConfig.min_steps = None
        adv.addRow("Min steps", self.min_steps_spin)
        self.patience_spin = self._int_spin(1, 100_000, TrainConfig.patience, "Steps without improvement = plateau")
        adv.addRow("Patience", self.patience_spin)
        self.copies_spin = self._int_spin(2, 64, TrainConfig.copies, "Transformed copies of the crop per step")
        adv.addRow("Copies", self.copies_spin)
        self.lr_spin = self._float_spin(1e-5, 1.0, TrainConfig.lr, 5, 1e-4)
        adv.addRow("Learning rate", self.lr_spin)
        self.noise_spin = self._float_spin(1.0, 100.0, TrainConfig.noise, 2, 0.5)
        self.noise_spin.setToolTip(
            "Noise augmentation: SNR lowered by up to this factor (1 = off). A brighter crop gets a "
            f"larger factor, so that training reaches objects {TrainConfig.dimmest:g} background SDs bright")
        adv.addRow("Noise factor", self.noise_spin)
        self.shot_check = QCheckBox("Photon noise")
        self.shot_check.setChecked(TrainConfig.shot_noise != (0.0, 0.0))
        self.shot_check.setToolTip(
            "Augmentation noise stronger on bright pixels, as photon counts are (fluorescence). "
            "Untick for images whose noise does not grow with the signal")
        adv.addRow("", self.shot_check)
        self.brighter_spin = self._float_spin(1.0, 1000.0, TrainConfig.gain, 1, 1.0)
        self.brighter_spin.setSuffix(" ×")
        self.brighter_spin.setToolTip(
            "Train for objects up to this many times brighter than the cropped one. Raise it when some objects "
            "are much brighter: the widget says so when it sees them (not used with a Signal range, which "
            "teaches brightness itself)")
        adv.addRow("Brighter objects", self.brighter_spin)
        self.translate_spin = self._float_spin(0.0, 10.0, TrainConfig.translate, 2, 0.5)
        adv.addRow("Translation (px)", self.translate_spin)
        self.signal_spin = self._float_spin(1.0, 100.0, 1.0, 2, 0.5)
        self.signal_spin.setSpecialValueText("off")  # shown at 1: TrainConfig.signal_range = None
        self.signal_spin.setToolTip(
            "Also learn each object's signal strength (for a small scatterer, its polarizability) by "
            "scaling the crop by up to this factor either way. Detections then carry a 'signal' feature, "
            "a multiple of the crop's object. Needs a zero background: subtract it first")
        adv.addRow("Signal range", self.signal_spin)
        self.downsample_spin = self._int_spin(
            1, 32, TrainConfig.downsample,
            "Look at the image in blocks of D×D pixels (their mean), in training and detection. "
            "For objects larger than the receptive field: the smallest D that makes one span < ~16 px",
        )
        self.downsample_spin.valueChanged.connect(self._update_rf_label)
        self.downsample_auto = QCheckBox("Auto")
        self.downsample_auto.setChecked(True)
        self.downsample_auto.setToolTip(
            "Set Downsample from the size of the object in the crop (as far as the crop allows: at least "
            "the receptive field once downsampled); untick to set it yourself")
        self.downsample_auto.toggled.connect(self._on_downsample_auto)
        self.downsample_spin.setEnabled(False)
        row = QHBoxLayout()
        row.addWidget(self.downsample_spin)
        row.addWidget(self.downsample_auto)
        adv.addRow("Downsample", row)
        self.rf_label = QLabel()
        adv.addRow("Receptive field", self.rf_label)
        adv_outer.addWidget(self._advanced_content)
        self._advanced_content.setVisible(False)
        self.advanced_box.toggled.connect(self._advanced_content.setVisible)
        return self.advanced_box

    def _build_detection_box(self) -> QGroupBox:
        """Score and cutoff settings, Detect all frames, linking into tracks."""
        det_box = QGroupBox("Detection")
        det_layout = QVBoxLayout(det_box)
        form = QFormLayout()
        defaults = DetectParams()
        self.alpha_spin = self._float_spin(0.0, 1.0, defaults.alpha, 3, 0.05)
        self.alpha_spin.setToolTip("Score = weight^α · clustering^β")
        form.addRow("α", self.alpha_spin)
        self.beta_spin = self._float_spin(-0.05, 10.0, -0.05, 3, 0.05)
        self.beta_spin.setSpecialValueText("auto (1 − α)")
        form.addRow("β", self.beta_spin)
        self.mode_combo = QComboBox()
        self.mode_combo.addItems(CUTOFF_MODES)
        self.mode_combo.setToolTip("quantile: of the score map (lowered in a crowded frame to keep 4 pixels "
                                   "per candidate peak, so on a textured image raising it may change nothing: "
                                   "use ratio there); ratio: of its maximum; absolute: the score itself")
        form.addRow("Cutoff mode", self.mode_combo)
        self.cutoff_spin = self._float_spin(0.0, 1.0, defaults.cutoff, 4, 0.01)
        form.addRow("Cutoff", self.cutoff_spin)
        self.min_weight_spin = self._float_spin(0.0, 1.0, defaults.min_weight, 4, 0.001)
        self.min_weight_spin.setToolTip(
            "Keep a detection only if one of the predictions it is refined from weighs at least this (empty "
            "background has none). Lower it when objects unlike the cropped one (another size) are missed")
        form.addRow("Min weight", self.min_weight_spin)
        self.max_consistency_spin = self._float_spin(0.0, 1000.0, 0.0, 3, 0.1)
        self.max_consistency_spin.setSpecialValueText("off")
        self.max_consistency_spin.setSuffix(" px²")
        self.max_consistency_spin.setToolTip(
            "Drop detections whose predictions disagree more than this (their 'consistency' feature): false "
            "detections on texture or a bright background often do, where their score does not set them apart. "
            "Read a value off the points' features; 0: off")
        form.addRow("Max consistency", self.max_consistency_spin)
        self.augment_check = QCheckBox("Average 8 rotations/flips (8× slower)")
        form.addRow(self.augment_check)
        self.deblend_check = QCheckBox("Deblend crowded objects")
        self.deblend_check.setChecked(defaults.deblend)
        self.deblend_check.setToolTip("Locate objects with a close neighbour again with the neighbours masked "
                                      "out (more accurate in crowded images, a little slower)")
        form.addRow(self.deblend_check)
        det_layout.addLayout(form)
        for spin in (self.alpha_spin, self.beta_spin, self.cutoff_spin, self.min_weight_spin,
                     self.max_consistency_spin):
            spin.valueChanged.connect(self._schedule_detect)
        self.mode_combo.currentTextChanged.connect(self._on_mode_changed)
        self.augment_check.toggled.connect(self._on_augment_changed)
        self.deblend_check.toggled.connect(self._schedule_detect)
        self.detect_info = QLabel("")
        det_layout.addWidget(self.detect_info)
        self.detect_all_button = QPushButton("Detect all frames")
        self.detect_all_button.clicked.connect(self.detect_all)
        det_layout.addWidget(self.detect_all_button)
        link_row = QHBoxLayout()
        self.link_check = QCheckBox("Link into tracks")
        self.link_check.setToolTip("After 'Detect all frames' on a time-lapse: join each detection to the nearest "
                                   "track of the frames before (trackpy), shown as a Tracks layer; the points get "
                                   "a 'track' feature")
        self.link_distance_spin = self._float_spin(0.1, 1000.0, 5.0, 1, 0.5)
        self.link_distance_spin.setSuffix(" px")
        self.link_distance_spin.setToolTip("Farthest an object moves between two frames (image pixels); keep it "
                                           "below half the distance between neighbours")
        self.link_memory_spin = QSpinBox()
        self.link_memory_spin.setRange(0, 100)
        self.link_memory_spin.setPrefix("gap ")
        self.link_memory_spin.setToolTip("Frames an object may go undetected and keep its track")
        for w in (self.link_check, self.link_distance_spin, self.link_memory_spin):
            link_row.addWidget(w)
        det_layout.addLayout(link_row)
        return det_box

    def _build_io_box(self) -> QGroupBox:
        """Save and load the model, export the points."""
        io_box = QGroupBox("Model and results")
        row = QHBoxLayout(io_box)
        self.save_button = QPushButton("Save model…")
        self.save_button.clicked.connect(self._save_dialog)
        self.load_button = QPushButton("Load model…")
        self.load_button.clicked.connect(self._load_dialog)
        self.export_button = QPushButton("Export points…")
        self.export_button.clicked.connect(self._export_dialog)
        for b in (self.save_button, self.load_button, self.export_button):
            row.addWidget(b)
        return io_box

    def _build_hologram_box(self, parent_layout) -> None:
        """The optional axial training on a complex field (the paper's propagation symmetry)."""
        self.hologram_box = QGroupBox("Hologram: axial position (z)")
        self.hologram_box.setCheckable(True)
        self.hologram_box.setChecked(False)
        self.hologram_box.setToolTip(
            "For a complex field (2 channels: real, imaginary; tick 'First axis = channels'): also learn each "
            "object's axial position by propagating the crop (angular spectrum). Detections get a 'z_um' feature")
        outer = QVBoxLayout(self.hologram_box)
        self._hologram_content = QWidget()
        form = QFormLayout(self._hologram_content)
        form.setContentsMargins(0, 0, 0, 0)
        self.z_range_spin = self._float_spin(0.1, 100.0, 3.0, 2, 0.5)
        self.z_range_spin.setSuffix(" µm")
        self.z_range_spin.setToolTip("Propagate the crop up to this far either way: the axial range learnt "
                                     "around the crop's object")
        form.addRow("z range", self.z_range_spin)
        self.pixel_nm_spin = self._float_spin(0.0, 100_000.0, 0.0, 1, 1.0)
        self.pixel_nm_spin.setSuffix(" nm")
        self.pixel_nm_spin.setSpecialValueText("not set")
        self.pixel_nm_spin.setToolTip("Pixel size in the sample (taken from the layer when its axes have "
                                      "length units, or from the TIFF it was opened from)")
        form.addRow("Pixel size", self.pixel_nm_spin)
        self.wavelength_spin = self._float_spin(100.0, 5000.0, TrainConfig.wavelength_nm, 1, 1.0)
        self.wavelength_spin.setSuffix(" nm")
        self.wavelength_spin.setToolTip("Vacuum wavelength of the illumination")
        form.addRow("Wavelength", self.wavelength_spin)
        self.n_medium_spin = self._float_spin(1.0, 3.0, TrainConfig.n_medium, 3, 0.01)
        self.n_medium_spin.setToolTip("Refractive index of the medium around the objects")
        form.addRow("Medium index", self.n_medium_spin)
        self.crop_z_spin = self._float_spin(-1000.0, 1000.0, 0.0, 3, 0.1)
        self.crop_z_spin.setSuffix(" µm")
        self.crop_z_spin.setToolTip(
            "Axial position of the crop's object (µm from the focal plane), so z is reported absolute. "
            "0: z relative to the crop's object. 'Refocus crop' measures it")
        self.refocus_button = QPushButton("Refocus crop")
        self.refocus_button.setToolTip("Find the crop's z by refocusing its field (classical focus search)")
        self.refocus_button.clicked.connect(self.refocus_crop)
        form.addRow("Crop z", self.crop_z_spin)
        form.addRow("", self.refocus_button)
        outer.addWidget(self._hologram_content)
        self._hologram_content.setVisible(False)  # folded while off, as Advanced
        self.hologram_box.toggled.connect(self._hologram_content.setVisible)
        self.hologram_box.toggled.connect(self._schedule_preview)
        parent_layout.addWidget(self.hologram_box)

    @staticmethod
    def _int_spin(lo, hi, value, tip=""):
        spin = QSpinBox()
        spin.setRange(lo, hi)
        spin.setValue(value)
        spin.setToolTip(tip)
        return spin

    @staticmethod
    def _float_spin(lo, hi, value, decimals, step):
        spin = QDoubleSpinBox()
        spin.setDecimals(decimals)
        spin.setRange(lo, hi)
        spin.setSingleStep(step)
        spin.setValue(value)
        return spin

