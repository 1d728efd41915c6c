"""Gradient checks of the core layers (a first pass; tests/layers/test_layers_*.py add direct-loop references)."""
import numpy as np
import pytest

from vggtool.testing import check_gradients


def test_convolution_gradients(rng):
    x = rng.standard_normal((2, 4, 6, 5))
    check_gradients('layer { name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { '
                    'num_output: 4 kernel_size: 3 pad: 1 stride: 2 group: 2 '
                    'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 } } }',
                    {"x": x})


def test_max_pooling_gradients(rng):
    x = rng.permutation(2 * 3 * 7 * 7).reshape(2, 3, 7, 7) * 0.01  # distinct values: no ties
    check_gradients('layer { name: "p" type: "Pooling" bottom: "x" top: "y" '
                    'pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }', {"x": x})


def test_softmax_with_loss_gradients(rng):
    x = rng.standard_normal((5, 4))
    labels = np.array([0, 3, 1, 2, 3], dtype=np.float64)
    check_gradients('layer { name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" }',
                    {"x": x, "label": labels}, check=["x"])


@pytest.mark.parametrize("slope", [0.0, 0.1])
def test_relu_gradients(rng, slope):
    x = rng.standard_normal((3, 4)) + np.sign(rng.standard_normal((3, 4))) * 0.1
    check_gradients(f'layer {{ name: "r" type: "ReLU" bottom: "x" top: "y" relu_param {{ negative_slope: {slope} }} }}',
                    {"x": x})


def test_inner_product_gradients(rng):
    check_gradients('layer { name: "f" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { '
                    'num_output: 3 weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 } } }',
                    {"x": rng.standard_normal((2, 2, 3))})
