"""How the local replicas of a ParallelSolver share one machine: which of them run at the same time, and
with how many cores each.

A lane is a list of replicas run one after another by one thread; lanes run at the same time.
- GPU replicas: one lane each (the devices overlap; the host threads only launch work).
- CPU replicas: as many lanes as cores (never more than replicas), consecutive replicas per lane. The
  replicas of one lane accumulate into one set of parameter diffs, as Caffe's iter_size passes do
  (vggtool.solvers.exchange.share_diffs): nothing to sum or copy between them, one set of diffs per lane.
  Where every lane holds k > 1 replicas and the net allows it, the solver runs each lane's replicas as one
  pass over their k shares instead (vggtool.solvers.parallel, Net.merge_obstacle).
- A list mixing GPUs and CPUs: one lane (as before lanes existed).
While several CPU lanes run, OpenBLAS and vggtool's split passes (config num_threads) get 1/lanes of their
threads each, so the threads never outnumber the cores. OpenBLAS's count is process-wide (its pthreads
builds have no per-thread count), so it is lowered for the duration of the lanes and put back after.
Unpartitioned, 2 replicas in threads with 2 BLAS threads each on 2 cores ran at 0.6x the speed of one
replica (bench/bench_parallel.py): BLAS threads spin waiting for each other and for the GIL.
"""
import contextlib
import os

from .. import config
from ..errors import VggtoolError
from ..layers import gemm


def cpu_cores():
    """The cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def plan_lanes(devices, threads=None, lanes=None, cores=None):
    """[[replica index, ...], ...]: the lanes for `devices` (see the module docstring). `threads`: True one
    lane per replica, False one lane; `lanes`: this many lanes (at most one per replica); neither: the
    default for the devices, with `cores` (default cpu_cores()) bounding the CPU lanes."""
    n = len(devices)
    if threads is not None and lanes is not None:
        raise VggtoolError("give threads or lanes, not both")
    if lanes is not None:
        if int(lanes) < 1:
            raise VggtoolError(f"lanes must be at least 1, got {lanes}")
        count = min(int(lanes), n)
    elif threads is not None:
        count = n if threads else 1
    elif all(d.is_gpu for d in devices):
        count = n
    elif any(d.is_gpu for d in devices):
        count = 1
    else:
        count = min(n, cpu_cores() if cores is None else cores)
    bounds = [n * i // count for i in range(count + 1)]
    return [list(range(bounds[i], bounds[i + 1])) for i in range(count)]


@contextlib.contextmanager
def cores_per_lane(cpu_lanes):
    """Within the block, OpenBLAS and the split passes run on 1/cpu_lanes of their threads (at least one);
    their counts are put back after, also when the block raises. Nothing changes for fewer than 2 lanes."""
    if cpu_lanes < 2:
        yield
        return
    blas = gemm.blas_threads()
    split = config.defaults().num_threads
    if blas is not None:
        gemm.set_blas_threads(max(1, blas // cpu_lanes))
    try:
        with config.override(num_threads=max(1, split // cpu_lanes)):
            yield
    finally:
        if blas is not None:
            gemm.set_blas_threads(blas)


def ranks_on_this_host(comm):
    """How many ranks of the mpi4py communicator `comm` run on this machine (MPI-3's shared-memory split);
    1 without one."""
    if comm is None:
        return 1
    from mpi4py import MPI

    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return local.Get_size()
    finally:
        local.Free()


def share_host_between_ranks(local_ranks, cores=None):
    """Give this process (one of `local_ranks` MPI ranks on this machine) its share of the cores, for the
    rest of its life: at most cores // local_ranks OpenBLAS and split-pass threads (counts already lower,
    set by the user, are kept). Returns the BLAS thread count now, or None where it cannot be read."""
    cores = cpu_cores() if cores is None else cores
    share = max(1, cores // max(1, local_ranks))
    blas = gemm.blas_threads()
    if blas is not None and blas > share:
        gemm.set_blas_threads(share)
    settings = config.defaults()
    if settings.num_threads > share:
        config.set_defaults(settings.replace(num_threads=share))
    return gemm.blas_threads()
