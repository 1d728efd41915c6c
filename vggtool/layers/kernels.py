"""The optional C kernels (_kernels.c): Winograd transforms, 2x2 max pooling, im2col and col2im in one pass
each; the solver's SGD step and its finiteness check in one pass over a parameter.

`usable(...)` says whether a call can take them: the extension was built (pip builds it when a C
compiler is present), it is not switched off (setting c_kernels, VGGTOOL_NO_CKERNELS=1; see
vggtool.config), and the arrays are C-contiguous
NumPy arrays of one float dtype. Otherwise the layers run their NumPy code, which gives the same
results (tests compare the two). Each call is split over threads by channel (threads.split_run).
"""
import math

import numpy as np

from ..config import defaults
from .threads import split_run

try:
    from . import _kernels as _k
except ImportError:  # not built (no C compiler at install time)
    _k = None


def built():
    return _k is not None


def enabled():
    """Built and not switched off (vggtool.config: c_kernels, a process-wide setting)."""
    return _k is not None and defaults().c_kernels


def usable(*arrays):
    if not enabled():
        return False
    dtype = arrays[0].dtype
    return all(type(a) is np.ndarray and a.dtype == dtype and a.flags.c_contiguous for a in arrays) \
        and dtype in (np.float32, np.float64)


def _ptr(a):
    return a.ctypes.data


def _mask_ptr(mask, shape):
    """The address of a fused ReLU's mask (0 for None), checked to be a contiguous one-byte array of shape."""
    if mask is None:
        return 0
    if not (mask.shape == shape and mask.itemsize == 1 and mask.flags.c_contiguous):
        raise ValueError(f"mask {mask.shape} {mask.dtype} is not a contiguous one-byte array of shape {shape}")
    return _ptr(mask)


def output_tile(transformed):
    """m of F(m x m, 3 x 3) from the (m + 2)^2 entries of its transformed tiles (16 -> 2, 36 -> 4)."""
    return math.isqrt(transformed) - 2


def wino_input(src, pad, tiles):
    """tiles ((m+2)^2, C, n, th, tw) <- B^T d B of the (m+2)x(m+2) tiles (stride m) of src (n, C, H, W)
    zero-padded by pad."""
    n, c, h, w = src.shape
    th, tw = tiles.shape[3], tiles.shape[4]
    tile = output_tile(tiles.shape[0])
    split_run(lambda c0, c1: _k.wino_input(tile, src.itemsize, _ptr(src), n, c, h, w, pad[0], pad[1], th, tw, c0, c1,
                                           _ptr(tiles)), c, tiles.size)


def wino_output(m, dst, bias=None, rectify=False, mask=None):
    """dst (n, C, Ho, Wo) <- A^T M A (+ bias) of every tile of m ((m+2)^2, C, n, th, tw); rectify: then
    max(., 0), a ReLU fused into the same pass; mask (a C-contiguous one-byte array of dst's shape, or None):
    where the output is positive, that ReLU's mask."""
    n, c, ho, wo = dst.shape
    th, tw = m.shape[3], m.shape[4]
    tile = output_tile(m.shape[0])
    bias_ptr = 0 if bias is None else _ptr(bias)
    mask_ptr = _mask_ptr(mask, dst.shape)
    split_run(lambda c0, c1: _k.wino_output(tile, m.itemsize, _ptr(m), n, c, th, tw, _ptr(dst), ho, wo, bias_ptr,
                                            bool(rectify), mask_ptr, c0, c1), c, m.size)


def wino4_fused(gemm, src, pad, u, dst, bias, rectify, mask, keep, rows, b0, b1):
    """Blocks [b0, b1) of the F(4x4) correlation dst (n, Co, Ho, Wo) <- src (n, Ci, H, W) zero-padded by pad
    with u (36, Co, Ci) (+ bias; rectify: then max(., 0); mask: then dst > 0), each block `rows` tile rows of
    one image transformed, multiplied (36 GEMMs through `gemm`, gemm.cblas_address's pair) and transformed
    back while in cache. keep (None, or a flat array of 36 * Ci * n * th * tw): the transformed input is
    written there, in wino_input's layout. Not split here: the caller runs block ranges in threads."""
    n, ci, h, w = src.shape
    co, ho, wo = dst.shape[1], dst.shape[2], dst.shape[3]
    th, tw = -(-ho // 4), -(-wo // 4)
    if not usable(src, u, dst, *[a for a in (bias, keep) if a is not None]):
        raise ValueError("wino4_fused: src, u, dst, bias and keep must be C-contiguous NumPy arrays of one float "
                         "dtype, with the C kernels on")
    if u.shape != (36, co, ci) or (keep is not None and keep.size < 36 * ci * n * th * tw):
        raise ValueError(f"wino4_fused: u {u.shape} or keep does not fit src {src.shape} and dst {dst.shape}")
    mask_ptr = _mask_ptr(mask, dst.shape)
    _k.wino4_fused(src.itemsize, gemm[0], bool(gemm[1]), _ptr(src), n, ci, h, w, pad[0], pad[1], th, tw, _ptr(u), co,
                   _ptr(dst), ho, wo, 0 if bias is None else _ptr(bias), bool(rectify), mask_ptr, rows, b0, b1,
                   0 if keep is None else _ptr(keep))


def wino_output_adjoint(dy, dm):
    """dm ((m+2)^2, C, n, th, tw) <- A dY A^T of every m x m tile of dy (n, C, Ho, Wo) (zero beyond Ho x Wo)."""
    n, c, ho, wo = dy.shape
    th, tw = dm.shape[3], dm.shape[4]
    tile = output_tile(dm.shape[0])
    split_run(lambda c0, c1: _k.wino_output_adjoint(tile, dy.itemsize, _ptr(dy), n, c, ho, wo, th, tw, _ptr(dm),
                                                    c0, c1), c, dm.size)


def max_pool_2x2(x, y, mask):
    """y, mask (uint8 window index) <- 2x2 stride-2 max pooling of x (n, C, H, W), H and W even."""
    planes, h, w = x.shape[0] * x.shape[1], x.shape[2], x.shape[3]
    split_run(lambda p0, p1: _k.max_pool_2x2(x.itemsize, _ptr(x), h, w, _ptr(y), _ptr(mask), p0, p1), planes, x.size)


def max_pool_2x2_backward(dy, mask, dx):
    """dx (n, C, H, W) <- dy routed to each window's maximum (mask from max_pool_2x2), zero elsewhere."""
    planes, h, w = dx.shape[0] * dx.shape[1], dx.shape[2], dx.shape[3]
    split_run(lambda p0, p1: _k.max_pool_2x2_backward(dx.itemsize, _ptr(dy), _ptr(mask), h, w, _ptr(dx), p0, p1),
              planes, dx.size)


def _geometry_args(geom, ho, wo):
    return (geom.kh, geom.kw, geom.sh, geom.sw, geom.ph, geom.pw, geom.dh, geom.dw, ho, wo)


def im2col(src, geom, cols):
    """cols (C, kh, kw, n, ho, wo) <- the windows of src (n, C, H, W) under `geom` (ConvGeometry), zeros
    where a window reaches past the image: the padded copy and the kh*kw slice copies in one pass."""
    n, c, h, w = src.shape
    ho, wo = cols.shape[4], cols.shape[5]
    args = _geometry_args(geom, ho, wo)
    split_run(lambda c0, c1: _k.im2col(src.itemsize, _ptr(src), n, c, h, w, *args, c0, c1, _ptr(cols)), c, cols.size)


def col2im(cols, geom, dst):
    """dst (n, C, H, W) <- the adjoint of im2col: every column entry added back to its input pixel."""
    n, c, h, w = dst.shape
    ho, wo = cols.shape[4], cols.shape[5]
    args = _geometry_args(geom, ho, wo)
    split_run(lambda c0, c1: _k.col2im(dst.itemsize, _ptr(cols), n, c, h, w, *args, c0, c1, _ptr(dst)), c, cols.size)


def sgd_update(w, g, h, *, scale, decay, momentum, rate):
    """Caffe's SGD step on one parameter in one pass (w, g = its diff, h = its history; flat, C-contiguous,
    one dtype): g = g * scale (None: no scaling), g += decay * w (None: no decay), h = momentum * h +
    rate * g, g = h, w -= g; the bits of the NumPy update. Split over threads by element range."""
    args = (w.itemsize, _ptr(w), _ptr(g), _ptr(h))
    tail = (scale is not None, 1.0 if scale is None else float(scale), decay is not None,
            0.0 if decay is None else float(decay), float(momentum), float(rate))
    split_run(lambda lo, hi: _k.sgd_update(*args, lo, hi, *tail), w.size, 3 * w.size)


def all_finite(x):
    """True when every element of the C-contiguous array x is finite; one pass, split over threads."""
    seen = []
    split_run(lambda lo, hi: seen.append(_k.all_finite(x.itemsize, _ptr(x), lo, hi)), x.size, x.size)
    return all(seen)
