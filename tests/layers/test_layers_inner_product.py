"""InnerProduct: axis and transpose against a direct loop, gradients of inputs and parameters."""
import numpy as np
import pytest
from numerics import assert_close_to_scale

from vggtool.errors import VggtoolError
from vggtool.testing import check_gradients, layer_net


def ip_text(spec, num_output=3):
    return (f'layer {{ name: "f" type: "InnerProduct" bottom: "x" top: "y" inner_product_param {{ '
            f'num_output: {num_output} {spec} weight_filler {{ type: "gaussian" std: 1 }} '
            f'bias_filler {{ type: "gaussian" std: 1 }} }} }}')


@pytest.mark.parametrize("spec,shape,out_shape", [
    ("", (2, 3, 2), (2, 3)),
    ("axis: 2", (2, 3, 2, 2), (2, 3, 3)),
    ("transpose: true", (2, 5), (2, 3)),
    ("axis: -1 transpose: true", (2, 2, 4), (2, 2, 3)),
    ("bias_term: false", (3, 4), (3, 3)),
])
def test_inner_product_matches_loop_and_gradients(spec, shape, out_shape, engine):
    rng = np.random.default_rng(61)
    x = rng.standard_normal(shape).astype(np.float32)
    net = layer_net(ip_text(spec), {"x": x}, dtype=np.float32)
    y = net.forward(x=x)["y"]
    assert y.shape == out_shape
    params = net.params["f"]
    w = params[0].data.astype(np.float64)
    b = params[1].data if len(params) == 2 else np.zeros(3)
    transpose = "transpose: true" in spec
    assert w.shape == ((w.size // 3, 3) if transpose else (3, w.size // 3))
    axis = len(out_shape) - 1
    k = int(np.prod(shape[axis:]))
    xf = x.reshape(-1, k).astype(np.float64)
    yf = y.reshape(-1, 3)
    loops = np.zeros(yf.shape)
    for m in range(xf.shape[0]):
        for o in range(3):
            loops[m, o] = b[o] + sum(xf[m, i] * (w[i, o] if transpose else w[o, i]) for i in range(k))
    assert_close_to_scale(yf, loops, k + 1)
    check_gradients(ip_text(spec), {"x": x.astype(np.float64)}, **engine)


def test_inner_product_wrong_input_size_on_reshape():
    net = layer_net(ip_text(""), {"x": np.zeros((2, 4))}, dtype=np.float32)
    with pytest.raises(VggtoolError, match="the weights expect 4"):
        net.forward(x=np.zeros((2, 5)))
