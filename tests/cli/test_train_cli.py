"""`vggtool train` / `vggtool plot` end to end: prototxts on disk, logs, snapshots, signals, bad input."""
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from vggtool import Net
from vggtool.io import prototxt
from vggtool.cli import main
from vggtool.proto import caffe_pb2

from repo_paths import REPO  # noqa: E402

# Learnable without a dataset: random inputs every batch, constant label 2 (the net learns to say "2").
TINY_NET = """
name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 8 dim: 5 } shape { dim: 8 }
    data_filler { type: "uniform" min: -1 max: 1 } data_filler { type: "constant" value: 2 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "drop1" type: "Dropout" bottom: "ip1" top: "ip1" dropout_param { dropout_ratio: 0.3 } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy" include { phase: TEST } }
"""

SOLVER = """
net: "{net}"
test_iter: 2
test_interval: 10
base_lr: 0.1
lr_policy: "step"
stepsize: 20
gamma: 0.5
momentum: 0.9
weight_decay: 0.0005
display: 5
max_iter: {max_iter}
snapshot: {snapshot}
snapshot_prefix: "{prefix}"
random_seed: 7
"""


def write_solver(folder, max_iter=30, snapshot=15, net_text=TINY_NET, name="solver.prototxt", net_name="net.prototxt",
                 extra=""):
    folder.mkdir(exist_ok=True)
    (folder / net_name).write_text(net_text)
    path = folder / name
    # a net path relative to the solver's folder (not the cwd): accepted as a fallback
    path.write_text(SOLVER.format(net=net_name, max_iter=max_iter, snapshot=snapshot,
                                  prefix=str(folder / "snap")) + extra)
    return str(path)


# parse_log.py's behaviour, re-expressed: iteration from "Iteration N", lr from "lr = X", outputs by regex,
# timestamps from glog's prefix
GLOG = re.compile(r"^[IWEF](\d{4}) (\d\d:\d\d:\d\d\.\d{6}) +\d+ [\w.]+:\d+\] ")
ITER = re.compile(r"Iteration (\d+)")
LR = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)")
TRAIN = re.compile(r"Train net output #(\d+): (\S+) = ([\.\deE+-]+)")
TEST = re.compile(r"Test net output #(\d+): (\S+) = ([\.\deE+-]+)")


def parse(text):
    it, lr, train, test, lrs = -1, None, {}, {}, {}
    assert "Solving tiny" in text
    for line in text.splitlines():
        if not line.strip():
            continue
        assert GLOG.match(line), line
        m = ITER.search(line)
        if m:
            it = int(m.group(1))
        m = LR.search(line)
        if m:
            lrs[it] = float(m.group(1))
        m = TRAIN.search(line)
        if m:
            train.setdefault(it, {})[m.group(2)] = float(m.group(3))
        m = TEST.search(line)
        if m:
            test.setdefault(it, {})[m.group(2)] = float(m.group(3))
    return train, test, lrs


def test_train_from_prototxts_log_and_plot(tmp_path, capsys):
    solver = write_solver(tmp_path / "run")
    log = tmp_path / "train.log"
    assert main(["train", "--solver", solver, "--log", str(log)]) == 0
    err = capsys.readouterr().err
    assert err == log.read_text()
    train, test, lrs = parse(err)
    assert sorted(train) == [0, 5, 10, 15, 20, 25]
    assert train[25]["loss"] < 0.2 * train[0]["loss"]
    assert sorted(test) == [0, 10, 20, 30]
    assert test[0]["accuracy"] < 0.5 and test[30]["accuracy"] == 1.0
    assert lrs == {0: 0.1, 5: 0.1, 10: 0.1, 15: 0.1, 20: 0.05, 25: 0.05}
    assert "Optimization Done." in err
    for it in (15, 30):
        assert "Snapshotting to binary proto file " + str(tmp_path / "run" / f"snap_iter_{it}.caffemodel") in err
        assert (tmp_path / "run" / f"snap_iter_{it}.solverstate").exists()
    # our own reader (used by plot) agrees
    from vggtool.solvers.parse_log import parse_log
    rows, test_rows = parse_log(log)
    assert [r["NumIters"] for r in rows] == [0, 5, 10, 15, 20, 25]
    assert [r["LearningRate"] for r in rows] == pytest.approx([0.1] * 4 + [0.05] * 2)
    assert [r["accuracy"] for r in test_rows][-1] == 1.0
    png = tmp_path / "curve.png"
    assert main(["plot", str(log), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_through_the_cli_matches_straight_run(tmp_path, capsys):
    # DummyData's random fillers draw from one sequential stream (not per iteration), so use constant data;
    # Dropout's masks still depend on (seed, iteration, sample)
    net = TINY_NET.replace('type: "uniform" min: -1 max: 1', 'type: "constant" value: 0.5')
    straight = write_solver(tmp_path / "a", max_iter=20, snapshot=0, net_text=net)
    assert main(["train", "--solver", straight]) == 0
    split = write_solver(tmp_path / "b", max_iter=20, snapshot=10, net_text=net)
    assert main(["train", "--solver", split, "--iterations", "10"]) == 0
    state = str(tmp_path / "b" / "snap_iter_10.solverstate")
    assert main(["train", "--solver", split, "--snapshot", state]) == 0
    capsys.readouterr()
    a = Net(str(tmp_path / "a" / "net.prototxt"), str(tmp_path / "a" / "snap_iter_20.caffemodel"))
    b = Net(str(tmp_path / "b" / "net.prototxt"), str(tmp_path / "b" / "snap_iter_20.caffemodel"))
    for name in ("ip1", "ip2"):
        for pa, pb in zip(a.params[name], b.params[name]):
            np.testing.assert_array_equal(pa.data, pb.data)


def test_resume_tests_on_the_same_batches_and_drops_lr_at_the_same_iteration(tmp_path, capsys):
    """With test_iter: 1 every test round reads a new batch of random test data; the batch of a round
    follows from the iteration alone, so a resumed run tests on the same batches as the straight run and
    the plateau policy drops the rate at the same iterations."""
    from vggtool.solvers.parse_log import parse_log

    plateau = ('lr_policy: "plateau" plateau_output: "loss" plateau_mode: MIN plateau_patience: 1 '
               'plateau_max_drops: 5 plateau_threshold: 0.01\n')
    logs = {}
    for run in ("a", "b"):
        path = write_solver(tmp_path / run, max_iter=24, snapshot=8, extra=plateau)
        text = open(path).read().replace('lr_policy: "step"', "").replace("test_iter: 2", "test_iter: 1")
        open(path, "w").write(text.replace("test_interval: 10", "test_interval: 2"))
        logs[run] = str(tmp_path / run / "train.log")
        argv = ["train", "--solver", path, "--log", logs[run]]
        if run == "b":
            assert main(argv + ["--iterations", "8"]) == 0
            argv = ["train", "--solver", path, "--snapshot", str(tmp_path / "b" / "snap_iter_8.solverstate"),
                    "--log", logs[run]]
        assert main(argv) == 0
    capsys.readouterr()
    (train_a, test_a), (train_b, test_b) = parse_log(logs["a"]), parse_log(logs["b"])
    after = [r for r in test_a if r["NumIters"] >= 8]
    assert len(after) == 9 and len({r["loss"] for r in after}) > 1  # the rounds saw different batches
    assert [r for r in test_b if r["NumIters"] >= 8] == after
    assert [r for r in train_b if r["NumIters"] >= 8] == [r for r in train_a if r["NumIters"] >= 8]
    assert len({r["LearningRate"] for r in train_a}) > 1  # the plateau policy did drop the rate


CHAIN = ["conv1_1", "conv2_1", "conv3_1", "conv3_2", "fc6", "fc7", "fc8"]


def chain_net(names):
    """A chain of 4-wide InnerProducts named like VGG's layers (so weights fit by name)."""
    text = ['name: "chain"', 'layer { name: "data" type: "DummyData" top: "data" top: "label" dummy_data_param {'
            ' shape { dim: 2 dim: 4 } shape { dim: 2 } data_filler { type: "uniform" } '
            'data_filler { type: "constant" value: 1 } } }']
    bottom = "data"
    for n in names:
        text.append(f'layer {{ name: "{n}" type: "InnerProduct" bottom: "{bottom}" top: "{n}" '
                    f'inner_product_param {{ num_output: 4 weight_filler {{ type: "gaussian" std: 0.5 }} }} }}')
        bottom = n
    text.append(f'layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "{bottom}" bottom: "label" top: "loss" }}')
    return "\n".join(text)


def test_init_from_a_copies_exactly_the_papers_layers(tmp_path, capsys):
    net_a = Net(prototxt.parse_net_text(chain_net(CHAIN)), phase="TRAIN", seed=5)
    weights = str(tmp_path / "a.caffemodel")
    net_a.save(weights)
    deeper = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3", "fc6", "fc7", "fc8"]
    solver = write_solver(tmp_path / "b", max_iter=0, snapshot=0, net_text=chain_net(deeper))
    assert main(["train", "--solver", solver, "--weights", weights, "--init-from-a"]) == 0
    err = capsys.readouterr().err
    assert "copied 7 layer(s): conv1_1, conv2_1, conv3_1, conv3_2, fc6, fc7, fc8" in err
    assert "Not copied (keep their initialisation): conv1_2, conv2_2, conv3_3" in err
    out = Net(prototxt.parse_net_text(chain_net(deeper)), str(tmp_path / "b" / "snap_iter_0.caffemodel"))
    for name in deeper:
        same = np.array_equal(out.params[name][0].data, net_a.params[name][0].data) if name in CHAIN else False
        assert same == (name in CHAIN), name
    # --weights-layers: the same mechanism with an explicit list
    assert main(["train", "--solver", solver, "--weights", weights, "--weights-layers", "fc7,fc8"]) == 0
    assert "copied 2 layer(s): fc7, fc8" in capsys.readouterr().err


def run_bad(argv, capsys, pattern):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("vggtool train: error: ") and re.search(pattern, last), last
    assert "Traceback" not in err


def test_bad_input_gives_one_clear_message(tmp_path, capsys):
    folder = tmp_path / "bad"
    good = write_solver(folder, max_iter=10, snapshot=5)
    assert main(["train", "--solver", good]) == 0
    capsys.readouterr()
    kept = sorted(os.listdir(folder))

    missing = folder / "missing.prototxt"
    missing.write_text('net: "nowhere.prototxt" base_lr: 0.1 lr_policy: "fixed"')
    run_bad(["train", "--solver", str(missing)], capsys, r"net file 'nowhere.prototxt' not found")
    base = SOLVER.format(net="net.prototxt", max_iter=5, snapshot=0, prefix=str(folder / "x"))
    for old, new, pattern in [("base_lr: 0.1", "base_lr: 0", r"base_lr must be > 0"),
                              ('lr_policy: "step"', 'lr_policy: "sometimes"', r"unknown lr_policy 'sometimes'"),
                              ("momentum: 0.9", 'type: "SGDX"', r"unknown solver type 'SGDX'")]:
        assert old in base
        (folder / "s2.prototxt").write_text(base.replace(old, new))
        run_bad(["train", "--solver", str(folder / "s2.prototxt")], capsys, pattern)
    # weights of another net
    other = Net(prototxt.parse_net_text(TINY_NET.replace("num_output: 6", "num_output: 9")), phase="TRAIN")
    other.save(str(tmp_path / "other.caffemodel"))
    run_bad(["train", "--solver", good, "--weights", str(tmp_path / "other.caffemodel")], capsys,
            r"cannot copy param 0 of layer 'ip1': shape mismatch.*rename the layer")
    # corrupt solver state
    corrupt = tmp_path / "corrupt.solverstate"
    corrupt.write_bytes(b"\xff\xff\xff garbage")
    run_bad(["train", "--solver", good, "--snapshot", str(corrupt)], capsys, r"corrupt.solverstate")
    run_bad(["train", "--solver", good, "--snapshot", str(folder / "snap_iter_5.solverstate"),
             "--weights", str(tmp_path / "other.caffemodel")], capsys, r"not both")
    run_bad(["train", "--solver", good, "--devices", "cpu:2"], capsys, r"multi-device training")
    (folder / "s2.prototxt").write_text(base.replace(str(folder / "x"), str(folder / "nodir" / "x"))
                                        .replace("snapshot: 0", "snapshot: 2"))
    run_bad(["train", "--solver", str(folder / "s2.prototxt")], capsys, r"cannot write to snapshot prefix")
    assert sorted(os.listdir(folder)) == sorted(kept + ["missing.prototxt", "s2.prototxt"])


def test_divergence_exits_1_and_keeps_the_last_good_snapshot(tmp_path, capsys):
    net = TINY_NET.replace('min: -1 max: 1', 'min: 1000 max: 2000')
    solver = write_solver(tmp_path / "nan", max_iter=50, snapshot=1, net_text=net, extra="clip_gradients: -1\n")
    text = open(solver).read().replace("base_lr: 0.1", "base_lr: 1e25")
    open(solver, "w").write(text)
    rc = main(["train", "--solver", solver])
    err = capsys.readouterr().err
    assert rc == 1
    m = re.search(r"vggtool train: error: iteration (\d+): the (loss|gradient) is not finite \(first non-finite "
                  r"values in layer '(\w+)'\)", err)
    assert m, err[-2000:]
    bad_iter = int(m.group(1))
    files = sorted(os.listdir(tmp_path / "nan"))
    # The weights of iteration bad_iter gave the non-finite loss: no snapshot of them, as the message says.
    assert not any(f.startswith((f"snap_iter_{bad_iter}.", f"snap_iter_{bad_iter + 1}.")) for f in files), files
    for f in files:
        if f.endswith(".caffemodel"):
            net_ = Net(str(tmp_path / "nan" / "net.prototxt"), str(tmp_path / "nan" / f))
            assert all(np.isfinite(p.data).all() for ps in net_.params.values() for p in ps)


def test_divergence_at_the_end_of_a_step_writes_no_snapshot_of_the_bad_weights(tmp_path):
    """Solver.step(n) ending at the iteration whose weights give a non-finite loss: the snapshot due there
    is not written (the loss is checked first), and the error says so."""
    from vggtool.solvers import Solver, TrainingDiverged

    net = TINY_NET.replace('min: -1 max: 1', 'min: 1000 max: 2000')
    solver = write_solver(tmp_path / "a", max_iter=50, snapshot=1, net_text=net, extra="clip_gradients: -1\n")
    text = open(solver).read().replace("base_lr: 0.1", "base_lr: 1e8")
    open(solver, "w").write(text)
    with pytest.raises(TrainingDiverged) as e:
        Solver(solver).step(50)
    bad_iter = int(re.search(r"iteration (\d+)", str(e.value)).group(1))
    assert bad_iter > 1
    assert f"snap_iter_{bad_iter - 1}.caffemodel" in os.listdir(tmp_path / "a")
    assert f"snap_iter_{bad_iter}.caffemodel" not in os.listdir(tmp_path / "a")
    for f in os.listdir(tmp_path / "a"):
        if f.startswith("snap"):
            os.remove(tmp_path / "a" / f)
    with pytest.raises(TrainingDiverged, match=rf"iteration {bad_iter}: the loss is not finite.*No snapshot"):
        Solver(solver).step(bad_iter)
    files = os.listdir(tmp_path / "a")
    assert f"snap_iter_{bad_iter - 1}.caffemodel" in files
    assert not any(f.startswith(f"snap_iter_{bad_iter}.") for f in files), files


def test_sigint_snapshots_and_exits_cleanly(tmp_path):
    solver = write_solver(tmp_path / "sig", max_iter=10**7, snapshot=0)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "vggtool", "train", "--solver", solver],
                            cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if "Iteration 10," in line:
                break
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(seen) + rest
    assert proc.returncode == 0, err[-2000:]
    assert "Optimization stopped early." in err
    m = re.search(r"Snapshotting solver state to binary proto file (\S+)", err)
    assert m and os.path.exists(m.group(1))
    state = caffe_pb2.SolverState.FromString(open(m.group(1), "rb").read())
    assert state.iter >= 10 and os.path.exists(state.learned_net)


def test_sighup_snapshots_and_goes_on(tmp_path):
    solver = write_solver(tmp_path / "hup", max_iter=10**7, snapshot=0)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "vggtool", "train", "--solver", solver, "-sigint_effect=none"],
                            cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    try:
        lines, sent_int = [], False
        for line in proc.stderr:
            lines.append(line)
            if "Iteration 10," in line and not any("Snapshotting" in x for x in lines):
                proc.send_signal(signal.SIGHUP)
            if "Snapshotting solver state" in line and not sent_int:
                proc.send_signal(signal.SIGINT)  # sigint_effect none: ignored
                sent_int = True
                at = len(lines)
            if sent_int and len(lines) > at + 40:
                break
        assert proc.poll() is None, "".join(lines)[-2000:]  # still training
        proc.terminate()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(lines)
    m = re.search(r"Snapshotting to binary proto file (\S+_iter_(\d+)\.caffemodel)", err)
    assert m and int(m.group(2)) >= 11 and os.path.exists(m.group(1))
    assert "Optimization stopped early." not in err


def test_get_solver_api_and_multiple_test_nets(tmp_path, capsys, monkeypatch):
    import vggtool
    folder = tmp_path / "api"
    net = TINY_NET.replace('include { phase: TEST }', 'include { phase: TEST stage: "val" }')
    path = write_solver(folder, max_iter=4, snapshot=0, net_text=net,
                        extra='test_iter: 3\ntest_state { }\ntest_state { stage: "val" }\n'
                              'test_compute_loss: true\naverage_loss: 2\n')
    monkeypatch.chdir(tmp_path)  # net path relative to the solver's folder, not the cwd
    solver = vggtool.get_solver(path)
    assert len(solver.test_nets) == 2
    assert "accuracy" not in solver.test_nets[0].outputs and "accuracy" in solver.test_nets[1].outputs
    # test nets share the train net's weights
    solver.step(3)
    assert solver.iter == 3
    np.testing.assert_array_equal(solver.test_nets[1].params["ip1"][0].data, solver.net.params["ip1"][0].data)
    err = capsys.readouterr().err
    assert "Testing net (#1)" in err and "Test loss: " in err
    solver.solve()
    assert solver.iter == 4 and os.path.exists(str(folder / "snap_iter_4.solverstate"))
