"""Linking detections into trajectories (starloc.tracks, trackpy underneath)."""

import sys

import numpy as np
import pytest

from starloc import sim
from starloc.errors import InputError
from starloc.tracks import link_tracks

pytest.importorskip("trackpy")


@pytest.fixture(scope="module")
def movie_truth():
    """(frames, positions, particle) of 8 diffusing particles over 12 frames, shuffled."""
    tracks = sim.simulate_timelapse(12, 8, size=(96, 96), diffusion=1.0, rng=3)[1]
    t, n, _ = tracks.shape
    order = np.random.default_rng(0).permutation(t * n)
    return np.repeat(np.arange(t), n)[order], tracks.reshape(-1, 2)[order], np.tile(np.arange(n), t)[order]


def test_tracks_follow_the_particles_numbered_by_first_appearance(movie_truth):
    frames, positions, particle = movie_truth
    ids = link_tracks(frames, positions, 5.0)
    assert ids.dtype == np.int64 and sorted(set(ids.tolist())) == list(range(8))
    for k in range(8):
        assert len(set(particle[ids == k])) == 1 and np.sum(ids == k) == 12
    firsts = [np.flatnonzero(frames == 0)[ids[frames == 0] == k][0] for k in range(8)]
    assert firsts == sorted(firsts)  # ids follow the table's order in the first frame


def test_memory_bridges_a_missed_detection(movie_truth):
    frames, positions, particle = movie_truth
    keep = ~((particle == 3) & (frames == 5))
    assert len(set(link_tracks(frames[keep], positions[keep], 5.0)[particle[keep] == 3])) == 2
    assert len(set(link_tracks(frames[keep], positions[keep], 5.0, memory=1)[particle[keep] == 3])) == 1


def test_no_detections_and_bad_settings(movie_truth):
    frames, positions, _ = movie_truth
    assert link_tracks([], np.zeros((0, 2)), 3.0).shape == (0,)
    for distance in (0, -1.0, float("nan"), "3"):
        with pytest.raises(InputError, match="linking distance"):
            link_tracks(frames, positions, distance)
    for memory in (-1, 1.5, True):
        with pytest.raises(InputError, match="linking memory"):
            link_tracks(frames, positions, 3.0, memory=memory)
    with pytest.raises(InputError, match="positions must be"):
        link_tracks(frames[:-1], positions, 3.0)
    bad = positions.copy()
    bad[4] = np.nan
    with pytest.raises(InputError, match="1 detection"):
        link_tracks(frames, bad, 3.0)
    for wrong in (frames - 1, frames + 0.5):
        with pytest.raises(InputError, match="whole numbers >= 0"):
            link_tracks(wrong, positions, 3.0)
    # numpy numbers, and frames as whole floats, are numbers like any other
    ids = link_tracks(frames, positions, 5.0)
    for distance in (np.float32(5.0), np.int64(5), np.array(5.0)):
        np.testing.assert_array_equal(link_tracks(frames.astype(float), positions, distance), ids)


def test_a_crowd_too_dense_for_the_distance_is_refused():
    rng = np.random.default_rng(1)
    with pytest.raises(InputError, match="smaller linking distance"):
        link_tracks(np.repeat(np.arange(4), 300), rng.uniform(0, 30, (1200, 2)), 15.0)


def test_without_trackpy_the_error_says_how_to_install_it(monkeypatch, movie_truth):
    monkeypatch.setitem(sys.modules, "trackpy", None)
    frames, positions, _ = movie_truth
    with pytest.raises(InputError, match=r"napari-starloc\[tracking\]"):
        link_tracks(frames, positions, 3.0)
