#!/usr/bin/env python3
"""Per-layer convolution timings of vggtool's algorithms (im2col, shifted GEMMs, Winograd) on the VGG-16 conv shapes.

Usage: python bench/bench_conv.py [--batch 8] [--reps 3] [--threads 2] [--layers conv1_2,conv3_2] [--size 224]
Prints forward and backward (dX + dW + db) median ms per layer and algorithm, and the conv sections.
"""
import argparse
import os
import statistics
import sys
import time

ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("--batch", type=int, default=8)
ap.add_argument("--size", type=int, default=224)
ap.add_argument("--reps", type=int, default=3)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--layers", default="")
ap.add_argument("--algos", default="im2col,shifted,winograd2")
ap.add_argument("--guard-wait", type=float, default=60.0, help="max seconds to wait for a quiet CPU")
A = ap.parse_args()
os.environ["OPENBLAS_NUM_THREADS"] = str(A.threads)
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # as the CLI does (vggtool.config.apply_process_defaults)
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vggtool.layers.conv.profile import profiling  # noqa: E402
from vggtool.testing import layer_net  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE if os.path.exists(os.path.join(HERE, "cpu_guard.py")) else "/work/shared/bench")
try:
    from cpu_guard import Guard, wait_quiet  # noqa: E402
except ImportError:  # pragma: no cover
    Guard = wait_quiet = None

# name, in channels, out channels, spatial size relative to 224 (VGG-16, distinct shapes)
SHAPES = [("conv1_1", 3, 64, 1), ("conv1_2", 64, 64, 1), ("conv2_1", 64, 128, 2), ("conv2_2", 128, 128, 2),
          ("conv3_1", 128, 256, 4), ("conv3_2", 256, 256, 4), ("conv4_1", 256, 512, 8),
          ("conv4_2", 512, 512, 8), ("conv5_1", 512, 512, 16)]


def main():
    want = [s for s in A.layers.split(",") if s]
    rng = np.random.default_rng(0)
    tot = {}
    for name, cin, cout, div in SHAPES:
        if want and name not in want:
            continue
        hw = A.size // div
        x = rng.standard_normal((A.batch, cin, hw, hw), dtype=np.float32)
        line = f"{name:8s} {cin:4d}->{cout:<4d} {hw:3d}x{hw:<3d}"
        for algo in A.algos.split(","):
            text = (f'layer {{ name: "{name}" type: "Convolution" bottom: "x" top: "y" convolution_param {{ '
                    f'num_output: {cout} kernel_size: 3 pad: 1 vggtool_algorithm: "{algo}" '
                    'weight_filler { type: "gaussian" std: 0.01 } } }')
            net = layer_net(text, {"x": x}, phase="TEST", dtype=np.float32)  # TEST: no forward cache
            net.blobs["x"].data[...] = x
            layer = net.layers[1]
            top, bottom = [net.blobs["y"]], [net.blobs["x"]]
            top[0].diff[...] = rng.standard_normal(top[0].shape, dtype=np.float32)
            f, b = [], []
            if wait_quiet is not None:
                wait_quiet(0.15, max_wait=A.guard_wait)
                guard = Guard()
            with profiling([layer]) as prof:
                for r in range(A.reps + 1):
                    t0 = time.perf_counter()
                    layer.forward(bottom, top)
                    t1 = time.perf_counter()
                    layer.backward(top, [True], bottom)
                    t2 = time.perf_counter()
                    if r:
                        f.append(t1 - t0)
                        b.append(t2 - t1)
            secs = {k: v / (A.reps + 1) * 1e3 for k, v in prof.seconds.items()}
            fm, bm = statistics.median(f) * 1e3, statistics.median(b) * 1e3
            tot.setdefault(algo, [0, 0])
            tot[algo][0] += fm
            tot[algo][1] += bm
            load = guard.stop()["foreign_cores"] if wait_quiet is not None else float("nan")
            line += f" | {algo}: fwd {fm:7.1f} bwd {bm:7.1f} [foreign {load:.2f}]"
            if secs:
                line += " (" + ", ".join(f"{k} {v:.0f}" for k, v in sorted(secs.items(), key=lambda kv: -kv[1])) + ")"
        print(line, flush=True)
    print("sum over the listed shapes: " + ", ".join(f"{a}: fwd {f:.0f} ms, bwd {b:.0f} ms" for a, (f, b) in tot.items()))


if __name__ == "__main__":
    main()
