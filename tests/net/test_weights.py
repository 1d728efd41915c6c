"""Weights files: .caffemodel round trips, legacy blob shapes, copy_from by name, clear errors."""
import os

import numpy as np
import pytest
from numerics import assert_close_to_scale

from vggtool import Net, VggtoolError
from vggtool.backend import to_numpy
from vggtool.proto import caffe_pb2
from vggtool.io.prototxt import parse_net_text, read_net_param

TEXT = """
name: "w"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 }
                            bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
        inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def make(seed, text=TEXT, dtype=np.float32, **kw):
    return Net(parse_net_text(text, "<w>"), phase="TEST", seed=seed, dtype=dtype, **kw)


def params_of(net):
    return {n: [to_numpy(b.data).copy() for b in blobs] for n, blobs in net.params.items()}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_caffemodel_round_trip(tmp_path, dtype):
    a = make(1, dtype=dtype)
    path = tmp_path / "m.caffemodel"
    a.save(str(path))
    b = make(2, dtype=dtype)
    assert not np.array_equal(to_numpy(a.params["fc"][0].data), to_numpy(b.params["fc"][0].data))
    rep = b.copy_from(str(path))
    assert rep.copied == ["conv", "fc"] and rep.ignored == [] and rep.missing == []
    for name, arrays in params_of(a).items():
        for x, y in zip(arrays, params_of(b)[name]):
            assert y.dtype == dtype
            np.testing.assert_array_equal(x, y)
    stored = read_net_param(str(path))
    blob = [l for l in stored.layer if l.name == "fc"][0].blobs[0]
    assert list(blob.shape.dim) == [6, 36]
    assert (len(blob.double_data) > 0) == (dtype == np.float64)
    assert (len(blob.data) > 0) == (dtype == np.float32)


def test_net_with_weights_argument(tmp_path):
    a = make(1)
    path = str(tmp_path / "m.caffemodel")
    a.save(path)
    model = tmp_path / "net.prototxt"
    model.write_text(TEXT)
    b = Net(str(model), path)  # pycaffe's Net(model, weights) form ...
    c = Net(str(model), weights=path, phase="TEST")
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 5))
    ref = to_numpy(a.forward(data=x)["prob"]).copy()
    np.testing.assert_array_equal(to_numpy(b.forward(data=x)["prob"]), ref)
    np.testing.assert_array_equal(to_numpy(c.forward(data=x)["prob"]), ref)


def test_saved_file_keeps_the_whole_definition(tmp_path):
    a = make(1)
    a.save(str(tmp_path / "m.caffemodel"))
    stored = read_net_param(str(tmp_path / "m.caffemodel"))
    assert [l.name for l in stored.layer] == ["data", "conv", "relu", "fc", "prob"]
    assert not any(f.startswith(".tmp-") for f in os.listdir(tmp_path))  # atomic write left no temp file


def legacy_source(fc_w, fc_b, conv_w=None, conv_b=None):
    """A NetParameter with blobs in the legacy num/channels/height/width form (old .caffemodel files)."""
    src = caffe_pb2.NetParameter()
    if conv_w is not None:
        layer = src.layer.add(name="conv", type="Convolution")
        for arr in (conv_w, conv_b.reshape(1, 1, 1, -1)):
            blob = layer.blobs.add(num=arr.shape[0], channels=arr.shape[1], height=arr.shape[2], width=arr.shape[3])
            blob.data.extend(arr.reshape(-1).tolist())
    layer = src.layer.add(name="fc", type="InnerProduct")
    for arr in (fc_w.reshape(1, 1, *fc_w.shape), fc_b.reshape(1, 1, 1, -1)):
        blob = layer.blobs.add(num=arr.shape[0], channels=arr.shape[1], height=arr.shape[2], width=arr.shape[3])
        blob.data.extend(arr.reshape(-1).tolist())
    return src


def test_legacy_4d_blobs_load():
    rng = np.random.default_rng(0)
    fc_w = rng.standard_normal((6, 36)).astype(np.float32)
    fc_b = rng.standard_normal(6).astype(np.float32)
    conv_w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    conv_b = rng.standard_normal(4).astype(np.float32)
    net = make(1)
    rep = net.copy_from(legacy_source(fc_w, fc_b, conv_w, conv_b))
    assert rep.copied == ["conv", "fc"]
    np.testing.assert_array_equal(to_numpy(net.params["fc"][0].data), fc_w)
    np.testing.assert_array_equal(to_numpy(net.params["fc"][1].data), fc_b)
    np.testing.assert_array_equal(to_numpy(net.params["conv"][0].data), conv_w)
    np.testing.assert_array_equal(to_numpy(net.params["conv"][1].data), conv_b)


def test_legacy_blob_with_wrong_shape_is_refused():
    net = make(1)
    with pytest.raises(VggtoolError, match="'fc'.*1 1 36 6 \\(216\\).*6 36 \\(216\\)"):
        net.copy_from(legacy_source(np.zeros((36, 6)), np.zeros(6)))


def test_copy_from_report_and_only(tmp_path):
    src_text = TEXT.replace('"fc"', '"fc_old"').replace('bottom: "fc_old" top: "prob"', 'bottom: "fc_old" top: "prob"')
    src = make(5, text=src_text)
    path = str(tmp_path / "src.caffemodel")
    src.save(path)
    net = make(1)
    fc_before = to_numpy(net.params["fc"][0].data).copy()
    rep = net.copy_from(path)
    assert (rep.copied, rep.ignored, rep.missing) == (["conv"], ["fc_old"], ["fc"])
    np.testing.assert_array_equal(to_numpy(net.params["conv"][0].data), to_numpy(src.params["conv"][0].data))
    np.testing.assert_array_equal(to_numpy(net.params["fc"][0].data), fc_before)
    lines = rep.lines()
    assert "copied 1 layer(s): conv" in lines[0]
    assert any("fc_old" in l for l in lines) and any("fc" in l and "initialisation" in l for l in lines)
    other = make(1)
    conv_before = to_numpy(other.params["conv"][0].data).copy()
    rep2 = other.copy_from(str(tmp_path / "src.caffemodel"), only=["fc"])
    assert (rep2.copied, rep2.ignored, rep2.missing) == ([], ["conv", "fc_old"], ["fc"])
    np.testing.assert_array_equal(to_numpy(other.params["conv"][0].data), conv_before)


def test_shape_mismatch_names_layer_and_both_shapes(tmp_path):
    src = make(1, text=TEXT.replace("num_output: 6", "num_output: 7"))
    path = str(tmp_path / "m.caffemodel")
    src.save(path)
    with pytest.raises(VggtoolError) as e:
        make(1).copy_from(path)
    msg = str(e.value)
    assert "'fc'" in msg and "7 36 (252)" in msg and "6 36 (216)" in msg and path in msg and "rename" in msg


def test_wrong_blob_count(tmp_path):
    src = make(1, text=TEXT.replace("inner_product_param { num_output: 6", "inner_product_param { bias_term: false num_output: 6"))
    path = str(tmp_path / "m.caffemodel")
    src.save(path)
    with pytest.raises(VggtoolError, match="'fc'.*source has 1 parameter blob.*target has 2"):
        make(1).copy_from(path)


def test_value_count_not_matching_shape():
    src = caffe_pb2.NetParameter()
    layer = src.layer.add(name="fc", type="InnerProduct")
    blob = layer.blobs.add()
    blob.shape.dim.extend([6, 36])
    blob.data.extend([0.0] * 100)
    layer.blobs.add().CopyFrom(blob)
    with pytest.raises(VggtoolError, match="'fc' param 0 holds 100 values.*216"):
        make(1).copy_from(src)


@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_truncated_weights_file(tmp_path, keep):
    path = tmp_path / "m.caffemodel"
    make(1).save(str(path))
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(VggtoolError, match=f"{path}: not a valid caffemodel \\(truncated or corrupt"):
        make(1).copy_from(str(path))


def test_weights_file_missing(tmp_path):
    with pytest.raises(VggtoolError, match="not found"):
        make(1).copy_from(str(tmp_path / "none.caffemodel"))


def test_forward_with_a_new_input_shape_reshapes(tmp_path):
    text = TEXT.replace('bottom: "conv" top: "fc"', 'bottom: "pool" top: "fc"').replace(
        'layer { name: "fc"', 'layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" '
        'pooling_param { pool: MAX global_pooling: true } }\nlayer { name: "fc"')
    net = make(1, text=text)
    rng = np.random.default_rng(0)
    out = to_numpy(net.forward(data=rng.standard_normal((2, 3, 5, 5)))["prob"]).copy()
    assert out.shape == (2, 6)
    x = rng.standard_normal((3, 3, 9, 7))
    out = to_numpy(net.forward(data=x)["prob"])
    assert out.shape == (3, 6)
    assert net.blobs["data"].shape == (3, 3, 9, 7) and net.blobs["conv"].shape == (3, 4, 7, 5)
    np.testing.assert_allclose(out.sum(axis=1), 1, rtol=1e-5)
    # Reference: the same image alone (in a 1-image batch) gives the same probabilities.
    single = to_numpy(net.forward(data=x[1:2])["prob"])
    assert_close_to_scale(single[0], out[1], 3 * 9 + 4 * 3 * 3)  # conv, then fc over its 4x3x3 map


def test_only_inputs_may_change_shape():
    net = make(1)
    with pytest.raises(VggtoolError, match="blob 'conv' has shape"):
        net.forward(conv=np.zeros((1, 1, 1, 1)))
    with pytest.raises(VggtoolError, match="no blob named 'nope'"):
        net.forward(nope=np.zeros(1))


def test_source_layer_without_blobs_counts_as_missing():
    src = parse_net_text(TEXT)  # a definition, no weights
    rep = make(1).copy_from(src)
    assert (rep.copied, rep.ignored, rep.missing) == ([], [], ["conv", "fc"])


def test_v1_binary_caffemodel_as_in_the_model_zoo(tmp_path):
    """The published VGG .caffemodel files are V1 nets (`layers`, enum types) with legacy 4-d blobs."""
    rng = np.random.default_rng(3)
    fc_w = rng.standard_normal((6, 36)).astype(np.float32)
    fc_b = rng.standard_normal(6).astype(np.float32)
    conv_w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    conv_b = rng.standard_normal(4).astype(np.float32)
    new = legacy_source(fc_w, fc_b, conv_w, conv_b)
    v1 = caffe_pb2.NetParameter(name="VGG_ILSVRC_16_layers")
    types = {"Convolution": caffe_pb2.V1LayerParameter.CONVOLUTION,
             "InnerProduct": caffe_pb2.V1LayerParameter.INNER_PRODUCT}
    relu = v1.layers.add(name="relu", type=caffe_pb2.V1LayerParameter.RELU)
    relu.bottom.append("conv")
    for layer in new.layer:
        old = v1.layers.add(name=layer.name, type=types[layer.type])
        old.blobs.extend(layer.blobs)
        old.blobs_lr.extend([1, 2])
    path = tmp_path / "zoo.caffemodel"
    path.write_bytes(v1.SerializeToString())
    net = make(1)
    rep = net.copy_from(str(path))
    assert (rep.copied, rep.ignored, rep.missing) == (["conv", "fc"], [], [])
    np.testing.assert_array_equal(to_numpy(net.params["fc"][0].data), fc_w)
    np.testing.assert_array_equal(to_numpy(net.params["conv"][1].data), conv_b)


@pytest.mark.parametrize("dtype,write_diff", [(np.float32, False), (np.float64, True)])
def test_saved_file_equals_to_proto(tmp_path, dtype, write_diff):
    net = make(1, dtype=dtype)
    rng = np.random.default_rng(0)
    for blobs in net.params.values():
        for b in blobs:
            b.diff = rng.standard_normal(b.shape)
    path = tmp_path / "m.caffemodel"
    net.save(str(path), write_diff=write_diff)
    stored = caffe_pb2.NetParameter.FromString(path.read_bytes())
    assert stored == net.to_proto(write_diff=write_diff)
