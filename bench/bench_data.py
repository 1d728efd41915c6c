"""Data pipeline throughput: the Data layer against the same work as a plain OpenCV loop, in one run.

    PYTHONPATH=. python bench/bench_data.py [--images 256] [--batches 8] [--batch 32] [--repeat 3]
                                            [--threads 1,2,4,8] [--cv2-threads N] [--quick]

Both read the same LMDB (convert_imageset --encoded of generated 500x375 JPEGs, quality 90) and do, per
image: Datum parse, cv2.imdecode, isotropic rescale of the smaller side to S ~ U[256, 512] (INTER_AREA
when shrinking, INTER_LINEAR when enlarging, as vggtool.data.transform.isotropic_resize), a random
224x224 crop, a random mirror, float32, per-channel mean subtraction, into a float32 N x C x H x W
batch. vggtool: a Data layer (data_threads worker threads, prefetch 2) in a TRAIN net, timed over
`--batches` forwards after one. The reference: as many Python threads, each a plain loop over its own
LMDB cursor (cv2 releases the GIL) writing into its own batch array, with the layer's own per-sample
draws (S, crop, mirror) computed beforehand, so it does exactly the layer's work: the script checks that
one of its batches equals the layer's bit for bit. A third pipeline is the same loop with INTER_LINEAR
for every rescale (the issue's reference loop): cheaper, aliased when shrinking, not the layer's work.

The pipelines run interleaved (each first in turn), so outside load hits all; each cell is the median and
the range over the repeats, each ratio vggtool / reference per repeat (above 1: vggtool faster). CPU time
per image (all threads of the process) is printed too: it moves less than images/s under outside load.
The foreign load (CPU time of other processes, from /proc/stat, in cores) is printed with each line:
figures taken while it is high say little about an idle machine. OpenCV keeps its own thread count
unless --cv2-threads sets it (for both pipelines).
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
    """(images/s, CPU ms per image) of `batches` forwards after one (thread start, first batch). The CPU
    time runs from there to the pool's shutdown and is divided by the samples finished meanwhile: the
    prefetched batches around both ends are partly made, counting samples keeps it fair (within the few
    samples in flight at the start)."""
    net = data_net(db, threads, batch)
    layer = net.layer_dict["data"]
    made, make_sample = itertools.count(), layer.make_sample
    layer.make_sample = lambda t, g: (make_sample(t, g), next(made))[0]  # next() is atomic under the GIL
    net.iteration = 0
    net.forward()
    start, cpu, before = time.perf_counter(), time.process_time(), next(made)
    for t in range(1, batches + 1):
        net.iteration = t
        net.forward()
    elapsed = time.perf_counter() - start
    layer.close()
    cpu = time.process_time() - cpu
    return batch * batches / elapsed, cpu * 1e3 / (next(made) - before - 1)


# -- the reference: a plain OpenCV loop ------------------------------------------------------------------
def reference_draws(layer, batches, batch, height=375, width=500):
    """(record, S, h_off, w_off, mirror) of every sample of batches 0 .. batches, drawn as the Data layer
    draws them (its per-sample generators, in its order: S, crop offsets, mirror), so the plain loop does
    exactly the layer's work: the same records, rescales, crops and flips. Not timed."""
    draws = []
    for t in range(batches + 1):
        for g in range(batch):
            rng = layer.sample_rng(t, g)
            s = int(rng.integers(S_MIN, S_MAX + 1))
            h, w = (s, max(s, round(width * s / height))) if height <= width else \
                (max(s, round(height * s / width)), s)
            h_off, w_off = int(rng.integers(0, h - CROP + 1)), int(rng.integers(0, w - CROP + 1))
            draws.append((layer.record_index(t, g), s, h_off, w_off, bool(rng.integers(0, 2))))
    return draws


def reference_images(env, draws, out, linear=False):
    """`draws` (consecutive records) through the pipeline into `out` (slot j % len(out)): what one thread
    of a hand-written OpenCV loader does. linear: INTER_LINEAR for every rescale, shrinking too (cheaper
    than INTER_AREA, aliased: what the issue's reference loop does; not the Data layer's work)."""
    mean = np.array(MEAN, np.float32)
    datum = caffe_pb2.Datum()
    with env.begin() as txn:
        cursor = txn.cursor()
        cursor.set_range(b"%08d" % draws[0][0])
        for j, (_, s, y, x, mirror) in enumerate(draws):
            datum.ParseFromString(cursor.value())
            image = cv2.imdecode(np.frombuffer(datum.data, np.uint8), cv2.IMREAD_COLOR)
            h, w = image.shape[:2]
            scale = s / min(h, w)
            size = (max(s, round(w * scale)), max(s, round(h * scale)))
            shrink = scale < 1 and not linear
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
            image = image[y:y + CROP, x:x + CROP]
            if mirror:
                image = cv2.flip(image, 1)
            for c, plane in enumerate(cv2.split(image)):  # the fastest plain HWC -> CHW float found
                np.subtract(plane, mean[c], out=out[j % len(out), c], dtype=np.float32)
            if not cursor.next():
                cursor.first()
    return out


def measure_reference(db, draws, threads, batch, batches, linear=False):
    """(images/s, CPU ms per image) of `threads` plain loops sharing batches 1 .. batches (after batch 0,
    a warm-up), each into its own batch array."""
    env = shared_lmdb(db)
    reference_images(env, draws[:batch], np.empty((batch, 3, CROP, CROP), np.float32), linear)
    total = batch * batches
    shares = [batch + total * k // threads for k in range(threads + 1)]
    workers = [threading.Thread(target=reference_images,
                                args=(env, draws[lo:hi], np.empty((batch, 3, CROP, CROP), np.float32), linear))
               for lo, hi in zip(shares[:-1], shares[1:])]
    start, cpu = time.perf_counter(), time.process_time()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return total / elapsed, cpu * 1e3 / total


def same_output(db, draws, batch, t):
    """Whether the plain loop's batch t equals the Data layer's, bit for bit (the same work done)."""
    net = data_net(db, 1, batch)
    net.iteration = t
    got = net.forward()["data"]
    net.layer_dict["data"].close()
    want = reference_images(shared_lmdb(db), draws[t * batch:(t + 1) * batch],
                            np.empty((batch, 3, CROP, CROP), np.float32))
    return np.array_equal(got, want)


def spread(values):
    return f"{statistics.median(values):7.0f} ({min(values):.0f}-{max(values):.0f})"


def cpu_spread(values):
    return f"{statistics.median(values):7.2f} ({min(values):.2f}-{max(values):.2f})"


def table(threads, values, loads, show, title, ratio):
    """One line per thread count: vggtool, the same-work loop, the ratio, the INTER_LINEAR loop, the ratio
    (per repeat, median and range: `ratio(vggtool, reference)` > 1 where vggtool is faster)."""
    print(title)
    print(f"{'threads':>7} | {'vggtool Data layer':>22} | {'OpenCV loop, same work':>22} | {'ratio':>17} | "
          f"{'OpenCV, INTER_LINEAR':>22} | {'ratio':>17} | foreign load (cores)")
    for t in threads:
        cells = [show(values["vggtool", t])]
        for other in ("reference", "linear"):
            ratios = [ratio(a, b) for a, b in zip(values["vggtool", t], values[other, t])]
            cells += [show(values[other, t]), f"{statistics.median(ratios):5.2f} ({min(ratios):.2f}-{max(ratios):.2f})"]
        print(f"{t:>7} | " + " | ".join(f"{c:>{w}}" for c, w in zip(cells, (22, 22, 17, 22, 17))) +
              f" | {statistics.median(loads[t]):.2f} (max {max(loads[t]):.2f})")


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
        print(f"500x375 JPEG LMDB ({args.images} records), S~U[{S_MIN},{S_MAX}], crop {CROP}, mirror, mean")
        layer = data_net(db, 1, args.batch).layer_dict["data"]
        draws = reference_draws(layer, args.batches, args.batch)
        layer.close()
        identical = same_output(db, draws, args.batch, args.batches)
        print(f"the plain loop's batch {args.batches} equals the Data layer's bit for bit: "
              f"{'yes' if identical else 'NO (the two do different work: fix the reference)'}")
        pipelines = ("vggtool", "reference", "linear")
        rates = {(who, t): [] for who in pipelines for t in threads}
        cpus = {key: [] for key in rates}
        loads = {t: [] for t in threads}
        for r in range(args.repeat):
            for t in threads:
                load = ForeignLoad()
                for who in pipelines[r % 3:] + pipelines[:r % 3]:  # each goes first in turn
                    if who == "vggtool":
                        rate, cpu = measure_vggtool(db, t, args.batch, args.batches)
                    else:
                        rate, cpu = measure_reference(db, draws, t, args.batch, args.batches, who == "linear")
                    rates[who, t].append(rate)
                    cpus[who, t].append(cpu)
                loads[t].append(load.cores())
        print("columns: the Data layer; the plain OpenCV loop doing the same work; vggtool / it; the loop with "
              "INTER_LINEAR for every rescale (the issue's reference; cheaper than the INTER_AREA the layer "
              "shrinks with); vggtool / it")
        table(threads, rates, loads, spread, "images/s, median (range over the repeats)", lambda a, b: a / b)
        table(threads, cpus, loads, cpu_spread, "CPU ms per image, all threads of the process (less sensitive to "
              "outside load than images/s), median (range)", lambda a, b: b / a)
        print(f"load average at the end {os.getloadavg()[0]:.2f}")
        return identical, rates, cpus


if __name__ == "__main__":
    main()
