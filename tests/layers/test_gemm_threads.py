"""OpenBLAS held at one thread during a net's passes, with vggtool splitting the GEMMs over its own threads
(vggtool.layers.gemm.blas_on_one_thread): the count inside and after, nesting across threads, the split
GEMMs' values, and a split pass within a split pass running inline."""
import threading

import numpy as np
import pytest

from vggtool import config
from vggtool.layers import gemm
from vggtool.layers import threads as split_threads
from vggtool.testing import layer_net


@pytest.fixture
def two_blas_threads(blas_thread_count):
    blas_thread_count(2)


def test_blas_is_held_at_one_thread_until_the_last_block_leaves(two_blas_threads):
    with config.override(num_threads=2):
        assert gemm.held_threads() is None and gemm.gemm_threads() == 2
        with gemm.blas_on_one_thread():
            assert gemm.blas_threads() == 1 and gemm.held_threads() == 2 and gemm.gemm_threads() == 2
            with gemm.blas_on_one_thread():  # re-entrant
                assert gemm.blas_threads() == 1
            assert gemm.blas_threads() == 1  # the outer block still holds it
        assert gemm.blas_threads() == 2 and gemm.held_threads() is None
        with pytest.raises(ZeroDivisionError), gemm.blas_on_one_thread():
            1 / 0
        assert gemm.blas_threads() == 2
        # two threads (CPU lanes) inside at once: the count comes back when the second one leaves
        inside, leave = threading.Event(), threading.Event()

        def lane():
            with gemm.blas_on_one_thread():
                inside.set()
                leave.wait(10)

        t = threading.Thread(target=lane)
        t.start()
        inside.wait(10)
        with gemm.blas_on_one_thread():
            pass
        assert gemm.blas_threads() == 1  # the other thread is still inside
        leave.set()
        t.join()
        assert gemm.blas_threads() == 2
    with config.override(num_threads=1), gemm.blas_on_one_thread():
        assert gemm.held_threads() == 1  # the num_threads setting bounds the split


@pytest.mark.parametrize("m, k, n, transposed", [(300, 200, 40, False), (40, 200, 300, False), (40, 200, 300, True),
                                                 (7, 9, 5, False)])
def test_held_gemms_are_split_in_slices_with_the_whole_product(two_blas_threads, monkeypatch, m, k, n, transposed):
    """Inside the hold a large GEMM runs as one single-threaded call per slice of the longer axis of c; the
    result is the whole product (accumulated with beta) in float64; a small one stays one call."""
    monkeypatch.setattr(gemm, "MIN_SPLIT_MACS", 1000)
    rng = np.random.default_rng(1)
    a = rng.standard_normal((m, k))
    b = rng.standard_normal((n, k)).T if transposed else rng.standard_normal((k, n))
    c0 = rng.standard_normal((m, n))
    calls = []
    one = gemm._gemm
    monkeypatch.setattr(gemm, "_gemm", lambda a_, b_, c_, *args: calls.append(c_.shape) or one(a_, b_, c_, *args))
    with config.override(num_threads=2), gemm.blas_on_one_thread():
        c = c0.copy()
        gemm.gemm(a, b, c, alpha=0.5, beta=2.0)
        out = np.empty((m, n))
        gemm.matmul(a, b, out)
    np.testing.assert_allclose(c, 0.5 * (a @ b) + 2.0 * c0, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out, a @ b, rtol=1e-12, atol=1e-12)
    if m * n * k >= 2 * 1000:
        axis = 0 if m >= n else 1
        assert len(calls) == 4 and sum(s[axis] for s in calls[:2]) == (m, n)[axis]
    else:
        assert calls == [(m, n), (m, n)]


def test_a_split_pass_within_a_slice_runs_inline(monkeypatch):
    monkeypatch.setattr(split_threads, "MIN_ELEMENTS", 0)
    seen, lock = [], threading.Lock()

    def inner(lo, hi):
        with lock:
            seen.append((threading.get_ident(), lo, hi))

    outer_threads = set()

    def outer(lo, hi):
        outer_threads.add(threading.get_ident())
        split_threads.split_run(inner, 10, 10 ** 6, threads=2)

    split_threads.split_run(outer, 2, 10 ** 6, threads=2)
    assert len(outer_threads) == 2
    # each slice ran the inner pass itself, whole: no hand-off to a pool whose threads are all busy
    assert sorted((lo, hi) for _, lo, hi in seen) == [(0, 10), (0, 10)]
    assert {t for t, _, _ in seen} == outer_threads


def test_a_net_pass_holds_blas_at_one_thread(two_blas_threads, monkeypatch):
    net = layer_net('layer { name: "fc" type: "InnerProduct" bottom: "x" top: "y" '
                    'inner_product_param { num_output: 3 } }', {"x": np.ones((2, 4))})
    layer = net.layers[-1]
    seen = []
    forward, backward = layer.forward, layer.backward
    monkeypatch.setattr(layer, "forward", lambda *a: seen.append(gemm.blas_threads()) or forward(*a))
    monkeypatch.setattr(layer, "backward", lambda *a: seen.append(gemm.blas_threads()) or backward(*a))
    net.forward_backward()
    net.forward()
    assert seen == [1, 1, 1] and gemm.blas_threads() == 2
