"""Input, DummyData and Split (automatic fan-out: gradients of a blob used twice are summed)."""
import numpy as np
import pytest

from vggtool import Net
from vggtool.errors import VggtoolError
from vggtool.io.prototxt import parse_net_text
from vggtool.testing import check_gradients


def net_of(text, phase="TRAIN", dtype=np.float64, seed=0):
    return Net(parse_net_text(text, "<test>"), phase=phase, dtype=dtype, seed=seed)


def test_input_shapes_and_reshape_by_forward():
    net = net_of('layer { name: "in" type: "Input" top: "a" top: "b" '
                 'input_param { shape { dim: 2 dim: 3 } shape { dim: 4 } } }')
    assert net.blobs["a"].shape == (2, 3) and net.blobs["b"].shape == (4,)
    assert net.inputs == ["a", "b"]
    out = net.forward(a=np.ones((5, 3)))
    assert out["a"].shape == (5, 3)
    net.backward()  # no bottoms, nothing to do: must not fail


def test_input_shape_count_must_fit():
    with pytest.raises(VggtoolError, match="2 shape"):
        net_of('layer { name: "in" type: "Input" top: "a" top: "b" top: "c" '
               'input_param { shape { dim: 1 } shape { dim: 2 } } }')


def test_dummy_data_constant_and_gaussian():
    net = net_of('layer { name: "d" type: "DummyData" top: "c" top: "g" dummy_data_param { '
                 'shape { dim: 2 dim: 3 } shape { dim: 400 } '
                 'data_filler { type: "constant" value: 7 } data_filler { type: "gaussian" std: 2 } } }')
    net.forward()
    np.testing.assert_array_equal(net.blobs["c"].data, np.full((2, 3), 7.0))
    g1 = net.blobs["g"].data.copy()
    assert 1.6 < g1.std() < 2.4 and abs(g1.mean()) < 0.4
    net.forward()
    assert not np.array_equal(net.blobs["g"].data, g1)  # refilled every forward


def test_dummy_data_values_are_a_function_of_seed_layer_and_iteration():
    text = ('layer { name: "d" type: "DummyData" top: "g" top: "c" dummy_data_param { '
            'shape { dim: 3 dim: 4 } shape { dim: 2 } data_filler { type: "uniform" min: -1 max: 1 } '
            'data_filler { type: "constant" value: 5 } } }')
    a, b, other = net_of(text, seed=1), net_of(text, seed=1), net_of(text, seed=2)
    seen = {}
    for it in (0, 1, 2):
        a.iteration = it
        a.forward()
        seen[it] = a.blobs["g"].data.copy()
        np.testing.assert_array_equal(a.blobs["c"].data, [5.0, 5.0])
    assert not np.array_equal(seen[0], seen[1]) and not np.array_equal(seen[1], seen[2])
    b.iteration = 2  # straight to iteration 2, with no forwards before: the same values
    b.forward()
    np.testing.assert_array_equal(b.blobs["g"].data, seen[2])
    other.iteration = 2
    other.forward()
    assert not np.array_equal(other.blobs["g"].data, seen[2])
    # A loop that never sets net.iteration gets fresh values each forward, those of t = 0, 1, 2, ...
    c = net_of(text, seed=1)
    for it in (0, 1, 2):
        c.forward()
        np.testing.assert_array_equal(c.blobs["g"].data, seen[it])


def test_dummy_data_legacy_shape_and_default_zero():
    net = net_of('layer { name: "d" type: "DummyData" top: "x" dummy_data_param { '
                 'num: 2 channels: 3 height: 4 width: 5 } }')
    net.forward()
    assert net.blobs["x"].shape == (2, 3, 4, 5)
    assert not net.blobs["x"].data.any()


def test_dummy_data_feeds_a_layer_with_gradients():
    text = ('force_backward: true\n'
            'layer { name: "d" type: "DummyData" top: "x" top: "target" dummy_data_param { '
            'shape { dim: 2 dim: 3 } shape { dim: 2 dim: 2 } data_filler { type: "uniform" min: -1 max: 1 } '
            'data_filler { type: "constant" value: 0 } } }\n'
            'layer { name: "f" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 2 '
            'weight_filler { type: "gaussian" std: 1 } } }\n'
            'layer { name: "l" type: "EuclideanLoss" bottom: "y" bottom: "target" top: "loss" }')
    net = net_of(text)
    net.forward_backward()
    x, w = net.blobs["x"].data, net.params["f"][0].data
    y = x @ w.T + net.params["f"][1].data
    np.testing.assert_allclose(net.blobs["y"].data, y)
    np.testing.assert_allclose(net.blobs["x"].diff, (y / 2) @ w)  # d/dx of sum(y^2) / (2 * 2)


def test_split_sums_gradients_of_a_blob_used_twice(engine):
    # x feeds two InnerProducts whose outputs are added: the net inserts a Split and backward must
    # sum both paths' gradients into x.
    text = ('layer { name: "f1" type: "InnerProduct" bottom: "x" top: "y1" inner_product_param { num_output: 3 '
            'weight_filler { type: "gaussian" std: 1 } } }\n'
            'layer { name: "f2" type: "InnerProduct" bottom: "x" top: "y2" inner_product_param { num_output: 3 '
            'weight_filler { type: "gaussian" std: 1 } } }\n'
            'layer { name: "s" type: "Eltwise" bottom: "y1" bottom: "y2" top: "y" }')
    x = np.random.default_rng(71).standard_normal((2, 4))
    net = check_gradients(text, {"x": x}, **engine)
    assert [layer.type for layer in net.layers].count("Split") == 1
    # And the Split layer alone: each top views the bottom, gradient = sum of the top diffs.
    split = next(i for i, layer in enumerate(net.layers) if layer.type == "Split")
    tops = net.top_vecs[split]
    assert all(np.shares_memory(t.data, net.blobs["x"].data) for t in tops)
    tops[0].diff[...] = 1.0
    tops[1].diff[...] = 2.5
    net.backward_from_to(split, split)
    np.testing.assert_array_equal(net.blobs["x"].diff, np.full((2, 4), 3.5))


def test_split_layer_explicit_gradient_check(engine):
    x = np.random.default_rng(72).standard_normal((2, 3))
    check_gradients('layer { name: "sp" type: "Split" bottom: "x" top: "a" top: "b" top: "c" }', {"x": x}, **engine)
