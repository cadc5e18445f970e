"""Detection and pooling on hand-made maps, where the right answer is known exactly."""

import numpy as np
import pytest

from starloc.lodestar.detection import (
    DetectParams, clustering_map, detect, local_mean, noise_detections_advice, pool_single, threshold,
    to_image_resolution,
)
from starloc.errors import InputError
from starloc.lodestar.model import LodeSTAR, Maps
from tests.conftest import TINY


def _maps_for(objects, shape=(40, 40), stride=2, scatter=3.0):
    """Maps whose pixels within 5 px of an object predict it exactly with weight 1; other
    pixels predict positions scattered by ``scatter`` px around themselves, weight 0.01
    (``scatter=None``: far outside the image, so they never join an object's cluster)."""
    rng = np.random.default_rng(0)
    h, w = shape[0] // stride, shape[1] // stride
    centres = np.stack(np.meshgrid(np.arange(h) * stride + 0.5, np.arange(w) * stride + 0.5, indexing="ij"))
    P = centres + (rng.normal(0, scatter, size=centres.shape) if scatter else 100.0)
    weights = np.full((h, w), 0.01)
    for obj in objects:
        near = np.hypot(centres[0] - obj[0], centres[1] - obj[1]) <= 5
        P[:, near] = np.asarray(obj)[:, None]
        weights[near] = 1.0
    return Maps(P[None].astype(np.float32), weights[None].astype(np.float32), stride, shape)


def test_local_mean_averages_only_neighbours_inside_the_map():
    x = np.arange(12, dtype=float).reshape(3, 4)
    m = local_mean(x)
    assert m[0, 0] == pytest.approx(np.mean([0, 1, 4, 5]))
    assert m[1, 1] == pytest.approx(np.mean(x[:3, :3]))
    assert m[2, 3] == pytest.approx(np.mean([6, 7, 10, 11]))


def test_clustering_is_maximal_where_predictions_agree_even_at_borders():
    P = np.zeros((1, 2, 5, 6))
    c = clustering_map(P)
    assert np.allclose(c, 1e6)


def test_threshold_modes():
    s = np.arange(101, dtype=float)
    assert threshold(s, 0.9, "quantile") == pytest.approx(90)
    assert threshold(s, 0.5, "ratio") == pytest.approx(50)
    assert threshold(s, 7.0, "absolute") == 7.0
    with pytest.raises(ValueError, match="mode"):
        threshold(s, 0.5, "median")
    with pytest.raises(ValueError, match="quantile"):
        threshold(s, 1.5, "quantile")


def test_a_quantile_cutoff_keeps_at_least_a_few_pixels_per_candidate_peak():
    s = np.arange(1001, dtype=float) / 10  # the q quantile is 100 q
    assert threshold(s, 0.98, "quantile", n_peaks=0) == pytest.approx(98)
    assert threshold(s, 0.98, "quantile", n_peaks=5) == pytest.approx(98)  # 20 px fit in 2 %
    # 10 peaks want 40 of the 1001 pixels above the threshold
    assert threshold(s, 0.98, "quantile", n_peaks=10) == pytest.approx(100 * (1 - 40 / 1001))
    assert threshold(s, 0.98, "quantile", n_peaks=1000) == 0.0
    assert threshold(s, 0.5, "ratio", n_peaks=1000) == pytest.approx(50)  # other modes ignore peaks


def _crowded_maps(n_side=8, spacing=12, stride=2, sigma=1.5):
    """64 objects 12 px apart, of weights 0.3-1 that fall off over ``sigma`` px from each
    centre; each pixel predicts its nearest object with an error of 10 % of its distance to it."""
    rng = np.random.default_rng(0)
    size = n_side * spacing
    objects = np.array([(spacing * (i + 0.5) + rng.uniform(-1, 1), spacing * (j + 0.5) + rng.uniform(-1, 1))
                        for i in range(n_side) for j in range(n_side)])
    brightness = rng.uniform(0.3, 1.0, len(objects))
    h = size // stride
    centres = np.stack(np.meshgrid(np.arange(h) * stride + 0.5, np.arange(h) * stride + 0.5, indexing="ij"))
    dist = np.hypot(centres[0] - objects[:, 0, None, None], centres[1] - objects[:, 1, None, None])
    target = objects[dist.argmin(0)].transpose(2, 0, 1)
    P = target + 0.1 * (centres - target)
    w = brightness[dist.argmin(0)] * np.exp(-dist.min(0) ** 2 / (2 * sigma**2))
    return Maps(P[None].astype(np.float32), w[None].astype(np.float32), stride, (size, size)), objects


def test_the_quantile_cutoff_does_not_drop_the_objects_of_a_crowded_frame():
    maps, objects = _crowded_maps()
    found = detect(maps, DetectParams())
    nearest = np.hypot(*(found.positions[:, None, :2] - objects[None]).transpose(2, 0, 1)).min(axis=1)
    assert len(found) == len(objects) and nearest.max() < 0.01
    # a fixed 0.98 quantile keeps 2 % of the map, less than the 64 objects' peaks fill
    assert len(detect(maps, DetectParams(pixels_per_peak=0.0))) < 40


def test_detect_finds_each_object_exactly_including_one_at_the_border():
    objects = [(10.3, 12.7), (27.1, 30.4), (0.6, 35.2)]
    found = detect(_maps_for(objects, scatter=None), DetectParams(cutoff=0.0, mode="absolute", min_weight=0.5))
    assert len(found) == 3
    order = np.argsort(found.positions[:, 0])
    np.testing.assert_allclose(found.positions[order], np.array(objects)[[2, 0, 1]], atol=1e-5)
    assert np.all(found.frame == 0)
    np.testing.assert_allclose(found.features["consistency"], 0, atol=1e-8)


def test_detections_outside_the_image_are_dropped():
    # the pixels near the border predict these positions; the image spans [-0.5, 39.5]
    objects = [(-0.4, 20.0), (-0.9, 8.0), (39.4, 30.0), (20.0, 40.2)]
    found = detect(_maps_for(objects, scatter=None), DetectParams(cutoff=0.0, mode="absolute", min_weight=0.5))
    np.testing.assert_allclose(found.positions[np.argsort(found.positions[:, 0])], [objects[0], objects[2]],
                               atol=1e-5)
    assert len(found.features["score"]) == len(found.frame) == 2


def test_a_wide_object_weighed_on_its_rim_is_found_and_empty_background_is_not():
    # As a network sees a disk ~20 px across: the centre pixels agree exactly but carry little
    # weight (the interior is uniform), the rim pixels carry the weight but scatter. The score
    # then peaks at the centre, where the weight (0.005) is below min_weight.
    obj = np.array([20.3, 19.6])
    rows, cols = np.meshgrid(np.arange(20) * 2 + 0.5, np.arange(20) * 2 + 0.5, indexing="ij")
    dist = np.hypot(rows - obj[0], cols - obj[1])
    rng = np.random.default_rng(3)
    P = np.stack([rows, cols]) + rng.normal(0, 3.0, size=(2, 20, 20))  # background: scattered
    weights = np.full((20, 20), 1e-4)
    centre, rim = dist <= 4.5, (dist > 4.5) & (dist <= 8)
    P[:, centre] = obj[:, None]
    P[:, rim] = obj[:, None] + rng.normal(0, 0.3, size=(2, rim.sum()))
    weights[centre], weights[rim] = 0.005, 0.5
    maps = Maps(P[None].astype(np.float32), weights[None].astype(np.float32), 2, (40, 40))
    found = detect(maps, DetectParams(cutoff=0.98))
    assert len(found) == 1
    np.testing.assert_allclose(found.positions[0], obj, atol=0.25)  # the rim scatters by 0.3 px
    # Nothing but background (every weight 1e-4): no detection at all.
    empty = Maps(P[None].astype(np.float32), np.full((1, 20, 20), 1e-4, np.float32), 2, (40, 40))
    assert len(detect(empty, DetectParams(cutoff=0.98))) == 0


def test_pool_single_ignores_scattered_low_weight_predictions():
    maps = _maps_for([(8.4, 30.8)])
    maps.weights[:] = np.where(maps.weights > 0.5, 1e-4, 0.9e-4)  # weights nearly flat, as at low SNR
    plain_mean = (maps.positions[0] * maps.weights[0]).sum((1, 2)) / maps.weights[0].sum()
    assert np.hypot(*(plain_mean - [8.4, 30.8])) > 3
    np.testing.assert_allclose(pool_single(maps)[0], [8.4, 30.8], atol=0.15)


def test_maps_at_image_resolution_align_with_the_pooled_blocks():
    values = np.arange(6, dtype=float).reshape(2, 3)
    up = to_image_resolution(values, 2, (5, 7))
    assert up.shape == (5, 7)
    assert up[0, 0] == up[1, 1] == 0 and up[2, 2] == 4 and up[4, 6] == 5


def test_merge_keeps_the_best_of_close_detections_greedily():
    from starloc.lodestar.detection import _merge

    pos = np.array([[0, 0], [0, 1.5], [0, 3.0], [10, 10]], float)
    # 1 (best) drops 0 and 2, which are each within 2 px of it; 3 is alone.
    assert _merge(pos, np.array([1, 3, 2, 0.5]), 2.0).tolist() == [1, 3]
    # 2 (best) drops 1; 0 is 3 px from 2, so it stays though 1 was close to it.
    assert _merge(pos, np.array([1, 2, 3, 0.5]), 2.0).tolist() == [0, 2, 3]


def _crowded_pair_maps(receptive_field=None):
    """Two objects 12 px apart. Every pixel predicts the object nearer to it (as a trained
    network does within its receptive field), weight exp(-d^2 / 18) within d = 5 px of an
    object, 0.01 elsewhere; but A's outer pixels on the side facing B predict A pulled
    1.5 px towards B, each with its own jitter, so they disagree with their neighbours (as
    when they see both)."""
    a, b = np.array([15.3, 12.2]), np.array([15.3, 24.1])
    rows, cols = np.meshgrid(np.arange(20) * 2 + 0.5, np.arange(20) * 2 + 0.5, indexing="ij")
    dist_a, dist_b = np.hypot(rows - a[0], cols - a[1]), np.hypot(rows - b[0], cols - b[1])
    P = np.where(dist_a <= dist_b, a[:, None, None], b[:, None, None])
    dist = np.minimum(dist_a, dist_b)
    weights = np.where(dist <= 5, np.exp(-dist**2 / 18), 0.01)
    pulled = (dist_a <= 5) & (cols > a[1] + 3)
    jitter = np.random.default_rng(1).normal(0, 0.3, size=(2, pulled.sum()))
    P[:, pulled] = np.array([a[0], a[1] + 1.5])[:, None] + jitter
    maps = Maps(P[None].astype(np.float32), weights[None].astype(np.float32), 2, (40, 40), receptive_field)
    return maps, a, b


def _nearest(found, point):
    return found.positions[np.argmin(np.hypot(*(found.positions[:, :2] - point).T)), :2]


def test_crowded_detections_discount_predictions_that_disagree_with_their_neighbours():
    base = dict(cutoff=0.0, mode="absolute", min_weight=0.3)
    maps, a, b = _crowded_pair_maps()
    plain = _nearest(detect(maps, DetectParams(crowded_distance=0, **base)), a)
    assert plain[1] - a[1] > 0.05  # the pulled pixels bias the plain weighted mean
    crowded = detect(maps, DetectParams(crowded_distance=20, **base))
    assert len(crowded) == 2
    np.testing.assert_allclose(_nearest(crowded, a), a, atol=0.01)
    np.testing.assert_allclose(_nearest(crowded, b), b, atol=1e-5)  # B's predictions all agree
    # By default the distance is the network's receptive field, when the maps know it.
    np.testing.assert_allclose(_nearest(detect(maps, DetectParams(**base)), a), plain)
    maps_rf, _, _ = _crowded_pair_maps(receptive_field=26)
    np.testing.assert_allclose(_nearest(detect(maps_rf, DetectParams(**base)), a), _nearest(crowded, a))
    # Farther apart than the distance: refined as before.
    np.testing.assert_allclose(_nearest(detect(maps, DetectParams(crowded_distance=11, **base)), a), plain)


def test_weighted_median_per_row():
    from starloc.lodestar.detection import _weighted_median

    values = np.array([[3.0, 1.0, 2.0, 10.0], [5.0, 6.0, 7.0, 8.0], [1.0, 2.0, 3.0, 4.0]])
    weights = np.array([[1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(_weighted_median(values, weights), [2.0, 8.0, np.inf])


@pytest.mark.parametrize("augment", [False, True])
def test_a_frames_maps_do_not_depend_on_the_frames_batched_with_it(rng, augment):
    # the noise margin around each frame used to be drawn per batch: a frame's border
    # detections then changed with the chunk or cluster task it fell into
    model = LodeSTAR.new(TINY, seed=2)
    frames = rng.normal(size=(5, 1, 36, 44)).astype(np.float32)
    together = model.maps(frames, batch_size=4, augment=augment)
    for i in (0, 3, 4):
        alone = model.maps(frames[i : i + 1], augment=augment)
        np.testing.assert_allclose(alone.positions[0], together.positions[i], atol=1e-4)
        np.testing.assert_allclose(alone.weights[0], together.weights[i], atol=1e-5)


def test_maps_that_cannot_fit_in_memory_are_refused_with_a_piece_size_that_fits(monkeypatch):
    import starloc.memory
    from starloc.lodestar.model import _require_maps_memory

    monkeypatch.setattr(starloc.memory, "available_bytes", lambda: 16 * 10**9)
    _require_maps_memory((1, 1, 8192, 8192), symmetries=False)  # 2.3 GB: fits
    with pytest.raises(InputError, match=r"^LodeSTAR on 1 frame\(s\) of 100000 x 100000 px needs about 280\.4 GB of "
                                         r"memory, more than the 16\.0 GB free: cut the image into pieces of at most "
                                         r"about 16384 x 16384 px and detect each$"):
        _require_maps_memory((1, 1, 100000, 100000), symmetries=False)
    with pytest.raises(InputError, match=r"640\.4 GB .* about 10240 x 10240 px"):  # the 8 symmetries
        _require_maps_memory((1, 1, 100000, 100000), symmetries=True)
    with pytest.raises(InputError, match=r"37\.1 GB .* about 33792 x 33792 px"):  # downsampled 3x: 4 + 24 / 9 B/px
        _require_maps_memory((1, 1, 100000, 100000 // 2 + 5000), symmetries=False, downsample=3)


def test_many_light_and_self_disagreeing_detections_are_told_as_background():
    """A third of a sparse movie's default detections weighed 0.009 with consistency ~1 px²,
    the particles 0.37 and 0.02: advice names a limit between the two."""
    rng = np.random.default_rng(0)
    objects = {"weight": rng.uniform(0.3, 0.5, 60), "consistency": rng.uniform(0.01, 0.03, 60)}
    noise = {"weight": rng.uniform(0.005, 0.02, 30), "consistency": np.linspace(0.6, 1.5, 30)}
    both = {k: np.r_[objects[k], noise[k]] for k in objects}
    advice = noise_detections_advice(both, None)
    limit = 0.5 * np.percentile(noise["consistency"], 10)
    assert advice.startswith("30 of 90 detections weigh less than a tenth of a typical heavy one")
    assert f"--max-consistency {limit:.2g} drops them" in advice
    assert "Max consistency" in noise_detections_advice(both, None, option="Max consistency")
    assert noise_detections_advice(both, 0.5) is None  # the user already limits it
    assert noise_detections_advice(objects, None) is None  # objects alike: nothing to say
    few = {k: np.r_[objects[k], noise[k][:4]] for k in objects}  # 4 of 64: too few to speak of
    assert noise_detections_advice(few, None) is None
    light = {"weight": np.r_[objects["weight"], noise["weight"]], "consistency": np.r_[objects["consistency"],
                                                                                       np.full(30, 0.05)]}
    assert noise_detections_advice(light, None) is None  # light but self-consistent: crowded or dim objects
    assert noise_detections_advice({k: v[:9] for k, v in both.items()}, None) is None


def test_the_margin_around_a_frame_continues_its_border_background():
    """Median and robust spread of the pixels within the band along the border (objects in the
    band do not move them); a flat band falls back to its standard deviation (0 when flat)."""
    import torch

    from starloc.lodestar.model import border_background

    g = torch.Generator().manual_seed(0)
    frame = torch.randn((1, 1, 64, 64), generator=g) * 0.6 + 1.5
    frame[..., 2, 2] = 50.0  # an object in the band
    frame[..., 8:56, 8:56] = 7.0  # the inside does not count
    level, spread = border_background(frame, 8)
    band = torch.cat([frame[..., :8, :].flatten(), frame[..., 56:, :].flatten(), frame[..., 8:56, :8].flatten(),
                      frame[..., 8:56, 56:].flatten()])
    assert level.shape == (1, 1, 1, 1) and float(level) == float(band.median())
    assert float(spread) == pytest.approx(1.4826 * float((band - band.median()).abs().median()))
    assert abs(float(level) - 1.5) < 0.05 and abs(float(spread) - 0.6) < 0.05
    flat = torch.zeros((2, 1, 16, 16))
    flat[1] = 3.0
    level, spread = border_background(flat, 4)
    assert level.flatten().tolist() == [0.0, 3.0] and spread.flatten().tolist() == [0.0, 0.0]
