"""The solver's update runs on chunks of each parameter (sgd.update_in_chunks), so its scratch is two
chunks rather than two copies of the largest parameter; the values must be those of one whole-array pass.
SGD's one-pass C kernel must give the NumPy update's bits; the finiteness check its verdicts."""
import numpy as np
import pytest

from vggtool import config
from vggtool.layers import kernels
from vggtool.layers import threads as split_threads
from vggtool.proto import caffe_pb2
from vggtool.solvers import sgd


def _param(rule):
    p = caffe_pb2.SolverParameter(type=rule, momentum=0.0 if rule in ("AdaGrad",) else 0.9, delta=1e-8)
    if rule == "RMSProp":
        p.rms_decay = 0.98
    if rule == "Adam":
        p.momentum2 = 0.999
    return p


def _run(rule_name, chunk, monkeypatch, l1, iter_size):
    rng = np.random.default_rng(4)
    w = rng.standard_normal((5, 7, 3)).astype(np.float32)
    rule = sgd.RULES[rule_name](_param(rule_name))
    hists = [rng.uniform(0.1, 1.0, w.shape).astype(np.float32) for _ in range(rule.history_per_param)]
    asked = []

    def scratch(shape):
        asked.append(int(np.prod(shape)))
        return [np.empty(shape, np.float32), np.empty(shape, np.float32)]

    monkeypatch.setattr(sgd, "UPDATE_CHUNK", chunk)
    for it in range(3):
        g = rng.standard_normal(w.shape).astype(np.float32)
        sgd.update_in_chunks(np, rule, w, g, hists, decay=5e-4, l1=l1, iter_size=iter_size, local_rate=0.01,
                             it=it, scratch=scratch)
    return w, hists, max(asked)


@pytest.mark.parametrize("rule", sorted(sgd.RULES))
@pytest.mark.parametrize("l1,iter_size", [(False, 1), (True, 2)])
def test_chunked_update_equals_the_whole_array_update(rule, l1, iter_size, monkeypatch):
    with config.override(c_kernels=False):  # the NumPy chunks (SGD's C pass has no scratch)
        w_whole, h_whole, biggest_whole = _run(rule, 1 << 22, monkeypatch, l1, iter_size)
        w_chunks, h_chunks, biggest_chunk = _run(rule, 8, monkeypatch, l1, iter_size)  # 105 = 13 x 8 + 1
    assert biggest_whole == 105 and biggest_chunk == 8
    assert np.array_equal(w_whole, w_chunks)
    for a, b in zip(h_whole, h_chunks):
        assert np.array_equal(a, b)


def test_a_non_contiguous_parameter_is_refused():
    w = np.zeros((4, 6), np.float32)[:, ::2]
    with pytest.raises(AssertionError, match="contiguous"):
        sgd.update_in_chunks(np, sgd.RULES["SGD"](_param("SGD")), w, np.zeros_like(w), [np.zeros_like(w)],
                             decay=0, l1=False, iter_size=1, local_rate=0.1, it=0, scratch=None)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("decay, iter_size, momentum", [(5e-4, 1, 0.9), (0.0, 2, 0.9), (1e-3, 3, 0.0)])
def test_sgd_in_one_c_pass_gives_the_numpy_bits(dtype, decay, iter_size, momentum, monkeypatch):
    """Weights, history and the update value left in the diff, over three steps, split over threads."""
    if not kernels.built():
        pytest.skip("the C kernels were not built (no C compiler at install time)")
    monkeypatch.setattr(split_threads, "MIN_ELEMENTS", 0)  # split even this small array
    p = caffe_pb2.SolverParameter(type="SGD", momentum=momentum)
    results = {}
    for c_kernels in (True, False):
        rng = np.random.default_rng(8)
        w = rng.standard_normal(1001).astype(dtype)
        h = rng.standard_normal(1001).astype(dtype) * 0.01
        calls = []
        monkeypatch.setattr(kernels, "sgd_update", lambda *a, _f=kernels.sgd_update, **k: calls.append(1) or _f(*a, **k))
        with config.override(c_kernels=c_kernels):
            for it in range(3):
                g = rng.standard_normal(1001).astype(dtype)
                sgd.update_in_chunks(np, sgd.RULES["SGD"](p), w, g, [h], decay=decay, l1=False, iter_size=iter_size,
                                     local_rate=0.0137, it=it,
                                     scratch=lambda shape: [np.empty(shape, dtype), np.empty(shape, dtype)])
        assert len(calls) == (3 if c_kernels else 0)
        results[c_kernels] = (w, h, g)
    for a, b in zip(results[True], results[False]):
        assert a.dtype == dtype and np.array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_c_finiteness_check_finds_any_nan_or_infinity(dtype, monkeypatch):
    if not kernels.built():
        pytest.skip("the C kernels were not built (no C compiler at install time)")
    monkeypatch.setattr(split_threads, "MIN_ELEMENTS", 0)
    x = (np.random.default_rng(2).uniform(-1, 1, 999) * np.finfo(dtype).max).astype(dtype)  # large, finite
    assert kernels.all_finite(x) and kernels.all_finite(x[:0])
    for where in (0, 498, 499, 500, 998):  # both ends and around the threads' split
        for bad in (np.nan, np.inf, -np.inf):
            y = x.copy()
            y[where] = bad
            assert not kernels.all_finite(y), (where, bad)
