"""The deploy prototxts of Table 1 (netdefs/): structure, exact parameter counts, a VGG-16 forward pass."""
import gc
import os
import subprocess
import sys

import numpy as np
import pytest

from vggtool import Net
from vggtool.layers import layer_types
from vggtool.io.prototxt import read_net_param
from vggtool.proto import caffe_pb2

from repo_paths import REPO  # noqa: E402
ROOT = REPO

# Table 1 of the paper, written out independently of tools/make_netdefs.py: conv widths per block,
# "1x1-" marks C's 1x1 convolutions; and the exact parameter counts (DESIGN §2.1).
TABLE1 = {
    "vgg_a": ("64 | 128 | 256,256 | 512,512 | 512,512", 132_863_336),
    "vgg_a_lrn": ("64 | 128 | 256,256 | 512,512 | 512,512", 132_863_336),
    "vgg_b": ("64,64 | 128,128 | 256,256 | 512,512 | 512,512", 133_047_848),
    "vgg_c": ("64,64 | 128,128 | 256,256,1x1-256 | 512,512,1x1-512 | 512,512,1x1-512", 133_638_952),
    "vgg_d": ("64,64 | 128,128 | 256,256,256 | 512,512,512 | 512,512,512", 138_357_544),
    "vgg_e": ("64,64 | 128,128 | 256,256,256,256 | 512,512,512,512 | 512,512,512,512", 143_667_240),
}


def path_of(config):
    return os.path.join(ROOT, "netdefs", config, "deploy.prototxt")


def expected_layers(config):
    """[(name, type, extra)] as Table 1 describes the configuration."""
    spec = TABLE1[config][0]
    out = [("data", "Input", None)]
    for block, convs in enumerate(spec.split(" | "), start=1):
        for i, conv in enumerate(convs.split(","), start=1):
            kernel, width = (1, int(conv[4:])) if conv.startswith("1x1-") else (3, int(conv))
            out.append((f"conv{block}_{i}", "Convolution", (width, kernel, (kernel - 1) // 2)))
            out.append((f"relu{block}_{i}", "ReLU", None))
            if config == "vgg_a_lrn" and block == 1:
                out.append(("norm1", "LRN", None))
        out.append((f"pool{block}", "Pooling", None))
    out += [("fc6", "InnerProduct", 4096), ("relu6", "ReLU", None), ("drop6", "Dropout", None),
            ("fc7", "InnerProduct", 4096), ("relu7", "ReLU", None), ("drop7", "Dropout", None),
            ("fc8", "InnerProduct", 1000), ("prob", "Softmax", None)]
    return out


def without_lrn(param):
    """`param` with the LRN layer removed and its consumer rewired (LRN has no parameters)."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    renames = {}
    for layer in param.layer:
        if layer.type == "LRN":
            renames[layer.top[0]] = layer.bottom[0]
            continue
        new = out.layer.add()
        new.CopyFrom(layer)
        for j, b in enumerate(new.bottom):
            new.bottom[j] = renames.get(b, b)
    return out


@pytest.mark.parametrize("config", list(TABLE1))
def test_prototxt_matches_table1(config):
    param = read_net_param(path_of(config))
    got = [(l.name, l.type) for l in param.layer]
    assert got == [(n, t) for n, t, _ in expected_layers(config)]
    by_name = {l.name: l for l in param.layer}
    assert list(by_name["data"].input_param.shape[0].dim) == [1, 3, 224, 224]
    for name, type_, extra in expected_layers(config):
        layer = by_name[name]
        if type_ == "Convolution":
            cp = layer.convolution_param
            assert (cp.num_output, list(cp.kernel_size), list(cp.pad)) == (extra[0], [extra[1]], [extra[2]])
            assert not len(cp.stride) or list(cp.stride) == [1]
        elif type_ == "Pooling":
            pp = layer.pooling_param
            assert (pp.pool, pp.kernel_size, pp.stride) == (caffe_pb2.PoolingParameter.MAX, 2, 2)
        elif type_ == "InnerProduct":
            assert layer.inner_product_param.num_output == extra
        elif type_ == "Dropout":
            assert layer.dropout_param.dropout_ratio == pytest.approx(0.5)
            assert list(layer.top) == list(layer.bottom)  # in place, as in Caffe's deploy files
        elif type_ == "ReLU":
            assert list(layer.top) == list(layer.bottom)
        elif type_ == "LRN":
            lp = layer.lrn_param
            assert list(layer.bottom) == ["conv1_1"]
            assert (lp.local_size, lp.alpha, lp.beta, lp.k) == (5, pytest.approx(1e-4), pytest.approx(0.75), 2)
    assert list(by_name["prob"].bottom) == ["fc8"]


@pytest.mark.parametrize("config", list(TABLE1))
def test_parameter_count(config):
    param = read_net_param(path_of(config))
    if config == "vgg_a_lrn" and "LRN" not in layer_types():
        param = without_lrn(param)  # LRN layer not in this build; it has no parameters to count
    net = Net(param, phase="TEST")
    try:
        assert net.num_params() == TABLE1[config][1]
        assert sum(b.count for blobs in net.params.values() for b in blobs) == TABLE1[config][1]
        assert net.blobs["prob"].shape == (1, 1000)
        assert net.blobs["pool5"].shape == (1, 512, 7, 7)
        n_weight_layers = sum(1 for l in net.layers if l.type in ("Convolution", "InnerProduct"))
        assert n_weight_layers == {"vgg_a": 11, "vgg_a_lrn": 11, "vgg_b": 13, "vgg_c": 16, "vgg_d": 16,
                                   "vgg_e": 19}[config]
    finally:
        del net
        gc.collect()


def test_generator_output_is_committed(tmp_path):
    """netdefs/ is exactly what tools/make_netdefs.py writes (edit the generator, not the files)."""
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_netdefs.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True)
    for config in TABLE1:
        with open(tmp_path / config / "deploy.prototxt") as a, open(path_of(config)) as b:
            assert a.read() == b.read(), config


@pytest.mark.slow
def test_vgg16_forward_gives_a_probability_vector():
    net = Net(path_of("vgg_d"), phase="TEST", seed=0)
    try:
        rng = np.random.default_rng(0)
        for name, blobs in net.params.items():
            w = blobs[0]
            fan_in = w.count // w.shape[0]
            w.data = rng.standard_normal(w.shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
            blobs[1].data = rng.uniform(-0.1, 0.1, blobs[1].shape)
        x = rng.uniform(-100, 100, (1, 3, 224, 224)).astype(np.float32)
        prob = np.asarray(net.forward(data=x)["prob"])
        assert prob.shape == (1, 1000)
        assert np.all(prob >= 0)
        assert prob.sum() == pytest.approx(1.0, abs=1e-4)
        assert prob.max() > prob.min()  # random weights: not the uniform vector of an all-zero net
    finally:
        del net
        gc.collect()
