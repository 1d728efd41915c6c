"""Data-parallel training speed: iteration time and speed-up of N replicas against one, and the time
spent exchanging gradients and weights (vggtool.solvers.parallel.ParallelSolver.seconds).

    PYTHONPATH=. python bench/bench_parallel.py [--replicas 1,2,4] [--batch 64] [--iters 4]
                                                [--devices cpu|gpu] [--size 64]

Under MPI (`mpiexec -n K python bench/bench_parallel.py --replicas 1`) every rank drives --replicas local
replicas (K x replicas in all) and the exchange includes the Allreduce/Bcast; rank 0 first times one
device alone for the speed-up. CPU replicas (`cpu`) show the machinery's overhead and whether threads overlap on this machine's cores;
GPU replicas (`gpu`: GPUs 0..N-1) show the real speed-up. Every configuration trains the same net on the
same batches from a generated LMDB; the first iteration (warm-up) is not timed.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_prep.cli import main as data_prep  # noqa: E402
from vggtool import backend  # noqa: E402
from vggtool.io import prototxt  # noqa: E402
from vggtool.solvers.parallel import ParallelSolver, mpi_comm  # noqa: E402
from vggtool.proto import caffe_pb2  # noqa: E402
from vggtool.solvers import Solver  # noqa: E402
from vggtool.solvers.glog import GLog  # noqa: E402

# A small VGG-style net: 3x3 convs, 2x2 pools, two FC layers with dropout.
NET = """
name: "bench"
layer {{ name: "data" type: "Data" top: "data" top: "label"
  data_param {{ source: "{db}" batch_size: {batch} backend: LMDB }}
  transform_param {{ crop_size: {crop} mirror: true mean_value: 128 scale: 0.02 }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 32 kernel_size: 3 pad: 1 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param {{ num_output: 64 kernel_size: 3 pad: 1 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }}
layer {{ name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "fc3" type: "InnerProduct" bottom: "pool2" top: "fc3"
  inner_product_param {{ num_output: 256 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu3" type: "ReLU" bottom: "fc3" top: "fc3" }}
layer {{ name: "drop3" type: "Dropout" bottom: "fc3" top: "fc3" dropout_param {{ dropout_ratio: 0.5 }} }}
layer {{ name: "fc4" type: "InnerProduct" bottom: "fc3" top: "fc4"
  inner_product_param {{ num_output: 10 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc4" bottom: "label" top: "loss" }}
"""


def make_db(folder, count, side):
    rng = np.random.default_rng(0)
    lines = []
    for i in range(count):
        cv2.imwrite(os.path.join(folder, f"{i}.png"), rng.integers(0, 256, (side + 4, side + 4, 3), dtype=np.uint8))
        lines.append(f"{i}.png {i % 10}\n")
    listing = os.path.join(folder, "list.txt")
    with open(listing, "w") as f:
        f.writelines(lines)
    db = os.path.join(folder, "db")
    data_prep(["convert_imageset", folder, listing, db])
    return db


def solver_param(db, batch, crop):
    param = prototxt.parse_text('base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 lr_policy: "fixed" '
                               'max_iter: 1000 random_seed: 1 snapshot_after_train: false',
                               caffe_pb2.SolverParameter())
    param.net_param.CopyFrom(prototxt.parse_net_text(NET.format(db=db, batch=batch, crop=crop)))
    return param


def measure(param, devices, iters, threads, comm=None):
    log = GLog(stream=False)
    if len(devices) == 1 and threads is None and comm is None:
        s = Solver(param, device=devices[0], log=log)
    else:
        s = ParallelSolver(param, devices=devices, threads=threads, log=log, comm=comm)
    s.step(1)  # warm-up: buffers, prefetch
    if hasattr(s, "seconds"):
        s.seconds = dict.fromkeys(s.seconds, 0.0)
    t0 = time.perf_counter()
    s.step(iters)
    per_iter = (time.perf_counter() - t0) / iters
    exchange = s.seconds["exchange"] / iters if hasattr(s, "seconds") else 0.0
    return per_iter, exchange, s.net.num_params()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicas", default="1,2,4")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--iters", type=int, default=4)
    ap.add_argument("--size", type=int, default=64, help="crop side (images are 4 pixels larger)")
    ap.add_argument("--devices", choices=("cpu", "gpu"), default="cpu")
    args = ap.parse_args()
    comm = mpi_comm()
    if comm is not None:
        return main_mpi(args, comm)
    with tempfile.TemporaryDirectory() as tmp:
        param = solver_param(make_db(tmp, 2 * args.batch, args.size), args.batch, args.size)
        print(f"net: {NET.count('Convolution')} conv + 2 FC, batch {args.batch} (whole batch, split over the "
              f"replicas), {args.size}x{args.size} crops, {args.iters} timed iterations, {os.cpu_count()} cores")
        print(f"{'replicas':>8} {'mode':>10} {'s/iter':>8} {'speed-up':>8} {'exchange s/iter':>15} {'exchange %':>10}")
        base = None
        for n in (int(x) for x in args.replicas.split(",")):
            devices = [backend.gpu(i) for i in range(n)] if args.devices == "gpu" else [backend.CPU] * n
            modes = [("single", None)] if n == 1 else [("threads", True), ("sequential", False)]
            if args.devices == "gpu" and n > 1:
                modes = [("threads", True)]
            for mode, threads in modes:
                per_iter, exchange, params = measure(param, devices, args.iters, threads)
                base = per_iter if base is None else base
                print(f"{n:>8} {mode:>10} {per_iter:8.3f} {base / per_iter:8.2f} {exchange:15.4f} "
                      f"{100 * exchange / per_iter:9.1f}%")
        print(f"({params:,} parameters exchanged per iteration)")


def main_mpi(args, comm):
    rank, ranks = comm.Get_rank(), comm.Get_size()
    tmp = tempfile.mkdtemp() if rank == 0 else None
    db = make_db(tmp, 2 * args.batch, args.size) if rank == 0 else None
    db = comm.bcast(db, root=0)  # one machine here: every rank reads rank 0's LMDB
    param = solver_param(db, args.batch, args.size)
    if rank == 0:
        base, _, params = measure(param, [backend.CPU], args.iters, None)
        print(f"{'ranks':>5} {'replicas':>8} {'s/iter':>8} {'speed-up':>8} {'exchange s/iter':>15} {'exchange %':>10}")
        print(f"{1:>5} {1:>8} {base:8.3f} {1.0:8.2f} {0.0:15.4f} {0.0:9.1f}%")
    comm.Barrier()
    for n in (int(x) for x in args.replicas.split(",")):
        devices = [backend.gpu(i) for i in range(n)] if args.devices == "gpu" else [backend.CPU] * n
        per_iter, exchange, params = measure(param, devices, args.iters, None, comm)
        if rank == 0:
            print(f"{ranks:>5} {ranks * n:>8} {per_iter:8.3f} {base / per_iter:8.2f} {exchange:15.4f} "
                  f"{100 * exchange / per_iter:9.1f}%")
    comm.Barrier()
    if rank == 0:
        print(f"({params:,} parameters exchanged per iteration; batch {args.batch} split over all replicas)")
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
