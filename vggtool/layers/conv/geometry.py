"""Geometry of a 2-d convolution: the prototxt's kernel/stride/pad/dilation, output sizes, and the
channel-major layout the algorithms share.

Layout: the padded input of a chunk of n images is stored channel-major, (C, n, Hp, Wp), so building the
column matrix is kh*kw strided slice copies and one GEMM covers all n images of the chunk; outputs are
computed as (Co, n, Ho, Wo) and written back to (n, Co, Ho, Wo) by `write_output`.
"""
from .. import cuda_kernels
from ..threads import split_run


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

    def transposed(self):
        """Geometry of dX = dY correlated with the flipped, transposed kernel (stride 1 only); its pad is
        negative where that correlation cannot express dX."""
        return ConvGeometry((self.kh, self.kw), (1, 1),
                            (self.dh * (self.kh - 1) - self.ph, self.dw * (self.kw - 1) - self.pw), (self.dh, self.dw))

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


def read_conv_geometry(layer, p):
    """ConvGeometry from a ConvolutionParameter `p`; errors name `layer`."""
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


RECTIFY_BLOCK_BYTES = 1 << 18  # a block of write_output's fused max(., 0): well inside a core's L2


def write_output(xp, out, y, bias, rectify=False, mask=None):
    """y (n, Co, Ho, Wo) <- out (Co, n, Ho, Wo) (+ bias; rectify: then max(., 0), a fused ReLU, on the
    channels just written; mask, y's shape: then y > 0, that ReLU's mask), split over threads by channel;
    on a GPU one named kernel."""
    if cuda_kernels.usable(out, y, *[a for a in (bias, mask) if a is not None]):
        cuda_kernels.write_output(out, y, bias, rectify, mask)
        return
    out4 = out.transpose(1, 0, 2, 3)
    n = y.shape[0]

    def part(c0, c1):
        # in blocks of images when rectifying, so that max(., 0) finds the values just written still in
        # cache; blocks of about RECTIFY_BLOCK_BYTES, not single images, so small maps make few calls
        block = (c1 - c0) * y.shape[2] * y.shape[3] * y.itemsize  # bytes per image
        step = max(1, RECTIFY_BLOCK_BYTES // max(1, block)) if rectify else max(1, n)
        for i0 in range(0, n, step):
            i1 = min(n, i0 + step)
            dst = y[i0:i1, c0:c1]
            if bias is not None:
                xp.add(out4[i0:i1, c0:c1], bias[c0:c1].reshape(1, -1, 1, 1), out=dst)
            else:
                dst[...] = out4[i0:i1, c0:c1]
            if rectify:
                xp.maximum(dst, 0, out=dst)
            if mask is not None:
                xp.greater(dst, 0, out=mask[i0:i1, c0:c1])

    split_run(part, out.shape[0], out.size, xp)


def to_channel_major(xp, x, out):
    """out (C, n, H, W) <- x (n, C, H, W), split over threads by channel."""
    def part(c0, c1):
        out[c0:c1] = x[:, c0:c1].transpose(1, 0, 2, 3)

    split_run(part, out.shape[0], out.size, xp)
