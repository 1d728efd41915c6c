"""Seconds per section of the convolution code, for benchmarks (bench/bench_vgg.py, bench/bench_conv.py).

A layer holds a profiler in `layer.profiler`: NO_PROFILE (does nothing) unless `profiling(net)` lends
the net's convolution layers a SectionProfiler for the duration of a block:

    with profiling(net) as prof:
        net.forward(); net.backward()
    print(prof.seconds)   # {"im2col_gemm": 0.12, ...}
"""
import time
from contextlib import contextmanager


class _NoProfile:
    @contextmanager
    def section(self, name):
        yield


NO_PROFILE = _NoProfile()


class SectionProfiler:
    def __init__(self):
        self.seconds = {}

    @contextmanager
    def section(self, name):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


@contextmanager
def profiling(net_or_layers, profiler=None):
    """Lend `profiler` (default: a new SectionProfiler) to every convolution layer of a net (or of a list
    of layers) within the block; yields the profiler."""
    layers = getattr(net_or_layers, "layers", net_or_layers)
    targets = [layer for layer in layers if hasattr(layer, "profiler")]
    profiler = SectionProfiler() if profiler is None else profiler
    for layer in targets:
        layer.profiler = profiler
    try:
        yield profiler
    finally:
        for layer in targets:
            layer.profiler = NO_PROFILE
