"""c = alpha * a @ b + beta * c in place, for the layers' gradient accumulation (Caffe's caffe_cpu_gemm).

NumPy's matmul has no beta: `c += a @ b` allocates a temporary as large as c (411 MB for fc6's weight
gradient) and reads c twice. On the CPU this calls the cblas_?gemm of the OpenBLAS that NumPy itself
is linked against (same library, same thread pool), through ctypes, which releases the GIL. Anything
it cannot take (other dtypes, operands without a unit stride, no OpenBLAS found, or the process-wide
setting cblas off: vggtool.config, VGGTOOL_NO_CBLAS=1) takes the NumPy path, which gives the same
result. CuPy arrays go to cuBLAS through cupy.cublas.gemm, which takes beta too. The library handle is
looked up once per process, at the first call (`_cblas()`): it is the process's OpenBLAS, shared by
every net.
"""
import ctypes
import functools
import glob
import os
import threading

import numpy as np

from ..config import defaults
from .threads import split_run

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


def _cblas():
    """(sgemm, dgemm) of NumPy's OpenBLAS, or False (not found, or the cblas setting is off)."""
    return defaults().cblas and _find_cblas()


def _openblas_libs():
    """NumPy's bundled OpenBLAS libraries that load, in name order."""
    libdir = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    for path in sorted(glob.glob(os.path.join(libdir, "*openblas*"))):
        try:
            yield ctypes.CDLL(path)
        except OSError:
            continue


@functools.lru_cache(maxsize=1)
def _find_cblas():
    for lib in _openblas_libs():
        for prefix, suffix, int_t in (("scipy_cblas_", "64_", ctypes.c_int64), ("cblas_", "64_", ctypes.c_int64),
                                      ("scipy_cblas_", "", ctypes.c_int), ("cblas_", "", ctypes.c_int)):
            fns = []
            for letter, real in (("s", ctypes.c_float), ("d", ctypes.c_double)):
                fn = getattr(lib, f"{prefix}{letter}gemm{suffix}", None)
                if fn is None:
                    break
                fn.restype = None
                fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, int_t, int_t, int_t, real,
                               ctypes.c_void_p, int_t, ctypes.c_void_p, int_t, real, ctypes.c_void_p, int_t]
                fns.append(fn)
            if len(fns) == 2:
                return tuple(fns)
    return False


@functools.lru_cache(maxsize=1)
def _thread_control():
    """(get, set) of the number of threads of NumPy's OpenBLAS, or None (not found)."""
    for lib in _openblas_libs():
        for prefix, suffix in (("scipy_openblas_", "64_"), ("scipy_openblas_", ""), ("openblas_", "64_"),
                               ("openblas_", "")):
            get = getattr(lib, f"{prefix}get_num_threads{suffix}", None)
            put = getattr(lib, f"{prefix}set_num_threads{suffix}", None)
            if get is not None and put is not None:
                get.restype, get.argtypes = ctypes.c_int, []
                put.restype, put.argtypes = None, [ctypes.c_int]
                return get, put
    return None


def blas_threads():
    """The number of threads OpenBLAS runs a GEMM on (process-wide), or None when it cannot be read."""
    control = _thread_control()
    return control[0]() if control else None


def set_blas_threads(count):
    """Set OpenBLAS's thread count for the whole process (OpenBLAS's pthreads builds have no per-thread
    count: `openblas_set_num_threads_local` changes the global one too). False when it cannot be set."""
    control = _thread_control()
    if not control:
        return False
    control[1](int(count))
    return True


_ONE_BLAS_THREAD = threading.Lock()  # one caller at a time lowers and restores the process-wide count


def independent_gemms(fn, count, elements):
    """fn(lo, hi) runs GEMMs lo..hi-1 of `count` that write distinct outputs (Winograd's per-position
    GEMMs): split over OpenBLAS's threads, each running its share single-threaded, instead of every GEMM
    split over them. Many mid-sized GEMMs then pay no hand-off between BLAS threads per call (VGG-16's
    Winograd layers: 3-11% faster on 2 cores). Runs fn(0, count) as is where BLAS has one thread already
    (CPU lanes running at the same time, MPI ranks sharing a host) or its count cannot be set.
    elements: the elements the GEMMs touch (small calls stay in the caller)."""
    threads = blas_threads()
    if not threads or threads < 2 or count < 2 or not _ONE_BLAS_THREAD.acquire(blocking=False):
        fn(0, count)
        return
    try:
        set_blas_threads(1)
        split_run(fn, count, elements, threads=threads)
    finally:
        set_blas_threads(threads)
        _ONE_BLAS_THREAD.release()


def _operand(x):
    """(transpose flag, leading dimension) describing 2-d x to row-major BLAS, or None."""
    r, c = x.shape
    s0, s1 = (s // x.itemsize for s in x.strides)
    if (s1 == 1 or c == 1) and (s0 >= max(1, c) or r == 1):
        return _NO_TRANS, max(s0 if r > 1 else c, c, 1)
    if (s0 == 1 or r == 1) and (s1 >= max(1, r) or c == 1):
        return _TRANS, max(s1 if c > 1 else r, r, 1)
    return None


def _cublas_gemm(a, b, c, alpha, beta):
    """CuPy arrays: cuBLAS's gemm accumulates into c itself (beta), with no temporary as large as c."""
    if not (a.dtype == b.dtype == c.dtype and a.dtype in (np.float32, np.float64) and c.flags.c_contiguous
            and a.size and b.size):
        return False
    import cupy.cublas

    cupy.cublas.gemm("N", "N", a, b, out=c, alpha=alpha, beta=beta)
    return True


def gemm(a, b, c, alpha=1.0, beta=1.0):
    """c[...] = alpha * (a @ b) + beta * c for 2-d arrays; returns c."""
    lib = _cblas()
    m, k = a.shape
    n = b.shape[1]
    ok = (lib and type(a) is np.ndarray and type(b) is np.ndarray and type(c) is np.ndarray
          and a.dtype == b.dtype == c.dtype and a.dtype in (np.float32, np.float64)
          and c.shape == (m, n) and b.shape[0] == k and m and n and k)
    if ok:
        oa, ob = _operand(a), _operand(b)
        cs0, cs1 = (s // c.itemsize for s in c.strides)
        ok = oa is not None and ob is not None and (cs1 == 1 or n == 1) and (cs0 >= n or m == 1)
    if not ok and type(a) is not np.ndarray and _cublas_gemm(a, b, c, alpha, beta):
        return c
    if not ok:
        if k == 0 or m == 0 or n == 0:
            c *= beta
            return c
        prod = a @ b
        if alpha != 1.0:
            prod *= alpha
        if beta == 0.0:
            c[...] = prod
        else:
            if beta != 1.0:
                c *= beta
            c += prod
        return c
    fn = lib[0] if a.dtype == np.float32 else lib[1]
    ldc = cs0 if m > 1 else n
    fn(_ROW_MAJOR, oa[0], ob[0], m, n, k, alpha, a.ctypes.data, oa[1], b.ctypes.data, ob[1], beta,
       c.ctypes.data, max(ldc, n, 1))
    return c
