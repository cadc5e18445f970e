"""Shared fixtures: small seeded data and a tiny LodeSTAR network that trains in seconds."""

import numpy as np
import pytest
import torch

from starloc.lodestar.network import NetworkConfig

TINY = NetworkConfig(full_res_widths=(8,), half_res_widths=(16, 16, 16))


def simulated_adu_stack(n_frames: int, frame_shape: tuple[int, int], n_range: tuple[int, int],
                        seed: int = 0) -> np.ndarray:
    """A uint16 ``(T, H, W)`` SMLM stack in ADU: Gaussian 130 nm PSF, challenge EMCCD, seeded."""
    from starloc.deeploco import EMCCD, Gaussian2DPSF, Simulator

    cam = EMCCD.smlm2016()
    sim = Simulator(Gaussian2DPSF(130.0), camera=cam, frame_shape=frame_shape, n_range=n_range)
    frames, _ = sim.sample(n_frames, torch.Generator().manual_seed(seed))
    return cam.to_adu(frames[:, 0]).round().clamp(0, 65535).numpy().astype(np.uint16)


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(2)


@pytest.fixture
def one_thread():
    """For tests on tiny tensors: one thread is faster, much faster on a busy 2-core machine."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(2)


@pytest.fixture
def tiny_network() -> NetworkConfig:
    return TINY


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
