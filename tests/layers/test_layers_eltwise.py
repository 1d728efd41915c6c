"""Eltwise SUM/PROD/MAX: hand-computed values, Caffe's MAX tie rule, gradients."""
import numpy as np
import pytest
from numerics import F32_EPS

from vggtool.errors import VggtoolError
from vggtool.testing import check_gradients, layer_net


def elt_text(op, n=3):
    bottoms = "".join(f' bottom: "{c}"' for c in "abc"[:n])
    return f'layer {{ name: "e" type: "Eltwise"{bottoms} top: "y" eltwise_param {{ {op} }} }}'


def run(op, *arrays):
    inputs = dict(zip("abc", arrays))
    net = layer_net(elt_text(op, len(arrays)), inputs, dtype=arrays[0].dtype)
    net.forward(**inputs)
    return net


A = np.array([[1.0, -2.0, 3.0, 0.5]], dtype=np.float32)
B = np.array([[4.0, 5.0, -6.0, 0.5]], dtype=np.float32)
C = np.array([[2.0, 5.0, 1.0, 0.25]], dtype=np.float32)


def test_sum_with_coeff():
    y = run("operation: SUM coeff: 1 coeff: -1 coeff: 2", A, B, C).blobs["y"].data
    np.testing.assert_allclose(y, [[1 - 4 + 4, -2 - 5 + 10, 3 + 6 + 2, 0.5 - 0.5 + 0.5]])
    y = run("operation: SUM", A, B).blobs["y"].data
    np.testing.assert_allclose(y, A + B)


def test_prod():
    y = run("operation: PROD", A, B, C).blobs["y"].data
    np.testing.assert_allclose(y, [[8.0, -50.0, -18.0, 0.0625]])


def test_max_and_caffes_tie_rule():
    net = run("operation: MAX", A, B, C)
    np.testing.assert_allclose(net.blobs["y"].data, [[4.0, 5.0, 3.0, 0.5]])
    # Caffe: bottom 1 wins a tie with bottom 0 (column 3); a later bottom must be strictly greater
    # (column 1: C ties B, B keeps it).
    net.blobs["y"].diff[...] = [[1.0, 2.0, 3.0, 4.0]]
    net.backward_from_to(1, 1)
    np.testing.assert_array_equal(net.blobs["a"].diff, [[0, 0, 3, 0]])
    np.testing.assert_array_equal(net.blobs["b"].diff, [[1, 2, 0, 4]])
    np.testing.assert_array_equal(net.blobs["c"].diff, [[0, 0, 0, 0]])


def test_matches_loop_on_random_inputs():
    rng = np.random.default_rng(31)
    a, b, c = rng.standard_normal((3, 2, 3, 4)).astype(np.float32)
    got = {op: run(f"operation: {op}", a, b, c).blobs["y"].data for op in ("SUM", "PROD", "MAX")}
    for idx in np.ndindex(a.shape):
        vals = [float(a[idx]), float(b[idx]), float(c[idx])]
        # a float32 sum of 3 terms: off by at most 2 eps x the sum of their magnitudes (it may cancel)
        assert abs(got["SUM"][idx] - sum(vals)) <= 2 * F32_EPS * sum(map(abs, vals))
        assert got["PROD"][idx] == pytest.approx(vals[0] * vals[1] * vals[2], rel=1e-5, abs=1e-6)
        assert got["MAX"][idx] == max(vals)


@pytest.mark.parametrize("op", ["operation: SUM", "operation: SUM coeff: 0.5 coeff: -2 coeff: 3",
                                "operation: PROD", "operation: PROD stable_prod_grad: false", "operation: MAX"])
def test_gradients(op, engine):
    rng = np.random.default_rng(32)
    inputs = dict(zip("abc", rng.standard_normal((3, 2, 3, 4))))
    check_gradients(elt_text(op), inputs, **engine)
    two = op.replace(" coeff: 3", "")
    check_gradients(elt_text(two, 2), {"a": inputs["a"], "b": inputs["b"]}, **engine)


def test_prod_stable_gradient_with_a_zero():
    # The stable gradient is the product of the other bottoms, fine where a bottom is 0.
    a, b = np.array([[0.0, 2.0]]), np.array([[3.0, 4.0]])
    net = layer_net(elt_text("operation: PROD", 2), {"a": a, "b": b})
    net.forward(a=a, b=b)
    net.blobs["y"].diff[...] = 1
    net.backward_from_to(1, 1)
    np.testing.assert_array_equal(net.blobs["a"].diff, [[3.0, 4.0]])
    np.testing.assert_array_equal(net.blobs["b"].diff, [[0.0, 2.0]])


@pytest.mark.parametrize("op,arrays,message", [
    ("operation: SUM coeff: 1", (A, B), "one coeff per bottom"),
    ("operation: PROD coeff: 1 coeff: 2", (A, B), "only allowed with operation: SUM"),
    ("operation: SUM", (A, np.zeros((1, 3), np.float32)), "one shape"),
])
def test_bad_parameters(op, arrays, message):
    with pytest.raises(VggtoolError, match=message):
        run(op, *arrays)
