"""``starloc deeploco train|localize`` and ``starloc render`` end to end on tiny data."""

import dataclasses
import os
import signal

import numpy as np
import pytest
import tifffile
import torch

from starloc.cli import EXIT_BAD_INPUT, EXIT_INTERRUPTED, main
from starloc.cli_common import frames_type
from starloc.cli_deeploco import parse_settings
from starloc.deeploco import EMCCD, Gaussian2DPSF, Simulator
from starloc.deeploco.model import DeepLoco
from starloc.deeploco.training import DeepLocoTrainConfig
from starloc.errors import InputError
from starloc.smlm_io import read_picasso, read_thunderstorm_csv, write_thunderstorm_csv
from tests.conftest import simulated_adu_stack

pytestmark = pytest.mark.usefixtures("one_thread")

#: a tiny network and validation set (as TINY in test_deeploco_training.py)
TINY = ["--set", "n_candidates=8", "--set", "conv_widths=4,8,8", "--set", "fc_width=64", "--set", "val_size=6",
        "--set", "val_every=2", "--batch", "4"]
RESUME = ["deeploco", "train", "--psf", "gaussian", "--sigma", "130", "--frame-size", "32", "--camera", "smlm2016",
          "--emitters", "1:3", "--device", "cpu", *TINY]
TRAIN = [*RESUME, "--arch", "paper"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("deeploco_cli")
    tifffile.imwrite(folder / "stack.tif", simulated_adu_stack(3, (80, 72), (3, 6)), photometric="minisblack")
    assert main([*TRAIN, "--steps", "3", "-o", str(folder / "model.pt")]) == 0
    return folder


def _bad(capsys, argv, message):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_BAD_INPUT, err
    assert err[-1].startswith("starloc: error:") and message in err[-1], err[-1]


def test_train_writes_a_tiny_model(folder, capsys):
    model = DeepLoco.load(folder / "model.pt")
    assert model.config.frame_size == 32 and model.config.n_candidates == 8
    assert model.config.conv_widths == (4, 8, 8) and isinstance(model.camera, EMCCD)
    assert model.camera.baseline == 100.0 and model.metadata["training"]["steps_done"] == 3
    assert model.metadata["source"]["psf"] == "gaussian"
    assert model.metadata["training"]["simulator"]["photons_distribution"] == "log-uniform"  # the default
    assert model.metadata["training"]["simulator"]["background_variation"] == 0.5
    assert not list(folder.glob(".*ckpt"))  # the private checkpoint is gone


def test_train_photons_options_reach_the_simulator(tmp_path):
    out = tmp_path / "m.pt"
    assert main([*TRAIN, "--steps", "1", "--photons", "800:900", "--photons-distribution", "uniform",
                 "--background-variation", "0", "-o", str(out)]) == 0
    sim = DeepLoco.load(out).metadata["training"]["simulator"]
    assert sim["photons_range"] == [800.0, 900.0] and sim["photons_distribution"] == "uniform"
    assert sim["background_variation"] == 0.0


def test_localize_writes_thunderstorm_csv_with_1_based_frames(folder, capsys):
    out = folder / "locs.csv"
    assert main(["deeploco", "localize", str(folder / "stack.tif"), "--model", str(folder / "model.pt"),
                 "--threshold", "0", "-o", str(out)]) == 0
    assert "written to" in capsys.readouterr().out
    header = out.read_text().splitlines()[0]
    assert header == '"id","frame","x [nm]","y [nm]","confidence"'
    raw_frames = np.loadtxt(out, delimiter=",", skiprows=1, usecols=1, ndmin=1)
    assert len(raw_frames) > 0 and raw_frames.min() >= 1 and raw_frames.max() <= 3
    table = read_thunderstorm_csv(out)
    assert set(table["frame"].tolist()) <= {0, 1, 2}
    assert np.all((table["x"] > -400) & (table["x"] < 72 * 100 + 400))
    assert np.all((table["y"] > -400) & (table["y"] < 80 * 100 + 400))


def test_localize_reads_a_folder_of_one_tiff_per_frame_as_the_stack(folder, tmp_path):
    frames = tifffile.imread(folder / "stack.tif")
    (tmp_path / "seq").mkdir()
    for i, frame in enumerate(frames):
        tifffile.imwrite(tmp_path / "seq" / f"img_{i + 1}.tif", frame)
    common = ["deeploco", "localize", "--model", str(folder / "model.pt"), "--threshold", "0"]
    assert main([*common, str(folder / "stack.tif"), "-o", str(tmp_path / "stack.csv")]) == 0
    assert main([*common, str(tmp_path / "seq"), "--frames", "1:3", "-o", str(tmp_path / "seq.csv")]) == 0
    whole, part = read_thunderstorm_csv(tmp_path / "stack.csv"), read_thunderstorm_csv(tmp_path / "seq.csv")
    keep = whole["frame"] >= 1
    assert len(part["frame"]) == int(keep.sum()) > 0
    for key in ("frame", "x", "y"):
        np.testing.assert_allclose(part[key], whole[key][keep])


def test_a_folder_with_a_stray_file_or_gaps_in_its_numbers_is_told(folder, tmp_path, capsys):
    frames = tifffile.imread(folder / "stack.tif")
    (tmp_path / "seq").mkdir()
    for number, frame in zip((1, 2, 5), frames):
        tifffile.imwrite(tmp_path / "seq" / f"frame_{number}.tif", frame)
    tifffile.imwrite(tmp_path / "seq" / "dark.tif", frames[0])
    assert main(["deeploco", "localize", str(tmp_path / "seq"), "--model", str(folder / "model.pt"),
                 "-o", str(tmp_path / "seq.csv")]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "1 file(s) named unlike the others ('dark.tif' among 'frame_N.tif') are read as frames too" in err
    assert "the file numbers skip (5 follows 2; 1 gap(s)): frames are numbered by their position" in err


def test_localize_frames_and_picasso_output(folder, capsys):
    out = folder / "locs.hdf5"
    assert main(["deeploco", "localize", str(folder / "stack.tif"), "--model", str(folder / "model.pt"),
                 "--threshold", "0", "--frames", "1:3", "--batch-size", "8", "-o", str(out)]) == 0
    import h5py
    import yaml

    with h5py.File(out) as fh:
        locs = fh["locs"][()]
    assert len(locs) > 0 and set(locs["frame"].tolist()) <= {1, 2}
    info = yaml.safe_load((folder / "locs.yaml").read_text())
    assert (info["Width"], info["Height"], info["Frames"], info["Pixelsize"]) == (72, 80, 3, 100.0)
    # render and evaluate read it back: the same positions as the CSV of the same run (float32 px)
    csv = folder / "locs_same.csv"
    assert main(["deeploco", "localize", str(folder / "stack.tif"), "--model", str(folder / "model.pt"),
                 "--threshold", "0", "--frames", "1:3", "--batch-size", "8", "-o", str(csv)]) == 0
    back, ref = read_picasso(out), read_thunderstorm_csv(csv)
    assert np.array_equal(back["frame"], ref["frame"])
    np.testing.assert_allclose(back["x"], ref["x"], atol=1e-3)
    np.testing.assert_allclose(back["y"], ref["y"], atol=1e-3)
    capsys.readouterr()
    assert main(["evaluate", str(out), "--truth", str(csv)]) == 0
    assert "Jaccard" in capsys.readouterr().out
    assert main(["render", str(out), "-o", str(folder / "r.tif")]) == 0
    assert tifffile.imread(folder / "r.tif").shape == (800, 720)  # the camera field, 80 x 72 px of 100 nm
    (folder / "locs.yaml").rename(folder / "hidden.yaml")
    _bad(capsys, ["render", str(out), "-o", str(folder / "r2.tif")], "the pixel size is unknown")
    assert main(["render", str(out), "--camera-pixel-size", "100", "-o", str(folder / "r2.tif")]) == 0
    (folder / "hidden.yaml").rename(folder / "locs.yaml")


@pytest.mark.parametrize("arch", ["fcn", "unet"])
def test_fully_convolutional_model_trains_and_localizes_whole_frames(folder, tmp_path, capsys, arch):
    model_path = tmp_path / f"{arch}.pt"
    assert main([*TRAIN, "--arch", arch, "--steps", "2", "-o", str(model_path)]) == 0
    model = DeepLoco.load(model_path)
    assert model.config.architecture == arch
    if "architecture" in {f.name for f in dataclasses.fields(DeepLocoTrainConfig)}:
        assert model.metadata["training"]["architecture"] == arch  # passed through the training config
    out = tmp_path / "fcn.csv"
    assert main(["deeploco", "localize", str(folder / "stack.tif"), "--model", str(model_path), "--threshold", "0.01",
                 "-o", str(out)]) == 0
    table = read_thunderstorm_csv(out)
    assert len(table["x"]) > 0 and set(table["frame"].tolist()) <= {0, 1, 2}
    # the error head's per-localization uncertainty: a CSV column, and Picasso's lpx/lpy unless
    # --precision replaces it
    assert model.has_uncertainty and np.all(table["uncertainty"] > 1.0)
    assert f"median uncertainty {np.median(table['uncertainty']):.0f} nm lateral" in capsys.readouterr().out
    import h5py

    for extra, expected in (([], np.sort(table["uncertainty"]) / 100.0), (["--precision", "7"], 0.07)):
        h5 = tmp_path / "p.hdf5"
        assert main(["deeploco", "localize", str(folder / "stack.tif"), "--model", str(model_path), "--threshold",
                     "0.01", *extra, "-o", str(h5)]) == 0
        with h5py.File(h5) as fh:
            locs = fh["locs"][()]
        np.testing.assert_allclose(np.sort(locs["lpx"]), expected, rtol=1e-5)
    _bad(capsys, ["deeploco", "localize", str(folder / "stack.tif"), "--model", str(folder / "model.pt"),
                  "--tile", "48", "-o", str(out)], "exactly 32 px")


def test_render_histogram_gaussian_and_z(tmp_path, capsys):
    table = {"frame": np.array([0, 0, 1]), "x": np.array([5.0, 1000.0, 1999.0]),
             "y": np.array([5.0, 500.0, 995.0]), "z": np.array([-300.0, 0.0, 300.0])}
    write_thunderstorm_csv(tmp_path / "l.csv", table)
    out = tmp_path / "img.tif"
    assert main(["render", str(tmp_path / "l.csv"), "-o", str(out), "--pixel-size", "20"]) == 0
    with tifffile.TiffFile(out) as tif:
        img = tif.asarray()
        assert tif.imagej_metadata["unit"] == "um"
        num, den = tif.pages[0].tags["XResolution"].value
    assert img.shape == (995 // 20 + 1, 1999 // 20 + 1) and img.sum() == 3  # (50, 100)
    assert num / den == pytest.approx(50.0)  # 50 px per µm = 20 nm/px
    assert main(["render", str(tmp_path / "l.csv"), "-o", str(out), "--method", "gaussian", "--sigma", "15",
                 "--extent", "-100", "2100", "-100", "1100"]) == 0
    img = tifffile.imread(out)
    assert img.shape == (120, 220) and img.sum() == pytest.approx(3, abs=1e-3)
    assert main(["render", str(tmp_path / "l.csv"), "-o", str(out), "--color-by-z"]) == 0
    rgb = tifffile.imread(out)
    assert rgb.shape == (100, 200, 3) and rgb.dtype == np.uint8 and rgb.max() == 255
    _bad(capsys, ["render", str(tmp_path / "nope.csv"), "-o", str(out)], "not found")
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    _bad(capsys, ["render", str(tmp_path / "other.csv"), "-o", str(out)], "neither a ThunderSTORM")
    write_thunderstorm_csv(tmp_path / "flat.csv", {k: v for k, v in table.items() if k != "z"})
    _bad(capsys, ["render", str(tmp_path / "flat.csv"), "-o", str(out), "--color-by-z"], "no z column")


@pytest.mark.parametrize("name, data, extra, message", [
    ("missing.tif", None, [], "not found"),
    ("four.tif", np.zeros((2, 2, 40, 40), np.uint16), [], "4D"),
    ("nan.tif", np.where(np.arange(3 * 40 * 40).reshape(3, 40, 40) == 1700, np.nan, 150.0).astype(np.float32),
     [], "frame 1 (0-based) of"),
    ("ok.tif", np.full((2, 40, 40), 150, np.uint16), ["--pixel-size", "160"], "pixel-size mismatch"),
    ("dark.tif", np.zeros((2, 40, 40), np.uint16), [], "far below the camera baseline"),
    ("ok.tif", np.full((2, 40, 40), 150, np.uint16), ["--frames", "5:9"], "selects no frame"),
])
def test_localize_bad_input_exits_2_and_writes_nothing(folder, tmp_path, capsys, name, data, extra, message):
    if data is not None:
        tifffile.imwrite(tmp_path / name, data, photometric="minisblack")
    out = tmp_path / "out.csv"
    _bad(capsys, ["deeploco", "localize", str(tmp_path / name), "--model", str(folder / "model.pt"),
                  "-o", str(out), *extra], message)
    assert not out.exists() and not list(tmp_path.glob(".out.csv*"))


def test_localize_refuses_a_non_model_file(folder, tmp_path, capsys):
    (tmp_path / "garbage.pt").write_bytes(b"\x00garbage")
    _bad(capsys, ["deeploco", "localize", str(folder / "stack.tif"), "--model", str(tmp_path / "garbage.pt"),
                  "-o", str(tmp_path / "o.csv")], "cannot read model file")
    torch.save({"w": torch.zeros(2)}, tmp_path / "bare.pt")
    _bad(capsys, ["deeploco", "localize", str(folder / "stack.tif"), "--model", str(tmp_path / "bare.pt"),
                  "-o", str(tmp_path / "o.csv")], "not a starloc model")
    _bad(capsys, ["deeploco", "localize", str(folder / "stack.tif"), "--model", str(folder / "model.pt"),
                  "-o", str(tmp_path / "o.csv"), "--format", "picasso"], ".hdf5")
    assert not (tmp_path / "o.csv").exists()


def test_an_output_that_is_an_input_or_another_format_is_refused(folder, tmp_path, capsys):
    stack, model = folder / "stack.tif", folder / "model.pt"
    before = stack.read_bytes(), model.read_bytes()
    localize = ["deeploco", "localize", str(stack), "--model", str(model)]
    _bad(capsys, [*localize, "-o", str(stack)], "it is the input")
    _bad(capsys, [*localize, "-o", str(model)], "it is the input")
    _bad(capsys, [*localize, "-o", str(tmp_path / "l.hdf5"), "--format", "thunderstorm"], "writes a CSV file")
    _bad(capsys, ["render", str(stack), "-o", str(stack)], "it is the input")
    _bad(capsys, ["render", str(stack), "-o", str(tmp_path / "r.csv")], "writes a TIFF file")
    _bad(capsys, ["evaluate", str(stack), "--truth", str(stack), "--json", str(stack)], "it is the input")
    _bad(capsys, [*TRAIN, "--steps", "1", "-o", str(tmp_path / "m.tif")], "writes a MODEL file")
    _bad(capsys, [*TRAIN, "--steps", "1", "-o", str(tmp_path / "m.pt"), "--checkpoint", str(tmp_path / "m.pt")],
         "--checkpoint and -o name the same file")  # neither exists yet: the same path still
    _bad(capsys, ["render", str(stack), "-o", str(tmp_path / "locs.yaml")], "the name says YAML")  # a sidecar
    for command in (localize + ["-o", str(tmp_path / "l.csv")], ["deeploco", "brightness", str(stack)]):
        _bad(capsys, [*command, "--units", "photons", "--camera", "scmos", "--baseline", "500"],
             "--camera scmos, --baseline: camera options convert ADU to photons, and --units photons")
    assert (stack.read_bytes(), model.read_bytes()) == before
    assert not any(tmp_path.iterdir())


def test_train_bad_options_exit_2(tmp_path, capsys):
    out = str(tmp_path / "m.pt")
    _bad(capsys, [*TRAIN, "--set", "nonsense=1", "-o", out], "unknown training setting")
    _bad(capsys, [*TRAIN, "--set", "steps=many", "-o", out], "steps=many")
    _bad(capsys, ["deeploco", "train", "--psf", str(tmp_path / "beads.tif"), "-o", out], "neither")
    _bad(capsys, ["deeploco", "train", "--psf", "gaussian", "--baseline", "90", "-o", out], "need --camera")
    _bad(capsys, ["deeploco", "train", "--psf", "gaussian", "-o", str(tmp_path / "no" / "m.pt")], "does not exist")
    assert not (tmp_path / "m.pt").exists()


def _interrupt_after(steps, at_end=False):
    """training.train that sends itself Ctrl-C after ``steps`` progress records, or (at_end)
    after the last one, while the generator finishes (calibrates)."""
    from starloc.deeploco import training

    real = training.train

    def train(*args, **kwargs):
        inner = real(*args, **kwargs)
        n = 0
        try:
            while True:
                try:
                    p = next(inner)
                except StopIteration as stop:
                    return stop.value
                n += 1
                if n == steps and not at_end:
                    os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does
                yield p
                if n == steps and at_end:
                    os.kill(os.getpid(), signal.SIGINT)  # arrives while the generator calibrates
        finally:
            inner.close()

    return train


def test_ctrl_c_saves_the_model_so_far_and_resume_continues(tmp_path, capsys, monkeypatch):
    from starloc.deeploco import training

    real = training.train
    monkeypatch.setattr(training, "train", _interrupt_after(2))
    out, ckpt = tmp_path / "m.pt", tmp_path / "run.ckpt"
    code = main([*TRAIN, "--steps", "5", "--checkpoint", str(ckpt), "-o", str(out)])
    err = capsys.readouterr().err
    assert code == EXIT_INTERRUPTED and "interrupted after step 2" in err and "--resume" in err
    model = DeepLoco.load(out)
    assert model.metadata["training"]["steps_done"] == 2 and model.metadata["training"]["interrupted"]
    monkeypatch.setattr(training, "train", real)
    assert main([*RESUME, "--resume", str(ckpt), "--steps", "4", "-o", str(out)]) == 0
    assert DeepLoco.load(out).metadata["training"]["steps_done"] == 4


def test_ctrl_c_never_replaces_an_existing_model_with_an_unfinished_one(tmp_path, capsys, monkeypatch):
    from starloc.deeploco import training

    out = tmp_path / "m.pt"
    out.write_bytes(b"the user's good model")
    monkeypatch.setattr(training, "train", _interrupt_after(2))
    code = main([*TRAIN, "--steps", "5", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == EXIT_INTERRUPTED and out.read_bytes() == b"the user's good model"
    written = tmp_path / "m.interrupted.pt"
    assert f"written to {written}" in err and "is kept" in err and "not calibrated" in err
    assert "starloc deeploco calibrate" in err
    assert DeepLoco.load(written).metadata["training"]["interrupted"]


def test_ctrl_c_while_the_finished_training_calibrates_keeps_the_finished_model(tmp_path, capsys, monkeypatch):
    from starloc.deeploco import training

    monkeypatch.setattr(training, "train", _interrupt_after(3, at_end=True))
    out = tmp_path / "m.pt"
    assert main([*TRAIN, "--steps", "3", "-o", str(out)]) == 0
    assert "interrupted" not in capsys.readouterr().err
    meta = DeepLoco.load(out).metadata["training"]
    assert meta["steps_done"] == 3 and not meta.get("interrupted")


def test_resume_trains_on_the_checkpoints_own_simulation_and_refuses_another(tmp_path, capsys):
    ckpt, out = tmp_path / "run.ckpt", tmp_path / "m.pt"
    assert main([*RESUME, "--photons", "900:1100", "--steps", "2", "--checkpoint", str(ckpt), "-o", str(out)]) == 0
    short = ["deeploco", "train", "--resume", str(ckpt), "--device", "cpu", *TINY, "-o", str(out)]
    assert main([*short, "--steps", "3"]) == 0  # no simulation options: the checkpoint's
    model = DeepLoco.load(out)
    assert model.metadata["training"]["steps_done"] == 3 and isinstance(model.camera, EMCCD)
    assert model.metadata["training"]["simulator"]["photons_range"] == [900.0, 1100.0]
    # every option of the first run again: the same simulation, accepted
    assert main([*RESUME, "--photons", "900:1100", "--resume", str(ckpt), "--steps", "4", "-o", str(out)]) == 0
    # a different camera, PSF or range is refused, naming what differs; nothing is written
    out.unlink()
    _bad(capsys, [*RESUME, "--resume", str(ckpt), "--steps", "5", "-o", str(out)], "settings.photons_range")
    other_camera = [a if a != "smlm2016" else "scmos" for a in RESUME]
    _bad(capsys, [*other_camera, "--photons", "900:1100", "--resume", str(ckpt), "--steps", "5", "-o", str(out)],
         "(camera)")
    other_psf = [a if a != "130" else "150" for a in RESUME]
    _bad(capsys, [*other_psf, "--photons", "900:1100", "--resume", str(ckpt), "--steps", "5", "-o", str(out)],
         "(psf)")
    _bad(capsys, [*short, "--photons", "1:2"], "--photons without --psf")
    assert not out.exists()
    _bad(capsys, ["deeploco", "train", "-o", str(out)], "--psf is required")


def test_train_says_when_it_could_not_calibrate(tmp_path, capsys):
    out = tmp_path / "m.pt"
    assert main([*TRAIN, "--steps", "1", "--set", "calibration_frames=4", "-o", str(out)]) == 0
    assert "warning: not calibrated" in capsys.readouterr().err
    assert DeepLoco.load(out).threshold == DeepLocoTrainConfig().threshold


def test_train_refuses_a_z_range_for_a_2d_psf(tmp_path, capsys):
    _bad(capsys, [*TRAIN, "--z-range=-500:500", "-o", str(tmp_path / "m.pt")], "--z-range applies to 3D PSFs")


def test_render_skips_non_finite_rows_and_refuses_a_huge_image(tmp_path, capsys):
    (tmp_path / "nan.csv").write_text('"frame","x [nm]","y [nm]"\n1,100,200\n1,nan,300\n2,inf,5\n2,-500,300\n')
    out = tmp_path / "img.tif"
    assert main(["render", str(tmp_path / "nan.csv"), "-o", str(out), "--pixel-size", "10"]) == 0
    outcome = capsys.readouterr()
    assert "2 localization(s) of nan.csv without finite x/y left out" in outcome.err
    assert "1 localization(s) rendered" in outcome.out and "1 outside the field left out" in outcome.out
    assert tifffile.imread(out).sum() == 1
    # Gaussian: the default field reaches 3 sigma past the last localization, keeping its whole mass
    assert main(["render", str(tmp_path / "nan.csv"), "-o", str(out), "--method", "gaussian", "--sigma", "20"]) == 0
    assert tifffile.imread(out).sum() == pytest.approx(1.0, abs=1e-4)
    before = out.read_bytes()
    _bad(capsys, ["render", str(tmp_path / "nan.csv"), "-o", str(out), "--pixel-size", "0.001"], "would be")
    assert out.read_bytes() == before


def test_evaluate_scores_localizations_against_challenge_ground_truth(tmp_path, capsys):
    import json

    # 4 true emitters in 2 frames (activations.csv: 1-based frames, no header as some files have)
    (tmp_path / "activations.csv").write_text("1,1,1000,1000,0,2000\n2,1,3000,1000,100,2000\n"
                                              "3,2,1000,3000,-200,2000\n4,2,5000,5000,300,2000\n")
    # 3 of them found (one 30 nm off in x, one 40 nm off in z), one false localization, one missed
    locs = {"frame": np.array([0, 0, 1, 1]), "x": np.array([1030.0, 3000.0, 1000.0, 200.0]),
            "y": np.array([1000.0, 1000.0, 3000.0, 200.0]), "z": np.array([0.0, 140.0, -200.0, 0.0])}
    write_thunderstorm_csv(tmp_path / "locs.csv", locs)
    argv = ["evaluate", str(tmp_path / "locs.csv"), "--truth", str(tmp_path / "activations.csv")]
    assert main([*argv, "--json", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    assert "3D, matched within 100 nm lateral, 500 nm axial: 3 matched, 1 false, 1 missed" in out
    got = json.loads((tmp_path / "m.json").read_text())
    assert got["jaccard"] == pytest.approx(3 / 5)
    assert got["rmse_lateral"] == pytest.approx(np.sqrt(30.0**2 / 3))
    assert got["rmse_axial"] == pytest.approx(np.sqrt(40.0**2 / 3))
    assert got["mean_offset"] == pytest.approx([-10.0, 0.0, -40.0 / 3])
    assert main([*argv, "--lateral-only", "--tolerance", "20"]) == 0
    assert "2D, matched within 20 nm lateral: 2 matched, 2 false, 2 missed" in capsys.readouterr().out
    # the truth as a ThunderSTORM table (more columns than activations.csv), scored the same
    truth = read_thunderstorm_csv(tmp_path / "locs.csv")
    write_thunderstorm_csv(tmp_path / "truth.csv", {**truth, "sigma": np.full(4, 100.0), "intensity": np.ones(4),
                                                    "offset": np.ones(4)})
    assert main(["evaluate", str(tmp_path / "locs.csv"), "--truth", str(tmp_path / "truth.csv")]) == 0
    assert "4 matched, 0 false, 0 missed" in capsys.readouterr().out
    _bad(capsys, ["evaluate", str(tmp_path / "locs.csv"), "--truth", str(tmp_path / "none.csv")], "not found")


def test_evaluate_reads_a_2d_truth_and_says_when_frames_do_not_line_up(tmp_path, capsys):
    rng = np.random.default_rng(0)
    n = 60
    frames = np.repeat(np.arange(20), 3)
    xy = rng.uniform(500, 6000, (n, 2))
    truth = "Ground-truth,frame,xnano,ynano,znano,intensity\n" + "".join(
        f"{i + 1},{f + 1},{x:.1f},{y:.1f},,1000\n" for i, (f, (x, y)) in enumerate(zip(frames, xy)))
    (tmp_path / "truth.csv").write_text(truth)  # a 2D ground truth: its znano column is empty
    locs = {"frame": frames, "x": xy[:, 0] + 5, "y": xy[:, 1], "z": np.zeros(n)}
    write_thunderstorm_csv(tmp_path / "locs.csv", locs)
    argv = ["evaluate", str(tmp_path / "locs.csv"), "--truth", str(tmp_path / "truth.csv")]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "60 localization(s) against 60 true emitter(s), 2D" in captured.out and "60 matched" in captured.out
    assert "truth.csv has no z values: scored in 2D" in captured.err and "warning" not in captured.err
    # a stack localized in part (--frames 1:10): the rest of the truth counts as missed, and is said
    write_thunderstorm_csv(tmp_path / "part.csv", {k: v[:30] for k, v in locs.items()})
    assert main(["evaluate", str(tmp_path / "part.csv"), "--truth", str(tmp_path / "truth.csv")]) == 0
    assert ("30 of the 60 true emitters lie in frames outside the localized ones (1-10, 1-based)"
            in capsys.readouterr().err)
    # frame numbers one apart (a 0-based table read as 1-based)
    write_thunderstorm_csv(tmp_path / "shifted.csv", {**locs, "frame": frames + 1})
    assert main(["evaluate", str(tmp_path / "shifted.csv"), "--truth", str(tmp_path / "truth.csv")]) == 0
    assert "with its frame numbers +1: does one file count frames from 0" in capsys.readouterr().err
    (tmp_path / "empty.csv").write_text("Ground-truth,frame,xnano,ynano,znano,intensity\n")
    _bad(capsys, [*argv[:2], "--truth", str(tmp_path / "empty.csv")], "lists no true emitter")


def test_a_closed_stdout_ends_the_command_quietly(tmp_path):
    """`starloc evaluate ... | head -1`: the reader leaving is no error to report."""
    import subprocess
    import sys

    code = ("import sys\nfrom starloc import cli, cli_deeploco\n"
            "def gone(args):\n    raise BrokenPipeError(32, 'Broken pipe')\n"
            "cli_deeploco.cmd_evaluate = gone\n"
            "sys.exit(cli.main(['evaluate', 'a.csv', '--truth', 'b.csv']))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 1 and done.stderr == "", done.stderr


def test_argument_parsers():
    assert frames_type("2:5") == slice(2, 5) and frames_type(":5") == slice(None, 5)
    assert frames_type("3") == slice(3, 4) and frames_type("-2:") == slice(-2, None)
    got = parse_settings(["conv_widths=4,8,8", "reset_optimizer=false", "lr=1e-3", "kernel=gaussian"],
                         DeepLocoTrainConfig)
    assert got == {"conv_widths": (4, 8, 8), "reset_optimizer": False, "lr": 1e-3, "kernel": "gaussian"}
    with pytest.raises(InputError):
        parse_settings(["batch"], DeepLocoTrainConfig)


def test_train_from_a_bead_stack_in_3d_and_in_focus_2d(tmp_path, capsys):
    from starloc.deeploco.demo import bundled_bead_stack

    common = ["deeploco", "train", "--psf", str(bundled_bead_stack()), "--psf-z-step", "20", "--camera", "smlm2016",
              "--frame-size", "32", "--steps", "1", "--batch", "2", "--set", "val_size=0", "--device", "cpu"]
    assert main([*common, "-o", str(tmp_path / "3d.pt")]) == 0
    m3 = DeepLoco.load(tmp_path / "3d.pt")
    assert m3.config.dim == 3 and m3.config.z_range == (-750.0, 750.0) and m3.psf.stack.shape[0] == 76
    # 2D: emitters within +-400 nm of focus by default (the slices there), x and y learnt
    assert main([*common, "--in-focus", "-o", str(tmp_path / "2d.pt")]) == 0
    m2 = DeepLoco.load(tmp_path / "2d.pt")
    assert m2.config.dim == 2 and m2.psf.lateral and m2.psf.stack.shape[0] == 40  # slices at +-10, +-30 ... nm
    assert m2.psf.z_range == (-390.0, 390.0) and not m2.psf.z_dependent
    assert main([*common, "--in-focus", "--defocus", "0", "-o", str(tmp_path / "focus.pt")]) == 0
    m0 = DeepLoco.load(tmp_path / "focus.pt")
    assert m0.config.dim == 2 and m0.psf.stack.shape[0] == 1 and not m0.psf.lateral
    _bad(capsys, ["deeploco", "train", "--psf", "gaussian", "--in-focus", "-o", str(tmp_path / "g.pt")], "--in-focus")
    _bad(capsys, [*common, "--defocus", "300", "-o", str(tmp_path / "d.pt")], "--defocus applies to 2D models")
    _bad(capsys, [*common, "--in-focus", "--defocus", "-5", "-o", str(tmp_path / "d.pt")], "defocus must be")


def test_train_centres_the_psf_on_the_given_bead_positions(tmp_path, capsys):
    """--bead-positions: the PSF's origin is each bead's given (true) position, not its image's
    centroid, and stderr says how far apart the two are."""
    from starloc.deeploco.demo import bundled_bead_stack
    from starloc.deeploco.psf import EmpiricalPSF

    beads = tifffile.imread(bundled_bead_stack())
    (cx, cy), = EmpiricalPSF.from_bead_stack(beads, z_step=20).meta["bead_centres_nm"]
    table = tmp_path / "beads.csv"
    table.write_text(f"bead,x_nm,y_nm\n1,{cx + 20:.3f},{cy - 30:.3f}\n")
    common = ["deeploco", "train", "--psf", str(bundled_bead_stack()), "--psf-z-step", "20", "--camera", "smlm2016",
              "--frame-size", "32", "--steps", "1", "--batch", "2", "--set", "val_size=0", "--device", "cpu"]
    capsys.readouterr()
    assert main([*common, "-o", str(tmp_path / "c.pt")]) == 0
    err = capsys.readouterr().err  # centred on the image: says how to centre it on the truth
    assert "averaged over 1 bead(s); centred on their images (--bead-positions: on the beads' true positions)" in err
    assert main([*common, "--bead-positions", str(table), "-o", str(tmp_path / "m.pt")]) == 0
    err = capsys.readouterr().err
    assert "centred on their images" not in err
    assert "centred on the given bead positions (the beads' images are centred -20 nm in x, +30 nm in y" in err
    meta = DeepLoco.load(tmp_path / "m.pt").psf.meta
    assert meta["anchor"] == "positions" and meta["centroid_offset_nm"] == pytest.approx([-20.0, 30.0], abs=0.01)
    _bad(capsys, ["deeploco", "train", "--psf", "gaussian", "--bead-positions", str(table), "-o",
                  str(tmp_path / "g.pt")], "--bead-positions apply to a bead-stack PSF")
    pixels = tmp_path / "px.csv"
    pixels.write_text(f"x [px],y [px]\n{cx / 100:.3f},{cy / 100:.3f}\n")
    _bad(capsys, [*common, "--bead-positions", str(pixels), "-o", str(tmp_path / "p.pt")], "must be in nm")
    _bad(capsys, [*common, "--bead-positions", str(tmp_path / "none.csv"), "-o", str(tmp_path / "n.pt")], "not found")
    assert not (tmp_path / "p.pt").exists() and not (tmp_path / "n.pt").exists()


def test_a_bead_tiff_states_its_pixel_size_and_z_step(tmp_path, capsys):
    from starloc.deeploco.demo import bundled_bead_stack
    from starloc.deeploco.stack import tiff_spacing

    beads = tifffile.imread(bundled_bead_stack())[::2]  # 38 slices, 40 nm apart
    imagej = tmp_path / "beads-ij.tif"  # ImageJ: pixels per µm, spacing in µm
    tifffile.imwrite(imagej, beads, imagej=True, resolution=(1 / 0.16, 1 / 0.16),
                     metadata={"unit": "um", "spacing": 0.04, "axes": "ZYX"})
    ome = tmp_path / "beads.ome.tif"
    tifffile.imwrite(ome, beads, ome=True, metadata={"axes": "ZYX", "PhysicalSizeX": 160.0, "PhysicalSizeXUnit": "nm",
                                                     "PhysicalSizeY": 160.0, "PhysicalSizeYUnit": "nm",
                                                     "PhysicalSizeZ": 0.04, "PhysicalSizeZUnit": "µm"})
    plain = tmp_path / "beads-plain.tif"
    tifffile.imwrite(plain, beads)
    for path in (imagej, ome):
        assert tiff_spacing(path) == (pytest.approx(160.0), pytest.approx(40.0))
    assert tiff_spacing(plain) == (None, None) and tiff_spacing(tmp_path / "none.tif") == (None, None)

    common = ["deeploco", "train", "--camera", "smlm2016", "--frame-size", "32", "--steps", "1", "--batch", "2",
              "--set", "val_size=0", "--set", "calibration_frames=0", "--device", "cpu"]
    assert main([*common, "--psf", str(imagej), "-o", str(tmp_path / "ij.pt")]) == 0
    assert "from beads-ij.tif's metadata: pixel size 160 nm, z step 40 nm" in capsys.readouterr().err
    model = DeepLoco.load(tmp_path / "ij.pt")
    assert model.config.pixel_size == pytest.approx(160.0)
    assert model.config.z_range == pytest.approx((-740.0, 740.0))  # 38 slices centred on focus
    # an option wins over the file, with a warning; a file without metadata keeps the defaults
    assert main([*common, "--psf", str(imagej), "--pixel-size", "100", "-o", str(tmp_path / "opt.pt")]) == 0
    assert "beads-ij.tif states pixel size 160 nm; using --pixel-size 100" in capsys.readouterr().err
    assert DeepLoco.load(tmp_path / "opt.pt").config.pixel_size == 100.0
    assert main([*common, "--psf", str(plain), "-o", str(tmp_path / "plain.pt")]) == 0
    err = capsys.readouterr().err
    assert "metadata" not in err and "assuming pixel size 100 nm" in err and "z step 10 nm" in err
    plain_model = DeepLoco.load(tmp_path / "plain.pt")
    assert plain_model.config.pixel_size == 100.0 and plain_model.config.z_range == pytest.approx((-185.0, 185.0))
    # a pixel size stated in a form starloc cannot use is not replaced by the default
    odd = tmp_path / "beads-odd.tif"
    tifffile.imwrite(odd, beads, imagej=True, resolution=(1 / 0.16, 1 / 0.1),
                     metadata={"unit": "um", "spacing": 0.04, "axes": "ZYX"})
    _bad(capsys, [*common, "--psf", str(odd), "-o", str(tmp_path / "odd.pt")], "non-square pixels")
    assert not (tmp_path / "odd.pt").exists()
    assert main([*common, "--psf", str(odd), "--pixel-size", "130", "-o", str(tmp_path / "odd.pt")]) == 0


def test_calibrate_rechooses_threshold_and_refuses_what_it_cannot_calibrate(folder, tmp_path, capsys, monkeypatch):
    from starloc.deeploco.calibration import THRESHOLDS
    from starloc.deeploco.network import DeepLocoConfig
    from starloc.deeploco.training import train
    from starloc.progress import finish

    monkeypatch.setattr("starloc.deeploco.calibration.MIN_MATCHES", 50)  # a 150-step model finds few
    sim = Simulator(Gaussian2DPSF(130.0), camera=EMCCD.smlm2016(), frame_shape=(32, 32), n_range=(1, 3),
                    photons_range=(2000, 5000), background_range=(20, 40))
    cfg = DeepLocoTrainConfig(n_candidates=8, conv_widths=(4, 8, 8), batch=8, steps=150, val_size=0, lr=3e-3,
                              calibration_frames=0)
    model = finish(train(sim, cfg))
    assert model.threshold == 0.3 and model.subpixel is None
    model.save(tmp_path / "old.pt")
    out = tmp_path / "new.pt"
    assert main(["deeploco", "calibrate", str(tmp_path / "old.pt"), "-o", str(out), "--frames", "300",
                 "--device", "cpu"]) == 0
    assert "confidence threshold 0.3 ->" in capsys.readouterr().out
    new = DeepLoco.load(out)
    assert new.threshold in THRESHOLDS and new.subpixel is not None
    assert new.metadata["training"]["calibration"]["frames"] == 300
    assert DeepLoco.load(tmp_path / "old.pt").threshold == 0.3  # the input is left alone
    assert main(["deeploco", "calibrate", str(out), "-o", str(out), "--frames", "300", "--keep-threshold"]) == 0
    assert DeepLoco.load(out).threshold == new.threshold

    # a 3-step model matches nothing: an error, and nothing written
    _bad(capsys, ["deeploco", "calibrate", str(folder / "model.pt"), "-o", str(tmp_path / "x.pt"), "--frames", "16"],
         "too few localizations matched")
    assert not (tmp_path / "x.pt").exists()
    # a model file with no training record, and a file that is no model
    DeepLoco.new(DeepLocoConfig.for_simulator(sim, conv_widths=(4, 8, 8), architecture="fcn"), seed=0).save(
        tmp_path / "untrained.pt")
    _bad(capsys, ["deeploco", "calibrate", str(tmp_path / "untrained.pt"), "-o", str(tmp_path / "x.pt")],
         "does not record its training simulator")
    (tmp_path / "garbage.pt").write_bytes(b"\x00garbage")
    _bad(capsys, ["deeploco", "calibrate", str(tmp_path / "garbage.pt"), "-o", str(tmp_path / "x.pt")],
         "cannot read model file")
    assert not (tmp_path / "x.pt").exists()


def test_localize_warns_in_one_line_when_the_background_is_outside_the_training_range(folder, tmp_path, capsys):
    # an ADU stack read as photons: a background of ~ baseline + gain * 100 "photons"/px
    out = tmp_path / "o.csv"
    assert main(["deeploco", "localize", str(folder / "stack.tif"), "--model", str(folder / "model.pt"),
                 "--units", "photons", "-o", str(out)]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(err) == 1 and err[0].startswith("starloc: warning: the background of")
    assert "training range 20-200 photons/px" in err[0] and out.exists()
    assert main(["deeploco", "localize", str(folder / "stack.tif"), "--model", str(folder / "model.pt"),
                 "-o", str(out)]) == 0
    assert "warning" not in capsys.readouterr().err


def test_the_arch_choices_are_the_network_architectures():
    from starloc import cli_deeploco
    from starloc.deeploco.network import ARCHITECTURES

    assert cli_deeploco.ARCHITECTURES == ARCHITECTURES  # the CLI's copy, kept free of torch


def test_the_camera_choices_are_the_camera_presets():
    from starloc import cli_deeploco
    from starloc.deeploco.camera import CAMERA_PRESETS

    assert cli_deeploco.CAMERA_KINDS == CAMERA_PRESETS


def test_the_default_defocus_is_the_recipes():
    from starloc import cli_deeploco
    from starloc.deeploco.recipes import DEFOCUS_2D

    assert cli_deeploco.DEFOCUS_2D == DEFOCUS_2D  # the CLI's copy, kept free of torch


def test_a_truncated_tiff_is_one_error_line_without_tifffiles_log(folder, tmp_path, capsys, caplog):
    tifffile.imwrite(tmp_path / "whole.tif", np.full((20, 64, 64), 120, np.uint16))
    data = (tmp_path / "whole.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: int(0.72 * len(data))])  # tifffile logs "invalid page offset"
    code = main(["deeploco", "localize", str(tmp_path / "cut.tif"), "--model", str(folder / "model.pt"),
                 "-o", str(tmp_path / "o.csv")])
    err = [line for line in capsys.readouterr().err.splitlines() if "localizing" not in line]
    assert code == EXIT_BAD_INPUT and not any("tifffile" in line for line in err), err
    assert err[-1].startswith("starloc: error:") and "truncated or corrupt" in err[-1]
    assert not [r for r in caplog.records if r.name == "tifffile"]  # logged, it would print to stderr


def test_scmos_per_pixel_maps_convert_each_pixel(folder, tmp_path, capsys):
    """--baseline / --e-per-adu / --read-noise take a calibration's per-pixel maps: the frames
    converted with them localize as the same frames given in photons."""
    model = DeepLoco.load(folder / "model.pt")
    photons = model.camera.to_photons(tifffile.imread(folder / "stack.tif")).numpy()
    rng = np.random.default_rng(0)
    base = rng.normal(100.0, 5.0, photons.shape[1:]).astype(np.float32)
    gain = rng.uniform(0.4, 0.6, photons.shape[1:]).astype(np.float32)  # e-/ADU
    tifffile.imwrite(tmp_path / "photons.tif", photons.astype(np.float32), photometric="minisblack")
    tifffile.imwrite(tmp_path / "adu.tif", (photons * 0.8 / gain + base).astype(np.float32), photometric="minisblack")
    tifffile.imwrite(tmp_path / "base.tif", base)
    np.save(tmp_path / "gain.npy", gain)
    common = ["deeploco", "localize", "--model", str(folder / "model.pt"), "--threshold", "0"]
    assert main([*common, str(tmp_path / "photons.tif"), "--units", "photons", "-o", str(tmp_path / "p.csv")]) == 0
    assert main([*common, str(tmp_path / "adu.tif"), "--camera", "scmos", "--qe", "0.8", "--baseline",
                 str(tmp_path / "base.tif"), "--e-per-adu", str(tmp_path / "gain.npy"), "--read-noise", "1.5",
                 "-o", str(tmp_path / "a.csv")]) == 0
    ref, got = read_thunderstorm_csv(tmp_path / "p.csv"), read_thunderstorm_csv(tmp_path / "a.csv")
    assert len(ref["x"]) > 0 and np.array_equal(ref["frame"], got["frame"])
    np.testing.assert_allclose(got["x"], ref["x"], atol=0.5)
    np.testing.assert_allclose(got["y"], ref["y"], atol=0.5)
    adu = [*common, str(tmp_path / "adu.tif"), "-o", str(tmp_path / "x.csv")]
    _bad(capsys, [*adu, "--baseline", str(tmp_path / "base.tif")], "per-pixel camera maps are for an sCMOS camera")
    np.save(tmp_path / "small.npy", gain[:10])
    _bad(capsys, [*adu, "--camera", "scmos", "--e-per-adu", str(tmp_path / "small.npy")],
         "per-pixel camera map of shape (10, 72) does not match frames")
    with pytest.raises(SystemExit):
        main([*adu, "--camera", "scmos", "--baseline", str(tmp_path / "missing.tif")])
    assert "cannot read the camera map" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_render_names_the_option_a_table_in_pixels_needs(tmp_path, capsys):
    px = tmp_path / "px.csv"
    px.write_text('"frame","x [px]","y [px]"\n1,2.5,3.5\n')
    _bad(capsys, ["render", str(px), "-o", str(tmp_path / "r.tif")], "with --camera-pixel-size NM")
    assert main(["render", str(px), "--camera-pixel-size", "100", "-o", str(tmp_path / "r.tif")]) == 0
