"""Element-wise layers: ReLU (with negative_slope), Sigmoid, TanH and Dropout. All may run in place
(top == bottom): Sigmoid and TanH take their gradient from the output only."""
import zlib

import numpy as np

from .base import Layer, register_layer
from .threads import split_run


class NeuronLayer(Layer):
    per_sample = True
    exact_bottoms = 1
    exact_tops = 1

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape)


@register_layer("ReLU")
class ReLULayer(NeuronLayer):
    keep_mask = False  # set by a pooled net: backward reads the mask of positive outputs, not the data
    # Set by the net when the convolution before this in-place ReLU has just written max(., 0) itself, and
    # filled this layer's mask (mask_buffer) where it keeps one (Net.layer_forward, settings.fuse_relu):
    # the forward has nothing left to do. One forward only.
    input_rectified = False

    def mask_buffer(self, size):
        """The flat boolean mask of positive outputs (keep_mask), made or remade for `size` elements."""
        mask = getattr(self, "positive", None)
        if mask is None or mask.size != size:
            with self.device:
                mask = self.positive = self.xp.empty(size, dtype=bool)
        return mask

    def layer_setup(self, bottom, top):
        self.slope = self.param.relu_param.negative_slope

    def backward_reads_data(self, bottom, top):
        return [] if self.slope == 0 and self.keep_mask else list(bottom) + list(top)

    def forward(self, bottom, top):
        xp = self.xp
        x, y = bottom[0].data, top[0].data
        rectified, self.input_rectified = self.input_rectified and bottom[0] is top[0] and self.slope == 0, False
        if rectified:
            return  # in place, and the convolution already wrote max(x, 0) (and the mask)
        if self.slope == 0 and self.keep_mask:
            xf, yf = x.reshape(-1), y.reshape(-1)
            mask = self.mask_buffer(xf.size)

            def part(i0, i1):
                xp.maximum(xf[i0:i1], 0, out=yf[i0:i1])
                xp.greater(yf[i0:i1], 0, out=mask[i0:i1])  # y > 0 exactly where x > 0

            split_run(part, xf.size, 2 * xf.size, xp)
        elif self.slope == 0:
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
        if self.slope == 0 and self.keep_mask:
            mask, dyf, dxf = self.positive, dy.reshape(-1), dx.reshape(-1)
            split_run(lambda i0, i1: self.xp.multiply(dyf[i0:i1], mask[i0:i1], out=dxf[i0:i1]),
                      dxf.size, 3 * dxf.size, self.xp)
        elif self.slope == 0:
            xf, dyf, dxf = x.reshape(-1), dy.reshape(-1), dx.reshape(-1)

            def part(i0, i1):
                self.xp.multiply(dyf[i0:i1], xf[i0:i1] > 0, out=dxf[i0:i1])

            split_run(part, xf.size, 3 * xf.size, self.xp)
        else:
            dx[...] = dy * self.xp.where(x > 0, 1.0, self.slope).astype(dx.dtype)


def mix32(x):
    """A bijective integer hash of a uint32 array (Wellons' lowbias32), in place; the same bits in NumPy
    and CuPy (only xor, shifts and wrapping multiplies)."""
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    return x


def dropout_key(seed, layer_name, iteration):
    """One uint32 from (net seed, layer, iteration): the part of a mask's key shared by a whole batch."""
    words = [int(seed) & 0xFFFFFFFF, int(seed) >> 32 & 0xFFFFFFFF, zlib.crc32(layer_name.encode()),
             int(iteration) & 0xFFFFFFFF]
    k = np.zeros(1, dtype=np.uint32)
    for w in words:
        k = mix32(k ^ np.uint32(w))
    return int(k[0])


def keep_bits(xp, key, first_sample, shape):
    """uint32 hashes, one per element, of (key, global sample index, element index within the sample): a
    counter-based generator, so a sample's bits do not depend on how the batch is split over replicas nor
    on the device that computes them."""
    n, per = shape[0], int(np.prod(shape[1:], dtype=np.int64))
    sample = xp.arange(first_sample, first_sample + n, dtype=np.uint32)
    sample = mix32(mix32(sample) ^ np.uint32(key))[:, None]
    h = xp.arange(per, dtype=np.uint32)[None, :] * np.uint32(0x9E3779B9)  # Weyl sequence over elements
    h = h + sample
    return mix32(mix32(h)).reshape(shape)


@register_layer("Dropout")
class DropoutLayer(NeuronLayer):
    """Inverted dropout: in TRAIN keep each unit with probability 1 - ratio and scale it by 1/(1 - ratio);
    in TEST pass through unchanged. The mask is drawn on the array's device from a hash of (net seed,
    layer, iteration, global sample index, element), see keep_bits."""

    def layer_setup(self, bottom, top):
        self.ratio = self.param.dropout_param.dropout_ratio
        if not 0 <= self.ratio < 1:
            raise self.error(f"dropout_ratio must be in [0, 1), got {self.ratio}")
        self.scale = 1.0 / (1.0 - self.ratio)
        # keep when hash < threshold: P = threshold / 2**32 = 1 - ratio (to 2**-32)
        self.threshold = min(round((1.0 - self.ratio) * 2**32), 2**32 - 1)
        self.mask = None

    def _draw_mask(self, shape):
        net = self.net
        if net is not None:
            key = dropout_key(net.seed, self.name, int(getattr(net, "iteration", 0) or 0))
            first = int(getattr(net, "sample_offset", 0) or 0)
        else:  # a layer used alone: a fresh draw each time
            key, first = int(np.random.randint(0, 2**32, dtype=np.uint64)), 0
        with self.device:
            if self.ratio == 0:
                return self.xp.ones(shape, dtype=self.dtype)
            mask = (keep_bits(self.xp, key, first, shape) < np.uint32(self.threshold)).astype(self.dtype)
            mask *= self.scale
            return mask

    def backward_reads_data(self, bottom, top):
        return []  # the mask

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
