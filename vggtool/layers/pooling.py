"""Pooling (MAX, AVE) with Caffe's output size and padding rules.

Output size (round_mode CEIL, Caffe's default): ceil((H + 2*pad - kernel) / stride) + 1, reduced by one
when the layer has any padding (pad_h or pad_w, checked for both axes, as Caffe does) and the last
window would start inside the bottom/right padding. MAX ignores padding and
picks the first maximum in window order (rows, then columns); AVE divides by the window's size clipped
to the padded image (H + pad), so padding cells count but cells beyond it do not.
"""
import math

import numpy as np

from . import cuda_kernels, kernels
from .base import Layer, register_layer
from .threads import split_run

MAX, AVE, STOCHASTIC = 0, 1, 2
# The 2x2 fast path runs its several element-wise passes block by block, each block's planes small
# enough (input bytes) to stay in cache between passes: one trip through memory instead of ~8
# (VGG-16 pool1 alone, batch 8: forward 48 -> ~38 ms, backward 31 -> ~20 ms; 256 KB-4 MB measured alike).
BLOCK_BYTES = 1024 << 10


def _blocks(i0, i1, plane_bytes):
    step = max(1, BLOCK_BYTES // max(plane_bytes, 1))
    return ((b, min(i1, b + step)) for b in range(i0, i1, step))
CEIL, FLOOR = 0, 1


def pooled_size(size, kernel, stride, pad, round_mode=CEIL, any_pad=None):
    """any_pad: whether the layer pads on either axis (default: pad > 0); Caffe applies the
    last-window rule to both axes as soon as one of them is padded."""
    span = (size + 2 * pad - kernel) / stride
    out = (math.ceil(span) if round_mode == CEIL else math.floor(span)) + 1
    if (pad > 0 if any_pad is None else any_pad) and (out - 1) * stride >= size + pad:
        out -= 1  # the last pooling window must start inside the image or its top/left padding
    return out


@register_layer("Pooling")
class PoolingLayer(Layer):
    per_sample = True
    exact_bottoms = 1
    min_tops = 1
    max_tops = 2

    def layer_setup(self, bottom, top):
        p = self.param.pooling_param
        self.method = p.pool
        if self.method == STOCHASTIC:
            raise self.error("STOCHASTIC pooling is not supported (use MAX or AVE)")
        if len(top) == 2 and self.method != MAX:
            raise self.error("a second top (the argmax mask) is only produced by MAX pooling")
        if bottom[0].num_axes != 4:
            raise self.error(f"needs a 4-d bottom, got shape {bottom[0].shape}")
        self.global_pooling = p.global_pooling
        has_kernel = p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w")
        if self.global_pooling:
            if has_kernel:
                raise self.error("with global_pooling: true the kernel size must not be given")
        else:
            if p.HasField("kernel_size") and (p.HasField("kernel_h") or p.HasField("kernel_w")):
                raise self.error("filter size is kernel_size OR kernel_h and kernel_w; not both")
            if not has_kernel:
                raise self.error("kernel_size (or kernel_h and kernel_w) is required")
            if p.HasField("kernel_h") != p.HasField("kernel_w"):
                raise self.error("kernel_h and kernel_w must be given together")
        if p.HasField("pad") and (p.HasField("pad_h") or p.HasField("pad_w")):
            raise self.error("pad is pad OR pad_h and pad_w; not both")
        if p.HasField("stride") and (p.HasField("stride_h") or p.HasField("stride_w")):
            raise self.error("stride is stride OR stride_h and stride_w; not both")
        self.kh = p.kernel_h if p.HasField("kernel_h") else p.kernel_size
        self.kw = p.kernel_w if p.HasField("kernel_w") else p.kernel_size
        self.ph = p.pad_h if p.HasField("pad_h") else p.pad
        self.pw = p.pad_w if p.HasField("pad_w") else p.pad
        self.sh = p.stride_h if p.HasField("stride_h") else p.stride
        self.sw = p.stride_w if p.HasField("stride_w") else p.stride
        self.round_mode = p.round_mode
        if self.global_pooling:
            if self.ph or self.pw or self.sh != 1 or self.sw != 1:
                raise self.error("with global_pooling: true, pad must be 0 and stride 1")
        elif self.kh <= 0 or self.kw <= 0:
            raise self.error("kernel size must be positive")
        if self.sh <= 0 or self.sw <= 0:
            raise self.error("stride must be positive")
        if not self.global_pooling and (self.ph >= self.kh or self.pw >= self.kw):
            raise self.error(f"pad ({self.ph},{self.pw}) must be smaller than the kernel ({self.kh},{self.kw})")

    def reshape(self, bottom, top):
        n, c, h, w = bottom[0].shape
        if self.global_pooling:
            self.kh, self.kw = h, w
        any_pad = bool(self.ph or self.pw)
        self.ho = pooled_size(h, self.kh, self.sh, self.ph, self.round_mode, any_pad)
        self.wo = pooled_size(w, self.kw, self.sw, self.pw, self.round_mode, any_pad)
        if self.ho <= 0 or self.wo <= 0:
            raise self.error(f"input {h}x{w} is too small for kernel {self.kh}x{self.kw}")
        for t in top:
            t.reshape(n, c, self.ho, self.wo)
        # Padded extent that covers every window (ceil mode may reach past the padding).
        self.hp = max(h + 2 * self.ph, (self.ho - 1) * self.sh + self.kh)
        self.wp = max(w + 2 * self.pw, (self.wo - 1) * self.sw + self.kw)
        if self.method == AVE:
            self.divisor = self._ave_divisor(h, w)

    def _ave_divisor(self, h, w):
        def sizes(out, stride, pad, kernel, size):
            start = np.arange(out) * stride - pad
            end = np.minimum(start + kernel, size + pad)
            return (end - start).astype(np.float64)

        d = np.outer(sizes(self.ho, self.sh, self.ph, self.kh, h), sizes(self.wo, self.sw, self.pw, self.kw, w))
        return self.device.asarray(d, dtype=self.dtype)

    def _window(self, i, j):
        return (slice(i, i + self.sh * (self.ho - 1) + 1, self.sh), slice(j, j + self.sw * (self.wo - 1) + 1, self.sw))

    def _padded(self, slot, x, fill_value):
        n, c, h, w = x.shape
        padded = self.workspace(slot, (n, c, self.hp, self.wp))
        if (self.hp, self.wp) != (h, w):
            padded.fill(fill_value)
        padded[:, :, self.ph:self.ph + h, self.pw:self.pw + w] = x
        return padded

    def _is_2x2_tiling(self, shape):
        """MAX 2x2/2, no padding, even H and W: windows tile the input exactly (every VGG pooling)."""
        return (self.method == MAX and (self.kh, self.kw, self.sh, self.sw, self.ph, self.pw) == (2, 2, 2, 2, 0, 0)
                and shape[2] % 2 == 0 and shape[3] % 2 == 0)

    def _forward_2x2(self, x, y):
        """Max over the four strided quarter views; argmax keeps Caffe's first-maximum-in-window-order."""
        xp = self.xp
        n, c, h, w = x.shape
        q = x.reshape(n * c, h // 2, 2, w // 2, 2)
        yf = y.reshape(n * c, h // 2, w // 2)
        # uint8 window index (0..3): a quarter of int32's memory traffic
        self.argmax = self.workspace_argmax(y.shape, np.uint8)
        if kernels.usable(x, y):
            kernels.max_pool_2x2(x, y, self.argmax)
            return
        if cuda_kernels.usable(x, y, self.argmax):
            cuda_kernels.max_pool_2x2(x, y, self.argmax)
            return
        am = self.argmax.reshape(yf.shape)
        top_row = self.workspace("pool_m1", yf.shape)
        blocked = xp is np

        def run(i0, i1):
            qq, yy, aa, tr = q[i0:i1], yf[i0:i1], am[i0:i1], top_row[i0:i1]
            a, b, cc, d = qq[:, :, 0, :, 0], qq[:, :, 0, :, 1], qq[:, :, 1, :, 0], qq[:, :, 1, :, 1]
            xp.maximum(a, b, out=tr)
            xp.maximum(cc, d, out=yy)
            lower = yy > tr  # the maximum is in the second row (strictly larger than the first row's)
            xp.greater(d, cc, out=aa, casting="unsafe")
            aa += 2
            xp.copyto(aa, b > a, where=~lower, casting="unsafe")
            xp.maximum(yy, tr, out=yy)

        def part(i0, i1):
            for b0, b1 in (_blocks(i0, i1, h * w * x.itemsize) if blocked else [(i0, i1)]):
                run(b0, b1)

        split_run(part, n * c, x.size, xp)

    def _backward_2x2(self, dy, dx):
        xp = self.xp
        if kernels.usable(dy, dx):
            kernels.max_pool_2x2_backward(dy, self.argmax, dx)
            return
        if cuda_kernels.usable(dy, dx, self.argmax):
            cuda_kernels.max_pool_2x2_backward(dy, self.argmax, dx)
            return
        n, c, h, w = dx.shape
        q = dx.reshape(n * c, h // 2, 2, w // 2, 2)
        dyf = dy.reshape(n * c, h // 2, w // 2)
        am = self.argmax.reshape(dyf.shape)
        blocked = xp is np

        def part(i0, i1):
            for b0, b1 in (_blocks(i0, i1, h * w * dx.itemsize) if blocked else [(i0, i1)]):
                for k in range(4):
                    xp.multiply(dyf[b0:b1], am[b0:b1] == k, out=q[b0:b1, :, k // 2, :, k % 2])

        split_run(part, n * c, dx.size, xp)

    def forward(self, bottom, top):
        xp = self.xp
        x, y = bottom[0].data, top[0].data
        if self._is_2x2_tiling(x.shape):
            self._forward_2x2(x, y)
            if len(top) == 2:
                top[1].data[...] = self._mask_indices(x.shape[3])
            return
        if self.method == MAX:
            padded = self._padded("pool_pad", x, -np.inf)
            self.argmax = self.workspace_argmax(y.shape)
            y[...] = padded[(slice(None), slice(None)) + self._window(0, 0)]
            self.argmax.fill(0)
            k = 0
            for i in range(self.kh):
                for j in range(self.kw):
                    if k:
                        v = padded[(slice(None), slice(None)) + self._window(i, j)]
                        better = v > y
                        xp.copyto(y, v, where=better)
                        self.argmax[...] = xp.where(better, k, self.argmax)  # a mask assignment would sync
                    k += 1
            if len(top) == 2:
                top[1].data[...] = self._mask_indices(x.shape[3])
        else:
            padded = self._padded("pool_pad", x, 0)
            y.fill(0)
            for i in range(self.kh):
                for j in range(self.kw):
                    y += padded[(slice(None), slice(None)) + self._window(i, j)]
            y /= self.divisor

    def workspace_argmax(self, shape, dtype=np.int32):
        # Per-layer (not shared): backward needs it after later layers have run.
        arr = getattr(self, "_argmax", None)
        if arr is None or arr.shape != shape or arr.dtype != dtype:
            with self.device:
                arr = self._argmax = self.xp.zeros(shape, dtype=dtype)
        return arr

    def _mask_indices(self, width):
        """Caffe's mask top: the flat index (h * W + w) of each window's maximum in the bottom plane."""
        xp = self.xp
        ki, kj = self.argmax // self.kw, self.argmax % self.kw
        hs = xp.arange(self.ho).reshape(-1, 1) * self.sh - self.ph
        ws = xp.arange(self.wo).reshape(1, -1) * self.sw - self.pw
        return (hs + ki) * width + (ws + kj)

    def backward_reads_data(self, bottom, top):
        return []  # MAX: the argmax it keeps; AVE: nothing but the top diff

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        n, c, h, w = bottom[0].shape
        dy = top[0].diff
        if self._is_2x2_tiling(bottom[0].shape):
            self._backward_2x2(dy, bottom[0].diff)
            return
        padded = self.workspace("pool_pad", (n, c, self.hp, self.wp), zero=True)
        if self.method == MAX:
            k = 0
            for i in range(self.kh):
                for j in range(self.kw):
                    padded[(slice(None), slice(None)) + self._window(i, j)] += dy * (self.argmax == k)
                    k += 1
        else:
            scaled = dy / self.divisor
            for i in range(self.kh):
                for j in range(self.kw):
                    padded[(slice(None), slice(None)) + self._window(i, j)] += scaled
        bottom[0].diff[...] = padded[:, :, self.ph:self.ph + h, self.pw:self.pw + w]
