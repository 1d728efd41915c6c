"""Reading net definitions: parse errors with file:line:col, V1 and input-field upgrades, Net's call forms."""
import numpy as np
import pytest
from google.protobuf import text_format

import vggtool
from vggtool import Net, VggtoolError
from vggtool.proto import caffe_pb2
from vggtool.io.prototxt import parse_net_text, read_net_param
from vggtool.io.wire import write_binary_proto

V1 = """
name: "small"
input: "data"
input_dim: 2 input_dim: 3 input_dim: 6 input_dim: 6
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
         blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
         convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" }
layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { name: "drop1" type: DROPOUT bottom: "pool1" top: "pool1" dropout_param { dropout_ratio: 0.5 } }
layers { name: "fc" type: INNER_PRODUCT bottom: "pool1" top: "fc" param: "shared_w" blobs_lr: 1 blobs_lr: 2
         inner_product_param { num_output: 10 } }
layers { name: "prob" type: SOFTMAX bottom: "fc" top: "prob" include { phase: TEST } }
"""

NEW = """
name: "small"
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "drop1" type: "Dropout" bottom: "pool1" top: "pool1" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc" param { name: "shared_w" lr_mult: 1 }
        param { lr_mult: 2 } inner_product_param { num_output: 10 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" include { phase: TEST } }
"""


def test_v1_upgrade_equals_new_format():
    assert parse_net_text(V1, "v1") == parse_net_text(NEW, "new")


def test_v1_file_builds_the_same_net(tmp_path):
    path = tmp_path / "v1.prototxt"
    path.write_text(V1)
    a = Net(str(path), phase="TEST", seed=3)
    b = Net(parse_net_text(NEW), phase="TEST", seed=3)
    assert a.layer_names == b.layer_names
    assert [(p.lr_mult, p.decay_mult) for p in a.learnable_params] == [(1, 1), (2, 0), (1, 1), (2, 1)]
    for name in b.params:
        for pa, pb in zip(a.params[name], b.params[name]):
            np.testing.assert_array_equal(pa.data, pb.data)
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6))
    np.testing.assert_array_equal(a.forward(data=x)["prob"], b.forward(data=x)["prob"])


def test_input_shape_upgrade():
    text = 'input: "a" input_shape { dim: 1 dim: 5 } input: "b" input_shape { dim: 2 dim: 3 dim: 4 }'
    net = parse_net_text(text)
    expected = parse_net_text('layer { name: "input" type: "Input" top: "a" top: "b" '
                              'input_param { shape { dim: 1 dim: 5 } shape { dim: 2 dim: 3 dim: 4 } } }')
    assert net == expected
    assert not len(net.input) and not len(net.input_shape)


@pytest.mark.parametrize("text,needle", [
    ('input: "a"', "without input_shape or input_dim"),
    ('input: "a" input_dim: 1 input_dim: 2', "need 4 input_dim"),
    ('input: "a" input: "b" input_shape { dim: 1 }', "2 input(s) but 1 input_shape"),
    ('layer { name: "x" type: "ReLU" } layers { name: "y" type: RELU }', "both 'layer'"),
])
def test_bad_input_fields(text, needle):
    with pytest.raises(VggtoolError, match=needle.replace("(", "\\(").replace(")", "\\)")):
        parse_net_text(text, "net.prototxt")


def test_old_data_param_moves_to_transform_param():
    old = parse_net_text('layers { name: "data" type: DATA top: "data" top: "label" '
                         'data_param { source: "db" batch_size: 8 scale: 0.5 mean_file: "m.binaryproto" '
                         'crop_size: 227 mirror: true } }')
    new = parse_net_text('layer { name: "data" type: "Data" top: "data" top: "label" '
                         'transform_param { scale: 0.5 mean_file: "m.binaryproto" crop_size: 227 mirror: true } '
                         'data_param { source: "db" batch_size: 8 } }')
    assert old == new
    # Also in a new-format layer.
    mixed = parse_net_text('layer { name: "data" type: "Data" top: "data" top: "label" '
                           'data_param { source: "db" batch_size: 8 scale: 0.5 mean_file: "m.binaryproto" '
                           'crop_size: 227 mirror: true } }')
    assert mixed == new


def test_v0_format_refused():
    with pytest.raises(VggtoolError, match="V0 format"):
        parse_net_text('layers { layer { name: "x" type: "relu" } }')


def test_malformed_prototxt_names_file_line_column(tmp_path):
    path = tmp_path / "bad.prototxt"
    path.write_text('name: "x"\nlayer {\n  name: "a"\n  type: "ReLU"\n  top: "y"\n  botom: "x"\n}\n')
    with pytest.raises(VggtoolError) as e:
        read_net_param(str(path))
    assert str(e.value).startswith(f"{path}:6:3: ") and "botom" in str(e.value)
    path.write_text('layer {\n  name: "a"\n')  # unbalanced braces
    with pytest.raises(VggtoolError, match=f"{path}:2:[0-9]+: Expected"):
        read_net_param(str(path))
    path.write_text('layer { name: "a" type: "Convolution" convolution_param { num_output: -3 } }\n')
    with pytest.raises(VggtoolError, match=f"{path}:1:"):
        read_net_param(str(path))


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(VggtoolError, match="not found: .*nope.prototxt"):
        Net(str(tmp_path / "nope.prototxt"))
    with pytest.raises(VggtoolError, match="directory"):
        Net(str(tmp_path))


def test_binary_file_given_as_prototxt(tmp_path):
    net = parse_net_text('name: "n" layer { name: "input" type: "Input" top: "x" input_param { shape { dim: 1 } } }')
    path = tmp_path / "model.prototxt"
    path.write_bytes(b"\x80\x81\xff" + net.SerializeToString())
    with pytest.raises(VggtoolError, match="not a text prototxt"):
        read_net_param(str(path))


def test_binary_net_param_reads_by_extension(tmp_path):
    net = parse_net_text(NEW)
    write_binary_proto(tmp_path / "m.caffemodel", net)
    assert read_net_param(str(tmp_path / "m.caffemodel")) == net


NET = 'layer { name: "input" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n' \
      'layer { name: "drop" type: "Dropout" bottom: "x" top: "y" include { phase: TRAIN } }\n' \
      'layer { name: "relu" type: "ReLU" bottom: "x" top: "z" include { phase: TEST } }\n'


@pytest.mark.parametrize("args,kwargs,phase", [
    ((), {}, vggtool.TEST),
    ((vggtool.TRAIN,), {}, vggtool.TRAIN),  # pycaffe's Net(model, phase)
    (("TRAIN",), {}, vggtool.TRAIN),
    ((None, vggtool.TRAIN), {}, vggtool.TRAIN),  # Net(model, weights, phase)
    ((), {"phase": "test"}, vggtool.TEST),
    ((), {"phase": caffe_pb2.TRAIN}, vggtool.TRAIN),
    ((vggtool.TRAIN,), {"weights": None}, vggtool.TRAIN),  # pycaffe's Net(model, phase, weights=w)
    ((None,), {"phase": "TRAIN"}, vggtool.TRAIN),
])
def test_net_call_forms(tmp_path, args, kwargs, phase):
    path = tmp_path / "n.prototxt"
    path.write_text(NET)
    net = Net(str(path), *args, **kwargs)
    assert net.phase == phase
    assert net.layer_names[-1] == ("drop" if phase == vggtool.TRAIN else "relu")
    assert (vggtool.TRAIN, vggtool.TEST) == (0, 1)


def test_net_from_net_parameter_is_not_modified():
    param = text_format.Parse(V1, caffe_pb2.NetParameter())
    before = param.SerializeToString()
    net = Net(param, phase="TEST")
    assert param.SerializeToString() == before
    assert net.layer_names[0] == "input"


@pytest.mark.parametrize("args,kwargs", [
    (("a.caffemodel", "TRAIN", "x"), {}),
    ((vggtool.TRAIN,), {"phase": "TEST"}),
    (("a.caffemodel",), {"weights": "b.caffemodel"}),
    (("a.caffemodel", "TRAIN"), {"phase": "TEST"}),
])
def test_net_call_forms_given_twice(args, kwargs):
    with pytest.raises(TypeError):
        Net(parse_net_text(NET), *args, **kwargs)


def test_pycaffe_style_weights_keyword(tmp_path):
    a = Net(parse_net_text(NEW), vggtool.TEST, seed=1)
    a.save(str(tmp_path / "m.caffemodel"))
    b = Net(parse_net_text(NEW), vggtool.TEST, weights=str(tmp_path / "m.caffemodel"), seed=2)
    np.testing.assert_array_equal(a.params["fc"][0].data, b.params["fc"][0].data)


def test_pycaffe_attributes(tmp_path):
    text = NEW + ('layer { name: "lab" type: "Input" top: "label" input_param { shape { dim: 2 } } }\n'
                  'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }\n')
    net = Net(parse_net_text(text), "TEST")
    assert net.layer_names == list(net.layer_dict) == [l.name for l in net.layers]
    assert net.inputs == ["data", "label"]
    assert net.outputs == ["loss", "prob"]  # name order, as Caffe's net_output_blobs_
    assert net.top_names["conv1"] == ["conv1"] and net.bottom_names["relu1"] == ["conv1"]
    assert net.top_names["fc"] == ["fc"] and net.bottom_names["prob"] == ["fc_fc_0_split_0"]
    assert list(net.blob_loss_weights) == list(net.blobs)  # pycaffe: every blob, 0 unless a loss
    assert {k: v for k, v in net.blob_loss_weights.items() if v} == {"loss": 1.0}
    assert net.layer_dict["conv1"].type == "Convolution" and net.layer_dict["conv1"].blobs[0] is net.params["conv1"][0]
    assert list(net.params) == ["conv1", "fc"]
    assert net.blobs["data"].data.shape == (2, 3, 6, 6) and net.blobs["data"].num == 2
    assert net.num_params() == 4 * 27 + 4 + 10 * 36 + 10
    rng = np.random.default_rng(0)
    out = net.forward(data=rng.standard_normal((2, 3, 6, 6)), label=np.array([1, 7]), blobs=["pool1"])
    assert set(out) == {"prob", "loss", "pool1"}
    net.backward()
    path = tmp_path / "x.caffemodel"
    net.save(str(path))
    other = Net(parse_net_text(NEW), vggtool.TEST)
    rep = other.copy_from(str(path))
    assert rep.copied == ["conv1", "fc"]
    np.testing.assert_array_equal(other.params["conv1"][0].data, net.params["conv1"][0].data)
    assert "Net('small', phase=TEST" in repr(net)
    outs = net.forward(end="relu1")
    assert list(outs) == ["conv1"]
