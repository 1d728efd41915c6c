"""Seconds per image of dense vs 150-crop (3 scales x 25 crops x 2 flips) evaluation.

    PYTHONPATH=. python bench/bench_eval.py [--quick] [--nets demo,vgg16] [--scales 256,384,512] [--gpu 0]

Random weights; one random image of aspect 4:3 per scale Q (smallest side Q). Dense = the
convolutionalised net on the whole image and its flip (2 passes); multi-crop = 50 crops of 224 at that Q.
The 'demo' net is VGG-A's topology with 1/8 of the channels (8-16-32-64-64, FC 512-512-1000); 'vgg16'
is configuration D. --quick: VGG-16 once per Q (slow on a 2-core CPU), the demo net 1 repeat.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from vggtool import backend  # noqa: E402
from vggtool.io import prototxt  # noqa: E402
from vggtool.vgg import evaluate as ev  # noqa: E402

BLOCKS = {"demo": [[8], [16], [32, 32], [64, 64], [64, 64]],
          "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]}
FC = {"demo": 512, "vgg16": 4096}


def vgg_prototxt(name, crop=224, classes=1000):
    lines = [f'name: "{name}"',
             f'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: 3 dim: {crop} '
             f'dim: {crop} }} }} }}']
    bottom = "data"
    for b, widths in enumerate(BLOCKS[name], 1):
        for i, n in enumerate(widths, 1):
            top = f"conv{b}_{i}"
            lines.append(f'layer {{ name: "{top}" type: "Convolution" bottom: "{bottom}" top: "{top}" '
                         f'convolution_param {{ num_output: {n} kernel_size: 3 pad: 1 '
                         f'weight_filler {{ type: "gaussian" std: 0.01 }} }} }}')
            lines.append(f'layer {{ name: "relu{b}_{i}" type: "ReLU" bottom: "{top}" top: "{top}" }}')
            bottom = top
        lines.append(f'layer {{ name: "pool{b}" type: "Pooling" bottom: "{bottom}" top: "pool{b}" '
                     f'pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}')
        bottom = f"pool{b}"
    for name_fc, n in (("fc6", FC[name]), ("fc7", FC[name]), ("fc8", classes)):
        lines.append(f'layer {{ name: "{name_fc}" type: "InnerProduct" bottom: "{bottom}" top: "{name_fc}" '
                     f'inner_product_param {{ num_output: {n} weight_filler {{ type: "gaussian" std: 0.005 }} }} }}')
        if name_fc != "fc8":
            lines.append(f'layer {{ name: "relu_{name_fc}" type: "ReLU" bottom: "{name_fc}" top: "{name_fc}" }}')
        bottom = name_fc
    lines.append('layer { name: "prob" type: "Softmax" bottom: "fc8" top: "prob" }')
    return "\n".join(lines) + "\n"


def timed(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench(name, scales, repeat, device, batch):
    param = prototxt.parse_net_text(vgg_prototxt(name), source=f"{name} (bench)")
    t0 = time.perf_counter()
    e = ev.Evaluator(param, None, scales=scales, flip=True, device=device, batch=batch, source=name)
    print(f"{name}: built and convolutionalised in {time.perf_counter() - t0:.1f} s "
          f"(multi-crop batch {batch}, {device.name})", flush=True)
    rng = np.random.default_rng(0)
    e.multicrop(rng.integers(0, 256, size=(scales[0], scales[0], 3), dtype=np.uint8))  # warm-up, not timed
    dense_total = crops_total = 0.0
    for q in scales:
        image = rng.integers(0, 256, size=(q, int(round(q * 4 / 3)), 3), dtype=np.uint8)
        e.dense(image)  # reshape + first-touch allocations at this size, not timed
        d = timed(lambda: e.dense(image), repeat)
        c = timed(lambda: e.multicrop(image), repeat)
        dense_total, crops_total = dense_total + d, crops_total + c
        print(f"  Q={q} ({image.shape[0]}x{image.shape[1]}): dense+flip {d:8.3f} s/img   "
              f"50 crops {c:8.3f} s/img   ratio {c / d:5.2f}", flush=True)
    print(f"  {name}, {len(scales)} scales: dense {dense_total:.3f} s/img, {50 * len(scales)}-crop "
          f"{crops_total:.3f} s/img, multi-crop / dense = {crops_total / dense_total:.2f}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", default="demo,vgg16")
    ap.add_argument("--scales", default="256,384,512")
    ap.add_argument("--repeat", type=int, default=3, help="repeats for the demo net (best time kept)")
    ap.add_argument("--batch", type=int, default=50, help="crops per forward pass")
    ap.add_argument("--quick", action="store_true", help="one run per Q for every net")
    ap.add_argument("--gpu", default=None)
    args = ap.parse_args()
    device = backend.parse_devices(args.gpu)[0] if args.gpu is not None else backend.CPU
    scales = ev.parse_scales(args.scales)
    for name in args.nets.split(","):
        repeat = 1 if (args.quick or name == "vgg16") else args.repeat
        bench(name, scales, repeat, device, args.batch)


if __name__ == "__main__":
    main()
