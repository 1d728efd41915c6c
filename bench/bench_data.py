"""Data pipeline throughput: the Data layer against the same work as a plain OpenCV loop, in one run.

    PYTHONPATH=. python bench/bench_data.py [--images 256] [--batches 8] [--batch 32] [--repeat 3]
                                            [--threads 1,2,4,8] [--quick]

Both read the same LMDB (convert_imageset --encoded of generated 500x375 JPEGs, quality 90) and do, per
image: Datum parse, cv2.imdecode, isotropic rescale of the smaller side to S ~ U[256, 512] (INTER_AREA
when shrinking, INTER_LINEAR when enlarging, as vggtool.data.transform.isotropic_resize), random 224x224
crop, random mirror, float32, per-channel mean subtraction, into a float32 N x C x H x W batch. vggtool:
a Data layer (data_threads worker threads, prefetch 2) in a TRAIN net, timed over `--batches` forwards
after one; the reference: the same number of images in that many Python threads, each a plain loop over
its own LMDB cursor (cv2 releases the GIL), written into its own batch array.

The cases run interleaved (vggtool, reference, then the reverse order on the next repeat), so outside
load hits both; each line gives the median and the range over the repeats, and the ratio vggtool /
reference of each repeat. The foreign load (CPU time of other processes, from /proc/stat, in cores) is
printed with each line: ratios taken while it is high say little about an idle machine.
"""
import argparse
import itertools
import os
import statistics
import sys
import tempfile
import threading
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import vggtool  # noqa: E402
from data_prep.cli import main as data_prep  # noqa: E402
from vggtool.data.datum import shared_lmdb  # noqa: E402
from vggtool.io.prototxt import parse_net_text  # noqa: E402
from vggtool.proto import caffe_pb2  # noqa: E402

MEAN = (104.0, 117.0, 123.0)  # BGR, the prototxt's mean_value lines
CROP, S_MIN, S_MAX = 224, 256, 512


def make_jpegs(root, n):
    """n 500x375 JPEGs of smooth noise in three octaves plus mild pixel noise (photo-like file sizes)."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        image = np.full((375, 500, 3), 128.0, np.float32)
        for cell, amplitude in ((96, 60.0), (24, 30.0), (6, 12.0)):
            small = rng.standard_normal((375 // cell + 2, 500 // cell + 2, 3)).astype(np.float32)
            image += amplitude * cv2.resize(small, (500, 375), interpolation=cv2.INTER_CUBIC)
        image += 3.0 * rng.standard_normal(image.shape).astype(np.float32)
        cv2.imwrite(os.path.join(root, f"{i}.jpg"), np.clip(image, 0, 255).astype(np.uint8),
                    [cv2.IMWRITE_JPEG_QUALITY, 90])
        lines.append(f"{i}.jpg {i % 10}\n")
    with open(os.path.join(root, "list.txt"), "w") as f:
        f.writelines(lines)


class ForeignLoad:
    """CPU time of other processes over an interval, in cores: machine busy time (/proc/stat) minus this
    process's CPU time. NaN where /proc/stat is missing."""

    def __init__(self):
        self.busy, self.own, self.wall = self._busy(), time.process_time(), time.perf_counter()

    @staticmethod
    def _busy():
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:8]]
        except (OSError, ValueError):
            return float("nan")
        return (v[0] + v[1] + v[2] + v[5] + v[6]) / os.sysconf("SC_CLK_TCK")  # user nice system irq softirq

    def cores(self):
        wall = time.perf_counter() - self.wall
        return max(0.0, (self._busy() - self.busy) - (time.process_time() - self.own)) / wall


# -- vggtool ---------------------------------------------------------------------------------------------
def data_net(db, threads, batch):
    text = (f'layer {{ name: "data" type: "Data" top: "data" top: "label" '
            f'data_param {{ source: "{db}" batch_size: {batch} backend: LMDB prefetch: 2 }} '
            f'transform_param {{ crop_size: {CROP} smallest_side_min: {S_MIN} smallest_side_max: {S_MAX} '
            f'mirror: true mean_value: {MEAN[0]:g} mean_value: {MEAN[1]:g} mean_value: {MEAN[2]:g} }} }}')
    settings = vggtool.config.defaults().replace(data_threads=threads)
    return vggtool.Net(parse_net_text(text), phase="TRAIN", seed=1, settings=settings)


def measure_vggtool(db, threads, batch, batches):
    """(images/s, CPU ms per image): images/s of `batches` forwards after one (thread start, first
    batch); CPU time from the first forward to the pool's shutdown over the samples the workers made
    (the prefetched batches beyond the last one are partly made: counting them keeps it exact)."""
    net = data_net(db, threads, batch)
    layer = net.layer_dict["data"]
    made, make_sample = itertools.count(), layer.make_sample
    layer.make_sample = lambda t, g: (next(made), make_sample(t, g))[1]  # next() is atomic under the GIL
    cpu = time.process_time()
    net.iteration = 0
    net.forward()
    start = time.perf_counter()
    for t in range(1, batches + 1):
        net.iteration = t
        net.forward()
    elapsed = time.perf_counter() - start
    layer.close()
    cpu = time.process_time() - cpu
    return batch * batches / elapsed, cpu * 1e3 / next(made)


# -- the reference: a plain OpenCV loop ------------------------------------------------------------------
def reference_images(env, first, count, batch, seed):
    """Records first, first+1, ... (wrapping) of `env` through the pipeline, `count` of them, into one
    batch array (slot j % batch): what one thread of a hand-written OpenCV loader does."""
    rng = np.random.default_rng(seed)
    mean = np.array(MEAN, np.float32)
    out = np.empty((batch, 3, CROP, CROP), np.float32)
    datum = caffe_pb2.Datum()
    with env.begin() as txn:
        cursor = txn.cursor()
        cursor.set_range(b"%08d" % (first % txn.stat()["entries"]))
        for j in range(count):
            datum.ParseFromString(cursor.value())
            image = cv2.imdecode(np.frombuffer(datum.data, np.uint8), cv2.IMREAD_COLOR)
            s = int(rng.integers(S_MIN, S_MAX + 1))
            h, w = image.shape[:2]
            scale = s / min(h, w)
            size = (max(s, round(w * scale)), max(s, round(h * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
            y = int(rng.integers(0, size[1] - CROP + 1))
            x = int(rng.integers(0, size[0] - CROP + 1))
            image = image[y:y + CROP, x:x + CROP]
            if rng.integers(0, 2):
                image = cv2.flip(image, 1)
            for c, plane in enumerate(cv2.split(image)):  # the fastest plain HWC -> CHW float found
                np.subtract(plane, mean[c], out=out[j % batch, c], dtype=np.float32)
            if not cursor.next():
                cursor.first()
    return out


def measure_reference(db, threads, batch, batches):
    """(images/s, CPU ms per image) of threads plain loops sharing batch * batches images (after a
    warm-up batch)."""
    env = shared_lmdb(db)
    reference_images(env, 0, batch, batch, seed=0)
    total = batch * batches
    shares = [total * k // threads for k in range(threads + 1)]
    workers = [threading.Thread(target=reference_images, args=(env, lo, hi - lo, batch, k))
               for k, (lo, hi) in enumerate(zip(shares[:-1], shares[1:]))]
    start, cpu = time.perf_counter(), time.process_time()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return total / elapsed, cpu * 1e3 / total


def spread(values):
    return f"{statistics.median(values):7.0f} ({min(values):.0f}-{max(values):.0f})"


def cpu_spread(values):
    return f"{statistics.median(values):7.2f} ({min(values):.2f}-{max(values):.2f})"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256, help="records in the generated LMDB")
    ap.add_argument("--batches", type=int, default=8, help="timed batches per measurement")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3, help="interleaved measurements of each case")
    ap.add_argument("--threads", default="1,2,4,8", help="worker thread counts, comma-separated")
    ap.add_argument("--cv2-threads", type=int, default=0,
                    help="cv2.setNumThreads for both (default: OpenCV's own choice, as a training process has)")
    ap.add_argument("--quick", action="store_true", help="a check that it runs: 16 images, 2 batches of 8, once")
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.batches, args.batch, args.repeat = 16, 2, 8, 1
    threads = [int(t) for t in args.threads.split(",")]
    if args.cv2_threads:
        cv2.setNumThreads(args.cv2_threads)
    with tempfile.TemporaryDirectory() as tmp:
        jroot = os.path.join(tmp, "jpg")
        os.makedirs(jroot)
        make_jpegs(jroot, args.images)
        db = os.path.join(tmp, "jdb")
        quiet = open(os.devnull, "w")
        old = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = quiet
        try:
            converted = data_prep(["convert_imageset", jroot, os.path.join(jroot, "list.txt"), db, "--encoded"])
        finally:
            sys.stdout, sys.stderr = old
            quiet.close()
        if converted != 0:
            raise SystemExit("convert_imageset failed")
        print(f"cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}, opencv {cv2.__version__} "
              f"({cv2.getNumThreads()} threads), batch {args.batch}, {args.batches} timed batches, "
              f"{args.repeat} interleaved repeats")
        if max(threads) > (os.cpu_count() or 1):
            print(f"note: {max(threads)} threads on {os.cpu_count()} cores: past {os.cpu_count()} threads "
                  "the figures show the cost of oversubscription, not scaling")
        print(f"500x375 JPEG LMDB ({args.images} records), S~U[{S_MIN},{S_MAX}], crop {CROP}, mirror, mean; "
              "images/s median (range)")
        rates = {(who, t): [] for who in ("vggtool", "reference") for t in threads}
        cpus = {key: [] for key in rates}
        loads = {t: [] for t in threads}
        for r in range(args.repeat):
            for t in threads:
                load = ForeignLoad()
                order = ("vggtool", "reference") if r % 2 == 0 else ("reference", "vggtool")
                for who in order:
                    measure = measure_vggtool if who == "vggtool" else measure_reference
                    rate, cpu = measure(db, t, args.batch, args.batches)
                    rates[who, t].append(rate)
                    cpus[who, t].append(cpu)
                loads[t].append(load.cores())
        print(f"{'threads':>7} | {'vggtool Data layer':>22} | {'plain OpenCV loop':>22} | "
              f"{'ratio':>17} | foreign load (cores)")
        for t in threads:
            ratios = [a / b for a, b in zip(rates["vggtool", t], rates["reference", t])]
            print(f"{t:>7} | {spread(rates['vggtool', t]):>22} | {spread(rates['reference', t]):>22} | "
                  f"{statistics.median(ratios):5.2f} ({min(ratios):.2f}-{max(ratios):.2f}) | "
                  f"{statistics.median(loads[t]):.2f} (max {max(loads[t]):.2f})")
        print("CPU time per image (all threads of the process; less sensitive to outside load than images/s), "
              "ms median (range)")
        print(f"{'threads':>7} | {'vggtool Data layer':>22} | {'plain OpenCV loop':>22} | {'ratio':>17}")
        for t in threads:
            ratios = [a / b for a, b in zip(cpus["reference", t], cpus["vggtool", t])]
            print(f"{t:>7} | {cpu_spread(cpus['vggtool', t]):>22} | {cpu_spread(cpus['reference', t]):>22} | "
                  f"{statistics.median(ratios):5.2f} ({min(ratios):.2f}-{max(ratios):.2f})")
        print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
