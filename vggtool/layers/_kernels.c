/* vggtool.layers._kernels: the memory-bound passes that NumPy cannot fuse (Winograd transforms, 2x2 max
 * pooling, im2col and its adjoint), one pass over memory each instead of NumPy's several.
 *
 * Optional: built at install time when a C compiler is present; without it the layers use their NumPy
 * code (vggtool/layers/kernels.py chooses). Functions take raw addresses of contiguous arrays (checked
 * by the Python side), an itemsize (4 float32, 8 float64) and a channel (or plane) range, and release
 * the GIL, so the Python side can split one call over threads.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>

/* The kernels' pointers into distinct arrays never alias: saying so lets the compiler vectorise their loops
 * (without it the alias checks of 6-10 streams exceed what it will version). No -ffast-math and no FMA
 * flags: the arithmetic stays that of the written expressions, as the NumPy twins compute them. */
#if defined(_MSC_VER)
#define RESTRICT __restrict
#else
#define RESTRICT __restrict__
#endif

/* v clamped below by lo: max(v, 0) for lo = 0 (a fused ReLU), v itself for lo = -inf; NaN stays NaN, as
 * NumPy's maximum keeps it (the comparison is false) */
#define CLAMP_BELOW(v, lo) ((v) < (lo) ? (lo) : (v))
/* im2col's output width below which it copies through a zero-bordered plane (im2col_small) */
#define IM2COL_SMALL_WIDTH 16

/* [lo, hi): the output columns ox < wo whose input column x0 + ox * sw lies inside [0, w) (im2col, col2im) */
static void inside_columns(Py_ssize_t x0, Py_ssize_t w, Py_ssize_t sw, Py_ssize_t wo, Py_ssize_t *lo, Py_ssize_t *hi)
{
    *lo = x0 >= 0 ? 0 : (-x0 + sw - 1) / sw;
    *hi = x0 >= w ? 0 : (w - 1 - x0) / sw + 1;
    if (*hi > wo)
        *hi = wo;
    if (*lo > *hi)
        *lo = *hi;
}

#if defined(__SSE2__)
#include <emmintrin.h>
#include <xmmintrin.h>
#endif

#define REAL float
#define REAL_IS_FLOAT 1
#define SUFFIX f32
#include "_kernels_impl.h"
#undef REAL
#undef REAL_IS_FLOAT
#undef SUFFIX

#define REAL double
#define REAL_IS_FLOAT 0
#define SUFFIX f64
#include "_kernels_impl.h"
#undef REAL
#undef REAL_IS_FLOAT
#undef SUFFIX

static int check_itemsize(Py_ssize_t itemsize)
{
    if (itemsize == 4 || itemsize == 8)
        return 1;
    PyErr_SetString(PyExc_ValueError, "only float32 and float64 are supported");
    return 0;
}

static int check_tile(Py_ssize_t tile)
{
    if (tile == 2 || tile == 4)
        return 1;
    PyErr_SetString(PyExc_ValueError, "Winograd output tiles are 2x2 or 4x4");
    return 0;
}

static PyObject *py_wino_input(PyObject *self, PyObject *args)
{
    Py_ssize_t tile, isz, src, n, c, h, w, ph, pw, th, tw, c0, c1, tiles;
    if (!PyArg_ParseTuple(args, "nnnnnnnnnnnnnn", &tile, &isz, &src, &n, &c, &h, &w, &ph, &pw, &th, &tw, &c0, &c1,
                          &tiles) || !check_itemsize(isz) || !check_tile(tile))
        return NULL;
    void *row = malloc(48 * (tw + 1) * isz); /* F(4x4)'s; F(2x2) needs 16 * (tw + 1) */
    if (!row)
        return PyErr_NoMemory();
    Py_BEGIN_ALLOW_THREADS
    if (tile == 2 && isz == 4)
        wino_input_f32((const float *)src, n, c, h, w, ph, pw, th, tw, c0, c1, (float *)tiles, row);
    else if (tile == 2)
        wino_input_f64((const double *)src, n, c, h, w, ph, pw, th, tw, c0, c1, (double *)tiles, row);
    else if (isz == 4)
        wino4_input_f32((const float *)src, n, c, h, w, ph, pw, th, tw, c0, c1, (float *)tiles, row);
    else
        wino4_input_f64((const double *)src, n, c, h, w, ph, pw, th, tw, c0, c1, (double *)tiles, row);
    Py_END_ALLOW_THREADS
    free(row);
    Py_RETURN_NONE;
}

static PyObject *py_wino_output(PyObject *self, PyObject *args)
{
    Py_ssize_t tile, isz, m, n, c, th, tw, dst, ho, wo, bias, mask, c0, c1;
    int rectify;
    if (!PyArg_ParseTuple(args, "nnnnnnnnnnnpnnn", &tile, &isz, &m, &n, &c, &th, &tw, &dst, &ho, &wo, &bias, &rectify,
                          &mask, &c0, &c1)
        || !check_itemsize(isz) || !check_tile(tile))
        return NULL;
    void *row = malloc(24 * tw * isz);
    if (!row)
        return PyErr_NoMemory();
    Py_BEGIN_ALLOW_THREADS
    if (tile == 2 && isz == 4)
        wino_output_f32((const float *)m, n, c, th, tw, (float *)dst, ho, wo, (const float *)bias, rectify,
                        (unsigned char *)mask, c0, c1);
    else if (tile == 2)
        wino_output_f64((const double *)m, n, c, th, tw, (double *)dst, ho, wo, (const double *)bias, rectify,
                        (unsigned char *)mask, c0, c1);
    else if (isz == 4)
        wino4_output_f32((const float *)m, n, c, th, tw, (float *)dst, ho, wo, (const float *)bias, rectify,
                         (unsigned char *)mask, c0, c1, row);
    else
        wino4_output_f64((const double *)m, n, c, th, tw, (double *)dst, ho, wo, (const double *)bias, rectify,
                         (unsigned char *)mask, c0, c1, row);
    Py_END_ALLOW_THREADS
    free(row);
    Py_RETURN_NONE;
}

static PyObject *py_wino_output_adjoint(PyObject *self, PyObject *args)
{
    Py_ssize_t tile, isz, dy, n, c, ho, wo, th, tw, dm, c0, c1;
    if (!PyArg_ParseTuple(args, "nnnnnnnnnnnn", &tile, &isz, &dy, &n, &c, &ho, &wo, &th, &tw, &dm, &c0, &c1)
        || !check_itemsize(isz) || !check_tile(tile))
        return NULL;
    void *row = malloc(10 * 4 * tw * isz);
    if (!row)
        return PyErr_NoMemory();
    Py_BEGIN_ALLOW_THREADS
    if (tile == 2 && isz == 4)
        wino_output_adjoint_f32((const float *)dy, n, c, ho, wo, th, tw, (float *)dm, c0, c1, row);
    else if (tile == 2)
        wino_output_adjoint_f64((const double *)dy, n, c, ho, wo, th, tw, (double *)dm, c0, c1, row);
    else if (isz == 4)
        wino4_output_adjoint_f32((const float *)dy, n, c, ho, wo, th, tw, (float *)dm, c0, c1, row);
    else
        wino4_output_adjoint_f64((const double *)dy, n, c, ho, wo, th, tw, (double *)dm, c0, c1, row);
    Py_END_ALLOW_THREADS
    free(row);
    Py_RETURN_NONE;
}

static PyObject *py_wino4_fused(PyObject *self, PyObject *args)
{
    Py_ssize_t isz, gemm, src, n, ci, h, w, ph, pw, th, tw, u, co, dst, ho, wo, bias, mask, rows, b0, b1, keep;
    int wide, rectify;
    if (!PyArg_ParseTuple(args, "nnpnnnnnnnnnnnnnnnpnnnnn", &isz, &gemm, &wide, &src, &n, &ci, &h, &w, &ph, &pw, &th,
                          &tw, &u, &co, &dst, &ho, &wo, &bias, &rectify, &mask, &rows, &b0, &b1, &keep)
        || !check_itemsize(isz))
        return NULL;
    if (!gemm || rows < 1) {
        PyErr_SetString(PyExc_ValueError, "wino4_fused needs a GEMM function and at least one tile row per block");
        return NULL;
    }
    size_t tb = (size_t)rows * tw;
    void *v = malloc(36 * ci * tb * isz), *mbuf = malloc(36 * co * tb * isz), *row = malloc(48 * (tw + 1) * isz);
    if (!v || !mbuf || !row) {
        free(v), free(mbuf), free(row);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    if (isz == 4)
        wino4_fused_f32((void *)gemm, wide, (const float *)src, n, ci, h, w, ph, pw, th, tw, (const float *)u, co,
                        (float *)dst, ho, wo, (const float *)bias, rectify, (unsigned char *)mask, rows, b0, b1,
                        (float *)keep, v, mbuf, row);
    else
        wino4_fused_f64((void *)gemm, wide, (const double *)src, n, ci, h, w, ph, pw, th, tw, (const double *)u, co,
                        (double *)dst, ho, wo, (const double *)bias, rectify, (unsigned char *)mask, rows, b0, b1,
                        (double *)keep, v, mbuf, row);
    Py_END_ALLOW_THREADS
    free(v), free(mbuf), free(row);
    Py_RETURN_NONE;
}

static PyObject *py_max_pool_2x2(PyObject *self, PyObject *args)
{
    Py_ssize_t isz, x, h, w, y, mask, p0, p1;
    if (!PyArg_ParseTuple(args, "nnnnnnnn", &isz, &x, &h, &w, &y, &mask, &p0, &p1) || !check_itemsize(isz))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    if (isz == 4)
        max_pool_2x2_f32((const float *)x, h, w, (float *)y, (unsigned char *)mask, p0, p1);
    else
        max_pool_2x2_f64((const double *)x, h, w, (double *)y, (unsigned char *)mask, p0, p1);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_max_pool_2x2_backward(PyObject *self, PyObject *args)
{
    Py_ssize_t isz, dy, mask, h, w, dx, p0, p1;
    if (!PyArg_ParseTuple(args, "nnnnnnnn", &isz, &dy, &mask, &h, &w, &dx, &p0, &p1) || !check_itemsize(isz))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    if (isz == 4)
        max_pool_2x2_backward_f32((const float *)dy, (const unsigned char *)mask, h, w, (float *)dx, p0, p1);
    else
        max_pool_2x2_backward_f64((const double *)dy, (const unsigned char *)mask, h, w, (double *)dx, p0, p1);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *im2col_call(PyObject *args, int adjoint)
{
    Py_ssize_t isz, a, n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, c0, c1, b;
    if (!PyArg_ParseTuple(args, "nnnnnnnnnnnnnnnnnnn", &isz, &a, &n, &c, &h, &w, &kh, &kw, &sh, &sw, &ph, &pw, &dh,
                          &dw, &ho, &wo, &c0, &c1, &b) || !check_itemsize(isz))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    if (!adjoint && isz == 4)
        im2col_f32((const float *)a, n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, c0, c1, (float *)b);
    else if (!adjoint)
        im2col_f64((const double *)a, n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, c0, c1, (double *)b);
    else if (isz == 4)
        col2im_f32((const float *)a, n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, c0, c1, (float *)b);
    else
        col2im_f64((const double *)a, n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, c0, c1, (double *)b);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_sgd_update(PyObject *self, PyObject *args)
{
    Py_ssize_t isz, w, g, h, lo, hi;
    int scaled, decayed;
    double scale, decay, momentum, rate;
    if (!PyArg_ParseTuple(args, "nnnnnnpdpddd", &isz, &w, &g, &h, &lo, &hi, &scaled, &scale, &decayed, &decay,
                          &momentum, &rate) || !check_itemsize(isz))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    if (isz == 4)  /* the factors rounded to float32 first, as NumPy rounds a Python float for a float32 array */
        sgd_update_f32((float *)w, (float *)g, (float *)h, lo, hi, scaled, (float)scale, decayed, (float)decay,
                       (float)momentum, (float)rate);
    else
        sgd_update_f64((double *)w, (double *)g, (double *)h, lo, hi, scaled, scale, decayed, decay, momentum, rate);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_all_finite(PyObject *self, PyObject *args)
{
    Py_ssize_t isz, x, lo, hi;
    int ok;
    if (!PyArg_ParseTuple(args, "nnnn", &isz, &x, &lo, &hi) || !check_itemsize(isz))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    ok = isz == 4 ? all_finite_f32((const float *)x, lo, hi) : all_finite_f64((const double *)x, lo, hi);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(ok);
}

static PyObject *py_im2col(PyObject *self, PyObject *args) { return im2col_call(args, 0); }

static PyObject *py_col2im(PyObject *self, PyObject *args) { return im2col_call(args, 1); }

static PyMethodDef methods[] = {
    {"wino_input", py_wino_input, METH_VARARGS,
     "wino_input(tile, itemsize, src, n, C, H, W, ph, pw, th, tw, c0, c1, tiles); tile: 2 (F(2x2,3x3)) or 4"},
    {"wino_output", py_wino_output, METH_VARARGS,
     "wino_output(tile, itemsize, m, n, C, th, tw, dst, ho, wo, bias_or_0, rectify, mask_or_0, c0, c1)"},
    {"wino_output_adjoint", py_wino_output_adjoint, METH_VARARGS,
     "wino_output_adjoint(tile, itemsize, dy, n, C, ho, wo, th, tw, dm, c0, c1)"},
    {"wino4_fused", py_wino4_fused, METH_VARARGS,
     "wino4_fused(itemsize, gemm, wide, src, n, Ci, H, W, ph, pw, th, tw, u, Co, dst, ho, wo, bias_or_0, rectify, "
     "mask_or_0, rows, b0, b1, keep_or_0)"},
    {"max_pool_2x2", py_max_pool_2x2, METH_VARARGS, "max_pool_2x2(itemsize, x, h, w, y, mask, p0, p1)"},
    {"max_pool_2x2_backward", py_max_pool_2x2_backward, METH_VARARGS,
     "max_pool_2x2_backward(itemsize, dy, mask, h, w, dx, p0, p1)"},
    {"im2col", py_im2col, METH_VARARGS,
     "im2col(itemsize, src, n, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, c0, c1, cols)"},
    {"col2im", py_col2im, METH_VARARGS,
     "col2im(itemsize, cols, n, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, c0, c1, dst)"},
    {"sgd_update", py_sgd_update, METH_VARARGS,
     "sgd_update(itemsize, w, g, h, lo, hi, scaled, scale, decayed, decay, momentum, rate)"},
    {"all_finite", py_all_finite, METH_VARARGS, "all_finite(itemsize, x, lo, hi) -> bool"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", NULL, -1, methods};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
