"""Convolution: gradient checks of every geometry variant and forward values against a direct loop."""
import numpy as np
import pytest
from numerics import assert_close_to_scale

from vggtool.errors import VggtoolError
from vggtool.testing import check_gradients, layer_net

FILLERS = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 }'


def conv_text(geometry, bottoms=("x",), tops=("y",), num_output=4, extra=FILLERS):
    b = "".join(f' bottom: "{n}"' for n in bottoms)
    t = "".join(f' top: "{n}"' for n in tops)
    return (f'layer {{ name: "c" type: "Convolution"{b}{t} convolution_param {{ num_output: {num_output} '
            f'{geometry} {extra} }} }}')


def conv_reference(x, w, b, stride, pad, dilation, group):
    """Caffe's convolution, one output value at a time (zero padding, cross-correlation)."""
    n_, c_, h_, w_ = x.shape
    out_c, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, pad, dilation
    ho = (h_ + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    wo = (w_ + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    og = out_c // group
    y = np.zeros((n_, out_c, ho, wo))
    for n in range(n_):
        for o in range(out_c):
            g = o // og
            for i in range(ho):
                for j in range(wo):
                    s = 0.0 if b is None else float(b[o])
                    for c in range(cg):
                        for p in range(kh):
                            for q in range(kw):
                                yy, xx = i * sh - ph + p * dh, j * sw - pw + q * dw
                                if 0 <= yy < h_ and 0 <= xx < w_:
                                    s += x[n, g * cg + c, yy, xx] * w[o, c, p, q]
                    y[n, o, i, j] = s
    return y


CASES = [
    # (geometry text, input shape, stride, pad, dilation, group)
    ("kernel_size: 3", (2, 2, 5, 5), (1, 1), (0, 0), (1, 1), 1),
    ("kernel_size: 3 pad: 1 stride: 2 group: 2", (2, 4, 6, 5), (2, 2), (1, 1), (1, 1), 2),
    ("kernel_size: 3 dilation: 2 pad: 2", (1, 2, 7, 6), (1, 1), (2, 2), (2, 2), 1),
    ("kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 pad_h: 1 pad_w: 0", (2, 3, 5, 7), (1, 2), (1, 0), (1, 1), 1),
    ("kernel_size: 1", (2, 3, 3, 4), (1, 1), (0, 0), (1, 1), 1),
    ("kernel_size: 2 stride: 3 group: 4", (1, 4, 7, 7), (3, 3), (0, 0), (1, 1), 4),
]


@pytest.mark.parametrize("geometry,shape,stride,pad,dilation,group", CASES)
def test_convolution_matches_direct_loop_float32(geometry, shape, stride, pad, dilation, group):
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape).astype(np.float32)
    net = layer_net(conv_text(geometry), {"x": x}, dtype=np.float32)
    net.blobs["x"].data[...] = x
    net.forward_from_to(1)
    w, b = (p.data.astype(np.float64) for p in net.params["c"])
    expected = conv_reference(x.astype(np.float64), w, b, stride, pad, dilation, group)
    got = net.blobs["y"].data
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert_close_to_scale(got, expected, w[0].size + 1)  # C/group x kh x kw products and the bias


@pytest.mark.parametrize("geometry,shape", [(c[0], c[1]) for c in CASES])
def test_convolution_gradients(geometry, shape, engine):
    rng = np.random.default_rng(6)
    check_gradients(conv_text(geometry), {"x": rng.standard_normal(shape)}, max_checks=40, **engine)


def test_convolution_without_bias():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 2, 4, 4))
    text = conv_text("kernel_size: 3 pad: 1 bias_term: false", extra='weight_filler { type: "gaussian" std: 1 }')
    net = check_gradients(text, {"x": x}, max_checks=40)
    assert len(net.params["c"]) == 1
    net.blobs["x"].data[...] = x
    net.forward_from_to(1)  # the checker leaves the last perturbed forward behind
    expected = conv_reference(x, net.params["c"][0].data, None, (1, 1), (1, 1), (1, 1), 1)
    np.testing.assert_allclose(net.blobs["y"].data, expected, rtol=1e-10, atol=1e-12)


def test_convolution_two_bottoms_share_weights_and_sum_gradients():
    rng = np.random.default_rng(8)
    x1, x2 = rng.standard_normal((2, 1, 2, 4, 4))
    text = conv_text("kernel_size: 3 stride: 1", bottoms=("x1", "x2"), tops=("y1", "y2"), num_output=3)
    net = check_gradients(text, {"x1": x1, "x2": x2}, max_checks=40)
    net.blobs["x1"].data[...], net.blobs["x2"].data[...] = x1, x2
    net.forward_from_to(1)
    w, b = (p.data for p in net.params["c"])
    for x, y in ((x1, "y1"), (x2, "y2")):
        np.testing.assert_allclose(net.blobs[y].data, conv_reference(x, w, b, (1, 1), (0, 0), (1, 1), 1),
                                   rtol=1e-10, atol=1e-12)


def test_convolution_hand_computed():
    # 1x1x3x3 input 1..9, a 2x2 kernel of ones, bias 0.5: each output is the sum of a 2x2 block + 0.5.
    x = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
    text = conv_text("kernel_size: 2", num_output=1,
                     extra='weight_filler { type: "constant" value: 1 } bias_filler { type: "constant" value: 0.5 }')
    net = layer_net(text, {"x": x}, dtype=np.float32)
    out = net.forward(x=x)["y"]
    np.testing.assert_array_equal(out[0, 0], [[12.5, 16.5], [24.5, 28.5]])  # 1+2+4+5+.5, ...


def test_convolution_bad_group_is_a_clear_error():
    with pytest.raises(VggtoolError, match="group 2 must divide"):
        layer_net(conv_text("kernel_size: 1 group: 2"), {"x": np.zeros((1, 3, 2, 2))})
