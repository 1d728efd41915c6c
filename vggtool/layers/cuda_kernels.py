"""Named CUDA kernels for the CuPy engine: 2x2 max pooling forward and backward, the convolution's output
pass (channel-major GEMM output -> (n, C, H, W), + bias, fused ReLU and its mask), im2col / col2im and the
Winograd F(2x2, 3x3) and F(4x4, 3x3) transforms (input, output with bias and fused ReLU, and the output's
adjoint).

Without them each of these passes is several generic CuPy kernels and temporaries (the 2x2 max pool
about seven). Each kernel is one CUDA C function over a grid-stride loop whose body is also plain C:
`KERNELS` holds the parameters and the body, `source()` writes the CUDA (NVRTC compiles it through
`cupy.RawModule`), and the tests compile the very same text with a C compiler and run it over a small
emulated grid on the CPU, against the C kernels and the NumPy code (tests/layers/cuda_twin.py).

`usable(...)` says whether a call can take them: CuPy arrays, C-contiguous, one float dtype, and the
setting cuda_kernels on (VGGTOOL_NO_CUDA_KERNELS=1 turns them off, the generic CuPy code then runs).
"""
import math
import string

import numpy as np

from ..backend import get_array_module
from ..config import defaults

BLOCK = 256  # threads per block
MAX_BLOCKS = 4096  # the grid-stride loops cover the rest

# A parameter: (kind, name). Kinds: "in" (const REAL *), "out" (REAL *), "in_u8" / "out_u8" (unsigned
# char *), "i64" (long long). Bodies see REAL; `i` runs over range(count), count being the first i64.
KERNELS = {
    "max_pool_2x2_forward": ([("in", "x"), ("out", "y"), ("out_u8", "mask"), ("i64", "count"), ("i64", "h"),
                              ("i64", "w")], r"""
        long long ho = h / 2, wo = w / 2, p = i / (ho * wo), r = (i / wo) % ho, q = i % wo;
        const REAL *a = x + (p * h + 2 * r) * w + 2 * q, *b = a + w;
        REAL best = a[0];
        unsigned char k = 0; /* the first maximum in window order wins, as in Caffe */
        if (a[1] > best) { best = a[1]; k = 1; }
        if (b[0] > best) { best = b[0]; k = 2; }
        if (b[1] > best) { best = b[1]; k = 3; }
        y[i] = best;
        mask[i] = k;
    """),
    "max_pool_2x2_backward": ([("in", "dy"), ("in_u8", "mask"), ("out", "dx"), ("i64", "count"), ("i64", "h"),
                               ("i64", "w")], r"""
        long long ho = h / 2, wo = w / 2, p = i / (h * w), r = (i / w) % h, c = i % w;
        long long window = (p * ho + r / 2) * wo + c / 2;
        dx[i] = mask[window] == (r % 2) * 2 + c % 2 ? dy[window] : (REAL)0;
    """),
    "write_output": ([("in", "src"), ("out", "y"), ("in", "bias"), ("out_u8", "mask"), ("i64", "count"),
                      ("i64", "n"), ("i64", "channels"), ("i64", "plane"), ("i64", "use_bias"), ("i64", "rectify"),
                      ("i64", "use_mask")], r"""
        long long img = i / (channels * plane), c = (i / plane) % channels, s = i % plane;
        REAL v = src[(c * n + img) * plane + s];
        if (use_bias)
            v = v + bias[c];
        store_output_SFX(y, mask, i, v, rectify, use_mask);
    """),
    "im2col": ([("in", "x"), ("out", "cols"), ("i64", "count"), ("i64", "n"), ("i64", "c"), ("i64", "h"),
                ("i64", "w"), ("i64", "kh"), ("i64", "kw"), ("i64", "sh"), ("i64", "sw"), ("i64", "ph"),
                ("i64", "pw"), ("i64", "dh"), ("i64", "dw"), ("i64", "ho"), ("i64", "wo")], r"""
        /* cols (C, kh, kw, n, ho, wo) */
        long long ox = i % wo, t = i / wo, oy = t % ho;
        t /= ho;
        long long img = t % n;
        t /= n;
        long long kj = t % kw;
        t /= kw;
        long long ki = t % kh, ch = t / kh;
        long long yy = oy * sh - ph + ki * dh, xx = ox * sw - pw + kj * dw;
        cols[i] = (yy >= 0 && yy < h && xx >= 0 && xx < w) ? x[((img * c + ch) * h + yy) * w + xx] : (REAL)0;
    """),
    "col2im": ([("in", "cols"), ("out", "x"), ("i64", "count"), ("i64", "n"), ("i64", "c"), ("i64", "h"),
                ("i64", "w"), ("i64", "kh"), ("i64", "kw"), ("i64", "sh"), ("i64", "sw"), ("i64", "ph"),
                ("i64", "pw"), ("i64", "dh"), ("i64", "dw"), ("i64", "ho"), ("i64", "wo")], r"""
        /* x (n, C, h, w) <- the sum of the column entries that im2col copied from each pixel (a gather:
           one thread per pixel, no atomics) */
        long long xx = i % w, yy = (i / w) % h, ch = (i / (w * h)) % c, img = i / (w * h * c);
        REAL sum = 0;
        for (long long ki = 0; ki < kh; ki++) {
            long long ty = yy + ph - ki * dh;
            if (ty < 0 || ty % sh)
                continue;
            long long oy = ty / sh;
            if (oy >= ho)
                continue;
            for (long long kj = 0; kj < kw; kj++) {
                long long tx = xx + pw - kj * dw;
                if (tx < 0 || tx % sw)
                    continue;
                long long ox = tx / sw;
                if (ox < wo)
                    sum += cols[(((ch * kh + ki) * kw + kj) * n + img) * ho * wo + oy * wo + ox];
            }
        }
        x[i] = sum;
    """),
    # Winograd F(2x2, 3x3), one thread per tile, the arithmetic of the C kernels (_kernels_impl.h) in
    # their order. Tiles (16, C, n, th, tw), xi = 4 * row + column; count = C * n * th * tw, so the tile
    # (c, img, r, q) is element i of each of the 16 planes.
    "wino2_input": ([("in", "src"), ("out", "tiles"), ("i64", "count"), ("i64", "n"), ("i64", "c_all"),
                     ("i64", "h"), ("i64", "w"), ("i64", "ph"), ("i64", "pw"), ("i64", "th"), ("i64", "tw")], r"""
        /* B^T d B of the 4x4 input tile (stride 2) of src zero-padded by (ph, pw) */
        long long q = i % tw, r = (i / tw) % th, img = (i / (tw * th)) % n, c = i / (tw * th * n);
        const REAL *s = src + (img * c_all + c) * h * w;
        REAL d[4][4], t[4][4];
        for (int k = 0; k < 4; k++)
            for (int j = 0; j < 4; j++) {
                long long y = 2 * r - ph + k, x = 2 * q - pw + j;
                d[k][j] = (y >= 0 && y < h && x >= 0 && x < w) ? s[y * w + x] : (REAL)0;
            }
        for (int j = 0; j < 4; j++) {
            t[0][j] = d[0][j] - d[2][j];
            t[1][j] = d[1][j] + d[2][j];
            t[2][j] = d[2][j] - d[1][j];
            t[3][j] = d[1][j] - d[3][j];
        }
        for (int a = 0; a < 4; a++) {
            REAL *o = tiles + (4 * a) * count + i;
            o[0] = t[a][0] - t[a][2];
            o[count] = t[a][1] + t[a][2];
            o[2 * count] = t[a][2] - t[a][1];
            o[3 * count] = t[a][1] - t[a][3];
        }
    """),
    "wino2_output": ([("in", "m"), ("out", "dst"), ("in", "bias"), ("out_u8", "mask"), ("i64", "count"),
                      ("i64", "n"), ("i64", "c_all"), ("i64", "th"), ("i64", "tw"), ("i64", "ho"), ("i64", "wo"),
                      ("i64", "use_bias"), ("i64", "rectify"), ("i64", "use_mask")], r"""
        /* A^T M A (+ bias) of the tile into dst (n, C, ho, wo), outputs beyond ho x wo dropped; rectify:
           max(., 0); mask: output > 0 */
        long long q = i % tw, r = (i / tw) % th, img = (i / (tw * th)) % n, c = i / (tw * th * n);
        REAL b = use_bias ? bias[c] : (REAL)0, s0[4], s1[4];
        for (int k = 0; k < 4; k++) {
            REAL m0 = m[k * count + i], m1 = m[(4 + k) * count + i], m2 = m[(8 + k) * count + i],
                 m3 = m[(12 + k) * count + i];
            s0[k] = m0 + m1 + m2;
            s1[k] = m1 - m2 - m3;
        }
        REAL v[4] = {s0[0] + s0[1] + s0[2] + b, s0[1] - s0[2] - s0[3] + b, s1[0] + s1[1] + s1[2] + b,
                     s1[1] - s1[2] - s1[3] + b};
        for (int k = 0; k < 4; k++) {
            long long y = 2 * r + k / 2, x = 2 * q + k % 2;
            if (y < ho && x < wo)
                store_output_SFX(dst, mask, ((img * c_all + c) * ho + y) * wo + x, v[k], rectify, use_mask);
        }
    """),
    "wino2_output_adjoint": ([("in", "dy"), ("out", "dm"), ("i64", "count"), ("i64", "n"), ("i64", "c_all"),
                              ("i64", "ho"), ("i64", "wo"), ("i64", "th"), ("i64", "tw")], r"""
        /* A dY A^T of the 2x2 tile of dy (n, C, ho, wo), zero beyond ho x wo: the adjoint of wino2_output */
        long long q = i % tw, r = (i / tw) % th, img = (i / (tw * th)) % n, c = i / (tw * th * n);
        const REAL *g = dy + (img * c_all + c) * ho * wo;
        REAL g0[2], g1[2], t[4][2];
        for (int j = 0; j < 2; j++) {
            long long x = 2 * q + j;
            g0[j] = x < wo ? g[2 * r * wo + x] : (REAL)0;
            g1[j] = (x < wo && 2 * r + 1 < ho) ? g[(2 * r + 1) * wo + x] : (REAL)0;
            t[0][j] = g0[j];
            t[1][j] = g0[j] + g1[j];
            t[2][j] = g0[j] - g1[j];
            t[3][j] = -g1[j];
        }
        for (int a = 0; a < 4; a++) {
            REAL *o = dm + (4 * a) * count + i;
            o[0] = t[a][0];
            o[count] = t[a][0] + t[a][1];
            o[2 * count] = t[a][0] - t[a][1];
            o[3 * count] = -t[a][1];
        }
    """),
    # Winograd F(4x4, 3x3): the same layout with 36 planes, xi = 6 * row + column (helpers below).
    "wino4_input": ([("in", "src"), ("out", "tiles"), ("i64", "count"), ("i64", "n"), ("i64", "c_all"),
                     ("i64", "h"), ("i64", "w"), ("i64", "ph"), ("i64", "pw"), ("i64", "th"), ("i64", "tw")], r"""
        /* B^T d B of the 6x6 input tile (stride 4) of src zero-padded by (ph, pw) */
        long long q = i % tw, r = (i / tw) % th, img = (i / (tw * th)) % n, c = i / (tw * th * n);
        const REAL *s = src + (img * c_all + c) * h * w;
        REAL in6[6], out6[6], bt[6][6];
        for (int j = 0; j < 6; j++) { /* B^T d, column by column */
            long long x = 4 * q - pw + j;
            for (int k = 0; k < 6; k++) {
                long long y = 4 * r - ph + k;
                in6[k] = (y >= 0 && y < h && x >= 0 && x < w) ? s[y * w + x] : (REAL)0;
            }
            wino4_input_1d_SFX(in6, out6);
            for (int k = 0; k < 6; k++)
                bt[k][j] = out6[k];
        }
        for (int a = 0; a < 6; a++) { /* (B^T d) B, row by row */
            wino4_input_1d_SFX(bt[a], out6);
            for (int k = 0; k < 6; k++)
                tiles[(6 * a + k) * count + i] = out6[k];
        }
    """),
    "wino4_output": ([("in", "m"), ("out", "dst"), ("in", "bias"), ("out_u8", "mask"), ("i64", "count"),
                      ("i64", "n"), ("i64", "c_all"), ("i64", "th"), ("i64", "tw"), ("i64", "ho"), ("i64", "wo"),
                      ("i64", "use_bias"), ("i64", "rectify"), ("i64", "use_mask")], r"""
        long long q = i % tw, r = (i / tw) % th, img = (i / (tw * th)) % n, c = i / (tw * th * n);
        REAL b = use_bias ? bias[c] : (REAL)0, in6[6], out4[4], at[4][6];
        for (int k = 0; k < 6; k++) { /* A^T M, column by column */
            for (int j = 0; j < 6; j++)
                in6[j] = m[(6 * j + k) * count + i];
            wino4_output_1d_SFX(in6, out4);
            for (int row = 0; row < 4; row++)
                at[row][k] = out4[row];
        }
        for (int row = 0; row < 4; row++) { /* (A^T M) A, row by row */
            wino4_output_1d_SFX(at[row], out4);
            long long y = 4 * r + row;
            for (int col = 0; col < 4; col++) {
                long long x = 4 * q + col;
                if (y < ho && x < wo)
                    store_output_SFX(dst, mask, ((img * c_all + c) * ho + y) * wo + x, out4[col] + b, rectify,
                                     use_mask);
            }
        }
    """),
    "wino4_output_adjoint": ([("in", "dy"), ("out", "dm"), ("i64", "count"), ("i64", "n"), ("i64", "c_all"),
                              ("i64", "ho"), ("i64", "wo"), ("i64", "th"), ("i64", "tw")], r"""
        long long q = i % tw, r = (i / tw) % th, img = (i / (tw * th)) % n, c = i / (tw * th * n);
        const REAL *g = dy + (img * c_all + c) * ho * wo;
        REAL in4[4], out6[6], ta[6][4];
        for (int p = 0; p < 4; p++) { /* A dY, column by column */
            long long x = 4 * q + p;
            for (int k = 0; k < 4; k++) {
                long long y = 4 * r + k;
                in4[k] = (y < ho && x < wo) ? g[y * wo + x] : (REAL)0;
            }
            wino4_adjoint_1d_SFX(in4, out6);
            for (int a = 0; a < 6; a++)
                ta[a][p] = out6[a];
        }
        for (int a = 0; a < 6; a++) { /* (A dY) A^T, row by row */
            wino4_adjoint_1d_SFX(ta[a], out6);
            for (int k = 0; k < 6; k++)
                dm[(6 * a + k) * count + i] = out6[k];
        }
    """),
}

# The output passes' store (a fused ReLU: max(v, 0), NaN kept as NumPy's maximum keeps it; its mask), and
# F(4x4)'s 1-d transforms, the expressions of the C kernels' wino4_input_1d, wino4_output_pass1 (+ its
# second pass) and wino4_adjoint_1d, so that both give the same bits.
HELPERS = r"""
HELPER void store_output_SFX(REAL *dst, unsigned char *mask, long long at, REAL v, long long rectify,
                             long long use_mask)
{
    v = rectify && v < 0 ? (REAL)0 : v;
    dst[at] = v;
    if (use_mask)
        mask[at] = v > 0;
}

HELPER void wino4_input_1d_SFX(const REAL *a, REAL *t)
{
    t[0] = 4 * a[0] - 5 * a[2] + a[4];
    t[1] = -4 * (a[1] + a[2]) + a[3] + a[4];
    t[2] = 4 * (a[1] - a[2]) - a[3] + a[4];
    t[3] = 2 * (a[3] - a[1]) - a[2] + a[4];
    t[4] = 2 * (a[1] - a[3]) - a[2] + a[4];
    t[5] = 4 * a[1] - 5 * a[3] + a[5];
}

HELPER void wino4_output_1d_SFX(const REAL *p, REAL *s)
{
    REAL m1 = p[1], m2 = p[2], m3 = p[3], m4 = p[4];
    s[0] = p[0] + m1 + m2 + m3 + m4;
    s[1] = m1 - m2 + 2 * (m3 - m4);
    s[2] = m1 + m2 + 4 * (m3 + m4);
    s[3] = m1 - m2 + 8 * (m3 - m4) + p[5];
}

HELPER void wino4_adjoint_1d_SFX(const REAL *a, REAL *t)
{
    t[0] = a[0];
    t[1] = a[0] + a[1] + a[2] + a[3];
    t[2] = a[0] - a[1] + a[2] - a[3];
    t[3] = a[0] + 2 * a[1] + 4 * a[2] + 8 * a[3];
    t[4] = a[0] - 2 * a[1] + 4 * a[2] - 8 * a[3];
    t[5] = a[3];
}
"""

_C_TYPES = {"in": "const REAL *", "out": "REAL *", "in_u8": "const unsigned char *", "out_u8": "unsigned char *",
            "i64": "long long "}
_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
_MASK_DTYPES = (np.dtype(np.uint8), np.dtype(np.bool_))  # one byte, written as 0 or 1
_REAL = {"f32": "float", "f64": "double"}


def parameters(name, real):
    """Kernel `name`'s C parameter list for the element type `real` ('float' or 'double')."""
    return ", ".join(_C_TYPES[kind] + arg for kind, arg in KERNELS[name][0]).replace("REAL", real)


def kernel_name(name, dtype):
    return f"{name}_{_SUFFIX[np.dtype(dtype)]}"


def source(cuda=True):
    """The kernels for float32 and float64 as one text: CUDA, or plain C (cuda=False, the tests' twin)."""
    prefix, helper = ('extern "C" __global__', "__device__ static") if cuda else ("", "static")
    parts = []
    template = string.Template("$prefix void ${name}_$suffix($params)\n{\n"
                               "    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < count;\n"
                               "         i += (long long)blockDim.x * gridDim.x) {\n$body    }\n}\n")
    for suffix, real in _REAL.items():
        parts.append(HELPERS.replace("HELPER", helper).replace("REAL", real).replace("SFX", suffix))
        for name, (_, body) in KERNELS.items():
            parts.append(template.substitute(prefix=prefix, name=name, suffix=suffix, params=parameters(name, real),
                                             body=body.replace("REAL", real).replace("SFX", suffix)))
    return "\n".join(parts)


def enabled():
    return defaults().cuda_kernels


def usable(*arrays):
    """CuPy arrays, C-contiguous, all of the first one's float dtype (one-byte masks aside), kernels on."""
    if not enabled() or get_array_module(arrays[0]) is np:
        return False
    dtype = arrays[0].dtype
    return dtype in _SUFFIX and all(
        get_array_module(a) is not np and a.flags.c_contiguous and (a.dtype == dtype or a.dtype in _MASK_DTYPES)
        for a in arrays)


_modules = {}  # CUDA device id -> cupy.RawModule of source() (NVRTC compiles it once per device)
_functions = {}  # (device id, kernel name) -> its cupy function


def _function(xp, name, dtype):
    device = xp.cuda.Device().id
    key = (device, kernel_name(name, dtype))
    function = _functions.get(key)
    if function is None:
        module = _modules.get(device)
        if module is None:
            module = _modules[device] = xp.RawModule(code=source())
        function = _functions[key] = module.get_function(key[1])
    return function


def launch(name, dtype, *args):
    """Run kernel `name` for `dtype` with `args` in KERNELS' parameter order over range(count)."""
    params = KERNELS[name][0]
    if len(args) != len(params):
        raise TypeError(f"{name} takes {len(params)} arguments, got {len(args)}")
    count = next(int(a) for (kind, _), a in zip(params, args) if kind == "i64")
    if count <= 0:
        return
    xp = next(get_array_module(a) for (kind, _), a in zip(params, args) if kind != "i64")
    values = tuple(np.int64(a) if kind == "i64" else a for (kind, _), a in zip(params, args))
    blocks = min(MAX_BLOCKS, math.ceil(count / BLOCK))
    _function(xp, name, dtype)((blocks,), (BLOCK,), values)


def max_pool_2x2(x, y, mask):
    """y, mask (uint8 window index) <- 2x2 stride-2 max pooling of x (n, C, H, W), H and W even."""
    launch("max_pool_2x2_forward", x.dtype, x, y, mask, y.size, x.shape[2], x.shape[3])


def max_pool_2x2_backward(dy, mask, dx):
    """dx <- dy routed to each window's maximum (mask from max_pool_2x2), zero elsewhere."""
    launch("max_pool_2x2_backward", dy.dtype, dy, mask, dx, dx.size, dx.shape[2], dx.shape[3])


def write_output(out, y, bias=None, rectify=False, mask=None):
    """y (n, Co, Ho, Wo) <- out (Co, n, Ho, Wo) (+ bias; rectify: max(., 0); mask: then y > 0)."""
    n, co = y.shape[0], y.shape[1]
    plane = y.shape[2] * y.shape[3]
    launch("write_output", y.dtype, out, y, y if bias is None else bias, y if mask is None else mask, y.size, n, co,
           plane, bias is not None, bool(rectify), mask is not None)


def im2col(x, geom, cols):
    """cols (C, kh, kw, n, Ho, Wo) <- the receptive fields of x (n, C, H, W) for geom (zero outside)."""
    n, c, h, w = x.shape
    ho, wo = cols.shape[4], cols.shape[5]
    launch("im2col", x.dtype, x, cols, cols.size, n, c, h, w, geom.kh, geom.kw, geom.sh, geom.sw, geom.ph, geom.pw,
           geom.dh, geom.dw, ho, wo)


def _tile(transformed):
    """m of F(m x m, 3 x 3) from the (m + 2)^2 planes of its transformed tiles: 2 (16) or 4 (36)."""
    return math.isqrt(transformed) - 2


def wino_input(src, pad, tiles):
    """tiles ((m+2)^2, C, n, th, tw) <- B^T d B of the (m+2)x(m+2) tiles (stride m) of src (n, C, H, W)
    zero-padded by pad; m = 2 or 4, from the tiles' shape."""
    n, c, h, w = src.shape
    th, tw = tiles.shape[3], tiles.shape[4]
    launch(f"wino{_tile(tiles.shape[0])}_input", src.dtype, src, tiles, c * n * th * tw, n, c, h, w, pad[0], pad[1],
           th, tw)


def wino_output(m, dst, bias=None, rectify=False, mask=None):
    """dst (n, C, Ho, Wo) <- A^T M A (+ bias) of the tiles m ((m+2)^2, C, n, th, tw); rectify: max(., 0);
    mask: then dst > 0."""
    n, c, ho, wo = dst.shape
    th, tw = m.shape[3], m.shape[4]
    launch(f"wino{_tile(m.shape[0])}_output", dst.dtype, m, dst, dst if bias is None else bias,
           dst if mask is None else mask, c * n * th * tw, n, c, th, tw, ho, wo, bias is not None, bool(rectify),
           mask is not None)


def wino_output_adjoint(dy, dm):
    """dm ((m+2)^2, C, n, th, tw) <- A dY A^T of every m x m tile of dy (n, C, Ho, Wo), zero beyond Ho x Wo."""
    n, c, ho, wo = dy.shape
    th, tw = dm.shape[3], dm.shape[4]
    launch(f"wino{_tile(dm.shape[0])}_output_adjoint", dy.dtype, dy, dm, c * n * th * tw, n, c, ho, wo, th, tw)


def col2im(cols, geom, x):
    """x (n, C, H, W) <- the adjoint of im2col: each pixel the sum of the entries copied from it."""
    n, c, h, w = x.shape
    ho, wo = cols.shape[4], cols.shape[5]
    launch("col2im", x.dtype, cols, x, x.size, n, c, h, w, geom.kh, geom.kw, geom.sh, geom.sw, geom.ph, geom.pw,
           geom.dh, geom.dw, ho, wo)
