"""Solver update rules against Caffe's formulas, recomputed independently in plain NumPy (float64)."""
import math

import numpy as np
import pytest
from google.protobuf import text_format

from vggtool.io import prototxt
from vggtool.errors import VggtoolError
from vggtool.proto import caffe_pb2
from vggtool.solvers import Solver, TrainingDiverged
from vggtool.solvers.glog import GLog

N, D, C = 6, 4, 3

# x, label -> InnerProduct "ip" (W: lr_mult 1, decay_mult 1; b: lr_mult 2, decay_mult 0) -> softmax loss
LSQ_NET = """
name: "lsq"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: %d dim: %d } } }
layer { name: "y" type: "Input" top: "y" input_param { shape { dim: %d } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "s"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: %d weight_filler { type: "gaussian" std: 0.5 }
                        bias_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "y" top: "loss" }
""" % (N, D, N, C)


def make_solver(extra, dtype=np.float64, net=LSQ_NET, quiet=True):
    text = 'base_lr: 0.1 lr_policy: "step" stepsize: 2 gamma: 0.5 max_iter: 100 random_seed: 3 ' \
           'snapshot_after_train: false ' + extra
    param = text_format.Merge(text, caffe_pb2.SolverParameter())  # later fields override
    param.net_param.CopyFrom(prototxt.parse_net_text(net))
    return Solver(param, dtype=dtype, log=GLog(stream=not quiet))


def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(N, D)), rng.integers(0, C, size=N).astype(np.float64)


def grads(W, b, x, y):
    """Softmax-loss gradient of the InnerProduct weights, by hand."""
    s = x @ W.T + b
    p = np.exp(s - s.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(N), y.astype(int)] -= 1
    ds = p / N
    return ds.T @ x, ds.sum(0)


def reference(kind, param, W, b, x, y, iters):
    """Caffe's SGDSolver::ApplyUpdate sequence, re-derived in NumPy."""
    params = [W.copy(), b.copy()]
    lr_mult, decay_mult = [1.0, 2.0], [1.0, 0.0]
    hist = [[np.zeros_like(p) for p in params] for _ in range(2)]
    for it in range(iters):
        g = list(grads(params[0], params[1], x, y))
        g = [gi * param.iter_size for gi in g]  # iter_size identical micro-batches accumulate
        rate = param.base_lr * param.gamma ** (it // param.stepsize)
        if param.clip_gradients >= 0:
            norm = math.sqrt(sum((gi ** 2).sum() for gi in g))
            if norm > param.clip_gradients:
                g = [gi * (param.clip_gradients / norm) for gi in g]
        for i in range(2):
            gi = g[i] / param.iter_size
            decay = param.weight_decay * decay_mult[i]
            if decay:
                gi = gi + decay * (params[i] if param.regularization_type == "L2" else np.sign(params[i]))
            lr = rate * lr_mult[i]
            h, h2 = hist[0][i], hist[1][i]
            m, d = param.momentum, param.delta
            if kind == "SGD":
                h[...] = m * h + lr * gi
                u = h.copy()
            elif kind == "Nesterov":
                old = h.copy()
                h[...] = m * h + lr * gi
                u = (1 + m) * h - m * old
            elif kind == "AdaGrad":
                h += gi ** 2
                u = lr * gi / (np.sqrt(h) + d)
            elif kind == "RMSProp":
                h[...] = param.rms_decay * h + (1 - param.rms_decay) * gi ** 2
                u = lr * gi / (np.sqrt(h) + d)
            elif kind == "AdaDelta":
                h[...] = m * h + (1 - m) * gi ** 2
                step = gi * np.sqrt((h2 + d) / (h + d))
                h2[...] = m * h2 + (1 - m) * step ** 2
                u = lr * step
            elif kind == "Adam":
                t = it + 1
                h[...] = m * h + (1 - m) * gi
                h2[...] = param.momentum2 * h2 + (1 - param.momentum2) * gi ** 2
                u = lr * math.sqrt(1 - param.momentum2 ** t) / (1 - m ** t) * h / (np.sqrt(h2) + d)
            params[i] = params[i] - u
    return params


CASES = {
    "sgd_momentum_l2": ("SGD", 'momentum: 0.9 weight_decay: 0.01'),
    "sgd_l1": ("SGD", 'momentum: 0.5 weight_decay: 0.02 regularization_type: "L1"'),
    "sgd_iter_size": ("SGD", 'momentum: 0.9 weight_decay: 0.01 iter_size: 3'),
    "sgd_clip": ("SGD", 'momentum: 0.9 clip_gradients: 0.05 iter_size: 2'),
    "nesterov": ("Nesterov", 'momentum: 0.9 weight_decay: 0.01'),
    "adagrad": ("AdaGrad", 'weight_decay: 0.01 delta: 1e-6'),
    "rmsprop": ("RMSProp", 'rms_decay: 0.9 weight_decay: 0.01 delta: 1e-6'),
    "adadelta": ("AdaDelta", 'momentum: 0.95 delta: 1e-6 weight_decay: 0.01'),
    "adam": ("Adam", 'momentum: 0.9 momentum2: 0.999 delta: 1e-8 weight_decay: 0.01'),
    "adam_deprecated_enum": ("Adam", 'solver_type: ADAM momentum: 0.9'),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_update_rule_matches_caffe_formula(case):
    kind, extra = CASES[case]
    type_field = "" if "solver_type" in extra else f'type: "{kind}" '
    solver = make_solver(type_field + extra)
    assert solver.param.type == kind
    x, y = data()
    net = solver.net
    net.blobs["x"].data = x
    net.blobs["y"].data = y
    W0, b0 = net.params["ip"][0].data.copy(), net.params["ip"][1].data.copy()
    iters = 5
    solver.step(iters)
    W, b = reference(kind, solver.param, W0, b0, x, y, iters)
    assert solver.iter == iters
    np.testing.assert_allclose(net.params["ip"][0].data, W, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(net.params["ip"][1].data, b, rtol=1e-9, atol=1e-12)
    assert not np.allclose(W, W0)


def test_clip_really_clips():
    """The clip case must take the clipping branch, or test_update_rule_matches_caffe_formula proves little."""
    x, y = data()
    solver = make_solver('type: "SGD"')
    gW, gb = grads(solver.net.params["ip"][0].data, solver.net.params["ip"][1].data, x, y)
    assert math.sqrt((gW ** 2).sum() + (gb ** 2).sum()) * 2 > 0.05


def test_frozen_param_does_not_move():
    net = LSQ_NET.replace("param { lr_mult: 2 decay_mult: 0 }", "param { lr_mult: 0 decay_mult: 0 }")
    solver = make_solver('type: "SGD" momentum: 0.9', net=net)
    x, y = data()
    solver.net.blobs["x"].data = x
    solver.net.blobs["y"].data = y
    b0 = solver.net.params["ip"][1].data.copy()
    solver.step(3)
    np.testing.assert_array_equal(solver.net.params["ip"][1].data, b0)


def test_bad_solver_settings_are_named():
    with pytest.raises(VggtoolError, match="base_lr"):
        make_solver('type: "SGD" base_lr: -1')
    with pytest.raises(VggtoolError, match="unknown solver type 'Foo'"):
        make_solver('type: "Foo"')
    with pytest.raises(VggtoolError, match="unknown lr_policy 'sometimes'"):
        make_solver('lr_policy: "sometimes"')
    with pytest.raises(VggtoolError, match="regularization_type"):
        make_solver('regularization_type: "L3"')
    with pytest.raises(VggtoolError, match="momentum must be 0 for AdaGrad"):
        make_solver('type: "AdaGrad" momentum: 0.9')


def test_divergence_stops_with_iteration_and_layer():
    solver = make_solver('type: "SGD" base_lr: 1e30', dtype=np.float32)
    x, y = data()
    solver.net.blobs["x"].data = x * 1e10
    solver.net.blobs["y"].data = y
    with pytest.raises(TrainingDiverged, match=r"iteration \d+: the (loss|gradient) is not finite.*layer '"):
        solver.step(20)


# DummyData (constant) -> ip1 -> ReLU -> Dropout (per-sample masks from seed+iteration) -> ip2 -> loss
RESUME_NET = """
name: "resume"
layer { name: "d" type: "DummyData" top: "x" top: "y"
  dummy_data_param { shape { dim: 4 dim: 5 } shape { dim: 4 }
    data_filler { type: "constant" value: 0.7 } data_filler { type: "constant" value: 1 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h"
  inner_product_param { num_output: 8 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu" type: "ReLU" bottom: "h" top: "h" }
layer { name: "drop" type: "Dropout" bottom: "h" top: "h" dropout_param { dropout_ratio: 0.5 } }
layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "s"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "y" top: "loss" }
"""


@pytest.mark.parametrize("extra", [
    'type: "Adam" momentum: 0.9 lr_policy: "multistep" stepvalue: 2 stepvalue: 5 iter_size: 2',
    'type: "SGD" momentum: 0.9 weight_decay: 0.001',
])
def test_resume_is_exact(tmp_path, extra):
    def fresh():
        s = make_solver(extra + f' snapshot_prefix: "{tmp_path}/r"', dtype=np.float32, net=RESUME_NET)
        return s
    straight = fresh()
    straight.step(8)
    first = fresh()
    first.step(4)
    model, state = first.snapshot()
    assert model.endswith("r_iter_4.caffemodel") and state.endswith("r_iter_4.solverstate")
    resumed = fresh()  # new weights initialisation: all of it must come from the snapshot
    resumed.restore(state)
    assert resumed.iter == 4 and resumed.current_step == first.current_step
    resumed.step(4)
    for name in ("ip1", "ip2"):
        for a, b in zip(straight.net.params[name], resumed.net.params[name]):
            np.testing.assert_array_equal(a.data, b.data)
    for a, b in zip(straight.history, resumed.history):
        np.testing.assert_array_equal(a, b)


RANDOM_DUMMY_NET = RESUME_NET.replace('data_filler { type: "constant" value: 0.7 }',
                                      'data_filler { type: "gaussian" std: 1 }')


def test_resume_with_random_dummy_data_is_exact(tmp_path):
    # DummyData refills its gaussian top every forward: the values must come from the iteration, not
    # from a stream that a resumed run would restart.
    assert RANDOM_DUMMY_NET != RESUME_NET

    def fresh():
        return make_solver(f'type: "SGD" momentum: 0.9 iter_size: 2 snapshot_prefix: "{tmp_path}/d"',
                           dtype=np.float32, net=RANDOM_DUMMY_NET)
    straight = fresh()
    straight.step(6)
    first = fresh()
    first.step(3)
    _, state = first.snapshot()
    resumed = fresh()
    resumed.net.forward()  # an extra forward before restoring must not shift the values either
    resumed.restore(state)
    resumed.step(3)
    for name in ("ip1", "ip2"):
        for a, b in zip(straight.net.params[name], resumed.net.params[name]):
            np.testing.assert_array_equal(a.data, b.data)
    x = straight.net.blobs["x"].data.copy()
    straight.step(1)
    assert not np.array_equal(straight.net.blobs["x"].data, x)  # refilled per iteration
    np.testing.assert_array_equal(straight.net.blobs["y"].data, np.ones(4))  # constant: unchanged


def test_restore_refuses_a_state_of_another_solver_type(tmp_path):
    s = make_solver(f'type: "SGD" snapshot_prefix: "{tmp_path}/x"', dtype=np.float32, net=RESUME_NET)
    _, state = s.snapshot()
    other = make_solver('type: "Adam"', dtype=np.float32, net=RESUME_NET)
    with pytest.raises(VggtoolError, match="history blob"):
        other.restore(state)
