"""The torch core on CUDA gives what it gives on the CPU (skipped without a GPU).

CI has no GPU; these run on a developer's GPU machine:
``python -m pytest tests/test_cuda.py``.
"""

import numpy as np
import pytest
import torch

from starloc import sim
from starloc.deeploco import EMCCD, Gaussian2DPSF, Simulator
from starloc.deeploco.model import DeepLoco
from starloc.deeploco.postprocess import CellGrid, postprocess
from starloc.deeploco.stack import localize_stack
from starloc.deeploco.subpixel import SubpixelCorrection
from starloc.deeploco.training import DeepLocoTrainConfig, train
from starloc.lodestar.model import LodeSTAR
from starloc.lodestar.training import TrainConfig
from starloc.lodestar.training import train as train_lodestar
from starloc.progress import finish

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

def _sim(device: str) -> Simulator:
    return Simulator(Gaussian2DPSF(130.0), camera=EMCCD.smlm2016(), frame_shape=(32, 32), n_range=(1, 4),
                     photons_range=(2000, 5000), background_range=(20, 40), device=device)


def test_simulator_on_cuda_keeps_everything_on_the_gpu_and_is_seeded():
    s = _sim("cuda")
    a, truth = s.sample(16, torch.Generator(device="cuda").manual_seed(0))
    b, _ = s.sample(16, torch.Generator(device="cuda").manual_seed(0))
    assert a.device.type == "cuda" and truth["x"].device.type == "cuda"
    assert torch.equal(a, b) and torch.isfinite(a).all()
    # camera noise on top of >= 20 photons/px of background: the frame means match the CPU's
    c, _ = _sim("cpu").sample(16, torch.Generator().manual_seed(0))
    assert abs(a.mean().item() - c.mean().item()) < 0.1 * c.mean().item()


def test_deeploco_trains_on_cuda_and_localizes_the_same_on_both_devices(tmp_path):
    cfg = DeepLocoTrainConfig(conv_widths=(4, 8, 8), batch=8, steps=20, val_size=8, val_every=10,
                              calibration_frames=0, device="cuda")
    model = finish(train(_sim("cuda"), cfg))
    assert next(model.net.parameters()).device.type == "cuda"
    model.save(tmp_path / "m.pt")
    frames, _ = _sim("cpu").sample(6, torch.Generator().manual_seed(1))
    on_gpu = DeepLoco.load(tmp_path / "m.pt", device="cuda").localize(frames.cuda(), threshold=0.0)
    on_cpu = DeepLoco.load(tmp_path / "m.pt").localize(frames, threshold=0.0)
    assert len(on_cpu["x"]) > 0 and np.array_equal(on_gpu["frame"], on_cpu["frame"])
    np.testing.assert_allclose(on_gpu["x"], on_cpu["x"], atol=0.5)  # nm; TF32/cuDNN vs CPU kernels
    np.testing.assert_allclose(on_gpu["confidence"], on_cpu["confidence"], atol=1e-2)


def test_lodestar_trains_on_cuda_and_its_maps_match_the_cpu(tiny_network, tmp_path):
    """The model file trained on the GPU gives the same maps on the CPU (its measured
    position offset included, which a copy of the weights alone would miss)."""
    images, truth, _ = sim.simulate_single("point", 10, 1, size=24, max_offset=1.0, rng=0)
    cfg = TrainConfig(max_steps=20, min_steps=20, patience=1000, copies=4, network=tiny_network, device="cuda")
    model = finish(train_lodestar([images[0]], cfg))
    assert model.device.type == "cuda"
    frames = sim.simulate_single("point", 10, 3, size=32, max_offset=2.0, rng=1)[0][:, None]
    gpu = model.maps(frames)
    model.save(tmp_path / "m.pt")
    cpu = LodeSTAR.load(tmp_path / "m.pt", device="cpu")
    assert cpu.position_offset == model.position_offset
    ref = cpu.maps(frames)
    np.testing.assert_allclose(gpu.weights, ref.weights, atol=1e-3)
    np.testing.assert_allclose(gpu.positions, ref.positions, atol=1e-2)



def test_grid_postprocess_gives_the_same_table_on_the_gpu():
    """The same candidates on either device: the same components, sums and row order."""
    h, w, B = 12, 16, 6
    g = torch.Generator().manual_seed(0)
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    centre = torch.stack([cols.reshape(-1) + 0.5, rows.reshape(-1) + 0.5], -1) * 400.0
    pos = centre + (2 * torch.rand(B, h * w, 2, generator=g) - 1) * 300.0
    pos = torch.cat([pos, 500 * torch.randn(B, h * w, 1, generator=g)], -1)
    wt = torch.rand(B, h * w, generator=g)
    cells = CellGrid(h, w, 400.0, 0.75)
    for link in (100.0, 450.0):
        cpu = postprocess(pos, wt, link_distance=link, threshold=0.3, cells=cells)
        gpu = postprocess(pos.cuda(), wt.cuda(), link_distance=link, threshold=0.3, cells=cells)
        assert len(cpu["x"]) > 50 and list(cpu) == list(gpu)
        for key in cpu:
            np.testing.assert_allclose(gpu[key], cpu[key], rtol=0, atol=1e-9)


def test_deeploco_stacks_localize_the_same_on_both_devices(tmp_path):
    """Whole frames (consecutive frames in one call) and tiled frames (seams merged), with a
    sub-pixel correction: the GPU's table is the CPU's."""
    cfg = DeepLocoTrainConfig(conv_widths=(4, 8, 8), batch=8, steps=20, val_size=0, calibration_frames=0)
    model = finish(train(_sim("cpu"), cfg))
    offsets = np.stack([np.stack([np.sin(np.linspace(0, 2 * np.pi, 16, endpoint=False)) * a for a in (3, -2)])
                        for _ in range(2)])
    model.subpixel = SubpixelCorrection(400.0, offsets * np.array([1.0, 0.5])[:, None, None], 800.0)
    model.save(tmp_path / "m.pt")
    scene = Simulator(Gaussian2DPSF(130.0), camera=EMCCD.smlm2016(), frame_shape=(96, 96), density=1.0,
                      photons_range=(2000, 5000), background_range=(20, 40))
    frames = scene.sample(3, torch.Generator().manual_seed(2))[0][:, 0].numpy()
    torch.backends.cudnn.allow_tf32 = False  # positions within ~1e-3 nm: no link flips at 100 nm
    try:
        for tile in (None, 64):
            on_gpu = localize_stack(DeepLoco.load(tmp_path / "m.pt", device="cuda"), frames,
                                    input_units="photons", tile=tile, threshold=0.0)
            on_cpu = localize_stack(DeepLoco.load(tmp_path / "m.pt"), frames, input_units="photons", tile=tile,
                                    threshold=0.0)
            assert len(on_cpu["x"]) > 100 and np.array_equal(on_gpu["frame"], on_cpu["frame"])
            for key in ("x", "y", "confidence"):
                np.testing.assert_allclose(on_gpu[key], on_cpu[key], atol=0.05)
    finally:
        torch.backends.cudnn.allow_tf32 = True
