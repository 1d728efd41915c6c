"""Net surgery: InnerProduct -> Convolution gives the same scores at the crop size and score maps beyond."""
import numpy as np
import pytest

from eval_helpers import CLASSES, CROP, chain_terms, make_model
from numerics import assert_close_to_scale
from vggtool import Net
from vggtool.vgg import surgery
from vggtool.cli import main
from vggtool.errors import VggtoolError


@pytest.fixture
def model(tmp_path):
    return make_model(tmp_path)


def test_kernels_follow_the_declared_input_size(model):
    param, kernels = surgery.convolutionalize_param(model[0])
    # 32 -> 16 -> 8 -> 4 after three 2x2 pools: fc6 sees 4x4, fc7 and fc8 see vectors
    assert kernels == {"fc6": (4, 4), "fc7": (1, 1), "fc8": (1, 1)}
    types = {layer.name: layer.type for layer in param.layer}
    assert types["fc6"] == types["fc7"] == types["fc8"] == "Convolution"
    assert list(param.layer[-2].convolution_param.kernel_size) == [1]


def test_weights_reshape_in_caffe_flatten_order():
    w = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 12)
    cw, b = surgery.convert_ip_weights(w, np.ones(2), 3, (2, 2))
    # IP input index = c*4 + y*2 + x (C, H, W flattening)
    for n in range(2):
        for c in range(3):
            for y in range(2):
                for x in range(2):
                    assert cw[n, c, y, x] == w[n, c * 4 + y * 2 + x]
    cwt, _ = surgery.convert_ip_weights(w.T, None, 3, (2, 2), transpose=True)
    np.testing.assert_array_equal(cwt, cw)


def test_score_map_equals_fc_output_at_crop_size(model, rng):
    deploy = Net(model[0], model[1], phase="TEST")
    _, conv = surgery.convolutionalize(model[0], model[1])
    x = rng.normal(0, 50, size=(3, 3, CROP, CROP)).astype(np.float32)
    ref = deploy.forward(data=x)["prob"].copy()
    fc8 = deploy.blobs["fc8"].data.copy()
    out = conv.forward(data=x)["prob"]
    assert out.shape == (3, CLASSES, 1, 1)
    assert_close_to_scale(conv.blobs["fc8"].data[:, :, 0, 0], fc8, chain_terms("fc8"))
    assert_close_to_scale(out[:, :, 0, 0], ref, chain_terms("prob"))


@pytest.mark.parametrize("h,w", [(64, 48), (40, 40), (33, 95)])
def test_score_map_size_on_larger_inputs(model, h, w):
    _, conv = surgery.convolutionalize(model[0], model[1])
    out = conv.forward(data=np.zeros((1, 3, h, w), np.float32))["prob"]
    # three 2x2 pools (Caffe rounds the pooled size up) then a 4x4 valid convolution
    def side(s):
        for _ in range(3):
            s = -(-(s - 2) // 2) + 1
        return s - 4 + 1
    assert out.shape == (1, CLASSES, side(h), side(w))
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)  # softmax over channels per location


def test_convolutionalize_cli_writes_a_loadable_pair(model, tmp_path, rng, capsys):
    out_net, out_w = str(tmp_path / "conv.prototxt"), str(tmp_path / "conv.caffemodel")
    assert main(["convolutionalize", "--net", model[0], "--weights", model[1],
                 "--out-net", out_net, "--out-weights", out_w]) == 0
    assert "fc6: InnerProduct -> Convolution 4x4" in capsys.readouterr().out
    conv = Net(out_net, out_w, phase="TEST")
    deploy = Net(model[0], model[1], phase="TEST")
    x = rng.normal(0, 50, size=(1, 3, CROP, CROP)).astype(np.float32)
    assert_close_to_scale(conv.forward(data=x)["prob"][:, :, 0, 0], deploy.forward(data=x)["prob"],
                          chain_terms("prob"))
    assert main(["convolutionalize", "--net", out_net, "--weights", out_w,
                 "--out-net", out_net + "2", "--out-weights", out_w + "2"]) == 1
    assert "no InnerProduct layer" in capsys.readouterr().err


def test_non_default_axis_is_refused(tmp_path):
    text = ('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 4 } } }\n'
            'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
            'inner_product_param { num_output: 2 axis: 2 } }\n')
    path = tmp_path / "n.prototxt"
    path.write_text(text)
    with pytest.raises(VggtoolError, match="axis"):
        surgery.convolutionalize_param(str(path))
