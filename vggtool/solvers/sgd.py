"""Caffe's update rules (src/caffe/solvers/*_solver.cpp), one class per solver `type` string.

Each rule turns a parameter's (clipped, normalised, regularised) gradient `g` = blob.diff into the update
value, in place in blob.diff, keeping its history arrays; the solver then applies w -= diff. All math is
`xp` code on the parameter's device. `rate` is the global rate; local_rate = rate * lr_mult. On the CPU,
SGD with L2 (or no) weight decay runs as one C pass per parameter (vggtool.layers.kernels.sgd_update,
the same bits), where the C kernels are built.
"""
import math

from ..errors import VggtoolError
from ..layers import kernels

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

    def update(self, g, hist, local_rate, it, tmp):
        """Turn g (the diff, modified in place) into the update value. hist: this param's history arrays;
        tmp: two scratch arrays of g's shape (kept by the solver: no large temporaries per iteration)."""
        raise NotImplementedError

    def update_in_one_pass(self, w, g, hist, *, scale, decay, rate):
        """The whole step (g * scale, + decay * w with L2 decay, the rule, w -= update) on flat arrays in
        one pass, with the bits of the chunked one; False where the rule has no such pass or the arrays
        cannot take it (then update_in_chunks runs the chunks)."""
        return False


UPDATE_CHUNK = 1 << 22  # elements per chunk of a parameter's update (16 MiB of float32)


def _flat(a):
    """A 1-d view of a C-contiguous array (a copy would make the update a silent no-op)."""
    if not a.flags.c_contiguous:
        raise AssertionError("solver update: a parameter's array is not contiguous")
    return a.reshape(-1)


def update_in_chunks(xp, rule, w, g, hists, *, decay, l1, iter_size, local_rate, it, scratch):
    """One parameter's update after clipping: 1/iter_size, weight decay (L2, or L1 if `l1`), the rule,
    w -= update. Every step is element-wise, so it runs on chunks of the flat arrays and the scratch
    (`scratch(shape)` -> two work arrays) is two chunks, not two copies of the largest parameter (fc6 of
    VGG-16: 2 x 392 MiB); the values are those of the whole-array operations."""
    g_all, w_all, hist_all = _flat(g), _flat(w), [_flat(h) for h in hists]
    if not l1 and rule.update_in_one_pass(w_all, g_all, hist_all, scale=1.0 / iter_size if iter_size > 1 else None,
                                          decay=decay or None, rate=local_rate):
        return
    for lo in range(0, g_all.size, UPDATE_CHUNK):
        hi = min(lo + UPDATE_CHUNK, g_all.size)
        gc, wc = g_all[lo:hi], w_all[lo:hi]
        if iter_size > 1:
            gc *= 1.0 / iter_size
        tmp = scratch(gc.shape)
        if decay:
            if l1:
                xp.sign(wc, out=tmp[0])
                tmp[0] *= decay
            else:
                xp.multiply(wc, decay, out=tmp[0])
            gc += tmp[0]
        rule.update(gc, [h[lo:hi] for h in hist_all], local_rate, it, tmp)
        wc -= gc


@rule("SGD")
class SGD(UpdateRule):
    # h = momentum * h + local_rate * g; update = h
    def update_in_one_pass(self, w, g, hist, *, scale, decay, rate):
        # one C pass instead of seven over 16 MiB chunks (VGG-16's 138 M parameters: see README, Speed)
        if not kernels.usable(w, g, *hist):
            return False
        kernels.sgd_update(w, g, hist[0], scale=scale, decay=decay, momentum=self.param.momentum, rate=rate)
        return True

    def update(self, g, hist, local_rate, it, tmp):
        xp, h = _xp(g), hist[0]
        h *= self.param.momentum
        xp.multiply(g, local_rate, out=tmp[0])
        h += tmp[0]
        g[...] = h


@rule("Nesterov")
class Nesterov(UpdateRule):
    # h_new = momentum * h + local_rate * g; update = (1 + momentum) * h_new - momentum * h
    def update(self, g, hist, local_rate, it, tmp):
        xp, h, m = _xp(g), hist[0], self.param.momentum
        old = tmp[0]
        old[...] = h
        h *= m
        g *= local_rate
        h += g
        xp.multiply(h, 1 + m, out=g)
        old *= m
        g -= old


@rule("AdaGrad")
class AdaGrad(UpdateRule):
    # h += g^2; update = local_rate * g / (sqrt(h) + delta)
    def check(self, source):
        if self.param.momentum != 0:
            raise VggtoolError(f"{source}: momentum must be 0 for AdaGrad (Caffe's rule), got {self.param.momentum}")

    def update(self, g, hist, local_rate, it, tmp):
        xp, h, t = _xp(g), hist[0], tmp[0]
        xp.multiply(g, g, out=t)
        h += t
        _divide_by_root(xp, g, h, self.param.delta, local_rate, out=g, scratch=t)


@rule("RMSProp")
class RMSProp(UpdateRule):
    # h = rms_decay * h + (1 - rms_decay) * g^2; update = local_rate * g / (sqrt(h) + delta)
    def check(self, source):
        if self.param.momentum != 0:
            raise VggtoolError(f"{source}: momentum must be 0 for RMSProp (Caffe's rule), got {self.param.momentum}")
        if not 0 <= self.param.rms_decay <= 1:
            raise VggtoolError(f"{source}: rms_decay must be in [0, 1], got {self.param.rms_decay}")

    def update(self, g, hist, local_rate, it, tmp):
        xp, h, t, d = _xp(g), hist[0], tmp[0], self.param.rms_decay
        xp.multiply(g, g, out=t)
        t *= 1 - d
        h *= d
        h += t
        _divide_by_root(xp, g, h, self.param.delta, local_rate, out=g, scratch=t)


@rule("AdaDelta")
class AdaDelta(UpdateRule):
    # hg = m * hg + (1-m) * g^2; u = g * sqrt((hu + delta) / (hg + delta)); hu = m * hu + (1-m) * u^2;
    # update = local_rate * u
    history_per_param = 2

    def update(self, g, hist, local_rate, it, tmp):
        xp, (hg, hu), (t, t2) = _xp(g), hist, tmp
        m, delta = self.param.momentum, self.param.delta
        xp.multiply(g, g, out=t)
        t *= 1 - m
        hg *= m
        hg += t
        xp.add(hu, delta, out=t)
        xp.add(hg, delta, out=t2)
        t /= t2
        xp.sqrt(t, out=t)
        g *= t
        xp.multiply(g, g, out=t)
        t *= 1 - m
        hu *= m
        hu += t
        g *= local_rate


@rule("Adam")
class Adam(UpdateRule):
    # m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; t = it + 1;
    # update = local_rate * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + delta)
    history_per_param = 2

    def update(self, g, hist, local_rate, it, tmp):
        xp, (m, v), t = _xp(g), hist, tmp[0]
        b1, b2 = self.param.momentum, self.param.momentum2
        step = it + 1
        correction = math.sqrt(1 - b2 ** step) / (1 - b1 ** step)
        m *= b1
        xp.multiply(g, 1 - b1, out=t)
        m += t
        xp.multiply(g, g, out=t)
        t *= 1 - b2
        v *= b2
        v += t
        _divide_by_root(xp, m, v, self.param.delta, local_rate * correction, out=g, scratch=t)


def _divide_by_root(xp, num, h, delta, rate, out, scratch):
    """out = rate * num / (sqrt(h) + delta): the tail shared by AdaGrad, RMSProp and Adam (Caffe's
    order of operations, so results are unchanged). `scratch` is overwritten; `out` may be `num`."""
    xp.sqrt(h, out=scratch)
    scratch += delta
    xp.divide(num, scratch, out=out)
    out *= rate


def _xp(a):
    from ..backend import get_array_module
    return get_array_module(a)
