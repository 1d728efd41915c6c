"""The mathematics of Winograd F(m x m, 3 x 3) (Lavin & Gray 2015): the weight transforms for m = 2 and 4,
and the NumPy input/output transforms of F(2x2) (F(4x4)'s run only in C, _kernels_impl.h).

F(2x2), as 16 batched GEMMs: each 2x2 output tile is A^T [ (G g G^T) (.) (B^T d B) ] A for the 4x4 input tile d (stride 2), so the
multiplications become, per position xi of the 4x4 transformed tile, one GEMM
    M[xi] (Cout, T) = U[xi] (Cout, C) @ V[xi] (C, T),   T = number of 2x2 tiles of the chunk,
with 16 * Cout * C * T multiply-adds instead of 36 * Cout * C * T for im2col (2.25x fewer).

Layouts are channel-major, as in the im2col path: the zero-padded input of a chunk of n images is
(C, n, 2*th + 2, 2*tw + 2), tiles are (n, th, tw). The backward pass is exact for the computed forward:
  * dW: dU[xi] = dM[xi] @ V[xi]^T with dM = A dY A^T per tile, then dW = G^T dU G;
  * dX: the same correlation applied to dY padded by 2 - pad, with the flipped, transposed kernel.
All transforms are sums and differences of strided slices: a few passes over memory, no Python loops
over pixels. Where the C kernels are built (layers/kernels.py) the layer runs their one-pass versions of the
input, output and adjoint transforms instead; tests check both against each other and against loops.
"""
import contextlib

import numpy as np

# G of F(m x m, 3 x 3) per output tile size m. F(2x2): the matrices below. F(4x4) (Lavin & Gray's
# interpolation points 0, 1, -1, 2, -2; its B^T and A^T are written out in _kernels.c, the only code that
# runs it): 36 multiplications per 16 outputs instead of 16 per 4, so its GEMMs are 1.78x smaller again.
_G = {
    2: np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]]),
    4: np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
                 [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]),
}
# ((m+2)^2, 9): U[(m+2)a+b] = sum_ij G[a,i] G[b,j] w[3i+j]
_GG = {m: np.kron(g, g) for m, g in _G.items()}
# kron(G, G) per (array module, GPU id or None, m, dtype), made on first use: copying it to the device in every
# forward and backward would be a host-to-device transfer (and an allocation) per call on a GPU.
_device_matrices = {}


def transform_matrix(xp, m, like):
    """kron(G, G) of F(m x m) with like's dtype, on like's device (its GPU for a CuPy array): one array per
    module, device, m and dtype, shared by every layer there. Read-only on NumPy; never written on CuPy."""
    device = getattr(like, "device", None)
    gpu_id = getattr(device, "id", None)  # NumPy arrays have no GPU (their .device, if any, is "cpu")
    key = (xp, gpu_id, m, np.dtype(like.dtype).str)
    k = _device_matrices.get(key)
    if k is None:
        with device if gpu_id is not None else contextlib.nullcontext():
            k = xp.asarray(_GG[m], dtype=like.dtype)
        if xp is np:
            k = k.copy()  # not _GG's own array (asarray returns it for float64)
            k.flags.writeable = False
        _device_matrices[key] = k  # a race between threads only makes a second equal copy
    return k


def tiles(ho, wo, m=2):
    """Tile grid (th, tw) covering an ho x wo output with m x m tiles."""
    return -(-ho // m), -(-wo // m)


def weight_transform(xp, w, m=2):
    """U ((m+2)^2, Cout, C) = G w G^T for w (Cout, C, 3, 3): one GEMM, kron(G, G) @ w as (9, Cout*C)."""
    o, c = w.shape[0], w.shape[1]
    k = transform_matrix(xp, m, w)
    return xp.matmul(k, w.reshape(o * c, 9).T).reshape(k.shape[0], o, c)


def weight_transform_flipped(xp, w, m=2):
    """U' ((m+2)^2, C, Cout) of the kernel that maps dY back to dX: w'[c, o] = w[o, c] rotated by 180 degrees."""
    return weight_transform(xp, w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3), m)


def add_weight_grad(xp, du, wdiff, m=2):
    """wdiff (Cout, C, 3, 3) += G^T dU G for du ((m+2)^2, Cout, C): the adjoint of weight_transform."""
    o, c = du.shape[1], du.shape[2]
    k = transform_matrix(xp, m, du)
    wdiff.reshape(o * c, 9)[...] += xp.matmul(k.T, du.reshape(k.shape[0], o * c)).T


def pad_deinterleaved(xp, x, planes, ph, pw):
    """planes (2, C, n, Hp, tw+1) <- the even and odd columns of x (n, C, H, W) zero-padded by (ph, pw).

    Splitting the columns by parity here (a copy the padding needs anyway) lets every transform pass
    below read unit-stride rows instead of every second element.
    """
    h, w = x.shape[2], x.shape[3]
    for r in range(2):
        plane = planes[r]
        j_lo = (pw - r + 1) // 2  # first plane column that holds an input column
        j_hi = (w - 1 + pw - r) // 2  # last one
        plane[:, :, :ph] = 0
        plane[:, :, ph + h:] = 0
        plane[:, :, ph:ph + h, :j_lo] = 0
        plane[:, :, ph:ph + h, j_hi + 1:] = 0
        if j_hi >= j_lo:
            start = 2 * j_lo + r - pw
            plane[:, :, ph:ph + h, j_lo:j_hi + 1] = x[:, :, :, start:start + 2 * (j_hi - j_lo) + 1:2].transpose(1, 0, 2, 3)


def input_transform(xp, planes, v, rows, th, tw):
    """v (16, C, n, th, tw) <- B^T d B of every 4x4 tile (stride 2) of the padded input, given as its
    even/odd column planes (2, C, n, 2th+2, tw+1). rows: scratch (2, 4, C, n, th, tw+1)."""
    for r in range(2):
        p = [planes[r][:, :, k:k + 2 * th - 1:2, :] for k in range(4)]
        xp.subtract(p[0], p[2], out=rows[r, 0])
        xp.add(p[1], p[2], out=rows[r, 1])
        xp.subtract(p[2], p[1], out=rows[r, 2])
        xp.subtract(p[1], p[3], out=rows[r, 3])
    for a in range(4):
        even, odd = rows[0, a], rows[1, a]
        c0, c1, c2, c3 = even[..., :tw], odd[..., :tw], even[..., 1:], odd[..., 1:]
        xp.subtract(c0, c2, out=v[4 * a])
        xp.add(c1, c2, out=v[4 * a + 1])
        xp.subtract(c2, c1, out=v[4 * a + 2])
        xp.subtract(c1, c3, out=v[4 * a + 3])


def output_transform(xp, m, out, scratch):
    """out (Co, n, 2th, 2tw) (any strides) <- A^T M A of every tile of m (16, Co, n, th, tw).

    scratch: (2, 4, Co, n, th, tw) for the row pass.
    """
    for b in range(4):
        xp.add(m[b], m[4 + b], out=scratch[0, b])
        scratch[0, b] += m[8 + b]
        xp.subtract(m[4 + b], m[8 + b], out=scratch[1, b])
        scratch[1, b] -= m[12 + b]
    for p in range(2):
        s = scratch[p]
        d0 = out[:, :, p::2, 0::2]
        xp.add(s[0], s[1], out=d0)
        d0 += s[2]
        d1 = out[:, :, p::2, 1::2]
        xp.subtract(s[1], s[2], out=d1)
        d1 -= s[3]


def output_transform_adjoint(xp, dy, dm, scratch):
    """dm (16, Co, n, th, tw) <- A dY A^T of every 2x2 tile of dy (Co, n, 2th, 2tw): the adjoint of
    output_transform. scratch: (4, Co, n, th, 2tw) for the row pass."""
    y0, y1 = dy[:, :, 0::2, :], dy[:, :, 1::2, :]
    scratch[0][...] = y0
    xp.add(y0, y1, out=scratch[1])
    xp.subtract(y0, y1, out=scratch[2])
    xp.negative(y1, out=scratch[3])
    for a in range(4):
        c0, c1 = scratch[a][..., 0::2], scratch[a][..., 1::2]
        dm[4 * a][...] = c0
        xp.add(c0, c1, out=dm[4 * a + 1])
        xp.subtract(c0, c1, out=dm[4 * a + 2])
        xp.negative(c1, out=dm[4 * a + 3])
