"""The Net's public queries (layer names, positions, layers, shared-parameter owners), the one
ShareTrainedLayersWith used by the solver and pycaffe, the weights definition a Net keeps for the
recorded transform, and io.files.find_beside (the one resolver of files named by other files)."""
import os

import numpy as np
import pytest

from eval_helpers import make_model
from eval_helpers import weights_with_data_layer
from vggtool import Net, VggtoolError
from vggtool.io.files import find_beside
from vggtool.io.prototxt import parse_net_text
from vggtool.net.weights import share_trained_layers
from vggtool.pycaffe import Net as PycaffeNet
from vggtool.data.recorded_transform import recorded_transform

NET = """
layer { name: "input" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "a" param { name: "w" }
        inner_product_param { num_output: 3 bias_term: false weight_filler { type: "gaussian" } } }
layer { name: "relu" type: "ReLU" bottom: "a" top: "a" }
layer { name: "ip2" type: "InnerProduct" bottom: "a" top: "b" param { name: "w" }
        inner_product_param { num_output: 3 bias_term: false weight_filler { type: "gaussian" } } }
layer { name: "ip3" type: "InnerProduct" bottom: "a" top: "c"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
"""


def build(text=NET, cls=Net):
    return cls(parse_net_text(text, "<test>"), phase="TEST", seed=1)


def test_layer_queries():
    net = build()
    # "a" feeds relu (in place) and then ip2 and ip3: one Split layer after relu
    assert net.layer_names == ["input", "ip1", "relu", "a_relu_0_split", "ip2", "ip3"]
    assert net.layer_names == [layer.name for layer in net.layers] == list(net.layer_dict)
    assert [net.layer_index(n) for n in net.layer_names] == list(range(6))
    assert net.layer("ip3") is net.layers[5] is net.layer_dict["ip3"]
    assert net.bottom_names["ip2"] == ["a_relu_0_split_0"] and net.top_names["ip3"] == ["c"]
    names = net.layer_names
    names.append("changed")  # a copy: the net's own order cannot be changed through it
    assert len(net.layer_names) == 6
    with pytest.raises(VggtoolError, match="no layer named 'ip9' in net"):
        net.layer_index("ip9")
    with pytest.raises(VggtoolError, match="no layer named 'ip9' in net"):
        net.layer("ip9")


def test_last_writers():
    # "a" is written by ip1 and then in place by relu: relu is its last writer; the split's tops are its own
    assert build().last_writers() == {"x": 0, "a": 2, "a_relu_0_split_0": 3, "a_relu_0_split_1": 3,
                                      "b": 4, "c": 5}


def test_param_owner():
    net = build()
    assert net.param_owner("w") == ("ip1", 0)
    assert net.param_owner("nothing") is None
    assert net.params["ip2"][0] is net.params["ip1"][0]


def test_pycaffe_keeps_its_own_names():
    net = build(cls=PycaffeNet)
    assert net._layer_names == net.layer_names
    assert net._bottom_ids(4) == [net._blob_names.index("a_relu_0_split_0")]


def test_share_trained_layers_messages():
    a, b = build(), build()
    share_trained_layers(b, a)
    a.params["ip3"][0].data = np.full((2, 3), 0.5)
    assert (b.params["ip3"][0].data == 0.5).all()
    other = build(NET.replace("num_output: 2", "num_output: 4"))
    with pytest.raises(VggtoolError, match=r"Cannot share param 0 weights from layer 'ip3'; shape mismatch\. "
                                           r"Source param shape is 2 3 \(6\) \(the train net\); target param "
                                           r"shape is 4 3 \(12\) \(in test net 't'\)"):
        share_trained_layers(other, a, target_what="in test net 't'", source_what="the train net")
    no_bias = build(NET.replace("num_output: 2", "num_output: 2 bias_term: false"))
    with pytest.raises(VggtoolError, match="Incompatible number of blobs for layer ip3: 2 in the source net, 1 here"):
        share_trained_layers(no_bias, a)


def test_net_keeps_weights_definition_for_the_recorded_transform(tmp_path):
    net_path, weights = make_model(tmp_path)
    snap = weights_with_data_layer(tmp_path, weights, (1, 2, 3), scale=0.5)
    net = Net(net_path, snap, phase="TEST")
    kept = net.weights_param
    assert [l.name for l in kept.layer][:2] == ["train_data", "test_data"]
    assert all(len(l.blobs) == 0 for l in kept.layer)  # the weights themselves are not kept twice
    os.remove(snap)  # the transform comes from what the net read, not from a second read of the file
    tp, where = recorded_transform(net_path, snap, weights_param=kept)
    assert list(tp.mean_value) == [1, 2, 3] and tp.scale == 0.5 and where == f"{snap}, layer 'test_data'"
    assert recorded_transform(net_path, snap) == (None, None)


def test_find_beside(tmp_path, monkeypatch):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "net.prototxt").write_text("")
    (tmp_path / "run" / "sub").mkdir()
    naming = str(tmp_path / "run" / "solver.prototxt")
    monkeypatch.chdir(tmp_path)
    assert find_beside("run/net.prototxt", naming) == "run/net.prototxt"  # as Caffe: the working directory
    assert find_beside("net.prototxt", naming) == str(tmp_path / "run" / "net.prototxt")
    assert find_beside("elsewhere/net.prototxt", naming) is None
    assert find_beside("elsewhere/net.prototxt", naming, keep_folders=False) == str(tmp_path / "run" / "net.prototxt")
    assert find_beside("sub", naming) == str(tmp_path / "run" / "sub")
    assert find_beside("sub", naming, files_only=True) is None
    assert find_beside("net.prototxt", None) is None
