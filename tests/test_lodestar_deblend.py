"""Deblending of crowded detections: exact patch masking, and that a deblended position
depends on its own object's pixels only."""

import numpy as np

from starloc.lodestar.deblend import FILL_SEED, deblend, masked_patches, patch_half_size
from starloc.lodestar.detection import DetectParams, Detections
from starloc.lodestar.model import LodeSTAR
from tests.conftest import TINY


def test_masked_patches_keep_the_own_voronoi_cell_inside_the_frame_and_fill_the_rest():
    x = np.arange(20 * 30, dtype=np.float32).reshape(1, 20, 30)
    centres = np.array([[5.0, 5.0], [5.0, 12.0], [15.0, 25.0]])
    patches, origins = masked_patches(x, centres, np.array([0, 1]), half=6, stride=4)
    assert patches.shape == (2, 1, 16, 16)  # the smallest multiple of 4 above 12
    np.testing.assert_array_equal(origins, [[-1, -1], [-1, 6]])
    fill = np.random.default_rng(FILL_SEED).standard_normal((1, 16, 16)).astype(np.float32)
    a = patches[0, 0]
    assert a[7, 7] == x[0, 6, 6]  # the object's own pixels are kept
    assert a[6, 9] == x[0, 5, 8]  # 3 px from its centre, 4 px from the neighbour's
    assert a[6, 10] == fill[0, 6, 10]  # 4 px from its centre, 3 px from the neighbour's
    assert (a[0] == fill[0, 0]).all() and (a[:, 0] == fill[0, :, 0]).all()  # outside the frame
    b = patches[1, 0]
    assert b[6, 6] == x[0, 5, 12] and b[6, 1] == fill[0, 6, 1]  # frame (5, 7) is nearer to centre 0


def _two_spots(rng):
    """A 48x48 frame with Gaussian spots 10.8 px apart (closer than the receptive field)."""
    a, b = np.array([20.3, 18.6]), np.array([20.1, 29.4])
    rows, cols = np.mgrid[:48, :48]
    frame = rng.normal(0, 1, (48, 48))
    for centre in (a, b):
        frame += 12 * np.exp(-((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) / (2 * 1.5**2))
    return frame.astype(np.float32), a, b


def test_a_deblended_position_depends_on_its_own_objects_pixels_only(rng):
    model = LodeSTAR.new(TINY, seed=3)
    frame, a, b = _two_spots(rng)
    found = Detections(np.zeros(2, np.int64), np.stack([a, b]), {"score": np.array([1.0, 0.9])})
    rows, cols = np.mgrid[:48, :48]
    b_cell = np.hypot(rows - b[0], cols - b[1]) < np.hypot(rows - a[0], cols - a[1])
    # Shuffling the neighbour's pixels keeps the frame's normalization (it depends only on
    # the set of values) and changes what the network sees around A...
    shuffled = frame.copy()
    shuffled[b_cell] = rng.permutation(frame[b_cell])
    r, c = (np.round(a) / TINY.stride).astype(int)
    before, after = model.maps(frame[None, None]), model.maps(shuffled[None, None])
    assert np.abs(before.positions[0, :, r, c] - after.positions[0, :, r, c]).max() > 1e-3
    # ...but not A's deblended position.
    one = deblend(model, frame[None, None], found)
    two = deblend(model, shuffled[None, None], found)
    np.testing.assert_allclose(one.positions[0], two.positions[0], atol=1e-4)
    assert not np.allclose(one.positions[0], a)  # it was located again, not copied


def test_deblending_leaves_isolated_detections_features_and_frames_alone(rng):
    model = LodeSTAR.new(TINY, seed=3)
    frame, a, b = _two_spots(rng)
    lone = np.array([40.0, 8.0])
    frames = np.stack([frame, frame])[:, None]
    positions = np.stack([a, b, lone, lone])
    found = Detections(np.array([0, 0, 0, 1]), positions.copy(), {"score": np.arange(4.0)})
    out = deblend(model, frames, found)
    np.testing.assert_array_equal(out.frame, found.frame)
    np.testing.assert_array_equal(out.features["score"], found.features["score"])
    np.testing.assert_array_equal(out.positions[2:], positions[2:])
    assert not np.allclose(out.positions[:2], positions[:2])
    np.testing.assert_array_equal(found.positions, positions)  # the input is not modified
    # crowded_distance 0 turns deblending off, as it turns off the crowded refinement.
    off = deblend(model, frames, found, DetectParams(crowded_distance=0))
    np.testing.assert_array_equal(off.positions, positions)


def test_deblending_in_chunks_gives_the_same_positions(rng, monkeypatch):
    model = LodeSTAR.new(TINY, seed=3)
    frame, a, b = _two_spots(rng)
    c = np.array([30.2, 24.0])  # crowded too: three detections, in chunks of 1 and 2
    found = Detections(np.zeros(3, dtype=np.int64), np.stack([a, b, c]), {})
    whole = deblend(model, frame[None, None], found)
    for chunk in (1, 2):
        monkeypatch.setattr("starloc.lodestar.deblend.CHUNK", chunk)
        np.testing.assert_allclose(deblend(model, frame[None, None], found).positions, whole.positions, atol=1e-5)
    assert not np.allclose(whole.positions, found.positions)


def test_a_detection_whose_patch_finds_nothing_near_it_stays_where_it_was(rng, monkeypatch):
    model = LodeSTAR.new(TINY, seed=3)
    frame, a, b = _two_spots(rng)
    found = Detections(np.zeros(2, np.int64), np.stack([a, b]), {"score": np.array([1.0, 0.9])})
    real = model.network_maps

    def far_away(*args, **kwargs):  # every pixel of the patches predicts one point 20 px off
        maps = real(*args, **kwargs)
        maps.positions[:, :2] = 20.0 + 0 * maps.positions[:, :2]
        return maps

    monkeypatch.setattr(model, "network_maps", far_away)
    out = deblend(model, frame[None, None], found)
    np.testing.assert_array_equal(out.positions, found.positions)  # not moved onto that point


def test_patches_cover_what_the_refinement_window_sees():
    model = LodeSTAR.new(TINY, seed=3)
    half = patch_half_size(model, DetectParams(radius=4))
    assert half >= TINY.receptive_field / 2 + 4


def test_the_networks_input_from_the_maps_gives_the_same_deblending(rng):
    model = LodeSTAR.new(TINY, seed=3)
    frame, a, b = _two_spots(rng)
    frames = frame[None, None]
    found = Detections(np.zeros(2, np.int64), np.stack([a, b]), {"score": np.array([1.0, 0.9])})
    maps, seen = model.maps_and_input(frames)
    plain = model.maps(frames)
    assert np.array_equal(maps.positions, plain.positions) and np.array_equal(maps.weights, plain.weights)
    np.testing.assert_array_equal(deblend(model, frames, found, seen=seen).positions,
                                  deblend(model, frames, found).positions)
