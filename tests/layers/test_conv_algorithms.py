"""The fast paths (Winograd convolution, 2x2 max pooling, threaded slices, in-place BLAS gemm) against
direct loops and against the general paths they replace."""
import shutil
import sysconfig

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from numerics import F32_EPS, assert_close_to_scale

from vggtool import config
from vggtool.errors import VggtoolError
from vggtool.layers import gemm, kernels, pooling
from vggtool.layers import threads as split_threads
from vggtool.layers.conv import im2col as im2col_algo
from vggtool.layers.conv import policy
from vggtool.layers.conv import winograd as winograd_algo
from vggtool.layers.conv import winograd_transforms
from vggtool.testing import check_gradients, layer_net


@pytest.fixture(params=[False, True], ids=["serial", "threaded"])
def threads(request, monkeypatch, use_settings):
    """Run once single-threaded and once with every pass split into 3 threaded slices."""
    if request.param:
        monkeypatch.setattr(split_threads, "MIN_ELEMENTS", 0)
        use_settings(num_threads=3)
    else:
        use_settings(num_threads=1)
    return request.param


@pytest.fixture(params=["C", "NumPy"])
def kernel_code(request, use_settings):
    """Run once with the C kernels (vggtool/layers/_kernels.c) and once with the NumPy code they replace."""
    if request.param == "C":
        if not kernels.built():
            pytest.skip("the C kernels were not built (no C compiler at install time)")
        use_settings(c_kernels=True)
    else:
        use_settings(c_kernels=False)
    return request.param


def test_c_kernels_are_built_where_a_compiler_is():
    """pip builds them (setup.py, optional=True) when it finds a C compiler; a silent failure would only
    cost speed, so it is checked here."""
    if shutil.which(sysconfig.get_config_var("CC").split()[0] or "cc") is None:
        pytest.skip("no C compiler on this machine")
    assert kernels.built()


def conv_text(cout, pad, kernel=3, stride=1, group=1, dilation=1, algorithm=None):
    """A Convolution layer "c" (x -> y); `algorithm`: its prototxt vggtool_algorithm, if any."""
    algo = f'vggtool_algorithm: "{algorithm}" ' if algorithm else ""
    return (f'layer {{ name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param {{ num_output: {cout} '
            f'kernel_size: {kernel} pad: {pad} stride: {stride} group: {group} dilation: {dilation} {algo}'
            'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 } } }')


def with_algorithm(text, algo):
    """`text` with convolution_param's vggtool_algorithm set to `algo`."""
    return text.replace("convolution_param { ", f'convolution_param {{ vggtool_algorithm: "{algo}" ', 1)


def run_conv(algo, text, x, dy, dtype):
    net = layer_net(with_algorithm(text, algo), {"x": x}, dtype=dtype)
    layer = net.layers[1]
    net.blobs["x"].data[...] = x
    net.forward_from_to(1, 1)
    y = net.blobs["y"].data.copy()
    net.blobs["y"].diff[...] = dy
    for p in layer.blobs:
        p.diff[...] = 0
    layer.backward([net.blobs["y"]], [True], [net.blobs["x"]])
    return layer, [y, net.blobs["x"].diff.copy(), layer.blobs[0].diff.copy(), layer.blobs[1].diff.copy()]


def direct_conv(x, w, b, pad):
    """Cross-correlation by loops over the kernel taps (Caffe's definition), float64."""
    n, c, h, wd = x.shape
    co, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = h + 2 * pad - kh + 1, wd + 2 * pad - kw + 1
    y = np.zeros((n, co, ho, wo)) + b.reshape(1, -1, 1, 1)
    for i in range(kh):
        for j in range(kw):
            y += np.einsum("oc,nchw->nohw", w[:, :, i, j], xp[:, :, i:i + ho, j:j + wo])
    return y


SHAPES = [(2, 3, 4, 5, 7, 1), (3, 5, 2, 6, 6, 0), (1, 4, 3, 7, 5, 2), (2, 6, 5, 8, 8, 1), (2, 2, 3, 3, 4, 1),
          (1, 3, 4, 13, 11, 1)]


def expected_winograd(algo, kernel_code):
    """F(4x4) runs only with the C kernels; without them 'winograd4' gives F(2x2)."""
    return algo if algo == "winograd2" or kernel_code == "C" else "winograd2"


@pytest.mark.parametrize("shape", SHAPES, ids=[f"n{s[0]}c{s[1]}o{s[2]}_{s[3]}x{s[4]}p{s[5]}" for s in SHAPES])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("algo", ["winograd2", "winograd4"])
def test_winograd_equals_im2col_and_direct_loops(rng, threads, kernel_code, algo, shape, dtype):
    n, c, co, h, w, pad = shape
    x = rng.standard_normal((n, c, h, w))
    dy = rng.standard_normal((n, co, h + 2 * pad - 2, w + 2 * pad - 2))
    layer_w, wino = run_conv(algo, conv_text(co, pad), x, dy, dtype)
    assert layer_w.chosen_algorithm() == expected_winograd(algo, kernel_code)
    layer_i, ref = run_conv("im2col", conv_text(co, pad), x, dy, dtype)
    assert layer_i.chosen_algorithm() == "im2col"
    tol = 1e-12 if dtype == np.float64 else 1e-4
    for got, want, what in zip(wino, ref, ["top", "bottom diff", "weight diff", "bias diff"]):
        err = np.abs(got - want).max() / np.abs(want).max()
        assert err < tol, f"{what}: relative error {err}"
    # forward against loops; backward against the adjoint identity <dy, conv(x)> = <conv^T(dy), x>
    w64 = layer_w.blobs[0].data.astype(np.float64)
    b64 = layer_w.blobs[1].data.astype(np.float64)
    want_y = direct_conv(x.astype(dtype).astype(np.float64), w64, b64, pad)
    assert np.abs(wino[0] - want_y).max() / np.abs(want_y).max() < tol
    lin = direct_conv(x.astype(dtype).astype(np.float64), w64, 0 * b64, pad)
    # the inner products are sums that may cancel: their error is relative to the sum of |terms|
    pairing = np.sum(dy.astype(dtype) * lin)
    assert abs(pairing - np.sum(wino[1] * x.astype(dtype))) < tol * 10 * np.sum(np.abs(wino[1] * x.astype(dtype)))
    assert abs(pairing - np.sum(wino[2] * w64)) < tol * 10 * np.sum(np.abs(wino[2] * w64))
    bias = dy.astype(dtype).astype(np.float64).sum(axis=(0, 2, 3))
    assert np.abs(wino[3] - bias).max() < tol * 10 * np.abs(dy).sum(axis=(0, 2, 3)).max()


WINO4_PATHS = {"chunked": None, "fused, whole images": policy.WINOGRAD_FUSED_MIN_TILES, "fused, 1-3 tile rows": 5}


def use_winograd4_path(monkeypatch, path):
    """F(4x4) chunked (every layer), or fused with blocks of whole images (the default rows for small maps)
    or of a few tile rows (partial last blocks; rows = ceil(5 / tw))."""
    rows_tiles = WINO4_PATHS[path]
    limit = 0 if rows_tiles is None else 1 << 62
    monkeypatch.setattr(policy, "WINOGRAD_FUSED_MAX_WEIGHT_BYTES", limit)
    monkeypatch.setattr(policy, "WINOGRAD_FUSED_KEEP_MAX_WEIGHT_BYTES", limit)
    if rows_tiles is not None:
        monkeypatch.setattr(policy, "WINOGRAD_FUSED_MIN_TILES", rows_tiles)
    calls = []
    fused = kernels.wino4_fused
    monkeypatch.setattr(kernels, "wino4_fused", lambda *a: (calls.append(a[-2:]), fused(*a))[1])
    return calls


def fused_blocks(ho, wo, min_tiles):
    """Blocks per image of a fused F(4x4) correlation with an ho x wo output."""
    th, tw = -(-ho // 4), -(-wo // 4)
    return -(-th // min(th, -(-min_tiles // tw)))


FUSED_SHAPES = [(2, 3, 4, 13, 11, 1), (3, 5, 2, 17, 10, 0), (1, 4, 6, 9, 30, 2), (2, 2, 3, 5, 7, 1), (1, 3, 2, 4, 4, 1)]


@pytest.mark.parametrize("shape", FUSED_SHAPES, ids=[f"n{s[0]}c{s[1]}o{s[2]}_{s[3]}x{s[4]}p{s[5]}" for s in FUSED_SHAPES])
@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
@pytest.mark.parametrize("path", list(WINO4_PATHS))
def test_winograd4_fused_blocks_equal_the_chunked_path_and_direct_loops(rng, monkeypatch, use_settings, threads, path,
                                                                         phase, shape):
    """Conv + in-place ReLU (the net fuses the ReLU into the convolution's output pass and keeps its mask),
    F(4x4): the fused blocks (input transform, 36 GEMMs and output transform per block of tile rows; in TRAIN
    the transformed input also kept for dW) against the chunked path and float64 loops: output, input and
    weight gradients, the ReLU mask's effect; each block computed exactly once."""
    if not kernels.built():
        pytest.skip("F(4x4) needs the C kernels")
    use_settings(c_kernels=True)
    n, c, co, h, w, pad = shape
    ho, wo = h + 2 * pad - 2, w + 2 * pad - 2
    x = rng.standard_normal((n, c, h, w))
    dy = rng.standard_normal((n, co, ho, wo))
    text = conv_text(co, pad, algorithm="winograd4") + ' layer { name: "r" type: "ReLU" bottom: "y" top: "y" }'
    results = {}
    for which in ("chunked", path):
        with monkeypatch.context() as m:
            calls = use_winograd4_path(m, which)
            net = layer_net(text, {"x": x}, phase=phase, dtype=np.float64, seed=2)
            conv = net.layer_dict["c"]
            net.blobs["x"].data[...] = x
            net.forward()
            assert conv.rectify_output  # the ReLU ran inside the convolution's output pass
            assert conv.forward_cache.valid == (phase == "TRAIN")
            y = net.blobs["y"].data.copy()
            net.blobs["y"].diff[...] = dy
            for p in conv.blobs:
                p.diff[...] = 0
            net.backward()
            results[which] = [y, net.blobs["x"].diff.copy(), conv.blobs[0].diff.copy(), conv.blobs[1].diff.copy()]
            if which == "chunked":
                assert not calls
            else:  # the forward's blocks (output tiles) and the input gradient's (input-sized tiles)
                want = n * fused_blocks(ho, wo, WINO4_PATHS[which]) + n * fused_blocks(h, w, WINO4_PATHS[which])
                assert sum(b1 - b0 for b0, b1 in calls) == want, "every block computed once"
    w64, b64 = conv.blobs[0].data, conv.blobs[1].data
    pre = direct_conv(x, w64, b64, pad)
    want_y = np.maximum(pre, 0)
    dpre = dy * (pre > 0)
    got = results[path]
    for a, b, what in zip(got, results["chunked"], ["top", "bottom diff", "weight diff", "bias diff"]):
        assert np.abs(a - b).max() <= 1e-12 * max(np.abs(b).max(), 1e-300), what
    np.testing.assert_allclose(got[0], want_y, rtol=0, atol=1e-12 * np.abs(want_y).max())
    np.testing.assert_allclose(got[3], dpre.sum(axis=(0, 2, 3)), rtol=0, atol=1e-12 * np.abs(dpre).sum())
    lin = direct_conv(x, w64, 0 * b64, pad)  # <dpre, conv(x)> = <dX, x> = <dW, w>
    assert abs(np.sum(dpre * lin) - np.sum(got[1] * x)) < 1e-11 * np.sum(np.abs(got[1] * x))
    assert abs(np.sum(dpre * lin) - np.sum(got[2] * w64)) < 1e-11 * np.sum(np.abs(got[2] * w64))


def test_winograd4_runs_fused_only_where_the_policy_says(rng, monkeypatch, use_settings):
    """Small-channel F(4x4) layers take the fused blocks; over the weight limit (or in TRAIN, over the keep
    limit) they run chunked; float32 results of the two paths agree to rounding."""
    if not kernels.built():
        pytest.skip("F(4x4) needs the C kernels")
    use_settings(c_kernels=True)
    x = rng.standard_normal((2, 8, 12, 12)).astype(np.float32)
    text = conv_text(8, 1, algorithm="winograd4")
    calls = []
    fused = kernels.wino4_fused
    monkeypatch.setattr(kernels, "wino4_fused", lambda *a: (calls.append(1), fused(*a))[1])
    ys = {}
    for phase, limit, keep_limit, expect in [("TEST", 1 << 30, 0, True), ("TEST", 36 * 8 * 8 * 4 - 1, 1 << 30, False),
                                             ("TRAIN", 1 << 30, 36 * 8 * 8 * 4, True),
                                             ("TRAIN", 1 << 30, 36 * 8 * 8 * 4 - 1, False)]:
        monkeypatch.setattr(policy, "WINOGRAD_FUSED_MAX_WEIGHT_BYTES", limit)
        monkeypatch.setattr(policy, "WINOGRAD_FUSED_KEEP_MAX_WEIGHT_BYTES", keep_limit)
        calls.clear()
        net = layer_net(text, {"x": x}, phase=phase, dtype=np.float32, seed=4)
        net.blobs["x"].data[...] = x
        net.forward()
        assert bool(calls) == expect, (phase, limit, keep_limit)
        ys[(phase, expect)] = net.blobs["y"].data.copy()
    for phase in ("TEST", "TRAIN"):
        assert_close_to_scale(ys[(phase, True)], ys[(phase, False)], 8 * 9)
    assert policy.winograd_fused_rows(np, 2, 8, 8, 3, 3, 4) == 0  # F(2x2) never
    assert policy.winograd_fused_rows(np, 4, 8, 8, 40, 56, 4) == 3  # ceil(160 / 56) rows of 56 tiles


@pytest.mark.parametrize("algo", ["winograd2", "winograd4"])
def test_winograd_gradients_numerically(rng, kernel_code, algo):
    check_gradients(conv_text(3, 1, algorithm=algo), {"x": rng.standard_normal((2, 2, 5, 4))})


@pytest.mark.parametrize("kwargs", [dict(kernel=5, pad=1), dict(stride=2, pad=1), dict(group=2, pad=1),
                                    dict(dilation=2, pad=1), dict(pad=3), dict(kernel=1, pad=0)])
def test_other_shapes_fall_back_to_im2col(rng, kwargs):
    net = layer_net(conv_text(4, algorithm="winograd", **kwargs), {"x": rng.standard_normal((2, 4, 9, 9))})
    layer = net.layers[1]
    assert not layer.winograd_applicable()
    assert layer.chosen_algorithm() == "im2col"


def test_algorithm_choice_is_overridable(rng, monkeypatch, use_settings):
    use_settings(conv_algorithm="auto", c_kernels=True)  # the C kernels on where built
    net = layer_net(conv_text(4, 1), {"x": rng.standard_normal((1, 32, 6, 6))}, dtype=np.float32)
    layer = net.layers[1]
    monkeypatch.setattr(policy, "SHIFTED_MIN_AREA", 1 << 62)
    monkeypatch.setattr(policy, "WINOGRAD_MIN_GEMM_SHARE", 1 << 62)
    assert layer.chosen_algorithm() == "im2col"  # auto, with Winograd off for every channel count
    monkeypatch.setattr(policy, "WINOGRAD_MIN_GEMM_SHARE", 3)  # 32 * 4 / (32 + 4) = 3.6
    assert policy.WINOGRAD_MIN_SIZE > 6 and layer.chosen_algorithm() == "im2col"  # a 6x6 output is too small
    monkeypatch.setattr(policy, "WINOGRAD_MIN_SIZE", 6)
    if kernels.built():
        assert layer.chosen_algorithm() == "winograd2"  # auto: eligible, enough GEMM work, C transforms
        monkeypatch.setattr(policy, "WINOGRAD4_MIN_SIZE", 6)
        assert layer.chosen_algorithm() == "winograd4"  # ... and an output of at least 6x6
        use_settings(c_kernels=False)
    assert layer.chosen_algorithm() == "im2col"  # NumPy transforms: auto needs a larger share
    monkeypatch.setattr(policy, "WINOGRAD_NUMPY_MIN_GEMM_SHARE", 3)
    assert layer.chosen_algorithm() == "winograd2"  # ... and then takes F(2x2) (F(4x4) needs the C kernels)
    monkeypatch.setattr(policy, "WINOGRAD_NUMPY_MIN_GEMM_SHARE", 1 << 62)
    use_settings(c_kernels=True)
    net.settings = net.settings.replace(conv_algorithm="im2col")  # the net's setting
    assert layer.chosen_algorithm() == "im2col"
    named = layer_net(conv_text(4, 1, algorithm="winograd"), {"x": rng.standard_normal((1, 32, 6, 6))})
    named.settings = named.settings.replace(conv_algorithm="im2col")
    assert named.layers[1].chosen_algorithm() == "winograd2"  # the prototxt wins over the settings
    with pytest.raises(VggtoolError, match="VGGTOOL_CONV_ALGO: unknown convolution algorithm 'fft'"):
        config.Settings.from_environ({"VGGTOOL_CONV_ALGO": "fft"})
    with pytest.raises(VggtoolError, match="layer 'c' .*vggtool_algorithm: unknown convolution algorithm 'fft'"):
        layer_net(conv_text(4, 1, algorithm="fft"), {"x": rng.standard_normal((1, 32, 6, 6))})
    small = layer_net(conv_text(4, 1), {"x": rng.standard_normal((1, 3, 6, 6))}).layers[1]
    assert small.chosen_algorithm() == "im2col"  # 3 input channels: transforms would dominate


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_im2col_threaded_equals_serial(rng, monkeypatch, use_settings, dtype):
    x = rng.standard_normal((3, 5, 7, 6))
    text = conv_text(4, 1, kernel=3, stride=2, group=1)
    dy = rng.standard_normal((3, 4, 4, 3))
    use_settings(num_threads=1)
    _, serial = run_conv("im2col", text, x, dy, dtype)
    monkeypatch.setattr(split_threads, "MIN_ELEMENTS", 0)
    use_settings(num_threads=2)
    _, threaded = run_conv("im2col", text, x, dy, dtype)
    for a, b in zip(serial, threaded):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("block", ["one block", "small blocks"])
@pytest.mark.parametrize("values", ["distinct", "ties"])
def test_2x2_max_pool_fast_path_equals_general_path(rng, threads, kernel_code, monkeypatch, values, block):
    x = rng.standard_normal((2, 3, 8, 6)) if values == "distinct" else rng.integers(0, 3, (2, 3, 8, 6)) * 1.0
    dy = rng.standard_normal((2, 3, 4, 3))
    if block == "small blocks":
        monkeypatch.setattr(pooling, "BLOCK_BYTES", 2 * 8 * 6 * 8)
    results = []
    for fast in (True, False):
        net = layer_net('layer { name: "p" type: "Pooling" bottom: "x" top: "y" top: "mask" '
                        'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }', {"x": x})
        layer = net.layers[1]
        assert layer._is_2x2_tiling(x.shape)
        if not fast:
            layer._is_2x2_tiling = lambda shape: False
        net.blobs["x"].data[...] = x
        net.forward_from_to(1, 1)
        net.blobs["y"].diff[...] = dy
        layer.backward([net.blobs["y"], net.blobs["mask"]], [True], [net.blobs["x"]])
        results.append([net.blobs["y"].data.copy(), net.blobs["mask"].data.copy(), net.blobs["x"].diff.copy()])
    for a, b in zip(*results):
        assert np.array_equal(a, b)
    # direct loops: max of each window, gradient routed to its first maximum
    want = x.reshape(2, 3, 4, 2, 3, 2).max(axis=(3, 5))
    assert np.array_equal(results[0][0], want)
    assert np.allclose(results[0][2].reshape(2, 3, 4, 2, 3, 2).sum(axis=(3, 5)), dy)


def test_odd_sized_2x2_pooling_takes_the_general_path(rng):
    net = layer_net('layer { name: "p" type: "Pooling" bottom: "x" top: "y" '
                    'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }', {"x": rng.standard_normal((1, 2, 5, 4))})
    assert not net.layers[1]._is_2x2_tiling(net.blobs["x"].shape)
    assert net.blobs["y"].shape == (1, 2, 3, 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans", [(False, False), (True, False), (False, True), (True, True)])
def test_gemm_accumulates_in_place(rng, dtype, trans):
    for m, k, n in [(5, 7, 3), (1, 4, 6), (6, 4, 1), (3, 1, 5), (40, 90, 30)]:
        a = rng.standard_normal((k, m) if trans[0] else (m, k)).astype(dtype)
        b = rng.standard_normal((n, k) if trans[1] else (k, n)).astype(dtype)
        a, b = (a.T if trans[0] else a), (b.T if trans[1] else b)
        big = rng.standard_normal((m + 2, n + 3)).astype(dtype)
        before = big.copy()
        c = big[1:m + 1, 2:n + 2]
        out = gemm.gemm(a, b, c, alpha=0.5, beta=2.0)
        assert out is c
        want = 0.5 * (a.astype(np.float64) @ b) + 2.0 * before[1:m + 1, 2:n + 2]
        assert_close_to_scale(c, want, k + 1, eps=float(np.finfo(dtype).eps))
        big[1:m + 1, 2:n + 2] = before[1:m + 1, 2:n + 2]
        assert np.array_equal(big, before)  # nothing outside c was touched


def test_gemm_numpy_fallback_matches(rng, monkeypatch):
    a, b = rng.standard_normal((4, 6)), rng.standard_normal((6, 5))[:, ::-1]  # negative strides: no BLAS
    c = np.ones((4, 5))
    gemm.gemm(a, b, c)
    assert np.allclose(c, 1 + a @ b)


@pytest.mark.parametrize("kwargs", [dict(kernel=3, pad=1), dict(kernel=3, pad=0), dict(kernel=3, pad=2, dilation=2),
                                    dict(kernel=5, pad=1)])
def test_bottom_diff_by_transposed_correlation_equals_col2im(rng, monkeypatch, kwargs):
    """Stride-1 layers get dX by correlating dY with the flipped kernel; it must equal the col2im path."""
    x = rng.standard_normal((2, 5, 9, 8))
    text = conv_text(4, **kwargs)
    net = layer_net(text, {"x": x})
    assert im2col_algo.transposed_geometry(net.layers[1]) is not None
    out_shape = net.blobs["y"].shape
    dy = rng.standard_normal(out_shape)
    _, fast = run_conv("im2col", text, x, dy, np.float64)
    monkeypatch.setattr(im2col_algo, "transposed_geometry", lambda layer: None)
    _, slow = run_conv("im2col", text, x, dy, np.float64)
    for a, b in zip(fast, slow):
        assert np.allclose(a, b, rtol=1e-12, atol=1e-12)
    monkeypatch.undo()
    check_gradients(text, {"x": rng.standard_normal((1, 5, 6, 5))}, max_checks=60)  # takes the new path


def test_split_run_covers_the_range_once_and_survives_fork(monkeypatch, use_settings):
    import os
    monkeypatch.setattr(split_threads, "MIN_ELEMENTS", 0)
    use_settings(num_threads=3)
    seen = []
    split_threads.split_run(lambda a, b: seen.append((a, b)), 10, 10)
    assert sorted(seen) == [(0, 3), (3, 6), (6, 10)]
    if not hasattr(os, "fork"):
        return
    pid = os.fork()
    if pid == 0:  # child: the inherited pool has no threads; split_run must still finish
        out = []
        split_threads.split_run(lambda a, b: out.append(b - a), 10, 10)
        os._exit(0 if sum(out) == 10 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0


@pytest.mark.parametrize("algo", ["im2col", "winograd2", "winograd4", "winograd4 chunked"])
def test_cached_forward_columns_give_the_same_weight_gradient(monkeypatch, use_settings, kernel_code, algo):
    """In TRAIN the forward column matrices (im2col) or transformed input tiles (Winograd; F(4x4) fused or
    chunked) are kept for backward (within the setting conv_cache_mb); the gradients equal those of
    recomputing them in backward."""
    if algo == "winograd4 chunked":
        use_winograd4_path(monkeypatch, "chunked")
        algo = "winograd4"
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 3, 9, 7)).astype(np.float32)
    stride = 2 if algo == "im2col" else 1
    ho, wo = (5, 4) if stride == 2 else (9, 7)
    dy = rng.standard_normal((5, 4, ho, wo)).astype(np.float32)
    text = ('layer { name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 4 '
            f'kernel_size: 3 pad: 1 stride: {stride} weight_filler {{ type: "gaussian" std: 0.3 }} }} }}')
    use_settings(conv_algorithm=algo)  # before the net is built: the cache is planned at reshape
    grads = {}
    for budget in ("4096", "0"):
        use_settings(conv_cache_mb=budget)
        monkeypatch.setattr(policy, "WORKSPACE_BYTES", 2000)  # several chunks
        monkeypatch.setattr(policy, "WINOGRAD_BYTES", 20000)
        net = layer_net(text, {"x": x}, dtype=np.float32, seed=1)
        layer = net.layer_dict["c"]
        assert layer.chosen_algorithm() == (expected_winograd(algo, kernel_code) if algo != "im2col" else algo)
        assert layer.forward_cache.enabled == (budget != "0")
        assert len(winograd_algo.plan(layer, x.shape, dy.shape, 2)) > 1 or algo == "im2col"
        net.blobs["x"].data[...] = x
        net.forward()
        assert layer.forward_cache.valid == (budget != "0")
        net.blobs["y"].diff[...] = dy
        net.backward()
        grads[budget] = (layer.blobs[0].diff.copy(), net.blobs["x"].diff.copy())
    assert_close_to_scale(grads["4096"][0], grads["0"][0], 5 * ho * wo)  # dW sums over images and positions
    assert_close_to_scale(grads["4096"][1], grads["0"][1], 4 * 9)  # dX sums over outputs and taps


@pytest.mark.parametrize("algo", ["winograd2", "winograd4"])
def test_winograd_matrices_are_made_once_per_dtype(monkeypatch, kernel_code, algo):
    """kron(G, G) goes to the layer's device once per (device, m, dtype), not in every forward and backward
    (on a GPU each copy is a host-to-device transfer); the cached matrix gives the same bits."""
    reads = []

    class CountedReads(dict):
        def __getitem__(self, m):
            reads.append(m)
            return super().__getitem__(m)

    monkeypatch.setattr(winograd_transforms, "_GG", CountedReads(winograd_transforms._GG))
    monkeypatch.setattr(winograd_transforms, "_device_matrices", {}, raising=False)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 8, 8))
    dy = rng.standard_normal((2, 4, 8, 8))
    for dtype in (np.float32, np.float64):
        net = layer_net(conv_text(4, 1, algorithm=algo), {"x": x}, dtype=dtype)
        runs = []
        for _ in range(3):
            net.blobs["x"].data[...] = x
            net.forward()
            net.blobs["y"].diff[...] = dy
            net.clear_param_diffs()
            net.backward()
            runs.append([net.blobs["y"].data.copy(), net.blobs["x"].diff.copy(), net.layers[1].blobs[0].diff.copy()])
        for later in runs[1:]:
            for got, want in zip(later, runs[0]):
                np.testing.assert_array_equal(got, want)
        w = net.layers[1].blobs[0].data
        m = int(net.layers[1].chosen_algorithm()[-1])
        fresh = np.matmul(np.kron(winograd_transforms._G[m], winograd_transforms._G[m]).astype(dtype),
                          w.reshape(-1, 9).T).reshape(-1, w.shape[0], w.shape[1])
        np.testing.assert_array_equal(winograd_transforms.weight_transform(np, w, m), fresh)
    assert len(reads) == 2, reads  # one per dtype over three passes of forward, backward data and weights
    assert winograd_transforms.transform_matrix(np, 2, x) is winograd_transforms.transform_matrix(np, 2, x)
    assert not winograd_transforms.transform_matrix(np, 2, x).flags.writeable


SHIFTED_CASES = [dict(pad=1), dict(pad=0), dict(pad=2, dilation=2), dict(kernel=5, pad=1), dict(group=2, pad=1),
                 dict(kernel=2, pad=1)]


@pytest.mark.parametrize("kwargs", SHIFTED_CASES, ids=[str(k) for k in SHIFTED_CASES])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_shifted_equals_im2col_and_direct_loops(rng, threads, monkeypatch, kwargs, dtype):
    """The shifted-GEMM algorithm (forward, dX, dW, db) against im2col, over several chunks."""
    monkeypatch.setattr(policy, "WORKSPACE_BYTES", 3000)  # several chunks of images
    x = rng.standard_normal((3, 4, 9, 7))
    text = conv_text(6, **kwargs)
    dy = rng.standard_normal(layer_net(text, {"x": x}).blobs["y"].shape)
    layer_s, got = run_conv("shifted", text, x, dy, dtype)
    assert layer_s.chosen_algorithm() == "shifted"
    _, ref = run_conv("im2col", text, x, dy, dtype)
    tol = 1e-12 if dtype == np.float64 else 1e-4
    for g, w, what in zip(got, ref, ["top", "bottom diff", "weight diff", "bias diff"]):
        err = np.abs(g - w).max() / np.abs(w).max()
        assert err < tol, f"{what}: relative error {err}"
    if kwargs in (dict(pad=1), dict(pad=0)):  # and the forward against loops
        want = direct_conv(x.astype(dtype).astype(np.float64), layer_s.blobs[0].data.astype(np.float64),
                           layer_s.blobs[1].data.astype(np.float64), kwargs["pad"])
        assert np.abs(got[0] - want).max() / np.abs(want).max() < tol


@pytest.mark.parametrize("kwargs", [dict(pad=1), dict(group=2, pad=2, dilation=2)])
def test_shifted_gradients_numerically(rng, kwargs):
    check_gradients(conv_text(4, algorithm="shifted", **kwargs), {"x": rng.standard_normal((2, 4, 6, 5))},
                    max_checks=80)


@pytest.mark.parametrize("kwargs", [dict(stride=2, pad=1), dict(kernel=1, pad=0), dict(pad=3)])
def test_shifted_falls_back_to_im2col(rng, kwargs):
    """Stride > 1, pointwise, and pads the flipped-kernel dX cannot express take im2col."""
    layer = layer_net(conv_text(4, algorithm="shifted", **kwargs), {"x": rng.standard_normal((2, 4, 9, 9))}).layers[1]
    assert not layer.shifted_applicable()
    assert layer.chosen_algorithm() == "im2col"


def test_auto_takes_shifted_for_large_inputs_with_enough_channels(rng, monkeypatch, use_settings):
    use_settings(conv_algorithm="auto")
    monkeypatch.setattr(policy, "SHIFTED_MIN_AREA", 36)
    big = layer_net(conv_text(4, 1), {"x": rng.standard_normal((1, 16, 6, 6))}).layers[1]
    assert big.chosen_algorithm() == "shifted"
    assert not big.forward_cache.enabled  # no forward columns to keep
    few = layer_net(conv_text(4, 1), {"x": rng.standard_normal((1, 15, 6, 6))}).layers[1]
    assert few.chosen_algorithm() == "im2col"
    small = layer_net(conv_text(4, 1), {"x": rng.standard_normal((1, 16, 5, 7))}).layers[1]
    assert small.chosen_algorithm() == "im2col"
    big.net.settings = big.net.settings.replace(conv_algorithm="im2col")
    assert big.chosen_algorithm() == "im2col"


@pytest.mark.parametrize("algo, bound", [("winograd2", 2e-6), ("winograd4", 3e-5)])
def test_winograd_float32_rounding_on_a_realistic_layer(rng, use_settings, algo, bound):
    """F(4x4)'s transforms amplify float32 rounding (larger interpolation points) more than F(2x2)'s:
    measured 5e-6 and 4e-7 (max error relative to the largest output) on a 64->64 layer with ReLU inputs,
    against im2col's 5e-7; bounded here a few times above those."""
    if algo == "winograd4" and not kernels.built():
        pytest.skip("F(4x4) runs only with the C kernels")
    use_settings(c_kernels=True)
    x = np.maximum(rng.standard_normal((1, 64, 28, 28)), 0)
    text = ('layer { name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 64 '
            'kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.06 } } }')
    out = {}
    for name, dtype in (("im2col", np.float64), (algo, np.float32)):
        net = layer_net(with_algorithm(text, name), {"x": x}, dtype=dtype, seed=1)
        net.blobs["x"].data[...] = x
        net.forward_from_to(1, 1)
        assert net.layers[1].chosen_algorithm() == name
        out[name] = net.blobs["y"].data.astype(np.float64)
    err = np.abs(out[algo] - out["im2col"]).max() / np.abs(out["im2col"]).max()
    assert err < bound


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 5), co=st.integers(1, 5), h=st.integers(1, 14), w=st.integers(1, 14),
       pad=st.integers(0, 2), algo=st.sampled_from(["winograd2", "winograd4"]), seed=st.integers(0, 2 ** 16),
       path=st.sampled_from(list(WINO4_PATHS)))
def test_winograd_matches_im2col_on_any_shape(n, c, co, h, w, pad, algo, seed, path):
    """Forward, input gradient and weight gradient of both Winograd tilings (with whatever transforms this
    install has; F(4x4) chunked or fused) against im2col, in float64, on shapes whose outputs are not
    multiples of the tile."""
    assume(h + 2 * pad >= 3 and w + 2 * pad >= 3)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w))
    dy = rng.standard_normal((n, co, h + 2 * pad - 2, w + 2 * pad - 2))
    with pytest.MonkeyPatch.context() as m:
        use_winograd4_path(m, path)
        _, got = run_conv(algo, conv_text(co, pad), x, dy, np.float64)
    _, want = run_conv("im2col", conv_text(co, pad), x, dy, np.float64)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 4), co=st.integers(1, 4), h=st.integers(1, 9), w=st.integers(1, 24),
       kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)), stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       pad=st.tuples(st.integers(0, 3), st.integers(0, 3)), dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
       group=st.sampled_from([1, 2]), dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2 ** 16))
def test_c_im2col_and_col2im_equal_the_numpy_copies(n, c, co, h, w, kernel, stride, pad, dilation, group, dtype, seed):
    """The C im2col (straight from the images) and col2im (straight into dX) against NumPy's padded buffer and
    strided slice copies, on any geometry: the same columns and the same additions in the same order, so the
    forward and all three gradients are bit-identical in both precisions. Widths up to 24 reach both of the
    C im2col's paths (outputs narrower than 16 go through a zero-bordered plane)."""
    if not kernels.built():
        pytest.skip("the C kernels were not built (no C compiler at install time)")
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, pad, dilation
    ho, wo = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    assume(ho >= 1 and wo >= 1)
    c, co = c * group, co * group
    text = ('layer { name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { '
            f'num_output: {co} kernel_h: {kh} kernel_w: {kw} stride_h: {sh} stride_w: {sw} pad_h: {ph} pad_w: {pw} '
            f'dilation: {dh} dilation: {dw} group: {group} '
            'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 } } }')
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w))
    dy = rng.standard_normal((n, co, ho, wo))
    results = {}
    for c_kernels in (True, False):
        with config.override(c_kernels=c_kernels):
            _, results[c_kernels] = run_conv("im2col", text, x, dy, dtype)
    for got, want in zip(results[True], results[False]):
        assert np.array_equal(got, want)


# F(4x4, 3x3)'s B^T and A^T (Lavin & Gray 2015, points 0, 1, -1, 2, -2), written out here independently of
# the C kernels, which hard-code their sums and differences.
WINO4_BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                     [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=np.float64)
F64_EPS = np.finfo(np.float64).eps  # each transformed value sums 36 products with small integer factors
WINO4_AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
                    dtype=np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("h, w, pad", [(37, 45, 1), (64, 64, 0), (29, 70, 2), (5, 3, 1)])
def test_c_winograd4_transforms_equal_their_matrix_form(rng, h, w, pad, dtype):
    """The C F(4x4) input transform (B^T d B per 6x6 tile, stride 4), output transform (A^T M A + bias) and
    its adjoint (A dY A^T) against the matrices above, tile by tile, computed in float64, on rows wide
    enough for the kernels' vectorised loops (float32 has its own) and on sizes that are not multiples of
    the tile."""
    if not kernels.built():
        pytest.skip("the C kernels were not built (no C compiler at install time)")
    eps = F64_EPS if dtype == np.float64 else F32_EPS
    n, c = 2, 3
    ho, wo = h + 2 * pad - 2, w + 2 * pad - 2
    th, tw = winograd_transforms.tiles(ho, wo, 4)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    padded = np.zeros((n, c, 4 * th + 2, 4 * tw + 2))
    padded[:, :, pad:pad + h, pad:pad + w] = x[:, :, :4 * th + 2 - pad, :4 * tw + 2 - pad]
    d = np.stack([np.stack([padded[:, :, 4 * r:4 * r + 6, 4 * q:4 * q + 6] for q in range(tw)], 2)
                  for r in range(th)], 2)  # (n, c, th, tw, 6, 6)
    want_v = np.einsum("ai,nctqij,bj->abcntq", WINO4_BT, d, WINO4_BT).reshape(36, c, n, th, tw)
    got_v = np.full((36, c, n, th, tw), np.nan, dtype)
    kernels.wino_input(x, (pad, pad), got_v)
    assert_close_to_scale(got_v, want_v, k_terms=36, eps=eps)

    m = rng.standard_normal((36, c, n, th, tw)).astype(dtype)
    bias = rng.standard_normal(c).astype(dtype)
    tiles_out = np.einsum("ai,ijcntq,bj->ntaqbc", WINO4_AT, m.reshape(6, 6, c, n, th, tw), WINO4_AT)
    want_y = (tiles_out.reshape(n, 4 * th, 4 * tw, c).transpose(0, 3, 1, 2)[:, :, :ho, :wo]
              + bias.reshape(1, c, 1, 1))
    got_y = np.full((n, c, ho, wo), np.nan, dtype)
    kernels.wino_output(m, got_y, bias)
    assert_close_to_scale(got_y, want_y, k_terms=36, eps=eps)

    dy = rng.standard_normal((n, c, ho, wo)).astype(dtype)
    full = np.zeros((n, c, 4 * th, 4 * tw))
    full[:, :, :ho, :wo] = dy
    g = full.reshape(n, c, th, 4, tw, 4)
    want_dm = np.einsum("ai,nctaqb,bj->ijcntq", WINO4_AT, g, WINO4_AT).reshape(36, c, n, th, tw)
    got_dm = np.full((36, c, n, th, tw), np.nan, dtype)
    kernels.wino_output_adjoint(dy, got_dm)
    assert_close_to_scale(got_dm, want_dm, k_terms=36, eps=eps)


def test_independent_gemms_split_over_single_threaded_blas_and_restore_its_count(monkeypatch):
    """Winograd's per-position GEMMs run in threads of one BLAS thread each, every GEMM once, with the same
    products as one after another; the process's BLAS thread count is put back after, also on an error."""
    before = gemm.blas_threads()
    if before is None:
        pytest.skip("OpenBLAS's thread count cannot be read here")
    monkeypatch.setattr(split_threads, "MIN_ELEMENTS", 0)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((6, 5, 7)), rng.standard_normal((6, 7, 9))
    out = np.zeros((6, 5, 9))
    seen, counts = [], []

    def positions(x0, x1):
        counts.append(gemm.blas_threads())
        for i in range(x0, x1):
            seen.append(i)
            gemm.gemm(a[i], b[i], out[i], beta=0.0)

    gemm.set_blas_threads(2)
    try:
        gemm.independent_gemms(positions, 6, out.size)
        assert sorted(seen) == list(range(6)) and set(counts) == {1} and len(counts) == 2
        assert gemm.blas_threads() == 2
        np.testing.assert_allclose(out, np.matmul(a, b), rtol=1e-12, atol=1e-12)
        with pytest.raises(ZeroDivisionError):
            gemm.independent_gemms(lambda x0, x1: 1 / 0, 6, out.size)
        assert gemm.blas_threads() == 2
        gemm.set_blas_threads(1)  # as inside concurrent CPU lanes: the caller runs them all, as they are
        seen.clear(), counts.clear()
        gemm.independent_gemms(positions, 6, out.size)
        assert counts == [1] and sorted(seen) == list(range(6))
    finally:
        gemm.set_blas_threads(before)
