"""Run the memory-bound parts of layers (im2col copies, Winograd transforms, pooling) on all CPU cores.

NumPy's element-wise loops and copies use one core, while OpenBLAS uses all of them: splitting such
a pass into slices along an axis and running the slices in threads (NumPy releases the GIL inside its
loops) uses the idle cores. VGGTOOL_NUM_THREADS sets the number of slices (default: the CPU count,
at most 8); 1 turns this off. CuPy arrays are never split (the GPU is already parallel).
"""
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

MIN_ELEMENTS = 1 << 16  # below this a pass is too short for a thread hand-off to pay
_pool = None  # (pid, ThreadPoolExecutor)
_threads = None


def num_threads():
    global _threads
    if _threads is None:
        env = os.environ.get("VGGTOOL_NUM_THREADS", "")
        try:
            _threads = max(1, int(env)) if env else min(os.cpu_count() or 1, 8)
        except ValueError:
            _threads = 1
    return _threads


def split_run(fn, length, elements, xp=np):
    """Call fn(lo, hi) for consecutive slices covering range(length), in parallel when worth it.

    elements: the total number of array elements the call touches (decides whether to split).
    """
    global _pool
    parts = min(num_threads(), length)
    if parts <= 1 or xp is not np or elements < MIN_ELEMENTS:
        fn(0, length)
        return
    if _pool is None or _pool[0] != os.getpid():  # a forked child inherits the pool but not its threads
        _pool = (os.getpid(), ThreadPoolExecutor(max_workers=num_threads() - 1, thread_name_prefix="vggtool-split"))
    bounds = [length * i // parts for i in range(parts + 1)]
    futures = [_pool[1].submit(fn, bounds[i], bounds[i + 1]) for i in range(1, parts)]
    fn(bounds[0], bounds[1])
    for f in futures:
        f.result()
