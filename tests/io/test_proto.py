"""Tests for the Caffe-compatible protobuf schema (proto/caffe.proto)."""

import importlib.util
import os
import struct
import subprocess
import sys

import pytest
from google.protobuf import descriptor_pb2, text_format

from vggtool.proto import caffe_pb2

from repo_paths import REPO  # noqa: E402
REPO_ROOT = REPO
GEN_SCRIPT = os.path.join(REPO_ROOT, "tools", "gen_proto.py")


# ---------------------------------------------------------------------------
# 1. The committed caffe_pb2.py is in sync with proto/caffe.proto
# ---------------------------------------------------------------------------

def _load_gen_proto():
    spec = importlib.util.spec_from_file_location("_vggtool_gen_proto", GEN_SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _normalize(messages):
    """Remove representation-only differences between descriptor sources.

    protoc fills json_name in --descriptor_set_out while the Python gencode
    omits it, and the upb runtime re-prints float defaults with float32
    precision (0.1 -> "0.100000001"); neither affects the wire or text format.
    """
    FDP = descriptor_pb2.FieldDescriptorProto
    for m in messages:
        for f in list(m.field) + list(m.extension):
            f.ClearField("json_name")
            if f.HasField("default_value") and f.type == FDP.TYPE_FLOAT:
                v = struct.unpack("<f", struct.pack("<f", float(f.default_value)))[0]
                f.default_value = repr(v)
            elif f.HasField("default_value") and f.type == FDP.TYPE_DOUBLE:
                f.default_value = repr(float(f.default_value))
        _normalize(m.nested_type)


def test_generated_module_in_sync(tmp_path):
    pytest.importorskip("grpc_tools")
    gen = _load_gen_proto()
    out = tmp_path / "caffe.desc"
    rc = gen.run_protoc(["--descriptor_set_out=" + str(out)])
    assert rc == 0, "protoc failed on proto/caffe.proto"

    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString(out.read_bytes())
    fresh = [f for f in fds.file if f.name == "caffe.proto"]
    assert len(fresh) == 1
    fresh = fresh[0]
    committed = descriptor_pb2.FileDescriptorProto()
    committed.ParseFromString(caffe_pb2.DESCRIPTOR.serialized_pb)
    for fdp in (fresh, committed):
        fdp.ClearField("source_code_info")
        _normalize(fdp.message_type)

    assert fresh == committed, (
        "vggtool/proto/caffe_pb2.py is out of date with proto/caffe.proto; "
        "run `python tools/gen_proto.py`"
    )


def test_gen_script_writes_module(tmp_path, monkeypatch):
    pytest.importorskip("grpc_tools")
    gen = _load_gen_proto()
    monkeypatch.setattr(gen, "OUT_DIR", str(tmp_path))
    assert gen.main() == 0
    text = (tmp_path / "caffe_pb2.py").read_text()
    committed = open(caffe_pb2.__file__.replace(".pyc", ".py")).read()
    assert text == committed, "run `python tools/gen_proto.py`"


def test_import_from_repo_root():
    code = "import sys; sys.path.insert(0, '.'); from vggtool.proto import caffe_pb2; caffe_pb2.NetParameter()"
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)


# ---------------------------------------------------------------------------
# 2. Wire compatibility with BVLC Caffe
# ---------------------------------------------------------------------------

FD = descriptor_pb2.FieldDescriptorProto
OPT, REP, REQ = FD.LABEL_OPTIONAL, FD.LABEL_REPEATED, FD.LABEL_REQUIRED


def _field_proto(msg, field):
    """FieldDescriptorProto of caffe.<msg>.<field> from the committed module."""
    mp = descriptor_pb2.DescriptorProto()
    getattr(caffe_pb2, msg).DESCRIPTOR.CopyToProto(mp)
    matches = [f for f in mp.field if f.name == field]
    assert matches, "caffe.%s has no field %s" % (msg, field)
    return matches[0]


# (message, field, number, type, label) as in BVLC Caffe
BVLC_FIELDS = [
    ("BlobShape", "dim", 1, FD.TYPE_INT64, REP),
    ("BlobProto", "shape", 7, FD.TYPE_MESSAGE, OPT),
    ("BlobProto", "data", 5, FD.TYPE_FLOAT, REP),
    ("BlobProto", "diff", 6, FD.TYPE_FLOAT, REP),
    ("BlobProto", "double_data", 8, FD.TYPE_DOUBLE, REP),
    ("BlobProto", "num", 1, FD.TYPE_INT32, OPT),
    ("BlobProto", "width", 4, FD.TYPE_INT32, OPT),
    ("BlobProtoVector", "blobs", 1, FD.TYPE_MESSAGE, REP),
    ("Datum", "channels", 1, FD.TYPE_INT32, OPT),
    ("Datum", "height", 2, FD.TYPE_INT32, OPT),
    ("Datum", "width", 3, FD.TYPE_INT32, OPT),
    ("Datum", "data", 4, FD.TYPE_BYTES, OPT),
    ("Datum", "label", 5, FD.TYPE_INT32, OPT),
    ("Datum", "float_data", 6, FD.TYPE_FLOAT, REP),
    ("Datum", "encoded", 7, FD.TYPE_BOOL, OPT),
    ("NetParameter", "name", 1, FD.TYPE_STRING, OPT),
    ("NetParameter", "layers", 2, FD.TYPE_MESSAGE, REP),
    ("NetParameter", "input", 3, FD.TYPE_STRING, REP),
    ("NetParameter", "input_shape", 8, FD.TYPE_MESSAGE, REP),
    ("NetParameter", "layer", 100, FD.TYPE_MESSAGE, REP),
    ("LayerParameter", "name", 1, FD.TYPE_STRING, OPT),
    ("LayerParameter", "type", 2, FD.TYPE_STRING, OPT),
    ("LayerParameter", "param", 6, FD.TYPE_MESSAGE, REP),
    ("LayerParameter", "blobs", 7, FD.TYPE_MESSAGE, REP),
    ("LayerParameter", "transform_param", 100, FD.TYPE_MESSAGE, OPT),
    ("LayerParameter", "convolution_param", 106, FD.TYPE_MESSAGE, OPT),
    ("LayerParameter", "inner_product_param", 117, FD.TYPE_MESSAGE, OPT),
    ("LayerParameter", "pooling_param", 121, FD.TYPE_MESSAGE, OPT),
    ("LayerParameter", "batch_norm_param", 139, FD.TYPE_MESSAGE, OPT),
    ("LayerParameter", "clip_param", 148, FD.TYPE_MESSAGE, OPT),
    ("ParamSpec", "lr_mult", 3, FD.TYPE_FLOAT, OPT),
    ("ParamSpec", "decay_mult", 4, FD.TYPE_FLOAT, OPT),
    ("ConvolutionParameter", "kernel_size", 4, FD.TYPE_UINT32, REP),
    ("ConvolutionParameter", "stride", 6, FD.TYPE_UINT32, REP),
    ("ConvolutionParameter", "dilation", 18, FD.TYPE_UINT32, REP),
    ("ClipParameter", "min", 1, FD.TYPE_FLOAT, REQ),
    ("SolverState", "iter", 1, FD.TYPE_INT32, OPT),
    ("SolverState", "learned_net", 2, FD.TYPE_STRING, OPT),
    ("SolverState", "history", 3, FD.TYPE_MESSAGE, REP),
    ("SolverState", "current_step", 4, FD.TYPE_INT32, OPT),
    ("SolverParameter", "net", 24, FD.TYPE_STRING, OPT),
    ("SolverParameter", "type", 40, FD.TYPE_STRING, OPT),
    ("SolverParameter", "solver_type", 30, FD.TYPE_ENUM, OPT),
    ("SolverParameter", "random_seed", 20, FD.TYPE_INT64, OPT),
    ("SolverParameter", "weights", 42, FD.TYPE_STRING, REP),
    ("V1LayerParameter", "layer", 1, FD.TYPE_MESSAGE, OPT),
    ("V1LayerParameter", "type", 5, FD.TYPE_ENUM, OPT),
    ("V1LayerParameter", "blobs", 6, FD.TYPE_MESSAGE, REP),
    ("V1LayerParameter", "param", 1001, FD.TYPE_STRING, REP),
    ("V0LayerParameter", "blobs", 50, FD.TYPE_MESSAGE, REP),
    ("V0LayerParameter", "hdf5_output_param", 1001, FD.TYPE_MESSAGE, OPT),
]


@pytest.mark.parametrize("msg,field,number,ftype,label", BVLC_FIELDS)
def test_bvlc_field_numbers(msg, field, number, ftype, label):
    fp = _field_proto(msg, field)
    assert (fp.number, fp.type, fp.label) == (number, ftype, label)
    # The runtime descriptor agrees with the serialized one.
    assert getattr(caffe_pb2, msg).DESCRIPTOR.fields_by_name[field].number == number


@pytest.mark.parametrize("msg,field,packed", [
    ("BlobShape", "dim", True),
    ("BlobProto", "data", True),
    ("BlobProto", "diff", True),
    ("BlobProto", "double_data", True),
    ("BlobProto", "double_diff", True),
    ("Datum", "float_data", False),  # proto2 default: not packed on the wire
    ("Datum", "box", True),
    ("TransformationParameter", "mean_value", False),
])
def test_packed_flags(msg, field, packed):
    fd = getattr(caffe_pb2, msg).DESCRIPTOR.fields_by_name[field]
    assert fd.is_packed == packed


def test_bvlc_defaults_and_enums():
    s = caffe_pb2.SolverParameter()
    assert s.solver_mode == caffe_pb2.SolverParameter.GPU
    assert s.type == "SGD" and s.regularization_type == "L2"
    assert s.random_seed == -1 and s.snapshot_format == caffe_pb2.SolverParameter.BINARYPROTO
    assert caffe_pb2.SolverParameter.ADAM == 5
    assert caffe_pb2.V1LayerParameter.CONVOLUTION == 4
    assert caffe_pb2.V1LayerParameter.DECONVOLUTION == 39
    assert caffe_pb2.TRAIN == 0 and caffe_pb2.TEST == 1
    assert caffe_pb2.NetState().phase == caffe_pb2.TEST
    assert caffe_pb2.PoolingParameter().round_mode == caffe_pb2.PoolingParameter.CEIL
    assert caffe_pb2.FillerParameter().type == "constant"
    assert caffe_pb2.LRNParameter().beta == pytest.approx(0.75)
    assert caffe_pb2.BatchNormParameter().moving_average_fraction == pytest.approx(0.999)


def test_vggtool_extensions():
    t = caffe_pb2.TransformationParameter()
    assert t.pca_sigma == pytest.approx(0.1)
    fields = t.DESCRIPTOR.fields_by_name
    assert [fields[n].number for n in (
        "smallest_side", "smallest_side_min", "smallest_side_max",
        "test_smallest_side", "pca_stats_file", "pca_sigma")] == list(range(1000, 1006))
    s = caffe_pb2.SolverParameter()
    assert s.plateau_output == "accuracy" and s.plateau_patience == 1
    assert s.plateau_max_drops == 3 and s.plateau_mode == caffe_pb2.SolverParameter.MAX
    assert caffe_pb2.SolverParameter.MIN == 1
    st = caffe_pb2.SolverState()
    assert st.DESCRIPTOR.fields_by_name["plateau_best"].number == 1000
    assert st.DESCRIPTOR.fields_by_name["plateau_has_best"].number == 1003
    assert caffe_pb2.Datum.DESCRIPTOR.fields_by_name["box"].number == 1000
    algo = caffe_pb2.ConvolutionParameter.DESCRIPTOR.fields_by_name["vggtool_algorithm"]
    assert (algo.number, algo.type) == (1000, FD.TYPE_STRING)
    conv = text_format.Parse('num_output: 2 vggtool_algorithm: "shifted"', caffe_pb2.ConvolutionParameter())
    assert conv.vggtool_algorithm == "shifted" and not caffe_pb2.ConvolutionParameter().HasField("vggtool_algorithm")


# --- hand-encoded wire bytes ----------------------------------------------

VARINT, I64, LEN, I32 = 0, 1, 2, 5


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _tag(field, wire_type):
    return _varint((field << 3) | wire_type)


def _len_field(field, payload):
    return _tag(field, LEN) + _varint(len(payload)) + payload


def test_datum_hand_encoded():
    pixels = bytes(range(12))
    raw = (
        _tag(1, VARINT) + _varint(3)          # channels
        + _tag(2, VARINT) + _varint(2)        # height
        + _tag(3, VARINT) + _varint(2)        # width
        + _len_field(4, pixels)               # data
        + _tag(5, VARINT) + _varint(7)        # label
        + _tag(6, I32) + struct.pack("<f", 1.5)   # float_data, unpacked
        + _tag(6, I32) + struct.pack("<f", -2.0)
        + _tag(7, VARINT) + _varint(1)        # encoded
        + _len_field(1000, struct.pack("<4f", 1, 2, 30, 40))  # box, packed
    )
    d = caffe_pb2.Datum()
    d.ParseFromString(raw)
    assert (d.channels, d.height, d.width, d.label) == (3, 2, 2, 7)
    assert d.data == pixels
    assert list(d.float_data) == [1.5, -2.0]
    assert d.encoded is True
    assert list(d.box) == [1.0, 2.0, 30.0, 40.0]
    # Serialising back gives the same bytes (field-number order).
    assert d.SerializeToString() == raw


def test_lmdb_style_datum_roundtrip():
    d = caffe_pb2.Datum(channels=3, height=1, width=1, data=b"\x01\x02\x03", label=42)
    raw = d.SerializeToString()
    assert raw == (_tag(1, VARINT) + b"\x03" + _tag(2, VARINT) + b"\x01"
                   + _tag(3, VARINT) + b"\x01" + _len_field(4, b"\x01\x02\x03")
                   + _tag(5, VARINT) + _varint(42))


def test_blobproto_hand_encoded():
    values = [0.25, -1.0, 3.5, 100.0, 0.0, 7.0]
    shape = _len_field(1, _varint(2) + _varint(3))           # BlobShape.dim packed
    raw = (
        _len_field(5, struct.pack("<6f", *values))            # data packed
        + _len_field(7, shape)                                # shape
    )
    b = caffe_pb2.BlobProto()
    b.ParseFromString(raw)
    assert list(b.shape.dim) == [2, 3]
    assert list(b.data) == values
    assert b.SerializeToString() == raw

    # Parsers must also accept the unpacked encoding of packed fields.
    b2 = caffe_pb2.BlobProto()
    b2.ParseFromString(b"".join(_tag(5, I32) + struct.pack("<f", v) for v in values))
    assert list(b2.data) == values

    # Legacy 4-D header fields.
    b3 = caffe_pb2.BlobProto()
    b3.ParseFromString(_tag(1, VARINT) + _varint(1) + _tag(2, VARINT) + _varint(3)
                       + _tag(3, VARINT) + _varint(224) + _tag(4, VARINT) + _varint(224))
    assert (b3.num, b3.channels, b3.height, b3.width) == (1, 3, 224, 224)


def test_netparameter_with_blobs_hand_encoded():
    blob = _len_field(7, _len_field(1, _varint(4))) + _len_field(5, struct.pack("<4f", 1, 2, 3, 4))
    layer = _len_field(1, b"fc8") + _len_field(2, b"InnerProduct") + _len_field(7, blob)
    raw = _len_field(1, b"VGG") + _len_field(100, layer)
    net = caffe_pb2.NetParameter()
    net.ParseFromString(raw)
    assert net.name == "VGG"
    assert net.layer[0].type == "InnerProduct"
    assert list(net.layer[0].blobs[0].data) == [1, 2, 3, 4]


def test_solverstate_hand_encoded():
    hist = _len_field(5, struct.pack("<2f", 0.5, 0.25))
    raw = (_tag(1, VARINT) + _varint(5000) + _len_field(2, b"x_iter_5000.caffemodel")
           + _len_field(3, hist) + _tag(4, VARINT) + _varint(2))
    st = caffe_pb2.SolverState()
    st.ParseFromString(raw)
    assert st.iter == 5000 and st.current_step == 2
    assert st.learned_net == "x_iter_5000.caffemodel"
    assert list(st.history[0].data) == [0.5, 0.25]


# ---------------------------------------------------------------------------
# 3. Real-style Caffe prototxt text parses
# ---------------------------------------------------------------------------

NET_PROTOTXT = """
name: "ResNet-ish"
layer {
  name: "data"
  type: "Data"
  top: "data"
  top: "label"
  include { phase: TRAIN }
  transform_param { mirror: true crop_size: 224 mean_value: 104 mean_value: 117 mean_value: 123 }
  data_param { source: "train_lmdb" batch_size: 32 backend: LMDB }
}
layer {
  name: "input"
  type: "Input"
  top: "data"
  include { phase: TEST }
  input_param { shape: { dim: 1 dim: 3 dim: 224 dim: 224 } }
}
layer {
  name: "conv1"
  type: "Convolution"
  bottom: "data"
  top: "conv1"
  param { lr_mult: 1 decay_mult: 1 }
  convolution_param {
    num_output: 64 kernel_size: 7 pad: 3 stride: 2 bias_term: false
    weight_filler { type: "msra" }
  }
}
layer {
  name: "bn_conv1"
  type: "BatchNorm"
  bottom: "conv1"
  top: "conv1"
  param { lr_mult: 0 }
  param { lr_mult: 0 }
  param { lr_mult: 0 }
  batch_norm_param { use_global_stats: true eps: 1e-5 }
}
layer {
  name: "scale_conv1"
  type: "Scale"
  bottom: "conv1"
  top: "conv1"
  scale_param { bias_term: true }
}
layer { name: "conv1_relu" type: "ReLU" bottom: "conv1" top: "conv1" relu_param { negative_slope: 0.1 } }
layer {
  name: "pool1"
  type: "Pooling"
  bottom: "conv1"
  top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR }
}
layer { name: "drop" type: "Dropout" bottom: "pool1" top: "pool1" dropout_param { dropout_ratio: 0.5 } }
layer {
  name: "fc"
  type: "InnerProduct"
  bottom: "pool1"
  top: "fc"
  inner_product_param { num_output: 1000 weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 0 } }
}
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" include { phase: TEST } }
layer {
  name: "loss"
  type: "SoftmaxWithLoss"
  bottom: "fc"
  bottom: "label"
  top: "loss"
  loss_param { normalization: VALID ignore_label: -1 }
}
layer {
  name: "acc5"
  type: "Accuracy"
  bottom: "fc"
  bottom: "label"
  top: "acc5"
  accuracy_param { top_k: 5 }
}
layer { name: "py" type: "Python" python_param { module: "m" layer: "L" param_str: "{'a': 1}" } }
layer { name: "clip" type: "Clip" clip_param { min: -1 max: 1 } }
"""

V1_PROTOTXT = """
name: "CaffeNet-old"
layers {
  name: "conv1"
  type: CONVOLUTION
  bottom: "data"
  top: "conv1"
  blobs_lr: 1
  blobs_lr: 2
  convolution_param { num_output: 96 kernel_size: 11 stride: 4 }
}
layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" }
"""

SOLVER_PROTOTXT = """
net: "models/vgg16/train_val.prototxt"
test_iter: 1000
test_interval: 4000
base_lr: 0.01
lr_policy: "step"
gamma: 0.1
stepsize: 100000
display: 20
max_iter: 450000
momentum: 0.9
weight_decay: 0.0005
snapshot: 10000
snapshot_prefix: "models/vgg16/vgg16"
solver_mode: GPU
solver_type: SGD
"""


def test_parse_real_style_net_prototxt():
    net = text_format.Parse(NET_PROTOTXT, caffe_pb2.NetParameter())
    assert len(net.layer) == 14
    by_name = {l.name: l for l in net.layer}
    assert by_name["bn_conv1"].batch_norm_param.use_global_stats is True
    assert by_name["scale_conv1"].scale_param.bias_term is True
    assert by_name["conv1"].convolution_param.kernel_size == [7]
    assert by_name["pool1"].pooling_param.round_mode == caffe_pb2.PoolingParameter.FLOOR
    assert by_name["data"].include[0].phase == caffe_pb2.TRAIN
    assert by_name["data"].data_param.backend == caffe_pb2.DataParameter.LMDB
    assert list(by_name["input"].input_param.shape[0].dim) == [1, 3, 224, 224]
    # Text -> binary -> text round trip.
    again = caffe_pb2.NetParameter.FromString(net.SerializeToString())
    assert again == net
    assert text_format.Parse(text_format.MessageToString(net), caffe_pb2.NetParameter()) == net


def test_parse_v1_prototxt():
    net = text_format.Parse(V1_PROTOTXT, caffe_pb2.NetParameter())
    assert net.layers[0].type == caffe_pb2.V1LayerParameter.CONVOLUTION
    assert list(net.layers[0].blobs_lr) == [1, 2]
    assert net.layers[1].type == caffe_pb2.V1LayerParameter.RELU


def test_parse_solver_prototxt():
    s = text_format.Parse(SOLVER_PROTOTXT, caffe_pb2.SolverParameter())
    assert s.net.endswith("train_val.prototxt")
    assert list(s.test_iter) == [1000]
    assert s.solver_mode == caffe_pb2.SolverParameter.GPU
    assert s.base_lr == pytest.approx(0.01)
    s2 = text_format.Parse('lr_policy: "plateau" plateau_output: "top5" plateau_mode: MAX',
                           caffe_pb2.SolverParameter())
    assert s2.plateau_output == "top5"
