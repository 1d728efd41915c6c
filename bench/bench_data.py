"""Data pipeline throughput: images/s of the Data layer (LMDB read + JPEG/PNG decode + scale jitter +
random crop + flip + PCA colour shift + mean) with 1 and 2 worker threads.

    PYTHONPATH=. python bench/bench_data.py [--images 128] [--batches 16] [--repeat 3]

Datasets: generated 500x375 JPEGs (ILSVRC-like sizes; S in [256, 512], crop 224) and the scikit-learn
digits (32x32 PNG; S in [32, 40], crop 28). Prints one line per (dataset, threads).
"""
import argparse
import os
import sys
import tempfile
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import vggtool  # noqa: E402
from data_prep.cli import main as data_prep  # noqa: E402
from vggtool.io.prototxt import parse_net_text  # noqa: E402


def make_jpegs(root, n):
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        # Smooth random content, so JPEG sizes resemble photos rather than noise.
        small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        image = cv2.resize(small, (500, 375), interpolation=cv2.INTER_CUBIC)
        image = cv2.add(image, rng.integers(0, 20, image.shape, dtype=np.uint8))
        cv2.imwrite(os.path.join(root, f"{i}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        lines.append(f"{i}.jpg {i % 10}\n")
    with open(os.path.join(root, "list.txt"), "w") as f:
        f.writelines(lines)


def measure(db, pca, transform, threads, batch, batches):
    text = (f'layer {{ name: "data" type: "Data" top: "data" top: "label" '
            f'data_param {{ source: "{db}" batch_size: {batch} backend: LMDB prefetch: 2 }} '
            f'transform_param {{ {transform} mirror: true pca_stats_file: "{pca}" pca_sigma: 0.1 '
            f'mean_value: 104 mean_value: 117 mean_value: 123 }} }}')
    settings = vggtool.config.defaults().replace(data_threads=threads)
    net = vggtool.Net(parse_net_text(text), phase="TRAIN", seed=1, settings=settings)
    net.iteration = 0
    net.forward()  # warm up: thread start, first batch
    start = time.perf_counter()
    for t in range(1, batches + 1):
        net.iteration = t
        net.forward()
    elapsed = time.perf_counter() - start
    net.layer_dict["data"].close()
    return batch * batches / elapsed


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--batches", type=int, default=16)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3, help="runs per case; the best is printed (shared machines)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        jroot = os.path.join(tmp, "jpg")
        os.makedirs(jroot)
        make_jpegs(jroot, args.images)
        droot = os.path.join(tmp, "digits")
        quiet = open(os.devnull, "w")
        old = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = quiet
        try:
            assert data_prep(["convert_imageset", jroot, os.path.join(jroot, "list.txt"), os.path.join(tmp, "jdb"),
                              "--encoded"]) == 0
            assert data_prep(["digits", droot]) == 0
            assert data_prep(["convert_imageset", droot, os.path.join(droot, "train.txt"),
                              os.path.join(tmp, "ddb"), "--encoded"]) == 0
            for name in ("jdb", "ddb"):
                assert data_prep(["compute_color_stats", os.path.join(tmp, name),
                                  os.path.join(tmp, name + ".pca")]) == 0
        finally:
            sys.stdout, sys.stderr = old
        cases = [("500x375 JPEG, S~U[256,512], crop 224", "jdb",
                  "crop_size: 224 smallest_side_min: 256 smallest_side_max: 512"),
                 ("digits 32x32 PNG, S~U[32,40], crop 28", "ddb",
                  "crop_size: 28 smallest_side_min: 32 smallest_side_max: 40")]
        print(f"cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}, batch {args.batch}, "
              f"{args.batches} timed batches after one warm-up")
        for label, name, transform in cases:
            rates = {1: [], 2: []}
            for _ in range(args.repeat):  # interleaved, so a burst of outside load hits both settings
                for threads in (1, 2):
                    rates[threads].append(measure(os.path.join(tmp, name), os.path.join(tmp, name + ".pca"),
                                                  transform, threads, args.batch, args.batches))
            for threads, r in rates.items():
                print(f"{label:40s} threads={threads}: {max(r):8.0f} images/s (best of {len(r)}; "
                      f"median {sorted(r)[len(r) // 2]:.0f})")


if __name__ == "__main__":
    main()
