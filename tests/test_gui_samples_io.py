"""napari sample data, points reader and writer, loaded through the plugin's npe2 manifest.

Run under Xvfb (see NAPARI.md). Every test is small: one viewer, images of at most 10x128x128.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

import napari  # noqa: E402

from starloc.gui import points_io, samples  # noqa: E402
from starloc.io import read_points_csv, write_points_csv  # noqa: E402

pytestmark = pytest.mark.gui

PLUGIN = "napari-starloc"


def _inside(points: np.ndarray, shape: tuple[int, ...]) -> bool:
    """True when every (row, col) lies within the image's pixel area."""
    pts = np.asarray(points).reshape(-1, 2)
    return bool(np.all(pts >= -0.5) and np.all(pts <= np.asarray(shape[-2:]) - 0.5))


# ------------------------------------------------------------------------------------
# Sample data
# ------------------------------------------------------------------------------------


def test_samples_load_through_the_manifest(make_napari_viewer):
    viewer = make_napari_viewer()

    viewer.open_sample(PLUGIN, "single-particle")
    single = viewer.layers["single particle"]
    assert single.data.shape == (64, 64) and single.data.dtype == np.float32
    truth = single.metadata["ground_truth"]
    assert truth.shape == (1, 2) and _inside(truth, single.data.shape)
    assert np.all(np.abs(truth - 31.5) <= 3)  # near the centre
    # the particle is where the ground truth says: brightest 3x3 neighbourhood around it
    r, c = np.rint(truth[0]).astype(int)
    assert single.data[r - 1 : r + 2, c - 1 : c + 2].mean() > 3 * np.median(single.data)

    viewer.open_sample(PLUGIN, "diffusing-particles")
    movie = viewer.layers["diffusing particles"]
    assert movie.data.shape == (10, 128, 128) and movie.data.dtype == np.float32
    tracks = movie.metadata["ground_truth"]
    assert tracks.shape == (10, 12, 2) and _inside(tracks, movie.data.shape)
    assert np.any(np.abs(np.diff(tracks, axis=0)) > 0.1)  # they do move
    assert viewer.dims.ndim == 3  # the time axis is a slider

    viewer.open_sample(PLUGIN, "cell-like-blobs")
    blobs = viewer.layers["cell-like blobs"]
    assert blobs.data.shape == (256, 256) and blobs.data.dtype == np.float32
    meta = blobs.metadata
    assert meta["ground_truth"].shape == (25, 2) and _inside(meta["ground_truth"], (256, 256))
    assert np.ptp(meta["sigma"]) > 2 and np.ptp(meta["amplitude"]) > 0.3  # varied
    # non-overlapping: centres farther apart than 3 sigma + 3 sigma
    d = np.hypot(*(meta["ground_truth"][:, None] - meta["ground_truth"][None]).transpose(2, 0, 1))
    reach = 3 * (meta["sigma"][:, None] + meta["sigma"][None])
    assert np.all(d[~np.eye(25, dtype=bool)] > reach[~np.eye(25, dtype=bool)])


def test_membrane_cells_sample_needs_downsampling(make_napari_viewer):
    from starloc.lodestar.downsampling import downsample_for, object_extent

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "membrane-cells")
    layer = viewer.layers["membrane cells"]
    assert layer.data.shape == (384, 384) and layer.data.dtype == np.float32
    truth, radius = layer.metadata["ground_truth"], layer.metadata["radius"]
    assert truth.shape == (12, 2) and np.all((radius >= 20) & (radius <= 26))
    assert _inside(truth - radius[:, None], (384, 384)) and _inside(truth + radius[:, None], (384, 384))
    d = np.hypot(*(truth[:, None] - truth[None]).transpose(2, 0, 1))
    apart = ~np.eye(12, dtype=bool)
    assert np.all(d[apart] > (radius[:, None] + radius[None])[apart])  # no two cells touch
    # the membrane is where the truth says, the inside is background
    r, c = np.rint(truth[0]).astype(int)
    ring_px = layer.data[r, int(round(truth[0, 1] + radius[0]))]
    assert ring_px > 3 * layer.data[r - 3 : r + 4, c - 3 : c + 4].mean()
    top, left = np.rint(truth[0] - 36).astype(int).clip(0, 384 - 72)
    assert downsample_for(object_extent(layer.data[top : top + 72, left : left + 72])) == 3


def test_deeploco_samples_train_and_localize_in_nm(make_napari_viewer):
    from starloc.deeploco.demo import bundled_bead_stack
    from starloc.gui.units import axis_nm, pixel_size_nm

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "astigmatic-beads")
    beads = viewer.layers["AS bead z-stack"]
    assert beads.data.shape == (76, 40, 40) and beads.data.dtype == np.uint16
    np.testing.assert_array_equal(beads.data, tifffile.imread(bundled_bead_stack()))
    assert pixel_size_nm(beads) == 100.0 and axis_nm(beads, 0) == 20.0

    viewer.open_sample(PLUGIN, "smlm-astigmatic")
    smlm = viewer.layers["AS SMLM stack"]
    assert smlm.data.shape == (40, 64, 64) and smlm.data.dtype == np.uint16
    assert pixel_size_nm(smlm) == 100.0 and axis_nm(smlm, 0) is None  # frames, not a length
    truth = smlm.metadata["ground_truth"]
    n = len(truth["frame"])
    assert 0.3 < n / (40 * 6.4 * 6.4) < 0.7  # 0.5 emitters per µm²
    assert np.all((truth["x"] >= 0) & (truth["x"] <= 6400) & (np.abs(truth["z"]) <= 750))
    assert np.all((truth["photons"] >= 1000) & (truth["photons"] <= 7000))
    # the emitters are where the truth says: brighter than the median frame around their pixel
    f, r, c = truth["frame"], (truth["y"] // 100).astype(int), (truth["x"] // 100).astype(int)
    assert np.mean(smlm.data[f, r, c] > np.median(smlm.data)) > 0.9


def test_hologram_sample_is_a_two_channel_field_in_nm(make_napari_viewer):
    from starloc.gui.units import pixel_size_nm
    from starloc.lodestar.holography import refocus_z, Optics

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "hologram")
    layer = viewer.layers["hologram (real, imaginary)"]
    assert layer.data.shape == (2, 256, 256) and layer.data.dtype == np.float32
    assert pixel_size_nm(layer) == 114.0 and layer.metadata["channels_first"]
    truth = layer.metadata["ground_truth"]
    assert truth.shape == (20, 4) and np.all((truth[:, 2] >= -2) & (truth[:, 2] <= 3))
    # each scatterer is where the truth says: its field refocuses at its z
    optics = Optics(**layer.metadata["optics"])
    row, col = np.round(truth[0, :2]).astype(int)
    r0, c0 = max(0, row - 16), max(0, col - 16)
    crop = layer.data[:, r0:r0 + 32, c0:c0 + 32]
    assert crop.shape == (2, 32, 32)
    assert abs(refocus_z(crop[None], optics, window=32)[0] - truth[0, 2]) < 0.3


def test_samples_are_seeded():
    for make in (samples.single_particle, samples.diffusing_particles, samples.cell_like_blobs,
                 samples.membrane_cells, samples.hologram):
        (a, meta_a, kind_a), = make()
        (b, meta_b, kind_b), = make()
        assert kind_a == kind_b == "image"
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(meta_a["metadata"]["ground_truth"],
                                      meta_b["metadata"]["ground_truth"])


# ------------------------------------------------------------------------------------
# Writer -> reader
# ------------------------------------------------------------------------------------


def _features(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "score": rng.random(n),
        "weight": rng.random(n) * 7.3,
        "consistency": rng.integers(0, 9, n),
        "label": np.array([f"p{i}" for i in range(n)]),  # not numeric: not written
    }


def test_round_trip_3d_keeps_frames_coordinates_and_features(make_napari_viewer, tmp_path, rng):
    viewer = make_napari_viewer()
    n = 6
    data = np.column_stack([[0, 0, 1, 2, 2, 4], rng.random((n, 2)) * 100 + 0.123456789])
    feats = _features(n, rng)
    layer = viewer.add_points(data, features=feats, name="detections")
    path = tmp_path / "dets.csv"

    written = napari.save_layers(str(path), [layer], plugin=PLUGIN)
    assert written == [str(path)]
    frames, positions, table = read_points_csv(path)
    np.testing.assert_array_equal(frames, [0, 0, 1, 2, 2, 4])
    assert list(table) == ["score", "weight", "consistency"]  # strings skipped
    assert path.read_text().splitlines()[0] == "frame,row,col,score,weight,consistency"

    [back] = viewer.open(str(path), plugin=PLUGIN)
    assert back.name == "dets" and back.ndim == 3
    np.testing.assert_array_equal(back.data, data)  # exact
    for name in ("score", "weight", "consistency"):
        np.testing.assert_array_equal(back.features[name].to_numpy(), feats[name])
    assert back.features["consistency"].dtype.kind == "i"
    # coloured by score with viridis: the lowest score gets viridis' dark purple
    low = int(np.argmin(feats["score"]))
    np.testing.assert_allclose(back.face_color[low, :3], [0.267, 0.005, 0.329], atol=0.01)


def test_round_trip_2d_layer_is_frame_0(make_napari_viewer, tmp_path, rng):
    viewer = make_napari_viewer()
    data = rng.random((4, 2)) * 50
    layer = viewer.add_points(data, features={"score": rng.random(4)})
    path = tmp_path / "flat.csv"

    napari.save_layers(str(path), [layer], plugin=PLUGIN)
    frames, positions, _ = read_points_csv(path)
    np.testing.assert_array_equal(frames, np.zeros(4))
    np.testing.assert_array_equal(positions, data)

    [back] = viewer.open(str(path), plugin=PLUGIN)
    assert back.ndim == 2  # all on frame 0: (row, col)
    np.testing.assert_array_equal(back.data, data)


def test_a_csv_with_tracks_opens_as_points_and_tracks(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    path = tmp_path / "linked.csv"
    write_points_csv(path, [0, 0, 1, 1, 2], [[5, 5], [20, 20], [6, 5], [21, 19], [7, 6]],
                     {"score": [1.0, 2.0, 1.5, 2.5, 1.0], "track": [0, 1, 0, 1, 0]})
    points, tracks = viewer.open(str(path), plugin=PLUGIN)
    assert points.ndim == 3 and set(points.features) == {"score", "track"}
    assert type(tracks).__name__ == "Tracks" and tracks.name == "linked tracks"
    np.testing.assert_array_equal(tracks.data, [[0, 0, 5, 5], [0, 1, 6, 5], [0, 2, 7, 6], [1, 0, 20, 20],
                                                [1, 1, 21, 19]])
    write_points_csv(path, [0, 1], [[5, 5], [6, 5]], {"track": [0.0, 0.5]})  # not ids: no tracks
    assert [layer.ndim for layer in viewer.open(str(path), plugin=PLUGIN)] == [3]
    write_points_csv(path, [0, 0], [[5, 5], [6, 5]], {"track": [0, 1]})  # one frame: nothing to follow
    assert [layer.ndim for layer in viewer.open(str(path), plugin=PLUGIN)] == [2]


def test_writer_handles_empty_layer_and_no_features(tmp_path):
    path = tmp_path / "empty.csv"
    assert points_io.write_points(str(path), np.zeros((0, 3)), {"features": None}) == [str(path)]
    assert path.read_text() == "frame,row,col\n"
    (data, kwargs, kind), = points_io.get_reader(str(path))(str(path))
    assert kind == "points" and data.shape == (0, 2) and kwargs["features"] == {}
    assert "face_color" not in kwargs


def test_writer_rejects_non_integral_negative_frames_and_4d(tmp_path):
    path = tmp_path / "bad.csv"
    with pytest.raises(ValueError, match=r"frame.*whole number >= 0.*2\.5"):
        points_io.write_points(str(path), np.array([[2.5, 1.0, 1.0]]), {})
    with pytest.raises(ValueError, match="whole number >= 0"):
        points_io.write_points(str(path), np.array([[-1.0, 1.0, 1.0]]), {})
    with pytest.raises(ValueError, match="only 2D"):
        points_io.write_points(str(path), np.zeros((2, 4)), {})
    assert not path.exists()
    # float noise of a frame coordinate is tolerated and rounded
    points_io.write_points(str(path), np.array([[3.0000000001, 1.5, 2.5]]), {})
    frames, positions, _ = read_points_csv(path)
    assert frames.tolist() == [3] and positions.tolist() == [[1.5, 2.5]]


def test_writer_rejection_through_napari(make_napari_viewer, tmp_path):
    """File > Save Layers runs the chosen writer contribution directly, so the user sees our
    ValueError (napari turns it into an error notification). ``napari.save_layers(plugin=...)``
    instead catches ValueError while it looks for a writer and only warns "not a valid writer":
    nothing is written either way."""
    npe2 = pytest.importorskip("npe2")
    viewer = make_napari_viewer()
    layer = viewer.add_points(np.array([[0.5, 3.0, 4.0]]))
    path = str(tmp_path / "x.csv")
    writer, _ = npe2.PluginManager.instance().get_writer(path, ["points"], PLUGIN)
    assert writer is not None and writer.command == "napari-starloc.write_points"
    data, meta, _ = layer.as_layer_data_tuple()
    with pytest.raises(ValueError, match=r"whole number >= 0.*\(e\.g\. 0\.5\)"):
        writer.exec(args=(path, data, meta))
    with pytest.warns(UserWarning, match="not a valid writer"):
        assert napari.save_layers(path, [layer], plugin=PLUGIN) == []
    assert not (tmp_path / "x.csv").exists()


# ------------------------------------------------------------------------------------
# Reader claims only its own files
# ------------------------------------------------------------------------------------


def test_get_reader_rejects_foreign_input_without_raising(tmp_path):
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("x,y\n1,2\n")
    not_csv = tmp_path / "dets.txt"
    not_csv.write_text("frame,row,col\n0,1,2\n")
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    binary = tmp_path / "binary.csv"
    binary.write_bytes(bytes(range(256)) * 40)
    ours = tmp_path / "ours.csv"
    ours.write_text("frame,row,col,score\n0,1.5,2.5,0.9\n")

    for path in (foreign, not_csv, tmp_path / "missing.csv", folder, binary, tmp_path,
                 None, 3, [str(ours), str(ours)], []):
        arg = str(path) if isinstance(path, type(tmp_path)) else path
        assert points_io.get_reader(arg) is None, path
    assert points_io.get_reader(str(ours)) is points_io.read_points
    assert points_io.get_reader(ours) is points_io.read_points  # PathLike
    assert points_io.get_reader([str(ours)]) is points_io.read_points
    (data, kwargs, _), = points_io.read_points([str(ours)])
    np.testing.assert_array_equal(data, [[1.5, 2.5]])
    assert kwargs["name"] == "ours" and kwargs["face_color"] == "score"


def test_the_smlm_sample_is_seeded():
    (a, meta_a, _), = samples.smlm_astigmatic()
    (b, meta_b, _), = samples.smlm_astigmatic()
    np.testing.assert_array_equal(a, b)
    for key, value in meta_a["metadata"]["ground_truth"].items():
        np.testing.assert_array_equal(value, meta_b["metadata"]["ground_truth"][key])
