"""Data layer setup time and memory on a large LMDB of tiny records (what reading the key list up front
would cost on ImageNet's 1.28M records), and the time of the first batches.

    PYTHONPATH=. python bench/bench_data_setup.py [--records 200000] [--db /tmp/setup_db] [--keys numbered]

The database is generated once (raw 4x4x3 Datums) and reused when it exists. --keys other writes keys that
are not convert_imageset's numbered ones (the Data layer then needs the key list).
"""
import argparse
import os
import sys
import time
import tracemalloc

import lmdb
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vggtool import Net  # noqa: E402
from vggtool.data.datum import array_to_datum, record_key  # noqa: E402
from vggtool.io.prototxt import parse_net_text  # noqa: E402


def make_db(path, records, numbered):
    if os.path.exists(os.path.join(path, "data.mdb")):
        return
    value = array_to_datum(np.zeros((4, 4, 3), np.uint8), 1).SerializeToString()
    env = lmdb.open(path, map_size=1 << 32)
    with env.begin(write=True) as txn:
        for i in range(records):
            key = record_key(i, f"img{i}.png") if numbered else b"k%09d" % i
            txn.put(key, value, append=True)
    env.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=200000)
    ap.add_argument("--db", default="/tmp/vggtool_setup_db")
    ap.add_argument("--keys", choices=("numbered", "other"), default="numbered")
    args = ap.parse_args()
    path = f"{args.db}_{args.keys}_{args.records}"
    t0 = time.perf_counter()
    make_db(path, args.records, args.keys == "numbered")
    print(f"database {path}: {args.records} records ({time.perf_counter() - t0:.2f} s to make or find)")
    text = (f'layer {{ name: "data" type: "Data" top: "data" top: "label" '
            f'data_param {{ source: "{path}" batch_size: 64 backend: LMDB }} }}')
    t0 = time.perf_counter()
    net = Net(parse_net_text(text), phase="TRAIN", seed=1)
    setup = time.perf_counter() - t0
    tracemalloc.start()  # a second net, for the memory the setup keeps (not timed: tracing is slow)
    Net(parse_net_text(text.replace('"data"', '"data2"')), phase="TRAIN", seed=1)
    kept = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    t0 = time.perf_counter()
    for t in range(5):
        net.iteration = t
        net.forward()
    batches = (time.perf_counter() - t0) / 5
    t0 = time.perf_counter()
    net.iteration = 2000  # a resume far into the database: a jump
    net.forward()
    jump = time.perf_counter() - t0
    print(f"setup {setup * 1000:.1f} ms, {kept / 2**20:.1f} MiB kept by a second net, "
          f"{batches * 1000:.1f} ms per batch of 64, first batch after a jump {jump * 1000:.1f} ms")


if __name__ == "__main__":
    main()
