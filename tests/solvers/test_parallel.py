"""Synchronous data parallel: 1, 2, 4 CPU replicas and 2 MPI ranks train to the same weights as one device;
a failing replica or rank stops the whole run with a message naming it."""
import json
import os
import shutil
import subprocess
import types
import sys

import cv2
import numpy as np
import pytest

from data_prep.cli import main as data_prep
from numerics import F32_EPS, assert_close_to_scale
from vggtool import Net, config
from vggtool.io import prototxt
from vggtool.backend import CPU
from vggtool.cli import main as vggtool_main
from vggtool.errors import VggtoolError
from vggtool.net.pool import SharedArena
from vggtool.solvers.parallel import ParallelSolver, ReplicaFailed
from vggtool.proto import caffe_pb2
from vggtool.solvers import Solver
from vggtool.solvers.glog import GLog

from repo_paths import REPO  # noqa: E402
ROOT = REPO
BATCH = 8
AUGMENT = "crop_size: 8 mirror: true smallest_side_min: 10 smallest_side_max: 14"

# Data (scale jitter + random crop + mirror) -> conv -> relu -> pool -> fc -> relu -> dropout -> fc -> loss
NET = """
name: "tiny"
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TRAIN }}
  data_param {{ source: "{db}" batch_size: {batch} backend: LMDB }}
  transform_param {{ {transform} scale: 0.02 mean_value: 128 }} }}
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TEST }}
  data_param {{ source: "{db}" batch_size: {batch} backend: LMDB }}
  transform_param {{ crop_size: 8 scale: 0.02 mean_value: 128 }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param {{ num_output: 4 kernel_size: 3 pad: 1 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "conv" }}
layer {{ name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "fc1" type: "InnerProduct" bottom: "pool" top: "fc1"
  inner_product_param {{ num_output: 16 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "fc1" top: "fc1" }}
layer {{ name: "drop" type: "Dropout" bottom: "fc1" top: "fc1" dropout_param {{ dropout_ratio: 0.5 }} }}
layer {{ name: "fc2" type: "InnerProduct" bottom: "fc1" top: "fc2"
  inner_product_param {{ num_output: 3 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc2" bottom: "label" top: "loss" {loss} }}
"""

SOLVER = ('base_lr: 0.05 momentum: 0.9 weight_decay: 0.001 lr_policy: "fixed" max_iter: {iters} '
          'random_seed: 5 display: 1 iter_size: {iter_size} snapshot: 0 snapshot_prefix: "{prefix}"')


def write_images(folder, sizes):
    """PNG files of the given (h, w) sizes and a list file; returns the list path."""
    rng = np.random.default_rng(11)
    os.makedirs(folder, exist_ok=True)
    lines = []
    for i, (h, w) in enumerate(sizes):
        cv2.imwrite(os.path.join(folder, f"{i}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        lines.append(f"{i}.png {i % 3}\n")
    with open(os.path.join(folder, "list.txt"), "w") as f:
        f.writelines(lines)
    return os.path.join(folder, "list.txt")


def make_db(tmp, name, sizes):
    listing = write_images(str(tmp / f"{name}_png"), sizes)
    db = str(tmp / name)
    assert data_prep(["convert_imageset", os.path.dirname(listing), listing, db]) == 0
    return db


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return make_db(tmp_path_factory.mktemp("par"), "db", [(12, 12)] * 16)


def write_solver(folder, db, iters=4, iter_size=1, batch=BATCH, transform=AUGMENT, test="",
                 loss=""):
    net = prototxt.parse_net_text(NET.format(db=db, batch=batch, transform=transform, loss=loss))
    param = prototxt.parse_text(SOLVER.format(iters=iters, iter_size=iter_size, prefix=folder / "snap") + test,
                               caffe_pb2.SolverParameter())
    param.net_param.CopyFrom(net)
    path = folder / "solver.prototxt"
    prototxt.write_text_proto(str(path), param)
    return str(path)


def weights(net):
    return [lp.blob.data.copy() for lp in net.learnable_params]


F64_EPS = float(np.finfo(np.float64).eps)
# The longest chain of sums into one weight gradient: the batch times the fan-ins of conv (3x3x3), fc1
# (4x4x4) and fc2 (16); the k_terms of comparing weights trained on different replica counts.
TRAIN_TERMS = BATCH * (27 + 64 + 16)


def train(solver_path, devices=1, threads=None, iters=None, dtype=np.float32, share=True, lanes=None,
          merge=True):
    if devices == 1:
        s = Solver(solver_path, log=GLog(stream=False), dtype=dtype)
    else:
        s = ParallelSolver(solver_path, devices=[CPU] * devices, threads=threads, log=GLog(stream=False),
                           dtype=dtype, share_cpu_weights=share, lanes=lanes, merge_lane_replicas=merge)
    s.step(s.param.max_iter if iters is None else iters)
    return s


def assert_same(a, b, eps=F32_EPS):
    """The same weights up to the rounding of sums taken in another order (another split of the batch)."""
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        assert_close_to_scale(x, y, TRAIN_TERMS, eps=eps, err_msg=f"learnable param {i}")


@pytest.mark.parametrize("iter_size", [1, 2])
def test_replicas_train_like_one_device(db, tmp_path, iter_size):
    """In float64, so that the comparison can be tight: the rule, not one CPU's rounding, is tested."""
    path = write_solver(tmp_path, db, iters=4, iter_size=iter_size)
    one = train(path, dtype=np.float64)
    start = Net(prototxt.read_solver_param(path).net_param, phase="TRAIN", seed=5)
    moved = max(float(np.abs(w - w0).max()) for w, w0 in zip(weights(one.net), weights(start)))
    assert moved > 1e-3  # training did change the weights
    plans = ((2, True, None, True), (4, False, None, True), (4, None, 2, True), (4, None, 2, False))
    for n, threads, lanes, merge in plans:
        many = train(path, n, threads, dtype=np.float64, lanes=lanes, merge=merge)
        # a lane of k replicas runs as one net over their k shares, unless merging is turned off
        lane = (n if threads is False else n // lanes if lanes else 1) if merge else 1
        assert many.replica_count == n and len(many.replicas) == n // lane
        assert many.net_replicas == [list(range(i, i + lane)) for i in range(0, n, lane)]
        assert many.offsets == [i * BATCH // n for i in range(0, n, lane)]
        assert_same(weights(many.net), weights(one.net), eps=F64_EPS)
        for rep in many.replicas[1:]:  # every replica reads replica 0's weight arrays
            for a, b in zip(many.net.learnable_params, rep.learnable_params):
                assert np.shares_memory(a.blob.data, b.blob.data)
        assert many.smoothed_loss == pytest.approx(one.smoothed_loss, rel=1e-5)


@pytest.mark.parametrize("norm, factor", [("VALID", 1), ("BATCH_SIZE", 1), ("FULL", 1), ("NONE", 1 / 4)])
def test_averaged_gradient_is_the_whole_batch_gradient(db, tmp_path, norm, factor):
    """The rule: mean over replicas of the replicas' gradients. Exact for losses normalised per share
    (equal shares); with normalization NONE (a sum) it is 1/N of the single-device gradient."""
    path = write_solver(tmp_path, db, loss=f"loss_param {{ normalization: {norm} }}")
    # float64 and a tolerance relative to the largest entry: in float32 the small entries of these
    # gradients are differences of larger terms, and their rounding depends on the CPU's GEMM kernel
    one = Solver(path, log=GLog(stream=False), dtype=np.float64)
    four = ParallelSolver(path, devices=[CPU] * 4, log=GLog(stream=False), dtype=np.float64)
    one.compute_gradients()
    four.compute_gradients()
    for i, (a, b) in enumerate(zip(one.net.learnable_params, four.net.learnable_params)):
        assert np.abs(a.blob.diff).max() > 1e-4
        assert_close_to_scale(b.blob.diff, factor * a.blob.diff, TRAIN_TERMS, eps=F64_EPS, err_msg=f"param {i}")


@pytest.mark.parametrize("lanes, summed", [(1, []), (2, [2]), (4, [1, 2, 3])])
def test_replicas_of_a_lane_accumulate_into_one_set_of_diffs(db, tmp_path, lanes, summed):
    """CPU replicas run in turn within a lane and add their gradients into its first replica's diffs (no
    copy, no sum); only the lanes' first replicas are summed into replica 0. The gradient is the whole
    batch's for every plan (float64: the rule is tested, not one CPU's rounding). Run one by one: where a
    lane's replicas run as one pass there is nothing to accumulate."""
    path = write_solver(tmp_path, db)
    one = Solver(path, log=GLog(stream=False), dtype=np.float64)
    four = ParallelSolver(path, devices=[CPU] * 4, lanes=lanes, log=GLog(stream=False), dtype=np.float64,
                          merge_lane_replicas=False)
    assert len(four.lanes) == lanes and four.exchange.summed == summed
    owners = four.exchange.diff_owner
    for r, rep in enumerate(four.replicas):
        for a, b in zip(four.replicas[owners[r]].learnable_params, rep.learnable_params):
            assert np.shares_memory(a.blob.diff, b.blob.diff)
        for other in summed + [0]:
            if other != owners[r]:
                assert not np.shares_memory(four.replicas[other].learnable_params[0].blob.diff,
                                            rep.learnable_params[0].blob.diff)
    for _ in range(2):  # the second batch: the diffs were cleared once per lane, not accumulated on
        one.compute_gradients()
        four.compute_gradients()
    for i, (a, b) in enumerate(zip(one.net.learnable_params, four.net.learnable_params)):
        assert_close_to_scale(b.blob.diff, a.blob.diff, TRAIN_TERMS, eps=F64_EPS, err_msg=f"param {i}")


def test_the_replicas_of_a_lane_share_one_memory_arena(db, tmp_path):
    """Replicas run one after another within a lane, so they plan their pooled buffers into one arena
    (vggtool.net.pool.SharedArena); lanes that run at the same time keep arenas of their own. The
    gradients stay the whole batch's, bit for bit the same as with an arena per replica."""
    path = write_solver(tmp_path, db)
    four = ParallelSolver(path, devices=[CPU] * 4, lanes=2, log=GLog(stream=False), dtype=np.float64,
                          merge_lane_replicas=False)
    for _ in range(3):  # the first step records the workspace; the second re-plans with it
        four.compute_gradients()
    pools = [rep.memory_pool for rep in four.replicas]
    assert all(p is not None for p in pools)
    assert pools[0].arena is pools[1].arena and pools[2].arena is pools[3].arena
    assert not np.shares_memory(pools[0].arena, pools[2].arena)
    assert pools[0].arena.size == max(p.arena_bytes for p in pools[:2])
    own = ParallelSolver(path, devices=[CPU] * 4, lanes=2, log=GLog(stream=False), dtype=np.float64,
                         merge_lane_replicas=False)
    for rep in own.replicas:
        rep.memory_pool.arena_source = SharedArena(CPU)  # an arena per replica, as before lanes shared them
    for _ in range(3):
        own.compute_gradients()
    assert not np.shares_memory(own.replicas[0].memory_pool.arena, own.replicas[1].memory_pool.arena)
    for i, (a, b) in enumerate(zip(own.net.learnable_params, four.net.learnable_params)):
        assert np.array_equal(a.blob.diff, b.blob.diff), f"param {i}"


def test_cpu_replicas_run_one_by_one_in_a_lane_is_a_warning_that_names_the_faster_setting(db, tmp_path):
    """Only where a lane's replicas cannot run as one pass: an ignore_label under VALID normalisation
    divides each share's loss by its own count of labels; the log says so, naming the layer."""
    merged = write_solver(tmp_path, db)
    (tmp_path / "ignore").mkdir()
    apart = write_solver(tmp_path / "ignore", db, loss="loss_param { ignore_label: 2 }")
    for path, devices, merge, warned in ((merged, 4, True, False), (merged, 4, False, True), (apart, 4, True, True),
                                         (merged, 2, True, False)):
        log = tmp_path / "log.txt"
        s = ParallelSolver(path, devices=[CPU] * devices, lanes=2, log=GLog(str(log), stream=False),
                           merge_lane_replicas=merge)
        text = log.read_text()
        assert ("2 CPU replicas share a lane" in text and "--devices cpu:2" in text) == warned, text
        assert ("Each lane runs its 2 replicas as one pass over their 4 samples" in text) == (len(s.replicas) == 2
                                                                                              and devices == 4)
        assert ("layer 'loss' (SoftmaxWithLoss): its normalizer, the count of labels not ignored" in text) == \
               (path == apart)
        log.unlink()


def test_concurrent_cpu_lanes_share_the_blas_threads(db, tmp_path, monkeypatch):
    """While 2 CPU lanes run, the GEMMs (OpenBLAS's, or vggtool's split of them while a net's pass holds
    OpenBLAS at one thread) and the split passes have half their threads each (the lanes never outnumber
    the cores); after the passes they have them all again."""
    from vggtool import config
    from vggtool.layers import gemm
    if gemm.blas_threads() is None:
        pytest.skip("NumPy's OpenBLAS thread count cannot be read here")
    before = gemm.blas_threads()
    gemm.set_blas_threads(4)
    try:
        with config.override(num_threads=4):
            s = ParallelSolver(write_solver(tmp_path, db), devices=[CPU] * 4, lanes=2, log=GLog(stream=False),
                               merge_lane_replicas=False)
            seen = []
            passes = s._passes
            monkeypatch.setattr(s, "_passes", lambda r, k: seen.append(
                (r, gemm.gemm_threads(), config.defaults().num_threads)) or passes(r, k))
            s.step(1)
            assert sorted(seen) == [(r, 2, 2) for r in range(4)]
            assert gemm.blas_threads() == 4 and config.defaults().num_threads == 4
            seen.clear()
            sequential = ParallelSolver(write_solver(tmp_path, db), devices=[CPU] * 2, lanes=1,
                                        log=GLog(stream=False), merge_lane_replicas=False)
            passes1 = sequential._passes
            monkeypatch.setattr(sequential, "_passes", lambda r, k: seen.append(
                (r, gemm.gemm_threads(), config.defaults().num_threads)) or passes1(r, k))
            sequential.step(1)
            assert seen == [(0, 4, 4), (1, 4, 4)]  # one lane: every thread for each replica in turn
    finally:
        gemm.set_blas_threads(before)


ACCURACY = ('layer { name: "acc" type: "Accuracy" bottom: "fc2" bottom: "label" top: "acc" '
            'include { phase: TRAIN } }')


@pytest.mark.parametrize("norm", ["VALID", "BATCH_SIZE", "FULL", "NONE"])
def test_a_lane_run_as_one_pass_gives_what_its_replicas_give_apart(db, tmp_path, norm):
    """4 replicas in 2 lanes: one pass per lane over its 2 shares, or 2 passes each. The losses and
    accuracies of a pass are normalised by one share's count, so the pass computes the sum of its shares'
    gradients, losses and accuracies, whatever the normalisation (float64, tight: the rule is tested)."""
    path = write_solver(tmp_path, db, loss=f"loss_param {{ normalization: {norm} }}")
    param = prototxt.read_solver_param(path)
    param.net_param.layer.add().CopyFrom(prototxt.parse_net_text(ACCURACY).layer[0])
    prototxt.write_text_proto(path, param)
    apart, merged = (ParallelSolver(path, devices=[CPU] * 4, lanes=2, log=GLog(stream=False), dtype=np.float64,
                                    merge_lane_replicas=merge) for merge in (False, True))
    assert len(apart.replicas) == 4 and len(merged.replicas) == 2
    assert [r.blobs["data"].shape[0] for r in merged.replicas] == [4, 4] and merged.offsets == [0, 4]
    for step in range(2):  # a second batch: other samples, crops and dropout bits
        losses = [s.compute_gradients() for s in (apart, merged)]
        assert losses[1] == pytest.approx(losses[0], rel=1e-12)
        for i, (a, b) in enumerate(zip(apart.net.learnable_params, merged.net.learnable_params)):
            assert np.abs(a.blob.diff).max() > 1e-4
            assert_close_to_scale(b.blob.diff, a.blob.diff, TRAIN_TERMS, eps=F64_EPS, err_msg=f"step {step}, param {i}")
        shown = [s._train_outputs for s in (apart, merged)]
        assert set(shown[1]) == {"acc", "loss"}
        for name in shown[0]:
            np.testing.assert_allclose(shown[1][name], shown[0][name], rtol=1e-12, err_msg=name)
        assert 0 < shown[1]["acc"][0] < 1
        apart.apply_update()
        merged.apply_update()


def test_what_stops_a_lane_running_as_one_pass(db):
    """Net.merge_obstacle names the first layer or output that would make one pass over several shares
    differ from the shares' own passes; a net of per-sample layers, losses and accuracies has none."""
    head = (f'layer {{ name: "data" type: "Data" top: "x" top: "y" data_param {{ source: "{db}" batch_size: 4 '
            f'backend: LMDB }} transform_param {{ crop_size: 8 }} }} ')
    ok = ('layer { name: "conv" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 2 '
          'kernel_size: 3 pad: 1 } } layer { name: "relu" type: "ReLU" bottom: "c" top: "c" } '
          'layer { name: "pool" type: "Pooling" bottom: "c" top: "p" pooling_param { pool: MAX kernel_size: 2 '
          'stride: 2 } } layer { name: "flat" type: "Flatten" bottom: "p" top: "f" } '
          'layer { name: "fc" type: "InnerProduct" bottom: "f" top: "s" inner_product_param { num_output: 3 } } '
          'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "y" top: "loss" } '
          'layer { name: "acc" type: "Accuracy" bottom: "s" bottom: "y" top: "acc" } ')

    def obstacle(text):
        return Net(prototxt.parse_net_text(head + text), phase="TRAIN").merge_obstacle()

    assert obstacle(ok) is None
    # a Reshape that copies the batch axis keeps the samples apart
    assert obstacle(ok + 'layer { name: "r" type: "Reshape" bottom: "p" top: "r" reshape_param { shape { dim: 0 '
                         'dim: -1 } } } layer { name: "quiet" type: "Silence" bottom: "r" }') is None
    quiet = ' layer { name: "quiet" type: "Silence" bottom: "r" }'
    cases = {
        ok.replace('top: "acc" }', 'top: "acc" accuracy_param { ignore_label: 1 } }'):
            "layer 'acc' (Accuracy): its count of labels not ignored may differ between shares",
        ok.replace('top: "acc" }', 'top: "acc" top: "per_class" }'):
            "layer 'acc' (Accuracy): its per-class accuracies are not sums over shares",
        ok.replace('top: "loss" }', 'top: "loss" loss_param { ignore_label: 1 } }'):
            "layer 'loss' (SoftmaxWithLoss): its normalizer, the count of labels not ignored, may differ",
        ok + 'layer { name: "cut" type: "Slice" bottom: "c" top: "c1" top: "c2" slice_param { axis: 0 } } '
             'layer { name: "quiet" type: "Silence" bottom: "c1" bottom: "c2" }':
            "layer 'cut' (Slice): it works along axis 0, the batch",
        ok + 'layer { name: "f0" type: "Flatten" bottom: "p" top: "r" flatten_param { axis: 0 end_axis: 1 } }' + quiet:
            "layer 'f0' (Flatten): it works along axis 0, the batch",
        ok + 'layer { name: "r" type: "Reshape" bottom: "p" top: "r" reshape_param { shape { dim: -1 dim: 8 } } }'
             + quiet: "layer 'r' (Reshape): its new shape does not copy axis 0, the batch",
        ok + 'layer { name: "z" type: "DummyData" top: "z" dummy_data_param { shape { dim: 4 } } } '
             'layer { name: "quiet" type: "Silence" bottom: "z" }': "layer 'z' (DummyData): it may combine samples",
        ok + 'layer { name: "prob" type: "Softmax" bottom: "s" top: "prob" }':
            "output 'prob' is not a loss or an accuracy",
    }
    for text, expected in cases.items():
        why = obstacle(text)
        assert why is not None and why.startswith(expected), (why, expected)


def test_shares_are_the_single_device_batch(db, tmp_path):
    """Per-sample randomness (scale, crop, mirror, dropout) depends on the global sample index only."""
    with config.override(release_data=False):  # fc1's data is read after the step (vggtool.net.pool)
        s1 = train(write_solver(tmp_path, db, iters=1), 1, dtype=np.float64)
        s4 = train(write_solver(tmp_path, db, iters=1), 4, threads=True, dtype=np.float64)
    whole, parts = s1.net.blobs["data"].data, np.concatenate([r.blobs["data"].data for r in s4.replicas])
    np.testing.assert_array_equal(parts, whole)  # the same pixels, scales, crops and mirrors
    # fc1 holds the dropout output (in place): the same masks; the sums differ only by GEMM order
    whole, parts = s1.net.blobs["fc1"].data, np.concatenate([r.blobs["fc1"].data for r in s4.replicas])
    assert_close_to_scale(parts, whole, 27 + 64, eps=F64_EPS)
    assert s4.replicas[0].blobs["data"].shape[0] == 2


def test_display_averages_over_replicas(db, tmp_path):
    path = write_solver(tmp_path, db, iters=1, test=" test_iter: 1 test_interval: 1")
    s = ParallelSolver(path, devices=[CPU] * 2, log=GLog(stream=False))
    s.step(1)
    assert s.test_nets[0].blobs["data"].shape[0] == BATCH  # the test net takes whole batches
    losses = [float(r.blobs["loss"].data) for r in s.replicas]
    assert s._train_outputs["loss"][0] == pytest.approx(sum(losses) / 2, rel=1e-6)
    assert s.smoothed_loss == pytest.approx(sum(losses) / 2, rel=1e-5)


def test_batch_that_does_not_divide(db, tmp_path):
    for batch in (6, 5):  # 6: one pass per lane would take 3 = 1.5 shares; 5 does not divide over 2 lanes either
        path = write_solver(tmp_path, db, batch=batch)
        with pytest.raises(VggtoolError, match=rf"layer 'data' \(Data\): batch_size {batch} .* does not divide over 4"):
            ParallelSolver(path, devices=[CPU] * 4, lanes=2, log=GLog(stream=False))
    param = prototxt.read_solver_param(path)
    param.net_param.CopyFrom(prototxt.parse_net_text(
        'layer { name: "x" type: "DummyData" top: "x" top: "y" dummy_data_param { shape { dim: 4 dim: 3 } '
        'shape { dim: 4 } } } layer { name: "fc" type: "InnerProduct" bottom: "x" top: "s" '
        'inner_product_param { num_output: 2 } } '
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "y" top: "loss" }'))
    with pytest.raises(VggtoolError, match="splits the batch of a Data or ImageData layer, and this net has none"):
        ParallelSolver(param, devices=[CPU] * 2, log=GLog(stream=False))


def test_failing_replica_stops_the_run(tmp_path):
    # record 5 is 16x16, the others 12x12 and there is no crop: only the replica holding sample 5 fails
    db = make_db(tmp_path, "bad", [(12, 12)] * 5 + [(16, 16)] + [(12, 12)] * 2)
    path = write_solver(tmp_path, db, transform="")
    for threads, which in ((True, r"replica 1 of 2 \(cpu\)"), (False, r"replicas 0-1 of 2 \(cpu, in one pass\)")):
        s = ParallelSolver(path, devices=[CPU] * 2, threads=threads, log=GLog(stream=False))
        with pytest.raises(ReplicaFailed, match=which + r" failed at iteration 0: layer 'data'"
                                                        r".*5\.png.* gives a \(3, 16, 16\) input"):
            s.step(1)


def test_train_cli_devices(db, tmp_path, capsys):
    path = write_solver(tmp_path, db, iters=2, test=" test_iter: 2 test_interval: 2")
    assert vggtool_main(["train", "--solver", path, "--devices", "cpu:2"]) == 0
    err = capsys.readouterr().err
    assert "Data parallel: 2 replicas (1 rank(s) x 2 device(s) [cpu, cpu]), 4 samples" in err
    assert err.count("Test net output #0: loss") == 2  # at iterations 0 and 2, by replica 0 only
    assert os.path.exists(tmp_path / "snap_iter_2.caffemodel")
    # resume from the snapshot on 4 replicas runs on to the new max_iter
    state = str(tmp_path / "snap_iter_2.solverstate")
    assert vggtool_main(["train", "--solver", path, "--devices", "cpu:4", "--snapshot", state,
                         "--iterations", "3"]) == 0
    assert os.path.exists(tmp_path / "snap_iter_3.caffemodel")
    assert vggtool_main(["train", "--solver", path, "--devices", "cpu:3"]) == 1
    assert "does not divide over 3 replicas" in capsys.readouterr().err


# -- MPI ---------------------------------------------------------------------------------------------------
def _mpiexec():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None, "mpi4py is not installed (pip install 'vggtool[test]' or mpi4py mpich)"
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = beside if os.path.exists(beside) else shutil.which("mpiexec")
    if not found:
        return None, "no mpiexec found (beside the Python executable or on PATH)"
    return found, ""


def _mpirun(args, cwd, timeout=120, command=("-m", "vggtool", "train")):
    mpiexec, why = _mpiexec()
    if mpiexec is None:
        pytest.skip(why)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               VGGTOOL_DATA_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return subprocess.run([mpiexec, "-n", "2", sys.executable, *command, *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)


def test_mpi_two_ranks_train_like_one_process(db, tmp_path):
    path = write_solver(tmp_path, db, iters=3)
    proc = _mpirun(["--solver", path], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Data parallel: 2 replicas (2 rank(s) x 1 device(s) [cpu]), 4 samples" in proc.stderr
    assert "2 ranks on this host: 1 BLAS thread(s) per rank" in proc.stderr  # OPENBLAS_NUM_THREADS=1 here
    assert proc.stderr.count("Optimization Done.") == 1  # only rank 0 logs
    net_param = prototxt.read_solver_param(path).net_param
    mpi_net = Net(net_param, str(tmp_path / "snap_iter_3.caffemodel"), phase="TRAIN")
    one = train(path)
    assert_same(weights(mpi_net), weights(one.net))
    # resume on 2 ranks x 2 CPU replicas: offsets cover ranks and local devices
    proc = _mpirun(["--solver", path, "--devices", "cpu:2", "--snapshot", str(tmp_path / "snap_iter_3.solverstate"),
                    "--iterations", "5"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Data parallel: 4 replicas (2 rank(s) x 2 device(s) [cpu, cpu]), 2 samples" in proc.stderr
    mpi_net = Net(net_param, str(tmp_path / "snap_iter_5.caffemodel"), phase="TRAIN")
    assert_same(weights(mpi_net), weights(train(path, iters=5).net))


def test_mpi_ranks_update_alike_without_sending_weights(db, tmp_path):
    """Every rank applies the update itself: after training, resuming and plateau drops (decided by rank 0's
    tests) both ranks hold bit-identical weights and history, and weights were sent once, not per iteration."""
    path = write_solver(tmp_path, db, iters=6, test=" test_iter: 1 test_interval: 2")
    param = prototxt.read_solver_param(path)
    param.lr_policy, param.gamma = "plateau", 0.5
    param.plateau_output, param.plateau_patience, param.plateau_max_drops = "loss", 1, 5
    param.plateau_mode, param.plateau_threshold = caffe_pb2.SolverParameter.MAX, 1e9  # never improves
    prototxt.write_text_proto(path, param)
    proc = _mpirun([path, str(tmp_path), "4", "2"], tmp_path,
                   command=(os.path.join(ROOT, "tests", "mpi_ranks_agree.py"),))
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.load(open(tmp_path / f"rank{r}.json")) for r in (0, 1))
    assert r0["calls"].get("Bcast") == r1["calls"].get("Bcast") == 1  # at the start of step(), not per iteration
    for key in ("trained", "continued", "resumed", "resynced"):
        assert r0[key] == r1[key], key
    assert r0["resumed"] == r0["continued"]  # a resumed run goes on exactly like the uninterrupted one
    assert (r0["drops"], r0["continued_drops"], r0["resumed_drops"]) == (1, 2, 2)
    assert (r1["drops"], r1["continued_drops"], r1["resumed_drops"]) == (1, 2, 2)
    assert r1["perturbed"] != r0["perturbed"] and r0["resynced"] == r0["perturbed"]
    assert len(r0["warnings"]) == 1 and "rank(s) 1 differ from rank 0's" in r0["warnings"][0]


def test_cpu_replicas_share_replica_0_weights(db, tmp_path):
    s = ParallelSolver(write_solver(tmp_path, db), devices=[CPU] * 4, log=GLog(stream=False))
    for rep in s.replicas[1:]:
        for a, b in zip(s.net.learnable_params, rep.learnable_params):
            assert np.shares_memory(a.blob.data, b.blob.data)
    assert s.exchange.copied == []


def replicas_hold_replica_0_weights(s):
    return all(np.array_equal(a.blob.data, b.blob.data)
               for rep in s.replicas[1:] for a, b in zip(s.net.learnable_params, rep.learnable_params))


@pytest.mark.parametrize("threads", [False, True])
def test_cpu_replicas_with_their_own_weights_receive_copies(db, tmp_path, threads):
    """The copy path (GPU replicas' and mixed GPU/CPU lists'), run with CPU replicas that own their weights:
    after every update and after a resume the copies must reach them, or they compute other gradients."""
    path = write_solver(tmp_path, db, iters=4)
    shared = train(path, 4, threads, merge=False)
    copied = train(path, 4, threads, share=False, merge=False)
    assert copied.exchange.copied == [1, 2, 3]
    for rep in copied.replicas[1:]:
        for a, b in zip(copied.net.learnable_params, rep.learnable_params):
            assert not np.shares_memory(a.blob.data, b.blob.data)
    assert replicas_hold_replica_0_weights(copied)
    # the same arithmetic as sharing: bit-identical weights and solver history
    for a, b in zip(weights(copied.net), weights(shared.net)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(copied.history, shared.history):
        np.testing.assert_array_equal(a, b)
    # broadcast_weights copies what replica 0 holds now (weights set after construction, say)
    rng = np.random.default_rng(0)
    for lp in copied.net.learnable_params:
        lp.blob.data[...] = rng.standard_normal(lp.blob.shape)
    assert not replicas_hold_replica_0_weights(copied)
    copied.broadcast_weights()
    assert replicas_hold_replica_0_weights(copied)


def test_resumed_cpu_replicas_with_their_own_weights_continue_exactly(db, tmp_path):
    path = write_solver(tmp_path, db, iters=4)
    straight = train(path, 2, share=False)
    first = train(path, 2, iters=2, share=False)
    _, state = first.snapshot()
    resumed = ParallelSolver(path, devices=[CPU] * 2, log=GLog(stream=False), share_cpu_weights=False)
    resumed.restore(state)
    assert not replicas_hold_replica_0_weights(resumed)  # replica 1 still holds the fillers' weights
    resumed.step(2)
    assert resumed.iter == 4 and replicas_hold_replica_0_weights(resumed)
    for a, b in zip(weights(resumed.net), weights(straight.net)):
        np.testing.assert_array_equal(a, b)


def test_mpi_failing_rank_aborts_with_its_message(tmp_path):
    db = make_db(tmp_path, "bad", [(12, 12)] * 5 + [(16, 16)] + [(12, 12)] * 2)
    path = write_solver(tmp_path, db, transform="")
    proc = _mpirun(["--solver", path], tmp_path, timeout=60)
    assert proc.returncode != 0
    assert "rank 1 of 2 failed" in proc.stderr and "5.png" in proc.stderr, proc.stderr[-3000:]


def test_signal_actions_and_get_solver(db, tmp_path):
    from vggtool.solvers.parallel import get_solver
    from vggtool.solvers import SNAPSHOT, STOP
    path = write_solver(tmp_path, db, iters=5)
    assert type(get_solver(path, log=GLog(stream=False))) is Solver
    s = get_solver(path, devices=[CPU] * 2, log=GLog(stream=False))
    s.requested_action = SNAPSHOT  # what SIGHUP sets: snapshot after this iteration and go on
    s.step(2)
    assert s.iter == 2 and os.path.exists(tmp_path / "snap_iter_1.caffemodel")
    s.requested_action = STOP  # what SIGINT sets
    s.step(3)
    assert s.iter == 3 and s.requested_early_exit


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_two_replicas_on_one_gpu_train_like_the_cpu(db, tmp_path, dtype):
    """1 replica on the CPU, 1 and 2 replicas on GPU 0 (copies, or NCCL's logged refusal of one GPU twice):
    the same weights after 4 iterations (the same dropout bits and augmentation on every device)."""
    from vggtool.backend import gpu, to_numpy

    path = write_solver(tmp_path, db, iters=4)
    cpu = weights(train(path, dtype=dtype).net)
    for devices in ([gpu(0)], [gpu(0), gpu(0)]):
        s = ParallelSolver(path, devices=devices, log=GLog(stream=False), dtype=dtype) if len(devices) > 1 else \
            Solver(path, device=devices[0], log=GLog(stream=False), dtype=dtype)
        s.step(4)
        assert_same([to_numpy(w) for w in weights(s.net)], cpu, eps=float(np.finfo(dtype).eps))


class TwinRanks:
    """A stand-in for a communicator of 2 ranks where rank 1 is rank 0's twin: whatever rank 0 holds, rank
    1 holds too, so a sum over the ranks is twice rank 0's value (rank 0's view of a real run, in one
    process and without an MPI launcher)."""

    IN_PLACE, SUM, COMM_TYPE_SHARED = object(), object(), object()

    def Get_rank(self):
        return 0

    def Get_size(self):
        return 2

    def allgather(self, value):
        return [value, value]

    def bcast(self, value, root=0):
        return value

    def Bcast(self, array, root=0):
        pass

    def Allreduce(self, where, array, op=None):
        assert where is self.IN_PLACE and op is self.SUM
        array *= 2

    def Split_type(self, kind):
        assert kind is self.COMM_TYPE_SHARED
        return types.SimpleNamespace(Get_size=lambda: 2, Free=lambda: None)


@pytest.mark.parametrize("merge", [False, True])
def test_mpi_sums_cpu_gradients_in_the_allreduce_buffer_itself(db, tmp_path, monkeypatch, merge):
    """On the CPU, replica 0's diffs (and its lane mates', which share them) live in the Allreduce buffer:
    no copy in or out. The result is the mean over all replicas of all ranks, bit for bit (x2 then x1/4 is
    x1/2 exactly): here rank 0's two shares of a batch of 8, against one process with a batch of 4."""
    fake = types.ModuleType("mpi4py")
    fake.MPI = TwinRanks
    monkeypatch.setitem(sys.modules, "mpi4py", fake)
    twin = ParallelSolver(write_solver(tmp_path, db), devices=[CPU] * 2, lanes=1, comm=TwinRanks(),
                          log=GLog(stream=False), dtype=np.float64, merge_lane_replicas=merge)
    offsets = [0] if merge else [0, 2]  # one pass over rank 0's two shares, or a pass each
    assert twin.mpi.in_place and twin.offsets == offsets
    for rep in twin.replicas:
        for lp in rep.learnable_params:
            assert np.shares_memory(lp.blob.diff, twin.mpi.buf)
    (tmp_path / "alone").mkdir()
    alone = ParallelSolver(write_solver(tmp_path / "alone", db, batch=BATCH // 2), devices=[CPU] * 2, lanes=1,
                           log=GLog(stream=False), dtype=np.float64, merge_lane_replicas=merge)
    assert alone.offsets == offsets
    twin.compute_gradients()
    alone.compute_gradients()
    for i, (a, b) in enumerate(zip(alone.net.learnable_params, twin.net.learnable_params)):
        assert np.abs(a.blob.diff).max() > 1e-4
        np.testing.assert_array_equal(b.blob.diff, a.blob.diff, err_msg=f"param {i}")
    before = weights(twin.net)
    twin.broadcast_weights()  # through the same buffer: the diffs are cleared, the weights untouched
    assert not twin.mpi.buf.any()
    for a, b in zip(weights(twin.net), before):
        np.testing.assert_array_equal(a, b)
