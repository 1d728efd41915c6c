"""LRN: both regions against direct loops of Caffe's definitions, a hand-computed case, gradients."""
import numpy as np
import pytest

from vggtool.errors import VggtoolError
from vggtool.testing import check_gradients, layer_net


def lrn_text(size, alpha, beta, k=1.0, region="ACROSS_CHANNELS"):
    return (f'layer {{ name: "n" type: "LRN" bottom: "x" top: "y" lrn_param {{ local_size: {size} '
            f'alpha: {alpha} beta: {beta} k: {k} norm_region: {region} }} }}')


def across_reference(x, size, alpha, beta, k):
    n_, c_, h_, w_ = x.shape
    pre = (size - 1) // 2
    y = np.zeros_like(x)
    for n in range(n_):
        for c in range(c_):
            for i in range(h_):
                for j in range(w_):
                    s = sum(x[n, cc, i, j] ** 2 for cc in range(max(0, c - pre), min(c_, c - pre + size)))
                    y[n, c, i, j] = x[n, c, i, j] * (k + alpha / size * s) ** -beta
    return y


def within_reference(x, size, alpha, beta):
    """Caffe: x * (1 + alpha * AVE-pool(x^2; kernel size, stride 1, pad (size-1)/2))^-beta, with the
    AVE divisor of Caffe's pooling (window clipped to H + pad)."""
    n_, c_, h_, w_ = x.shape
    pre = (size - 1) // 2
    y = np.zeros_like(x)
    for n in range(n_):
        for c in range(c_):
            for i in range(h_):
                for j in range(w_):
                    hs, ws = i - pre, j - pre
                    he, we = min(hs + size, h_ + pre), min(ws + size, w_ + pre)
                    divisor = (he - hs) * (we - ws)
                    s = (x[n, c, max(hs, 0):min(he, h_), max(ws, 0):min(we, w_)] ** 2).sum()
                    y[n, c, i, j] = x[n, c, i, j] * (1 + alpha * s / divisor) ** -beta
    return y


def forward(text, x):
    net = layer_net(text, {"x": x}, dtype=x.dtype)
    net.forward(x=x)
    return net.blobs["y"].data


def test_across_channels_hand_computed():
    # One pixel, channels 1, 2, 3; size 3, alpha 3 (alpha/size = 1), beta 1, k 1:
    # scales 1 + (1 + 4) = 6, 1 + (1 + 4 + 9) = 15, 1 + (4 + 9) = 14.
    x = np.array([1, 2, 3], dtype=np.float32).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(forward(lrn_text(3, 3, 1), x).ravel(), [1 / 6, 2 / 15, 3 / 14], rtol=1e-6)


def test_within_channel_hand_computed():
    # One channel 1x2 [1, 2], size 3: every window holds both cells, divisor 9 -> avg 5/9;
    # alpha 9/5, beta 1: y = x / (1 + 1) = [0.5, 1]. k is not used by WITHIN_CHANNEL.
    x = np.array([1, 2], dtype=np.float32).reshape(1, 1, 1, 2)
    y = forward(lrn_text(3, 9 / 5, 1, k=7, region="WITHIN_CHANNEL"), x)
    np.testing.assert_allclose(y.ravel(), [0.5, 1.0], rtol=1e-6)


@pytest.mark.parametrize("size,alpha,beta,k,shape", [
    (5, 1e-4, 0.75, 2.0, (2, 7, 3, 3)),   # AlexNet/VGG-LRN settings (VGG uses k 2)
    (3, 0.5, 0.75, 1.0, (1, 4, 2, 3)),
    (1, 0.3, 0.5, 1.5, (1, 3, 2, 2)),
    (7, 2.0, 1.2, 1.0, (1, 5, 2, 2)),      # window wider than the channels
])
def test_across_channels_matches_loop(size, alpha, beta, k, shape, engine):
    x = np.random.default_rng(21).standard_normal(shape).astype(np.float32) * 3
    y = forward(lrn_text(size, alpha, beta, k), x)
    np.testing.assert_allclose(y, across_reference(x.astype(np.float64), size, alpha, beta, k), rtol=1e-5)
    check_gradients(lrn_text(size, alpha, beta, k), {"x": x.astype(np.float64)}, max_checks=60, **engine)


@pytest.mark.parametrize("size,alpha,beta,shape", [
    (3, 0.5, 0.75, (2, 2, 4, 5)),
    (5, 1.0, 0.75, (1, 2, 3, 6)),
    (1, 0.2, 0.5, (1, 1, 3, 3)),
])
def test_within_channel_matches_loop(size, alpha, beta, shape, engine):
    x = np.random.default_rng(22).standard_normal(shape).astype(np.float32) * 2
    text = lrn_text(size, alpha, beta, region="WITHIN_CHANNEL")
    np.testing.assert_allclose(forward(text, x), within_reference(x.astype(np.float64), size, alpha, beta), rtol=1e-5)
    check_gradients(text, {"x": x.astype(np.float64)}, max_checks=60, **engine)


def test_even_size_is_refused():
    with pytest.raises(VggtoolError, match="odd"):
        layer_net(lrn_text(4, 1, 0.75), {"x": np.zeros((1, 4, 2, 2))})
