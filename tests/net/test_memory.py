"""vggtool.net.memory: the per-blob and per-cache report against byte counts worked out by hand."""
import io

import numpy as np

from vggtool import Net
from vggtool.io.prototxt import parse_net_text
from vggtool.net.memory import caffe_data_bytes, format_report, memory_report
from vggtool.solvers.glog import GLog

# conv1 (im2col, so its cache size is known) -> in-place ReLU -> split into two InnerProducts that share
# their weights and bias by name -> Eltwise sum -> loss. float32 throughout: 4 bytes an element.
NET = """
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } shape { dim: 2 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 vggtool_algorithm: "im2col"
                            weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "ipa" type: "InnerProduct" bottom: "conv1" top: "ipa" param { name: "w" } param { name: "b" }
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "ipb" type: "InnerProduct" bottom: "conv1" top: "ipb" param { name: "w" } param { name: "b" }
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "sum" type: "Eltwise" bottom: "ipa" bottom: "ipb" top: "sum" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "sum" bottom: "label" top: "loss" }
"""
SPLIT = "conv1_relu1_0_split_"  # Caffe's split blob names: blob, writer layer, top index, split index

# (data bytes, diff bytes after one forward+backward, shared with) of every blob, by hand
BLOBS = {
    "data": (2 * 3 * 8 * 8 * 4, None, None),  # no layer propagates down to the input: no diff
    "label": (2 * 4, None, None),
    "conv1": (2 * 4 * 8 * 8 * 4, 2 * 4 * 8 * 8 * 4, "in place: relu1"),  # one blob, counted once
    SPLIT + "0": (0, 2048, "data of conv1"),  # the split tops view conv1's data, each has its own diff
    SPLIT + "1": (0, 2048, "data of conv1"),
    "ipa": (2 * 3 * 4, 2 * 3 * 4, None),
    "ipb": (2 * 3 * 4, 2 * 3 * 4, None),
    "sum": (2 * 3 * 4, 2 * 3 * 4, None),
    "loss": (4, 4, None),
}
PARAMS = {
    "conv1 param 0": (4 * 3 * 3 * 3 * 4, 432, None),
    "conv1 param 1": (4 * 4, 16, None),
    "ipa param 0": (3 * 256 * 4, 3072, None),
    "ipa param 1": (3 * 4, 12, None),
    "ipb param 0": (0, 0, "ipa param 0"),  # shared by name: the owner's storage, counted there
    "ipb param 1": (0, 0, "ipa param 1"),
}
CONV1_CACHE = 2 * (3 * 3 * 3) * (8 * 8) * 4  # im2col columns: C*kh*kw x Ho*Wo per image, 2 images
# every top's data, relu1's in-place top and the split tops again (Caffe's count)
CAFFE_DATA = 1536 + 8 + 2048 + 2048 + 2 * 2048 + 3 * 24 + 4


def build(phase="TRAIN", log=None):
    net = Net(parse_net_text(NET, "<memory test>"), phase=phase, seed=0, log=log)
    net.blobs["data"].data = np.random.default_rng(0).standard_normal((2, 3, 8, 8))
    net.blobs["label"].data = [0, 2]
    return net


def rows_by_name(report, kind):
    return {r.name: (r.data_bytes, r.diff_bytes, r.shared_with) for r in report.rows if r.kind == kind}


def test_report_after_a_training_step_matches_the_hand_count():
    net = build()
    net.forward_backward()
    report = memory_report(net)
    assert rows_by_name(report, "blob") == BLOBS
    assert rows_by_name(report, "param") == PARAMS
    caches = [r for r in report.rows if r.kind == "cache"]
    assert [(r.name, r.data_bytes, r.shape) for r in caches] == [("conv1", CONV1_CACHE, "3456 (im2col)")]
    assert report.total("blob", "data") == sum(d for d, _, _ in BLOBS.values()) == 3668
    assert report.total("blob", "diff") == sum(g or 0 for _, g, _ in BLOBS.values()) == 6220
    assert report.total("param", "data") == report.total("param", "diff") == 3532
    assert report.total("cache") == CONV1_CACHE
    assert report.total() == sum(r.data_bytes + (r.diff_bytes or 0) for r in report.rows)
    assert report.caffe_data_bytes == CAFFE_DATA == 9812


def test_a_fresh_net_has_no_diffs_but_the_loss_weights_and_no_cache():
    report = memory_report(build())
    diffs = {r.name: r.diff_bytes for r in report.rows if r.diff_bytes is not None}
    assert diffs == {"loss": 4}  # the loss weight is written into the loss top's diff at set-up
    assert report.total("cache") == 0 and report.total("blob", "data") == 3668


def test_a_test_net_keeps_no_convolution_cache():
    net = build("TEST")
    net.forward()
    report = memory_report(net)
    assert not [r for r in report.rows if r.kind == "cache"]
    assert report.total("blob", "diff") == 4 and report.total("param", "diff") == 0


def test_caffes_memory_line_is_the_reports_caffe_figure():
    stream = io.StringIO()
    log = GLog(stream=False)
    log.line = lambda where, message, severity="I": stream.write(f"{where}] {message}\n")
    net = build(log=log)
    logged = [int(l.rsplit(" ", 1)[1]) for l in stream.getvalue().splitlines() if "Memory required for data" in l]
    assert logged[-1] == caffe_data_bytes(net) == CAFFE_DATA


def test_layer_arrays_and_workspace_are_counted_once():
    net = build()
    net.forward_backward()
    report = memory_report(net)
    layer_rows = {r.name for r in report.rows if r.kind == "layer"}
    assert "loss.prob" in layer_rows  # softmax probabilities kept for backward
    assert report.total("workspace") > 0  # im2col's padded input and chunk buffers
    assert len({(r.kind, r.name) for r in report.rows}) == len(report.rows)


def test_format_has_one_line_per_row_and_the_totals():
    net = build()
    net.forward_backward()
    report = memory_report(net)
    lines = format_report(report).splitlines()
    assert lines[0].split() == ["kind", "name", "shape", "data", "bytes", "diff", "bytes", "shared", "with"]
    conv1 = next(l for l in lines if l.startswith("blob      conv1 "))
    assert conv1.split() == ["blob", "conv1", "2", "4", "8", "8", "2,048", "2,048", "in", "place:", "relu1"]
    assert next(l for l in lines if l.startswith("blob      data ")).split()[-1] == "-"  # no diff allocated
    total = next(l for l in lines if l.startswith("total     all "))
    assert total.split()[2] == f"{report.total():,}"
    assert lines[-1].endswith(f"{CAFFE_DATA:,} (9.6 KiB)")


def test_long_names_widen_the_columns_so_the_bytes_line_up():
    text = NET.replace('"conv1"', '"a_convolution_layer_with_a_rather_long_name"')
    net = Net(parse_net_text(text, "<long>"), phase="TRAIN", dtype=np.float32, seed=0)
    net.forward_backward()
    lines = format_report(memory_report(net)).splitlines()
    assert any("a_convolution_layer_with_a_rather_long_name" in l for l in lines)
    end = lines[0].index("data bytes") + len("data bytes")  # the data column is right-aligned to here
    rows = [l for l in lines[1:] if not l.startswith(("Pool (", "Caffe's"))]
    for line in rows:
        assert line[end - 1].isdigit() and (line[end] == " " or len(line) == end), line


# A shifted and an im2col convolution, both propagating down: each forward writes a channel-major GEMM
# output and each backward a channel-major dY into the net's workspace.
TWO_CONVS = """
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 16 dim: 8 dim: 8 } shape { dim: 2 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 vggtool_algorithm: "shifted"
                            weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 vggtool_algorithm: "im2col"
                            weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "conv2" bottom: "label" top: "loss" }
"""


def test_convolution_output_and_dy_share_one_workspace_buffer():
    param = parse_net_text(TWO_CONVS, "<two convs>")
    param.force_backward = True  # conv1 also computes the gradient of its input
    net = Net(param, phase="TRAIN", seed=0)
    net.blobs["data"].data = np.random.default_rng(0).standard_normal((2, 16, 8, 8))
    net.blobs["label"].data = np.random.default_rng(1).integers(0, 4, (2, 8, 8))
    net.forward_backward()
    slots = {r.name.split(" ")[0]: r.data_bytes for r in memory_report(net).rows if r.kind == "workspace"}
    assert "conv_out" not in slots and "conv_dy" not in slots
    # the largest user: conv1's dX correlation (shifted), 16 channels on the padded 10x10 grid, 2 images;
    # as two slots the forward outputs' buffer held that and the dY buffer 8 x 2 x 10 x 10 more
    assert slots["conv_gemm"] == 16 * 2 * 10 * 10 * 4
