"""ReLU, Sigmoid, TanH and Dropout: values, in-place use, gradients, Dropout's per-sample masks."""
import numpy as np
import pytest

from vggtool.errors import VggtoolError
from vggtool.testing import check_gradients, layer_net


def away_from_zero(rng, shape):
    x = rng.standard_normal(shape)
    return x + np.sign(x) * 0.05  # no kinks inside the finite-difference step


def run(text, x, phase="TEST", dtype=np.float32):
    net = layer_net(text, {"x": x}, phase=phase, dtype=dtype)
    net.forward(x=x)
    return net


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("slope", [0.0, 0.1, 2.0])
def test_relu(slope, in_place, engine):
    top = "x" if in_place else "y"
    text = f'layer {{ name: "r" type: "ReLU" bottom: "x" top: "{top}" relu_param {{ negative_slope: {slope} }} }}'
    x = np.array([[-2.0, -0.5, 0.5, 3.0]], dtype=np.float32)
    y = run(text, x).blobs[top].data
    np.testing.assert_allclose(y, [[-2 * slope, -0.5 * slope, 0.5, 3.0]], rtol=1e-6)
    check_gradients(text, {"x": away_from_zero(np.random.default_rng(1), (2, 3, 4))}, **engine)


@pytest.mark.parametrize("in_place", [False, True])
def test_sigmoid(in_place, engine):
    top = "x" if in_place else "y"
    text = f'layer {{ name: "s" type: "Sigmoid" bottom: "x" top: "{top}" }}'
    x = np.array([[0.0, 2.0, -2.0, 40.0, -40.0]], dtype=np.float32)
    y = run(text, x).blobs[top].data
    expected = [1 / (1 + np.exp(-v)) for v in [0.0, 2.0, -2.0, 40.0, -40.0]]  # 0.5, 0.8808, ...
    np.testing.assert_allclose(y[0], expected, rtol=1e-5, atol=1e-7)  # Caffe's tanh form: 0 at -40
    check_gradients(text, {"x": np.random.default_rng(2).standard_normal((2, 3, 4)) * 2}, **engine)


@pytest.mark.parametrize("in_place", [False, True])
def test_tanh(in_place, engine):
    top = "x" if in_place else "y"
    text = f'layer {{ name: "t" type: "TanH" bottom: "x" top: "{top}" }}'
    x = np.array([[0.0, 0.5, -1.0, 30.0]], dtype=np.float32)
    y = run(text, x).blobs[top].data
    np.testing.assert_allclose(y[0], [0.0, 0.46211716, -0.76159416, 1.0], rtol=1e-6)
    check_gradients(text, {"x": np.random.default_rng(3).standard_normal((2, 3, 4))}, **engine)


DROPOUT = 'layer {{ name: "d" type: "Dropout" bottom: "x" top: "{top}" dropout_param {{ dropout_ratio: {r} }} }}'


def test_dropout_train_scales_kept_units():
    x = np.ones((4, 500), dtype=np.float32)
    net = run(DROPOUT.format(top="y", r=0.25), x, phase="TRAIN")
    y = net.blobs["y"].data
    assert set(np.unique(y)) <= {0.0, np.float32(1 / 0.75)}
    kept = (y != 0).mean()
    assert 0.7 < kept < 0.8  # 2000 draws with p = 0.75


def test_dropout_mask_fixed_within_an_iteration_and_new_across_iterations():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 50)).astype(np.float32) + 5
    net = run(DROPOUT.format(top="y", r=0.5), x, phase="TRAIN")
    first = net.blobs["y"].data.copy()
    net.forward(x=x)
    np.testing.assert_array_equal(net.blobs["y"].data, first)  # same iteration -> same mask
    net.iteration += 1
    net.forward(x=x)
    assert not np.array_equal(net.blobs["y"].data, first)
    # Per-sample masks: sample i's mask does not depend on the batch it is in.
    net.iteration -= 1
    single = layer_net(DROPOUT.format(top="y", r=0.5), {"x": x[:1]}, phase="TRAIN", dtype=np.float32, seed=net.seed)
    single.forward(x=x[:1])
    np.testing.assert_array_equal(single.blobs["y"].data[0], first[0])


@pytest.mark.parametrize("in_place", [False, True])
def test_dropout_gradients_train(in_place, engine):
    top = "x" if in_place else "y"
    net = check_gradients(DROPOUT.format(top=top, r=0.4), {"x": np.random.default_rng(5).standard_normal((3, 20))},
                          phase="TRAIN", **engine)
    assert net.phase == 0


@pytest.mark.parametrize("in_place", [False, True])
def test_dropout_test_phase_is_identity(in_place, engine):
    top = "x" if in_place else "y"
    x = np.random.default_rng(6).standard_normal((3, 7)).astype(np.float32)
    net = run(DROPOUT.format(top=top, r=0.5), x, phase="TEST")
    np.testing.assert_array_equal(net.blobs[top].data, x)
    check_gradients(DROPOUT.format(top=top, r=0.5), {"x": x.astype(np.float64)}, phase="TEST", **engine)


def test_dropout_ratio_out_of_range():
    with pytest.raises(VggtoolError, match="dropout_ratio"):
        layer_net(DROPOUT.format(top="y", r=1.0), {"x": np.zeros((1, 2))})
