"""Tests of starloc.io: images, frames, crops, atomic writes, point tables and model files."""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from starloc import __version__
from starloc.errors import InputError, ModelFileError, StarlocError, StarlocWarning
from starloc.io import (
    as_frames,
    atomic_path,
    atomic_write,
    frames_shape,
    is_points_csv,
    iter_frame_chunks,
    load_model_file,
    read_image,
    read_points_csv,
    save_model_file,
    validate_crop,
    write_points_csv,
)

RNG = np.random.default_rng(0)


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    return msg


# ---------------------------------------------------------------------------- read_image


def test_read_tiff_stack_is_memmapped(tmp_path):
    data = RNG.integers(0, 4000, size=(5, 32, 40), dtype=np.uint16)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, data)
    img = read_image(path)
    assert isinstance(img, np.memmap)
    assert img.shape == (5, 32, 40) and img.dtype == np.uint16
    np.testing.assert_array_equal(img, data)
    assert not img.flags.writeable


def test_bigtiff_file_names_are_tiffs(tmp_path):
    data = RNG.integers(0, 255, size=(5, 20, 24), dtype=np.uint16)  # 3 slices would be written as RGB
    for name in ("a.btf", "b.TF8", "c.tf2"):
        tifffile.imwrite(tmp_path / name, data, bigtiff=True)
        np.testing.assert_array_equal(np.asarray(read_image(tmp_path / name)), data)


def test_read_tiff_2d_and_uppercase_suffix(tmp_path):
    data = RNG.random((20, 30)).astype(np.float32)
    path = tmp_path / "img.TIFF"
    tifffile.imwrite(path, data)
    np.testing.assert_array_equal(read_image(path), data)


@pytest.mark.parametrize("compression", ["zlib", "lzw", "packbits", "zstd"])
def test_read_compressed_tiff_stack_page_by_page(tmp_path, compression):
    from starloc.lazy_tiff import TiffPages

    data = RNG.integers(0, 255, size=(5, 24, 20), dtype=np.uint8)
    path = tmp_path / f"{compression}.tif"
    tifffile.imwrite(path, data, compression=compression, photometric="minisblack")
    img = read_image(path)
    assert isinstance(img, TiffPages) and img.shape == (5, 24, 20) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[1:4], data[1:4])
    np.testing.assert_array_equal(img[-1, 2:5], data[-1, 2:5])
    np.testing.assert_array_equal(np.asarray(img), data)
    starts = [start for start, _ in iter_frame_chunks(img, 2)]
    assert starts == [0, 2, 4]
    img.close()
    # a compressed single image is read whole
    tifffile.imwrite(tmp_path / "one.tif", data[0], compression=compression)
    np.testing.assert_array_equal(read_image(tmp_path / "one.tif"), data[0])


def test_rgb_stored_plane_by_plane_is_colour_as_when_interleaved(tmp_path):
    rgb = RNG.integers(0, 255, size=(3, 20, 24), dtype=np.uint8)
    # as software other than tifffile writes it (tifffile's own description would mark a numpy array)
    tifffile.imwrite(tmp_path / "planar.tif", rgb, photometric="rgb", planarconfig="separate", metadata=None)
    img = read_image(tmp_path / "planar.tif")
    assert img.shape == (20, 24, 3)  # not three frames
    np.testing.assert_array_equal(img, np.moveaxis(rgb, 0, -1))
    with pytest.raises(InputError, match="looks like RGB"):
        as_frames(img)
    assert as_frames(img, rgb="gray").shape == (1, 1, 20, 24)
    # tifffile stores any (3, H, W) array it is not told the photometric of as planar RGB: most
    # are three frames, and are read so
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        tifffile.imwrite(tmp_path / "three.tif", rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "three.tif"), rgb)


def test_read_npy_is_memmapped(tmp_path):
    data = RNG.random((4, 16, 16))
    path = tmp_path / "a.npy"
    np.save(path, data)
    img = read_image(path)
    assert isinstance(img, np.memmap)
    np.testing.assert_array_equal(img, data)


def test_read_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found") as e:
        read_image(tmp_path / "nope.tif")
    assert "nope.tif" in one_line(e)


def _frames_folder(folder, frames, names):
    folder.mkdir()
    for frame, name in zip(frames, names):
        tifffile.imwrite(folder / name, frame, photometric="minisblack")
    return folder


def test_read_folder_of_one_tiff_per_frame_lazily_in_natural_order(tmp_path):
    frames = np.arange(4 * 5 * 6, dtype=np.uint16).reshape(4, 5, 6)
    # written out of order, with unpadded numbers: frame 2 is "f10", after "f9"
    folder = _frames_folder(tmp_path / "seq", frames, ["f1.tif", "f9.TIF", "f10.tiff", "f11.tif"])
    (folder / "notes.txt").write_text("not an image")
    with pytest.warns(StarlocWarning, match=r"the file numbers skip \(9 follows 1; 1 gap\(s\)\)") as told:
        stack = read_image(folder)
    assert len(told) == 1  # the suffixes .TIF / .tiff make no file "named unlike the others"
    assert stack.shape == (4, 5, 6) and stack.dtype == np.uint16 and len(stack) == 4
    np.testing.assert_array_equal(stack[1:3], frames[1:3])
    np.testing.assert_array_equal(stack[-1], frames[-1])
    np.testing.assert_array_equal(stack[0:4, 1:3, 2], frames[:, 1:3, 2])
    np.testing.assert_array_equal(np.asarray(stack), frames)
    chunks = list(iter_frame_chunks(stack, 3))
    assert [start for start, _ in chunks] == [0, 3]
    np.testing.assert_array_equal(np.concatenate([c for _, c in chunks])[:, 0], frames.astype(np.float32))


def test_read_folder_errors_name_the_problem(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="folder without TIFF files"):
        read_image(tmp_path / "empty")
    stacked = _frames_folder(tmp_path / "stacks", [np.zeros((3, 8, 8), np.uint16)], ["a.tif"])
    with pytest.raises(InputError, match="one 2D frame per file"):
        read_image(stacked)
    mixed = _frames_folder(tmp_path / "mixed", [np.zeros((8, 8), np.uint16), np.zeros((8, 9), np.uint16)],
                           ["1.tif", "2.tif"])
    stack = read_image(mixed)
    np.testing.assert_array_equal(stack[0], np.zeros((8, 8)))
    with pytest.raises(InputError, match=r"2\.tif.*shape \(8, 9\)"):
        stack[0:2]


def test_read_unsupported_suffix(tmp_path):
    path = tmp_path / "image.png"
    path.write_bytes(b"\x89PNG\r\n")
    with pytest.raises(InputError, match=r"unsupported file type '\.png'") as e:
        read_image(path)
    assert "image.png" in one_line(e)


def test_read_not_a_tiff(tmp_path):
    path = tmp_path / "fake.tif"
    path.write_text("hello, I am text")
    with pytest.raises(InputError, match="not a valid TIFF") as e:
        read_image(path)
    assert "fake.tif" in one_line(e)


def test_read_truncated_tiff(tmp_path):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, np.ones((4, 64, 64), np.uint16), photometric="minisblack")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="cut.tif") as e:
        read_image(path)
    one_line(e)


@pytest.mark.parametrize("kind", ["imagej", "ome", "zlib"])
def test_a_truncated_imagej_or_ome_stack_is_refused_not_read_as_its_first_frame(tmp_path, kind):
    """By the image reader (LodeSTAR) and the stack reader (DeepLoco) alike: tifffile only logs
    the broken page chain of these and returns the one frame it could read."""
    from starloc.deeploco.stack import open_stack

    path = tmp_path / ("cut.ome.tif" if kind == "ome" else "cut.tif")
    data = np.arange(5 * 64 * 64, dtype=np.uint16).reshape(5, 64, 64)
    if kind == "ome":
        tifffile.imwrite(path, data, ome=True, metadata={"axes": "TYX"})
    elif kind == "zlib":
        tifffile.imwrite(path, data, compression="zlib")
    else:
        tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TYX"})
    whole = tmp_path / "whole.tif"
    whole.write_bytes(path.read_bytes())
    assert read_image(whole).shape == (5, 64, 64)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="truncated or corrupt") as e:
        read_image(path)
    assert path.name in one_line(e)
    with open_stack(whole) as src:
        assert src.n_frames == 5
    with pytest.raises(InputError, match="truncated or corrupt") as e:
        open_stack(path)
    assert path.name in one_line(e)


def test_read_npy_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="obj.npy.*Python objects, which starloc does not load") as e:
        read_image(path)
    # numpy would take these for pickles too, and suggest allow_pickle
    tiff = tmp_path / "renamed.npy"
    tifffile.imwrite(tiff, np.zeros((5, 16, 16), np.uint16))
    with pytest.raises(InputError, match="it is a TIFF file; rename it to .tif"):
        read_image(tiff)
    junk = tmp_path / "junk.npy"
    junk.write_bytes(b"frame,x,y\n1,2,3\n")
    with pytest.raises(InputError, match="not a .npy file"):
        read_image(junk)
    one_line(e)


def test_read_corrupt_npy(tmp_path):
    path = tmp_path / "bad.npy"
    path.write_bytes(b"not numpy at all")
    with pytest.raises(InputError, match="bad.npy"):
        read_image(path)


# ---------------------------------------------------------------------------- as_frames


def test_as_frames_2d():
    img = RNG.integers(0, 100, (20, 30)).astype(np.uint16)
    out = as_frames(img)
    assert out.shape == (1, 1, 20, 30) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0, 0], img)


def test_as_frames_stack_and_small_t_is_not_rgb():
    for t in (1, 3, 4, 7):
        img = RNG.random((t, 32, 32))
        out = as_frames(img)
        assert out.shape == (t, 1, 32, 32)
        np.testing.assert_allclose(out[:, 0], img.astype(np.float32))


def test_as_frames_trailing_3_on_small_image_is_a_stack():
    # last axis 3 but the other two are not both >= 16: a stack of 20 frames of 10x3 pixels
    img = np.zeros((20, 10, 3), np.uint8)
    assert as_frames(img).shape == (20, 1, 10, 3)


def test_as_frames_rgb_errors_by_default():
    img = RNG.integers(0, 255, (32, 40, 3), dtype=np.uint8)
    with pytest.raises(InputError, match="RGB") as e:
        as_frames(img)
    msg = one_line(e)
    assert "rgb='gray'" in msg and "--rgb gray" in msg and "channel axis" in msg
    with pytest.raises(InputError, match="RGB"):
        as_frames(np.zeros((2, 32, 32, 4), np.float32))  # dtype plays no role


def test_as_frames_rgb_to_gray_by_luminance():
    img = RNG.integers(0, 255, (32, 40, 3), dtype=np.uint8)
    out = as_frames(img, rgb="gray")
    assert out.shape == (1, 1, 32, 40) and out.dtype == np.float32
    expected = 0.2125 * img[..., 0] + 0.7154 * img[..., 1] + 0.0721 * img[..., 2]
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-5)
    # pure colours
    red = np.zeros((16, 16, 3), np.float32)
    red[..., 0] = 1
    np.testing.assert_allclose(as_frames(red, rgb="gray"), 0.2125, rtol=1e-6)


def test_as_frames_rgba_stack_drops_alpha():
    img = RNG.integers(0, 255, (2, 20, 24, 4), dtype=np.uint8)
    out = as_frames(img, rgb="gray")
    assert out.shape == (2, 1, 20, 24)
    img2 = img.copy()
    img2[..., 3] = 0  # alpha must not matter
    np.testing.assert_array_equal(as_frames(img2, rgb="gray"), out)


def test_as_frames_channel_axis():
    img = RNG.random((2, 5, 16, 18)).astype(np.float32)  # (C, T, H, W)
    out = as_frames(img, channel_axis=0)
    assert out.shape == (5, 2, 16, 18)
    np.testing.assert_array_equal(out[3, 1], img[1, 3])
    rgb = RNG.integers(0, 255, (32, 40, 3), dtype=np.uint8)
    out = as_frames(rgb, channel_axis=-1)  # colours as input channels
    assert out.shape == (1, 3, 32, 40)
    np.testing.assert_array_equal(out[0, 2], rgb[..., 2])
    assert as_frames(np.zeros((3, 20, 20)), channel_axis=0).shape == (1, 3, 20, 20)


def test_as_frames_channel_axis_errors():
    with pytest.raises(InputError, match="no channel axis"):
        as_frames(np.zeros((20, 20)), channel_axis=0)
    with pytest.raises(InputError, match="out of range"):
        as_frames(np.zeros((3, 20, 20)), channel_axis=3)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_as_frames_non_finite(bad):
    img = np.ones((3, 20, 20), np.float32)
    img[1, 5, 7] = bad
    with pytest.raises(InputError, match="NaN or infinite") as e:
        as_frames(img)
    one_line(e)


def test_as_frames_float64_overflowing_float32():
    img = np.ones((20, 20))
    img[0, 0] = 1e300
    with pytest.raises(InputError, match="NaN or infinite"):
        as_frames(img)


def test_an_array_stored_time_last_is_told():
    from starloc.io import time_last_note

    assert "read as 128 frames of 128×10 px; if its last axis is time" in time_last_note((128, 128, 10))
    for shape in [(10, 128, 128), (2000, 64, 64), (64, 64, 3), (100, 100, 30), (64, 64), (2, 5, 64, 64)]:
        assert time_last_note(shape) is None, shape


@pytest.mark.parametrize("shape", [(5, 1, 20, 24), (1, 5, 20, 24), (5, 20, 24, 1), (1, 1, 20, 24), (1, 20, 24, 1),
                                   (20, 24, 1)])
def test_a_singleton_channel_axis_is_one_channel(shape):
    """ImageJ hyperstacks with one channel, arrays saved with a trailing axis of 1."""
    data = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    frames = as_frames(data)
    n = int(np.prod(shape)) // (20 * 24)
    assert frames.shape == (n, 1, 20, 24) == frames_shape(data)
    np.testing.assert_array_equal(frames.reshape(-1), data.reshape(-1))  # the order of the pixels is kept


@pytest.mark.parametrize(
    "shape, pattern",
    [
        ((10,), r"shape \(10,\) \(1D\)"),
        ((2, 2, 2, 20, 20), r"shape \(2, 2, 2, 20, 20\) \(5D\)"),
        ((0, 20), r"empty \(shape \(0, 20\)\)"),
        ((4, 0, 20), "empty"),
        ((2, 5, 20, 20), r"\(4D\) and no channel axis"),
    ],
)
def test_as_frames_bad_shapes(shape, pattern):
    with pytest.raises(InputError, match=pattern) as e:
        as_frames(np.zeros(shape, np.float32))
    one_line(e)
    with pytest.raises(InputError):
        frames_shape(np.zeros(shape, np.float32))


def test_as_frames_scalar_and_bad_dtypes():
    with pytest.raises(InputError, match="0D"):
        as_frames(np.float32(3))
    with pytest.raises(InputError, match="data type"):
        as_frames(np.zeros((20, 20), np.complex64))
    with pytest.raises(InputError, match="data type"):
        as_frames(np.array([["a"] * 20] * 20))


def test_as_frames_bad_rgb_argument():
    with pytest.raises(ValueError, match="rgb must be"):
        as_frames(np.zeros((20, 20)), rgb="grey")


def test_as_frames_bool_and_int_are_converted():
    assert as_frames(np.eye(20, dtype=bool)).dtype == np.float32
    big = np.full((20, 20), 2**31 - 1, np.int64)
    assert np.isfinite(as_frames(big)).all()


def test_frames_shape_does_not_read():
    class Lazy:
        shape = (100, 64, 80)
        dtype = np.dtype(np.uint16)

        def __getitem__(self, idx):  # pragma: no cover - must not be called
            raise AssertionError("frames_shape read pixels")

    assert frames_shape(Lazy()) == (100, 1, 64, 80)
    assert frames_shape(np.zeros((32, 32, 3), np.uint8), rgb="gray") == (1, 1, 32, 32)
    assert frames_shape(np.zeros((2, 5, 16, 18)), channel_axis=1) == (2, 5, 16, 18)


# ---------------------------------------------------------------------------- chunks


def test_iter_frame_chunks_matches_as_frames(tmp_path):
    data = RNG.integers(0, 4000, size=(10, 20, 24), dtype=np.uint16)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, data)
    img = read_image(path)
    chunks = list(iter_frame_chunks(img, 4))
    assert [s for s, _ in chunks] == [0, 4, 8]
    assert [c.shape for _, c in chunks] == [(4, 1, 20, 24), (4, 1, 20, 24), (2, 1, 20, 24)]
    assert all(c.dtype == np.float32 for _, c in chunks)
    np.testing.assert_array_equal(np.concatenate([c for _, c in chunks]), as_frames(data))


def test_iter_frame_chunks_reads_lazily():
    """Only one chunk of frames is touched at a time."""
    data = RNG.random((9, 16, 16))

    class Lazy:
        shape = data.shape
        dtype = data.dtype

        def __init__(self):
            self.requests = []

        def __getitem__(self, idx):
            self.requests.append(idx[0])
            return data[idx]

    lazy = Lazy()
    it = iter_frame_chunks(lazy, 2)
    start, first = next(it)
    assert start == 0 and first.shape == (2, 1, 16, 16)
    assert lazy.requests == [slice(0, 2)]
    rest = list(it)
    assert [s for s, _ in rest] == [2, 4, 6, 8]
    assert lazy.requests[-1] == slice(8, 9)


def test_iter_frame_chunks_single_image_channels_and_rgb():
    (start, out), = iter_frame_chunks(np.ones((20, 20)), 8)
    assert start == 0 and out.shape == (1, 1, 20, 20)
    img = RNG.random((2, 5, 16, 18))  # (C, T, H, W)
    chunks = list(iter_frame_chunks(img, 2, channel_axis=0))
    np.testing.assert_array_equal(np.concatenate([c for _, c in chunks]), as_frames(img, channel_axis=0))
    rgb = RNG.integers(0, 255, (3, 20, 20, 3), dtype=np.uint8)
    chunks = list(iter_frame_chunks(rgb, 1, rgb="gray"))
    assert len(chunks) == 3
    np.testing.assert_array_equal(np.concatenate([c for _, c in chunks]), as_frames(rgb, rgb="gray"))
    with pytest.raises(InputError, match="RGB"):
        next(iter_frame_chunks(rgb, 1))
    with pytest.raises(ValueError, match="chunk"):
        next(iter_frame_chunks(img, 0, channel_axis=0))


def test_iter_frame_chunks_nan_in_later_chunk():
    img = np.zeros((6, 16, 16), np.float32)
    img[5, 0, 0] = np.nan
    it = iter_frame_chunks(img, 2)
    next(it)
    next(it)
    with pytest.raises(InputError, match="NaN"):
        next(it)


# ---------------------------------------------------------------------------- crops


def test_validate_crop_ok_and_rounding():
    assert validate_crop((100, 120), (10, 20, 30, 40), 16) == (10, 20, 30, 40)
    assert validate_crop((100, 120), (10.4, 19.5, 30.6, 39.5), 16) == (10, 20, 31, 40)
    assert validate_crop((100, 120), np.array([0, 0, 100, 120]), (16, 16)) == (0, 0, 100, 120)
    assert all(type(v) is int for v in validate_crop((50, 50), (1.0, 2.0, 20.0, 20.0), 16))


@pytest.mark.parametrize("crop", [(10, 10, 0, 20), (10, 10, 20, 0), (10, 10, -5, 20), (10, 10, 0.2, 20)])
def test_validate_crop_empty(crop):
    with pytest.raises(InputError, match="empty") as e:
        validate_crop((100, 100), crop, 16)
    one_line(e)


@pytest.mark.parametrize(
    "crop", [(-1, 10, 20, 20), (10, -3, 20, 20), (90, 10, 20, 20), (10, 85, 20, 20), (200, 200, 20, 20)]
)
def test_validate_crop_outside(crop):
    with pytest.raises(InputError, match="outside the image of size 100x100") as e:
        validate_crop((100, 100), crop, 16)
    assert "rows 0..99, cols 0..99" in one_line(e)


def test_validate_crop_too_small():
    with pytest.raises(InputError, match="minimum 16x16") as e:
        validate_crop((100, 100), (10, 10, 15, 30), 16)
    assert "receptive field" in one_line(e) and "15x30" in str(e.value)
    with pytest.raises(InputError, match="minimum 8x24"):
        validate_crop((100, 100), (10, 10, 10, 20), (8, 24))


@pytest.mark.parametrize("crop", [(1, 2, 3), (1, 2, 3, 4, 5), ("a", 1, 2, 3), (np.nan, 0, 20, 20), None])
def test_validate_crop_malformed(crop):
    with pytest.raises(InputError, match="crop must be"):
        validate_crop((100, 100), crop, 16)


# ---------------------------------------------------------------------------- atomic writes


def test_atomic_write_replaces_and_cleans_up(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    atomic_write(target, lambda p: p.write_text("new"))
    assert target.read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["out.txt"]


def test_atomic_write_failure_keeps_previous_file(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("precious")

    def half_then_fail(p: Path):
        p.write_text("half-writ")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "precious"
    assert sorted(os.listdir(tmp_path)) == ["out.csv"]


def test_atomic_path_failure_without_previous_file(tmp_path):
    target = tmp_path / "new.csv"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_atomic_path_keeps_suffix_for_np_save(tmp_path):
    target = tmp_path / "arr.npy"
    with atomic_path(target) as tmp:
        assert tmp.suffix == ".npy" and tmp.parent == tmp_path
        np.save(tmp, np.arange(3))
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert os.listdir(tmp_path) == ["arr.npy"]


def test_atomic_write_permissions_follow_umask(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write(target, lambda p: p.write_text("x"))
    mask = os.umask(0)
    os.umask(mask)
    assert (target.stat().st_mode & 0o777) == (0o666 & ~mask)


def test_atomic_write_missing_directory(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        atomic_write(tmp_path / "no" / "such" / "f.csv", lambda p: p.write_text("x"))


# ---------------------------------------------------------------------------- points CSV


def test_points_csv_round_trip_exact(tmp_path):
    n = 50
    frames = RNG.integers(0, 1000, n)
    positions = RNG.random((n, 2)) * 512 - 0.5
    positions[0] = (1e-17, 123456789.123456789)
    features = {
        "weight": RNG.random(n).astype(np.float32),
        "score": RNG.normal(size=n),
        "label": np.arange(n),
        "flag": np.arange(n) % 2 == 0,
    }
    features["score"][3] = np.nan
    path = tmp_path / "dets.csv"
    write_points_csv(path, frames, positions, features)
    assert path.read_text().splitlines()[0] == "frame,row,col,weight,score,label,flag"
    f2, p2, feat2 = read_points_csv(path)
    assert f2.dtype == np.int64
    np.testing.assert_array_equal(f2, frames)
    assert p2.dtype == np.float64 and p2.shape == (n, 2)
    assert np.array_equal(p2, positions)  # bit-exact
    assert list(feat2) == ["weight", "score", "label", "flag"]
    assert np.array_equal(feat2["weight"].astype(np.float32), features["weight"])
    assert np.array_equal(feat2["score"], features["score"], equal_nan=True)
    assert feat2["label"].dtype == np.int64
    np.testing.assert_array_equal(feat2["label"], features["label"])
    np.testing.assert_array_equal(feat2["flag"], features["flag"].astype(int))
    assert is_points_csv(path)


def test_points_csv_empty_table(tmp_path):
    path = tmp_path / "none.csv"
    write_points_csv(path, [], np.zeros((0, 2)), {"weight": []})
    assert path.read_text() == "frame,row,col,weight\n"
    frames, positions, features = read_points_csv(path)
    assert frames.shape == (0,) and positions.shape == (0, 2) and features["weight"].shape == (0,)


def test_points_csv_without_features(tmp_path):
    path = tmp_path / "p.csv"
    write_points_csv(path, [0, 2], [[1.5, 2.25], [3.0, 4.0]])
    assert path.read_text() == "frame,row,col\n0,1.5,2.25\n2,3.0,4.0\n"
    frames, positions, features = read_points_csv(path)
    assert features == {}
    np.testing.assert_array_equal(positions, [[1.5, 2.25], [3.0, 4.0]])


def test_write_points_csv_bad_arguments(tmp_path):
    path = tmp_path / "p.csv"
    with pytest.raises(ValueError, match="positions"):
        write_points_csv(path, [0, 1], [[1, 2]])
    with pytest.raises(ValueError, match="frames must be integers"):
        write_points_csv(path, [0.5], [[1, 2]])
    with pytest.raises(ValueError, match=">= 0"):
        write_points_csv(path, [-1], [[1, 2]])
    with pytest.raises(ValueError, match="3 values, expected 1"):
        write_points_csv(path, [0], [[1, 2]], {"w": [1, 2, 3]})
    with pytest.raises(ValueError, match="column name"):
        write_points_csv(path, [0], [[1, 2]], {"a,b": [1]})
    with pytest.raises(ValueError, match="duplicate"):
        write_points_csv(path, [0], [[1, 2]], {"row": [1]})
    assert not path.exists()


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("x,y\n1,2\n", "header must start with frame,row,col"),
        ("", "header must start"),
        ("frame,row,col,w\n0,1,2\n", "2 has 3 fields, expected 4"),
        ("frame,row,col\n0,1,abc\n", "'col' has a non-numeric value"),
        ("frame,row,col\n0.5,1,2\n", "frame column must hold integers"),
        ("frame,row,col,a,a\n0,1,2,3,4\n", "duplicate column"),
        ("frame,row,col\n-1,1,2\n", r"negative frame \(-1\); frames are 0-based"),
        ("frame,row,col\n99999999999999999999,1,2\n", "frame column must hold integers"),
        ("frame,row,col\n0,inf,2\n", "row and col columns must hold finite numbers"),
        ("frame,row,col\n0,1,nan\n", "row and col columns must hold finite numbers"),
    ],
)
def test_read_points_csv_bad_files(tmp_path, text, pattern):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=pattern) as e:
        read_points_csv(path)
    assert "bad.csv" in one_line(e)


def test_read_points_csv_missing(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_points_csv(tmp_path / "none.csv")


def test_read_points_csv_tolerates_bom_crlf_and_float_frames(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbfframe,row,col\r\n1.0,2.5,3.5\r\n\r\n")
    frames, positions, _ = read_points_csv(path)
    assert frames.dtype == np.int64 and frames.tolist() == [1]
    assert positions.tolist() == [[2.5, 3.5]]
    assert is_points_csv(path)


def test_a_windows_spreadsheet_csv_is_read_and_a_binary_file_is_not(tmp_path):
    excel = tmp_path / "excel.csv"
    excel.write_bytes("frame,row,col,size [µm]\r\n0,1,2,0.5\r\n".encode("cp1252"))  # µ is byte 0xB5
    frames, positions, features = read_points_csv(excel)
    assert frames.tolist() == [0] and positions.tolist() == [[1.0, 2.0]] and features["size [µm]"].tolist() == [0.5]
    tifffile.imwrite(tmp_path / "img.tif", np.zeros((5, 16, 16), np.uint16))
    (tmp_path / "img.csv").write_bytes((tmp_path / "img.tif").read_bytes())
    with pytest.raises(InputError, match="not a text"):
        read_points_csv(tmp_path / "img.csv")


def test_quoted_and_capitalized_headers_are_points_tables(tmp_path):
    """R's write.csv quotes every name; spreadsheets capitalize them."""
    quoted = tmp_path / "r.csv"
    quoted.write_text('"frame","row","col","score"\n0,1.5,2.5,0.9\n')
    capital = tmp_path / "x.csv"
    capital.write_text("Frame,Row,Col\n3,4,5\n")
    for path in (quoted, capital):
        assert is_points_csv(path)
    frames, positions, features = read_points_csv(quoted)
    assert frames.tolist() == [0] and positions.tolist() == [[1.5, 2.5]] and features["score"].tolist() == [0.9]
    assert read_points_csv(capital)[0].tolist() == [3]


def test_is_points_csv(tmp_path):
    good = tmp_path / "a.csv"
    good.write_text("frame,row,col\n")
    other = tmp_path / "b.csv"
    other.write_text("frame,x,y\n0,1,2\n")
    thunder = tmp_path / "t.csv"
    thunder.write_text('"id","frame","x [nm]","y [nm]"\n')
    tif = tmp_path / "img.tif"
    tifffile.imwrite(tif, np.zeros((20, 20), np.uint8))
    assert is_points_csv(good)
    assert is_points_csv(str(good))
    assert not is_points_csv(other)
    assert not is_points_csv(thunder)
    assert not is_points_csv(tif)
    assert not is_points_csv(tmp_path / "missing.csv")
    assert not is_points_csv(tmp_path)
    assert not is_points_csv(None)


# ---------------------------------------------------------------------------- model files


def _state_dict():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 3, 1))
    return net, net.state_dict()


def test_model_file_round_trip(tmp_path):
    net, sd = _state_dict()
    config = {"channels": [1, 4, 3], "kernel": 3, "norm": {"mean": np.float32(1.5), "std": 2.0}, "pair": (1, 2)}
    path = tmp_path / "m.pt"
    save_model_file(path, "lodestar", config, sd, {"steps": 100, "crop": np.array([1, 2, 30, 30])})
    raw = torch.load(path, weights_only=True, map_location="cpu")  # plain data, loads safely
    assert raw["format"] == "starloc-model"
    obj = load_model_file(path, kind="lodestar")
    assert obj["format_version"] == 1 and obj["kind"] == "lodestar"
    assert obj["config"] == {"channels": [1, 4, 3], "kernel": 3, "norm": {"mean": 1.5, "std": 2.0}, "pair": (1, 2)}
    assert obj["metadata"]["steps"] == 100 and obj["metadata"]["crop"] == [1, 2, 30, 30]
    assert obj["metadata"]["starloc_version"] == __version__
    assert obj["metadata"]["torch_version"] == torch.__version__
    assert "T" in obj["metadata"]["created"]
    net2, _ = _state_dict()
    net2.load_state_dict(obj["state_dict"])
    for a, b in zip(net.parameters(), net2.parameters()):
        assert torch.equal(a, b)
    assert load_model_file(path)["kind"] == "lodestar"  # kind=None accepts any kind


def test_save_model_file_stores_detached_compact_tensors(tmp_path):
    big = torch.zeros(1000)
    view = big[:3]  # saving a view must not save the whole 1000-element storage
    path = tmp_path / "m.pt"
    save_model_file(path, "x", {}, {"w": view}, {})
    assert path.stat().st_size < 3000
    t = load_model_file(path)["state_dict"]["w"]
    assert t.shape == (3,) and not t.requires_grad


def test_save_model_file_rejects_non_plain_data(tmp_path):
    path = tmp_path / "m.pt"
    with pytest.raises(TypeError, match=r"config\['obj'\]"):
        save_model_file(path, "lodestar", {"obj": object()}, {}, {})
    with pytest.raises(TypeError, match="state_dict"):
        save_model_file(path, "lodestar", {}, {"w": np.zeros(3)}, {})
    with pytest.raises(ValueError, match="kind"):
        save_model_file(path, "", {}, {}, {})
    assert not path.exists()


def test_load_model_missing(tmp_path):
    with pytest.raises(ModelFileError, match="not found") as e:
        load_model_file(tmp_path / "none.pt")
    assert "none.pt" in one_line(e)


def test_load_model_directory(tmp_path):
    with pytest.raises(ModelFileError, match="not a regular file"):
        load_model_file(tmp_path)


def test_load_model_unreadable(tmp_path, monkeypatch):
    path = tmp_path / "locked.pt"
    path.write_bytes(b"x")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(torch, "load", denied)  # root reads any file, so the refusal is simulated
    with pytest.raises(ModelFileError, match="cannot read model file .*locked.pt.*Permission denied"):
        load_model_file(path)


@pytest.mark.parametrize("content", [b"", b"hello world", b"\x00" * 100, b"PK\x03\x04garbage"])
def test_load_model_not_a_torch_file(tmp_path, content):
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match="junk.pt") as e:
        load_model_file(path)
    assert "cannot read model file" in one_line(e)


def test_load_model_truncated(tmp_path):
    _, sd = _state_dict()
    path = tmp_path / "cut.pt"
    save_model_file(path, "lodestar", {}, sd, {})
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(ModelFileError, match="truncated") as e:
        load_model_file(path)
    assert "cut.pt" in one_line(e)


def test_load_model_corrupt_member(tmp_path):
    _, sd = _state_dict()
    path = tmp_path / "bad.pt"
    save_model_file(path, "lodestar", {}, sd, {})
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    pkl = next(n for n in members if n.endswith("data.pkl"))
    members[pkl] = b"\x80\x02garbage that is not a pickle"
    with zipfile.ZipFile(path, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)
    with pytest.raises(ModelFileError, match="bad.pt") as e:
        load_model_file(path)
    one_line(e)


def test_load_model_foreign_state_dict(tmp_path):
    _, sd = _state_dict()
    path = tmp_path / "plain.pt"
    torch.save(sd, path)
    with pytest.raises(ModelFileError, match="not a starloc model file") as e:
        load_model_file(path)
    assert "plain.pt" in one_line(e)
    torch.save(torch.zeros(3), path)
    with pytest.raises(ModelFileError, match="not a starloc model file"):
        load_model_file(path)


class _Boom:
    """Unpickling this would run code."""

    def __reduce__(self):
        return (os.system, ("touch SHOULD_NOT_EXIST",))


class _Plain:
    def __init__(self):
        self.x = 1


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_load_model_pickle_with_code_is_not_executed(tmp_path, monkeypatch, protocol):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"format": "starloc-model", "payload": _Boom()}, fh, protocol=protocol)
    with pytest.raises(ModelFileError, match="evil.pt") as e:
        load_model_file(path)
    one_line(e)
    assert not (tmp_path / "SHOULD_NOT_EXIST").exists()


def test_load_model_torch_file_with_class_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "classy.pt"
    torch.save({"format": "starloc-model", "format_version": 1, "obj": _Plain(), "boom": _Boom()}, path)
    with pytest.raises(ModelFileError, match="Python objects other than plain data") as e:
        load_model_file(path)
    assert "classy.pt" in one_line(e)
    assert not (tmp_path / "SHOULD_NOT_EXIST").exists()


def _write_raw_model(path, **overrides):
    payload = {
        "format": "starloc-model",
        "format_version": 1,
        "kind": "deeploco",
        "config": {},
        "state_dict": {"w": torch.ones(2)},
        "metadata": {},
    }
    payload.update(overrides)
    torch.save(payload, path)


def test_load_model_wrong_kind(tmp_path):
    path = tmp_path / "dl.pt"
    _write_raw_model(path)
    with pytest.raises(ModelFileError, match="is a deeploco model, expected lodestar") as e:
        load_model_file(path, kind="lodestar")
    one_line(e)
    assert load_model_file(path, kind="deeploco")["kind"] == "deeploco"


def test_load_model_newer_format(tmp_path):
    path = tmp_path / "future.pt"
    _write_raw_model(path, format_version=2)
    with pytest.raises(ModelFileError, match="newer napari-starloc.*version 2.*upgrade"):
        load_model_file(path)


@pytest.mark.parametrize(
    "overrides", [{"format_version": "1"}, {"format_version": 0}, {"kind": None}, {"state_dict": []}]
)
def test_load_model_damaged_header(tmp_path, overrides):
    path = tmp_path / "odd.pt"
    _write_raw_model(path, **overrides)
    with pytest.raises(ModelFileError, match="odd.pt"):
        load_model_file(path)


def test_errors_are_starloc_errors():
    assert issubclass(InputError, StarlocError) and issubclass(InputError, ValueError)
    assert issubclass(ModelFileError, StarlocError)


def test_a_tiff_of_several_image_series_says_only_the_first_is_read(tmp_path):
    from starloc.deeploco.stack import open_stack

    path = tmp_path / "two.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as writer:
        writer.write(np.zeros((3, 32, 32), np.uint16), metadata={"axes": "TYX"})
        writer.write(np.ones((5, 32, 32), np.uint16), metadata={"axes": "TYX"})
    told = r"holds 2 image series; only the first, of shape \(3, 32, 32\), is read \(the others: \(5, 32, 32\)\)"
    with pytest.warns(StarlocWarning, match=told):
        assert read_image(path).shape == (3, 32, 32)
    with pytest.warns(StarlocWarning, match=told), open_stack(path) as src:
        assert src.shape == (3, 32, 32)


def test_a_folder_of_several_series_is_refused_not_interleaved(tmp_path):
    from starloc.lazy_tiff import folder_series_problem

    frames = [np.full((8, 8), i, np.uint16) for i in range(6)]
    # Micro-Manager 2: two channels at each time point
    mm2 = [f"img_channel{c:03d}_position000_time{t:09d}_z000.tif" for t in range(3) for c in range(2)]
    with pytest.raises(InputError, match=r"2 numbers change.*values 0, 1 again.*folder of their own"):
        read_image(_frames_folder(tmp_path / "mm2", frames, mm2))
    # Micro-Manager 1.4: the channel is named
    mm14 = [f"img_{t:09d}_{c}_000.tif" for t in range(3) for c in ("GFP", "DAPI")]
    with pytest.raises(InputError, match=r"2 series named 'img_N_\w+_N.tif' \(3 files\), 'img_N_\w+_N.tif'") as err:
        read_image(_frames_folder(tmp_path / "mm14", frames, mm14))
    assert "gfp" in str(err.value) and "dapi" in str(err.value)
    # one series: a frame index and a time stamp both change, neither repeats; stray single files
    assert folder_series_problem([f"frame{t}_{1000 + 37 * t}ms.tif" for t in range(6)]) is None
    assert folder_series_problem(["dark.tif", *[f"f{t}.tif" for t in range(5)], "bright.tif"]) is None
    assert folder_series_problem([f"img_{t:09d}_Default_000.tif" for t in range(5)]) is None
    assert folder_series_problem(["a.tif"]) is None


def test_folder_notes_take_the_number_that_changes():
    from starloc.lazy_tiff import folder_order_notes

    # Micro-Manager: the frame number in the middle, a constant z index last
    assert folder_order_notes([f"img_{t:09d}_Default_000.tif" for t in range(4)]) == []
    assert folder_order_notes([f"img_{t}_ch1.tif" for t in (1, 2, 3)]) == []
    assert "5 follows 2" in folder_order_notes([f"img_{t}_ch1.tif" for t in (1, 2, 5)])[0]
    assert folder_order_notes([f"t{t}_z{z}.tif" for t in (1, 5) for z in (1, 2)]) == []  # two change: no guess
