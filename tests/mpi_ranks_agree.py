"""Run under `mpiexec -n 2` by tests/solvers/test_parallel.py: train a few iterations with ParallelSolver, counting
the communicator's calls, and write per-rank checksums of the weights and solver history to OUT/rank<r>.json.

usage: mpi_ranks_agree.py SOLVER OUT ITERS MORE
  ITERS iterations, snapshot, MORE more iterations (checksums "continued"); then a new solver restored from
  the snapshot runs MORE iterations (checksums "resumed"); then rank 1's weights are perturbed and a
  snapshot must notice and re-send rank 0's (checksums "resynced").
"""
import hashlib
import json
import os
import sys

from mpi4py import MPI

from vggtool.backend import CPU, to_numpy
from vggtool.solvers.parallel import ParallelSolver
from vggtool.solvers.glog import GLog


class CountingComm:
    """COMM_WORLD, counting the calls by name."""

    def __init__(self, comm):
        self.comm, self.calls = comm, {}

    def __getattr__(self, name):
        target = getattr(self.comm, name)
        if not callable(target):
            return target

        def counted(*args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            return target(*args, **kwargs)
        return counted


def digest(solver):
    h = hashlib.sha256()
    for lp in solver.net.learnable_params:
        h.update(to_numpy(lp.blob.data).tobytes())
    for a in solver.history:
        h.update(to_numpy(a).tobytes())
    return h.hexdigest()


class ListLog(GLog):
    def __init__(self):
        super().__init__(stream=False)
        self.warnings = []

    def warning(self, where, message):
        self.warnings.append(message)


def main():
    solver_path, out, iters, more = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    rank = MPI.COMM_WORLD.Get_rank()
    comm = CountingComm(MPI.COMM_WORLD)
    s = ParallelSolver(solver_path, devices=[CPU], comm=comm, log=GLog(stream=False))
    comm.calls.clear()
    s.step(iters)
    report = {"calls": dict(comm.calls), "trained": digest(s), "drops": s.plateau.drops, "iter": s.iter}
    written = s.snapshot()  # collective; rank 0 writes and returns the paths
    state = MPI.COMM_WORLD.bcast(written[1] if rank == 0 else None, root=0)
    s.step(more)
    report["continued"] = digest(s)
    report["continued_drops"] = s.plateau.drops

    log = ListLog()
    r = ParallelSolver(solver_path, devices=[CPU], comm=MPI.COMM_WORLD, log=log)
    r.restore(state)
    r.step(more)
    report["resumed"] = digest(r)
    report["resumed_drops"] = r.plateau.drops
    if rank == 1:  # one bit of one weight
        w = r.net.learnable_params[0].blob.data.reshape(-1)
        w.view("uint32")[0] ^= 1
    report["perturbed"] = digest(r)
    r.snapshot()
    report["resynced"] = digest(r)
    report["warnings"] = log.warnings
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main()
