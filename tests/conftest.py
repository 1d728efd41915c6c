import contextlib

import numpy as np
import pytest

from vggtool import backend
from vggtool import config as vggtool_config


def pytest_collection_modifyitems(config, items):
    if backend.gpu_count() == 0:
        skip = pytest.mark.skip(reason="no NVIDIA GPU with CuPy on this machine")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def use_settings():
    """use_settings(**changes): the process-wide settings (vggtool.config) for the rest of the test; Nets
    built afterwards take them as their settings."""
    with contextlib.ExitStack() as stack:
        yield lambda **changes: stack.enter_context(vggtool_config.override(**changes))
