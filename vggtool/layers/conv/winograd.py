"""Winograd F(m x m, 3 x 3) convolution, m = 2 ('winograd2') or 4 ('winograd4'): 3x3, stride 1, one group.

Per chunk of images: transform the input tiles (V), one GEMM per transformed position
(M[xi] = U[xi] @ V[xi]), transform the outputs back (winograd_transforms.py has the mathematics). The
transforms run in C where the kernels are built (kernels.py; F(4x4) has only the C code), else in NumPy.
F(4x4) layers with few channels run the same steps as fused blocks of tile rows instead, in cache
(kernels.wino4_fused; where: policy.winograd_fused_rows).
Backward: dW via dU[xi] = dM[xi] @ V[xi]^T, V kept from the forward pass when the cache allows; dX
as the same correlation of dY padded by 2 - pad with the flipped, transposed kernel.
"""
import numpy as np

from .. import cuda_kernels, kernels
from ..gemm import cblas_address, gemm, independent_gemms
from ..threads import split_run
from . import policy
from . import winograd_transforms as wg


def c_transforms(conv, m, *arrays):
    """Whether F(m x m)'s transforms on these arrays run in C: F(4x4) on the CPU always (the policy takes
    it only where the C kernels run; it has no NumPy code; on a GPU the CUDA kernels run it), F(2x2) where
    kernels.usable says so."""
    return kernels.usable(*arrays) if m == 2 else conv.xp is np


def plan(conv, x_shape, y_shape, m):
    """Chunks of images for forward and backward alike (so the forward tiles kept for dW line up)."""
    th, tw = wg.tiles(y_shape[2], y_shape[3], m)
    th2, tw2 = wg.tiles(x_shape[2], x_shape[3], m)  # dX's tiles
    per_image = (m + 2) ** 2 * (conv.channels + conv.num_output) * max(th, th2) * max(tw, tw2) * conv.dtype.itemsize
    return policy.plan_chunks(x_shape[0], per_image, policy.WINOGRAD_BYTES)


def input_tiles(conv, src, pad, th, tw, m, out=None):
    """((m+2)^2, Ci, n, th, tw) transformed tiles of src (n, Ci, H, W) zero-padded by pad, in `out` (a
    flat array of that size) if given, else in the shared workspace."""
    xp = conv.xp
    n, ci = src.shape[0], src.shape[1]
    shape = ((m + 2) ** 2, ci, n, th, tw)
    v = conv.workspace("wino_v", shape) if out is None else out.reshape(shape)
    if c_transforms(conv, m, src, v):
        with conv.profiler.section("wino_pad_in_transform"):
            kernels.wino_input(src, pad, v)
        return v
    if cuda_kernels.usable(src, v):
        with conv.profiler.section("wino_pad_in_transform"):
            cuda_kernels.wino_input(src, pad, v)
        return v
    planes = conv.workspace("conv_pad", (2, ci, n, 2 * th + 2, tw + 1))
    rows = conv.workspace("wino_rows", (2, 4, ci, n, th, tw + 1))

    def part(c0, c1):
        wg.pad_deinterleaved(xp, src[:, c0:c1], planes[:, c0:c1], pad[0], pad[1])
        wg.input_transform(xp, planes[:, c0:c1], v[:, c0:c1], rows[:, :, c0:c1], th, tw)

    with conv.profiler.section("wino_pad_in_transform"):
        split_run(part, ci, v.size, xp)
    return v


def _output_tiles(conv, m, dst, bias, th, tw, rectify=False, mask=None):
    """dst (n, Co, Ho, Wo) <- A^T M A (+ bias) of the tiles m ((m+2)^2, Co, n, th, tw); rectify: then
    max(., 0) (a fused ReLU); mask (dst's shape, or None): then where dst > 0 (that ReLU's mask)."""
    xp = conv.xp
    tile = kernels.output_tile(m.shape[0])
    if c_transforms(conv, tile, m, dst, *([] if bias is None else [bias])):
        kernels.wino_output(m, dst, bias, rectify, mask)
        return
    if cuda_kernels.usable(m, dst, *[a for a in (bias, mask) if a is not None]):
        cuda_kernels.wino_output(m, dst, bias, rectify, mask)
        return
    co, n, ho, wo = dst.shape[1], dst.shape[0], dst.shape[2], dst.shape[3]
    out = dst.transpose(1, 0, 2, 3)
    full = out if (2 * th, 2 * tw) == (ho, wo) else conv.workspace("wino_full", (co, n, 2 * th, 2 * tw))
    scratch = conv.workspace("wino_s", (2, 4, co, n, th, tw))

    def part(c0, c1):
        if bias is not None:  # A^T e_11 A is all ones: M[1,1] += b adds b to every output
            m[5, c0:c1] += bias[c0:c1].reshape(-1, 1, 1, 1)
        wg.output_transform(xp, m[:, c0:c1], full[c0:c1], scratch[:, :, c0:c1])
        if full is not out:
            out[c0:c1] = full[c0:c1, :, :ho, :wo]
        if rectify:
            xp.maximum(out[c0:c1], 0, out=out[c0:c1])
        if mask is not None:
            xp.greater(out[c0:c1], 0, out=mask.transpose(1, 0, 2, 3)[c0:c1])

    split_run(part, co, m.size, xp)


def correlate(conv, src, pad, u, dst, bias=None, keep=None, rectify=False, mask=None):
    """dst (n, Co, Ho, Wo) <- 3x3 correlation of src (n, Ci, H, W) zero-padded by pad, u = ((m+2)^2, Co, Ci)
    (+ bias; rectify: then max(., 0); mask: then dst > 0)."""
    xp = conv.xp
    ci = src.shape[1]
    co, ho, wo = dst.shape[1], dst.shape[2], dst.shape[3]
    a2 = u.shape[0]
    tile = kernels.output_tile(a2)
    th, tw = wg.tiles(ho, wo, tile)
    if _fused(conv, src, pad, u, dst, bias, keep, rectify, mask, tile, th, tw):
        return
    v = input_tiles(conv, src, pad, th, tw, tile, out=keep)
    with conv.profiler.section("wino_gemm"):
        m = conv.workspace("wino_m", (a2, co, src.shape[0], th, tw))
        vm, mm = v.reshape(a2, ci, -1), m.reshape(a2, co, -1)
        if xp is np:  # straight cblas calls: faster than NumPy's batched matmul on these shapes
            def positions(x0, x1):
                for xi in range(x0, x1):
                    gemm(u[xi], vm[xi], mm[xi], beta=0.0)

            independent_gemms(positions, a2, u.size + vm.size + mm.size)
        else:
            xp.matmul(u, vm, out=mm)
    with conv.profiler.section("wino_out_transform"):
        _output_tiles(conv, m, dst, bias, th, tw, rectify, mask)


def _fused(conv, src, pad, u, dst, bias, keep, rectify, mask, tile, th, tw):
    """Run correlate as fused blocks of tile rows (policy.winograd_fused_rows), each block's GEMMs on one
    thread and the blocks over the threads; False where that path does not apply."""
    rows = policy.winograd_fused_rows(conv.xp, tile, src.shape[1], dst.shape[1], th, tw, src.dtype.itemsize,
                                      keep is not None)
    address = cblas_address(src.dtype) if rows else None
    if not address or not kernels.usable(src, u, dst, *[a for a in (bias, keep) if a is not None]):
        return False
    blocks = src.shape[0] * -(-th // rows)
    with conv.profiler.section("wino_fused"):
        independent_gemms(lambda b0, b1: kernels.wino4_fused(address, src, pad, u, dst, bias, rectify, mask, keep,
                                                             rows, b0, b1), blocks, src.size + dst.size)
    return True


def forward(conv, x, y, m, keep):
    """keep: transform the input tiles into the layer's forward cache, for the weight gradient."""
    g = conv.geom
    u = wg.weight_transform(conv.xp, conv.blobs[0].data, m)
    bias = conv.blobs[1].data if conv.bias_term else None
    for n0, n1 in plan(conv, x.shape, y.shape, m):
        store = conv.forward_cache.images(conv, n0, n1, x.shape[0]) if keep else None
        mask = None if conv.rectify_mask is None else conv.rectify_mask[n0:n1]
        correlate(conv, x[n0:n1], (g.ph, g.pw), u, y[n0:n1], bias, keep=store, rectify=conv.rectify_output, mask=mask)


def backward_data(conv, x_shape, dy_all, dx_all, m):
    g = conv.geom
    u_back = wg.weight_transform_flipped(conv.xp, conv.blobs[0].data, m)
    for n0, n1 in plan(conv, x_shape, dy_all.shape, m):
        correlate(conv, dy_all[n0:n1], (2 - g.ph, 2 - g.pw), u_back, dx_all[n0:n1])


def _output_adjoint(conv, dyc, dm, th, tw):
    """dm ((m+2)^2, Co, n, th, tw) <- A dY A^T of every tile of dyc (n, Co, Ho, Wo), zero beyond Ho x Wo."""
    xp = conv.xp
    m = kernels.output_tile(dm.shape[0])
    if c_transforms(conv, m, dyc, dm):
        kernels.wino_output_adjoint(dyc, dm)
        return
    if cuda_kernels.usable(dyc, dm):
        cuda_kernels.wino_output_adjoint(dyc, dm)
        return
    cout, n, ho, wo = dyc.shape[1], dyc.shape[0], dyc.shape[2], dyc.shape[3]
    dy = dyc.transpose(1, 0, 2, 3)
    if (2 * th, 2 * tw) != (ho, wo):
        full = conv.workspace("wino_full", (cout, n, 2 * th, 2 * tw), zero=True)
        full[:, :, :ho, :wo] = dy
        dy = full
    scratch = conv.workspace("wino_s", (4, cout, n, th, 2 * tw))
    split_run(lambda c0, c1: wg.output_transform_adjoint(xp, dy[c0:c1], dm[:, c0:c1], scratch[:, c0:c1]),
              cout, dm.size, xp)


def backward_weights(conv, x, dy_all, m):
    """blobs[0].diff += G^T (sum over chunks of dM @ V^T) G."""
    g, c, cout = conv.geom, conv.channels, conv.num_output
    n_all = x.shape[0]
    a2 = (m + 2) ** 2
    th, tw = wg.tiles(dy_all.shape[2], dy_all.shape[3], m)
    du = conv.workspace("wino_du", (a2, cout, c), zero=True)
    cache = conv.forward_cache
    for n0, n1 in plan(conv, x.shape, dy_all.shape, m):
        n = n1 - n0
        if cache.valid:
            v = cache.images(conv, n0, n1, n_all).reshape(a2, c, n, th, tw)
        else:
            with conv.profiler.section("wino_bw_in_transform"):
                v = input_tiles(conv, x[n0:n1], (g.ph, g.pw), th, tw, m)
        with conv.profiler.section("wino_bw_dy_transform"):
            dm = conv.workspace("wino_m", (a2, cout, n, th, tw))
            _output_adjoint(conv, dy_all[n0:n1], dm, th, tw)
        with conv.profiler.section("wino_bw_gemm_dw"):
            vm, dmm = v.reshape(a2, c, -1), dm.reshape(a2, cout, -1)

            def positions(x0, x1):
                for xi in range(x0, x1):
                    gemm(dmm[xi], vm[xi].T, du[xi])

            if conv.xp is np:
                independent_gemms(positions, a2, du.size + vm.size + dmm.size)
            else:
                positions(0, a2)
    wg.add_weight_grad(conv.xp, du, conv.blobs[0].diff, m)
