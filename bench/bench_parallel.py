"""Data-parallel training speed: iteration time and speed-up of N replicas against one replica doing the
whole batch, and the time spent exchanging gradients and weights
(vggtool.solvers.parallel.ParallelSolver.seconds["exchange"]).

    PYTHONPATH=. python bench/bench_parallel.py [--replicas 1,2,4] [--batch 64] [--iters 4] [--rounds 3]
                                                [--devices cpu|gpu] [--size 64] [--net small|vgg16]

CPU replicas (`cpu`) show the machinery's overhead and how the lanes share the cores (vggtool.solvers.lanes):
`lanes` is what `--devices cpu:N` does (one lane per core, BLAS threads split between the lanes; the
replicas of a lane run as one pass over their shares where that is exact), `apart` the same lanes with
each replica a pass of its own, one after another, `sequential` runs every replica in one lane on all the cores,
`threads` one lane per replica. GPU replicas (`gpu`: GPUs 0..N-1) show the real speed-up. Every
configuration trains the same net on the same batches from a generated LMDB; the first iteration (warm-up)
is not timed. The configurations are timed in turn, --rounds times, and each one's fastest round is
printed, so that a burst of load from another process does not fall on one configuration only.

`--net vgg16` trains VGG-16 (configuration D, 1000 classes: all its 138 M parameters at --size 224) to
show the exchange's share of an iteration of the paper's net.

Under MPI (`mpiexec -n K python bench/bench_parallel.py --replicas 1`) every rank drives --replicas local
replicas (K x replicas in all) and the exchange includes the Allreduce; rank 0 first times one device
alone for the speed-up while the other ranks sleep (not spinning in an MPI call).
"""
import argparse
import gc
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # as the CLI does (vggtool.config.apply_process_defaults)

import cv2  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from data_prep.cli import main as data_prep  # noqa: E402
from vgg_configs import sgd_solver_text, vgg_layers  # noqa: E402
from vggtool import backend  # noqa: E402
from vggtool.io import prototxt  # noqa: E402
from vggtool.proto import caffe_pb2  # noqa: E402
from vggtool.solvers import Solver  # noqa: E402
from vggtool.solvers.glog import GLog  # noqa: E402
from vggtool.solvers.parallel import ParallelSolver, mpi_comm  # noqa: E402
from vggtool.solvers.lanes import cpu_cores  # noqa: E402

DATA = """
name: "bench"
layer {{ name: "data" type: "Data" top: "data" top: "label"
  data_param {{ source: "{db}" batch_size: {batch} backend: LMDB }}
  transform_param {{ crop_size: {crop} mirror: true mean_value: 128 scale: 0.02 }} }}
"""
# A small VGG-style net: 3x3 convs, 2x2 pools, two FC layers with dropout.
SMALL = DATA + """
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


XAVIER_FILLERS = ('weight_filler { type: "xavier" }',) * 2


def vgg_net(cfg, classes=1000):
    """The prototxt (a format string taking db, batch, crop) of a VGG configuration of vgg_configs.CFGS."""
    body = "\n".join(vgg_layers(cfg, classes, fillers=XAVIER_FILLERS))
    return DATA + body.replace("{", "{{").replace("}", "}}")


NETS = {"small": SMALL, "vgg16": vgg_net("D")}


def machine():
    """'<CPU model>, N cores, load average x' (the load shows whether the figures are to be trusted)."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}"


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


def solver_param(db, batch, crop, net="small"):
    param = prototxt.parse_text(sgd_solver_text(seed=1), caffe_pb2.SolverParameter())
    param.net_param.CopyFrom(prototxt.parse_net_text(NETS[net].format(db=db, batch=batch, crop=crop)))
    return param


class Config:
    """One configuration: its solver, built and warmed up once, and its timed rounds."""

    def __init__(self, param, devices, mode, comm=None):
        self.replicas, self.mode = len(devices), mode
        log = GLog(stream=False)
        if mode == "single" and comm is None:
            self.solver = Solver(param, device=devices[0], log=log)
        else:
            threads = {"sequential": False, "threads": True}.get(mode)  # lanes, apart: the default lanes
            self.solver = ParallelSolver(param, devices=devices, threads=threads, log=log, comm=comm,
                                         merge_lane_replicas=mode != "apart")
        self.solver.step(1)  # warm-up: buffers, prefetch
        self.rounds = []

    def time(self, iters, detail=False):
        s = self.solver
        seconds = getattr(s, "seconds", None)
        if seconds is not None:
            s.seconds = dict.fromkeys(seconds, 0.0)
        t0 = time.perf_counter()
        s.step(iters)
        per_iter = (time.perf_counter() - t0) / iters
        exchange = s.seconds["exchange"] / iters if seconds is not None else 0.0
        self.rounds.append((per_iter, exchange))
        if detail:  # where an iteration's seconds went, per rank (ParallelSolver.seconds)
            print(f"[rank {getattr(s, 'rank', 0)}] {self.replicas} replica(s) {self.mode}: {per_iter:.3f} s/iter"
                  + "".join(f", {k} {v / iters:.3f}" for k, v in (s.seconds if seconds is not None else {}).items()),
                  flush=True)

    def best(self):
        return min(self.rounds)

    def release(self):
        """Free the solver's memory, keeping what the table prints."""
        self.params, self.lane_count, self.arena_mib = self.solver.net.num_params(), self.lanes(), self.pool_mib()
        self.solver = None
        gc.collect()

    def pool_mib(self):
        """MiB of the memory-pool arenas the train nets hold (replicas of one lane share one)."""
        if self.solver is None:
            return self.arena_mib
        arenas = {}
        for net in getattr(self.solver, "replicas", [self.solver.net]):
            pool = net.memory_pool
            if pool is not None and pool.arena is not None:
                arenas[id(pool.arena_source)] = pool.arena_source.buffer.nbytes  # replicas of a lane share one
        return sum(arenas.values()) / 2 ** 20

    def lanes(self):
        if self.solver is None:
            return self.lane_count
        return len(getattr(self.solver, "lanes", [[0]]))


def configurations(args):
    """[(replica count, mode)] in the order they are timed."""
    out = []
    for n in (int(x) for x in args.replicas.split(",")):
        if n == 1:
            out.append((1, "single"))
        elif args.devices == "gpu":
            out.append((n, "lanes"))
        else:
            # apart differs from lanes only where a lane holds several replicas
            out += [(n, m) for m in args.modes.split(",") if m != "apart" or n > cpu_cores()]
    return out


def devices_for(args, n):
    return [backend.gpu(i) for i in range(n)] if args.devices == "gpu" else [backend.CPU] * n


def timed_rounds(configs, args):
    for _ in range(args.rounds):
        for c in configs:
            c.time(args.iters, args.detail)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", choices=sorted(NETS), default="small")
    ap.add_argument("--replicas", default="1,2,4")
    ap.add_argument("--batch", type=int, default=None, help="the whole batch (default: 64 small, 8 vgg16)")
    ap.add_argument("--iters", type=int, default=None, help="timed iterations per round (default 4 small, 1 vgg16)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds over the configurations (default 3 small, 1 vgg16)")
    ap.add_argument("--size", type=int, default=None, help="crop side (images are 4 pixels larger; default 64 "
                                                           "small, 224 vgg16)")
    ap.add_argument("--modes", default=None, help="CPU modes for N > 1 replicas, of lanes, apart, sequential, threads "
                                                  "(default: all four small, lanes,apart vgg16)")
    ap.add_argument("--devices", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--interleave", action="store_true",
                    help="vgg16: keep every configuration's solver and time them in turn in each round, as for the "
                         "small net (a few GB each), so that a drift in the machine's speed falls on all of them")
    ap.add_argument("--detail", action="store_true",
                    help="print every timed round: seconds per iteration in gradients, exchange and update, per rank")
    args = ap.parse_args()
    small = args.net == "small"
    for name, a, b in (("batch", 64, 8), ("iters", 4, 1), ("rounds", 3, 1), ("size", 64, 224),
                       ("modes", "lanes,apart,sequential,threads", "lanes,apart")):
        if getattr(args, name) is None:
            setattr(args, name, a if small else b)
    comm = mpi_comm()
    if comm is not None:
        return main_mpi(args, comm)
    with tempfile.TemporaryDirectory() as tmp:
        param = solver_param(make_db(tmp, 2 * args.batch, args.size), args.batch, args.size, args.net)
        print(f"machine: {machine()}")
        print(f"net {args.net}, batch {args.batch} (the whole batch, split over the replicas), {args.size}x"
              f"{args.size} crops, {args.rounds} round(s) of {args.iters} timed iteration(s) per configuration, "
              f"the fastest round shown")
        if small or args.interleave:  # every solver kept: the rounds go over the configurations in turn
            configs = [Config(param, devices_for(args, n), mode) for n, mode in configurations(args)]
            timed_rounds(configs, args)
        else:  # VGG-16 takes GBs per configuration: one at a time, freed before the next is built
            configs = []
            for n, mode in configurations(args):
                c = Config(param, devices_for(args, n), mode)
                timed_rounds([c], args)
                c.release()
                configs.append(c)
        print(f"{'replicas':>8} {'mode':>10} {'lanes':>5} {'s/iter':>8} {'speed':>6} {'exchange s/iter':>15} "
              f"{'exchange %':>10} {'pool MiB':>9}")
        base = configs[0].best()[0]
        for c in configs:
            per_iter, exchange = c.best()
            print(f"{c.replicas:>8} {c.mode:>10} {c.lanes():>5} {per_iter:8.3f} {base / per_iter:5.2f}x "
                  f"{exchange:15.4f} {100 * exchange / per_iter:9.1f}% {c.pool_mib():9.0f}")
        params = configs[0].params if configs[0].solver is None else configs[0].solver.net.num_params()
        print(f"({params:,} parameters exchanged per iteration; speed: against the first row; pool MiB: the "
              f"train nets' memory-pool arenas, one per lane of CPU replicas; {machine().rsplit(', ', 1)[1]} at the end)")


def sleep_until_all_arrive(comm):
    """A barrier that sleeps instead of spinning, so that a waiting rank leaves the cores to the others."""
    request = comm.Ibarrier()
    while not request.Test():
        time.sleep(0.02)


def main_mpi(args, comm):
    rank, ranks = comm.Get_rank(), comm.Get_size()
    tmp = tempfile.mkdtemp() if rank == 0 else None
    db = make_db(tmp, 2 * args.batch, args.size) if rank == 0 else None
    db = comm.bcast(db, root=0)  # one machine here: every rank reads rank 0's LMDB
    param = solver_param(db, args.batch, args.size, args.net)
    base = None
    if rank == 0:
        print(f"machine: {machine()}")
        single = Config(param, [backend.CPU], "single")
        timed_rounds([single], args)
        base = single.best()[0]
        single.release()
        params = single.params
        print(f"net {args.net}, batch {args.batch} split over all replicas, {args.size}x{args.size} crops")
        print(f"{'ranks':>5} {'replicas':>8} {'s/iter':>8} {'speed':>6} {'exchange s/iter':>15} {'exchange %':>10}")
        print(f"{1:>5} {1:>8} {base:8.3f} {1.0:5.2f}x {0.0:15.4f} {0.0:9.1f}%")
    sleep_until_all_arrive(comm)
    for n in (int(x) for x in args.replicas.split(",")):
        c = Config(param, devices_for(args, n), "lanes", comm)
        timed_rounds([c], args)
        per_iter, exchange = c.best()
        if rank == 0:
            print(f"{ranks:>5} {ranks * n:>8} {per_iter:8.3f} {base / per_iter:5.2f}x {exchange:15.4f} "
                  f"{100 * exchange / per_iter:9.1f}%")
        c.release()
    sleep_until_all_arrive(comm)
    if rank == 0:
        print(f"({params:,} parameters exchanged per iteration; {machine().rsplit(', ', 1)[1]} at the end)")
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
