"""vggtool.net.pool: a training step with its memory pooled computes exactly what it computes without.

Sharing changes where the bytes live, never the arithmetic or its order, so losses, outputs and parameter
gradients must agree bit for bit (np.array_equal) between a plain Net and the same net after
share_memory(); the planner's intervals and offsets are checked against counts by hand.
"""
import numpy as np
import pytest
from google.protobuf import text_format

from vggtool import config
from vggtool.errors import VggtoolError
from vggtool.io.prototxt import parse_net_text
from vggtool.net import Net
from vggtool.net.memory import format_report, memory_report
from vggtool.net.pool import Interval, live_peak, plan_offsets, poolable_diffs
from vggtool.proto import caffe_pb2
from vggtool.solvers import Solver
from vggtool.solvers.glog import GLog

W = 'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.1 }'

# In-place ReLUs, splits (conv1 and sum are each consumed twice), three convolution algorithms, Eltwise,
# MAX and AVE pooling, a 1x1 convolution with an in-place ReLU, Concat, Flatten (a view: its top shares the bottom's diff), in-place Dropout,
# and two losses, one weighted 0.5 on a split blob.
BRANCHY = f"""
layer {{ name: "data" type: "Input" top: "data" top: "label"
        input_param {{ shape {{ dim: 2 dim: 3 dim: 12 dim: 12 }} shape {{ dim: 2 }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param {{ num_output: 6 kernel_size: 3 pad: 1 vggtool_algorithm: "im2col" {W} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "conv2a" type: "Convolution" bottom: "conv1" top: "conv2a"
        convolution_param {{ num_output: 4 kernel_size: 3 pad: 1 vggtool_algorithm: "winograd2" {W} }} }}
layer {{ name: "conv2b" type: "Convolution" bottom: "conv1" top: "conv2b"
        convolution_param {{ num_output: 4 kernel_size: 3 pad: 1 vggtool_algorithm: "shifted" {W} }} }}
layer {{ name: "sum" type: "Eltwise" bottom: "conv2a" bottom: "conv2b" top: "sum" }}
layer {{ name: "relu2" type: "ReLU" bottom: "sum" top: "sum" }}
layer {{ name: "poolmax" type: "Pooling" bottom: "sum" top: "poolmax" pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "poolave" type: "Pooling" bottom: "sum" top: "poolave" pooling_param {{ pool: AVE kernel_size: 3 stride: 2 }} }}
layer {{ name: "conv3" type: "Convolution" bottom: "poolave" top: "conv3"
        convolution_param {{ num_output: 4 kernel_size: 1 {W} }} }}
layer {{ name: "relu3" type: "ReLU" bottom: "conv3" top: "conv3" }}
layer {{ name: "cat" type: "Concat" bottom: "poolmax" bottom: "conv3" top: "cat" }}
layer {{ name: "flat" type: "Flatten" bottom: "cat" top: "flat" }}
layer {{ name: "ip1" type: "InnerProduct" bottom: "flat" top: "ip1" inner_product_param {{ num_output: 10 {W} }} }}
layer {{ name: "drop" type: "Dropout" bottom: "ip1" top: "ip1" dropout_param {{ dropout_ratio: 0.3 }} }}
layer {{ name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" inner_product_param {{ num_output: 5 {W} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }}
layer {{ name: "aux" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "aux" loss_weight: 0.5 }}
"""


def build(text, share, force_backward=False):
    param = parse_net_text(text, "<pool test>")
    param.force_backward = force_backward
    net = Net(param, phase="TRAIN", seed=5)
    if share:
        assert net.share_memory()
    return net


def feed(net, step):
    rng = np.random.default_rng(step)
    net.blobs["data"].data = rng.standard_normal(net.blobs["data"].shape)
    net.blobs["label"].data = rng.integers(0, 5, net.blobs["label"].shape)


def run_steps(net, steps=3, inputs_diff=False):
    """[(loss, output data, parameter diffs, input diff)] of `steps` solver-like steps."""
    out = []
    for step in range(steps):
        net.iteration = step  # dropout's masks follow it
        feed(net, step)
        net.clear_param_diffs()
        loss = float(net.forward_backward())
        outputs = {name: net.blobs[name].data.copy() for name in net.outputs}
        diffs = [p.blob.diff.copy() for p in net.learnable_params]
        out.append((loss, outputs, diffs, net.blobs["data"].diff.copy() if inputs_diff else None))
    return out


def assert_identical(a, b):
    for (la, oa, da, ia), (lb, ob, db, ib) in zip(a, b):
        assert la == lb
        assert oa.keys() == ob.keys() and all(np.array_equal(oa[k], ob[k]) for k in oa)
        assert len(da) == len(db) and all(np.array_equal(x, y) for x, y in zip(da, db))
        assert (ia is None) == (ib is None) and (ia is None or np.array_equal(ia, ib))


@pytest.mark.parametrize("force_backward", [False, True])
def test_pooled_step_is_bit_identical_to_a_plain_one(force_backward):
    plain, pooled = build(BRANCHY, False, force_backward), build(BRANCHY, True, force_backward)
    assert_identical(run_steps(plain, inputs_diff=force_backward), run_steps(pooled, inputs_diff=force_backward))
    pool = pooled.memory_pool
    # the pool did hold data, diffs, caches and workspace (else this test would compare a net with itself)
    kinds = {p.interval.kind for p in pool.placed}
    assert kinds == {"data", "diff", "cache", "workspace"}
    assert {"conv2a", "conv2b", "poolmax", "conv3"} <= pool.pooled_data
    assert {"sum", "poolmax", "ip2"} <= pool.pooled_diffs
    assert pooled.layer("relu3").keep_mask  # conv3's data goes after cat's forward: a mask instead
    assert not pooled.layer("relu2").keep_mask  # sum's data stays: its split tops view it
    assert pool.arena_bytes < pool.sum_bytes
    # kept out: inputs, outputs and loss tops, the Flatten view (shares cat's diff and data), and the
    # data of the split blobs (their tops view it); the split blobs' diffs are their own and pooled
    assert not {"data", "label", "loss", "aux", "flat", "cat"} & pool.pooled_diffs
    assert {"conv1", "sum"} <= pool.pooled_diffs
    split_tops = {n for n in pooled.blobs if "_split_" in n}
    assert len(split_tops) == 8  # conv1, sum, ip1 and label, each into two
    assert not ({"data", "label", "loss", "aux", "flat", "cat", "conv1", "sum", "ip1"} | split_tops) & pool.pooled_data
    assert plain.memory_pool is None and not plain.layer("relu3").keep_mask


def poisoned_steps(net, steps=3):
    """run_steps, layer by layer, filling every pooled region with NaN bytes right after the last slot of
    its interval: a layer that read a buffer after the plan said it was done would see NaNs."""
    out = []
    n = len(net.layers)
    for step in range(steps):
        net.iteration = step
        feed(net, step)
        net.clear_param_diffs()
        net.plan_memory_if_stale()
        pool = net.memory_pool
        ends = {}
        for p in pool.placed:
            ends.setdefault(p.interval.last, []).append(p)

        def poison(slot):
            for p in ends.get(slot, []):
                pool.arena[p.offset:p.offset + p.interval.nbytes] = 0xFF

        loss = 0.0
        for i in range(n):
            net.layer_forward(i)
            loss = loss + net._layer_loss(i)
            poison(i)
        for i in range(n - 1, -1, -1):
            if net.layer_need_backward[i]:
                net.layer_backward(i)
            poison(2 * n - 1 - i)
        outputs = {name: net.blobs[name].data.copy() for name in net.outputs}
        out.append((float(loss), outputs, [p.blob.diff.copy() for p in net.learnable_params], None))
    return out


def test_no_layer_reads_a_pooled_buffer_after_its_interval():
    assert_identical(run_steps(build(BRANCHY, False)), poisoned_steps(build(BRANCHY, True)))


def test_a_split_top_whose_consumer_does_not_propagate_keeps_its_zero_diff():
    # ip2 does not propagate down to its split top: the split's backward reads that top's diff, never
    # written in the step; Caffe's diff is zero there, a pooled one would hold another blob's gradient.
    text = f"""
    layer {{ name: "data" type: "Input" top: "data" top: "label"
            input_param {{ shape {{ dim: 4 dim: 6 }} shape {{ dim: 4 }} }} }}
    layer {{ name: "ip0" type: "InnerProduct" bottom: "data" top: "h" inner_product_param {{ num_output: 8 {W} }} }}
    layer {{ name: "ip1" type: "InnerProduct" bottom: "h" top: "a" inner_product_param {{ num_output: 5 {W} }} }}
    layer {{ name: "ip2" type: "InnerProduct" bottom: "h" top: "b" propagate_down: false
            inner_product_param {{ num_output: 5 {W} }} }}
    layer {{ name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "s" }}
    layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "label" top: "loss" }}
    """
    plain, pooled = build(text, False), build(text, True)
    split_tops = [n for n in pooled.blobs if n.startswith("h_ip0_0_split_")]
    assert len(split_tops) == 2
    assert split_tops[0] in pooled.memory_pool.pooled_diffs  # ip1 writes it
    assert split_tops[1] not in pooled.memory_pool.pooled_diffs  # nobody writes it: Caffe's zeros
    assert_identical(run_steps(plain), run_steps(pooled))


CHAIN = f"""
layer {{ name: "data" type: "Input" top: "data" top: "label"
        input_param {{ shape {{ dim: 2 dim: 3 dim: 8 dim: 8 }} shape {{ dim: 2 }} }} }}
layer {{ name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1" inner_product_param {{ num_output: 64 {W} }} }}
layer {{ name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" inner_product_param {{ num_output: 32 {W} }} }}
layer {{ name: "ip3" type: "InnerProduct" bottom: "ip2" top: "ip3" inner_product_param {{ num_output: 16 {W} }} }}
layer {{ name: "ip4" type: "InnerProduct" bottom: "ip3" top: "ip4" inner_product_param {{ num_output: 8 {W} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip4" bottom: "label" top: "loss" }}
"""


def test_planned_diff_bytes_are_the_largest_live_pair_not_the_sum():
    net = build(CHAIN, False)
    # 6 layers, 12 slots; layer i's backward is slot 11 - i. A diff lives from its consumer's backward
    # to its producer's: ip4's from loss (slot 6) to ip4 (slot 7), and so on down the chain.
    spans = poolable_diffs(net)
    assert spans == {"ip4": (6, 7), "ip3": (7, 8), "ip2": (8, 9), "ip1": (9, 10)}  # not data, label, loss
    sizes = {"ip1": 2 * 64 * 4, "ip2": 2 * 32 * 4, "ip3": 2 * 16 * 4, "ip4": 2 * 8 * 4}  # 512 256 128 64
    intervals = [Interval("diff", n, sizes[n], *spans[n]) for n in spans]
    placed, total = plan_offsets(intervals)
    assert sum(sizes.values()) == 960
    assert live_peak(intervals) == total == 512 + 256  # slot 9: ip2's and ip1's diffs
    offsets = {p.interval.key: p.offset for p in placed}
    assert offsets == {"ip1": 0, "ip2": 512, "ip3": 0, "ip4": 128}  # ip3 and ip4 reuse ip1's bytes


def test_plan_offsets_never_overlaps_buffers_live_at_once():
    rng = np.random.default_rng(0)
    intervals = []
    for k in range(60):
        first = int(rng.integers(0, 30))
        intervals.append(Interval("diff", k, int(rng.integers(1, 5000)), first, first + int(rng.integers(0, 8))))
    placed, total = plan_offsets(intervals)
    for i, p in enumerate(placed):
        for q in placed[i + 1:]:
            a, b = p.interval, q.interval
            if a.first <= b.last and b.first <= a.last:
                assert p.offset + a.nbytes <= q.offset or q.offset + b.nbytes <= p.offset
    assert live_peak(intervals) <= total <= sum(-(-iv.nbytes // 64) * 64 for iv in intervals)


def test_the_workspace_is_recorded_on_the_first_step_then_planned():
    net = build(BRANCHY, True)
    feed(net, 0)
    net.forward_backward()
    ws = net._workspace
    assert ws.recorded and ws.needs_plan  # the first step's requests, served by buffers of their own
    before = len(net.memory_pool.placed)
    net.forward_backward()
    assert not ws.needs_plan and not ws._buffers and len(net.memory_pool.placed) > before
    assert {p.interval.kind for p in net.memory_pool.placed} >= {"workspace"}


def test_a_pooled_net_refuses_to_hand_out_data_or_diffs_it_did_not_keep():
    net = build(BRANCHY, True)
    feed(net, 0)
    with pytest.raises(VggtoolError, match="blob 'conv3' is not kept.*share_memory"):
        net.forward(blobs=["conv3"])
    out = net.forward()  # outputs are kept
    assert set(out) == {"loss", "aux"}
    with pytest.raises(VggtoolError, match="diff of blob 'ip2' is not kept"):
        net.backward(diffs=["ip2"])
    plain = build(BRANCHY, False)
    feed(plain, 0)
    assert plain.forward(blobs=["conv3"])["conv3"].shape == (2, 4, 6, 6)


def test_backward_without_its_forward_is_an_error_once_the_input_is_gone():
    net = build(BRANCHY, True)
    feed(net, 0)
    net.forward_backward()
    with pytest.raises(VggtoolError, match="blob 'conv3' is not kept after the pass \\(a new forward recomputes"):
        net.backward()  # the caches were released by the first backward; conv3's data is gone


def test_the_report_shows_the_pool_and_where_each_buffer_lives():
    net = build(BRANCHY, True)
    for step in range(2):
        feed(net, step)
        net.forward_backward()
    report = memory_report(net)
    pool_rows = [r for r in report.rows if r.kind == "pool"]
    assert len(pool_rows) == 1 and report.total("pool") >= net.memory_pool.arena_bytes
    rows = {r.name: r for r in report.rows if r.kind == "blob"}
    assert rows["conv3"].data_bytes == 0 and rows["conv3"].diff_bytes == 0
    assert "data pool: " in rows["conv3"].shared_with and "diff pool: " in rows["conv3"].shared_with
    assert rows["loss"].diff_bytes == 4  # a loss weight lives in its own diff
    assert report.total("cache") == 0 and report.total("workspace") == 0  # all in the pool
    assert report.pool.arena_bytes == net.memory_pool.arena_bytes
    assert report.pool.live_peak_bytes <= report.pool.arena_bytes < report.pool.sum_bytes
    assert "Pool (data, diffs, caches and workspace" in format_report(report)


def test_who_shares_by_default_and_the_setting():
    assert build(BRANCHY, False).memory_pool is None  # a plain Net (pycaffe's caffe.Net) keeps everything
    with config.override(share_memory="on"):
        assert Net(parse_net_text(BRANCHY, "<t>"), phase="TRAIN").memory_pool is not None
    with config.override(share_memory="off"):
        net = Net(parse_net_text(BRANCHY, "<t>"), phase="TRAIN")
        assert not net.share_memory() and net.memory_pool is None
    assert config.Settings(share_memory="1").share_memory == "on"
    assert config.Settings.from_environ({"VGGTOOL_SHARE_MEMORY": "off"}).share_memory == "off"
    with pytest.raises(VggtoolError, match="VGGTOOL_SHARE_MEMORY='sometimes'"):
        config.Settings.from_environ({"VGGTOOL_SHARE_MEMORY": "sometimes"})


def make_solver():
    param = text_format.Merge('base_lr: 0.05 momentum: 0.9 weight_decay: 0.001 lr_policy: "fixed" '
                              'max_iter: 10 random_seed: 2 snapshot_after_train: false',
                              caffe_pb2.SolverParameter())
    param.net_param.CopyFrom(parse_net_text(BRANCHY, "<pool test>"))
    return Solver(param, log=GLog(stream=False))


def train(solver, iters=3):
    for step in range(iters):
        feed(solver.net, step)
        solver.step(1)
    return [p.blob.data.copy() for p in solver.net.learnable_params]


def test_a_solver_shares_its_train_net_and_trains_to_the_same_weights():
    pooled = make_solver()
    assert pooled.net.memory_pool is not None
    with config.override(share_memory="off"):
        plain = make_solver()
    assert plain.net.memory_pool is None
    a, b = train(plain), train(pooled)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_release_data_off_keeps_every_blobs_data_readable():
    with config.override(release_data=False):
        net = build(BRANCHY, True)
    assert_identical(run_steps(build(BRANCHY, False)), run_steps(net))
    assert not net.memory_pool.pooled_data and net.memory_pool.pooled_diffs
    assert not net.layer("relu3").keep_mask
    feed(net, 0)
    assert net.forward(blobs=["conv3"])["conv3"].shape == (2, 4, 6, 6)


def debug_lines(net, steps=2):
    lines = []
    net.log = GLog(stream=False)
    net.log.line = lambda where, message, severity="I": lines.append((where, message.strip()))
    net.debug_info = True
    for step in range(steps):
        net.iteration = step
        feed(net, step)
        net.clear_param_diffs()
        net.forward_backward()
    return lines


def test_debug_info_prints_each_diff_while_it_is_valid():
    plain_lines, pooled_lines = debug_lines(build(BRANCHY, False)), debug_lines(build(BRANCHY, True))
    assert plain_lines == pooled_lines  # the pooled diffs are read right after the layer writing them
    backward = [m for _, m in pooled_lines if m.startswith("[Backward] Layer")]
    assert "[Backward] Layer poolmax, bottom blob sum_relu2_0_split_0 diff: " in "\n".join(backward)
    assert pooled_lines[-1][1].startswith("[Backward] All net params (data, diff): L1 norm = (")
    # the values are those of the plain net's diffs after its backward (mean absolute value, 6 digits)
    plain = build(BRANCHY, False)
    debug_lines(plain)
    for layer, blob in (("ip2", "ip1_drop_0_split_0"), ("conv3", "poolave"), ("poolmax", "sum_relu2_0_split_0")):
        diff = plain.blobs[blob].diff
        value = float(np.abs(diff).sum(dtype=np.float64)) / diff.size
        assert f"[Backward] Layer {layer}, bottom blob {blob} diff: {value:.6g}" in backward
    assert any(m.startswith("[Forward] Layer conv1, top blob conv1 data: ") for _, m in pooled_lines)
    assert any(m.startswith("[Forward] Layer conv1, param blob 0 data: ") for _, m in pooled_lines)


def test_a_solver_prints_debug_info_on_displayed_iterations_only():
    solver = make_solver()
    solver.param.debug_info = True
    solver.param.display = 2
    lines = []
    solver.log.line = lambda where, message, severity="I": lines.append(message)
    solver.net.log = solver.log
    train(solver, iters=3)  # iterations 0, 1, 2: 0 and 2 display
    assert sum(m.strip().startswith("[Backward] All net params") for m in lines) == 2


def test_caches_left_out_by_the_budget_keep_their_inputs():
    # conv_cache_mb bounds what the caches add to the pool's peak (0 here: some are left out);
    # a convolution without one reads its input in backward, which the pool keeps alive until then
    with config.override(conv_cache_mb=0):
        pooled = build(BRANCHY, True)
    with config.override(conv_cache_mb=0):
        poisoned = build(BRANCHY, True)
    assert_identical(run_steps(build(BRANCHY, False)), run_steps(pooled))
    assert_identical(run_steps(build(BRANCHY, False)), poisoned_steps(poisoned))
    caches = {p.interval.key for p in pooled.memory_pool.placed if p.interval.kind == "cache"}
    default = build(BRANCHY, True)
    run_steps(default, 2)
    assert {p.interval.key for p in default.memory_pool.placed if p.interval.kind == "cache"} == \
        {"conv1", "conv2a", "conv3"}  # conv2b runs the shifted GEMMs: no cache
    # a cache that fits in bytes the step leaves free anyway adds nothing to the peak: kept even at 0
    assert caches < {"conv1", "conv2a", "conv3"} and "conv1" not in caches


CONVS = f"""
layer {{ name: "data" type: "Input" top: "data" top: "label"
        input_param {{ shape {{ dim: 2 dim: 3 dim: 10 dim: 10 }} shape {{ dim: 2 }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param {{ num_output: 8 kernel_size: 3 pad: 1 vggtool_algorithm: "im2col" {W} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
        convolution_param {{ num_output: 8 kernel_size: 3 pad: 1 vggtool_algorithm: "winograd2" {W} }} }}
layer {{ name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }}
layer {{ name: "ip" type: "InnerProduct" bottom: "conv2" top: "ip" inner_product_param {{ num_output: 5 {W} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
"""


def test_a_convolution_without_its_cache_reads_the_input_the_pool_kept_for_it():
    with config.override(conv_cache_mb=0):
        pooled = build(CONVS, True)
    assert_identical(run_steps(build(CONVS, False)), run_steps(pooled))
    kept = {p.interval.key for p in pooled.memory_pool.placed if p.interval.kind == "cache"}
    assert "conv2" not in kept and "conv1" in pooled.memory_pool.pooled_data  # live until conv2's backward


def test_reading_a_released_blob_is_an_error_not_stale_bytes():
    """In a pooled net an intermediate blob's bytes hold other buffers after its last reader: reading its
    data or diff after the step raises (naming the blob and the setting) instead of returning them; what
    is kept (inputs, parameters, losses) reads as usual, and a new forward makes the data readable again."""
    net = build(BRANCHY, True)
    feed(net, 0)
    net.forward_backward()
    pool = net.memory_pool
    assert "conv3" in pool.pooled_data and "conv3" in pool.pooled_diffs
    with pytest.raises(VggtoolError, match="the data of blob 'conv3' is not kept after the pass.*share_memory=off"):
        net.blobs["conv3"].data
    with pytest.raises(VggtoolError, match="the diff of blob 'conv3' is not kept"):
        net.blobs["conv3"].diff
    net.blobs["data"].data, net.blobs["loss"].data, net.params["conv3"][0].data, net.params["conv3"][0].diff
    # between forward and backward: data a backward still reads is valid, data only the forward read is not
    feed(net, 1)
    net.forward_from_to()
    plain = build(BRANCHY, False)
    feed(plain, 1)
    plain.forward_from_to()
    np.testing.assert_array_equal(net.blobs["conv3"].data, plain.blobs["conv3"].data)
    assert pool.forward_only_data  # e.g. poolave: conv3's cache holds what its backward needs
    for name in pool.forward_only_data:
        with pytest.raises(VggtoolError, match=f"blob '{name}' is not kept"):
            net.blobs[name].data
    net.backward_from_to()  # and the backward still runs (layers look at released inputs' shapes)
    assert not build(BRANCHY, False).memory_pool  # an unpooled net never releases anything
