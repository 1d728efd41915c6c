import contextlib

import numpy as np
import pytest

from vggtool import backend
from vggtool import config as vggtool_config


def pytest_collection_modifyitems(config, items):
    if backend.gpu_count() == 0:
        skip = pytest.mark.skip(reason="no NVIDIA GPU with CuPy on this machine")
        for item in items:
            if item.get_closest_marker("gpu") is not None:  # not `in item.keywords`: a folder named gpu matches
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


@pytest.fixture
def blas_thread_count():
    """set(n): OpenBLAS's process-wide thread count for the rest of the test (the test is skipped where
    it cannot be read); the count it had is put back after."""
    from vggtool.layers import gemm

    before = gemm.blas_threads()
    if before is None:
        pytest.skip("NumPy's OpenBLAS thread count cannot be read here")

    def set_count(n):
        gemm.set_blas_threads(n)
        assert gemm.blas_threads() == n

    try:
        yield set_count
    finally:
        gemm.set_blas_threads(before)


# (device, dtype) a layer test runs on: the CPU in both precisions, and the GPU (skipped without one).
ENGINES = [pytest.param(("cpu", np.float64), id="cpu-float64"), pytest.param(("cpu", np.float32), id="cpu-float32"),
           pytest.param(("gpu", np.float64), id="gpu-float64", marks=pytest.mark.gpu),
           pytest.param(("gpu", np.float32), id="gpu-float32", marks=pytest.mark.gpu)]


@pytest.fixture(params=ENGINES)
def engine(request):
    """{"device": ..., "dtype": ...} for vggtool.testing.check_gradients(..., **engine)."""
    where, dtype = request.param
    return {"device": backend.gpu(0) if where == "gpu" else backend.CPU, "dtype": dtype}
