"""The model zoo (netdefs/, solver/) and the digits demo: every definition builds and trains."""
import gc
import glob
import os

import cv2
import numpy as np
import pytest

from vggtool import Net
from vggtool.io.wire import proto_to_array
from vggtool.cli import main as vggtool_main
from vggtool.vgg.initialisation import INIT_FROM_A_LAYERS
from vggtool.data.datum import array_to_datum, open_lmdb, record_key
from vggtool.net.graph import filter_net
from vggtool.proto import caffe_pb2
from vggtool.io.prototxt import read_net_param, read_solver_param
from vggtool.solvers import Solver
from vggtool.solvers.glog import GLog
from vggtool.solvers.solver import check_param

from repo_paths import REPO  # noqa: E402
ROOT = REPO
CONFIGS = ["vgg_a", "vgg_a_lrn", "vgg_b", "vgg_c", "vgg_d", "vgg_e"]


def tiny_lmdb(path, channels=3, n=4, size=40):
    rng = np.random.default_rng(0)
    env = open_lmdb(str(path), write=True, map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i in range(n):
            image = rng.integers(0, 256, (size, size + 8, channels), dtype=np.uint8)
            txn.put(record_key(i, f"img{i}.png"), array_to_datum(image, i % 3).SerializeToString())
    env.close()
    return str(path)


def small_batch(param, source, batch=2):
    """`param` reading `source` in batches of `batch` (the zoo's nets read ILSVRC in batches of 256)."""
    for layer in param.layer:
        if layer.type == "Data":
            layer.data_param.source = source
            layer.data_param.batch_size = batch
    return param


def data_layers(param, phase, stages=()):
    state = caffe_pb2.NetState(phase=phase, stage=list(stages))
    return [l for l in filter_net(param, state).layer if l.type == "Data"]


@pytest.mark.parametrize("schedule", ["s256", "s384", "jitter"])
@pytest.mark.parametrize("config", CONFIGS)
def test_every_solver_parses_and_names_an_existing_net(config, schedule):
    path = os.path.join(ROOT, "solver", f"{config}_{schedule}.prototxt")
    solver = read_solver_param(path)
    check_param(solver, path)
    assert solver.type == "SGD" and solver.momentum == pytest.approx(0.9) and solver.weight_decay == pytest.approx(5e-4)
    assert solver.lr_policy == "plateau" and solver.gamma == pytest.approx(0.1) and solver.plateau_max_drops == 3
    assert solver.base_lr == pytest.approx(0.01 if schedule == "s256" else 0.001)
    net = read_net_param(os.path.join(ROOT, solver.net))
    # The solver's stage selects exactly one data layer per phase, with the paper's scale.
    stages = list(solver.train_state.stage)
    (train,) = data_layers(net, caffe_pb2.TRAIN, stages)
    (test,) = data_layers(net, caffe_pb2.TEST, list(solver.test_state[0].stage) if len(solver.test_state) else [])
    t = train.transform_param
    if schedule == "jitter":
        assert (t.smallest_side_min, t.smallest_side_max, test.transform_param.test_smallest_side) == (256, 512, 384)
    else:
        s = int(schedule[1:])
        assert t.smallest_side == s and test.transform_param.test_smallest_side == s
    assert t.crop_size == 224 and t.mirror and train.data_param.batch_size == 256


def test_every_solver_file_is_generated():
    assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "solver", "vgg_*_*.prototxt"))
                  if "_loc" not in p) == sorted(f"{c}_{s}.prototxt" for c in CONFIGS for s in ("s256", "s384", "jitter"))


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS)
def test_train_and_test_nets_of_every_netdef_build(config, tmp_path):
    source = tiny_lmdb(tmp_path / "db")
    for variant in ("train_val.prototxt", "train_val_xavier.prototxt"):
        param = small_batch(read_net_param(os.path.join(ROOT, "netdefs", config, variant)), source)
        for phase in ("TRAIN", "TEST"):
            net = Net(param, phase=phase, seed=0)
            assert net.blobs["data"].shape == (2, 3, 224, 224)
            assert set(net.outputs) == ({"loss"} if phase == "TRAIN" else {"loss", "accuracy", "accuracy_top5"})
            if variant == "train_val.prototxt" and phase == "TRAIN":
                # The paper's initialisation: weights N(0, 1e-2), biases 0.
                w = net.params["conv1_1"][0].data
                assert abs(float(w.std()) - 0.1) < 0.02 and not net.params["fc8"][1].data.any()
            del net
            gc.collect()


@pytest.mark.slow
def test_one_training_iteration_of_net_a(tmp_path):
    source = tiny_lmdb(tmp_path / "db")
    param = read_solver_param(os.path.join(ROOT, "solver", "vgg_a_s256.prototxt"))
    net = small_batch(read_net_param(os.path.join(ROOT, param.net)), source)
    param.ClearField("net")
    param.net_param.CopyFrom(net)
    param.max_iter = 1
    param.random_seed = 1
    param.snapshot_after_train = False
    param.snapshot_prefix = str(tmp_path / "snap")
    param.test_iter[0] = 1
    solver = Solver(param, source="vgg_a_s256", log=GLog(str(tmp_path / "log"), stream=False))
    before = {k: v[0].data.copy() for k, v in solver.net.params.items()}
    solver.step(1)
    assert solver.iter == 1
    for name, blobs in solver.net.params.items():
        assert np.isfinite(blobs[0].data).all()
        assert not np.array_equal(blobs[0].data, before[name]), f"{name} did not change"


@pytest.mark.slow
def test_init_from_a_copies_exactly_the_papers_layers():
    a = Net(os.path.join(ROOT, "netdefs", "vgg_a", "deploy.prototxt"), seed=1)
    rng = np.random.default_rng(0)
    for blobs in a.params.values():
        blobs[0].data[...] = rng.standard_normal(blobs[0].shape, dtype=np.float32)
    source = a.to_proto()
    del a
    d = Net(os.path.join(ROOT, "netdefs", "vgg_d", "deploy.prototxt"), seed=2)
    untouched = {k: v[0].data.copy() for k, v in d.params.items() if k not in INIT_FROM_A_LAYERS}
    report = d.copy_from(source, only=INIT_FROM_A_LAYERS)
    assert sorted(report.copied) == sorted(INIT_FROM_A_LAYERS)
    # the paper: first four conv layers of A and its three FC layers; the rest of D keeps its init
    assert INIT_FROM_A_LAYERS == ("conv1_1", "conv2_1", "conv3_1", "conv3_2", "fc6", "fc7", "fc8")
    src = {l.name: l for l in source.layer}
    for name in INIT_FROM_A_LAYERS:
        np.testing.assert_array_equal(d.params[name][0].data, proto_to_array(src[name].blobs[0]))
    for name, value in untouched.items():
        np.testing.assert_array_equal(d.params[name][0].data, value)


def test_demo_nets_build_on_one_channel_digits(tmp_path):
    source = tiny_lmdb(tmp_path / "db", channels=1, size=32)
    param = small_batch(read_net_param(os.path.join(ROOT, "netdefs", "demo", "train_val.prototxt")), source, 4)
    for phase in ("TRAIN", "TEST"):
        net = Net(param, phase=phase, seed=0)
        assert net.blobs["data"].shape == (4, 1, 24, 24)
    deploy = Net(os.path.join(ROOT, "netdefs", "demo", "deploy.prototxt"))
    assert [k for k in deploy.params] == [k for k in net.params]
    solver = read_solver_param(os.path.join(ROOT, "solver", "demo_solver.prototxt"))
    check_param(solver, "demo_solver")
    assert solver.net == "netdefs/demo/train_val.prototxt"


def test_every_shipped_solver_names_nets_that_exist_from_the_repository_root():
    for path in sorted(glob.glob(os.path.join(ROOT, "solver", "*.prototxt"))):
        solver = read_solver_param(path)
        nets = [solver.net, solver.train_net, *solver.test_net]
        for net in filter(None, nets):
            assert os.path.isfile(os.path.join(ROOT, net)), f"{os.path.basename(path)}: {net}"


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert vggtool_main(["demo", "--out", str(out), "--iterations", "20"]) == 0
    printed = capsys.readouterr().out
    assert "top-1 error" in printed and "top-5 error" in printed
    for name in ("train.log", "scores.npz", "training_curve.png", "snapshots/vgg_mini_iter_20.caffemodel"):
        assert (out / name).exists(), name
    assert cv2.imread(str(out / "training_curve.png")) is not None
    log = (out / "train.log").read_text()
    assert "Snapshotting to binary proto file snapshots/vgg_mini_iter_20.caffemodel" in log and "Optimization Done." in log


def test_demo_rerun_evaluates_the_model_it_just_trained(tmp_path, monkeypatch, capsys):
    """A used --out folder holds an older run's higher-numbered snapshot: the demo must test the snapshot
    its own training wrote (the steps are stood in for by ones that record what they are given)."""
    from vggtool.cli import demo
    from vggtool.vgg.evaluate import save_scores

    out = tmp_path / "run"
    (out / "snapshots").mkdir(parents=True)
    (out / "snapshots" / "vgg_mini_iter_1600.caffemodel").write_bytes(b"an older, longer run")
    (out / "digits").mkdir()
    (out / "digits" / "val.txt").write_text("")
    for split in ("train", "val"):
        (out / f"digits_{split}_lmdb").mkdir()
    tested = []

    def step(title, argv, tool="vggtool"):
        if argv[0] == "train":
            (out / "snapshots" / "vgg_mini_iter_20.caffemodel").write_bytes(b"this run")
            (out / "train.log").write_text("I1201 10:00:00.000000  1 solver.cpp:464] Snapshotting to binary "
                                           "proto file snapshots/vgg_mini_iter_20.caffemodel\n")
        elif argv[0] == "test":
            tested.append(argv[argv.index("--weights") + 1])
            save_scores("scores.npz", np.eye(3), [0, 1, 2], ["a", "b", "c"])
        return 0.0

    monkeypatch.setattr(demo, "_step", step)
    assert vggtool_main(["demo", "--out", str(out), "--iterations", "20"]) == 0
    assert tested == [os.path.join("snapshots", "vgg_mini_iter_20.caffemodel")]
    assert "top-1 error 0.00%" in capsys.readouterr().out
