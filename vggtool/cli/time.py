"""`vggtool time`: per-layer forward and backward timings of a net (Caffe's `caffe time`).

Like Caffe: one untimed forward+backward first (allocations, warm-up), then K timed iterations that run
every layer's forward, then every layer's backward in reverse order, and finally the per-layer averages
and the "Average Forward pass / Average Backward pass / Average Forward-Backward / Total Time" lines.
Input layers are filled with random values once; data layers read their data as in training.
`--memory` (not in Caffe) then prints on stdout where the net's bytes are (vggtool.net.memory).
"""
import time as _time

import numpy as np

from .. import backend
from ..errors import VggtoolError
from ..solvers.glog import GLog

HELP = "benchmark a net: average forward and backward time per layer (Caffe's `caffe time`)"


def add_arguments(parser):
    parser.add_argument("--net", "--model", dest="net", required=True, metavar="N.prototxt",
                        help="the net to time (--model is Caffe's name for it)")
    parser.add_argument("--iterations", type=int, default=10, help="timed iterations (default 10; Caffe: 50)")
    parser.add_argument("--phase", default="TRAIN", help="TRAIN (default, as in Caffe) or TEST")
    parser.add_argument("--level", type=int, default=0, help="the net state's level (include/exclude rules)")
    parser.add_argument("--stage", default="", help="comma-separated net state stages")
    parser.add_argument("--gpu", default=None, help="GPU id to run on (first of a list; default: the CPU)")
    parser.add_argument("--weights", default=None, help="optional .caffemodel to load before timing")
    parser.add_argument("--seed", type=int, default=0, help="seed for initialisation and random inputs")
    parser.add_argument("--memory", action="store_true",
                        help="after the benchmark, print every blob's, parameter's, cache's and workspace's "
                             "bytes as a table on stdout")


_LOG = GLog()


def info(caffe_line, message):
    """A glog line on stderr, placed where `caffe time` logs the same message (tools/caffe.cpp)."""
    _LOG.info(f"caffe.cpp:{caffe_line}", message)


def _now(device):
    device.synchronize()  # GPU work is asynchronous: wait for it before reading the clock
    return _time.perf_counter()


def run(args):
    if args.iterations < 1:
        raise VggtoolError(f"--iterations must be at least 1, got {args.iterations}")
    device = backend.parse_devices(args.gpu)[0] if args.gpu else backend.CPU
    info(339 if device.is_gpu else 343, f"Use GPU with device ID {device.index}" if device.is_gpu else "Use CPU.")
    net = _net_with_random_inputs(args, device)
    _untimed_pass(net)
    info(365, "*** Benchmark begins ***")
    info(366, f"Testing for {args.iterations} iterations.")
    timings = _timed_iterations(net, device, args.iterations)
    _report(net.layer_names, timings, args.iterations)
    if args.memory:
        from ..net.memory import format_report, memory_report

        print(f"Memory of net '{net.name or args.net}' after the benchmark (bytes allocated; diff '-': never allocated)")
        print(format_report(memory_report(net)), flush=True)
    return 0


def _net_with_random_inputs(args, device):
    """The net, its Input blobs filled once with standard normal values (data layers read their data)."""
    from ..net import Net

    stages = [s for s in args.stage.split(",") if s]
    net = Net(args.net, args.weights, phase=args.phase, stages=stages, level=args.level, device=device,
              seed=args.seed, log=_LOG)
    net.runs_every_backward = True  # as Caffe's benchmark; the pool keeps what those backwards read
    net.share_memory()  # as the Solver's train net (settings.share_memory)
    rng = np.random.default_rng(args.seed)
    for name in net.inputs:
        blob = net.blobs[name]
        blob.data = rng.standard_normal(blob.shape).astype(np.float32)
    return net


def _untimed_pass(net):
    """Caffe's untimed forward and backward before the benchmark (allocations, warm-up)."""
    info(351, "Performing Forward")
    loss = float(backend.to_numpy(net.forward_from_to()))
    info(356, f"Initial loss: {loss:g}")
    algorithms = [f"{name} {layer.chosen_algorithm()}" for name, layer in zip(net.layer_names, net.layers)
                  if hasattr(layer, "chosen_algorithm")]
    if algorithms:  # not in caffe time: which convolution code each layer runs (policy: vggtool.layers.conv)
        _LOG.info("time.py", "Convolution algorithms: " + ", ".join(algorithms))
    info(357, "Performing Backward")
    net.backward_from_to()


class _Timings:
    """Milliseconds summed over the timed iterations: per layer (forward, backward) and per pass."""

    def __init__(self, layers):
        self.forward_ms = np.zeros(layers)
        self.backward_ms = np.zeros(layers)
        self.forward_total = self.backward_total = self.total = 0.0


def _timed_iterations(net, device, iterations):
    layers = net.layers
    timings = _Timings(len(layers))
    net.plan_memory_if_stale()  # the pool's plan for the workspace the untimed pass recorded, untimed
    total_start = _now(device)
    with device:
        for it in range(iterations):
            net.iteration = it
            iter_start = _now(device)
            for i in range(len(layers)):
                t = _now(device)
                net.layer_forward(i)
                timings.forward_ms[i] += (_now(device) - t) * 1e3
            mid = _now(device)
            # As Caffe's benchmark: every layer's backward, with the bottoms the net would propagate to.
            for i in range(len(layers) - 1, -1, -1):
                t = _now(device)
                net.layer_backward(i)
                timings.backward_ms[i] += (_now(device) - t) * 1e3
            end = _now(device)
            timings.forward_total += (mid - iter_start) * 1e3
            timings.backward_total += (end - mid) * 1e3
            info(394, f"Iteration: {it + 1} forward-backward time: {(end - iter_start) * 1e3:.3f} ms.")
    timings.total = (_now(device) - total_start) * 1e3
    return timings


def _report(names, timings, k):
    """Caffe's closing lines: per-layer averages over the k iterations, then the passes' averages."""
    info(397, "Average time per layer: ")
    for i, name in enumerate(names):
        info(400, f"{name:>10}\tforward: {timings.forward_ms[i] / k:.4f} ms.")
        info(403, f"{name:>10}\tbackward: {timings.backward_ms[i] / k:.4f} ms.")
    info(408, f"Average Forward pass: {timings.forward_total / k:.4f} ms.")
    info(410, f"Average Backward pass: {timings.backward_total / k:.4f} ms.")
    info(412, f"Average Forward-Backward: {timings.total / k:.4f} ms.")
    info(414, f"Total Time: {timings.total:.4f} ms.")
    info(415, "*** Benchmark ends ***")
