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


def test_lodestar_trains_on_cuda_and_its_maps_match_the_cpu(tiny_network):
    images, truth, _ = sim.simulate_single("point", 10, 1, size=24, max_offset=1.0, rng=0)
    cfg = TrainConfig(max_steps=20, min_steps=20, patience=1000, copies=4, network=tiny_network, device="cuda")
    model = finish(train_lodestar([images[0]], cfg))
    assert model.device.type == "cuda"
    frames = sim.simulate_single("point", 10, 3, size=32, max_offset=2.0, rng=1)[0][:, None]
    gpu = model.maps(frames)
    cpu = LodeSTAR.new(tiny_network).to("cpu")
    cpu.net.load_state_dict({k: v.cpu() for k, v in model.net.state_dict().items()})
    cpu.normalization = model.normalization
    ref = cpu.maps(frames)
    np.testing.assert_allclose(gpu.weights, ref.weights, atol=1e-3)
    np.testing.assert_allclose(gpu.positions, ref.positions, atol=1e-2)
