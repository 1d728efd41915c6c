"""Convolution: im2col + one GEMM per chunk of images and group (Caffe's non-cuDNN algorithm).

Layout trick: the padded input of a chunk is stored channel-major, (C, n, Hp, Wp), so building the
column matrix is kh*kw strided slice copies, and one GEMM covers all n images of the chunk:
    out (Cout/g, n*Ho*Wo) = W_g (Cout/g, C/g*kh*kw) @ col_g (C/g*kh*kw, n*Ho*Wo).
Chunks are sized so the column matrix stays near WORKSPACE_BYTES. Backward recomputes the columns
(cheap copies) instead of keeping them, and scatters the column gradient back with kh*kw strided adds.
"""
import os
import time
from contextlib import contextmanager

from ..fillers import fill
from .base import Layer, register_layer

WORKSPACE_BYTES = 64 << 20

# Benchmarks set PROFILE = {} to collect seconds per section of the conv code (bench/bench_vgg.py).
PROFILE = None


@contextmanager
def _section(name):
    if PROFILE is None:
        yield
        return
    t0 = time.perf_counter()
    yield
    PROFILE[name] = PROFILE.get(name, 0.0) + time.perf_counter() - t0


def default_algorithm():
    return os.environ.get("VGGTOOL_CONV_ALGO", "auto")


def _pair(param, name, default, hw_prefix=None):
    """Read a (h, w) pair from Caffe's repeated `name` field or its `<prefix>_h`/`<prefix>_w` fields."""
    values = list(getattr(param, name))
    pre = hw_prefix or name
    has_hw = param.HasField(f"{pre}_h") or param.HasField(f"{pre}_w")
    if has_hw:
        if values:
            raise ValueError(f"give either {name} or {pre}_h and {pre}_w, not both")
        if not (param.HasField(f"{pre}_h") and param.HasField(f"{pre}_w")):
            raise ValueError(f"{pre}_h and {pre}_w must be given together")
        return getattr(param, f"{pre}_h"), getattr(param, f"{pre}_w")
    if not values:
        return default, default
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise ValueError(f"{len(values)} values for {name}: only 2-d convolution is supported")


def conv_output_size(size, kernel, stride, pad, dilation):
    extent = dilation * (kernel - 1) + 1
    return (size + 2 * pad - extent) // stride + 1


class ConvGeometry:
    """Kernel, stride, pad, dilation and the im2col/col2im loops for one 2-d convolution."""

    def __init__(self, kernel, stride, pad, dilation):
        self.kh, self.kw = kernel
        self.sh, self.sw = stride
        self.ph, self.pw = pad
        self.dh, self.dw = dilation

    def output_shape(self, h, w):
        return (conv_output_size(h, self.kh, self.sh, self.ph, self.dh),
                conv_output_size(w, self.kw, self.sw, self.pw, self.dw))

    def is_pointwise(self):
        return (self.kh, self.kw, self.sh, self.sw, self.ph, self.pw) == (1, 1, 1, 1, 0, 0)

    def _window(self, i, j, ho, wo):
        y0, x0 = i * self.dh, j * self.dw
        return (slice(y0, y0 + self.sh * (ho - 1) + 1, self.sh), slice(x0, x0 + self.sw * (wo - 1) + 1, self.sw))

    def pad_channel_major(self, x, padded):
        """Copy x (n, C, H, W) into the interior of padded (C, n, Hp, Wp); the border must already be 0."""
        h, w = x.shape[2], x.shape[3]
        padded[:, :, self.ph:self.ph + h, self.pw:self.pw + w] = x.transpose(1, 0, 2, 3)

    def im2col(self, padded, col, ho, wo):
        """col (C, kh, kw, n, ho, wo) <- windows of padded (C, n, Hp, Wp)."""
        for i in range(self.kh):
            for j in range(self.kw):
                ys, xs = self._window(i, j, ho, wo)
                col[:, i, j] = padded[:, :, ys, xs]

    def col2im(self, col, padded, ho, wo):
        """padded (C, n, Hp, Wp) += scatter of col (C, kh, kw, n, ho, wo); padded must start at 0."""
        for i in range(self.kh):
            for j in range(self.kw):
                ys, xs = self._window(i, j, ho, wo)
                padded[:, :, ys, xs] += col[:, i, j]


def read_conv_geometry(layer, p):
    try:
        if len(p.kernel_size) and (p.HasField("kernel_h") or p.HasField("kernel_w")):
            raise ValueError("filter size is kernel_size OR kernel_h and kernel_w; not both")
        if not len(p.kernel_size) and not (p.HasField("kernel_h") or p.HasField("kernel_w")):
            raise ValueError("kernel_size (or kernel_h and kernel_w) is required")
        kernel = _pair(p, "kernel_size", None, "kernel")
        stride = _pair(p, "stride", 1)
        pad = _pair(p, "pad", 0)
        dilation = tuple(p.dilation) if len(p.dilation) else (1,)
        if len(dilation) > 2:
            raise ValueError("only 2-d convolution is supported (dilation has more than 2 values)")
        dilation = dilation * 2 if len(dilation) == 1 else dilation
    except ValueError as e:
        raise layer.error(str(e)) from None
    if min(kernel) <= 0 or min(stride) <= 0 or min(dilation) <= 0:
        raise layer.error(f"kernel {kernel}, stride {stride} and dilation {dilation} must be positive")
    return ConvGeometry(kernel, stride, pad, dilation)


@register_layer("Convolution")
class ConvolutionLayer(Layer):
    min_bottoms = 1

    def layer_setup(self, bottom, top):
        p = self.param.convolution_param
        if len(top) != len(bottom):
            raise self.error(f"needs as many tops as bottoms, got {len(bottom)} bottom(s) and {len(top)} top(s)")
        if p.axis != 1:
            raise self.error("only axis: 1 (channels) is supported")
        if bottom[0].num_axes != 4:
            raise self.error(f"needs a 4-d bottom (N, C, H, W), got shape {bottom[0].shape}")
        self.geom = read_conv_geometry(self, p)
        self.num_output = p.num_output
        self.group = p.group
        channels = bottom[0].shape[1]
        if self.num_output <= 0:
            raise self.error("num_output must be positive")
        if self.group <= 0 or channels % self.group or self.num_output % self.group:
            raise self.error(f"group {self.group} must divide both the input channels ({channels}) "
                             f"and num_output ({self.num_output})")
        self.channels = channels
        self.bias_term = p.bias_term
        g = self.geom
        weight = self.new_param((self.num_output, channels // self.group, g.kh, g.kw))
        fill(weight, p.weight_filler, self.rng())
        if self.bias_term:
            bias = self.new_param((self.num_output,))
            fill(bias, p.bias_filler, self.rng())

    def reshape(self, bottom, top):
        for b, t in zip(bottom, top):
            if b.num_axes != 4 or b.shape[1] != self.channels:
                raise self.error(f"bottom of shape {b.shape} does not match the {self.channels} input "
                                 "channels the layer was set up for")
            if b.shape != bottom[0].shape:
                raise self.error(f"all bottoms must have the same shape, got {bottom[0].shape} and {b.shape}")
            ho, wo = self.geom.output_shape(b.shape[2], b.shape[3])
            if ho <= 0 or wo <= 0:
                raise self.error(f"input {b.shape[2]}x{b.shape[3]} is smaller than the kernel "
                                 f"{self.geom.kh}x{self.geom.kw} (pad {self.geom.ph},{self.geom.pw})")
            t.reshape(b.shape[0], self.num_output, ho, wo)

    # -- shared loop --------------------------------------------------------------------------------------
    def _chunks(self, n, ho, wo):
        g = self.geom
        per_image = self.channels * g.kh * g.kw * ho * wo * self.dtype.itemsize
        step = max(1, min(n, WORKSPACE_BYTES // max(per_image, 1)))
        return [(s, min(n, s + step)) for s in range(0, n, step)]

    def _columns(self, x, n0, n1, ho, wo):
        """(C*kh*kw, n*ho*wo) column matrix of images n0..n1 of x (N, C, H, W)."""
        g, c = self.geom, self.channels
        n = n1 - n0
        h, w = x.shape[2], x.shape[3]
        if g.is_pointwise():
            cols = self.workspace("conv_col", (c, n, h, w))
            cols[...] = x[n0:n1].transpose(1, 0, 2, 3)
            return cols.reshape(c, n * h * w)
        padded = self.workspace("conv_pad", (c, n, h + 2 * g.ph, w + 2 * g.pw))
        if g.ph or g.pw:
            padded.fill(0)
        g.pad_channel_major(x[n0:n1], padded)
        cols = self.workspace("conv_col", (c, g.kh, g.kw, n, ho, wo))
        g.im2col(padded, cols, ho, wo)
        return cols.reshape(c * g.kh * g.kw, n * ho * wo)

    def forward(self, bottom, top):
        xp = self.xp
        weight = self.blobs[0].data.reshape(self.group, self.num_output // self.group, -1)
        bias = self.blobs[1].data if self.bias_term else None
        cg = weight.shape[2]
        for b, t in zip(bottom, top):
            x, y = b.data, t.data
            ho, wo = y.shape[2], y.shape[3]
            for n0, n1 in self._chunks(x.shape[0], ho, wo):
                cols = self._columns(x, n0, n1, ho, wo)
                out = self.workspace("conv_out", (self.num_output, (n1 - n0) * ho * wo))
                og = out.reshape(self.group, self.num_output // self.group, -1)
                for gi in range(self.group):
                    xp.matmul(weight[gi], cols[gi * cg:(gi + 1) * cg], out=og[gi])
                out4 = out.reshape(self.num_output, n1 - n0, ho, wo).transpose(1, 0, 2, 3)
                if bias is not None:
                    xp.add(out4, bias.reshape(1, -1, 1, 1), out=y[n0:n1])
                else:
                    y[n0:n1] = out4

    def backward(self, top, propagate_down, bottom):
        xp = self.xp
        g = self.geom
        groups, cout = self.group, self.num_output
        weight = self.blobs[0].data.reshape(groups, cout // groups, -1)
        want_w = self.param_propagate_down[0]
        want_b = self.bias_term and self.param_propagate_down[1]
        wdiff = self.blobs[0].diff.reshape(groups, cout // groups, -1) if want_w else None
        cg = weight.shape[2]
        for b, t, down in zip(bottom, top, propagate_down):
            dy_all = t.diff
            if want_b:
                self.blobs[1].diff += dy_all.sum(axis=(0, 2, 3))
            if not (want_w or down):
                continue
            x = b.data
            n_all, _, h, w = x.shape
            ho, wo = dy_all.shape[2], dy_all.shape[3]
            for n0, n1 in self._chunks(n_all, ho, wo):
                n = n1 - n0
                dy = self.workspace("conv_dy", (cout, n, ho, wo))
                dy[...] = dy_all[n0:n1].transpose(1, 0, 2, 3)
                dyg = dy.reshape(groups, cout // groups, n * ho * wo)
                if want_w:
                    cols = self._columns(x, n0, n1, ho, wo)
                    for gi in range(groups):
                        wdiff[gi] += dyg[gi] @ cols[gi * cg:(gi + 1) * cg].T
                if not down:
                    continue
                dcols = self.workspace("conv_col", (self.channels * g.kh * g.kw, n * ho * wo))
                for gi in range(groups):
                    xp.matmul(weight[gi].T, dyg[gi], out=dcols[gi * cg:(gi + 1) * cg])
                if g.is_pointwise():
                    b.diff[n0:n1] = dcols.reshape(self.channels, n, h, w).transpose(1, 0, 2, 3)
                    continue
                padded = self.workspace("conv_pad", (self.channels, n, h + 2 * g.ph, w + 2 * g.pw), zero=True)
                g.col2im(dcols.reshape(self.channels, g.kh, g.kw, n, ho, wo), padded, ho, wo)
                b.diff[n0:n1] = padded[:, :, g.ph:g.ph + h, g.pw:g.pw + w].transpose(1, 0, 2, 3)
