"""im2col + one GEMM per chunk of images and group (Caffe's non-cuDNN algorithm); any geometry.

    out (Co/g, n*Ho*Wo) = W_g (Co/g, C/g*kh*kw) @ col_g (C/g*kh*kw, n*Ho*Wo)
per chunk of n images (geometry.py has the channel-major layout). Backward: dW = dY @ col^T; dX by
col2im of W^T dY, or, for stride-1 ungrouped layers with no more outputs than inputs, as the forward
correlation of dY with the flipped, transposed kernel (copies instead of col2im's scattered adds).
"""
from .. import cuda_kernels, kernels
from ..gemm import gemm, matmul
from ..threads import split_run
from . import policy
from .geometry import pad_channel_major, to_channel_major, write_output


def chunks(conv, n, ho, wo, geom=None, channels=None):
    geom = geom or conv.geom
    per_image = (channels or conv.channels) * geom.kh * geom.kw * ho * wo * conv.dtype.itemsize
    return policy.plan_chunks(n, per_image, policy.WORKSPACE_BYTES)


def columns(conv, x, n0, n1, ho, wo, geom=None, out=None):
    """(C*kh*kw, n*ho*wo) column matrix of images n0..n1 of x (N, C, H, W), in `out` (a flat array of
    that size) if given, else in the shared workspace."""
    g, c = geom or conv.geom, x.shape[1]
    n, h, w = n1 - n0, x.shape[2], x.shape[3]
    if g.is_pointwise():
        cols = conv.workspace("conv_col", (c, n, h, w)) if out is None else out.reshape(c, n, h, w)
        cols[...] = x[n0:n1].transpose(1, 0, 2, 3)
        return cols.reshape(c, n * h * w)
    cols = conv.workspace("conv_col", (c, g.kh, g.kw, n, ho, wo)) if out is None \
        else out.reshape(c, g.kh, g.kw, n, ho, wo)
    if kernels.usable(x, cols):  # one C pass from the images, no padded copy
        with conv.profiler.section("im2col"):
            kernels.im2col(x[n0:n1], g, cols)
        return cols.reshape(c * g.kh * g.kw, n * ho * wo)
    if cuda_kernels.usable(x, cols):  # the same pass as one named CUDA kernel
        with conv.profiler.section("im2col"):
            cuda_kernels.im2col(x[n0:n1], g, cols)
        return cols.reshape(c * g.kh * g.kw, n * ho * wo)
    with conv.profiler.section("im2col_pad"):
        padded = conv.workspace("conv_pad", (c, n, h + 2 * g.ph, w + 2 * g.pw))
        pad_channel_major(conv.xp, x[n0:n1], padded, g.ph, g.pw)
    with conv.profiler.section("im2col"):
        g.im2col(conv.xp, padded, cols, ho, wo)
    return cols.reshape(c * g.kh * g.kw, n * ho * wo)


def correlate(conv, x, y, geom, weight, bias, section="im2col", keep=False, rectify=False, mask=None):
    """y (N, Co, Ho, Wo) <- x (N, C, H, W) correlated with weight (groups, Co/g, C/g*kh*kw) (+ bias;
    rectify: then max(., 0)); `keep`: build the columns in the layer's forward cache, for backward."""
    groups, cog, cg = weight.shape
    co = groups * cog
    ho, wo = y.shape[2], y.shape[3]
    for n0, n1 in chunks(conv, x.shape[0], ho, wo, geom, x.shape[1]):
        store = conv.forward_cache.images(conv, n0, n1, x.shape[0]) if keep else None
        cols = columns(conv, x, n0, n1, ho, wo, geom, out=store)
        out = conv.workspace(policy.GEMM_SLOT, (co, (n1 - n0) * ho * wo))
        og = out.reshape(groups, cog, -1)
        with conv.profiler.section(section + "_gemm"):
            for gi in range(groups):
                matmul(weight[gi], cols[gi * cg:(gi + 1) * cg], og[gi])
        with conv.profiler.section(section + "_out_transpose"):
            write_output(conv.xp, out.reshape(co, n1 - n0, ho, wo), y[n0:n1], bias, rectify,
                         None if mask is None else mask[n0:n1])


def forward(conv, x, y, keep):
    weight = conv.blobs[0].data.reshape(conv.group, conv.num_output // conv.group, -1)
    bias = conv.blobs[1].data if conv.bias_term else None
    correlate(conv, x, y, conv.geom, weight, bias, keep=keep, rectify=conv.rectify_output, mask=conv.rectify_mask)


def transposed_geometry(conv):
    """Geometry of dX = dY correlated with the flipped, transposed kernel, or None when that does not
    apply (stride > 1, groups) or would copy more than col2im adds (more outputs than inputs)."""
    g = conv.geom
    t = g.transposed()
    if (g.sh, g.sw) != (1, 1) or conv.group != 1 or t.ph < 0 or t.pw < 0 or conv.num_output > conv.channels \
            or g.is_pointwise():
        return None
    return t


def backward(conv, x, dy_all, dx_all, want_w):
    """blobs[0].diff += dW and dx_all <- dX (None: not wanted); one pass over chunks of dY serves both."""
    tgeom = transposed_geometry(conv) if dx_all is not None else None
    if tgeom is not None:
        backward_data_by_correlation(conv, dy_all, dx_all, tgeom)
        dx_all = None
    if not want_w and dx_all is None:
        return
    ho, wo = dy_all.shape[2], dy_all.shape[3]
    for n0, n1 in chunks(conv, x.shape[0], ho, wo):
        with conv.profiler.section("im2col_bw_dy_transpose"):
            dy = conv.workspace(policy.GEMM_SLOT, (conv.num_output, n1 - n0, ho, wo))
            to_channel_major(conv.xp, dy_all[n0:n1], dy)
        dyg = dy.reshape(conv.group, conv.num_output // conv.group, -1)
        if want_w:
            backward_weights(conv, x, dyg, n0, n1, ho, wo)
        if dx_all is not None:
            backward_data(conv, dyg, dx_all[n0:n1], ho, wo)


def backward_data_by_correlation(conv, dy_all, dx_all, tgeom):
    """dx_all <- dY correlated with the flipped, transposed kernel (stride 1, one group)."""
    wt = conv.xp.ascontiguousarray(conv.blobs[0].data[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    correlate(conv, dy_all, dx_all, tgeom, wt.reshape(1, conv.channels, -1), None, "im2col_bw_dx")


def backward_weights(conv, x, dyg, n0, n1, ho, wo):
    """blobs[0].diff += dY_g @ col_g^T for images n0..n1; dyg (groups, Co/g, n*Ho*Wo) channel-major."""
    g, groups = conv.geom, conv.group
    cg = conv.channels // groups * g.kh * g.kw
    wdiff = conv.blobs[0].diff.reshape(groups, conv.num_output // groups, -1)
    cache = conv.forward_cache
    if cache.valid:
        cols = cache.images(conv, n0, n1, x.shape[0]).reshape(conv.channels * g.kh * g.kw, -1)
    else:
        cols = columns(conv, x, n0, n1, ho, wo)
    with conv.profiler.section("im2col_bw_gemm_dw"):
        for gi in range(groups):
            col = cols[gi * cg:(gi + 1) * cg]
            if policy.weight_gradient_transposed(conv.xp, cg, col.shape[1]):
                wt = conv.workspace("conv_dw", (cg, wdiff.shape[1]))
                matmul(col, dyg[gi].T, wt)
                wdiff[gi] += wt.T
            else:
                gemm(dyg[gi], col.T, wdiff[gi])


def backward_data(conv, dyg, dxc, ho, wo):
    """dxc (n, C, H, W) <- col2im of W_g^T dY_g, the images of one chunk."""
    xp, g, groups = conv.xp, conv.geom, conv.group
    c = conv.channels
    n, h, w = dxc.shape[0], dxc.shape[2], dxc.shape[3]
    weight = conv.blobs[0].data.reshape(groups, conv.num_output // groups, -1)
    cg = weight.shape[2]
    with conv.profiler.section("im2col_bw_gemm_dx"):
        dcols = conv.workspace("conv_col", (c * g.kh * g.kw, n * ho * wo))
        for gi in range(groups):
            matmul(weight[gi].T, dyg[gi], dcols[gi * cg:(gi + 1) * cg])
    if g.is_pointwise():
        dxc[...] = dcols.reshape(c, n, h, w).transpose(1, 0, 2, 3)
        return
    if kernels.usable(dcols, dxc):  # one C pass into dX, no padded buffer
        with conv.profiler.section("im2col_bw_col2im"):
            kernels.col2im(dcols.reshape(c, g.kh, g.kw, n, ho, wo), g, dxc)
        return
    if cuda_kernels.usable(dcols, dxc):
        with conv.profiler.section("im2col_bw_col2im"):
            cuda_kernels.col2im(dcols.reshape(c, g.kh, g.kw, n, ho, wo), g, dxc)
        return
    with conv.profiler.section("im2col_bw_col2im"):
        padded = conv.workspace("conv_pad", (c, n, h + 2 * g.ph, w + 2 * g.pw))
        dc = dcols.reshape(c, g.kh, g.kw, n, ho, wo)

        def scatter(c0, c1):
            padded[c0:c1] = 0
            g.col2im(None, dc[c0:c1], padded[c0:c1], ho, wo)
            dxc[:, c0:c1] = padded[c0:c1, :, g.ph:g.ph + h, g.pw:g.pw + w].transpose(1, 0, 2, 3)

        split_run(scatter, c, dcols.size, xp)
