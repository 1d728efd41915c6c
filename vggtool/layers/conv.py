"""Convolution: im2col + one GEMM per chunk of images and group (Caffe's non-cuDNN algorithm).

Layout trick: the padded input of a chunk is stored channel-major, (C, n, Hp, Wp), so building the
column matrix is kh*kw strided slice copies, and one GEMM covers all n images of the chunk:
    out (Cout/g, n*Ho*Wo) = W_g (Cout/g, C/g*kh*kw) @ col_g (C/g*kh*kw, n*Ho*Wo).
Chunks are sized so the column matrix stays near WORKSPACE_BYTES.

Stride-1 layers can skip the column matrix ('shifted', the default for >= SHIFTED_MIN_CHANNELS inputs):
with the padded chunk flattened per channel, X (C, n*Hp*Wp), output position p (over the padded grid;
positions outside the valid Ho x Wo corner are garbage and dropped) is
    Y[:, p] = sum over taps (i, j) of W[:, :, i, j] @ X[:, p + i*dh*Wp + j*dw],
i.e. kh*kw GEMMs with K = C on column-shifted views of X, accumulated in place (gemm beta=1).
The weight gradient is the same sum read the other way, dW[:, :, i, j] += dY_p @ X_shifted^T with dY
laid out on the padded grid and zero at the garbage positions, and dX is the forward correlation of dY
with the flipped, transposed kernel. In TRAIN, the forward pass keeps
its column matrices for the weight gradient while the net's total stays under
$VGGTOOL_CONV_CACHE_MB (default 4096); beyond that, backward recomputes them (cheap copies).
"""
import os
import time
from contextlib import contextmanager

import numpy as np

from ..fillers import fill
from . import kernels
from . import winograd as wg
from .base import Layer, register_layer
from .gemm import gemm
from .threads import split_run

WORKSPACE_BYTES = 64 << 20


def column_cache_budget():
    """Bytes of forward column matrices a net may keep for backward ($VGGTOOL_CONV_CACHE_MB, default 4096)."""
    return int(os.environ.get("VGGTOOL_CONV_CACHE_MB", "4096")) << 20
WINOGRAD_BYTES = 128 << 20  # transformed input + output tiles of one chunk
# 'auto' takes Winograd (with the C transforms, see kernels.py) for eligible layers whose GEMM work per
# transformed element, C * Cout / (C + Cout), reaches WINOGRAD_MIN_GEMM_SHARE: the GEMMs shrink (2.25x for
# F(2x2), 4x for F(4x4)) while the transforms cost ~ (C + Cout) per tile. Measured per layer (2 cores, batch
# 8, ms fwd+bwd; bench/bench_conv.py, TEST nets, so no tile cache): F(2x2) vs the best other algorithm:
# conv2_1 (64->128, share 43) 207 vs 227, conv2_2 319 vs 378, conv3_2 209 vs 297, conv4_2 163 vs 279,
# conv5_1 55 vs 78 (im2col); conv1_2 (64->64, share 32) 453 vs 442 (shifted) in that bench, but in the
# TRAIN net, where the forward's tiles are kept for dW, F(4x4) took conv1_2 from 438 to 315
# (bench/bench_vgg.py).
WINOGRAD_MIN_GEMM_SHARE = 32
# Without the C kernels (no C compiler at install, VGGTOOL_NO_CKERNELS=1) the NumPy transforms cost more,
# and 'auto' takes F(2x2) only from this share. Measured the same way, NumPy transforms vs the best direct
# algorithm: conv2_2 (share 64) 503 vs 353, conv3_2 (128) 311 vs 324, conv4_2 (256) 232 vs 314, conv5_1
# (256, 14x14) 79 vs 75.
WINOGRAD_NUMPY_MIN_GEMM_SHARE = 160
# ... as F(4x4, 3x3) ('winograd4') where the output is at least this many pixels on each side. Measured
# (same bench, ms fwd+bwd, F(4x4) vs F(2x2)): conv2_1 167 vs 188, conv2_2 255 vs 303, conv3_2 158 vs 198,
# conv4_2 141 vs 176; conv5_1 (14x14: 4x4 tiles pad it to 16x16, GEMMs get 8 * 16 tiles) 72 vs 57.
WINOGRAD4_MIN_SIZE = 28
# 'auto' takes the shifted-GEMM algorithm for eligible layers with at least SHIFTED_MIN_CHANNELS input
# channels (with K = C per GEMM, fewer leave the GEMMs memory-bound on the output: VGG-16 conv1_1, C=3)
# and an input of at least SHIFTED_MIN_AREA pixels. Measured per layer (2 cores, batch 8, ms fwd+bwd,
# im2col in a TRAIN net (bench/bench_vgg.py, column cache on) -> shifted (bench/bench_conv.py)): conv1_2
# ~675 -> 508, conv2_2 481 -> 378, conv3_2 346 -> 304, conv4_2 294 -> 289, conv5_1 79 -> 96 (14x14:
# the per-tap GEMMs are too small there).
SHIFTED_MIN_CHANNELS = 16
SHIFTED_MIN_AREA = 28 * 28
ALGORITHMS = ("auto", "im2col", "winograd", "winograd4", "shifted")
_WINOGRAD_TILE = {"winograd": 2, "winograd4": 4}  # output tile m of F(m x m, 3 x 3)

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
    """The algorithm layers use unless their `algorithm` attribute is set: $VGGTOOL_CONV_ALGO or 'auto'."""
    return os.environ.get("VGGTOOL_CONV_ALGO", "auto") or "auto"


def pad_channel_major(xp, x, padded, ph, pw):
    """padded (C, n, Hp, Wp) <- x (n, C, H, W) at offset (ph, pw), zeros elsewhere (only the border is
    written twice: no full fill pass)."""
    h, w = x.shape[2], x.shape[3]

    def part(c0, c1):
        p = padded[c0:c1]
        p[:, :, :ph] = 0
        p[:, :, ph + h:] = 0
        p[:, :, ph:ph + h, :pw] = 0
        p[:, :, ph:ph + h, pw + w:] = 0
        p[:, :, ph:ph + h, pw:pw + w] = x[:, c0:c1].transpose(1, 0, 2, 3)

    split_run(part, padded.shape[0], padded.size, xp)


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

    def im2col(self, xp, padded, col, ho, wo):
        """col (C, kh, kw, n, ho, wo) <- windows of padded (C, n, Hp, Wp)."""
        def part(c0, c1):
            for i in range(self.kh):
                for j in range(self.kw):
                    ys, xs = self._window(i, j, ho, wo)
                    col[c0:c1, i, j] = padded[c0:c1, :, ys, xs]

        split_run(part, col.shape[0], col.size, xp)

    def col2im(self, xp, col, padded, ho, wo):
        """padded (C, n, Hp, Wp) += scatter of col (C, kh, kw, n, ho, wo); padded must start at 0."""
        def part(c0, c1):
            for i in range(self.kh):
                for j in range(self.kw):
                    ys, xs = self._window(i, j, ho, wo)
                    padded[c0:c1, :, ys, xs] += col[c0:c1, i, j]

        split_run(part, col.shape[0], col.size, xp)


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
    """`algorithm`: None (use default_algorithm()), 'auto', 'im2col', 'winograd' or 'shifted'. Winograd
    applies to 3x3, stride 1, dilation 1, group 1, pad <= 2; shifted to stride 1, pad <= dilation *
    (kernel - 1), not 1x1; other shapes always take im2col."""

    min_bottoms = 1
    algorithm = None

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

    bottom_shape = None  # (N, C, H, W) of the last reshape: 'auto' picks the algorithm by input size

    def reshape(self, bottom, top):
        self.bottom_shape = tuple(bottom[0].shape)
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
        self._plan_column_cache(bottom, top)

    def _plan_column_cache(self, bottom, top):
        """Keep the forward columns (im2col) or transformed input tiles (Winograd) for the weight gradient
        when this TRAIN net's budget allows."""
        self._cols_valid = False
        owner = self.net if self.net is not None else self
        claims = owner.__dict__.setdefault("_conv_column_claims", {})
        claims.pop(self.name, None)
        g = self.geom
        n, _, h, w = bottom[0].shape
        ho, wo = top[0].shape[2], top[0].shape[3]
        algo = self._cache_algo = self.chosen_algorithm()  # the cache's layout depends on it
        if algo in _WINOGRAD_TILE:
            m = _WINOGRAD_TILE[algo]
            th, tw = wg.tiles(ho, wo, m)
            self._cache_per_image = (m + 2) ** 2 * self.channels * th * tw
        else:
            self._cache_per_image = self.channels * g.kh * g.kw * ho * wo
        need = self._cache_per_image * n * self.dtype.itemsize
        # the shifted algorithm builds no columns (its weight gradient needs none)
        self._cache_cols = (self.phase == 0 and algo != "shifted" and len(bottom) == 1
                            and sum(claims.values()) + need <= column_cache_budget())
        if self._cache_cols:
            claims[self.name] = need
        elif getattr(self, "_col_cache", None) is not None:
            self._col_cache = None

    def _cached_columns(self, n0, n1, n):
        """The flat slice of the column cache (room for all n images) holding images n0..n1."""
        per_image = self._cache_per_image
        size = per_image * n
        cache = getattr(self, "_col_cache", None)
        if cache is None or cache.size < size:
            with self.device:
                cache = self._col_cache = self.xp.empty(max(size, 1), dtype=self.dtype)
        return cache[per_image * n0:per_image * n1]

    # -- shared loop --------------------------------------------------------------------------------------
    def _chunks(self, n, ho, wo, g=None, channels=None):
        g = g or self.geom
        per_image = (channels or self.channels) * g.kh * g.kw * ho * wo * self.dtype.itemsize
        step = max(1, min(n, WORKSPACE_BYTES // max(per_image, 1)))
        return [(s, min(n, s + step)) for s in range(0, n, step)]

    def _columns(self, x, n0, n1, ho, wo, g=None, out=None):
        """(C*kh*kw, n*ho*wo) column matrix of images n0..n1 of x (N, C, H, W), in `out` (a flat array
        of that size) if given, else in the shared workspace."""
        g, c = g or self.geom, x.shape[1]
        n = n1 - n0
        h, w = x.shape[2], x.shape[3]
        if g.is_pointwise():
            cols = self.workspace("conv_col", (c, n, h, w)) if out is None else out.reshape(c, n, h, w)
            cols[...] = x[n0:n1].transpose(1, 0, 2, 3)
            return cols.reshape(c, n * h * w)
        with _section("im2col_pad"):
            padded = self.workspace("conv_pad", (c, n, h + 2 * g.ph, w + 2 * g.pw))
            pad_channel_major(self.xp, x[n0:n1], padded, g.ph, g.pw)
        with _section("im2col"):
            cols = self.workspace("conv_col", (c, g.kh, g.kw, n, ho, wo)) if out is None \
                else out.reshape(c, g.kh, g.kw, n, ho, wo)
            g.im2col(self.xp, padded, cols, ho, wo)
        return cols.reshape(c * g.kh * g.kw, n * ho * wo)

    def winograd_applicable(self):
        g = self.geom
        return ((g.kh, g.kw, g.sh, g.sw, g.dh, g.dw) == (3, 3, 1, 1, 1, 1) and self.group == 1
                and g.ph <= 2 and g.pw <= 2)

    def shifted_applicable(self):
        g = self.geom
        return ((g.sh, g.sw) == (1, 1) and not g.is_pointwise()
                and g.ph <= g.dh * (g.kh - 1) and g.pw <= g.dw * (g.kw - 1))  # dX's padding must be >= 0

    def c_kernels_usable(self):
        """The C Winograd transforms can run this layer (NumPy arrays, kernels built and enabled)."""
        return self.xp is np and kernels.enabled() and self.dtype in (np.float32, np.float64)

    def chosen_algorithm(self):
        """'im2col', 'winograd', 'winograd4' or 'shifted' for this layer, from `algorithm` / $VGGTOOL_CONV_ALGO.
        'winograd4' (F(4x4, 3x3)) runs only with the C kernels; without them it gives 'winograd'."""
        algo = self.algorithm or default_algorithm()
        if algo not in ALGORITHMS:
            raise self.error(f"unknown convolution algorithm '{algo}' (from VGGTOOL_CONV_ALGO or the layer's "
                             f"algorithm attribute); use one of {', '.join(ALGORITHMS)}")
        if algo in _WINOGRAD_TILE and self.winograd_applicable():
            return "winograd4" if algo == "winograd4" and self.c_kernels_usable() else "winograd"
        if algo == "shifted" and self.shifted_applicable():
            return "shifted"
        if algo != "auto":
            return "im2col"
        shape = self.bottom_shape
        share = self.channels * self.num_output / (self.channels + self.num_output)  # GEMM work per transformed value
        if self.winograd_applicable() and self.xp is np and self.dtype == np.float32:  # (measured there)
            if self.c_kernels_usable() and share >= WINOGRAD_MIN_GEMM_SHARE:
                out = self.geom.output_shape(shape[2], shape[3]) if shape is not None else (0, 0)
                return "winograd4" if min(out) >= WINOGRAD4_MIN_SIZE else "winograd"
            if not self.c_kernels_usable() and share >= WINOGRAD_NUMPY_MIN_GEMM_SHARE:
                return "winograd"
        # measured on the CPU only: on a GPU 'auto' keeps im2col (ask for 'shifted' explicitly)
        if (self.xp is np and self.shifted_applicable() and self.channels >= SHIFTED_MIN_CHANNELS and shape is not None
                and shape[2] * shape[3] >= SHIFTED_MIN_AREA):
            return "shifted"
        return "im2col"

    def forward(self, bottom, top):
        algo = self.chosen_algorithm()
        keep = self._cache_cols and algo == self._cache_algo  # (an algorithm set after reshape has no cache)
        if algo in _WINOGRAD_TILE:
            for b, t in zip(bottom, top):
                self._forward_winograd(b.data, t.data, _WINOGRAD_TILE[algo], keep=keep)
            self._cols_valid = keep
            return
        if algo == "shifted":
            self._cols_valid = False
            bias = self.blobs[1].data if self.bias_term else None
            for b, t in zip(bottom, top):
                self._shifted_correlate(b.data, t.data, self.geom, self._grouped_weight(), bias)
            return
        weight = self.blobs[0].data.reshape(self.group, self.num_output // self.group, -1)
        bias = self.blobs[1].data if self.bias_term else None
        for b, t in zip(bottom, top):
            self._im2col_correlate(b.data, t.data, self.geom, weight, bias, keep=keep)
        self._cols_valid = keep

    def _im2col_correlate(self, x, y, geom, weight, bias, section="im2col", keep=False):
        """y (N, Co, Ho, Wo) <- x (N, C, H, W) correlated with weight (groups, Co/g, C/g*kh*kw) (+ bias);
        `keep`: build the columns in the layer's column cache for backward."""
        xp = self.xp
        groups, cog, cg = weight.shape
        co = groups * cog
        ho, wo = y.shape[2], y.shape[3]
        for n0, n1 in self._chunks(x.shape[0], ho, wo, geom, x.shape[1]):
            store = self._cached_columns(n0, n1, x.shape[0]) if keep else None
            cols = self._columns(x, n0, n1, ho, wo, geom, out=store)
            out = self.workspace("conv_out", (co, (n1 - n0) * ho * wo))
            og = out.reshape(groups, cog, -1)
            with _section(section + "_gemm"):
                for gi in range(groups):
                    xp.matmul(weight[gi], cols[gi * cg:(gi + 1) * cg], out=og[gi])
            with _section(section + "_out_transpose"):
                self._write_output(out.reshape(co, n1 - n0, ho, wo), y[n0:n1], bias)

    def _write_output(self, out, y, bias):
        """y (n, Co, Ho, Wo) <- out (Co, n, Ho, Wo) (+ bias), split over threads by channel."""
        xp = self.xp
        out4 = out.transpose(1, 0, 2, 3)

        def part(c0, c1):
            if bias is not None:
                xp.add(out4[:, c0:c1], bias[c0:c1].reshape(1, -1, 1, 1), out=y[:, c0:c1])
            else:
                y[:, c0:c1] = out4[:, c0:c1]

        split_run(part, out.shape[0], out.size, xp)

    def _transposed_geometry(self):
        """Geometry of dX = dY correlated with the flipped, transposed kernel, or None when that does not
        apply (stride > 1, groups) or would copy more than col2im adds (more outputs than inputs)."""
        g = self.geom
        ph, pw = g.dh * (g.kh - 1) - g.ph, g.dw * (g.kw - 1) - g.pw
        if (g.sh, g.sw) != (1, 1) or self.group != 1 or ph < 0 or pw < 0 or self.num_output > self.channels \
                or g.is_pointwise():
            return None
        return ConvGeometry((g.kh, g.kw), (1, 1), (ph, pw), (g.dh, g.dw))

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
                self._add_bias_grad(dy_all)
            if not (want_w or down):
                continue
            algo = self.chosen_algorithm()
            if algo in _WINOGRAD_TILE:
                self._backward_winograd(b.data, dy_all, b.diff if down else None, want_w, _WINOGRAD_TILE[algo])
                continue
            if algo == "shifted":
                if want_w:
                    self._shifted_weight_grad(b.data, dy_all)
                if down:
                    g = self.geom
                    tgeom = ConvGeometry((g.kh, g.kw), (1, 1), (g.dh * (g.kh - 1) - g.ph, g.dw * (g.kw - 1) - g.pw),
                                         (g.dh, g.dw))
                    wt = self._grouped_weight()[:, :, :, ::-1, ::-1].transpose(0, 2, 1, 3, 4)
                    self._shifted_correlate(dy_all, b.diff, tgeom, wt, None, "shifted_bw_dx")
                continue
            x = b.data
            n_all, _, h, w = x.shape
            ho, wo = dy_all.shape[2], dy_all.shape[3]
            tgeom = self._transposed_geometry() if down else None
            if tgeom is not None:
                # dX as a forward correlation of dY: im2col copies instead of col2im's scattered adds.
                wt = xp.ascontiguousarray(self.blobs[0].data[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
                self._im2col_correlate(dy_all, b.diff, tgeom, wt.reshape(1, self.channels, -1), None, "im2col_bw_dx")
                down = False
                if not want_w:
                    continue
            for n0, n1 in self._chunks(n_all, ho, wo):
                n = n1 - n0
                with _section("im2col_bw_dy_transpose"):
                    dy = self.workspace("conv_dy", (cout, n, ho, wo))
                    dyc = dy_all[n0:n1]

                    def part(c0, c1):
                        dy[c0:c1] = dyc[:, c0:c1].transpose(1, 0, 2, 3)

                    split_run(part, cout, dy.size, xp)
                dyg = dy.reshape(groups, cout // groups, n * ho * wo)
                if want_w:
                    if self._cols_valid:
                        cols = self._cached_columns(n0, n1, n_all).reshape(self.channels * g.kh * g.kw, -1)
                    else:
                        cols = self._columns(x, n0, n1, ho, wo)
                    with _section("im2col_bw_gemm_dw"):
                        for gi in range(groups):
                            gemm(dyg[gi], cols[gi * cg:(gi + 1) * cg].T, wdiff[gi])
                if not down:
                    continue
                with _section("im2col_bw_gemm_dx"):
                    dcols = self.workspace("conv_col", (self.channels * g.kh * g.kw, n * ho * wo))
                    for gi in range(groups):
                        xp.matmul(weight[gi].T, dyg[gi], out=dcols[gi * cg:(gi + 1) * cg])
                dxc = b.diff[n0:n1]
                if g.is_pointwise():
                    dxc[...] = dcols.reshape(self.channels, n, h, w).transpose(1, 0, 2, 3)
                    continue
                with _section("im2col_bw_col2im"):
                    padded = self.workspace("conv_pad", (self.channels, n, h + 2 * g.ph, w + 2 * g.pw))
                    dc = dcols.reshape(self.channels, g.kh, g.kw, n, ho, wo)

                    def scatter(c0, c1):
                        padded[c0:c1] = 0
                        g.col2im(None, dc[c0:c1], padded[c0:c1], ho, wo)
                        dxc[:, c0:c1] = padded[c0:c1, :, g.ph:g.ph + h, g.pw:g.pw + w].transpose(1, 0, 2, 3)

                    split_run(scatter, self.channels, dcols.size, xp)

    def _add_bias_grad(self, dy):
        """blobs[1].diff += dy summed over images and positions: per image a BLAS matrix-vector product
        with ones (3x faster than NumPy's sum over axes (0, 2, 3), which strides across planes)."""
        n, co = dy.shape[0], dy.shape[1]
        ones = getattr(self, "_ones", None)
        if ones is None or ones.size != dy[0, 0].size or ones.dtype != dy.dtype:
            with self.device:
                ones = self._ones = self.xp.ones(dy[0, 0].size, dtype=dy.dtype)
        self.blobs[1].diff += self.xp.matmul(dy.reshape(n, co, -1), ones).sum(axis=0)

    # -- shifted GEMMs (stride 1, no column matrix; see the module docstring) ------------------------------
    def _grouped_weight(self):
        g = self.geom
        return self.blobs[0].data.reshape(self.group, self.num_output // self.group, -1, g.kh, g.kw)

    def _shifted_chunks(self, n, cin, cout, hp, wp):
        per_image = (cin + cout) * hp * wp * self.dtype.itemsize
        step = max(1, min(n, WORKSPACE_BYTES // max(per_image, 1)))
        return [(s, min(n, s + step)) for s in range(0, n, step)]

    def _shifted_padded(self, x, geom):
        """(C, n*Hp*Wp) zero-padded, channel-major, flattened copy of x (n, C, H, W), and (Hp, Wp)."""
        c, n, h, w = x.shape[1], x.shape[0], x.shape[2], x.shape[3]
        hp, wp = h + 2 * geom.ph, w + 2 * geom.pw
        with _section("shifted_pad"):
            padded = self.workspace("conv_pad", (c, n, hp, wp))
            pad_channel_major(self.xp, x, padded, geom.ph, geom.pw)
        return padded.reshape(c, -1), hp, wp

    def _shifted_taps(self, geom, wp, length):
        """(i, j, flat shift) per tap and the number of output positions all taps can read."""
        taps = [(i, j, i * geom.dh * wp + j * geom.dw) for i in range(geom.kh) for j in range(geom.kw)]
        return taps, length - taps[-1][2]

    def _shifted_correlate(self, x, y, geom, weight, bias, section="shifted"):
        """y (N, Co, Ho, Wo) <- stride-1 correlation of x (N, C, H, W) with weight (groups, Co/g, C/g, kh, kw)."""
        xp = self.xp
        groups, cog, cg = weight.shape[:3]
        co = groups * cog
        ho, wo = y.shape[2], y.shape[3]
        # per tap a contiguous (Co/g, C/g) matrix: the GEMMs' A operands
        wk = xp.ascontiguousarray(weight.transpose(0, 3, 4, 1, 2))
        n_all, c, h, w = x.shape
        for n0, n1 in self._shifted_chunks(n_all, c, co, h + 2 * geom.ph, w + 2 * geom.pw):
            flat, hp, wp = self._shifted_padded(x[n0:n1], geom)
            taps, valid = self._shifted_taps(geom, wp, flat.shape[1])
            out = self.workspace("conv_out", (co, flat.shape[1]))
            with _section(section + "_gemm"):
                for gi in range(groups):
                    xs, os_ = flat[gi * cg:(gi + 1) * cg], out[gi * cog:(gi + 1) * cog, :valid]
                    for t, (i, j, s) in enumerate(taps):
                        gemm(wk[gi, i, j], xs[:, s:s + valid], os_, beta=0.0 if t == 0 else 1.0)
            with _section(section + "_out_copy"):
                self._write_output(out.reshape(co, n1 - n0, hp, wp)[:, :, :ho, :wo], y[n0:n1], bias)

    def _shifted_weight_grad(self, x, dy_all):
        """blobs[0].diff += dW, one kernel row at a time: dW[:, :, i, :] = dY (on the padded grid) @ X3_i^T,
        where X3 stacks the kw column shifts of X (rows (c, j)) and X3_i is X3 shifted by i rows. Stacking
        the kw taps gives GEMMs with kw times larger N: per tap (N = C) they ran ~1.5x slower for the
        same work (VGG-16 conv1_2), and X3 costs only kw copies of the input, not im2col's kh*kw."""
        xp, geom = self.xp, self.geom
        groups, co = self.group, self.num_output
        cog, cg = co // groups, self.channels // groups
        ho, wo = dy_all.shape[2], dy_all.shape[3]
        n_all, c, h, w = x.shape
        kh, kw = geom.kh, geom.kw
        dwk = self.workspace("shifted_dw", (groups, kh, cg * kw, cog), zero=True)
        for n0, n1 in self._shifted_chunks(n_all, (kw + 1) * c, co, h + 2 * geom.ph, w + 2 * geom.pw):
            n = n1 - n0
            flat, hp, wp = self._shifted_padded(x[n0:n1], geom)
            taps, valid = self._shifted_taps(geom, wp, flat.shape[1])
            with _section("shifted_bw_x3"):
                span = flat.shape[1] - (kw - 1) * geom.dw
                x3 = self.workspace("shifted_x3", (c, kw, span))

                def stack(c0, c1):
                    for j in range(kw):
                        x3[c0:c1, j] = flat[c0:c1, j * geom.dw:j * geom.dw + span]

                split_run(stack, c, x3.size, xp)
                x3 = x3.reshape(c * kw, span)
            with _section("shifted_bw_dy_pad"):
                dyp = self.workspace("conv_dy", (co, n, hp, wp))
                dyc = dy_all[n0:n1]

                def part(c0, c1):  # garbage positions must be zero: they multiply real inputs
                    d = dyp[c0:c1]
                    d[:, :, ho:] = 0
                    d[:, :, :ho, wo:] = 0
                    d[:, :, :ho, :wo] = dyc[:, c0:c1].transpose(1, 0, 2, 3)

                split_run(part, co, dyp.size, xp)
            dyf = dyp.reshape(co, -1)
            with _section("shifted_bw_gemm_dw"):
                for gi in range(groups):
                    ds, xs = dyf[gi * cog:(gi + 1) * cog, :valid], x3[gi * cg * kw:(gi + 1) * cg * kw]
                    for i in range(kh):
                        r = i * geom.dh * wp
                        gemm(xs[:, r:r + valid], ds.T, dwk[gi, i])
        # (groups, kh, cg, kw, cog) -> (groups, cog, cg, kh, kw)
        self.blobs[0].diff += dwk.reshape(groups, kh, cg, kw, cog).transpose(0, 4, 2, 1, 3).reshape(
            self.blobs[0].diff.shape)

    # -- Winograd F(2x2, 3x3) (see winograd.py) -----------------------------------------------------------
    def _winograd_chunks(self, n, cin, cout, th, tw, m):
        per_image = (m + 2) ** 2 * (cin + cout) * th * tw * self.dtype.itemsize
        step = max(1, min(n, WINOGRAD_BYTES // max(per_image, 1)))
        return [(s, min(n, s + step)) for s in range(0, n, step)]

    @staticmethod
    def _c_transforms(m, *arrays):
        """Whether F(m x m)'s transforms on these arrays run in C: F(4x4) always (chosen_algorithm takes it
        only where the C kernels run; it has no NumPy code), F(2x2) where kernels.usable says so."""
        return m != 2 or kernels.usable(*arrays)

    def _winograd_input(self, src, pad, th, tw, m, out=None):
        """((m+2)^2, Ci, n, th, tw) transformed tiles of src (n, Ci, H, W) zero-padded by pad, in `out` (a flat
        array of that size) if given, else in the shared workspace."""
        xp = self.xp
        n, ci = src.shape[0], src.shape[1]
        shape = ((m + 2) ** 2, ci, n, th, tw)
        v = self.workspace("wino_v", shape) if out is None else out.reshape(shape)
        if self._c_transforms(m, src, v):
            with _section("wino_pad_in_transform"):
                kernels.wino_input(src, pad, v)
            return v
        planes = self.workspace("conv_pad", (2, ci, n, 2 * th + 2, tw + 1))
        rows = self.workspace("wino_rows", (2, 4, ci, n, th, tw + 1))

        def part(c0, c1):
            wg.pad_deinterleaved(xp, src[:, c0:c1], planes[:, c0:c1], pad[0], pad[1])
            wg.input_transform(xp, planes[:, c0:c1], v[:, c0:c1], rows[:, :, c0:c1], th, tw)

        with _section("wino_pad_in_transform"):
            split_run(part, ci, v.size, xp)
        return v

    def _winograd_correlate(self, src, pad, u, dst, bias=None, keep=None):
        """dst (n, Co, Ho, Wo) <- 3x3 correlation of src (n, Ci, H, W) zero-padded by pad, u = ((m+2)^2, Co, Ci)."""
        xp = self.xp
        n, ci, h, w = src.shape
        co, ho, wo = dst.shape[1], dst.shape[2], dst.shape[3]
        a2 = u.shape[0]
        tile = wg.output_tile(a2)
        th, tw = wg.tiles(ho, wo, tile)
        v = self._winograd_input(src, pad, th, tw, tile, out=keep)
        with _section("wino_gemm"):
            m = self.workspace("wino_m", (a2, co, n, th, tw))
            vm, mm = v.reshape(a2, ci, -1), m.reshape(a2, co, -1)
            if xp is np:  # straight cblas calls: ~8% faster than NumPy's batched matmul on these shapes
                for xi in range(a2):
                    gemm(u[xi], vm[xi], mm[xi], beta=0.0)
            else:
                xp.matmul(u, vm, out=mm)
        with _section("wino_out_transform"):
            if self._c_transforms(tile, m, dst, *([] if bias is None else [bias])):
                kernels.wino_output(m, dst, bias)
                return
            out = dst.transpose(1, 0, 2, 3)
            full = out if (2 * th, 2 * tw) == (ho, wo) else self.workspace("wino_full", (co, n, 2 * th, 2 * tw))
            scratch = self.workspace("wino_s", (2, 4, co, n, th, tw))

            def part(c0, c1):
                if bias is not None:  # A^T e_11 A is all ones: M[1,1] += b adds b to every output
                    m[5, c0:c1] += bias[c0:c1].reshape(-1, 1, 1, 1)
                wg.output_transform(xp, m[:, c0:c1], full[c0:c1], scratch[:, :, c0:c1])
                if full is not out:
                    out[c0:c1] = full[c0:c1, :, :ho, :wo]

            split_run(part, co, m.size, xp)

    def _winograd_plan(self, x_shape, y_shape, m):
        """Chunks of images for forward and backward alike (so the forward tiles kept for dW line up)."""
        th, tw = wg.tiles(y_shape[2], y_shape[3], m)
        th2, tw2 = wg.tiles(x_shape[2], x_shape[3], m)  # dX's tiles
        return self._winograd_chunks(x_shape[0], self.channels, self.num_output, max(th, th2), max(tw, tw2), m)

    def _forward_winograd(self, x, y, m, keep=False):
        """keep: transform the input tiles into the layer's cache, for the weight gradient."""
        g = self.geom
        u = wg.weight_transform(self.xp, self.blobs[0].data, m)
        bias = self.blobs[1].data if self.bias_term else None
        for n0, n1 in self._winograd_plan(x.shape, y.shape, m):
            store = self._cached_columns(n0, n1, x.shape[0]) if keep else None
            self._winograd_correlate(x[n0:n1], (g.ph, g.pw), u, y[n0:n1], bias, keep=store)

    def _backward_winograd(self, x, dy_all, dx_all, want_w, m):
        xp, g = self.xp, self.geom
        c, cout = self.channels, self.num_output
        n_all, _, h, w = x.shape
        ho, wo = dy_all.shape[2], dy_all.shape[3]
        a2 = (m + 2) ** 2
        th, tw = wg.tiles(ho, wo, m)
        if want_w:
            du = self.workspace("wino_du", (a2, cout, c), zero=True)
        if dx_all is not None:
            u_back = wg.weight_transform_flipped(xp, self.blobs[0].data, m)
        for n0, n1 in self._winograd_plan(x.shape, dy_all.shape, m):
            n = n1 - n0
            if want_w:
                if self._cols_valid:
                    v = self._cached_columns(n0, n1, n_all).reshape(a2, c, n, th, tw)
                else:
                    with _section("wino_bw_in_transform"):
                        v = self._winograd_input(x[n0:n1], (g.ph, g.pw), th, tw, m)
                with _section("wino_bw_dy_transform"):
                    dm = self.workspace("wino_m", (a2, cout, n, th, tw))
                    if self._c_transforms(m, dy_all, dm):
                        kernels.wino_output_adjoint(dy_all[n0:n1], dm)
                    else:
                        dy = dy_all[n0:n1].transpose(1, 0, 2, 3)
                        if (2 * th, 2 * tw) != (ho, wo):
                            full = self.workspace("wino_full", (cout, n, 2 * th, 2 * tw), zero=True)
                            full[:, :, :ho, :wo] = dy
                            dy_tiles = full
                        else:
                            dy_tiles = dy
                        scratch = self.workspace("wino_s", (4, cout, n, th, 2 * tw))
                        split_run(lambda c0, c1: wg.output_transform_adjoint(xp, dy_tiles[c0:c1], dm[:, c0:c1],
                                                                             scratch[:, c0:c1]), cout, dm.size, xp)
                with _section("wino_bw_gemm_dw"):
                    vm, dmm = v.reshape(a2, c, -1), dm.reshape(a2, cout, -1)
                    for xi in range(a2):
                        gemm(dmm[xi], vm[xi].T, du[xi])
            if dx_all is not None:
                self._winograd_correlate(dy_all[n0:n1], (2 - g.ph, 2 - g.pw), u_back, dx_all[n0:n1])
        if want_w:
            wg.add_weight_grad(xp, du, self.blobs[0].diff, m)
