"""Regenerate the screenshots of docs/lodestar.md (and docs/deeploco.md) with the real widgets, headless.

    xvfb-run -a -s "-screen 0 1400x1300x24" python docs/make_screenshots.py [--steps 300] [--deeploco-model as.pt [--deeploco-only]]

Writes docs/images/lodestar_*.png (palette PNGs, each well under 300 KB; lodestar_6_hologram.png
from the hologram sample, ``--hologram-steps``, ``--hologram-only``); with
``--deeploco-model`` (an astigmatic model from ``starloc deeploco train --psf beads-AS.tif
--camera smlm2016``) also docs/images/deeploco_localize.png, deeploco_render.png and deeploco_train.png. Seeded: the same machine gives the
same pictures, apart from timings shown in the widget.
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from qtpy.QtWidgets import QApplication

import napari
import torch
from starloc import sim
from starloc.deeploco import EMCCD, Simulator
from starloc.deeploco.recipes import bead_psf
from starloc.gui import deeploco_widget, lodestar_widget
from starloc.demo import isolated_object
from starloc.gui.lodestar_jobs import TrainingPreview
from starloc.gui.lodestar_source import ALL_POINTS_LAYER, CENTRE_LAYER, CROP_POINT, CROP_LAYER, SCORE_LAYER, WEIGHT_LAYER

OUT = Path(__file__).resolve().parent / "images"


BEADS_AS = Path(__file__).resolve().parents[2] / "shared" / "data" / "smlm2016-beads" / "beads-AS.tif"


def snap(viewer, name: str, prefix: str = "lodestar") -> None:
    for _ in range(5):
        QApplication.processEvents()
    pixels = viewer.screenshot(canvas_only=False, flash=False)
    image = Image.fromarray(np.asarray(pixels)[..., :3]).quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    path = OUT / f"{prefix}_{name}.png"
    image.save(path, optimize=True)
    print(f"{path} ({path.stat().st_size // 1024} KB)")


def wait(widget, kind: str) -> None:
    done = []
    widget.job_finished.connect(lambda k, outcome: done.append((k, outcome)) if k == kind else None)
    while not done:
        QApplication.processEvents()
    assert done[0][1] == "returned", done


def main(steps: int) -> None:
    OUT.mkdir(exist_ok=True)
    lodestar_widget.show_info = print  # no notification toasts over the screenshots
    viewer = napari.Viewer(title="napari-starloc: LodeSTAR")
    viewer.window._qt_window.resize(1400, 950)
    _, widget = viewer.window.add_plugin_dock_widget("napari-starloc", "LodeSTAR")
    image, truth, _ = sim.simulate_scene("point", 30, size=(192, 192), snr=6, rng=4)
    viewer.add_image(image, name="spots", colormap="gray")

    # 1. draw a crop around one object
    widget.start_drawing()
    # the object farthest from its neighbours: one object per crop
    d = np.hypot(*(truth[:, None] - truth[None]).transpose(2, 0, 1)) + np.eye(len(truth)) * 1e9
    inside = np.all((truth > 20) & (truth < 172), axis=1)
    r, c = (int(round(v)) for v in truth[np.argmax(np.where(inside, d.min(1), 0))])
    viewer.layers[CROP_LAYER].add_rectangles(np.array([[r - 14.5, c - 14.5], [r + 13.5, c + 13.5]]))
    widget._update_crop_preview()
    snap(viewer, "1_crop")

    # 2. training progress (screenshot taken from the progress slot, mid-training, with the
    # weight map of the model in training on screen)
    widget.preview_seconds = 0.5
    widget.max_steps_spin.setValue(steps)
    widget.advanced_box.setChecked(True)
    widget.min_steps_spin.setValue(steps)
    worker = widget.train()
    taken = []

    def during(progress):
        if isinstance(progress, TrainingPreview) and progress.step >= steps // 2 and not taken:
            taken.append(progress.step)
            snap(viewer, "2_training")

    worker.yielded.connect(during)
    wait(widget, "train")
    widget.advanced_box.setChecked(False)

    # 3. maps and detections
    found = viewer.layers["LodeSTAR detections"].data
    dist = np.hypot(*(truth[:, None] - found[None]).transpose(2, 0, 1)).min(1)
    print(f"default cutoff: {len(found)} detections, {np.mean(dist <= 1):.0%} of {len(truth)} objects within 1 px")
    viewer.layers[SCORE_LAYER].visible = False
    viewer.layers[CROP_LAYER].visible = False
    viewer.layers.selection.active = viewer.layers["spots"]
    snap(viewer, "3_maps_detections")

    # 4. tuned detection: cutoff as a fraction of the best score, weight map hidden
    widget.mode_combo.setCurrentText("ratio")
    widget.cutoff_spin.setValue(0.1)
    widget.redetect()
    found = viewer.layers["LodeSTAR detections"].data
    dist = np.hypot(*(truth[:, None] - found[None]).transpose(2, 0, 1)).min(1)
    print(f"{len(found)} detections, {np.mean(dist <= 1):.0%} of {len(truth)} objects within 1 px")
    viewer.layers[WEIGHT_LAYER].visible = False
    snap(viewer, "4_tuned")

    # 5. detect all frames of a time-lapse, ready for export
    for name in [layer.name for layer in viewer.layers]:
        viewer.layers.remove(name)
    stack, _ = sim.simulate_timelapse(20, 12, size=(128, 128), diffusion=1.0, snr=6, rng=2)
    viewer.add_image(stack, name="diffusing particles", colormap="gray")
    widget.link_check.setChecked(True)
    widget.detect_all()
    wait(widget, "detect_all")
    viewer.layers.selection.active = viewer.layers[ALL_POINTS_LAYER]
    viewer.dims.set_current_step(0, 10)
    wait(widget, "maps")  # the current-frame layers follow the slider
    for name in (WEIGHT_LAYER, SCORE_LAYER, "LodeSTAR detections"):
        viewer.layers[name].visible = False
    snap(viewer, "5_all_frames")
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "detections.csv"
        widget.export_points(csv)
        print("".join(csv.read_text().splitlines(keepends=True)[:4]))
    viewer.close()


def hologram(steps: int) -> None:
    """The hologram sample: Point + size crop on the most isolated scatterer, Refocus crop,
    training with the Hologram box, detections with their z."""
    lodestar_widget.show_info = print
    viewer = napari.Viewer(title="napari-starloc: LodeSTAR on a hologram")
    viewer.window._qt_window.resize(1400, 1250)  # the Hologram box unfolded: needs a 1400x1300 screen
    _, widget = viewer.window.add_plugin_dock_widget("napari-starloc", "LodeSTAR")
    viewer.open_sample("napari-starloc", "hologram")
    layer = viewer.layers["hologram (real, imaginary)"]
    truth = layer.metadata["ground_truth"]
    widget.crop_source_combo.setCurrentText(CROP_POINT)
    widget.start_drawing()
    viewer.layers[CENTRE_LAYER].add(isolated_object(truth[:, :2]))
    widget.hologram_box.setChecked(True)
    widget.refocus_crop()
    widget.max_steps_spin.setValue(steps)
    widget.train()
    wait(widget, "train")
    found = viewer.layers["LodeSTAR detections"]
    dist = np.hypot(*(truth[:, None, :2] - found.data[None]).transpose(2, 0, 1))
    near = dist.argmin(0)
    print(f"{len(found.data)} detections of {len(truth)} scatterers; z error (µm) of each: "
          + " ".join(f"{z - t:+.2f}" for z, t in zip(found.features["z_um"], truth[near, 2])))
    viewer.layers[WEIGHT_LAYER].visible = False
    viewer.layers[SCORE_LAYER].visible = False
    viewer.layers.selection.active = found
    viewer.reset_view()
    snap(viewer, "6_hologram")
    viewer.close()


def deeploco(model: Path, beads: Path) -> None:
    """The DeepLoco widget on 20 camera frames (ADU) simulated from the AS bead stack, 1 emitter/µm²."""
    deeploco_widget.show_info = print
    camera = EMCCD.smlm2016()
    simulator = Simulator(bead_psf(beads, modality="AS"), camera, frame_shape=(64, 64), density=1.0,
                          photons_range=(1000.0, 7000.0), background_range=(100.0, 100.0), z_range=(-750.0, 750.0))
    generator = torch.Generator().manual_seed(5)
    truth = simulator.sample_emitters(20, generator)
    adu = camera.sample(simulator.expected(truth), generator).numpy()
    viewer = napari.Viewer(title="napari-starloc: DeepLoco")
    viewer.window._qt_window.resize(1400, 900)
    _, widget = viewer.window.add_plugin_dock_widget("napari-starloc", "DeepLoco")
    viewer.add_image(adu, name="AS frames (ADU)", colormap="gray")
    widget.load_model(model)
    widget.localize()
    wait_signal(widget.job_finished)
    viewer.dims.set_current_step(0, 9)
    snap(viewer, "localize", prefix="deeploco")
    widget.render()  # all 20 frames at 10 nm, coloured by z
    viewer.layers[deeploco_widget.POINTS_LAYER].visible = False
    viewer.layers["AS frames (ADU)"].visible = False
    snap(viewer, "render", prefix="deeploco")

    # the Train tab on the bundled bead sample, a few steps into a default training (then cancelled)
    viewer.layers.clear()
    viewer.open_sample("napari-starloc", "astigmatic-beads")
    viewer.dims.set_current_step(0, 37)  # the focus
    panel = widget.train_panel
    widget.tabs.setCurrentIndex(1)
    with tempfile.TemporaryDirectory() as tmp:
        panel.output_edit.setText(str(Path(tmp) / "as.pt"))
        panel.train()
        while panel.progress.value() < 40:
            QApplication.processEvents()
        snap(viewer, "train", prefix="deeploco")
        panel.cancel()
        while panel.train_button.isEnabled() is False:
            QApplication.processEvents()
    viewer.close()


def wait_signal(signal) -> None:
    done = []
    signal.connect(lambda *args: done.append(args))
    while not done:
        QApplication.processEvents()
    assert done[0] == ("returned",), done


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    parser.add_argument("--deeploco-model", type=Path, default=None, help="also the DeepLoco widget, with this AS model")
    parser.add_argument("--beads", type=Path, default=BEADS_AS, help="the AS bead stack (default: ../shared/data)")
    parser.add_argument("--deeploco-only", action="store_true", help="only the DeepLoco screenshots")
    parser.add_argument("--hologram-steps", type=int, default=2000, help="training steps on the hologram (2000)")
    parser.add_argument("--hologram-only", action="store_true", help="only the hologram screenshot")
    parser.add_argument("--no-hologram", action="store_true", help="without the hologram screenshot")
    args = parser.parse_args()
    if not (args.deeploco_only or args.hologram_only):
        main(args.steps)
    if not (args.deeploco_only or args.no_hologram):
        hologram(args.hologram_steps)
    if args.deeploco_model is not None:
        deeploco(args.deeploco_model, args.beads)
