"""Holography and signal scaling: the paper's extra symmetries (axial position by Fourier
propagation, polarizability by signal scaling)."""

import numpy as np
import pytest
import torch

from starloc.errors import InputError, ModelFileError
from starloc.lodestar.detection import DetectParams
from starloc.lodestar.fixed_input import fixed_input_advice
from starloc.lodestar.holography import (Optics, check_pixel_size, propagate, refocus_z, simulate_hologram_scene,
                                         simulate_holograms, to_channels, to_complex, transfer_function)
from starloc.lodestar.inference import detect_frames, property_columns, single_object
from starloc.lodestar.model import LodeSTAR
from starloc.lodestar.network import NetworkConfig
from starloc.lodestar.training import TrainConfig, train
from starloc.lodestar.transforms import Propagate, SignalScale

OPTICS = Optics(633.0, 114.0, 1.33)


def run(gen):
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def test_transfer_function_composes_and_keeps_energy():
    dz = torch.tensor([0.0, 0.7, 1.2, 1.9], dtype=torch.float64)
    H = transfer_function((32, 48), dz, OPTICS)
    assert torch.allclose(H[0], torch.ones_like(H[0]))  # no propagation
    assert torch.allclose(H[1] * H[2], H[3], atol=1e-12)  # 0.7 + 1.2 = 1.9
    assert torch.allclose(H.abs(), torch.ones(H.shape, dtype=torch.float64))  # energy kept
    # evanescent frequencies (noise only in a hologram) pass unchanged, so white noise stays white
    lam, px = OPTICS.medium_wavelength_um, OPTICS.pixel_size_nm / 1000
    f = torch.fft.fftfreq(48, d=px, dtype=torch.float64)
    assert bool((H[3, 0, (lam * f) ** 2 >= 1] == 1).all()) and not bool((H[3, 0, 1:4] == 1).any())
    assert H[:, 0, 0].real.allclose(torch.ones(4, dtype=torch.float64))  # the illumination is unchanged


def test_propagation_refocuses_a_simulated_scatterer():
    defocused, truth = simulate_holograms(1, 64, z_um=(1.5, 1.5), noise=0.0, max_offset=0.0, rng=0)
    focused, _ = simulate_holograms(1, 64, z_um=(0.0, 0.0), noise=0.0, max_offset=0.0, rng=0)
    field = to_complex(torch.from_numpy(defocused))
    target = to_complex(torch.from_numpy(focused))
    peak = float(target.abs().max())
    # the simulator's field is periodic: without padding, propagation is exact both ways
    refocused = propagate(field, torch.tensor([1.5]), OPTICS, pad=0)  # the object at z sits at z - dz = 0
    assert float((refocused - target).abs().max()) < 1e-5 * peak
    back = propagate(refocused, torch.tensor([-1.5]), OPTICS, pad=0)
    assert float((back - field).abs().max()) < 1e-5 * peak
    # zero padding (against wrap-around) loses only what spread out of the frame
    padded = propagate(field, torch.tensor([1.5]), OPTICS)
    assert float((padded - target).abs().max()) < 0.02 * peak
    assert truth[0, 2] == 1.5 and peak > 0.9


def test_refocusing_finds_the_axial_position_of_a_scatterer():
    fields, truth = simulate_holograms(20, 64, z_um=(-2.0, 3.0), noise=0.0, rng=6)
    z = refocus_z(fields, OPTICS)
    error = np.abs(z - truth[:, 2])  # µm; planes 0.1 µm apart, parabola-refined
    assert np.max(error) < 0.1 and np.mean(error) < 0.03


def test_channels_round_trip_and_bad_channels():
    x = torch.randn(3, 2, 8, 9)
    assert torch.equal(to_channels(to_complex(x)), x)
    with pytest.raises(InputError, match="2 channels"):
        to_complex(torch.randn(1, 1, 8, 8))


@pytest.mark.parametrize("bad", [{"wavelength_nm": 0}, {"pixel_size_nm": float("nan")}, {"n_medium": -1},
                                 {"pixel_size_nm": 0.1}])
def test_optics_refuses_absurd_values(bad):
    with pytest.raises(InputError):
        Optics(**{**OPTICS.to_dict(), **bad})


def test_property_transforms_invert_exactly():
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(5, 2, 16, 16)
    props = torch.randn(5, 4)
    prop = Propagate(2.0, OPTICS, index=2)
    p = prop.sample(images.shape, gen)
    assert float(p["dz"].abs().max()) <= 2.0
    moved = prop.invert(props, p)
    assert torch.allclose(moved[:, 2], props[:, 2] + p["dz"]) and torch.equal(moved[:, [0, 1, 3]], props[:, [0, 1, 3]])
    assert torch.allclose(prop.apply(images, {"dz": torch.zeros(5)}), images, atol=1e-5)
    scale = SignalScale(3.0, index=3)
    s = scale.sample(images.shape, gen)
    assert float(s["scale"].min()) >= 1 / 3 - 1e-6 and float(s["scale"].max()) <= 3 + 1e-6
    assert torch.allclose(scale.apply(images, s), images * s["scale"].view(-1, 1, 1, 1))
    back = scale.invert(props, s)
    assert torch.allclose(back[:, 3], props[:, 3] - torch.log(s["scale"]))


@pytest.fixture(scope="module")
def holo_model():
    torch.manual_seed(0)
    image, truth = simulate_holograms(1, 64, z_um=(0.5, 0.5), rng=1)
    # the crop's object is declared at its true z (absolute z out) with a signal of 2 (units of 2)
    config = TrainConfig(max_steps=500, min_steps=500, z_range_um=3.0, signal_range=3.0, pixel_size_nm=114.0,
                         crop_z_um=float(truth[0, 2]), crop_signal=2.0, network=NetworkConfig(in_channels=2), seed=0)
    return run(train([image[0, :, 12:52, 12:52]], config)), truth[0]


def test_trained_model_reads_z_and_signal_in_its_crops_reference(holo_model):
    model, crop_truth = holo_model
    assert model.normalization == "fixed" and model.metadata["properties"] == ["row", "col", "z_um", "log_signal"]
    training = model.metadata["training"]
    assert training["gain"] == 1.0 and tuple(training["shot_noise"]) == (0.0, 0.0)  # additive field noise
    images, truth = simulate_holograms(40, 64, z_um=(-1.5, 2.5), amplitude=(0.5, 2.0), rng=5)
    pred = single_object(model, images)[0]
    columns = property_columns(model, pred)
    assert set(columns) == {"z_um", "signal"}
    # 500 steps order the objects along z but have not yet learned its scale (slope 1.5-1.8
    # here; the default training's accuracy is measured by bench/lodestar_holography.py)
    assert np.corrcoef(columns["z_um"], truth[:, 2])[0, 1] > 0.9
    assert 0.5 < np.polyfit(truth[:, 2], columns["z_um"], 1)[0] < 2.5
    # the crop's object is at 0.5 µm, declared so: an object there reads about 0.5
    assert abs(np.polyval(np.polyfit(truth[:, 2], columns["z_um"], 1), crop_truth[2]) - crop_truth[2]) < 0.5
    assert np.corrcoef(np.log(columns["signal"]), np.log(truth[:, 3]))[0, 1] > 0.8
    # the crop's amplitude 1 was declared a signal of 2: objects read about twice their amplitude
    assert 1.4 < np.median(columns["signal"] / truth[:, 3]) < 2.8
    assert np.sqrt(np.mean((pred[:, :2] - truth[:, :2]) ** 2)) < 0.5


def test_detection_in_a_hologram_of_many_scatterers(holo_model):
    from starloc.metrics import detection_metrics, match

    model, _ = holo_model
    scene, truth = simulate_hologram_scene(10, size=(128, 128), z_um=(-1.0, 2.0), min_distance=20, rng=4)
    assert scene.shape == (2, 128, 128) and len(truth) == 10
    found = detect_frames(model, scene[None], DetectParams())
    m = detection_metrics(found.positions[:, :2], truth[:, :2], tolerance=3.0)
    assert m["tp"] >= 8 and m["fp"] <= 1, m
    pi, ti = match(found.positions[:, :2], truth[:, :2], 3.0)
    z = property_columns(model, found.positions)["z_um"][pi]
    assert np.corrcoef(z, truth[ti, 2])[0, 1] > 0.8


def test_a_field_model_refuses_one_channel_images(holo_model):
    """Its fixed normalization would broadcast one channel to two: refused instead."""
    model, _ = holo_model
    with pytest.raises(InputError, match="takes images of 2 channel.*--channel-axis, e.g. 0 for a 2×Y×X image"):
        model.maps(np.zeros((1, 1, 48, 48), np.float32))


def test_frames_of_another_pixel_size_are_refused(holo_model):
    """z scales with the square of the pixel size the propagation assumes."""
    model, _ = holo_model  # trained at 114 nm
    check_pixel_size(model, None, "f.tif")  # nothing stated: nothing to check
    check_pixel_size(model, 114.5, "f.tif")  # within 1 %
    with pytest.raises(InputError, match=r"f.tif has 100 nm pixels .* trained at 114 nm: its z would be off by "
                                         r"about 1.30x"):
        check_pixel_size(model, 100.0, "f.tif")
    check_pixel_size(LodeSTAR.new(NetworkConfig(), seed=0), 100.0, "f.tif")  # no axial property: no check


def test_fields_unlike_the_crops_are_told(holo_model):
    model, _ = holo_model
    images, _ = simulate_holograms(2, 64, rng=7)
    assert fixed_input_advice(model, images) is None
    leftover = images + np.array([-0.12, 0.48], np.float32)[None, :, None, None]  # a reference phase of 0.5 rad
    assert "noise levels from the training crop's" in fixed_input_advice(model, leftover)
    intensity = images.copy()
    intensity[:, 1] = 0.0
    assert "channel 1 of the image is constant" in fixed_input_advice(model, intensity)
    assert fixed_input_advice(LodeSTAR.new(NetworkConfig(), seed=0), images[:, :1]) is None  # per-frame normalization


def test_holography_model_round_trip(holo_model, tmp_path):
    model, _ = holo_model
    path = tmp_path / "holo.pt"
    model.save(path)
    loaded = LodeSTAR.load(path)
    images, _ = simulate_holograms(3, 48, rng=7)
    assert np.array_equal(single_object(model, images)[0], single_object(loaded, images)[0])
    assert loaded.fixed_input == model.fixed_input and loaded.property_offset == model.property_offset


def test_damaged_fixed_normalization_is_refused(holo_model, tmp_path):
    from starloc.io import load_model_file, save_model_file

    model, _ = holo_model
    model.save(tmp_path / "ok.pt")
    obj = load_model_file(tmp_path / "ok.pt", kind="lodestar")
    obj["config"]["fixed_input"]["scale"] = -1.0
    save_model_file(tmp_path / "bad.pt", "lodestar", obj["config"], obj["state_dict"], obj["metadata"])
    with pytest.raises(ModelFileError, match="fixed normalization"):
        LodeSTAR.load(tmp_path / "bad.pt")


@pytest.mark.parametrize("kw, message", [
    ({"z_range_um": 2.0, "pixel_size_nm": 114.0}, "2 channels"),
    ({"z_range_um": 2.0, "network": NetworkConfig(in_channels=2)}, "pixel size"),
    ({"z_range_um": -1.0, "pixel_size_nm": 114.0, "network": NetworkConfig(in_channels=2)}, "positive"),
    ({"z_range_um": 2.0, "pixel_size_nm": 114.0, "downsample": 2, "network": NetworkConfig(in_channels=2)},
     "downsampling"),
    ({"signal_range": 1.0}, "factor > 1"),
    ({"signal_range": 2.0, "crop_signal": 0.0}, "crop's signal"),
    ({"signal_range": 2.0, "crop_z_um": float("nan")}, "crop's z"),
])
def test_bad_property_settings(kw, message):
    crop = np.random.default_rng(0).normal(size=(2 if "network" in kw else 1, 32, 32)).astype(np.float32)
    with pytest.raises(InputError, match=message):
        run(train([crop if crop.shape[0] == 2 else crop[0]], TrainConfig(max_steps=2, **kw)))


def test_signal_scaling_alone_on_a_fluorescence_crop():
    """Signal scaling works on one-channel, zero-background images too (no propagation)."""
    from starloc import sim

    image, _, _ = sim.simulate_single("sphere", 10, 1, size=40, rng=3)
    config = TrainConfig(max_steps=150, min_steps=150, signal_range=3.0, seed=1)
    model = run(train([image[0] - np.median(image[0])], config))
    assert model.metadata["properties"] == ["row", "col", "log_signal"]
    assert model.metadata["training"]["gain"] == 1.0  # signal scaling replaces the gain augmentation
    # the signal is relative to the crop's object: as bright objects in fresh noise read ~1,
    # twice as bright ones more
    same, _, _ = sim.simulate_single("sphere", 10, 20, size=40, rng=4)
    flat = same - np.median(same, axis=(1, 2), keepdims=True)
    signal = property_columns(model, single_object(model, flat[:, None])[0])["signal"]
    brighter = property_columns(model, single_object(model, 2 * flat[:, None])[0])["signal"]
    assert abs(float(np.median(signal)) - 1) < 0.1
    assert np.median(brighter / signal) > 1.3


def test_cli_trains_on_a_hologram_and_writes_z_and_signal(tmp_path, capsys):
    import tifffile

    from starloc.cli import EXIT_BAD_INPUT, main
    from starloc.io import read_points_csv

    image, _ = simulate_holograms(1, 64, z_um=(0.5, 0.5), rng=1)
    tifffile.imwrite(tmp_path / "field.tif", image[0])  # (2, H, W): real, imaginary
    stack, _ = simulate_holograms(3, 64, rng=2)
    tifffile.imwrite(tmp_path / "stack.tif", stack)  # (T, 2, H, W)
    model = tmp_path / "m.pt"
    train_args = ["lodestar", "train", str(tmp_path / "field.tif"), "--channel-axis", "0",
                  "--crop", "12", "12", "40", "40", "--steps", "20", "-o", str(model)]
    assert main(train_args + ["--z-range", "2"]) == EXIT_BAD_INPUT  # no pixel size
    assert "pixel size" in capsys.readouterr().err and not model.exists()
    assert main(train_args + ["--crop-z", "auto"]) == EXIT_BAD_INPUT  # refocusing needs the optics
    assert "give --z-range UM too" in capsys.readouterr().err and not model.exists()
    assert main(train_args + ["--z-range", "2", "--pixel-size", "114", "--signal-range", "2",
                              "--crop-z", "auto", "--crop-signal", "0.02"]) == 0
    said = capsys.readouterr().err
    assert abs(float(said.split("crop refocused at z = ")[1].split()[0]) - 0.5) < 0.1  # the object is at 0.5 µm
    loaded = LodeSTAR.load(model)
    training = loaded.metadata["training"]
    assert training["pixel_size_nm"] == 114.0 and loaded.downsample == 1
    assert abs(training["crop_z_um"] - 0.5) < 0.1 and training["crop_signal"] == 0.02
    out = tmp_path / "d.csv"
    assert main(["lodestar", "detect", str(tmp_path / "stack.tif"), "--channel-axis", "1", "--model", str(model),
                 "--single", "-o", str(out)]) == 0
    frames, positions, features = read_points_csv(out)
    assert list(frames) == [0, 1, 2] and positions.shape == (3, 2)
    assert {"z_um", "signal"} <= set(features) and np.all(features["signal"] > 0)
    tifffile.imwrite(tmp_path / "px100.tif", stack, imagej=True, resolution=(10.0, 10.0), metadata={"unit": "um",
                                                                                                    "axes": "TCYX"})
    assert main(["lodestar", "detect", str(tmp_path / "px100.tif"), "--channel-axis", "1", "--model", str(model),
                 "--single", "-o", str(tmp_path / "e.csv")]) == EXIT_BAD_INPUT
    assert "100 nm pixels (its metadata), but the hologram model was trained at 114 nm" in capsys.readouterr().err
    # metadata that are wrong: the user's word wins, both ways, with a warning when training
    assert main(["lodestar", "train", str(tmp_path / "px100.tif"), "--channel-axis", "1", "--crop", "12", "12", "40",
                 "40", "--steps", "2", "--z-range", "2", "--pixel-size", "114", "-o", str(tmp_path / "m2.pt")]) == 0
    assert "--pixel-size 114 nm, where px100.tif's metadata say 100 nm" in " ".join(capsys.readouterr().err.split())
    assert main(["lodestar", "detect", str(tmp_path / "px100.tif"), "--channel-axis", "1", "--model", str(model),
                 "--single", "--pixel-size", "114", "-o", str(tmp_path / "e.csv")]) == 0
    assert main(["lodestar", "detect", str(tmp_path / "stack.tif"), "--channel-axis", "1", "--model", str(model),
                 "--single", "--pixel-size", "120", "-o", str(tmp_path / "e.csv")]) == EXIT_BAD_INPUT
    assert "120 nm pixels (--pixel-size)" in capsys.readouterr().err
