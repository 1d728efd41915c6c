"""vggtool.pycaffe's solvers: each class runs its own update rule (whatever the file's type says, as in
Caffe), get_solver picks the class from `type`, lr, callbacks, share_weights, snapshot/restore."""
import numpy as np
import pytest

import vggtool.pycaffe as caffe
from vggtool.solvers import Solver

NET = """name: "reg"
layer { name: "data" type: "DummyData" top: "data" top: "target"
  dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 }
                     data_filler { type: "gaussian" } data_filler { type: "gaussian" } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "fc" bottom: "target" top: "loss" }
"""

SOLVER = """net: "net.prototxt"
base_lr: 0.05
lr_policy: "step"
gamma: 0.5
stepsize: 2
momentum: {momentum}
max_iter: 6
random_seed: 3
snapshot_prefix: "snap"
type: "{type}"
"""


def write(tmp_path, type_="SGD", momentum=0.9):
    (tmp_path / "net.prototxt").write_text(NET)
    path = tmp_path / f"solver_{type_}.prototxt"
    path.write_text(SOLVER.format(type=type_, momentum=momentum))
    return str(path)


CLASSES = [(caffe.SGDSolver, "SGD", 0.9), (caffe.NesterovSolver, "Nesterov", 0.9),
           (caffe.AdaGradSolver, "AdaGrad", 0), (caffe.RMSPropSolver, "RMSProp", 0),
           (caffe.AdaDeltaSolver, "AdaDelta", 0.9), (caffe.AdamSolver, "Adam", 0.9)]


@pytest.mark.parametrize("cls,type_,momentum", CLASSES)
def test_each_class_runs_its_own_rule(tmp_path, monkeypatch, cls, type_, momentum):
    monkeypatch.chdir(tmp_path)
    # the file says SGD (with the momentum this rule accepts); the class decides, as in Caffe
    solver = cls(write(tmp_path, "SGD", momentum))
    assert solver.param.type == type_
    reference = Solver(write(tmp_path, type_, momentum))
    solver.step(3)
    reference.step(3)
    np.testing.assert_array_equal(solver.net.params["fc"][0].data, reference.net.params["fc"][0].data)
    assert solver.iter == 3


def test_get_solver_picks_the_class_from_type(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    solver = caffe.get_solver(write(tmp_path, "Adam"))
    assert type(solver) is caffe.AdamSolver
    assert isinstance(solver.net, caffe.Net)  # solver nets have pycaffe's interface
    with pytest.raises(RuntimeError, match="Could not open file"):
        caffe.get_solver(str(tmp_path / "none.prototxt"))


def test_lr_follows_the_policy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    solver = caffe.SGDSolver(write(tmp_path))
    rates = []
    for _ in range(5):
        rates.append(solver.lr)
        solver.step(1)
    assert rates == pytest.approx([0.05, 0.05, 0.025, 0.025, 0.0125])


def test_callbacks_run_in_caffes_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    solver = caffe.SGDSolver(write(tmp_path))
    events = []
    solver.add_callback(lambda: events.append(("start", solver.iter)),
                        lambda: events.append(("ready", solver.iter,
                                               float(np.abs(solver.net.params["fc"][0].diff).sum()) > 0)))
    solver.step(2)
    assert events == [("start", 0), ("ready", 0, True), ("start", 1), ("ready", 1, True)]
    solver.add_callback(caffe.NCCL(solver, b"uid"))  # a build without NCCL: accepted, does nothing
    solver.step(1)


def test_share_weights_and_test_nets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    solver = caffe.SGDSolver(write(tmp_path))
    other = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST)
    solver.share_weights(other)
    solver.step(2)
    np.testing.assert_array_equal(other.params["fc"][0].data, solver.net.params["fc"][0].data)
    assert solver.test_nets == []


def test_snapshot_restore_and_solve(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    solver = caffe.SGDSolver(write(tmp_path))
    solver.step(2)
    solver.snapshot()
    assert (tmp_path / "snap_iter_2.caffemodel").exists() and (tmp_path / "snap_iter_2.solverstate").exists()
    solver.step(2)
    after_four = solver.net.params["fc"][0].data.copy()
    again = caffe.SGDSolver(write(tmp_path))
    again.restore("snap_iter_2.solverstate")
    assert again.iter == 2
    again.step(2)
    np.testing.assert_array_equal(again.net.params["fc"][0].data, after_four)
    fresh = caffe.SGDSolver(write(tmp_path))
    fresh.solve("snap_iter_2.solverstate")
    assert fresh.iter == 6


def mlp_text(widths):
    """DummyData -> InnerProduct + ReLU per width -> InnerProduct (2) -> EuclideanLoss."""
    out = ['name: "mlp"', 'layer { name: "data" type: "DummyData" top: "data" top: "target" dummy_data_param { '
           'shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 } data_filler { type: "gaussian" } '
           'data_filler { type: "gaussian" } } }']
    bottom = "data"
    for k, n in enumerate(list(widths) + [2], start=1):
        out.append(f'layer {{ name: "ip{k}" type: "InnerProduct" bottom: "{bottom}" top: "ip{k}" inner_product_param '
                   f'{{ num_output: {n} weight_filler {{ type: "gaussian" std: 0.5 }} '
                   'bias_filler { type: "gaussian" std: 0.5 } } }')
        if k <= len(widths):
            out.append(f'layer {{ name: "relu{k}" type: "ReLU" bottom: "ip{k}" top: "ip{k}" }}')
        bottom = f"ip{k}"
    out.append(f'layer {{ name: "loss" type: "EuclideanLoss" bottom: "{bottom}" bottom: "target" top: "loss" }}')
    return "\n".join(out) + "\n"


def test_intermediate_blobs_are_readable_after_a_step(tmp_path, monkeypatch):
    """As in Caffe, after solver.step() a pycaffe script reads the train net's intermediate blobs: their data
    is the forward's and their diff the backward's (vggtool's own Solver pools these bytes instead)."""
    monkeypatch.chdir(tmp_path)
    widths = (5, 6, 5, 4)
    (tmp_path / "net.prototxt").write_text(mlp_text(widths))
    path = tmp_path / "solver.prototxt"
    path.write_text(SOLVER.format(type="SGD", momentum=0.9))
    solver = caffe.SGDSolver(str(path))
    names = [f"ip{k}" for k in range(1, len(widths) + 2)]
    weights = [[p.data.astype(np.float64) for p in solver.net.params[name]] for name in names]
    solver.step(1)  # the forward and backward ran with the weights above, then the update changed them
    blobs = solver.net.blobs
    h, outs = blobs["data"].data.astype(np.float64), []
    for k, (w, b) in enumerate(weights):
        h = h @ w.T + b
        h = np.maximum(h, 0) if k < len(widths) else h
        outs.append(h)
    d = (outs[-1] - blobs["target"].data) / h.shape[0]  # EuclideanLoss: sum of squares / (2 N)
    diffs = [d]
    for k in range(len(widths), 0, -1):
        d = (d @ weights[k][0]) * (outs[k - 1] > 0)
        diffs.insert(0, d)
    for name, out, diff in zip(names, outs, diffs):
        np.testing.assert_allclose(blobs[name].data, out, rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(blobs[name].diff, diff, rtol=1e-5, atol=1e-6, err_msg=name)
