"""Element-wise layers: ReLU (with negative_slope), Sigmoid, TanH and Dropout. All may run in place
(top == bottom): Sigmoid and TanH take their gradient from the output only."""
import numpy as np

from .base import Layer, register_layer
from .threads import split_run


class NeuronLayer(Layer):
    exact_bottoms = 1
    exact_tops = 1

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape)


@register_layer("ReLU")
class ReLULayer(NeuronLayer):
    def layer_setup(self, bottom, top):
        self.slope = self.param.relu_param.negative_slope

    def forward(self, bottom, top):
        xp = self.xp
        x, y = bottom[0].data, top[0].data
        if self.slope == 0:
            xf, yf = x.reshape(-1), y.reshape(-1)
            split_run(lambda i0, i1: xp.maximum(xf[i0:i1], 0, out=yf[i0:i1]), xf.size, 2 * xf.size, xp)
        elif 0 < self.slope <= 1:
            xp.maximum(x, x * self.slope, out=y)
        else:
            y[...] = xp.where(x > 0, x, x * self.slope)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        # In place, bottom.data holds the output; its sign equals the input's for slope >= 0.
        x, dy, dx = bottom[0].data, top[0].diff, bottom[0].diff
        if self.slope == 0:
            xf, dyf, dxf = x.reshape(-1), dy.reshape(-1), dx.reshape(-1)

            def part(i0, i1):
                self.xp.multiply(dyf[i0:i1], xf[i0:i1] > 0, out=dxf[i0:i1])

            split_run(part, xf.size, 3 * xf.size, self.xp)
        else:
            dx[...] = dy * self.xp.where(x > 0, 1.0, self.slope).astype(dx.dtype)


@register_layer("Dropout")
class DropoutLayer(NeuronLayer):
    """Inverted dropout: in TRAIN keep each unit with probability 1 - ratio and scale it by 1/(1 - ratio);
    in TEST pass through unchanged. Masks are drawn per sample (see Net.sample_rng)."""

    def layer_setup(self, bottom, top):
        self.ratio = self.param.dropout_param.dropout_ratio
        if not 0 <= self.ratio < 1:
            raise self.error(f"dropout_ratio must be in [0, 1), got {self.ratio}")
        self.scale = 1.0 / (1.0 - self.ratio)
        self.mask = None

    def _draw_mask(self, shape):
        n = shape[0]
        per_sample = shape[1:]
        mask = np.empty(shape, dtype=self.dtype)
        keep = 1.0 - self.ratio
        for i in range(n):
            u = self.net.sample_rng(self.name, i).random(per_sample, dtype=np.float32) if self.net is not None \
                else np.random.random(per_sample).astype(np.float32)
            mask[i] = (u < keep) * self.scale
        return self.device.asarray(mask)

    def forward(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        if self.phase == 0:  # TRAIN
            self.mask = self._draw_mask(x.shape)
            self.xp.multiply(x, self.mask, out=y)
        elif y is not x:
            y[...] = x

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy, dx = top[0].diff, bottom[0].diff
        if self.phase == 0:
            self.xp.multiply(dy, self.mask, out=dx)
        elif dx is not dy:
            dx[...] = dy


@register_layer("Sigmoid")
class SigmoidLayer(NeuronLayer):
    def forward(self, bottom, top):
        # 0.5 * tanh(0.5 x) + 0.5 == 1 / (1 + exp(-x)), without overflow for large |x| (Caffe's form).
        xp = self.xp
        y = top[0].data
        xp.multiply(bottom[0].data, 0.5, out=y)
        xp.tanh(y, out=y)
        y *= 0.5
        y += 0.5

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y, dy = top[0].data, top[0].diff
        bottom[0].diff[...] = dy * y * (1 - y)


@register_layer("TanH")
class TanHLayer(NeuronLayer):
    def forward(self, bottom, top):
        self.xp.tanh(bottom[0].data, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y, dy = top[0].data, top[0].diff
        bottom[0].diff[...] = dy * (1 - y * y)
