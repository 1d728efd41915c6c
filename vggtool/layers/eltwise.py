"""Eltwise: SUM (with per-bottom coeff), PROD, MAX over bottoms of one shape, Caffe's semantics.

MAX follows Caffe's loop exactly: bottom 1 wins a tie with bottom 0 (`a > b ? 0 : 1`), and each later
bottom must be strictly greater to take over, so among bottoms 1.. the first maximum wins.
PROD's gradient is the product of the other bottoms (stable_prod_grad, the default) or top / bottom.
"""
import numpy as np

from .base import Layer, register_layer

PROD, SUM, MAX = 0, 1, 2


@register_layer("Eltwise")
class EltwiseLayer(Layer):
    per_sample = True
    min_bottoms = 2
    exact_tops = 1

    def layer_setup(self, bottom, top):
        p = self.param.eltwise_param
        self.op = p.operation
        if len(p.coeff) not in (0, len(bottom)):
            raise self.error(f"takes one coeff per bottom blob: {len(p.coeff)} coeff(s) for {len(bottom)} bottoms")
        if self.op != SUM and len(p.coeff):
            raise self.error("coeff is only allowed with operation: SUM")
        self.coeffs = list(p.coeff) if len(p.coeff) else [1.0] * len(bottom)
        self.stable_prod_grad = p.stable_prod_grad
        self.max_idx = None

    def reshape(self, bottom, top):
        for i, b in enumerate(bottom[1:], 1):
            if b.shape != bottom[0].shape:
                raise self.error(f"all bottoms must have one shape: bottom 0 is {bottom[0].shape}, "
                                 f"bottom {i} is {b.shape}")
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        xp = self.xp
        if self.op == SUM:
            out = bottom[0].data * self.coeffs[0]
            for b, c in zip(bottom[1:], self.coeffs[1:]):
                out += b.data * c if c != 1 else b.data
        elif self.op == PROD:
            out = bottom[0].data * bottom[1].data
            for b in bottom[2:]:
                out *= b.data
        else:
            a, b = bottom[0].data, bottom[1].data
            idx = (a <= b).astype(np.int32)  # Caffe: a > b -> 0, else (ties too) -> 1
            out = xp.maximum(a, b)
            for k, blob in enumerate(bottom[2:], 2):
                better = blob.data > out
                idx = xp.where(better, np.int32(k), idx)  # a mask assignment would wait for the GPU
                xp.copyto(out, blob.data, where=better)
            self.max_idx = idx
        top[0].data[...] = out

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff
        for i, (b, down) in enumerate(zip(bottom, propagate_down)):
            if not down:
                continue
            if self.op == SUM:
                b.diff[...] = dy * self.coeffs[i] if self.coeffs[i] != 1 else dy
            elif self.op == PROD:
                if self.stable_prod_grad:
                    others = [o.data for j, o in enumerate(bottom) if j != i]
                    g = others[0].copy()
                    for o in others[1:]:
                        g *= o
                else:
                    g = top[0].data / b.data
                b.diff[...] = g * dy
            else:
                b.diff[...] = dy * (self.max_idx == i)
