"""Run the memory-bound parts of layers (im2col copies, Winograd transforms, pooling) on all CPU cores.

NumPy's element-wise loops and copies use one core, while OpenBLAS uses all of them: splitting such
a pass into slices along an axis and running the slices in threads (NumPy releases the GIL inside its
loops) uses the idle cores. The number of slices is the process-wide setting num_threads
(vggtool.config; VGGTOOL_NUM_THREADS, default: the CPU count, at most 8); 1 turns this off. CuPy
arrays are never split (the GPU is already parallel).

The thread pool is one lazily created object per process (`_SplitPool`), not per Net: the threads are a
property of the process (the cores), and several nets in one process share them.
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..config import defaults

MIN_ELEMENTS = 1 << 16  # below this a pass is too short for a thread hand-off to pay


def num_threads():
    return defaults().num_threads


class _SplitPool:
    """The worker threads, created at first use, re-created after a fork (a forked child inherits the pool
    object but not its threads) or when a caller needs more of them than it has (callers submit at most
    threads - 1 tasks, so a larger pool serves a smaller count)."""

    def __init__(self):
        self._pid, self._workers, self._executor = None, 0, None
        self._lock = threading.Lock()

    def executor(self, threads):
        with self._lock:
            if self._pid != os.getpid() or self._workers < threads - 1:
                self._executor = ThreadPoolExecutor(max_workers=threads - 1, thread_name_prefix="vggtool-split")
                self._pid, self._workers = os.getpid(), threads - 1
            return self._executor


_POOL = _SplitPool()
_INSIDE = threading.local()  # set while this thread runs a slice: a split_run within it runs inline


def split_run(fn, length, elements, xp=np, threads=None):
    """Call fn(lo, hi) for consecutive slices covering range(length), in parallel when worth it.

    elements: the total number of array elements the call touches (decides whether to split);
    threads: how many slices at most (default: the num_threads setting).
    """
    threads = num_threads() if threads is None else threads
    parts = min(threads, length)
    if parts <= 1 or xp is not np or elements < MIN_ELEMENTS or getattr(_INSIDE, "active", False):
        fn(0, length)  # also within a slice (a GEMM inside Winograd's split GEMMs): the cores are taken
        return
    pool = _POOL.executor(threads)
    bounds = [length * i // parts for i in range(parts + 1)]
    futures = [pool.submit(_slice, fn, bounds[i], bounds[i + 1]) for i in range(1, parts)]
    try:
        _slice(fn, bounds[0], bounds[1])
    finally:
        for f in futures:
            f.result()


def _slice(fn, lo, hi):
    _INSIDE.active = True
    try:
        fn(lo, hi)
    finally:
        _INSIDE.active = False
