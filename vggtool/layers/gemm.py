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
import contextlib
import ctypes
import functools
import glob
import os
import threading

import numpy as np

from ..backend import get_array_module
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


def cblas_address(dtype):
    """(address of NumPy's OpenBLAS cblas_sgemm or cblas_dgemm for dtype, whether it takes 64-bit
    integers) for C code to call (the fused Winograd blocks, kernels.py), or None (not found, or off)."""
    fns = _cblas()
    if not fns or np.dtype(dtype) not in (np.float32, np.float64):
        return None
    fn = fns[0] if np.dtype(dtype) == np.float32 else fns[1]
    return ctypes.cast(fn, ctypes.c_void_p).value, fn.argtypes[3] is ctypes.c_int64


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

# blas_on_one_thread's state: how many blocks are inside it (lanes run nets at the same time) and the
# thread count OpenBLAS had when the first one entered (None: nobody is inside)
_HOLD_LOCK = threading.Lock()
_hold = {"depth": 0, "threads": None}
# a GEMM (or a GEMM slice) smaller than this many multiply-adds runs in its caller: a hand-off to a
# thread costs tens of microseconds
MIN_SPLIT_MACS = 1 << 22


@contextlib.contextmanager
def blas_on_one_thread():
    """Within the block OpenBLAS runs single-threaded and vggtool splits GEMMs over its own threads
    instead (gemm, independent_gemms: as many as OpenBLAS had, at most the num_threads setting); the
    count is put back when the last block leaves. Net passes run inside one.

    Why: after a call OpenBLAS's idle threads spin for about 2^28 cycles waiting for the next one, unless
    OPENBLAS_THREAD_TIMEOUT was set before NumPy loaded it (the CLI sets it; a library user importing NumPy
    first does not), and a change of the thread count wakes them. Spinning, they took the cores from the
    threaded passes between the GEMMs: VGG-16's TEST forward took 1.52 s instead of 0.94 s. With OpenBLAS
    on one thread there is nobody to spin. Re-entrant and shared by threads; a no-op where the count
    cannot be read."""
    with _HOLD_LOCK:
        if _hold["depth"] == 0:
            threads = blas_threads()
            if threads is not None and threads > 1:
                set_blas_threads(1)
            _hold["threads"] = threads
        _hold["depth"] += 1
    try:
        yield
    finally:
        with _HOLD_LOCK:
            _hold["depth"] -= 1
            if _hold["depth"] == 0:
                threads, _hold["threads"] = _hold["threads"], None
                if threads is not None and threads > 1:
                    set_blas_threads(threads)


def held_threads():
    """While a blas_on_one_thread block runs (in any thread): the threads vggtool splits GEMMs over (1:
    none); else None."""
    threads = _hold["threads"]
    if _hold["depth"] == 0 or threads is None:
        return None
    return max(1, min(threads, defaults().num_threads))


def gemm_threads():
    """The threads a GEMM started now runs on: held_threads() while OpenBLAS is held at one, else
    OpenBLAS's own count (None: unknown)."""
    held = held_threads()
    return held if held is not None else blas_threads()


def independent_gemms(fn, count, elements):
    """fn(lo, hi) runs GEMMs lo..hi-1 of `count` that write distinct outputs (Winograd's per-position
    GEMMs): split over OpenBLAS's threads, each running its share single-threaded, instead of every GEMM
    split over them. Many mid-sized GEMMs then pay no hand-off between BLAS threads per call (VGG-16's
    Winograd layers: 3-11% faster on 2 cores). Runs fn(0, count) as is where BLAS has one thread already
    (CPU lanes running at the same time, MPI ranks sharing a host) or its count cannot be set.
    elements: the elements the GEMMs touch (small calls stay in the caller)."""
    held = held_threads()
    if held is not None:  # OpenBLAS is on one thread already (blas_on_one_thread)
        split_run(fn, count, elements, threads=held)
        return
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


def matmul(a, b, out):
    """out[...] = a @ b for 2-d arrays: gemm for NumPy arrays (split over vggtool's threads inside
    blas_on_one_thread), xp.matmul for others."""
    if not isinstance(out, np.ndarray):
        return get_array_module(out).matmul(a, b, out=out)
    return gemm(a, b, out, beta=0.0)


def gemm(a, b, c, alpha=1.0, beta=1.0):
    """c[...] = alpha * (a @ b) + beta * c for 2-d arrays; returns c. Inside blas_on_one_thread a large
    one on NumPy arrays is split along the longer axis of c over vggtool's threads, each slice one
    single-threaded call that sums the whole K for its outputs."""
    held = held_threads()
    m, n = c.shape
    k = a.shape[1] if a.ndim == 2 else 0
    macs = m * n * k
    if held and held > 1 and type(c) is np.ndarray and macs >= 2 * MIN_SPLIT_MACS:
        parts = min(held, macs // MIN_SPLIT_MACS)  # split_run's own size test sees the multiply-adds
        if m >= n:
            split_run(lambda lo, hi: _gemm(a[lo:hi], b, c[lo:hi], alpha, beta), m, macs, threads=parts)
        else:
            split_run(lambda lo, hi: _gemm(a, b[:, lo:hi], c[:, lo:hi], alpha, beta), n, macs, threads=parts)
        return c
    return _gemm(a, b, c, alpha, beta)


def _gemm(a, b, c, alpha, beta):
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
