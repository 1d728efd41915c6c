"""Pooling: Caffe's output sizes, MAX/AVE values against a direct loop of Caffe's algorithm, gradients."""
import math

import numpy as np
import pytest
from numerics import assert_close_to_scale

from vggtool.errors import VggtoolError
from vggtool.testing import check_gradients, layer_net


def pool_text(spec, tops=("y",)):
    t = "".join(f' top: "{n}"' for n in tops)
    return f'layer {{ name: "p" type: "Pooling" bottom: "x"{t} pooling_param {{ {spec} }} }}'


def forward(spec, x, tops=("y",)):
    net = layer_net(pool_text(spec, tops), {"x": x}, dtype=x.dtype)
    net.forward(x=x)
    return [net.blobs[t].data for t in tops]


def caffe_pooled(size, k, s, p, ceil_mode, any_pad):
    """Caffe's PoolingLayer::Reshape, written out independently."""
    span = (size + 2 * p - k) / s
    out = (math.ceil(span) if ceil_mode else math.floor(span)) + 1
    if any_pad and (out - 1) * s >= size + p:
        out -= 1
    return out


def pool_reference(x, method, k, s, p, ceil_mode=True):
    """Caffe's Forward_cpu loops: MAX over the window clipped to the image (first max wins, flat
    index h*W+w as the mask), AVE = sum over the clipped window / size of the window clipped to H+pad."""
    (kh, kw), (sh, sw), (ph, pw) = k, s, p
    n_, c_, h_, w_ = x.shape
    any_pad = bool(ph or pw)
    ho = caffe_pooled(h_, kh, sh, ph, ceil_mode, any_pad)
    wo = caffe_pooled(w_, kw, sw, pw, ceil_mode, any_pad)
    y = np.zeros((n_, c_, ho, wo))
    mask = np.full((n_, c_, ho, wo), -1.0)
    for n in range(n_):
        for c in range(c_):
            for i in range(ho):
                for j in range(wo):
                    hs, ws = i * sh - ph, j * sw - pw
                    he, we = min(hs + kh, h_ + ph), min(ws + kw, w_ + pw)
                    size = (he - hs) * (we - ws)
                    hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h_), min(we, w_)
                    if method == "MAX":
                        best, idx = -np.inf, -1
                        for yy in range(max(i * sh - ph, 0), min(i * sh - ph + kh, h_)):
                            for xx in range(max(j * sw - pw, 0), min(j * sw - pw + kw, w_)):
                                if x[n, c, yy, xx] > best:
                                    best, idx = x[n, c, yy, xx], yy * w_ + xx
                        y[n, c, i, j], mask[n, c, i, j] = best, idx
                    else:
                        y[n, c, i, j] = x[n, c, hs:he, ws:we].sum() / size
    return y, mask


@pytest.mark.parametrize("h,w,spec,expected", [
    (7, 7, "kernel_size: 3 stride: 2", (3, 3)),           # (7-3)/2 + 1
    (6, 6, "kernel_size: 3 stride: 2", (3, 3)),           # ceil(3/2) + 1: the last window hangs over
    (6, 6, "kernel_size: 3 stride: 2 round_mode: FLOOR", (2, 2)),
    (6, 6, "kernel_size: 3 stride: 2 pad: 1", (4, 4)),    # ceil(5/2) + 1, last start 6 < 6 + 1
    (5, 5, "kernel_size: 2 stride: 2 pad: 1", (3, 3)),    # ceil(5/2) + 1 = 4, but start 6 >= 5 + 1
    (224, 224, "kernel_size: 2 stride: 2", (112, 112)),   # VGG's pools
    (13, 13, "kernel_size: 3 stride: 2", (6, 6)),
    # Caffe applies the last-window rule to both axes once either is padded: rows 3 -> 2.
    (7, 4, "kernel_h: 2 kernel_w: 2 stride_h: 4 stride_w: 1 pad_h: 0 pad_w: 1", (2, 5)),
    (7, 4, "kernel_h: 2 kernel_w: 2 stride_h: 4 stride_w: 1", (3, 3)),
    (5, 3, "global_pooling: true", (1, 1)),
])
def test_output_sizes(h, w, spec, expected):
    (y,) = forward("pool: MAX " + spec, np.zeros((1, 1, h, w), dtype=np.float32))
    assert y.shape[2:] == expected


CASES = [
    ((1, 1, 7, 7), (3, 3), (2, 2), (0, 0), True),
    ((2, 2, 6, 6), (3, 3), (2, 2), (0, 0), True),
    ((2, 2, 6, 6), (3, 3), (2, 2), (0, 0), False),
    ((1, 2, 6, 5), (3, 3), (2, 2), (1, 1), True),
    ((1, 2, 5, 5), (2, 2), (2, 2), (1, 1), True),
    ((2, 1, 7, 4), (2, 2), (4, 1), (0, 1), True),
    ((1, 2, 4, 6), (2, 3), (1, 2), (1, 2), True),
]


def spec_of(k, s, p, ceil_mode):
    return (f"kernel_h: {k[0]} kernel_w: {k[1]} stride_h: {s[0]} stride_w: {s[1]} pad_h: {p[0]} pad_w: {p[1]}"
            + ("" if ceil_mode else " round_mode: FLOOR"))


@pytest.mark.parametrize("shape,k,s,p,ceil_mode", CASES)
def test_max_and_ave_match_direct_loop_float32(shape, k, s, p, ceil_mode):
    rng = np.random.default_rng(11)
    x = rng.standard_normal(shape).astype(np.float32)
    spec = spec_of(k, s, p, ceil_mode)
    y, mask = forward("pool: MAX " + spec, x, tops=("y", "mask"))
    ref_y, ref_mask = pool_reference(x.astype(np.float64), "MAX", k, s, p, ceil_mode)
    np.testing.assert_allclose(y, ref_y, rtol=1e-5)
    np.testing.assert_array_equal(mask, ref_mask)
    (y,) = forward("pool: AVE " + spec, x)
    ref_y, _ = pool_reference(x.astype(np.float64), "AVE", k, s, p, ceil_mode)
    assert_close_to_scale(y, ref_y, k[0] * k[1])


@pytest.mark.parametrize("shape,k,s,p,ceil_mode", CASES)
def test_gradients(shape, k, s, p, ceil_mode, engine):
    rng = np.random.default_rng(12)
    x = rng.permutation(math.prod(shape)).reshape(shape) * 0.01  # distinct values: no ties for MAX
    spec = spec_of(k, s, p, ceil_mode)
    check_gradients(pool_text("pool: MAX " + spec), {"x": x}, max_checks=60, **engine)
    check_gradients(pool_text("pool: AVE " + spec), {"x": x}, max_checks=60, **engine)


def test_ave_divisor_counts_padding_up_to_h_plus_pad():
    # 4x4 ones, kernel 3, stride 2, pad 1 -> 3x3. Window (0,0) covers rows/cols -1..1: 9 cells of which
    # 4 are in the image -> 4/9. The last windows start at 3 and end at min(6, 4+1) = 5: 2 cells, so
    # window (2,2) divides 1 image cell by 2*2; window (0,2) divides 2 cells by 3*2.
    (y,) = forward("pool: AVE kernel_size: 3 stride: 2 pad: 1", np.ones((1, 1, 4, 4), dtype=np.float32))
    expected = [[4 / 9, 6 / 9, 2 / 6],
                [6 / 9, 9 / 9, 3 / 6],
                [2 / 6, 3 / 6, 1 / 4]]
    np.testing.assert_allclose(y[0, 0], expected, rtol=1e-6)


def test_ave_ceil_mode_window_past_the_image_without_pad():
    # 1x1x1x3 [1, 2, 3], kernel 2 stride 2, no pad -> 2 outputs; the second window holds only 3 and
    # Caffe divides by min(2+2, 3+0) - 2 = 1.
    (y,) = forward("pool: AVE kernel_size: 2 stride: 2", np.array([[[[1, 2, 3]] * 2]], dtype=np.float32))
    np.testing.assert_allclose(y[0, 0, 0], [(1 + 2 + 1 + 2) / 4, (3 + 3) / 2])


def test_max_ignores_padding():
    x = -1 - np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)  # all negative: a 0 from padding would win
    y, mask = forward("pool: MAX kernel_size: 3 stride: 2 pad: 1", x, tops=("y", "mask"))
    # Windows (rows, cols) clipped to the image: (0-1, 0-1), (0-1, 1-2), (1-2, 0-1), (1-2, 1-2).
    np.testing.assert_array_equal(y[0, 0], [[-1, -2], [-4, -5]])
    np.testing.assert_array_equal(mask[0, 0], [[0, 1], [3, 4]])


def test_max_first_maximum_wins_and_gets_the_gradient():
    x = np.ones((1, 1, 2, 2))
    net = layer_net(pool_text("pool: MAX kernel_size: 2", tops=("y", "mask")), {"x": x})
    net.forward(x=x)
    assert net.blobs["mask"].data.item() == 0
    net.blobs["y"].diff[...] = 5
    net.backward_from_to(1, 1)
    np.testing.assert_array_equal(net.blobs["x"].diff[0, 0], [[5, 0], [0, 0]])


def test_max_overlapping_windows_accumulate_gradient():
    # 1x3 row [0, 9, 0] (as 1x1x1x3), kernel 1x2 stride 1: both windows pick the 9.
    x = np.array([0.0, 9.0, 0.0]).reshape(1, 1, 1, 3)
    net = layer_net(pool_text("pool: MAX kernel_h: 1 kernel_w: 2 stride: 1"), {"x": x})
    net.forward(x=x)
    net.blobs["y"].diff[...] = [[[[1.0, 2.0]]]]
    net.backward_from_to(1, 1)
    np.testing.assert_array_equal(net.blobs["x"].diff.ravel(), [0, 3, 0])


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_global_pooling(method, engine):
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 3, 4, 5))
    (y,) = forward(f"pool: {method} global_pooling: true", x.astype(np.float32))
    expected = x.max(axis=(2, 3)) if method == "MAX" else x.mean(axis=(2, 3))
    assert_close_to_scale(y[:, :, 0, 0], expected, 4 * 5)
    check_gradients(pool_text(f"pool: {method} global_pooling: true"), {"x": x}, **engine)


def test_mask_top_does_not_disturb_gradients(engine):
    rng = np.random.default_rng(14)
    x = rng.permutation(2 * 5 * 5).reshape(1, 2, 5, 5) * 0.1
    check_gradients(pool_text("pool: MAX kernel_size: 3 stride: 2 pad: 1", tops=("y", "mask")), {"x": x}, **engine)


@pytest.mark.parametrize("spec,message", [
    ("pool: MAX kernel_size: 2 pad: 2", "must be smaller than the kernel"),
    ("pool: MAX", "kernel_size"),
    ("pool: MAX global_pooling: true kernel_size: 2", "global_pooling"),
    ("pool: AVE global_pooling: true stride: 2", "stride 1"),
])
def test_bad_parameters_are_clear_errors(spec, message):
    with pytest.raises(VggtoolError, match=message):
        layer_net(pool_text(spec), {"x": np.zeros((1, 1, 4, 4))})


def test_ave_with_mask_top_is_an_error():
    with pytest.raises(VggtoolError, match="only produced by MAX"):
        layer_net(pool_text("pool: AVE kernel_size: 2", tops=("y", "m")), {"x": np.zeros((1, 1, 4, 4))})
