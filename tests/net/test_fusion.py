"""vggtool.net.fusion: a convolution that applies the in-place ReLU after it in its own output pass.

max(., 0) of the same values in a different pass is the same float, so a fused net must agree with the
unfused one bit for bit (np.array_equal): outputs, every blob kept, the loss and all parameter gradients,
for each convolution algorithm, with the C kernels and with NumPy, with the memory pool and without.
"""
import numpy as np
import pytest

from vggtool import config
from vggtool.io.prototxt import parse_net_text
from vggtool.layers import kernels
from vggtool.net import Net

W = 'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.1 }'


def conv(name, bottom, n, algo):
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" '
            f'convolution_param {{ num_output: {n} kernel_size: 3 pad: 1 vggtool_algorithm: "{algo}" {W} }} }}')


def relu(name, blob, top=None, slope=0.0):
    extra = f" relu_param {{ negative_slope: {slope} }}" if slope else ""
    return f'layer {{ name: "{name}" type: "ReLU" bottom: "{blob}" top: "{top or blob}"{extra} }}'


# Four algorithms each followed by an in-place ReLU (fused), one ReLU not in place and one leaky ReLU
# (neither fused), then pooling, an inner product and a loss.
NET = "\n".join([
    'layer { name: "data" type: "Input" top: "data" top: "label" '
    'input_param { shape { dim: 2 dim: 3 dim: 12 dim: 12 } shape { dim: 2 } } }',
    conv("c1", "data", 6, "im2col"), relu("r1", "c1"),
    conv("c2", "c1", 8, "winograd4"), relu("r2", "c2"),
    conv("c3", "c2", 8, "shifted"), relu("r3", "c3"),
    conv("c4", "c3", 6, "winograd2"), relu("r4", "c4"),
    conv("c5", "c4", 5, "im2col"), relu("r5", "c5", top="c5r"),
    conv("c6", "c5r", 5, "im2col"), relu("r6", "c6", slope=0.1),
    'layer { name: "pool" type: "Pooling" bottom: "c6" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }',
    f'layer {{ name: "ip" type: "InnerProduct" bottom: "pool" top: "ip" inner_product_param {{ num_output: 3 {W} }} }}',
    'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }',
])


def build(dtype, fuse, pooled, device=None):
    with config.override(fuse_relu=fuse):
        net = Net(parse_net_text(NET, "<fusion>"), phase="TRAIN", dtype=dtype, seed=3,
                  **({} if device is None else {"device": device}))
    if pooled:
        net.share_memory()
    rng = np.random.default_rng(0)
    net.blobs["data"].data[...] = net.xp.asarray(rng.standard_normal(net.blobs["data"].shape))
    net.blobs["label"].data[...] = net.xp.asarray([0, 2])
    return net


@pytest.fixture(params=["C", "NumPy"])
def kernel_code(request, use_settings):
    if request.param == "C" and not kernels.built():
        pytest.skip("the C kernels were not built (no C compiler at install time)")
    use_settings(c_kernels=request.param == "C")


@pytest.mark.parametrize("pooled", [False, True], ids=["plain", "pooled"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_net_equals_unfused_bit_for_bit(kernel_code, dtype, pooled):
    nets = {fuse: build(dtype, fuse, pooled) for fuse in (False, True)}
    assert sorted(nets[True]._fused_relus) == [1, 3, 5, 7]  # c1..c4; not r5 (not in place), not r6 (leaky)
    assert nets[False]._fused_relus == {}
    results = {}
    entered = []  # (ReLU, whether the convolution had rectified its input and made its mask in the same pass)
    for relu in (layer for layer in nets[True].layers if layer.type == "ReLU"):
        def spy(bottom, top, relu=relu, forward=relu.forward):
            mask = getattr(relu, "positive", None)
            made = relu.keep_mask and mask is not None and bool(np.array_equal(mask, bottom[0].data.reshape(-1) > 0))
            entered.append((relu.name, relu.input_rectified, made))
            forward(bottom, top)
        relu.forward = spy
    for fuse, net in nets.items():
        loss = float(net.forward_backward())
        kept = {name: b.data.copy() for name, b in net.blobs.items() if net.data_is_kept(b)}
        grads = [p.blob.diff.copy() for p in net.learnable_params]
        results[fuse] = loss, kept, grads
    assert results[True][0] == results[False][0]
    assert results[True][1].keys() == results[False][1].keys()
    for name in results[False][1]:
        assert np.array_equal(results[True][1][name], results[False][1][name]), name
    for a, b in zip(results[True][2], results[False][2]):
        assert np.array_equal(a, b)
    fused = {name: (rectified, made) for name, rectified, made in entered}
    assert fused["r5"] == fused["r6"] == (False, False)  # not fused: they run their own pass
    for name in ("r1", "r2", "r3", "r4"):  # the pooled net's ReLUs keep masks, which their convolutions made
        assert fused[name] == (True, pooled and nets[True].layer_dict[name].keep_mask), name
    if not pooled:
        assert (results[True][1]["c2"] >= 0).all() and (results[True][1]["c2"] == 0).any()


def test_the_convolution_rectifies_only_when_its_relu_runs_in_the_same_forward():
    net = build(np.float64, True, False)
    c2 = net.layer_names.index("c2")
    net.forward_from_to(0, c2)  # ends at the convolution: its output before the ReLU, as in Caffe
    before = net.blobs["c2"].data.copy()
    assert (before < 0).any()
    net.forward_from_to(c2 + 1, c2 + 1)  # the ReLU alone rectifies it
    assert np.array_equal(net.blobs["c2"].data, np.maximum(before, 0))
    net.forward_from_to(0, c2 + 1)  # both in one forward: fused, the same values
    assert net.layers[c2].rectify_output and np.array_equal(net.blobs["c2"].data, np.maximum(before, 0))
    net.layer_forward(c2)  # the layer-by-layer loop of `vggtool time`: the convolution rectifies ...
    assert (net.blobs["c2"].data >= 0).all() and net.layers[c2 + 1].input_rectified
    net.forward_from_to(0, c2)  # ... and a later forward that ends at it clears the ReLU's note
    assert not net.layers[c2 + 1].input_rectified and (net.blobs["c2"].data < 0).any()


def test_a_relu_run_alone_after_new_input_still_rectifies():
    """pycaffe's forward(start='r2') after writing the convolution's blob: nothing was fused into it."""
    net = build(np.float64, True, False)
    net.forward()
    net.blobs["c2"].data[...] = -1.0
    net.forward(start="r2")
    assert (net.blobs["c2"].data == 0).all()


def test_debug_info_turns_fusion_off():
    """Caffe's per-layer debug lines show the convolution's own (pre-ReLU) output."""
    net = build(np.float64, True, False)
    net.debug_info = True
    net.forward_from_to()
    assert not any(net.layers[i].rectify_output for i in net._fused_relus)


@pytest.mark.gpu
@pytest.mark.parametrize("pooled", [False, True], ids=["plain", "pooled"])
def test_fused_net_on_the_gpu_equals_the_unfused_one_and_the_cpu(pooled):
    """On CuPy the fused output pass is xp.maximum after the bias (im2col, shifted, NumPy-twin Winograd):
    fused and unfused agree bit for bit there too, and with the CPU to float64 rounding."""
    from vggtool.backend import gpu, to_numpy

    results = {}
    for where, fuse in (("gpu", True), ("gpu", False), ("cpu", True)):
        net = build(np.float64, fuse, pooled, device=gpu(0) if where == "gpu" else None)
        loss = float(net.forward_backward())
        results[where, fuse] = loss, [to_numpy(p.blob.diff) for p in net.learnable_params]
    assert results["gpu", True][0] == results["gpu", False][0]
    for a, b, c in zip(results["gpu", True][1], results["gpu", False][1], results["cpu", True][1]):
        assert np.array_equal(a, b)
        np.testing.assert_allclose(a, c, rtol=1e-9, atol=1e-9 * np.abs(c).max())
