"""ONNX export (vggtool.interop.onnx, `vggtool export`) checked against onnxruntime.

The exported float32 graph runs in onnxruntime; the reference is vggtool's float64 forward pass on the
same weights, so the figure compared is onnxruntime's float32 rounding (relative to the largest output
magnitude), not one implementation's agreement with itself.
"""
import os

import numpy as np
import pytest
from google.protobuf import text_format

import vggtool
from vggtool.interop import onnx as onnx_export
from vggtool.vgg import surgery
from vggtool.io import prototxt
from vggtool.cli import main
from vggtool.errors import VggtoolError
from vggtool.proto import caffe_pb2

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from repo_paths import REPO  # noqa: E402
ROOT = REPO
TOL = 1e-5


def netdef(*parts):
    return os.path.join(ROOT, "netdefs", *parts)


def parse(text):
    return text_format.Parse(text, caffe_pb2.NetParameter())


def randomize(net, seed=0, input_scale=1.0):
    """He-scaled normal weights (activations keep their scale through deep stacks), small random biases;
    the first layer's weights are divided by input_scale so that scores are O(1) for inputs of that size
    (Caffe's 0-255 pixels: 100), as a trained net's are (a softmax of scores in the hundreds would turn
    every float32 rounding of them into a large change of the posteriors)."""
    rng = np.random.default_rng(seed)
    first = True
    for layer in net.layers:
        for k, blob in enumerate(layer.blobs):
            if k == 0:
                fan_in = blob.count // blob.shape[0] if blob.shape[0] else 1
                scale = np.sqrt(2.0 / fan_in) / (input_scale if first else 1.0)
                blob.data = rng.standard_normal(blob.shape, dtype=np.float32) * np.float32(scale)
                first = False
            else:
                blob.data = rng.standard_normal(blob.shape, dtype=np.float32) * np.float32(0.1)


def reference(param, net32, feeds, blobs):
    """vggtool's forward in float64 with net32's weights."""
    net64 = vggtool.Net(param, phase="TEST", dtype=np.float64)
    for name, layer in net64.layer_dict.items():
        for dst, src in zip(layer.blobs, net32.layer_dict[name].blobs):
            dst.data = np.asarray(src.data, dtype=np.float64)
    net64.forward(**{k: v.astype(np.float64) for k, v in feeds.items()})
    return {b: net64.blobs[b].data.copy() for b in blobs}


def run_onnx(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds)))


def rel_err(y, ref):
    assert y.shape == ref.shape, (y.shape, ref.shape)
    return float(np.abs(y.astype(np.float64) - ref).max() / np.abs(ref).max())


def export_and_compare(param, feeds, outputs=None, seed=0, input_scale=1.0, **kw):
    net = vggtool.Net(param, phase="TEST")
    randomize(net, seed, input_scale)
    model = onnx_export.net_to_onnx(net, outputs=outputs, **kw)
    onnx.checker.check_model(model, full_check=True)
    got = run_onnx(model, feeds)
    refs = reference(param, net, feeds, list(got))
    return {b: rel_err(got[b], refs[b]) for b in got}, model


def deploy_at(config, height, width, hidden=64):
    """netdefs' deploy net with another input size and narrower fc6/fc7 (fc8 keeps 1000 classes)."""
    param = prototxt.read_net_param(netdef(config, "deploy.prototxt"))
    shape = param.layer[0].input_param.shape[0]
    shape.dim[2], shape.dim[3] = height, width
    for layer in param.layer:
        if layer.name in ("fc6", "fc7"):
            layer.inner_product_param.num_output = hidden
    return param


@pytest.mark.parametrize("config", ["vgg_a", "vgg_a_lrn", "vgg_b", "vgg_c", "vgg_d", "vgg_e"])
def test_vgg_deploy_nets_match_onnxruntime(config):
    # 36 x 44: odd sizes after pool2/pool3 (9, 11, 5), so Caffe's CEIL pooling windows overhang the input.
    param = deploy_at(config, 36, 44)
    x = np.random.default_rng(1).uniform(-120, 130, (2, 3, 36, 44)).astype(np.float32)  # batch 2 > declared 1
    errs, model = export_and_compare(param, {"data": x}, outputs=["fc8", "prob"], input_scale=100)
    print(config, errs)
    assert max(errs.values()) < TOL
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, 36, 44]
    ops = {n.op_type for n in model.graph.node}
    assert ("LRN" in ops) == (config == "vgg_a_lrn")


def convolutionalised_d(hidden):
    """VGG-D's deploy net convolutionalised (fc6 a 7x7 convolution, fc7/fc8 1x1), fc6/fc7 `hidden` wide."""
    narrow = vggtool.Net(deploy_at("vgg_d", 224, 224, hidden=1), phase="TEST")  # the plan needs shapes only
    return surgery.convolutionalize_param(deploy_at("vgg_d", 224, 224, hidden=hidden), net=narrow)[0]


def check_convolutionalised_d(hidden, params):
    param = convolutionalised_d(hidden)
    net = vggtool.Net(param, phase="TEST")
    assert net.num_params() == params
    randomize(net, seed=3, input_scale=100)
    model = onnx_export.net_to_onnx(net, outputs=["fc8", "prob"])
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, "height", "width"]
    data = model.SerializeToString()
    del model
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    del data
    x = np.random.default_rng(4).uniform(-120, 130, (1, 3, 256, 320)).astype(np.float32)
    fc8, prob = sess.run(["fc8", "prob"], {"data": x})
    assert prob.shape == (1, 1000, 2, 4)
    del sess
    ref = reference(param, net, {"data": x}, ["fc8", "prob"])
    errs = {"fc8": rel_err(fc8, ref["fc8"]), "prob": rel_err(prob, ref["prob"])}
    print(f"convolutionalised D (fc6/fc7 {hidden} wide) at 256x320", errs)
    assert max(errs.values()) < TOL


@pytest.mark.slow  # 138M parameters (0.55 GB in float32): ~19 s on an idle 2-core machine, ~45 s on a loaded one
def test_convolutionalised_vgg_d_on_256x320():
    """The full convolutionalised D (fc6 a 7x7 convolution, fc7/fc8 1x1) on a 256x320 image: a 2x4 map."""
    check_convolutionalised_d(4096, 138_357_544)


def test_demo_net_and_its_convolutionalised_form_at_odd_sizes():
    param = prototxt.read_net_param(netdef("demo", "deploy.prototxt"))
    x = np.random.default_rng(2).uniform(-1, 1, (3, 1, 24, 24)).astype(np.float32)
    errs, _ = export_and_compare(param, {"data": x}, outputs=["fc8", "prob"])
    print("demo", errs)
    assert max(errs.values()) < TOL
    conv_param, _ = surgery.convolutionalize_param(param)
    net = vggtool.Net(conv_param, phase="TEST")
    randomize(net, seed=5)
    model = onnx_export.net_to_onnx(net, outputs=["fc8", "prob"])
    for h, w in ((24, 24), (29, 31), (37, 26)):  # one graph, several sizes: odd ones pool with CEIL overhang
        x = np.random.default_rng(h).uniform(-1, 1, (2, 1, h, w)).astype(np.float32)
        got = run_onnx(model, {"data": x})
        ref = reference(conv_param, net, {"data": x}, ["fc8", "prob"])
        err = max(rel_err(got[b], ref[b]) for b in ref)
        print("demo conv", h, w, err)
        assert err < TOL


POOL_NET = """
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: 2 dim: 8 dim: 8 }} }} }}
layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool"
  pooling_param {{ pool: {pool} kernel_size: {k} stride: {s} pad: {p} round_mode: {mode} }} }}
"""


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
@pytest.mark.parametrize("mode", ["CEIL", "FLOOR"])
def test_pooling_sizes_and_windows_match_caffe(pool, mode):
    """Every kernel 1-3, stride 1-3, pad < kernel on odd and even sizes 3-9 (one graph per geometry, with
    dynamic H, W): output size and values as Caffe's (ceil, the last-window rule, AVE's divisor)."""
    cases = 0
    for k in (1, 2, 3):
        for s in (1, 2, 3):
            for p in range(k):
                param = parse(POOL_NET.format(pool=pool, k=k, s=s, p=p, mode=mode))
                net = vggtool.Net(param, phase="TEST")
                if mode == "CEIL" and k < s and p == 0:
                    with pytest.raises(VggtoolError, match="'pool'.*empty last window"):
                        onnx_export.net_to_onnx(net)
                    continue
                model = onnx_export.net_to_onnx(net)
                for h, w in ((3, 4), (5, 5), (6, 9), (8, 7)):
                    x = np.random.default_rng(h * w).standard_normal((1, 2, h, w)).astype(np.float32)
                    got = run_onnx(model, {"data": x})["pool"]
                    ref = reference(param, net, {"data": x}, ["pool"])["pool"]
                    assert got.shape == ref.shape, (k, s, p, h, w)
                    assert rel_err(got, ref) < TOL, (k, s, p, h, w)
                    cases += 1
    assert cases >= 60


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
def test_lrn_matches_onnxruntime(region):
    # Large values so that the alpha term matters: with x ~ 30, alpha/size * sum x^2 ~ k.
    param = parse(f"""
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 2 dim: 7 dim: 5 dim: 6 }} }} }}
layer {{ name: "norm" type: "LRN" bottom: "data" top: "norm"
  lrn_param {{ local_size: 5 alpha: 0.01 beta: 0.75 k: 2 norm_region: {region} }} }}
""")
    x = np.random.default_rng(7).standard_normal((2, 7, 5, 6)).astype(np.float32) * 30
    errs, model = export_and_compare(param, {"data": x})
    assert errs["norm"] < TOL
    # the normalisation is far from the identity here, so the test would see a wrong alpha / size
    ratio = run_onnx(model, {"data": x})["norm"] / x
    assert ratio.min() < 0.5


SHAPES_NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 6 dim: 4 dim: 5 } } }
layer { name: "slice" type: "Slice" bottom: "data" top: "a" top: "b" top: "c" slice_param { axis: 1 slice_point: 1 slice_point: 4 } }
layer { name: "halves" type: "Slice" bottom: "data" top: "h1" top: "h2" slice_param { axis: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "h1" bottom: "h2" top: "sum" eltwise_param { operation: SUM coeff: 0.5 coeff: -2 } }
layer { name: "prod" type: "Eltwise" bottom: "h1" bottom: "h2" bottom: "sum" top: "prod" eltwise_param { operation: PROD } }
layer { name: "max" type: "Eltwise" bottom: "h1" bottom: "h2" top: "max" eltwise_param { operation: MAX } }
layer { name: "cat" type: "Concat" bottom: "a" bottom: "prod" bottom: "max" bottom: "c" top: "cat" }
layer { name: "sig" type: "Sigmoid" bottom: "cat" top: "sig" }
layer { name: "tanh" type: "TanH" bottom: "cat" top: "tanh" }
layer { name: "leaky" type: "ReLU" bottom: "tanh" top: "tanh" relu_param { negative_slope: 0.1 } }
layer { name: "cat2" type: "Concat" bottom: "sig" bottom: "tanh" top: "cat2" concat_param { axis: 3 } }
layer { name: "conv" type: "Convolution" bottom: "cat2" top: "conv"
  convolution_param { num_output: 6 kernel_size: 3 stride: 2 pad: 1 group: 3 dilation: 2 } }
layer { name: "ip_axis2" type: "InnerProduct" bottom: "conv" top: "ip_axis2" inner_product_param { num_output: 3 axis: 2 } }
layer { name: "ip_t" type: "InnerProduct" bottom: "conv" top: "ip_t" inner_product_param { num_output: 5 transpose: true bias_term: false } }
layer { name: "flat2" type: "Flatten" bottom: "conv" top: "flat2" flatten_param { axis: 2 } }
layer { name: "flat12" type: "Flatten" bottom: "conv" top: "flat12" flatten_param { axis: 1 end_axis: 2 } }
layer { name: "reshape" type: "Reshape" bottom: "conv" top: "reshape" reshape_param { shape { dim: 0 dim: -1 dim: 2 } axis: 1 } }
layer { name: "reshape_all" type: "Reshape" bottom: "flat2" top: "reshape_all" reshape_param { shape { dim: 0 dim: 2 dim: -1 dim: 3 } } }
layer { name: "soft" type: "Softmax" bottom: "ip_axis2" top: "soft" softmax_param { axis: 2 } }
layer { name: "drop" type: "Dropout" bottom: "ip_t" top: "ip_t" }
"""


def test_shape_and_elementwise_layers_match_onnxruntime():
    param = parse(SHAPES_NET)
    x = np.random.default_rng(8).standard_normal((3, 6, 4, 5)).astype(np.float32)
    net = vggtool.Net(param, phase="TEST")
    outputs = net.outputs + ["a", "sum"]
    errs, model = export_and_compare(param, {"data": x}, outputs=outputs, dynamic_spatial=False)
    print(errs)
    assert set(errs) == set(outputs)
    assert max(errs.values()) < TOL
    ops = {n.op_type for n in model.graph.node}
    assert {"Split", "Slice", "Sum", "Mul", "Max", "Concat", "Sigmoid", "Tanh", "LeakyRelu", "Conv",
            "MatMul", "Gemm", "Reshape", "Flatten", "Softmax", "Identity"} <= ops


LOSS_NET = """
layer { name: "data" type: "Input" top: "data" top: "label" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 4 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""


def test_layers_without_onnx_form_are_named():
    param = parse(LOSS_NET)
    net = vggtool.Net(param, phase="TEST")
    with pytest.raises(VggtoolError, match="layer 'loss' of type SoftmaxWithLoss cannot be exported"):
        onnx_export.net_to_onnx(net)
    with pytest.raises(VggtoolError, match="no blob named 'nope'"):
        onnx_export.net_to_onnx(vggtool.Net(parse(SHAPES_NET), phase="TEST"), outputs=["nope"])


def test_export_cli_end_to_end(tmp_path, capsys):
    net = vggtool.Net(netdef("demo", "deploy.prototxt"), phase="TEST")
    randomize(net, seed=9)
    weights = str(tmp_path / "demo.caffemodel")
    net.save(weights)
    out = str(tmp_path / "demo.onnx")
    assert main(["export", "--net", netdef("demo", "deploy.prototxt"), "--weights", weights, "--onnx", out]) == 0
    assert "wrote" in capsys.readouterr().out
    x = np.random.default_rng(10).uniform(-1, 1, (4, 1, 24, 24)).astype(np.float32)
    sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["prob"]
    (prob,) = sess.run(None, {"data": x})
    ref = vggtool.Net(netdef("demo", "deploy.prototxt"), weights, phase="TEST", dtype=np.float64)
    ref.forward(data=x.astype(np.float64))
    assert rel_err(prob, ref.blobs["prob"].data) < TOL
    assert onnx.load(out).opset_import[0].version >= 17

    conv = str(tmp_path / "demo_conv.onnx")
    assert main(["export", "-net", netdef("demo", "deploy.prototxt"), "-weights", weights, "-onnx", conv,
                 "--convolutionalize"]) == 0
    assert "input  data: batchx1xheightxwidth" in capsys.readouterr().out
    (prob,) = ort.InferenceSession(conv, providers=["CPUExecutionProvider"]).run(None, {"data": x[:, :, :, :]})
    assert prob.shape == (4, 10, 1, 1)
    assert rel_err(prob[:, :, 0, 0], ref.blobs["prob"].data) < TOL

    renamed = tmp_path / "renamed.prototxt"  # fc8 renamed: the caffemodel has no weights for it
    renamed.write_text(open(netdef("demo", "deploy.prototxt")).read().replace('"fc8"', '"fc8_new"'))
    assert main(["export", "--net", str(renamed), "--weights", weights, "--onnx", str(tmp_path / "r.onnx")]) == 1
    assert "no weights for layer(s) fc8_new" in capsys.readouterr().err

    loss_net = tmp_path / "loss.prototxt"
    loss_net.write_text(LOSS_NET)
    vggtool.Net(str(loss_net), phase="TEST").save(str(tmp_path / "loss.caffemodel"))
    assert main(["export", "--net", str(loss_net), "--weights", str(tmp_path / "loss.caffemodel"),
                 "--onnx", str(tmp_path / "x.onnx")]) == 1
    assert "cannot be exported to ONNX" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x.onnx")
