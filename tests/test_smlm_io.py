"""Challenge ground truth, ThunderSTORM CSV and Picasso HDF5/YAML localization files."""

import numpy as np
import pytest

from starloc.errors import InputError
from starloc.smlm_io import (
    is_thunderstorm_csv,
    read_activations,
    read_bead_positions,
    read_picasso,
    read_thunderstorm_csv,
    write_picasso,
    write_thunderstorm_csv,
)

ACTIVATIONS = (
    "Ground-truth,frame,xnano,ynano,znano,intensity \n"
    "     1,     1,  4267.5,  1203.25,  -250.0,  3012.7\n"
    "     2,     1,    50.0,    150.0,     0.0,   812.0\n"
    "     3,    17, 6399.99,     0.01,   498.5,  1500\n"
)


def test_read_activations_space_padded(tmp_path):
    path = tmp_path / "activations.csv"
    path.write_text(ACTIVATIONS)
    t = read_activations(path)
    np.testing.assert_array_equal(t["frame"], [0, 0, 16])  # 1-based in the file
    np.testing.assert_array_equal(t["id"], [1, 2, 3])
    np.testing.assert_array_equal(t["x"], [4267.5, 50.0, 6399.99])
    np.testing.assert_array_equal(t["y"], [1203.25, 150.0, 0.01])
    np.testing.assert_array_equal(t["z"], [-250.0, 0.0, 498.5])
    np.testing.assert_array_equal(t["intensity"], [3012.7, 812.0, 1500.0])
    assert t["frame"].dtype == np.int64 and t["x"].dtype == np.float64


def test_read_activations_without_its_header(tmp_path):
    path = tmp_path / "activations.csv"
    path.write_text(ACTIVATIONS.split("\n", 1)[1])
    t = read_activations(path)
    np.testing.assert_array_equal(t["frame"], [0, 0, 16])
    np.testing.assert_array_equal(t["x"], [4267.5, 50.0, 6399.99])
    path.write_text("1,1,10.0,20.0,30.0\n")  # no intensity either
    assert read_activations(path)["z"].tolist() == [30.0] and np.isnan(read_activations(path)["intensity"][0])


def test_read_activations_rejects_foreign_and_bad_frames(tmp_path):
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("frame,row,col\n0,1.5,2.5\n")
    with pytest.raises(InputError, match="not an SMLM Challenge activations.csv"):
        read_activations(foreign)
    zero = tmp_path / "zero.csv"
    zero.write_text("Ground-truth,frame,xnano,ynano,znano,intensity\n1, 0, 1, 2, 3, 4\n")
    with pytest.raises(InputError, match="1-based"):
        read_activations(zero)
    with pytest.raises(InputError, match="not found"):
        read_activations(tmp_path / "missing.csv")


def test_bead_positions_from_the_usual_tables(tmp_path):
    bead_list = tmp_path / "bead-positions.csv"  # as the challenge's bead list
    bead_list.write_text("bead,x_nm,y_nm,photons\n1,2505.051,2037.593,30000\n2,9343.403,2825.086,30000\n")
    np.testing.assert_array_equal(read_bead_positions(bead_list), [[2505.051, 2037.593], [9343.403, 2825.086]])
    ts = tmp_path / "ts.csv"  # ThunderSTORM: quoted, units in brackets, one row per frame of each bead
    ts.write_text('"id","frame","x [nm]","y [nm]","z [nm]"\n1,1,500.5,700.25,-750\n2,2,500.5,700.25,-740\n'
                  '3,1,1200,300,-750\n')
    np.testing.assert_array_equal(read_bead_positions(ts), [[500.5, 700.25], [1200.0, 300.0]])
    path = tmp_path / "activations.csv"
    path.write_text(ACTIVATIONS)
    np.testing.assert_array_equal(read_bead_positions(path)[:, 0], [4267.5, 50.0, 6399.99])
    path.write_text(ACTIVATIONS.split("\n", 1)[1])  # the challenge's file without its header
    np.testing.assert_array_equal(read_bead_positions(path)[:, 1], [1203.25, 150.0, 0.01])
    plain = tmp_path / "plain.csv"
    plain.write_text("X (nm),Y (nm)\n10,20\n")
    np.testing.assert_array_equal(read_bead_positions(plain), [[10.0, 20.0]])


def test_a_folder_or_a_pipe_is_no_table_file(tmp_path):
    import os

    with pytest.raises(InputError, match="is a folder"):
        read_thunderstorm_csv(tmp_path)
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match=r"is not a regular file \(a pipe\?\): save it to a file first"):
        read_activations(fifo)
    with pytest.raises(InputError, match="not found"):
        read_bead_positions(tmp_path / "none.csv")


def test_bead_positions_in_pixels_or_foreign_tables_are_refused(tmp_path):
    cases = {
        '"frame","x [px]","y [px]"\n1,5.5,6.5\n': "bead x in 'px': bead positions must be in nm",
        "frame,row,col\n0,1.5,2.5\n": "holds no bead positions",
        "x_nm,y_nm\n": "lists no bead",
        "x_nm,y_nm\n1,nan\n": "must be finite",
        "x_nm,y_nm\n1,two\n": "non-numeric",
    }
    for i, (text, message) in enumerate(cases.items()):
        path = tmp_path / f"bad{i}.csv"
        path.write_text(text)
        with pytest.raises(InputError, match=message):
            read_bead_positions(path)


def _table(rng, n=25, dim=3):
    t = {
        "frame": rng.integers(0, 50, n),
        "x": rng.uniform(0, 6400, n),
        "y": rng.uniform(0, 6400, n),
        "sigma": rng.uniform(80, 200, n),
        "intensity": rng.uniform(500, 5000, n),
        "offset": rng.uniform(50, 150, n),
        "bkgstd": rng.uniform(5, 15, n),
        "uncertainty": rng.uniform(5, 30, n),
        "confidence": rng.uniform(0, 1, n),
    }
    if dim == 3:
        t["z"] = rng.uniform(-750, 750, n)
        t["uncertainty_z"] = rng.uniform(20, 80, n)
    return t


@pytest.mark.parametrize("dim", [2, 3])
def test_thunderstorm_round_trip_exact(tmp_path, rng, dim):
    table = _table(rng, dim=dim)
    path = tmp_path / "locs.csv"
    write_thunderstorm_csv(path, table)
    header = path.read_text().splitlines()[0]
    expected = '"id","frame","x [nm]","y [nm]",' + ('"z [nm]",' if dim == 3 else "")
    assert header.startswith(expected)
    # ThunderSTORM's own names (3D: also its "uncertainty_z [nm]"), then starloc's extra columns
    expected_end = '"uncertainty_xy [nm]",' + ('"uncertainty_z [nm]",' if dim == 3 else "") + '"confidence"'
    assert header.endswith('"bkgstd [photon]",' + expected_end)
    # Frames are 1-based in the file.
    first = path.read_text().splitlines()[1].split(",")
    assert int(first[1]) == table["frame"][0] + 1 and int(first[0]) == 1
    back = read_thunderstorm_csv(path)
    assert list(back)[:3] == ["frame", "x", "y"]
    np.testing.assert_array_equal(back["id"], np.arange(1, 26))
    for key, values in table.items():
        np.testing.assert_array_equal(back[key], values, err_msg=key)
    assert back["frame"].dtype == np.int64
    assert is_thunderstorm_csv(path)


def test_thunderstorm_minimal_table_omits_missing_columns(tmp_path):
    path = tmp_path / "min.csv"
    write_thunderstorm_csv(path, {"frame": [0, 3], "x": [10.5, 20.0], "y": [1.0, 2.0]})
    assert path.read_text().splitlines() == ['"id","frame","x [nm]","y [nm]"', "1,1,10.5,1.0", "2,4,20.0,2.0"]
    assert not any(tmp_path.glob(".*tmp*"))  # atomic write left nothing behind


def test_thunderstorm_reads_a_subset_and_other_spellings(tmp_path):
    path = tmp_path / "ts.csv"
    path.write_text(
        '"frame","x [nm]","y [nm]","sigma1 [nm]","chi2","uncertainty [nm]"\n'
        "1.0,100.5,200.25,130.0,2.5,12.0\n"
        "7.0,300.0,400.0,140.0,1.5,9.0\n"
    )
    t = read_thunderstorm_csv(path)
    np.testing.assert_array_equal(t["frame"], [0, 6])
    np.testing.assert_array_equal(t["x"], [100.5, 300.0])
    np.testing.assert_array_equal(t["uncertainty"], [12.0, 9.0])
    np.testing.assert_array_equal(t["chi2"], [2.5, 1.5])
    assert "sigma1 [nm]" in t and "z" not in t
    px = tmp_path / "px.csv"
    px.write_text('"frame","x [px]","y [px]"\n1,1.5,2.0\n')
    with pytest.raises(InputError, match="pixel size"):
        read_thunderstorm_csv(px)
    np.testing.assert_array_equal(read_thunderstorm_csv(px, pixel_size_nm=100.0)["x"], [150.0])


def test_thunderstorm_rejects_foreign_and_malformed(tmp_path):
    foreign = tmp_path / "points.csv"
    foreign.write_text("frame,row,col\n0,1.5,2.5\n")
    with pytest.raises(InputError, match=r"not a ThunderSTORM CSV.*frame,row,col"):
        read_thunderstorm_csv(foreign)
    assert not is_thunderstorm_csv(foreign)
    unitless = tmp_path / "unitless.csv"
    unitless.write_text("frame,x,y\n1,1.5,2.5\n")
    with pytest.raises(InputError, match="not a ThunderSTORM CSV"):
        read_thunderstorm_csv(unitless)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text('"frame","x [nm]","y [nm]"\n1,2\n')
    with pytest.raises(InputError, match="line 2"):
        read_thunderstorm_csv(ragged)
    text = tmp_path / "text.csv"
    text.write_text('"frame","x [nm]","y [nm]"\n1,abc,2\n')
    with pytest.raises(InputError, match="non-numeric"):
        read_thunderstorm_csv(text)
    zero = tmp_path / "zero.csv"
    zero.write_text('"frame","x [nm]","y [nm]"\n0,1,2\n')
    with pytest.raises(InputError, match="1-based"):
        read_thunderstorm_csv(zero)
    with pytest.raises(ValueError, match="frame"):
        write_thunderstorm_csv(tmp_path / "bad.csv", {"x": [1.0], "y": [1.0]})


def test_picasso_file_readable_with_h5py_and_yaml(tmp_path, rng):
    h5py = pytest.importorskip("h5py")
    yaml = pytest.importorskip("yaml")
    table = _table(rng, n=10, dim=3)
    table["x"][0], table["y"][0] = 250.0, 50.0  # centre of camera pixel (row 0, col 2) at 100 nm
    h5, ym = write_picasso(tmp_path / "locs.hdf5", table, pixel_size_nm=100.0, width=64, height=64)
    assert ym == tmp_path / "locs.yaml"
    with h5py.File(h5, "r") as fh:
        locs = fh["locs"][...]
    assert locs.dtype.names == ("frame", "x", "y", "photons", "sx", "sy", "bg", "lpx", "lpy", "z", "lpz")
    assert locs.dtype["frame"] == np.uint32 and locs.dtype["x"] == np.float32
    np.testing.assert_array_equal(locs["frame"], table["frame"])  # 0-based
    assert (locs["x"][0], locs["y"][0]) == (2.0, 0.0)  # Picasso: pixel centres at integers
    np.testing.assert_allclose(locs["x"], table["x"] / 100 - 0.5, rtol=1e-6)
    np.testing.assert_allclose(locs["lpx"], table["uncertainty"] / 100, rtol=1e-6)
    np.testing.assert_allclose(locs["sx"], table["sigma"] / 100, rtol=1e-6)
    np.testing.assert_allclose(locs["photons"], table["intensity"], rtol=1e-6)
    np.testing.assert_allclose(locs["z"], table["z"], rtol=1e-6)  # nm
    np.testing.assert_allclose(locs["lpz"], table["uncertainty_z"], rtol=1e-6)  # nm, as Picasso's 3D fits
    docs = list(yaml.safe_load_all(ym.read_text()))
    assert docs[0]["Width"] == 64 and docs[0]["Height"] == 64
    assert docs[0]["Frames"] == int(table["frame"].max()) + 1
    assert docs[0]["Pixelsize"] == 100.0
    # Corner convention (as Picasso's csv2hdf), and the precision fallback.
    minimal = {"frame": [0], "x": [250.0], "y": [50.0]}
    with pytest.raises(ValueError, match="precision_nm"):
        write_picasso(tmp_path / "m.hdf5", minimal, pixel_size_nm=100.0, width=8, height=8)
    h5, _ = write_picasso(
        tmp_path / "m.hdf5", minimal, pixel_size_nm=100.0, width=8, height=8,
        precision_nm=10.0, origin="corner", n_frames=5,
    )
    with h5py.File(h5, "r") as fh:
        loc = fh["locs"][0]
    assert (loc["x"], loc["y"], loc["lpx"], loc["photons"]) == (2.5, 0.5, np.float32(0.1), 0.0)
    assert yaml.safe_load((tmp_path / "m.yaml").read_text())["Frames"] == 5


def test_csvs_written_block_by_block_are_the_same_files(tmp_path, rng, monkeypatch):
    import starloc.io

    table = _table(rng, n=10, dim=3)
    whole = write_thunderstorm_csv(tmp_path / "whole.csv", table).read_bytes()
    monkeypatch.setattr(starloc.io, "CSV_BLOCK_ROWS", 3)  # blocks of 3, 3, 3 and 1 rows
    assert write_thunderstorm_csv(tmp_path / "blocks.csv", table).read_bytes() == whole
    np.testing.assert_array_equal(read_thunderstorm_csv(tmp_path / "blocks.csv")["x"], table["x"])
    from starloc.io import read_points_csv, write_points_csv

    write_points_csv(tmp_path / "points.csv", table["frame"], np.column_stack([table["y"], table["x"]]),
                     {"z": table["z"]})
    frames, positions, features = read_points_csv(tmp_path / "points.csv")
    np.testing.assert_array_equal(positions[:, 1], table["x"])
    np.testing.assert_array_equal(frames, table["frame"])
    np.testing.assert_array_equal(features["z"], table["z"])


def test_a_failed_picasso_write_leaves_the_old_pair_whole(tmp_path, rng, monkeypatch):
    # a Ctrl-C or a full disk while the HDF5 is written: the old HDF5 and YAML stay, together
    h5py = pytest.importorskip("h5py")
    h5, ym = write_picasso(tmp_path / "locs.hdf5", _table(rng, n=10, dim=2), pixel_size_nm=100.0, width=64, height=64)
    before = h5.read_bytes(), ym.read_bytes()

    def interrupted(self, name, data):
        raise KeyboardInterrupt

    monkeypatch.setattr(h5py.File, "create_dataset", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_picasso(h5, _table(rng, n=5, dim=2), pixel_size_nm=100.0, width=2048, height=2048)
    assert (h5.read_bytes(), ym.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["locs.hdf5", "locs.yaml"]  # no temporary left


def test_a_picasso_yaml_with_python_tags_is_read_without_running_them(tmp_path, rng, capfd):
    """PyYAML's default dumper writes tuples as ``!!python/tuple``; safe_load refused the whole
    sidecar, Pixelsize included. Such tags are read as plain data, and none constructs an object."""
    pytest.importorskip("h5py")
    h5, ym = write_picasso(tmp_path / "locs.hdf5", _table(rng, n=4, dim=2), pixel_size_nm=130.0, width=64, height=64)
    ym.write_text("ROI: !!python/tuple\n- 10\n- 20\nhook: !!python/object/apply:os.system ['echo RAN']\n"
                  + ym.read_text())
    back = read_picasso(h5)
    np.testing.assert_allclose(back["x"], read_picasso(h5, pixel_size_nm=130.0)["x"])
    assert "RAN" not in capfd.readouterr().out


def test_picasso_round_trip_and_foreign_files(tmp_path, rng):
    h5py = pytest.importorskip("h5py")
    table = _table(rng, n=10, dim=3)
    h5, _ = write_picasso(tmp_path / "locs.hdf5", table, pixel_size_nm=100.0, width=64, height=64)
    back = read_picasso(h5)
    assert back["frame"].dtype == np.int64 and np.array_equal(back["frame"], table["frame"])
    for key in ("x", "y", "z", "uncertainty", "uncertainty_z", "intensity"):
        np.testing.assert_allclose(back[key], table[key], rtol=1e-5, atol=1e-3, err_msg=key)
    np.testing.assert_allclose(read_picasso(h5, pixel_size_nm=50.0)["x"], (back["x"] / 100) * 50.0, rtol=1e-6)
    (tmp_path / "locs.yaml").unlink()
    with pytest.raises(InputError, match="the pixel size is unknown"):
        read_picasso(h5)
    with h5py.File(tmp_path / "other.hdf5", "w") as fh:
        fh.create_dataset("data", data=np.zeros(3))
    with pytest.raises(InputError, match="no /locs dataset"):
        read_picasso(tmp_path / "other.hdf5", pixel_size_nm=100.0)
    with h5py.File(tmp_path / "group.hdf5", "w") as fh:
        fh.create_group("locs")
    with pytest.raises(InputError, match="no /locs dataset"):
        read_picasso(tmp_path / "group.hdf5", pixel_size_nm=100.0)
    with h5py.File(h5, "r+") as fh:  # precision stated in x only: no uncertainty, not half of it
        locs = fh["locs"][()]
        locs["lpy"] = 0
        fh["locs"][...] = locs
    assert "uncertainty" not in read_picasso(h5, pixel_size_nm=100.0)
    (tmp_path / "text.hdf5").write_text("frame,x,y")
    with pytest.raises(InputError, match="cannot read .* as HDF5"):
        read_picasso(tmp_path / "text.hdf5", pixel_size_nm=100.0)
