"""Caffe's update rules (src/caffe/solvers/*_solver.cpp), one class per solver `type` string.

Each rule turns a parameter's (clipped, normalised, regularised) gradient `g` = blob.diff into the update
value, in place in blob.diff, keeping its history arrays; the solver then applies w -= diff. All math is
`xp` code on the parameter's device. `rate` is the global rate; local_rate = rate * lr_mult.
"""
import math

RULES = {}


def rule(name):
    def decorate(cls):
        cls.type_name = name
        RULES[name] = cls
        return cls
    return decorate


class UpdateRule:
    """Base: `history_per_param` history arrays per learnable parameter (Caffe saves them in that order:
    all params' first history, then all params' second history)."""

    history_per_param = 1

    def __init__(self, param):
        self.param = param

    def check(self, source):
        pass

    def update(self, g, hist, local_rate, it):
        """Turn g (the diff, modified in place) into the update value. hist: this param's history arrays."""
        raise NotImplementedError


@rule("SGD")
class SGD(UpdateRule):
    # h = momentum * h + local_rate * g; update = h
    def update(self, g, hist, local_rate, it):
        h = hist[0]
        h *= self.param.momentum
        h += local_rate * g
        g[...] = h


@rule("Nesterov")
class Nesterov(UpdateRule):
    # h_new = momentum * h + local_rate * g; update = (1 + momentum) * h_new - momentum * h
    def update(self, g, hist, local_rate, it):
        h, m = hist[0], self.param.momentum
        old = h.copy()
        h *= m
        h += local_rate * g
        g[...] = (1 + m) * h - m * old


@rule("AdaGrad")
class AdaGrad(UpdateRule):
    # h += g^2; update = local_rate * g / (sqrt(h) + delta)
    def check(self, source):
        from ..errors import VggtoolError
        if self.param.momentum != 0:
            raise VggtoolError(f"{source}: momentum must be 0 for AdaGrad (Caffe's rule), got {self.param.momentum}")

    def update(self, g, hist, local_rate, it):
        xp = _xp(g)
        h = hist[0]
        h += g * g
        g *= local_rate / (xp.sqrt(h) + self.param.delta)


@rule("RMSProp")
class RMSProp(UpdateRule):
    # h = rms_decay * h + (1 - rms_decay) * g^2; update = local_rate * g / (sqrt(h) + delta)
    def check(self, source):
        from ..errors import VggtoolError
        if self.param.momentum != 0:
            raise VggtoolError(f"{source}: momentum must be 0 for RMSProp (Caffe's rule), got {self.param.momentum}")
        if not 0 <= self.param.rms_decay <= 1:
            raise VggtoolError(f"{source}: rms_decay must be in [0, 1], got {self.param.rms_decay}")

    def update(self, g, hist, local_rate, it):
        xp = _xp(g)
        h, d = hist[0], self.param.rms_decay
        h *= d
        h += (1 - d) * (g * g)
        g *= local_rate / (xp.sqrt(h) + self.param.delta)


@rule("AdaDelta")
class AdaDelta(UpdateRule):
    # hg = m * hg + (1-m) * g^2; u = g * sqrt((hu + delta) / (hg + delta)); hu = m * hu + (1-m) * u^2;
    # update = local_rate * u
    history_per_param = 2

    def update(self, g, hist, local_rate, it):
        xp = _xp(g)
        hg, hu = hist
        m, delta = self.param.momentum, self.param.delta
        hg *= m
        hg += (1 - m) * (g * g)
        g *= xp.sqrt((hu + delta) / (hg + delta))
        hu *= m
        hu += (1 - m) * (g * g)
        g *= local_rate


@rule("Adam")
class Adam(UpdateRule):
    # m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; t = it + 1;
    # update = local_rate * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + delta)
    history_per_param = 2

    def update(self, g, hist, local_rate, it):
        xp = _xp(g)
        m, v = hist
        b1, b2 = self.param.momentum, self.param.momentum2
        t = it + 1
        correction = math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * (g * g)
        g[...] = (local_rate * correction) * m / (xp.sqrt(v) + self.param.delta)


def _xp(a):
    from ..backend import get_array_module
    return get_array_module(a)
