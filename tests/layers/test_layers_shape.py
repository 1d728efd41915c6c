"""Flatten, Reshape (views of the bottom), Concat and Slice (round trips, legacy *_dim), gradients."""
import numpy as np
import pytest

from vggtool.errors import VggtoolError
from vggtool.testing import check_gradients, layer_net


def run(text, inputs, dtype=np.float32):
    inputs = {k: np.asarray(v, dtype=dtype) for k, v in inputs.items()}
    net = layer_net(text, inputs, dtype=dtype)
    net.forward(**inputs)
    return net


def flatten(spec=""):
    return f'layer {{ name: "f" type: "Flatten" bottom: "x" top: "y" flatten_param {{ {spec} }} }}'


def reshape(dims, spec=""):
    d = "".join(f" dim: {v}" for v in dims)
    return f'layer {{ name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param {{ shape {{{d} }} {spec} }} }}'


@pytest.mark.parametrize("spec,expected", [
    ("", (2, 60)),
    ("axis: 2", (2, 3, 20)),
    ("axis: 1 end_axis: 2", (2, 12, 5)),
    ("axis: 0 end_axis: -2", (24, 5)),
    ("axis: -1", (2, 3, 4, 5)),
])
def test_flatten_shapes_and_shares_memory(spec, expected):
    x = np.arange(120).reshape(2, 3, 4, 5)
    net = run(flatten(spec), {"x": x})
    y = net.blobs["y"]
    assert y.shape == expected
    np.testing.assert_array_equal(y.data.ravel(), x.ravel())
    assert np.shares_memory(y.data, net.blobs["x"].data)
    assert np.shares_memory(y.diff, net.blobs["x"].diff)


@pytest.mark.parametrize("dims,spec,expected", [
    ((0, -1), "", (2, 60)),
    ((-1, 4, 5), "", (6, 4, 5)),
    ((0, 0, 20), "", (2, 3, 20)),
    ((4, 0, 10), "", (4, 3, 10)),           # 0 copies the bottom's dim at the same position
    ((1,), "axis: 1 num_axes: 0", (2, 1, 3, 4, 5)),   # insert an axis
    ((1,), "axis: -1 num_axes: 0", (2, 3, 4, 5, 1)),  # negative axis counts from the end, after it
    ((-1,), "axis: 1 num_axes: 2", (2, 12, 5)),
    ((10, 2), "axis: 2 num_axes: 2", (2, 3, 10, 2)),
])
def test_reshape(dims, spec, expected):
    x = np.arange(120).reshape(2, 3, 4, 5)
    net = run(reshape(dims, spec), {"x": x})
    assert net.blobs["y"].shape == expected
    np.testing.assert_array_equal(net.blobs["y"].data.ravel(), x.ravel())
    assert np.shares_memory(net.blobs["y"].data, net.blobs["x"].data)


@pytest.mark.parametrize("dims,spec,message", [
    ((-1, -1), "", "at most one -1"),
    ((7, -1), "", "cannot infer"),
    ((5, 5), "", "does not match"),
    ((0, 0, 0), "axis: 2", "no corresponding"),
])
def test_reshape_errors(dims, spec, message):
    with pytest.raises(VggtoolError, match=message):
        run(reshape(dims, spec), {"x": np.zeros((2, 3, 4, 5))})


def test_views_cannot_run_in_place():
    with pytest.raises(VggtoolError, match="in place"):
        run('layer { name: "f" type: "Flatten" bottom: "x" top: "x" }', {"x": np.zeros((2, 3))})


def test_view_gradients_and_reshape_with_the_net(engine):
    rng = np.random.default_rng(41)
    x = rng.standard_normal((2, 3, 2, 2))
    check_gradients(flatten(), {"x": x}, **engine)
    check_gradients(reshape((0, 2, -1)), {"x": x}, **engine)
    # A new input shape reshapes the view too (and it still shares memory).
    net = run(flatten(), {"x": x})
    out = net.forward(x=np.ones((4, 3, 2, 2), dtype=np.float32))["y"]
    assert out.shape == (4, 12) and np.shares_memory(out, net.blobs["x"].data)


def concat_text(n, spec, bottoms="abc"):
    b = "".join(f' bottom: "{c}"' for c in bottoms[:n])
    return f'layer {{ name: "c" type: "Concat"{b} top: "y" concat_param {{ {spec} }} }}'


def slice_text(n, spec):
    t = "".join(f' top: "t{i}"' for i in range(n))
    return f'layer {{ name: "s" type: "Slice" bottom: "x"{t} slice_param {{ {spec} }} }}'


def test_concat_hand_computed():
    a = [[1, 2], [3, 4]]
    b = [[5], [6]]
    net = run(concat_text(2, "axis: 1"), {"a": a, "b": b})
    np.testing.assert_array_equal(net.blobs["y"].data, [[1, 2, 5], [3, 4, 6]])
    net = run(concat_text(2, "axis: 0"), {"a": a, "b": [[7, 8]]})
    np.testing.assert_array_equal(net.blobs["y"].data, [[1, 2], [3, 4], [7, 8]])


def test_slice_hand_computed():
    x = np.arange(10).reshape(2, 5)  # [[0..4], [5..9]]
    net = run(slice_text(3, "axis: 1 slice_point: 1 slice_point: 3"), {"x": x})
    np.testing.assert_array_equal(net.blobs["t0"].data, [[0], [5]])
    np.testing.assert_array_equal(net.blobs["t1"].data, [[1, 2], [6, 7]])
    np.testing.assert_array_equal(net.blobs["t2"].data, [[3, 4], [8, 9]])


@pytest.mark.parametrize("spec_slice,spec_concat,n", [
    ("axis: 1 slice_point: 1 slice_point: 4", "axis: 1", 3),
    ("axis: 2", "axis: 2", 2),                      # equal split
    ("slice_dim: 3 slice_point: 2", "concat_dim: 3", 2),  # legacy fields
    ("axis: -1 slice_point: 1", "axis: -1", 2),
    ("axis: 0", "axis: 0", 2),
    ("axis: 1", "axis: 1", 1),                       # one top: a view
])
def test_slice_concat_round_trip(spec_slice, spec_concat, n, engine):
    rng = np.random.default_rng(42)
    x = rng.standard_normal((2, 5, 4, 3)).astype(np.float32)
    tops = [f"t{i}" for i in range(n)]
    text = slice_text(n, spec_slice) + "\n" + concat_text(n, spec_concat, bottoms=tops).replace(
        "".join(f' bottom: "{c}"' for c in "abc"[:n]), "".join(f' bottom: "{t}"' for t in tops))
    net = run(text, {"x": x})
    np.testing.assert_array_equal(net.blobs["y"].data, x)
    check_gradients(slice_text(n, spec_slice), {"x": x.astype(np.float64)}, **engine)
    parts = {t: net.blobs[t].data.astype(np.float64) for t in tops}
    check_gradients(concat_text(n, spec_concat, bottoms=tops).replace(
        "".join(f' bottom: "{c}"' for c in "abc"[:n]), "".join(f' bottom: "{t}"' for t in tops)), parts, **engine)


@pytest.mark.parametrize("text,inputs,message", [
    (slice_text(2, "axis: 1"), {"x": np.zeros((2, 5))}, "cannot be split equally"),
    (slice_text(3, "axis: 1 slice_point: 2"), {"x": np.zeros((2, 5))}, "one fewer"),
    (slice_text(2, "axis: 1 slice_point: 5"), {"x": np.zeros((2, 5))}, "increase strictly"),
    (concat_text(2, "axis: 1"), {"a": np.zeros((2, 5)), "b": np.zeros((3, 5))}, "match except along axis 1"),
    (concat_text(2, "concat_dim: 4"), {"a": np.zeros((2, 5)), "b": np.zeros((2, 5))}, "concat_dim 4 out of range"),
])
def test_slice_concat_errors(text, inputs, message):
    with pytest.raises(VggtoolError, match=message):
        run(text, inputs)
