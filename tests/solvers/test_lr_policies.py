"""Learning-rate policies against Caffe's formulas, and the plateau policy on scripted test accuracies."""
import math

import numpy as np
import pytest
from google.protobuf import text_format

from vggtool.io import prototxt
from vggtool.errors import VggtoolError
from vggtool.proto import caffe_pb2
from vggtool.solvers import Solver, lr_policy
from vggtool.solvers.glog import GLog
from vggtool.solvers.lr_policy import Plateau, learning_rate


def sp(text):
    return text_format.Parse(text, caffe_pb2.SolverParameter())


ITERS = [0, 1, 7, 99, 100, 101, 250, 999]


@pytest.mark.parametrize("text, formula", [
    ('lr_policy: "fixed" base_lr: 0.01', lambda it: 0.01),
    ('lr_policy: "step" base_lr: 0.01 gamma: 0.1 stepsize: 100', lambda it: 0.01 * 0.1 ** (it // 100)),
    ('lr_policy: "exp" base_lr: 0.01 gamma: 0.99', lambda it: 0.01 * 0.99 ** it),
    ('lr_policy: "inv" base_lr: 0.01 gamma: 0.0001 power: 0.75', lambda it: 0.01 * (1 + 0.0001 * it) ** -0.75),
    ('lr_policy: "poly" base_lr: 0.01 power: 2 max_iter: 1000', lambda it: 0.01 * (1 - it / 1000) ** 2),
    ('lr_policy: "sigmoid" base_lr: 0.01 gamma: -0.05 stepsize: 100',
     lambda it: 0.01 / (1 + math.exp(0.05 * (it - 100)))),
])
def test_policy_formula(text, formula):
    param = sp(text)
    # float32 fields: compare with the formula evaluated on the stored float32 values
    for it in ITERS:
        assert learning_rate(param, it) == pytest.approx(formula(it), rel=1e-5)


def test_multistep_advances_one_step_per_stepvalue():
    param = sp('lr_policy: "multistep" base_lr: 0.1 gamma: 0.5 stepvalue: 3 stepvalue: 5 stepvalue: 9')
    step, rates = 0, []
    for it in range(12):
        step = lr_policy.advance_multistep(param, it, step)
        rates.append(learning_rate(param, it, step))
    expected = [0.1 * 0.5 ** sum(it >= v for v in (3, 5, 9)) for it in range(12)]
    np.testing.assert_allclose(rates, expected, rtol=1e-6)


def test_policy_checks():
    with pytest.raises(VggtoolError, match="unknown lr_policy 'cosine'"):
        lr_policy.check_policy(sp('lr_policy: "cosine"'))
    with pytest.raises(VggtoolError, match="lr_policy is not set"):
        lr_policy.check_policy(sp('base_lr: 1'))
    with pytest.raises(VggtoolError, match="positive stepsize"):
        lr_policy.check_policy(sp('lr_policy: "step"'))
    with pytest.raises(VggtoolError, match="positive max_iter"):
        lr_policy.check_policy(sp('lr_policy: "poly"'))


def test_plateau_scripted_accuracies():
    param = sp('lr_policy: "plateau" base_lr: 0.01 gamma: 0.1 plateau_patience: 2 plateau_max_drops: 2 '
               'plateau_threshold: 0.005')
    p = Plateau(param)
    #        first  better  +0.004(no) same(no: drop) better  no    no(drop)  no   no   no (max drops reached)
    accs = [0.10, 0.20, 0.204, 0.20, 0.30, 0.30, 0.29, 0.1, 0.1, 0.1]
    drops = []
    for a in accs:
        p.observe(a)
        drops.append(p.drops)
    assert drops == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    assert learning_rate(param, 0, 0, p.drops) == pytest.approx(0.01 * 0.1 ** 2)
    assert p.best == np.float32(0.30)


def test_plateau_min_mode_for_losses():
    param = sp('lr_policy: "plateau" base_lr: 1 gamma: 0.5 plateau_mode: MIN plateau_patience: 1')
    p = Plateau(param)
    for v in [5.0, 4.0, 4.5, 3.0, 3.0]:
        p.observe(v)
    assert p.drops == 2 and p.best == np.float32(3.0)


@pytest.mark.parametrize("mode, values, start, drops", [
    # MAX: at chance (~0.1) for five rounds, no drop; the best passes 0.2 at round 6, then two flat rounds drop
    ("MAX", [0.11, 0.10, 0.09, 0.10, 0.12, 0.25, 0.24, 0.25], 0.2, [0, 0, 0, 0, 0, 0, 0, 1]),
    # the same rounds without plateau_start: flat rounds at chance already drop
    ("MAX", [0.11, 0.10, 0.09, 0.10, 0.12, 0.25, 0.24, 0.25], None, [0, 0, 1, 1, 1, 1, 1, 2]),
    # MIN (a loss): rounds count once the best loss is below 2.0
    ("MIN", [2.31, 2.30, 2.31, 2.32, 1.9, 1.95, 1.95], 2.0, [0, 0, 0, 0, 0, 0, 1]),
])
def test_plateau_start_holds_the_count_until_the_net_has_learned(mode, values, start, drops):
    """A net still at chance is not on a plateau: with plateau_start no round counts until the best value
    is beyond it, so the rate cannot drop (and freeze the net) before it has left chance."""
    text = f'lr_policy: "plateau" base_lr: 1 gamma: 0.5 plateau_mode: {mode} plateau_patience: 2'
    p = Plateau(sp(text + ("" if start is None else f" plateau_start: {start}")))
    seen = []
    for v in values:
        p.observe(v)
        seen.append(p.drops)
    assert seen == drops


def test_plateau_state_round_trip():
    param = sp('lr_policy: "plateau" base_lr: 1 gamma: 0.5 plateau_patience: 3')
    p = Plateau(param)
    for v in [0.5, 0.6, 0.55, 0.58]:
        p.observe(v)
    state = caffe_pb2.SolverState()
    p.save(state)
    q = Plateau(param)
    q.restore(caffe_pb2.SolverState.FromString(state.SerializeToString()))
    assert (q.best, q.has_best, q.bad_rounds, q.drops) == (p.best, p.has_best, p.bad_rounds, p.drops)


NET = """
name: "plateau"
layer { name: "d" type: "DummyData" top: "x" top: "y"
  dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 } data_filler { type: "constant" value: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "s" inner_product_param { num_output: 2 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "y" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "s" bottom: "y" top: "accuracy" include { phase: TEST } }
"""


def test_plateau_drives_the_solver_rate(monkeypatch, tmp_path):
    """The solver feeds each test round of the watched net to the policy (scripted test values)."""
    param = sp('lr_policy: "plateau" base_lr: 0.1 gamma: 0.1 plateau_patience: 1 test_iter: 1 '
               'test_interval: 2 max_iter: 12 random_seed: 1 display: 1 snapshot_after_train: false')
    param.net_param.CopyFrom(prototxt.parse_net_text(NET))
    solver = Solver(param, log=GLog(stream=False))
    script = iter([0.5, 0.6, 0.6, 0.7, 0.7, 0.7, 0.7])
    real_test = solver.test

    def scripted(i):
        scores = real_test(i)
        scores["accuracy"] = next(script)
        return scores
    monkeypatch.setattr(solver, "test", scripted)
    rates = []
    for _ in range(12):
        solver.step(1)
        rates.append(solver.learning_rate())
    # test rounds at iterations 0,2,4,..: values 0.5, 0.6, 0.6(drop), 0.7, 0.7(drop), 0.7(drop), ...
    assert solver.plateau.drops == 3
    np.testing.assert_allclose(rates[:4], [0.1, 0.1, 0.1, 0.1], rtol=1e-6)
    np.testing.assert_allclose(rates[4:6], [0.01, 0.01], rtol=1e-6)
    np.testing.assert_allclose(rates[-1], 0.1 * 0.1 ** 3, rtol=1e-6)
    # the plateau state travels in the .solverstate
    solver.prefix = str(tmp_path / "p")
    _, state = solver.snapshot()
    again = Solver(param, log=GLog(stream=False))
    again.restore(state)
    assert (again.plateau.drops, again.plateau.best, again.plateau.bad_rounds, again.iter) == \
        (3, np.float32(0.7), solver.plateau.bad_rounds, 12)
    assert again.learning_rate() == solver.learning_rate()


def test_plateau_needs_the_watched_output():
    param = sp('lr_policy: "plateau" base_lr: 0.1 gamma: 0.1 test_iter: 1 test_interval: 2 '
               'plateau_output: "top5"')
    param.net_param.CopyFrom(prototxt.parse_net_text(NET))
    with pytest.raises(VggtoolError, match="plateau_output 'top5' is not an output of test net #0"):
        Solver(param, log=GLog(stream=False))
