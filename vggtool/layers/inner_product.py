"""InnerProduct (fully connected): top = bottom (M x K) @ W^T + b, with Caffe's axis and transpose."""
import numpy as np

from ..fillers import fill
from .base import Layer, register_layer
from .gemm import gemm, matmul


@register_layer("InnerProduct")
class InnerProductLayer(Layer):
    exact_bottoms = 1
    exact_tops = 1

    def merge_obstacle(self):
        return self.batch_axis_obstacle(self.axis)

    def layer_setup(self, bottom, top):
        p = self.param.inner_product_param
        if p.num_output <= 0:
            raise self.error("num_output must be positive")
        self.num_output = p.num_output
        self.axis = bottom[0].canonical_axis(p.axis)
        self.k = bottom[0].count_range(self.axis)
        self.transpose = p.transpose
        self.bias_term = p.bias_term
        # Caffe stores W as (num_output, K), or (K, num_output) with transpose: true.
        shape = (self.k, self.num_output) if self.transpose else (self.num_output, self.k)
        fill(self.new_param(shape), p.weight_filler, self.rng())
        if self.bias_term:
            fill(self.new_param((self.num_output,)), p.bias_filler, self.rng())

    def reshape(self, bottom, top):
        k = bottom[0].count_range(self.axis)
        if k != self.k:
            raise self.error(f"input of shape {bottom[0].shape} has {k} values per item after axis {self.axis}; "
                             f"the weights expect {self.k}")
        self.m = bottom[0].count_range(0, self.axis)
        top[0].reshape(bottom[0].shape[:self.axis] + (self.num_output,))

    def _w_as_kn(self):
        w = self.blobs[0].data
        return w if self.transpose else w.T

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.m, self.k)
        y = top[0].data.reshape(self.m, self.num_output)
        if self.transpose or type(x) is not np.ndarray:
            matmul(x, self._w_as_kn(), y)
        else:
            # As (W @ x^T)^T: OpenBLAS streams a row-major (N, K) W faster as the left operand (fc6 at
            # batch 8-256: 0.7-0.94x the time; a (K, N) W, `transpose: true`, is faster as it was).
            y_t = self.workspace("ip_top_t", (self.num_output, self.m))
            matmul(self.blobs[0].data, x.T, y_t)
            y[...] = y_t.T
        if self.bias_term:
            y += self.blobs[1].data

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff.reshape(self.m, self.num_output)
        x = bottom[0].data.reshape(self.m, self.k)
        if self.param_propagate_down[0]:
            # Accumulate in place (BLAS beta = 1): no temporary as large as the weights.
            if self.transpose:
                gemm(x.T, dy, self.blobs[0].diff)
            else:
                gemm(dy.T, x, self.blobs[0].diff)
        if self.bias_term and self.param_propagate_down[1]:
            self.blobs[1].diff += dy.sum(axis=0)
        if propagate_down[0]:
            matmul(dy, self._w_as_kn().T, bottom[0].diff.reshape(self.m, self.k))
