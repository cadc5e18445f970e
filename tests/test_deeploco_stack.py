"""DeepLoco on whole stacks: tiling without seam duplicates, lazy reading, bounded memory, bad input."""

import warnings

import numpy as np
import pytest
import tifffile
import torch

from starloc.deeploco import EMCCD, Gaussian2DPSF, Simulator
from starloc.deeploco.model import DeepLoco
from starloc.deeploco.network import CELL, DeepLocoConfig
from starloc.deeploco.stack import (
    FrameSource,
    StackProgress,
    iter_localize_stack,
    localize_stack,
    open_stack,
    plan_tiles,
)
from starloc.deeploco.stack_checks import (check_hot_pixels, check_noise, check_photons, check_saturation,
                                          check_uneven_background)
from starloc.errors import InputError, StarlocWarning
from tests.conftest import simulated_adu_stack

pytestmark = pytest.mark.usefixtures("one_thread")

PS = 100.0
SPOT = 1000.0  # photons of a one-pixel "spot" the fake network detects
BG = 10.0


def tiny(arch="paper", frame_size=32, camera=None, seed=0):
    cfg = DeepLocoConfig(frame_size=frame_size, n_candidates=8, conv_widths=(4, 8, 8), fc_width=64,
                         pixel_size=PS, architecture=arch)
    return DeepLoco.new(cfg, seed=seed, camera=camera)


def spot_model(arch="paper", bias_nm=0.0, ghost=False, seen=None):
    """A model whose forward returns the exact centres of the bright pixels of each tile (weight 1).

    ``bias_nm``: report each spot that much closer to the tile's centre (along x and y), with a
    confidence that falls with the distance from the centre (so that a spot on a seam can be
    claimed by two tiles). ``ghost``: also a candidate at the tile's bottom-right pixel.
    ``seen``: a list that receives every batch of tiles. For the cellular architectures the
    candidates are laid out as theirs are: one per 4x4-pixel cell (row-major), a spot's in the
    cell that holds it, weight 0 elsewhere."""
    model = tiny(arch)
    cellular = model.config.cellular

    def forward(tiles):
        if seen is not None:
            seen.append(tiles.clone())
        B, _, h, w = tiles.shape
        K = (h // CELL) * (w // CELL) if cellular else 64
        pos = torch.zeros(B, K, 2)
        wt = torch.zeros(B, K)
        for b in range(B):
            rows, cols = torch.nonzero(tiles[b, 0] > SPOT / 2, as_tuple=True)
            items = [((c.item() + 0.5) * PS, (r.item() + 0.5) * PS) for r, c in zip(rows, cols)]
            if ghost:
                items.append(((w - 0.5) * PS, (h - 0.5) * PS))
            for k, (x, y) in enumerate(items[:K]):
                if cellular:
                    k = int(y // (CELL * PS)) * (w // CELL) + int(x // (CELL * PS))
                    assert wt[b, k] == 0, "two spots in one cell"
                cx, cy = w * PS / 2, h * PS / 2
                x += bias_nm * np.sign(cx - x)
                y += bias_nm * np.sign(cy - y)
                pos[b, k] = torch.tensor([x, y])
                wt[b, k] = 1.0 - 1e-5 * np.hypot(x - cx, y - cy) if bias_nm else 1.0
        return pos, wt

    model.forward = forward
    model.inference_net = lambda: forward  # the stack runs the inference network
    return model


def spot_stack(shape=(2, 80, 72), step=5, offset=2):
    T, H, W = shape
    frames = np.full(shape, BG, np.float32)
    truth = []
    for t in range(T):
        for r in range(offset + t, H, step):
            for c in range(offset, W, step):
                frames[t, r, c] = SPOT
                truth.append((t, (c + 0.5) * PS, (r + 0.5) * PS))
    return frames, np.array(truth)


def as_rows(table):
    return sorted(zip(table["frame"].tolist(), table["x"].tolist(), table["y"].tolist()))


def test_tile_plan_covers_the_frame_and_owns_every_position_once():
    cfg = tiny().config
    plan = plan_tiles((80, 72), cfg)
    assert plan.tile == (32, 32) and plan.pad == (0, 0) and plan.overlap == 16
    for starts, own, length in ((plan.y_starts, plan.y_own, 80), (plan.x_starts, plan.x_own, 72)):
        assert starts[0] == 0 and starts[-1] == length - 32
        assert all(b - a <= 32 - 16 for a, b in zip(starts[:-1], starts[1:]))
        assert own[0][0] == -np.inf and own[-1][1] == np.inf
        assert all(a[1] == b[0] for a, b in zip(own[:-1], own[1:]))  # contiguous, no overlap
        for s, (lo, hi) in zip(starts, own):  # each tile owns only positions inside itself
            assert max(lo, 0) >= s and min(hi, length) <= s + 32
    small = plan_tiles((20, 24), cfg)
    assert small.pad == (12, 8) and small.n_tiles == 1 and small.y_own == ((-np.inf, 20.0),)
    fcn = tiny("fcn").config
    assert plan_tiles((80, 72), fcn).tile == (80, 72)
    assert plan_tiles((300, 92), fcn).tile == (300, 92)  # whole frames up to 512 px: no seams
    # a side that is not a multiple of 4: the side rounded down, then a strip flush with the end
    # (2 px left over + 20 px of context, rounded up to 24), owning the half beyond its middle
    odd = plan_tiles((300, 90), fcn)
    assert odd.tile == (300, 88) and odd.pad == (0, 0) and odd.overlap == 20
    assert odd.x_starts == (0, 66) and odd.x_sizes == (88, 24) and odd.x_own == ((-np.inf, 78.0), (78.0, np.inf))
    assert odd.y_starts == (0,) and odd.y_sizes == (300,)
    big = plan_tiles((1100, 90), fcn)
    # 3 tiles of 380 px cover 1100 px with 20 px overlaps: the fewest pixels of any side in 128..512
    assert big.tile == (380, 88) and len(big.y_starts) == 3 and big.overlap == 20
    assert big.y_starts[0] == 0 and big.y_starts[-1] + 380 == 1100
    # tiles start on the network's 4 px cells (the last one flush with the end), so each pools
    # the cells the whole frame would: the network is equivariant only to whole cells
    # (test_fcn_is_translation_equivariant_by_whole_cells); a 2048 px side once got tiles at 405,
    # 810, 1215 px, whose localizations moved by 22-28 nm
    assert all(s % 4 == 0 for s in big.y_starts[:-1])
    for side in (1024, 2048, 4096):
        starts = plan_tiles((side, 90), fcn).y_starts
        assert len(starts) > 2 and all(s % 4 == 0 for s in starts) and starts[-1] + plan_tiles((side, 90), fcn).tile[0] == side
    wide = plan_tiles((2048, 90), fcn, tile=300)
    assert all(s % 4 == 0 for s in wide.y_starts) and min(np.diff(wide.y_starts)) <= 300 - wide.overlap
    assert max(np.diff(wide.y_starts)) <= 300 - wide.overlap
    assert plan_tiles((300, 90), fcn, tile=62).tile == (64, 64)
    # a tile longer than an axis takes that axis whole, as without --tile: not padded
    assert plan_tiles((300, 90), fcn, tile=400) == odd
    assert plan_tiles((300, 90), fcn, tile=200).x_sizes == odd.x_sizes
    with pytest.raises(InputError, match="exactly 32"):
        plan_tiles((80, 72), cfg, tile=48)


@pytest.mark.parametrize("arch, tile", [("paper", None), ("fcn", 32)])
def test_spots_on_and_near_seams_are_found_exactly_once(arch, tile):
    frames, truth = spot_stack()
    plan = plan_tiles((80, 72), tiny(arch).config, tile=tile)
    assert plan.n_tiles > 4
    # some spots lie on an own-region boundary (x = 22.5 px is a pixel centre), or half a pixel
    # from it (fully convolutional tiles start on 4 px cells: the boundary is then at 22 px)
    assert any(lo == (22.5 if arch == "paper" else 22.0) for lo, _ in plan.x_own)
    table = localize_stack(spot_model(arch), frames, input_units="photons", tile=tile, chunk_frames=1)
    assert as_rows(table) == sorted(map(tuple, truth.tolist()))
    assert set(table) == {"frame", "x", "y", "confidence"} and table["frame"].dtype == np.int64
    order = np.lexsort((table["x"], table["frame"]))
    assert np.array_equal(order, np.arange(len(order)))


def test_safety_merge_removes_a_seam_duplicate_and_keeps_the_more_confident():
    frames, truth = spot_stack(shape=(1, 80, 72))
    model = spot_model(bias_nm=0.5)
    kept = localize_stack(model, frames, input_units="photons")
    assert len(kept["x"]) == len(truth)
    no_merge = localize_stack(model, frames, input_units="photons", merge_distance=0)
    assert len(no_merge["x"]) > len(truth)  # the spots on x = 22.5 px were claimed by two tiles
    for t, x, y in truth:  # every spot within the bias of its truth, once
        close = np.hypot(kept["x"] - x, kept["y"] - y) <= 0.5 * np.sqrt(2) + 1e-9
        assert close.sum() == 1


@pytest.mark.parametrize("arch, shape, tile", [("paper", (18, 22), (32, 32)), ("fcn", (14, 10), (16, 16))])
def test_small_frames_are_padded_with_the_median_and_the_padding_is_dropped(arch, shape, tile):
    frames, truth = spot_stack(shape=(2, *shape), step=6)
    seen = []
    table = localize_stack(spot_model(arch, ghost=True, seen=seen), frames, input_units="photons")
    assert as_rows(table) == sorted(map(tuple, truth.tolist()))  # the ghost in the padding is gone
    tiles = torch.cat(seen)
    assert tuple(tiles.shape[-2:]) == tile
    H, W = shape
    for t in range(2):
        med = float(np.median(frames[t]))
        assert torch.all(tiles[t, 0, H:, :] == med) and torch.all(tiles[t, 0, :, W:] == med)
        assert torch.equal(tiles[t, 0, :H, :W], torch.from_numpy(frames[t]))


def test_a_side_not_a_multiple_of_4_is_tiled_flush_with_both_ends_not_padded():
    frames, truth = spot_stack(shape=(2, 50, 45), step=5, offset=4)  # spots in the last row and column
    assert frames[0, 49, :].max() == SPOT and frames[0, :, 44].max() == SPOT
    model = spot_model("fcn", seen=(seen := []))
    plan = plan_tiles((50, 45), model.config)
    assert plan.pad == (0, 0) and plan.y_sizes[0] == 48 and plan.x_sizes[0] == 44 and plan.n_tiles == 4
    assert plan.y_starts[-1] + plan.y_sizes[-1] == 50 and plan.x_starts[-1] + plan.x_sizes[-1] == 45
    table = localize_stack(model, frames, input_units="photons")
    assert as_rows(table) == sorted(map(tuple, truth.tolist()))  # each spot once, none lost at the edges
    windows = [frames[t, y:y + h, x:x + w] for t in range(2) for y, x, _, _, h, w in plan.tiles()]
    tiles = [tile[0].numpy() for batch in seen for tile in batch]
    # the network saw exactly these pieces of the frames, flush with their edges: no padding
    assert sorted(map(np.ndarray.tobytes, tiles)) == sorted(map(np.ndarray.tobytes, windows))


@pytest.mark.parametrize("arch", ["paper", "fcn"])
def test_a_frame_of_the_network_size_gives_exactly_localize(arch):
    sim = Simulator(Gaussian2DPSF(130.0), camera=EMCCD.smlm2016(), frame_shape=(32, 32), n_range=(1, 3),
                    background_range=(20, 40))
    frames, _ = sim.sample(6, torch.Generator().manual_seed(0))
    model = tiny(arch, camera=EMCCD.smlm2016())
    ref = model.localize(frames, threshold=0.0, batch_size=3)
    assert len(ref["x"]) > 0
    got = localize_stack(model, frames[:, 0].numpy(), input_units="photons", threshold=0.0, batch_size=3,
                         chunk_frames=3)
    assert list(got) == list(ref) and all(np.array_equal(got[k], ref[k]) for k in ref)
    # in ADU through the model's camera: the same up to float rounding of the round trip
    adu = EMCCD.smlm2016().to_adu(frames[:, 0]).numpy()
    got_adu = localize_stack(model, adu, threshold=0.0, batch_size=3, chunk_frames=3)
    assert np.array_equal(got_adu["frame"], ref["frame"])
    assert np.allclose(got_adu["x"], ref["x"], atol=1e-2) and np.allclose(got_adu["y"], ref["y"], atol=1e-2)


@pytest.fixture
def adu_stack():
    return simulated_adu_stack(5, (40, 52), (2, 5), seed=1)


def test_lazy_tiff_reading_gives_the_in_memory_result(tmp_path, adu_stack, monkeypatch):
    model = tiny(camera=EMCCD.smlm2016())
    kw = dict(threshold=0.0, chunk_frames=2, batch_size=8)
    ref = localize_stack(model, adu_stack, **kw)
    assert len(ref["x"]) > 0
    tifffile.imwrite(tmp_path / "plain.tif", adu_stack)
    tifffile.imwrite(tmp_path / "zip.tif", adu_stack, compression="zlib")
    tifffile.imwrite(tmp_path / "lzw.tif", adu_stack, compression="lzw")
    np.save(tmp_path / "stack.npy", adu_stack)
    with open_stack(tmp_path / "plain.tif") as src:  # memory-mapped: nothing read yet
        assert src.shape == (5, 40, 52) and src.dtype == np.uint16
    keys = []
    real = tifffile.TiffFile.asarray

    def spy(self, *args, **kwargs):
        keys.append(kwargs.get("key"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(tifffile.TiffFile, "asarray", spy)
    for name in ("plain.tif", "zip.tif", "lzw.tif", "stack.npy"):
        got = localize_stack(model, tmp_path / name, **kw)
        assert all(np.array_equal(got[k], ref[k]) for k in ref), name
    # the compressed file was read page range by page range, never the whole series
    assert keys and all(isinstance(k, range) and len(k) <= 2 for k in keys)
    sub = localize_stack(model, tmp_path / "zip.tif", frames=slice(1, 4), **kw)
    keep = (ref["frame"] >= 1) & (ref["frame"] < 4)
    assert np.array_equal(sub["frame"], ref["frame"][keep]) and set(sub["frame"].tolist()) <= {1, 2, 3}


class Recorder:
    """A lazy array that records how many frames each read asks for."""

    def __init__(self, data):
        self.data, self.shape, self.dtype, self.sizes = data, data.shape, data.dtype, []

    def __getitem__(self, key):
        start, stop, _ = key.indices(self.shape[0])
        self.sizes.append(stop - start)
        return self.data[key]


def test_memory_is_bounded_by_the_chunk_and_progress_is_reported(adu_stack):
    model = spot_model()
    model.camera = EMCCD.smlm2016()
    lazy = Recorder(adu_stack)
    seen = []
    gen = iter_localize_stack(model, lazy, chunk_frames=2)
    assert lazy.sizes == []  # nothing is read before the generator runs
    table = None
    while True:
        try:
            seen.append(next(gen))
        except StopIteration as stop:
            table = stop.value
            break
    assert lazy.sizes == [2, 2, 1]
    assert all(isinstance(p, StackProgress) for p in seen)
    assert [p.frames_done for p in seen] == [2, 4, 5] and {p.frames_total for p in seen} == {5}
    assert seen[-1].localizations == len(table["x"])
    lazy.sizes.clear()
    got = []
    localize_stack(model, lazy, chunk_frames=3, frames=range(1, 5), progress=got.append)
    assert lazy.sizes == [3, 1] and [p.frames_done for p in got] == [3, 4]
    # closing the generator early stops reading
    lazy.sizes.clear()
    gen = iter_localize_stack(model, lazy, chunk_frames=1)
    next(gen)
    gen.close()
    assert lazy.sizes == [1]


def test_a_single_frame_and_a_frame_source():
    model = spot_model()
    frames, truth = spot_stack(shape=(1, 40, 36))
    one = localize_stack(model, frames[0], input_units="photons")
    assert as_rows(one) == sorted(map(tuple, truth.tolist()))
    src = open_stack(frames)
    assert isinstance(src, FrameSource) and open_stack(src) is src and src.frame_shape == (40, 36)


def test_bad_input_raises_input_error(tmp_path, adu_stack):
    model = tiny(camera=EMCCD.smlm2016())
    ok = adu_stack.astype(np.float32)

    def bad(source, match, **kw):
        with pytest.raises(InputError, match=match):
            localize_stack(model, source, **kw)

    bad(np.zeros(100, np.float32), "1D")
    bad(np.zeros((2, 2, 40, 40), np.float32), "4D")
    bad(np.zeros((40, 40, 3), np.uint8), "RGB")
    bad(np.zeros((0, 40, 40), np.float32), "empty")
    bad(np.array([["a"]]), "data type")
    nan = ok.copy()
    nan[3, 5, 5] = np.nan
    bad(nan, "frame 3 .*NaN")
    inf = ok.copy()
    inf[0, 1, 1] = np.inf
    bad(inf, "frame 0 .*NaN or inf")
    bad(np.zeros((2, 40, 40), np.uint16), "far below the camera baseline.*wrong camera settings")
    bad(ok, "pixel-size mismatch.*160", pixel_size=160)
    bad(ok, "absurd", pixel_size=-5)
    bad(ok, "absurd", pixel_size=float("nan"))
    bad(ok, "selects no frame", frames=slice(10, 20))
    bad(ok, "input units", input_units="volts")
    bad(ok, "batch size must be >= 1", batch_size=0)
    bad(tmp_path / "missing.tif", "not found")
    (tmp_path / "garbage.tif").write_bytes(b"not a tiff at all")
    bad(tmp_path / "garbage.tif", "not a valid TIFF")
    (tmp_path / "x.png").write_bytes(b"")
    bad(tmp_path / "x.png", "unsupported file type")
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((40, 40, 3), np.uint8), photometric="rgb")
    bad(tmp_path / "rgb.tif", "RGB")
    with pytest.warns(StarlocWarning, match=r"read as 40 frames of 52×8 px; if its last axis is time"):
        localize_stack(model, np.moveaxis(np.concatenate([ok, ok[:3]]), 0, -1))  # (40, 52, 8)
    tifffile.imwrite(tmp_path / "planar.tif", np.zeros((3, 40, 40), np.uint8), photometric="rgb",
                     planarconfig="separate", metadata=None)
    bad(tmp_path / "planar.tif", r"3 colour samples \(RGB\)")
    tifffile.imwrite(tmp_path / "two.tif", adu_stack[:2], imagej=True, metadata={"axes": "CYX", "ImageJ": "1.54f"})
    with pytest.warns(StarlocWarning, match=r"names its first axis C \(2 channels \(axes CYX.*read as frames"):
        localize_stack(model, tmp_path / "two.tif")
    # tifffile states any 3D array it is given without axes as channels: not a statement
    tifffile.imwrite(tmp_path / "plain_ij.tif", adu_stack, imagej=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StarlocWarning)
        localize_stack(model, tmp_path / "plain_ij.tif")
    tifffile.imwrite(tmp_path / "tcyx.tif", np.stack([adu_stack, adu_stack], 1), ome=True, metadata={"axes": "TCYX"})
    bad(tmp_path / "tcyx.tif", r"2 channels \(axes TCYX")
    no_camera = tiny()
    with pytest.raises(InputError, match="no camera"):
        localize_stack(no_camera, ok)
    assert len(localize_stack(model, ok, pixel_size=100.0)["frame"]) >= 0  # the model's size is fine


def test_pixel_size_from_tiff_metadata_is_checked(tmp_path, adu_stack):
    model = tiny(camera=EMCCD.smlm2016())
    tifffile.imwrite(tmp_path / "ij.tif", adu_stack, imagej=True, resolution=(1 / 0.16, 1 / 0.16),
                     metadata={"unit": "um"})
    with open_stack(tmp_path / "ij.tif") as src:
        assert src.pixel_size_nm == pytest.approx(160.0)
    with pytest.raises(InputError, match="metadata .* say 160 nm/px"):
        localize_stack(model, tmp_path / "ij.tif")
    localize_stack(model, tmp_path / "ij.tif", pixel_size=100.0)  # an explicit pixel size wins


def test_background_outside_the_training_range_warns_once_and_still_localizes():
    frames, truth = spot_stack()  # background BG = 10 photons/px
    model = spot_model()
    model.metadata = {"training": {"simulator": {"background_range": [20.0, 200.0]}}}
    with warnings.catch_warnings():
        warnings.simplefilter("error", StarlocWarning)  # 10 is within a factor 2 of 20: no warning
        localize_stack(model, frames, input_units="photons", threshold=0.5)
    with pytest.warns(StarlocWarning, match=r"median 500 photons/px .* training range 20-200") as caught:
        table = localize_stack(model, frames * 50, input_units="photons", threshold=0.5, chunk_frames=1)
    assert len(caught) == 1  # checked on the first chunk only
    assert len(table["frame"]) == len(truth)  # a warning, not a refusal
    with pytest.warns(StarlocWarning, match="median 3 photons/px"):
        localize_stack(model, frames * 0.3, input_units="photons", threshold=0.1)
    model.metadata = {}  # a model file that does not record its training range: nothing to compare
    with warnings.catch_warnings():
        warnings.simplefilter("error", StarlocWarning)
        localize_stack(model, frames * 50, input_units="photons", threshold=0.5)


def sparse_spots(photons, frames=8, size=64, sigma=1.3, background=BG, seed=0):
    """Frames in photons with 16 Gaussian spots each, 16 px apart (isolated), Poisson noise."""
    rows, cols = np.mgrid[:size, :size]
    image = np.full((size, size), background)
    for r in range(8, size, 16):
        for c in range(8, size, 16):
            spot = np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * sigma**2)) / (2 * np.pi * sigma**2)
            image = image + photons * spot
    return np.random.default_rng(seed).poisson(image, size=(frames, size, size)).astype(np.float32)


def test_emitters_brighter_or_dimmer_than_the_training_range_are_told():
    model = spot_model()
    model.metadata = {"training": {"simulator": {"photons_range": [500.0, 20000.0]}}}
    with warnings.catch_warnings():
        warnings.simplefilter("error", StarlocWarning)
        brighter, dimmer = check_photons(sparse_spots(3000.0), model, "s")
    assert brighter == 0 and dimmer == 0
    with pytest.warns(StarlocWarning, match=r"100% of the isolated emitters .* of s \(median 4\d\d\d\d photons\) are "
                                            r"brighter than any the model was trained on \(500-20000 photons\)"):
        assert check_photons(sparse_spots(40000.0), model, "s") == (1.0, 0.0)
    with pytest.warns(StarlocWarning, match=r"dimmer than any the model was trained on .* expect missed emitters"):
        check_photons(sparse_spots(300.0, background=2.0), model, "s")
    # too few isolated spots to judge, or no training range in the model file: not checked
    assert check_photons(sparse_spots(40000.0, frames=1)[:, :16, :16], model, "s") is None
    model.metadata = {}
    assert check_photons(sparse_spots(40000.0), model, "s") is None
    # localizing checks the first chunk and still localizes
    model.metadata = {"training": {"simulator": {"photons_range": [500.0, 20000.0]}}}
    with pytest.warns(StarlocWarning, match="brighter than any") as caught:
        localize_stack(model, sparse_spots(40000.0), input_units="photons", chunk_frames=2)
    assert len([w for w in caught if "brighter" in str(w.message)]) == 1


def test_a_model_trained_on_flat_backgrounds_is_told_of_a_background_that_varies():
    frames = sparse_spots(3000.0, background=100.0)  # 64 x 64 px, 16 spots each
    ramp = frames + np.linspace(-50.0, 50.0, 64, dtype=np.float32)[None, None, :]
    model = spot_model()
    for flat in ({"background_variation": 0.0}, {"photons_range": [500.0, 20000.0]}):  # the latter: an older file
        model.metadata = {"training": {"simulator": flat}}
        with warnings.catch_warnings():
            warnings.simplefilter("error", StarlocWarning)
            assert check_uneven_background(frames, model, "s") < 0.05
        with pytest.warns(StarlocWarning, match=r"background of s varies over the frame by about \+-4\d% of its "
                                                r"level .* trained on flat backgrounds"):
            assert check_uneven_background(ramp, model, "s") > 0.3
    # trained with a varying background, or no training record: nothing to say
    for metadata in ({"training": {"simulator": {"background_variation": 0.5}}}, {}):
        model.metadata = metadata
        assert check_uneven_background(ramp, model, "s") is None
    model.metadata = {"training": {"simulator": {"background_variation": 0.0}}}
    assert check_uneven_background(ramp[:, :16, :16], model, "s") is None  # one block: no map
    with pytest.warns(StarlocWarning, match="trained on flat backgrounds"):
        localize_stack(model, ramp, input_units="photons", chunk_frames=4)


def test_hot_pixels_are_told_and_beads_are_not():
    frames = sparse_spots(3000.0, frames=20, background=100.0)  # 16 spots at the same places in every frame
    rows, cols = np.mgrid[:64, :64]  # and a bead of 50000 photons in every frame: a spot, not a hot pixel
    frames += 50000.0 * np.exp(-((rows - 10.3) ** 2 + (cols - 30.6) ** 2) / (2 * 1.3**2)) / (2 * np.pi * 1.3**2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StarlocWarning)
        assert check_hot_pixels(frames, "s") == 0
    hot = frames.copy()
    hot[:, [3, 40, 60], [50, 5, 33]] += 400.0
    with pytest.warns(StarlocWarning, match=r"3 pixel\(s\) of s stand 4\d\d photons \(median\) above their neighbours "
                                            r"in every one of its first 20 frames: hot pixels"):
        assert check_hot_pixels(hot, "s") == 3
    assert check_hot_pixels(hot[:15], "s") is None  # too few frames for the median to hide the emitters
    with pytest.warns(StarlocWarning, match="hot pixels"):
        localize_stack(spot_model(), hot, input_units="photons", chunk_frames=20)


def test_pixels_at_the_maximum_of_their_integer_type_are_told(adu_stack):
    assert adu_stack.dtype == np.uint16
    with warnings.catch_warnings():
        warnings.simplefilter("error", StarlocWarning)
        assert check_saturation(adu_stack, "s") == 0
        assert check_saturation(adu_stack.astype(np.float32), "s") is None  # float data have no maximum
    spiked = adu_stack.copy()
    spiked[[0, 0, 3], [2, 9, 30], [5, 7, 11]] = 65535
    with pytest.warns(StarlocWarning, match=r"3 pixel\(s\) in 2 of the first 5 frames of s sit at 65535 ADU, the "
                                            r"maximum of its uint16 data: saturated pixels or cosmic rays"):
        assert check_saturation(spiked, "s") == 3
    with pytest.warns(StarlocWarning, match="saturated pixels or cosmic rays"):
        localize_stack(tiny(camera=EMCCD.smlm2016()), spiked, threshold=0.0)


def test_frames_whose_noise_does_not_fit_the_camera_settings_are_told():
    from starloc.deeploco.camera import SCMOS, camera_preset

    cam = EMCCD.smlm2016()
    sim = Simulator(Gaussian2DPSF(130.0), cam, frame_shape=(64, 64), density=1.0, photons_range=(1000, 7000),
                    background_range=(100, 100))
    g = torch.Generator().manual_seed(1)
    adu = cam.sample(sim.expected(sim.sample_emitters(16, g)), g)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_noise(cam.to_photons(adu).numpy(), cam, "s") == pytest.approx(1.0, abs=0.1)
    wrong = camera_preset("smlm2016", e_per_adu=4.5)  # 10x too few electrons per ADU: 10x too few photons
    told = r"~0\.3x less noisy than the camera settings predict \(EMCCD\(qe=0\.9, em_gain=300\.0, e_per_adu=4\.5"
    with pytest.warns(StarlocWarning, match=told):
        check_noise(wrong.to_photons(adu).numpy(), wrong, "s")
    with warnings.catch_warnings():  # noisier is not told: dense frames with the right settings read so too
        warnings.simplefilter("error")
        assert check_noise(SCMOS().to_photons(adu).numpy(), SCMOS(), "s") > 2
    # a background under 10 photons/px is not judged (an EMCCD's noise is not Gaussian there)
    assert check_noise(np.zeros((3, 8, 8)), cam, "s") is None


def test_pixel_sizes_stated_in_tiff_metadata(tmp_path, adu_stack):
    from starloc.tiff_metadata import tiff_pixel_size, tiff_pixel_size_problem

    model = tiny(camera=EMCCD.smlm2016())  # 100 nm pixels
    frames = adu_stack.astype(np.uint16)

    def ome(name, **size):
        tifffile.imwrite(tmp_path / name, frames, ome=True, metadata={"axes": "TYX", **size})
        return tmp_path / name

    def stated(path):
        with tifffile.TiffFile(path) as tif:
            return tiff_pixel_size(tif), tiff_pixel_size_problem(tif)

    greek = ome("greek.ome.tif", PhysicalSizeX=0.16, PhysicalSizeXUnit="\u03bcm", PhysicalSizeY=0.16,
                PhysicalSizeYUnit="\u03bcm")  # Greek mu, as some writers spell µm
    assert stated(greek) == (pytest.approx(160.0), None)
    with pytest.raises(InputError, match="metadata of .* say 160 nm/px"):
        localize_stack(model, greek)
    assert stated(ome("angstrom.ome.tif", PhysicalSizeX=1000, PhysicalSizeXUnit="Å")) == (pytest.approx(100.0), None)
    aniso = ome("aniso.ome.tif", PhysicalSizeX=100, PhysicalSizeXUnit="nm", PhysicalSizeY=160,
                PhysicalSizeYUnit="nm")
    assert stated(aniso) == (None, "non-square pixels (OME: 100 nm in x, 160 nm in y)")
    with pytest.raises(InputError, match="non-square pixels .* models take square pixels"):
        localize_stack(model, aniso)
    assert len(localize_stack(model, aniso, pixel_size=100.0)["frame"]) >= 0  # the user's word overrides
    rounded = ome("rounded.ome.tif", PhysicalSizeX=0.1083333, PhysicalSizeY=0.10833334)  # float32 rounding
    assert stated(rounded) == (pytest.approx(108.33334), None)
    tifffile.imwrite(tmp_path / "ij.tif", frames, imagej=True, resolution=(1 / 0.1, 1 / 0.16),
                     metadata={"unit": "um"})
    assert stated(tmp_path / "ij.tif")[1] == "non-square pixels (ImageJ: 100 nm in x, 160 nm in y)"
    odd = ome("odd.ome.tif", PhysicalSizeX=3, PhysicalSizeXUnit="furlong")
    assert stated(odd)[0] is None and "'furlong', not a length" in stated(odd)[1]
    with pytest.warns(StarlocWarning, match="cannot read .*furlong.* not checked against the model's 100 nm/px"):
        localize_stack(model, odd)


def test_a_singleton_channel_or_z_axis_is_dropped(tmp_path, adu_stack):
    model = tiny(camera=EMCCD.smlm2016())
    plain = localize_stack(model, adu_stack)
    for shape in ((len(adu_stack), 1, *adu_stack.shape[1:]), (*adu_stack.shape, 1)):
        np.save(tmp_path / "s.npy", adu_stack.reshape(shape))
        tifffile.imwrite(tmp_path / "s.tif", adu_stack.reshape(shape))  # no ImageJ axes: a plain 4D TIFF
        for source in (adu_stack.reshape(shape), tmp_path / "s.npy", tmp_path / "s.tif"):
            table = localize_stack(model, source)
            assert all(np.array_equal(table[k], plain[k]) for k in plain), (shape, source)
    with pytest.raises(InputError, match="4D"):  # two channels: which one is for the user to say
        localize_stack(model, np.stack([adu_stack, adu_stack], axis=1))
