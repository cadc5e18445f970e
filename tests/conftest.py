"""Shared fixtures: small seeded data and a tiny LodeSTAR network that trains in seconds."""

import numpy as np
import pytest
import torch

from starloc.lodestar.network import NetworkConfig

TINY = NetworkConfig(full_res_widths=(8,), half_res_widths=(16, 16, 16))


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
