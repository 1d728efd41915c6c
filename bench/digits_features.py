"""Appendix B's pipeline on real images available offline: scikit-learn's handwritten digits (1,797 8x8
images, 10 classes), upscaled to 32x32 PNGs, described by a small VGG-style net (`vggtool extract`) and
classified by linear SVMs under the Caltech protocol (`vggtool svm --protocol caltech`: 30 training and
50 test images per class, 3 seeded random splits, C chosen on 20% of each training split).

Without --weights the net has RANDOM weights (xavier, --seed): the figures then measure random
convolutional features, not trained ones. Pass a trained digits deploy net with --net/--weights.
A raw-pixel baseline (L2-normalised pixels, same SVM protocol) is printed for scale.

    PYTHONPATH=. python bench/digits_features.py [--out bench_out/digits] [--net N --weights W]
"""
import argparse
import os
import sys
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vggtool import Net, svm  # noqa: E402
from vggtool.cli import main  # noqa: E402
from vggtool.extract import Features, l2_normalise  # noqa: E402

# VGG-mini (the shape of netdefs/demo): 3x3 convs 16-32-64-64, three 2x2 pools, FC 256-256-10, 28x28 gray input
def conv(name, bottom, n, pool=None):
    text = f"""layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}"
  convolution_param {{ num_output: {n} kernel_size: 3 pad: 1 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu_{name}" type: "ReLU" bottom: "{name}" top: "{name}" }}
"""
    if pool:
        text += f"""layer {{ name: "{pool}" type: "Pooling" bottom: "{name}" top: "{pool}"
  pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
"""
    return text


def fc(name, bottom, n, relu=True):
    text = f"""layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{name}"
  inner_product_param {{ num_output: {n} weight_filler {{ type: "xavier" }} }} }}
"""
    if relu:
        text += f"""layer {{ name: "relu_{name}" type: "ReLU" bottom: "{name}" top: "{name}" }}
layer {{ name: "drop_{name}" type: "Dropout" bottom: "{name}" top: "{name}" dropout_param {{ dropout_ratio: 0.5 }} }}
"""
    return text


NET = ('name: "VGG_mini_digits"\n'
       'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 28 dim: 28 } } }\n'
       + conv("conv1_1", "data", 16, "pool1") + conv("conv2_1", "pool1", 32, "pool2")
       + conv("conv3_1", "pool2", 64) + conv("conv3_2", "conv3_1", 64, "pool3")
       + fc("fc6", "pool3", 256) + fc("fc7", "fc6", 256) + fc("fc8", "fc7", 10, relu=False))


def write_digits(out, size=32):
    from sklearn.datasets import load_digits

    d = load_digits()
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    lines = []
    for i, (image, label) in enumerate(zip(d.images, d.target)):
        big = cv2.resize((image * 255 / 16).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
        name = f"images/{i:04d}.png"
        cv2.imwrite(os.path.join(out, name), np.clip(np.rint(big), 0, 255).astype(np.uint8))
        lines.append(f"{name} {label}\n")
    with open(os.path.join(out, "digits.txt"), "w") as f:
        f.writelines(lines)
    return d


def run(argv):
    print("$ vggtool " + " ".join(argv), flush=True)
    t = time.time()
    if main(argv) != 0:
        sys.exit(f"failed: vggtool {' '.join(argv)}")
    return time.time() - t


def main_bench():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench_out/digits")
    ap.add_argument("--net", default=None, help="deploy prototxt of a trained net (1-channel input)")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    ap.add_argument("--scales", default="32,48,64")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    digits = write_digits(args.out)
    data, root = os.path.join(args.out, "digits.txt"), args.out
    nets = []
    if args.net:
        nets.append((args.net, args.weights, "trained"))
    else:
        for seed in (args.seed, args.seed + 1):
            path = os.path.join(args.out, f"vgg_mini_seed{seed}.prototxt")
            with open(path, "w") as f:
                f.write(NET)
            weights = path.replace(".prototxt", ".caffemodel")
            Net(path, phase="TEST", seed=seed).save(weights)
            nets.append((path, weights, f"random weights, seed {seed}"))
    protocol = ["--protocol", "caltech", "--train-per-class", "30", "--test-per-class", "50", "--splits", "3"]
    results = []
    x = l2_normalise(digits.images.reshape(len(digits.images), -1)).astype(np.float32)
    r = svm.caltech_protocol(Features(x, digits.target, np.arange(len(x))), 30, 50, 3)
    results.append(("raw 8x8 pixels, L2 (baseline)", r["mean"], r["std"], 0.0))
    feats = {}
    for k, (net, weights, what) in enumerate(nets):
        for aggregate in ("stack", "average") if k == 0 else ("stack",):
            out = os.path.join(args.out, f"fc7_net{k}_{aggregate}.npz")
            secs = run(["extract", "--net", net, "--weights", weights, "--layer", "fc7", "--data", data, "--root", root,
                        "--scales", args.scales, "--flip", "--aggregate", aggregate, "--out", out])
            feats[(k, aggregate)] = out
            f = svm_result(out)
            results.append((f"fc7 {what}, Q={args.scales}, flips, {aggregate}", f["mean"], f["std"], secs))
    if len(nets) > 1:
        fused = f"{feats[(0, 'stack')]},{feats[(1, 'stack')]}"
        run(["svm", "--features", fused] + protocol)
        f = svm_result(fused)
        results.append(("late fusion: both nets' stacked fc7 descriptors", f["mean"], f["std"], 0.0))
    print(f"\ndigits ({len(x)} images, 10 classes), Caltech protocol 30 train / 50 test per class, 3 splits:")
    for name, m, s, secs in results:
        extra = f"   (extraction {secs:.1f} s)" if secs else ""
        print(f"  {name:62s} mean class recall {100 * m:6.2f} +- {100 * s:.2f} %{extra}")


def svm_result(paths):
    from vggtool.extract import load_features

    return svm.caltech_protocol(load_features(paths), 30, 50, 3)


if __name__ == "__main__":
    main_bench()
