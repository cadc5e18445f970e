"""The starloc command end to end on tiny data, and its answers to bad input."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from starloc import sim
from starloc.cli import EXIT_BAD_INPUT, main
from starloc.io import read_points_csv
from starloc.tiff_metadata import tiff_spacing


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    image, truth, _ = sim.simulate_scene("point", 6, size=(64, 64), snr=10, rng=3)
    stack = np.stack([image, sim.simulate_scene("point", 6, size=(64, 64), snr=10, rng=4)[0]])
    tifffile.imwrite(folder / "scene.tif", stack)
    row, col = np.round(truth[0] - 19.5).clip(0, 64 - 40).astype(int)
    return folder, (row, col)


@pytest.fixture(scope="module")
def model_path(scene):
    folder, (row, col) = scene
    out = folder / "model.pt"
    code = main(["lodestar", "train", str(folder / "scene.tif"), "--crop", str(row), str(col), "40", "40",
                 "--steps", "15", "--seed", "1", "--device", "cpu", "-o", str(out)])
    assert code == 0
    return out


def test_train_writes_a_model(model_path, capsys):
    assert model_path.stat().st_size > 10_000


def test_train_options_reach_the_training_config(scene, tmp_path):
    from starloc.lodestar.model import LodeSTAR

    folder, (row, col) = scene
    out = tmp_path / "m.pt"
    assert main(["lodestar", "train", str(folder / "scene.tif"), "--crop", str(row), str(col), "40", "40",
                 "--steps", "6", "--min-steps", "4", "--copies", "3", "--device", "cpu", "-o", str(out)]) == 0
    training = LodeSTAR.load(out).metadata["training"]
    assert (training["max_steps"], training["min_steps"], training["copies"]) == (6, 4, 3)


def test_a_training_that_uses_its_whole_default_budget_says_so(scene, tmp_path, capsys, monkeypatch):
    from starloc.lodestar import training

    monkeypatch.setattr(training, "BASE_STEPS", (4, 3))  # the default budget, shrunk: 8 steps for this crop
    folder, (row, col) = scene
    train = ["lodestar", "train", str(folder / "scene.tif"), "--crop", str(row), str(col), "40", "40",
             "--device", "cpu", "-o", str(tmp_path / "m.pt")]
    assert main(train) == 0
    assert "trained 8 steps (the whole step budget: the loss had not levelled off; --steps N trains longer)" in \
        capsys.readouterr().out
    assert main([*train, "--steps", "8"]) == 0  # a budget of the user's own: nothing to say
    assert "trained 8 steps in" in capsys.readouterr().out


@pytest.mark.parametrize("option, value", [("--copies", "1"), ("--copies", "many"), ("--min-steps", "-1")])
def test_train_refuses_bad_step_and_copy_counts(scene, tmp_path, capsys, option, value):
    folder, (row, col) = scene
    with pytest.raises(SystemExit) as exc:
        main(["lodestar", "train", str(folder / "scene.tif"), "--crop", str(row), str(col), "40", "40",
              option, value, "-o", str(tmp_path / "m.pt")])
    assert exc.value.code == 2 and option in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


def test_detect_writes_frame_row_col_and_features(scene, model_path):
    folder, _ = scene
    out = folder / "det.csv"
    assert main(["lodestar", "detect", str(folder / "scene.tif"), "--model", str(model_path),
                 "--mode", "quantile", "--cutoff", "0.99", "-o", str(out)]) == 0
    frames, positions, features = read_points_csv(out)
    assert set(frames.tolist()) <= {0, 1} and positions.shape[1] == 2
    assert {"score", "weight", "consistency"} <= set(features)
    assert np.all((positions >= -0.5) & (positions <= 63.5))


def test_detect_passes_its_detections_to_the_background_advice(scene, model_path, capsys, monkeypatch):
    import starloc.lodestar.detection as detection

    seen = []

    def advice(features, max_consistency, **_):
        seen.append((sorted(features), max_consistency))
        return "many detections look like background"

    monkeypatch.setattr(detection, "noise_detections_advice", advice)
    folder, _ = scene
    base = ["lodestar", "detect", str(folder / "scene.tif"), "--model", str(model_path)]
    assert main([*base, "-o", str(folder / "adv.csv")]) == 0
    assert "starloc: warning: many detections look like background" in capsys.readouterr().err
    assert main([*base, "--max-consistency", "2", "-o", str(folder / "adv2.csv")]) == 0
    assert seen == [(["consistency", "score", "weight"], None), (["consistency", "score", "weight"], 2.0)]
    assert main([*base, "--single", "-o", str(folder / "adv3.csv")]) == 0
    assert len(seen) == 2  # one object per frame: no background detections to speak of


def test_detect_single_gives_one_row_per_frame(scene, model_path):
    folder, _ = scene
    out = folder / "single.csv"
    assert main(["lodestar", "detect", str(folder / "scene.tif"), "--model", str(model_path),
                 "--single", "-o", str(out)]) == 0
    frames, positions, _ = read_points_csv(out)
    assert frames.tolist() == [0, 1] and positions.shape == (2, 2)


def _bad(capsys, argv, message):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_BAD_INPUT
    assert err[-1].startswith("starloc: error:") and message in err[-1]


def test_missing_image(capsys, tmp_path):
    _bad(capsys, ["lodestar", "train", str(tmp_path / "nope.tif"), "--crop", "0", "0", "40", "40",
                  "-o", str(tmp_path / "m.pt")], "nope.tif")
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("crop, message", [
    (("0", "0", "0", "40"), "empty"),
    (("50", "50", "40", "40"), "outside"),
    (("0", "0", "10", "10"), "smaller than the minimum"),
])
def test_bad_crops(capsys, scene, tmp_path, crop, message):
    folder, _ = scene
    _bad(capsys, ["lodestar", "train", str(folder / "scene.tif"), "--crop", *crop, "-o",
                  str(tmp_path / "m.pt")], message)
    assert not (tmp_path / "m.pt").exists()


def test_frame_out_of_range(capsys, scene, tmp_path):
    folder, _ = scene
    _bad(capsys, ["lodestar", "train", str(folder / "scene.tif"), "--crop", "0", "0", "40", "40",
                  "--frame", "5", "-o", str(tmp_path / "m.pt")], "frame 5")


def test_nan_image(capsys, tmp_path):
    image = np.zeros((64, 64), np.float32)
    image[3, 4] = np.nan
    np.save(tmp_path / "nan.npy", image)
    _bad(capsys, ["lodestar", "train", str(tmp_path / "nan.npy"), "--crop", "0", "0", "40", "40",
                  "-o", str(tmp_path / "m.pt")], "NaN")


def test_rgb_image_is_refused_unless_converted(capsys, tmp_path, scene, model_path):
    rgb = np.zeros((64, 64, 3), np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    _bad(capsys, ["lodestar", "detect", str(tmp_path / "rgb.tif"), "--model", str(model_path),
                  "-o", str(tmp_path / "d.csv")], "RGB")
    assert not (tmp_path / "d.csv").exists()
    assert main(["lodestar", "detect", str(tmp_path / "rgb.tif"), "--model", str(model_path), "--rgb", "gray",
                 "-o", str(tmp_path / "d.csv")]) == 0


def test_foreign_model_file(capsys, scene, tmp_path):
    import torch

    folder, _ = scene
    torch.save({"weight": torch.zeros(3)}, tmp_path / "foreign.pt")
    _bad(capsys, ["lodestar", "detect", str(folder / "scene.tif"), "--model", str(tmp_path / "foreign.pt"),
                  "-o", str(tmp_path / "d.csv")], "not a starloc model")
    (tmp_path / "garbage.pt").write_bytes(b"\x00garbage")
    _bad(capsys, ["lodestar", "detect", str(folder / "scene.tif"), "--model", str(tmp_path / "garbage.pt"),
                  "-o", str(tmp_path / "d.csv")], "cannot read model file")
    assert not (tmp_path / "d.csv").exists()


def test_wrong_dimensionality(capsys, tmp_path, model_path):
    np.save(tmp_path / "line.npy", np.zeros(100, np.float32))
    _bad(capsys, ["lodestar", "detect", str(tmp_path / "line.npy"), "--model", str(model_path),
                  "-o", str(tmp_path / "d.csv")], "1D")


def test_channel_count_mismatch(capsys, tmp_path, model_path):
    np.save(tmp_path / "two.npy", np.zeros((2, 48, 48), np.float32))
    _bad(capsys, ["lodestar", "detect", str(tmp_path / "two.npy"), "--model", str(model_path),
                  "--channel-axis", "0", "-o", str(tmp_path / "d.csv")], "channel")


def test_help_and_usage_errors_exit_cleanly():
    run = subprocess.run([sys.executable, "-m", "starloc.cli", "lodestar", "detect", "--help"],
                         capture_output=True, text=True)
    assert run.returncode == 0 and "--single" in run.stdout
    run = subprocess.run([sys.executable, "-m", "starloc.cli", "lodestar", "detect"], capture_output=True, text=True)
    assert run.returncode == 2 and "required" in run.stderr


def test_the_demo_trains_on_a_crop_that_holds_one_object():
    from starloc.demo import CROP_SIZE, crop_around, isolated_object

    image, truth, _ = sim.simulate_scene("point", 30, size=(256, 256), snr=10, rng=0)  # the demo's scene
    row, col, h, w = crop_around(isolated_object(truth), CROP_SIZE, image.shape)
    margin = sim.SHAPE_RADIUS["point"]
    near = ((truth[:, 0] > row - margin) & (truth[:, 0] < row + h + margin)
            & (truth[:, 1] > col - margin) & (truth[:, 1] < col + w + margin))
    assert near.sum() == 1


def test_demo_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--steps", "20", "--method", "lodestar"]) == 0
    out = capsys.readouterr().out
    assert "F1" in out and "RMSE" in out
    frames, positions, features = read_points_csv(tmp_path / "detections.csv")
    assert {"score", "weight", "consistency"} <= set(features)
    assert (tmp_path / "scene.tif").exists() and (tmp_path / "model.pt").exists()


def test_holography_demo_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--steps", "20", "--method", "holography"]) == 0
    out = capsys.readouterr().out
    assert "refocuses at z" in out and "scatterers" in out
    frames, positions, features = read_points_csv(tmp_path / "hologram_detections.csv")
    assert {"z_um", "signal", "score"} <= set(features)
    assert tifffile.imread(tmp_path / "hologram.tif").shape == (2, 256, 256)
    assert (tmp_path / "hologram_model.pt").exists()
    # the field states its pixel size, so the README's hologram training needs no --pixel-size
    assert main(["lodestar", "train", str(tmp_path / "hologram.tif"), "--channel-axis", "0", "--crop", "100", "100",
                 "40", "40", "--z-range", "3", "--steps", "2", "--device", "cpu", "-o", str(tmp_path / "h.pt")]) == 0
    assert "pixel size 114 nm" in capsys.readouterr().err


def test_deeploco_demo_runs_end_to_end_on_the_bundled_bead_stack(tmp_path, capsys):
    from starloc.smlm_io import read_thunderstorm_csv

    assert main(["demo", "--out", str(tmp_path), "--method", "deeploco", "--deeploco-steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "Jaccard" in out and "bundled bead z-stack" in out
    truth = read_thunderstorm_csv(tmp_path / "smlm-truth.csv")
    assert len(truth["x"]) > 100 and set(np.unique(truth["frame"])) <= set(range(100))
    read_thunderstorm_csv(tmp_path / "smlm-locs.csv")  # parses (a 2-step model finds little)
    with tifffile.TiffFile(tmp_path / "smlm-stack.tif") as tif:
        assert tif.asarray().shape == (100, 64, 64) and tif.asarray().dtype == np.uint16
    assert tifffile.imread(tmp_path / "smlm-render.tif").shape == (640, 640)
    assert tiff_spacing(tmp_path / "smlm-render.tif")[0] == pytest.approx(10.0)  # nm/px, as 'starloc render'
    assert (tmp_path / "deeploco.pt").exists()


def test_demo_rejects_an_unknown_shape(capsys, tmp_path):
    _bad(capsys, ["demo", "--out", str(tmp_path), "--shape", "cube"], "unknown shape")


def test_detect_tuning_options_reach_the_detection(scene, model_path, capsys):
    folder, _ = scene
    common = ["lodestar", "detect", str(folder / "scene.tif"), "--model", str(model_path)]
    assert main([*common, "-o", str(folder / "all.csv")]) == 0
    # a weight is at most 1: every peak falls below this floor
    assert main([*common, "--min-weight", "1.5", "-o", str(folder / "none.csv")]) == 0
    assert len(read_points_csv(folder / "all.csv")[0]) > 0 and len(read_points_csv(folder / "none.csv")[0]) == 0
    assert main([*common, "--radius", "6", "--cluster-radius", "3", "--crowded-distance", "0",
                 "-o", str(folder / "tuned.csv")]) == 0
    assert main([*common, "--crowded-distance", "-1", "-o", str(folder / "bad.csv")]) == 2
    assert "crowded_distance" in capsys.readouterr().err and not (folder / "bad.csv").exists()
    with pytest.raises(SystemExit):
        main([*common, "--radius", "0", "-o", str(folder / "bad.csv")])
    # the fixed quantile (--pixels-per-peak 0): the cutoff alone sets how much of the map is kept
    assert main([*common, "--cutoff", "0.99999", "--pixels-per-peak", "0", "-o", str(folder / "top.csv")]) == 0
    assert 0 < len(read_points_csv(folder / "top.csv")[0]) < len(read_points_csv(folder / "all.csv")[0])
    assert main([*common, "--pixels-per-peak", "-1", "-o", str(folder / "bad.csv")]) == 2
    assert "pixels_per_peak" in capsys.readouterr().err
    # --max-consistency drops the detections whose predictions disagree more than it
    _, _, features = read_points_csv(folder / "all.csv")
    limit = float(np.median(features["consistency"]))
    assert main([*common, "--max-consistency", str(limit), "-o", str(folder / "agree.csv")]) == 0
    kept = read_points_csv(folder / "agree.csv")[2]["consistency"]
    assert 0 < len(kept) < len(features["consistency"]) and kept.max() <= limit
    assert main([*common, "--max-consistency", "0", "-o", str(folder / "bad.csv")]) == 2
    assert "max_consistency" in capsys.readouterr().err


def test_detect_reads_a_folder_of_one_tiff_per_frame_as_the_stack(scene, model_path, tmp_path):
    folder, _ = scene
    (tmp_path / "seq").mkdir()
    for i, frame in enumerate(tifffile.imread(folder / "scene.tif")):
        tifffile.imwrite(tmp_path / "seq" / f"t{i}.tif", frame)
    common = ["lodestar", "detect", "--model", str(model_path)]
    assert main([*common, str(folder / "scene.tif"), "-o", str(tmp_path / "stack.csv")]) == 0
    assert main([*common, str(tmp_path / "seq"), "-o", str(tmp_path / "seq.csv")]) == 0
    for got, expected in zip(read_points_csv(tmp_path / "seq.csv")[:2], read_points_csv(tmp_path / "stack.csv")[:2]):
        np.testing.assert_array_equal(got, expected)


def test_detect_deblends_crowded_detections_unless_told_not_to(scene, model_path):
    from starloc.lodestar.detection import DetectParams, detect
    from starloc.lodestar.inference import detect_frames
    from starloc.lodestar.model import LodeSTAR

    folder, _ = scene
    common = ["lodestar", "detect", str(folder / "scene.tif"), "--model", str(model_path)]
    assert main([*common, "-o", str(folder / "deblended.csv")]) == 0
    assert main([*common, "--no-deblend", "-o", str(folder / "plain.csv")]) == 0
    model, frames = LodeSTAR.load(model_path), tifffile.imread(folder / "scene.tif")[:, None]
    deblended, plain = detect_frames(model, frames), detect(model.maps(frames), DetectParams())
    for name, expected in (("deblended", deblended), ("plain", plain)):
        got_frames, got, _ = read_points_csv(folder / f"{name}.csv")
        np.testing.assert_array_equal(got_frames, expected.frame)
        np.testing.assert_allclose(got, expected.positions[:, :2], atol=1e-3)
    # the scene has crowded spots: deblending moves some (and may move one out of the frame)
    assert len(deblended) != len(plain) or not np.allclose(deblended.positions, plain.positions, atol=1e-3)


def test_the_step_defaults_in_the_help_are_the_training_config_ones(capsys):
    from starloc.lodestar.training import BASE_STEPS, MAX_STEP_SCALE, REFERENCE_SIDE, TrainConfig

    for command in (["lodestar", "train"], ["demo"]):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        if command == ["lodestar", "train"]:
            base_max, base_min = BASE_STEPS
            assert f"default: {base_max} for a crop of {REFERENCE_SIDE}x{REFERENCE_SIDE} px" in text
            assert MAX_STEP_SCALE == 2 and "up to twice that for smaller crops" in text
            assert f"(default: {base_min}, scaled" in text and f"(default {TrainConfig.copies})" in text
        else:
            assert "(default: as 'lodestar train')" in text


def test_bad_output_paths_are_refused_before_any_work(scene, model_path, tmp_path, capsys, monkeypatch):
    from starloc.lodestar import training

    folder, (row, col) = scene
    monkeypatch.setattr(training, "train", lambda *a, **k: pytest.fail("trained before checking the output"))
    (tmp_path / "adir").mkdir()
    train = ["lodestar", "train", str(folder / "scene.tif"), "--crop", str(row), str(col), "40", "40"]
    _bad(capsys, [*train, "-o", str(tmp_path / "adir")], "it is a folder")
    _bad(capsys, [*train, "-o", str(tmp_path / "no" / "m.pt")], "does not exist")
    detect = ["lodestar", "detect", str(folder / "scene.tif"), "--model", str(model_path)]
    _bad(capsys, [*detect, "-o", str(tmp_path / "adir")], "it is a folder")
    _bad(capsys, [*detect, "-o", str(tmp_path / "no" / "d.csv")], "does not exist")
    # a folder the user may not write to (root passes chmod, so the refusal is simulated)
    import starloc.cli_common

    readonly = tmp_path / "ro"
    real_access = os.access
    monkeypatch.setattr(starloc.cli_common.os, "access", lambda p, mode: Path(p) != readonly and real_access(p, mode))
    readonly.mkdir()
    _bad(capsys, [*detect, "-o", str(readonly / "d.csv")], f"directory {str(readonly)!r} is not writable")


def test_a_system_refusal_while_writing_is_one_line_not_a_traceback(scene, model_path, tmp_path, capsys, monkeypatch):
    # a full disk after the work: one line naming the file given (not its temporary), rc 1
    import starloc.io

    folder, _ = scene

    def full(fh, columns):
        raise OSError(28, "No space left on device")  # as a real full disk: no file name

    monkeypatch.setattr(starloc.io, "write_csv_rows", full)
    code = main(["lodestar", "detect", str(folder / "scene.tif"), "--model", str(model_path),
                 "-o", str(tmp_path / "d.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1] == f"starloc: error: [Errno 28] No space left on device: {str(tmp_path / 'd.csv')!r}"
    assert not list(tmp_path.iterdir())


def test_a_frame_too_large_for_the_free_memory_is_refused_before_the_work(scene, model_path, tmp_path, capsys,
                                                                          monkeypatch):
    import starloc.memory

    folder, _ = scene
    monkeypatch.setattr(starloc.memory, "available_bytes", lambda: 10**5)  # 0.1 MB free
    code = main(["lodestar", "detect", str(folder / "scene.tif"), "--model", str(model_path),
                 "-o", str(tmp_path / "d.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == ("starloc: error: LodeSTAR on 2 frame(s) of 64 x 64 px needs about 3.4 MB of memory, "
                                 "more than the 0.1 MB free: cut the image into pieces of at most about 1024 x 1024 px "
                                 "and detect each")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("error", [MemoryError(), torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
                                   RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't "
                                                "allocate memory: you tried to allocate 1000 bytes.")])
def test_running_out_of_memory_is_one_line_not_a_traceback(scene, model_path, tmp_path, capsys, monkeypatch, error):
    from starloc.lodestar.model import LodeSTAR

    def fail(*args, **kwargs):
        raise error

    folder, _ = scene
    monkeypatch.setattr(LodeSTAR, "maps_and_input", fail)
    code = main(["lodestar", "detect", str(folder / "scene.tif"), "--model", str(model_path),
                 "-o", str(tmp_path / "d.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("starloc: error: out of memory (")
    assert err[-1].endswith("cut the input into smaller pieces, or on a GPU run on the CPU (device cpu), which has "
                            "the computer's memory")
    assert not list(tmp_path.iterdir())


def test_other_runtime_errors_still_raise(scene, model_path, tmp_path, monkeypatch):
    from starloc.lodestar.model import LodeSTAR

    def fail(*args, **kwargs):
        raise RuntimeError("a bug")

    folder, _ = scene
    monkeypatch.setattr(LodeSTAR, "maps_and_input", fail)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["lodestar", "detect", str(folder / "scene.tif"), "--model", str(model_path), "-o", str(tmp_path / "d.csv")])


def test_an_output_that_is_an_input_or_another_format_is_refused(scene, model_path, tmp_path, capsys):
    folder, (row, col) = scene
    image, model = folder / "scene.tif", model_path
    before = image.read_bytes(), model.read_bytes()
    detect = ["lodestar", "detect", str(image), "--model", str(model)]
    _bad(capsys, [*detect, "-o", str(image)], "it is the input")
    _bad(capsys, [*detect, "-o", str(folder / "." / "model.pt")], "it is the input")
    _bad(capsys, [*detect, "-o", str(tmp_path / "d.tif")], "this command writes a CSV file")
    train = ["lodestar", "train", str(image), "--crop", str(row), str(col), "40", "40"]
    _bad(capsys, [*train, "-o", str(image)], "it is the input")
    _bad(capsys, [*train, "-o", str(tmp_path / "m.csv")], "writes a MODEL file")
    assert (image.read_bytes(), model.read_bytes()) == before
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("options, message", [
    (["--cutoff", "2"], "a quantile cutoff must lie in [0, 1]"),
    (["--cutoff", "nan"], "a quantile cutoff"),
    (["--mode", "ratio", "--cutoff", "1.5"], "a ratio cutoff"),
    (["--alpha", "nan"], "alpha must be a number >= 0"),
    (["--beta", "-1"], "beta must be a number >= 0"),
    (["--single", "--cutoff", "0.5", "--no-deblend"], "--cutoff, --(no-)deblend: options of multi-object"),
    (["--memory", "2"], "--memory is an option of --link"),
    (["--single", "--link", "3"], "--single gives one object per frame"),
])
def test_detection_options_are_checked_before_detecting(scene, model_path, tmp_path, capsys, options, message):
    folder, _ = scene
    _bad(capsys, ["lodestar", "detect", str(folder / "scene.tif"), "--model", str(model_path), *options,
                  "-o", str(tmp_path / "d.csv")], message)
    assert not (tmp_path / "d.csv").exists()


def test_axial_options_need_z_range_and_the_pixel_size_comes_from_the_tiff(tmp_path, capsys):
    field = np.random.default_rng(0).normal(size=(2, 48, 48)).astype(np.float32)
    tifffile.imwrite(tmp_path / "field.tif", field, imagej=True, resolution=(1 / 0.114, 1 / 0.114),
                     metadata={"axes": "CYX", "unit": "um"})
    tifffile.imwrite(tmp_path / "bare.tif", field)
    options = ["--crop", "0", "0", "48", "48", "--channel-axis", "0", "--steps", "2", "--device", "cpu",
               "-o", str(tmp_path / "h.pt")]
    field_train = ["lodestar", "train", str(tmp_path / "field.tif"), *options]
    for option in (["--pixel-size", "114"], ["--wavelength", "532"], ["--crop-z", "1"]):
        _bad(capsys, [*field_train, *option], "give --z-range UM too")
    _bad(capsys, [*field_train, "--crop-signal", "2"], "give --signal-range R too")
    _bad(capsys, ["lodestar", "train", str(tmp_path / "bare.tif"), *options, "--z-range", "1"], "give --pixel-size NM")
    assert main([*field_train, "--z-range", "1"]) == 0
    assert "from field.tif's metadata: pixel size 114 nm" in capsys.readouterr().err
    from starloc.lodestar.model import LodeSTAR

    assert LodeSTAR.load(tmp_path / "h.pt").metadata["training"]["pixel_size_nm"] == pytest.approx(114.0)


def test_tiff_axes_that_are_not_time(tmp_path, model_path, capsys):
    image = sim.simulate_scene("point", 4, size=(48, 48), snr=10, rng=5)[0]
    # as ImageJ writes it (tifffile's own version string marks axes it was not told; see below)
    tifffile.imwrite(tmp_path / "cyx.tif", np.stack([image, image])[None], imagej=True,
                     metadata={"axes": "ZCYX", "ImageJ": "1.54f"})
    tifffile.imwrite(tmp_path / "tzyx.tif", np.stack([image] * 4).reshape(2, 2, 48, 48), imagej=True,
                     metadata={"axes": "TZYX"})
    detect = ["lodestar", "detect", "--model", str(model_path), "-o", str(tmp_path / "d.csv")]
    assert main([*detect, str(tmp_path / "cyx.tif")]) == 0
    assert "names its first axis C (axes CYX)" in capsys.readouterr().err
    _bad(capsys, [*detect, str(tmp_path / "tzyx.tif")], "has axes TZYX")
    tifffile.imwrite(tmp_path / "tcyx.tif", np.stack([image] * 4).reshape(2, 2, 48, 48), imagej=True,
                     metadata={"axes": "TCYX"})
    _bad(capsys, [*detect, str(tmp_path / "tcyx.tif")], "has axes TCYX (shape (2, 2, 48, 48)): give --channel-axis 1")


def test_one_channel_of_a_multichannel_stack(tmp_path, model_path, capsys):
    """--channel K with --channel-axis: a 1-channel model on one channel of a T×C×Y×X stack
    finds what it finds in that channel saved alone; the other channel holds other spots."""
    images = [sim.simulate_scene("point", 4, size=(48, 48), snr=10, rng=seed)[0] for seed in (5, 6, 7, 8)]
    stack = np.stack(images).reshape(2, 2, 48, 48)  # frames 0, 1; channels 0, 1
    tifffile.imwrite(tmp_path / "tcyx.tif", stack, imagej=True, metadata={"axes": "TCYX", "ImageJ": "1.54f"})
    tifffile.imwrite(tmp_path / "c1.tif", stack[:, 1])
    detect = ["lodestar", "detect", "--model", str(model_path)]
    assert main([*detect, str(tmp_path / "c1.tif"), "-o", str(tmp_path / "alone.csv")]) == 0
    assert main([*detect, str(tmp_path / "tcyx.tif"), "--channel-axis", "1", "--channel", "1",
                 "-o", str(tmp_path / "picked.csv")]) == 0
    alone, picked = read_points_csv(tmp_path / "alone.csv"), read_points_csv(tmp_path / "picked.csv")
    assert len(alone[0]) > 0 and np.array_equal(alone[0], picked[0]) and np.allclose(alone[1], picked[1])
    _bad(capsys, [*detect, str(tmp_path / "tcyx.tif"), "--channel", "1", "-o", str(tmp_path / "x.csv")],
         "give the axis too")
    _bad(capsys, [*detect, str(tmp_path / "tcyx.tif"), "--channel-axis", "1", "--channel", "2",
                  "-o", str(tmp_path / "x.csv")],
         "channel 2 does not exist: axis 1 of the image (shape (2, 2, 48, 48)) holds channels 0..1")
    _bad(capsys, [*detect, str(tmp_path / "tcyx.tif"), "--channel-axis", "1", "-o", str(tmp_path / "x.csv")],
         "--channel K with the --channel-axis")
    train = ["lodestar", "train", str(tmp_path / "tcyx.tif"), "--channel-axis", "1", "--channel", "0", "--steps",
             "2", "--device", "cpu", "--crop", "0", "0", "40", "40", "-o", str(tmp_path / "m.pt")]
    assert main(train) == 0
    from starloc.lodestar.model import LodeSTAR

    assert LodeSTAR.load(tmp_path / "m.pt").config.in_channels == 1


def test_crops_from_several_frames_of_a_stack(tmp_path, capsys):
    # frame 0 holds a spot at (30, 30), frame 1 one at (48, 48): one --frame per --crop
    spots = [sim.add_poisson_noise(sim.render("point", (64, 64), np.array([centre])), 10, rng=i)
             for i, centre in enumerate(([30.0, 30.0], [48.0, 48.0]))]
    tifffile.imwrite(tmp_path / "two.tif", np.stack(spots))
    base = ["lodestar", "train", str(tmp_path / "two.tif"), "--steps", "2", "--device", "cpu",
            "--crop", "14", "14", "32", "32", "--crop", "32", "32", "32", "32", "-o", str(tmp_path / "m.pt")]
    assert main([*base, "--frame", "0", "--frame", "1"]) == 0
    assert "seems to hold" not in capsys.readouterr().err
    from starloc.lodestar.model import LodeSTAR

    assert LodeSTAR.load(tmp_path / "m.pt").metadata["source"]["frame"] == [0, 1]
    assert main([*base, "--frame", "1"]) == 0  # one --frame for both: the first crop is empty there
    assert "crop 1 seems to hold no object" in capsys.readouterr().err
    _bad(capsys, [*base, "--frame", "0", "--frame", "1", "--frame", "1"], "--frame given 3 times for 2 crop(s)")


def _crowding_error(*args, **kwargs):
    from starloc.errors import InputError

    raise InputError("too many detections within 60 px of each other to link them: give a smaller linking distance")


def test_detect_links_a_timelapse_into_tracks(tmp_path, capsys, monkeypatch):
    stack, tracks = sim.simulate_timelapse(6, 5, size=(64, 64), diffusion=0.5, rng=2)[:2]
    tifffile.imwrite(tmp_path / "movie.tif", stack.astype(np.float32))
    gaps = np.hypot(*(tracks[0, :, None] - tracks[0, None]).transpose(2, 0, 1)) + 1e3 * np.eye(5)
    row, col = np.round(tracks[0, gaps.min(axis=1).argmax()] - 15).clip(0, 64 - 30).astype(int)  # most isolated
    assert main(["lodestar", "train", str(tmp_path / "movie.tif"), "--crop", str(row), str(col), "30", "30",
                 "--steps", "200", "--seed", "0", "--device", "cpu", "-o", str(tmp_path / "m.pt")]) == 0
    out = tmp_path / "linked.csv"
    assert main(["lodestar", "detect", str(tmp_path / "movie.tif"), "--model", str(tmp_path / "m.pt"),
                 "--link", "4", "-o", str(out)]) == 0
    frames, positions, features = read_points_csv(out)
    nearest = [int(np.argmin(np.hypot(*(tracks[f] - p).T))) for f, p in zip(frames, positions)]
    ids = features["track"].astype(int)
    assert len(frames) >= 27 and f"in {ids.max() + 1} track(s)" in capsys.readouterr().out
    # every track follows one particle, and each particle is one track
    assert all(len({n for n, i in zip(nearest, ids) if i == k}) == 1 for k in set(ids))
    assert len(set(ids)) == len(set(nearest)) == 5
    # the same from a CSV detected without --link
    plain, relinked = tmp_path / "plain.csv", tmp_path / "relinked.csv"
    assert main(["lodestar", "detect", str(tmp_path / "movie.tif"), "--model", str(tmp_path / "m.pt"),
                 "-o", str(plain)]) == 0
    assert "track" not in read_points_csv(plain)[2]
    assert main(["lodestar", "link", str(plain), "--distance", "4", "-o", str(relinked)]) == 0
    np.testing.assert_array_equal(read_points_csv(relinked)[2]["track"], features["track"])
    assert main(["lodestar", "link", str(tmp_path / "movie.tif"), "--distance", "4", "-o", str(relinked)]) == 2
    assert "not a starloc points table" in capsys.readouterr().err
    # linking that fails (far too crowded for the distance) keeps the detections, without tracks
    crowded = tmp_path / "crowded.csv"
    with monkeypatch.context() as m:
        m.setattr("starloc.tracks.link_tracks", _crowding_error)
        code = main(["lodestar", "detect", str(tmp_path / "movie.tif"), "--model", str(tmp_path / "m.pt"),
                     "--link", "60", "-o", str(crowded)])
    assert code == 2 and "written to" in capsys.readouterr().err
    assert "track" not in read_points_csv(crowded)[2] and len(read_points_csv(crowded)[0]) == len(frames)


def test_brighter_objects_are_trained_for_on_request_and_told_at_detection(scene, model_path, tmp_path, capsys):
    from starloc.lodestar.model import LodeSTAR

    folder, (row, col) = scene
    crop = ["--crop", str(row), str(col), "40", "40", "--steps", "3", "--device", "cpu"]
    assert main(["lodestar", "train", str(folder / "scene.tif"), *crop, "--brighter", "10",
                 "-o", str(tmp_path / "b.pt")]) == 0
    assert LodeSTAR.load(tmp_path / "b.pt").metadata["training"]["gain"] == 10.0
    _bad(capsys, ["lodestar", "train", str(folder / "scene.tif"), *crop, "--brighter", "4", "--signal-range", "2",
                  "-o", str(tmp_path / "c.pt")], "--signal-range teaches the objects' brightness")
    with pytest.raises(SystemExit):
        main(["lodestar", "train", str(folder / "scene.tif"), *crop, "--brighter", "0.5", "-o", str(tmp_path / "c.pt")])
    capsys.readouterr()
    # an image whose objects stand ~6x higher above the noise than the crop's (SNR 60 against 10)
    bright, _, _ = sim.simulate_scene("point", 6, size=(64, 64), snr=60, rng=5)
    tifffile.imwrite(tmp_path / "bright.tif", bright)
    for image, warned in ((tmp_path / "bright.tif", True), (folder / "scene.tif", False)):
        assert main(["lodestar", "detect", str(image), "--model", str(model_path), "-o", str(tmp_path / "d.csv")]) == 0
        err = capsys.readouterr().err
        assert ("brighter than the training crop's" in err and "--brighter" in err) == warned, err


def test_progress_bars_written_to_a_log_update_seldom(capsys):
    """A 5200-step training wrote a 670 kB log: ten updates a second, each with the loss."""
    from starloc.cli_common import LOG_INTERVAL, progress_bar

    bar = progress_bar(10, "training", "step")  # stderr is captured here: a file, not a terminal
    assert bar.mininterval == LOG_INTERVAL
    for _ in range(10):
        bar.update(1)
        bar.set_postfix(loss="1.0", refresh=False)
    bar.close()
    assert capsys.readouterr().err.count("\r") <= 3
