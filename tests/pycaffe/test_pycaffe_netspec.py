"""vggtool.pycaffe: NetSpec / layers / params / to_proto, coord_map, draw, Detector."""
import cv2
import numpy as np
import pytest

import vggtool.pycaffe as caffe
from vggtool.io import prototxt
from vggtool.pycaffe import coord_map
from vggtool.pycaffe import layers as L
from vggtool.pycaffe import params as P
from vggtool.proto import caffe_pb2


def test_netspec_names_layers_and_routes_params():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 3, 8, 8]))
    n.conv = L.Convolution(n.data, kernel_size=3, num_output=4, pad=1, weight_filler=dict(type="xavier"),
                           param=[dict(lr_mult=1), dict(lr_mult=2)])
    n.relu = L.ReLU(n.conv, in_place=True)
    n.pool = L.Pooling(n.relu, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.fc = L.InnerProduct(n.pool, num_output=3, loss_weight=0)
    net = n.to_proto()
    assert [l.name for l in net.layer] == ["data", "conv", "relu", "pool", "fc"]
    conv = net.layer[1]
    assert list(conv.convolution_param.kernel_size) == [3] and conv.convolution_param.num_output == 4
    assert conv.convolution_param.weight_filler.type == "xavier"
    assert [p.lr_mult for p in conv.param] == [1, 2]
    assert list(net.layer[2].top) == ["conv"]  # in place
    assert net.layer[3].pooling_param.pool == caffe_pb2.PoolingParameter.MAX
    assert list(net.layer[4].loss_weight) == [0]
    # the text parses back and builds a net that runs
    text = str(net)
    parsed = prototxt.parse_net_text(text)
    built = caffe.Net(parsed, caffe.TEST)
    assert built.forward(data=np.zeros((2, 3, 8, 8), np.float32))["fc"].shape == (2, 3)


def test_to_proto_generates_names_and_ntop():
    data, label = L.DummyData(shape=[dict(dim=[2, 4]), dict(dim=[2])], ntop=2)
    loss = L.SoftmaxWithLoss(L.InnerProduct(data, num_output=3), label)
    net = caffe.to_proto(loss)
    assert [l.type for l in net.layer] == ["DummyData", "InnerProduct", "SoftmaxWithLoss"]
    assert list(net.layer[0].top) == ["DummyData1", "DummyData2"]
    assert list(net.layer[2].bottom) == ["InnerProduct1", "DummyData2"]
    with pytest.raises(TypeError, match="is not a Top"):
        L.ReLU("data")
    with pytest.raises(Exception, match="neither a field"):
        caffe.to_proto(L.ReLU(data, not_a_field=1))


def _fcn_like():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 20, 20]))
    n.conv1 = L.Convolution(n.data, kernel_size=3, num_output=2, pad=100)
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2)
    n.score = L.Convolution(n.pool1, kernel_size=1, num_output=2)
    n.up = L.Deconvolution(n.score, convolution_param=dict(kernel_size=4, stride=2, num_output=2))
    return n


def test_coord_map_offsets():
    n = _fcn_like()
    ax, a, b = coord_map.coord_map_from_to(n.up, n.data)
    assert ax == 1 and np.allclose(a, 1)
    # by hand, as maps (a, b) from the bottom to the top: conv k3 pad 100 (1, 99), pool k2 s2 (1/2, -1/4),
    # 1x1 conv (1, 0), deconv k4 s2 (2, 3/2); from up back to data: 2 * (-1/4) + 3/2 = 1, then + 99 -> 100
    assert np.allclose(b, -100)
    crop = coord_map.crop(n.up, n.data)
    n.crop = crop
    layer = n.to_proto().layer[-1]
    assert layer.type == "Crop" and layer.crop_param.axis == 2 and list(layer.crop_param.offset) == [int(-b[0])]
    assert coord_map.compose((None, 1, 0), (2, 3, 4)) == (2, 3, 4)
    assert coord_map.inverse((1, 2.0, 4.0)) == (1, 0.5, -2.0)
    with pytest.raises(coord_map.AxisMismatchException):
        coord_map.compose((1, 1, 0), (2, 1, 0))


def test_coord_map_against_the_geometry():
    # one conv (k=5, pad=1) then a pool (k=2, s=2): an output pixel i covers input pixels centred at
    # 2*i + 0.5 of the conv output, i.e. input centre 2*i + 0.5 + 2 - 1
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 12, 12]))
    n.conv = L.Convolution(n.data, kernel_size=5, num_output=1, pad=1)
    n.pool = L.Pooling(n.conv, kernel_size=2, stride=2)
    ax, a, b = coord_map.coord_map_from_to(n.pool, n.data)
    for i in range(4):
        assert np.allclose(a * i + b, 2 * i + 0.5 + 2 - 1)


def test_draw_writes_a_picture(tmp_path):
    net = _fcn_like().to_proto()
    net.layer.add(name="train_only", type="ReLU", bottom=["up"], top=["up"]).include.add(phase=caffe_pb2.TRAIN)
    nodes, edges = caffe.draw.get_graph(net, "LR", phase=caffe_pb2.TEST)
    assert not any("train_only" in n for n in nodes)
    nodes_all, _ = caffe.draw.get_graph(net, "LR")
    assert any("train_only" in n for n in nodes_all)
    assert any(label == "2" for _, _, label in edges)  # num_output on the convolutions' edges
    for rankdir in ("LR", "TB"):
        path = tmp_path / f"net_{rankdir}.png"
        caffe.draw.draw_net_to_file(net, str(path), rankdir, phase=caffe_pb2.TEST)
        image = cv2.imread(str(path))
        assert image is not None and image.shape[0] > 50 and image.shape[1] > 50
        assert (image < 200).any()  # something was drawn
    assert caffe.draw.draw_net(net, "LR", ext="svg").startswith(b"<?xml")
    assert caffe.draw.get_layer_label(net.layer[1], "TB") == "conv1 (Convolution) kernel size: 3 stride: 1 pad: 100"
    assert caffe.draw.get_pooling_types_dict()[0] == "MAX"


DET = """name: "det"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 3 } }
"""


def test_detector_scores_windows(tmp_path):
    (tmp_path / "det.prototxt").write_text(DET)
    net = caffe.Net(str(tmp_path / "det.prototxt"), caffe.TEST)
    net.params["fc"][0].data[...] = np.eye(3)
    net.params["fc"][1].data[...] = 0
    net.save(str(tmp_path / "det.caffemodel"))
    image = np.zeros((20, 30, 3), np.uint8)
    image[:, 15:, 1] = 255  # right half green (BGR)
    cv2.imwrite(str(tmp_path / "im.png"), image)
    det = caffe.Detector(str(tmp_path / "det.prototxt"), str(tmp_path / "det.caffemodel"), raw_scale=255)
    windows = np.array([[0, 0, 10, 10], [5, 20, 15, 30], [0, 10, 20, 20]])
    out = det.detect_windows([(str(tmp_path / "im.png"), windows)])
    assert len(out) == 3 and out[1]["filename"].endswith("im.png")
    preds = np.array([d["prediction"] for d in out])  # RGB order (no channel swap): green is index 1
    np.testing.assert_allclose(preds[:, 1], [0, 255, 127.5], atol=1e-3)
    ctx = caffe.Detector(str(tmp_path / "det.prototxt"), str(tmp_path / "det.caffemodel"), raw_scale=255,
                         mean=np.array([0.0, 0.0, 0.0]), context_pad=2)
    crop = ctx.crop(caffe.io.load_image(str(tmp_path / "im.png")), np.array([5, 20, 14, 29]))
    assert crop.shape == (8, 8, 3)


def test_vggtool_draw_command(tmp_path, capsys):
    from vggtool.cli import main

    net = _fcn_like().to_proto()
    net.layer.add(name="train_only", type="ReLU", bottom=["up"], top=["up"]).include.add(phase=caffe_pb2.TRAIN)
    path = tmp_path / "net.prototxt"
    path.write_text(str(net))
    out = tmp_path / "net.svg"
    assert main(["draw", str(path), str(out), "--rankdir", "TB", "--phase", "TEST"]) == 0
    svg = out.read_text()
    assert "conv1" in svg and "train_only" not in svg
    assert main(["draw", str(path), str(tmp_path / "all.svg")]) == 0
    assert "train_only" in (tmp_path / "all.svg").read_text()
    assert main(["draw", str(tmp_path / "none.prototxt"), str(out)]) == 1
