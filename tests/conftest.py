import numpy as np
import pytest

from golden.config import PRESETS


@pytest.fixture
def tiny():
    return PRESETS["tiny"]


@pytest.fixture
def rng(request):
    """A generator seeded from the test's name: reproducible, different per test."""
    seed = sum(ord(ch) * 31 ** i for i, ch in enumerate(request.node.name)) % (2 ** 32)
    return np.random.default_rng(seed)
