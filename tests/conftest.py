import numpy as np
import pytest

from vggtool import backend


def pytest_collection_modifyitems(config, items):
    if backend.gpu_count() == 0:
        skip = pytest.mark.skip(reason="no NVIDIA GPU with CuPy on this machine")
        for item in items:
            if item.get_closest_marker("gpu") is not None:  # not `in item.keywords`: a folder named gpu matches
                item.add_marker(skip)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
