"""One softmax (vggtool.layers.softmax.softmax) for the Softmax layers and the test-time protocols
(evaluate's posteriors, localisation's score maps, heat maps); it used to be written twice."""
import math

import numpy as np
import pytest

from vggtool.vgg import evaluate, heatmaps, localize
from vggtool.layers.softmax import softmax


def test_the_protocols_use_the_layers_softmax():
    for module in (evaluate, localize, heatmaps):
        assert module.softmax is softmax


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_softmax_in_float64_against_direct_sums(axis):
    x = np.random.default_rng(3).standard_normal((3, 4, 2)) * 20 + 500  # large scores: stable
    y = softmax(x, axis=axis)
    assert y.dtype == np.float64 and y is not x
    moved = np.moveaxis(x, axis, 0)
    for idx in np.ndindex(*moved.shape[1:]):
        row = [float(v) for v in moved[(slice(None),) + idx]]
        top = max(row)
        denom = math.fsum(math.exp(v - top) for v in row)
        want = [math.exp(v - top) / denom for v in row]
        np.testing.assert_allclose(np.moveaxis(y, axis, 0)[(slice(None),) + idx], want, rtol=1e-13, atol=0)
    out = x.copy()
    assert softmax(out, axis, out) is out  # in place, as the layer uses it
    np.testing.assert_array_equal(out, y)
