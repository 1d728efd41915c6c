"""Learning-rate policies: Caffe's seven (SGDSolver::GetLearningRate) plus vggtool's "plateau".

Caffe's formulas, with it = the current iteration:
  fixed      base_lr
  step       base_lr * gamma ^ floor(it / stepsize)
  exp        base_lr * gamma ^ it
  inv        base_lr * (1 + gamma * it) ^ (-power)
  multistep  base_lr * gamma ^ (number of stepvalue entries already passed)
  poly       base_lr * (1 - it / max_iter) ^ power
  sigmoid    base_lr / (1 + exp(-gamma * (it - stepsize)))
  plateau    base_lr * gamma ^ drops, a drop when a watched test output stops improving (the paper's
             "divide by 10 when validation accuracy stops improving").
"""
import math

import numpy as np

from ..errors import VggtoolError
from ..proto import caffe_pb2

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid", "plateau")


def check_policy(param, source="solver"):
    """Raise a VggtoolError naming the field when the policy lacks what its formula needs."""
    policy = param.lr_policy
    if not param.HasField("lr_policy"):
        raise VggtoolError(f"{source}: lr_policy is not set (one of: {', '.join(POLICIES)})")
    if policy not in POLICIES:
        raise VggtoolError(f"{source}: unknown lr_policy '{policy}' (known: {', '.join(POLICIES)})")
    if policy == "step" and param.stepsize <= 0:
        raise VggtoolError(f"{source}: lr_policy 'step' needs a positive stepsize")
    if policy == "poly" and param.max_iter <= 0:
        raise VggtoolError(f"{source}: lr_policy 'poly' needs a positive max_iter")
    if policy == "multistep" and list(param.stepvalue) != sorted(param.stepvalue):
        raise VggtoolError(f"{source}: multistep stepvalue entries must increase, got {list(param.stepvalue)}")
    if policy == "plateau":
        if param.plateau_patience < 1:
            raise VggtoolError(f"{source}: plateau_patience must be >= 1, got {param.plateau_patience}")
        if param.plateau_max_drops < 0:
            raise VggtoolError(f"{source}: plateau_max_drops must be >= 0, got {param.plateau_max_drops}")


def advance_multistep(param, it, current_step):
    """Caffe's multistep bookkeeping: move past at most one stepvalue per call (called every iteration)."""
    if current_step < len(param.stepvalue) and it >= param.stepvalue[current_step]:
        return current_step + 1
    return current_step


def learning_rate(param, it, current_step=0, plateau_drops=0):
    """The rate at iteration `it` (current_step: multistep's counter, plateau_drops: plateau's)."""
    policy, base, gamma, power = param.lr_policy, param.base_lr, param.gamma, param.power
    if policy == "fixed":
        return base
    if policy == "step":
        return base * gamma ** (it // param.stepsize)
    if policy == "exp":
        return base * gamma ** it
    if policy == "inv":
        return base * (1.0 + gamma * it) ** (-power)
    if policy == "multistep":
        return base * gamma ** current_step
    if policy == "poly":
        return base * (1.0 - it / param.max_iter) ** power
    if policy == "sigmoid":
        return base * (1.0 / (1.0 + math.exp(-gamma * (it - param.stepsize))))
    if policy == "plateau":
        return base * gamma ** plateau_drops
    raise VggtoolError(f"unknown lr_policy '{policy}'")


class Plateau:
    """State of the plateau policy; saved in SolverState's plateau_* fields.

    After each test round of the watched net, `observe(value)` compares the watched output with the best so
    far. An improvement is a change beyond `plateau_threshold` in the good direction (MAX: larger is better).
    After `plateau_patience` consecutive rounds without one, the rate drops by `gamma` (at most
    `plateau_max_drops` times) and the count restarts. With `plateau_start`, rounds count only once the best
    value is beyond it (a net still at chance is not on a plateau). Values are kept as float32 like the saved state, so a
    resumed run takes exactly the same decisions.
    """

    def __init__(self, param):
        self.param = param
        self.best = np.float32(0)
        self.has_best = False
        self.bad_rounds = 0
        self.drops = 0

    def observe(self, value):
        """Record one test round; return True when the rate dropped."""
        p = self.param
        value = np.float32(value)
        threshold = np.float32(p.plateau_threshold)
        if not self.has_best:
            self.best, self.has_best, self.bad_rounds = value, True, 0
            return False
        if p.plateau_mode == caffe_pb2.SolverParameter.MIN:
            improved = value < self.best - threshold
        else:
            improved = value > self.best + threshold
        if improved:
            self.best, self.bad_rounds = value, 0
            return False
        if not self.started():
            return False
        self.bad_rounds += 1
        if self.bad_rounds >= p.plateau_patience and self.drops < p.plateau_max_drops:
            self.drops += 1
            self.bad_rounds = 0
            return True
        return False

    def started(self):
        """Whether rounds count towards a drop: always without plateau_start, else once the best value so far
        is beyond it (derived from `best`, so the saved state needs nothing more)."""
        p = self.param
        if not p.HasField("plateau_start"):
            return True
        start = np.float32(p.plateau_start)
        return self.best < start if p.plateau_mode == caffe_pb2.SolverParameter.MIN else self.best > start

    def save(self, state):
        state.plateau_best = float(self.best)
        state.plateau_has_best = self.has_best
        state.plateau_bad_rounds = self.bad_rounds
        state.plateau_drops = self.drops

    def restore(self, state):
        self.best = np.float32(state.plateau_best)
        self.has_best = bool(state.plateau_has_best)
        self.bad_rounds = int(state.plateau_bad_rounds)
        self.drops = int(state.plateau_drops)
