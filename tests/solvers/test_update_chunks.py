"""The solver's update runs on chunks of each parameter (sgd.update_in_chunks), so its scratch is two
chunks rather than two copies of the largest parameter; the values must be those of one whole-array pass."""
import numpy as np
import pytest

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
