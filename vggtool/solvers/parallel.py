"""Synchronous data-parallel training (the paper's §3.3): every batch is split into equal shares, one per
replica of the train net; gradients are averaged; one update; all replicas hold identical weights.

Replicas: the local devices of this process (`--gpu 0,1,2,3`, `--devices cpu:4`) times the MPI ranks
(`mpiexec -n K vggtool train ...`). Replica g (= rank * local devices + r) reads the samples
g*b .. g*b+b-1 of every batch, b = batch_size / replicas (net.batch_divisor, net.sample_offset); all
per-sample randomness is keyed by the global sample index, so the split changes nothing.

One iteration:
  each local replica runs iter_size forward/backward passes in its lane (vggtool.solvers.lanes: one thread
  per GPU; on the CPU one thread per core, each running its replicas on its share of the cores: as one
  pass over their consecutive shares where that is exact (_init_train_net), else one after another,
  accumulating them into one set of diffs) -> local sum of the lanes into replica 0 (NCCL on
  GPUs when available, else device-to-device copies; in memory on the CPU) -> MPI Allreduce of one flat buffer (the diffs and the
  loss) -> divide by the replica count -> EVERY rank applies the same solver update to its replica 0, as
  Caffe's multi-GPU (NCCL) solver does: the ranks start from the same weights and solver state and see
  the same summed gradients, so they stay identical without sending weights -> GPU replica 0 copies the
  weights to the other local GPUs. CPU replicas of one process read replica 0's weight arrays (shared
  storage), so there nothing is copied at all (share_cpu_weights=False gives them copies instead, through
  the same path as a mix of GPUs and CPUs).

Weights go from rank 0 to every rank (one MPI Bcast) only when step() starts (after fine-tuning weights
were loaded or a state restored). A restored state's history, iteration, multistep step and plateau
counters are broadcast once from rank 0; so are the plateau counters after each test round (only rank 0
tests) and the signal action after each iteration, so every rank takes the same learning-rate and
stopping decisions. Before each snapshot the ranks compare checksums of their weights and history; if
they ever differ (different device kinds on different ranks, say) rank 0's are broadcast again, with a
warning.

The averaging rule: the update uses (1/N) * sum of the replicas' gradients, as Caffe's multi-GPU
P2PSync does. A loss that is a mean over its share (SoftmaxWithLoss with normalization VALID and no
ignore_label, BATCH_SIZE or FULL; EuclideanLoss) then gives exactly the gradient of the whole batch on
one device, because the shares are equal. With normalization NONE (a sum) the step is 1/N of the
single-device one, and with ignore_label + VALID it is exact only when every share holds as many valid
labels -- Caffe behaves the same way.

Only rank 0 tests, logs, snapshots and reads a resumed .solverstate. A failing replica stops the run with
a VggtoolError naming it; a failing rank calls MPI Abort with its message (see abort_on_failure), so no
rank waits for ever.
"""
import contextlib
import os
import sys
import time
import traceback
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..io import prototxt
from ..backend import CPU, get_array_module, host_float, to_numpy
from ..errors import VggtoolError
from ..layers.data import PrefetchingDataLayer
from ..proto import caffe_pb2
from .exchange import MpiExchange, local_exchange, scale_diffs
from ..net.pool import SharedArena
from .glog import GLog
from .lanes import cores_per_lane, cpu_cores, plan_lanes, ranks_on_this_host, share_host_between_ranks
from .solver import NONE, Solver

# Environment variables the common launchers set to the number of processes of the job.
MPI_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE")


def launched_by_mpi():
    """True when an MPI launcher started this process as one of several (Open MPI, MPICH/Hydra, PMIx,
    MVAPICH)."""
    for var in MPI_SIZE_VARS:
        try:
            if int(os.environ.get(var, "1")) > 1:
                return True
        except ValueError:
            pass
    return False


def mpi_comm(force=False):
    """COMM_WORLD when this process is one of several MPI ranks (or `force`, i.e. `--mpi`), else None."""
    if not (force or launched_by_mpi()):
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        raise VggtoolError("this process was started by an MPI launcher (or --mpi was given) but mpi4py is "
                           "not installed: pip install 'vggtool[mpi]'") from None
    comm = MPI.COMM_WORLD
    return comm if comm.Get_size() > 1 else None


@contextlib.contextmanager
def abort_on_failure(comm, command="train"):
    """On an exception in one rank, print it (naming the rank) and MPI-Abort the whole job: the other
    ranks are waiting in a collective and would otherwise hang."""
    try:
        yield
    except BaseException as e:
        if comm is None:
            raise
        rank, size = comm.Get_rank(), comm.Get_size()
        if not isinstance(e, VggtoolError):
            traceback.print_exc()
        text = str(e) if isinstance(e, VggtoolError) else f"{type(e).__name__}: {e}"
        sys.stderr.write(f"vggtool {command}: error: rank {rank} of {size} failed: {text}; aborting all "
                         f"{size} ranks\n")
        sys.stderr.flush()
        time.sleep(1.0)  # let the launcher forward the message before Abort kills the job's processes
        comm.Abort(1)


# -- the solver ------------------------------------------------------------------------------------------
class ReplicaFailed(VggtoolError):
    """One replica raised while computing its gradients."""


class ParallelSolver(Solver):
    """A Solver over several replicas of the train net (see the module docstring). `devices`: this
    process's devices (a list of vggtool.backend.Device; CPU repeated for CPU replicas); `comm`: an mpi4py
    communicator of several ranks or None; `threads`: True runs every local replica in its own thread, False
    all in one; `lanes`: this many threads (vggtool.solvers.lanes; default: one per GPU, one per core for
    CPU replicas); `share_cpu_weights`: CPU replicas read replica 0's weights (default) or hold copies;
    `merge_lane_replicas`: the CPU replicas of one lane run as one pass over their shares where that gives
    the same losses and gradients (default; see _init_train_net)."""

    def __init__(self, param, *, devices, comm=None, threads=None, lanes=None, log=None, seed=None,
                 share_cpu_weights=True, merge_lane_replicas=True, **kwargs):
        self.devices = list(devices) or [CPU]
        self.merge_lane_replicas = merge_lane_replicas
        self.comm = comm if comm is not None and comm.Get_size() > 1 else None
        self.rank = self.comm.Get_rank() if self.comm else 0
        self.ranks = self.comm.Get_size() if self.comm else 1
        if self.comm:
            counts = self.comm.allgather(len(self.devices))
            if len(set(counts)) != 1:
                raise VggtoolError(f"every MPI rank must drive the same number of devices (got "
                                   f"{', '.join(f'rank {i}: {c}' for i, c in enumerate(counts))})")
        self.replica_count = self.ranks * len(self.devices)
        self.train_batch_divisor = self.replica_count
        # ranks on one machine split its cores, as the lanes of one rank do
        self.host_ranks = ranks_on_this_host(self.comm)
        self.blas_threads = share_host_between_ranks(self.host_ranks) if self.host_ranks > 1 else None
        self.lanes = plan_lanes(self.devices, threads=threads, lanes=lanes,
                                cores=max(1, cpu_cores() // self.host_ranks))
        self.threads = len(self.lanes) > 1
        # lanes running CPU replicas at the same time: each gets its share of the BLAS threads
        self.cpu_lanes = sum(1 for lane in self.lanes if not self.devices[lane[0]].is_gpu) if self.threads else 0
        if self.rank != 0 and log is None:
            log = GLog(stream=False)  # only rank 0 logs
        if not isinstance(param, caffe_pb2.SolverParameter):
            kwargs.setdefault("source", str(param))
            param = prototxt.read_solver_param(param)
        if self.comm and seed is None:  # every rank must draw the same weights and samples
            seed = param.random_seed if param.random_seed >= 0 else \
                int(np.random.SeedSequence().entropy % (2**31))
            seed = self.comm.bcast(seed, root=0)
        self._train_outputs = None
        self.seconds = {"gradients": 0.0, "exchange": 0.0, "update": 0.0}  # time spent, for benchmarks
        super().__init__(param, device=self.devices[0], log=log, seed=seed, **kwargs)
        self.exchange = local_exchange(self.replicas, share_cpu_weights, log=self.log, lanes=self.lanes)
        self.mpi = MpiExchange(self.comm, self.net, self.replicas[1:]) if self.comm else None
        self.pool = None
        if self.threads:
            self.pool = ThreadPoolExecutor(max_workers=len(self.lanes), thread_name_prefix="replica")
            weakref.finalize(self, self.pool.shutdown, wait=False)

    def _init_train_net(self, dtype):
        """Build the train nets: one per local replica, each reading its own share of every batch; or, where
        every lane holds k > 1 CPU replicas, one per lane reading its k consecutive shares in one pass.

        A lane's replicas run one after another and sum their gradients, so one pass over their k shares
        computes the same sum when no layer mixes samples and the losses and accuracies normalise by one
        share's count (net.batch_shares, Net.merge_obstacle). It pays the per-pass costs once instead of k
        times: the fully connected layers read and write all their weights once per pass."""
        local = len(self.devices)
        first = self.rank * local
        shares = self._lane_size_to_merge()
        nets = []
        if shares > 1:
            self.train_batch_divisor, self.train_batch_shares = self.replica_count // shares, shares
            try:
                nets = [self._build_replica(CPU, dtype)]
                obstacle = nets[0].merge_obstacle()
            except VggtoolError:  # built apart below, whose error counts the replicas as the user does
                nets, obstacle = [], "the net cannot be built for one pass per lane"
            if obstacle is None and self._share(nets[0]) % shares:  # built apart, the nets say why
                obstacle = f"the batch does not divide over {self.replica_count} replicas"
            if obstacle is None:
                nets += [self._build_replica(CPU, dtype) for _ in self.lanes[1:]]
                self.net_replicas = [[first + r for r in lane] for lane in self.lanes]
                self.lanes = [[i] for i in range(len(nets))]
            else:
                self.log.info("parallel.py:1", f"The CPU replicas of a lane run one by one: one pass over their "
                                               f"shares would change the results ({obstacle})")
                self.train_batch_divisor, self.train_batch_shares, nets = self.replica_count, 1, []
        if not nets:
            nets = [self._build_replica(dev, dtype) for dev in self.devices]
            self.net_replicas = [[first + r] for r in range(local)]
        self.device = self.devices[0]
        self.replicas = nets
        self._share_lane_arenas(nets)
        share = self._share(nets[0]) // self.train_batch_shares
        self.offsets = [group[0] * share for group in self.net_replicas]
        where = f"{self.ranks} rank(s) x {local} device(s) [{', '.join(d.name for d in self.devices)}]"
        self.log.info("parallel.py:1", f"Data parallel: {self.replica_count} replicas ({where}), {share} "
                                       f"samples of each batch per replica, {len(self.lanes)} lane(s) running at once")
        if self.train_batch_shares > 1:
            self.devices = [CPU] * len(nets)  # the devices of the nets, one per lane now
            self.log.info("parallel.py:1", f"Each lane runs its {self.train_batch_shares} replicas as one pass "
                                           f"over their {self.train_batch_shares * share} samples (the same "
                                           f"losses and gradients, the per-pass costs paid once)")
        shared = max((sum(1 for r in lane if not self.devices[r].is_gpu) for lane in self.lanes), default=0)
        if shared > 1:
            self.log.warning("parallel.py:1", f"{shared} CPU replicas share a lane (one core): they run one after "
                                              f"another, and each pays the per-pass costs again (the fully connected "
                                              f"layers read and write all their weights per replica); one replica per "
                                              f"core (--devices cpu:{len(self.lanes)}) computes the same averaged "
                                              f"gradient for per-sample-normalised losses, faster")
        if self.host_ranks > 1 and self.blas_threads is not None:
            self.log.info("parallel.py:1", f"{self.host_ranks} ranks on this host: {self.blas_threads} BLAS "
                                           f"thread(s) per rank")
        return nets[0]

    def _build_replica(self, device, dtype):
        self.device = device
        return super()._init_train_net(dtype)

    def _lane_size_to_merge(self):
        """k when every lane holds k > 1 CPU replicas and merging is allowed, else 1."""
        sizes = {len(lane) for lane in self.lanes}
        if not self.merge_lane_replicas or len(sizes) != 1 or any(d.is_gpu for d in self.devices):
            return 1
        return sizes.pop()

    def _share_lane_arenas(self, nets):
        """The pooled CPU replicas of one lane run one after another: they plan into one arena (the
        lane's), not one each (vggtool.net.pool.SharedArena)."""
        for lane in self.lanes:
            pooled = [nets[r] for r in lane if nets[r].memory_pool is not None and not self.devices[r].is_gpu]
            if len(pooled) > 1:
                arena = SharedArena(pooled[0].device)
                for net in pooled:
                    net.share_memory(arena)

    def _share(self, net):
        sizes = {layer.name: layer.local_batch for layer in net.layers if isinstance(layer, PrefetchingDataLayer)}
        if self.replica_count == 1:
            return next(iter(sizes.values()), 0)
        if not sizes:
            raise VggtoolError(f"train net '{net.name}': multi-device training splits the batch of a Data or "
                               f"ImageData layer, and this net has none (its {self.replica_count} replicas "
                               f"would all see the same samples)")
        if len(set(sizes.values())) > 1:
            raise VggtoolError(f"train net '{net.name}': the data layers have different batch sizes "
                               f"({', '.join(f'{k}: {v * self.replica_count}' for k, v in sizes.items())}); "
                               f"multi-device training needs one batch size")
        return next(iter(sizes.values()))

    # -- running the replicas ----------------------------------------------------------------------------
    def _on_replicas(self, work):
        """work(r) for every local replica, lane by lane (the lanes in threads when there are several); the
        first failure is raised, naming the replica, after every replica has finished (nothing is left
        running)."""
        n = len(self.replicas)
        outcomes = [None] * n

        def run_lane(lane):
            for r in lane:
                try:
                    outcomes[r] = (True, work(r))
                except Exception as e:
                    outcomes[r] = (False, e)

        with cores_per_lane(self.cpu_lanes):
            if self.pool is None:
                for lane in self.lanes:
                    run_lane(lane)
            else:
                for f in [self.pool.submit(run_lane, lane) for lane in self.lanes]:
                    f.result()
        failed = [(r, e) for r, (ok, e) in enumerate(outcomes) if not ok]
        if failed:
            r, e = failed[0]
            group = self.net_replicas[r]
            which = f"replica {group[0]}" if len(group) == 1 else f"replicas {group[0]}-{group[-1]}"
            how = "" if len(group) == 1 else ", in one pass"
            rank = f", rank {self.rank}" if self.comm else ""
            more = f" ({len(failed) - 1} other replica(s) failed too)" if len(failed) > 1 else ""
            text = str(e) if isinstance(e, VggtoolError) else f"{type(e).__name__}: {e}"
            raise ReplicaFailed(f"{which} of {self.replica_count} ({self.devices[r].name}{rank}{how}) failed at "
                                f"iteration {self.iter}: {text}{more}") from e
        return [v for _, v in outcomes]

    def _passes(self, r, count):
        net = self.replicas[r]
        if self.exchange.diff_owner[r] == r:  # the others of its lane accumulate into its diffs
            net.clear_param_diffs()
        loss = 0.0
        for k in range(count):
            net.iteration = self.iter * self.param.iter_size + k
            net.sample_offset = self.offsets[r]
            loss = loss + net.forward_backward()
        net.device.synchronize()  # the diffs are read from other devices next
        return loss  # a device scalar: read on the host only for a display

    def _sum_on_device0(self, values):
        """The replicas' device scalars summed on replica 0's device (GPU to GPU copies, no host read)."""
        dev0 = self.devices[0]
        if not dev0.is_gpu:
            return sum(values)
        with dev0:  # ndarray.copy() copies onto the current device
            return sum(v.copy() if get_array_module(v) is not np else v for v in values)

    def compute_gradients(self):
        """All replicas' iter_size passes -> averaged diffs in replica 0 (every rank); the mean loss."""
        t0 = time.perf_counter()
        losses = self._on_replicas(lambda r: self._passes(r, self.param.iter_size))
        loss = self._sum_on_device0(losses)
        t1 = time.perf_counter()
        if len(self.replicas) > 1:
            self.exchange.reduce()
        if self.mpi:
            loss = self.mpi.allreduce_diffs(loss)
        n = self.replica_count
        if n > 1:
            with self.device:
                scale_diffs([lp.blob for lp in self.net.learnable_params], 1.0 / n)
            self.device.synchronize()
        self.seconds["gradients"] += t1 - t0
        self.seconds["exchange"] += time.perf_counter() - t1
        p = self.param
        self._train_outputs = self._average_outputs() if p.display and self.iter % p.display == 0 else None
        return loss / (n * p.iter_size)

    def _average_outputs(self):
        """The train net's outputs averaged over all replicas (what the display shows)."""
        names = list(self.net.outputs)
        parts = [np.concatenate([to_numpy(net.blobs[n].data).astype(np.float64).ravel() for n in names] or
                                [np.zeros(0)]) for net in self.replicas]
        total = np.sum(parts, axis=0)
        if self.mpi:
            total = self.mpi.allreduce_values(total)
        total /= self.replica_count
        out, o = {}, 0
        for n in names:
            size = self.net.blobs[n].count
            out[n] = total[o:o + size]
            o += size
        return out

    def _log_outputs(self, net, kind, values):
        if kind == "Train" and not values and net is self.net and self._train_outputs is not None:
            values = self._train_outputs
        super()._log_outputs(net, kind, values)

    def broadcast_weights(self):
        """Rank 0's replica 0 weights to every replica of every rank."""
        t0 = time.perf_counter()
        if self.mpi:
            self.mpi.broadcast_weights()
        if len(self.replicas) > 1:
            self.exchange.broadcast()
        self.seconds["exchange"] += time.perf_counter() - t0

    def apply_update(self):
        """The same update on every rank (same averaged diffs, same history): no weights are sent."""
        t0 = time.perf_counter()
        super().apply_update()
        self.device.synchronize()
        self.seconds["update"] += time.perf_counter() - t0
        if len(self.replicas) > 1:  # GPU replicas get replica 0's weights (CPU ones share them)
            t1 = time.perf_counter()
            self.exchange.broadcast()
            self.seconds["exchange"] += time.perf_counter() - t1
        if self.comm:  # rank 0 decides what a signal does (the other ranks ignore signals)
            self.requested_action = self.comm.bcast(self.requested_action, root=0)

    def step(self, iters):
        self.broadcast_weights()  # weights set since construction (fine-tuning, resume) reach every replica
        super().step(iters)

    def _plateau_state(self):
        state = caffe_pb2.SolverState()
        self.plateau.save(state)
        return state.SerializeToString()

    def _set_plateau_state(self, data):
        state = caffe_pb2.SolverState()
        state.ParseFromString(data)
        self.plateau.restore(state)

    def final_loss(self):
        losses = self._on_replicas(lambda r: self._forward_only(r))
        loss = sum(losses)
        if self.mpi:
            loss = float(self.mpi.allreduce_values([loss])[0])
        return loss / self.replica_count

    def _forward_only(self, r):
        net = self.replicas[r]
        net.iteration = self.iter * self.param.iter_size
        net.sample_offset = self.offsets[r]
        return host_float(net.forward_from_to())

    # -- rank 0 only: tests, snapshots, reading a resumed state ---------------------------------------------
    def test_all(self):
        if self.rank == 0:
            super().test_all()
        if self.comm:  # the plateau counters follow rank 0's test results: the same rate on every rank
            self.requested_early_exit, plateau = self.comm.bcast(
                (self.requested_early_exit, self._plateau_state()), root=0)
            self._set_plateau_state(plateau)
            self.requested_action = NONE if self.requested_early_exit else self.requested_action

    def snapshot(self):
        if self.comm:
            self._check_ranks_agree()
        if self.rank == 0:
            return super().snapshot()
        return None

    def _check_ranks_agree(self):
        """Every rank must hold rank 0's weights and history; if not (it should not happen), log which ranks
        diverged and give them rank 0's."""
        arrays = [lp.blob.data for lp in self.net.learnable_params] + list(self.history)
        differ = self.mpi.ranks_that_differ(arrays)
        if differ:
            self.log.warning("parallel.py:1", f"iteration {self.iter}: the weights or solver history of rank(s) "
                                              f"{', '.join(map(str, differ))} differ from rank 0's; re-sending "
                                              f"rank 0's to every rank")
            self.broadcast_weights()
            self.mpi.broadcast_arrays(self.history)

    def restore(self, path):
        """Rank 0 reads the state; its iteration, counters and history go to every rank (the weights at the
        start of step())."""
        if self.rank == 0:
            super().restore(path)
        if self.comm:
            self.iter, self.current_step, plateau = self.comm.bcast(
                (self.iter, self.current_step, self._plateau_state()), root=0)
            self._set_plateau_state(plateau)
            self.mpi.broadcast_arrays(self.history)


def get_solver(param, *, devices=(CPU,), comm=None, **kwargs):
    """A Solver for one device and no MPI, else a ParallelSolver."""
    devices = list(devices) or [CPU]
    if len(devices) == 1 and comm is None:
        return Solver(param, device=devices[0], **kwargs)
    return ParallelSolver(param, devices=devices, comm=comm, **kwargs)
