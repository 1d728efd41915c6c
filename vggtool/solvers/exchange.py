"""Moving gradients and weights between the replicas of a ParallelSolver (vggtool.solvers.parallel):
between the local devices of one process (in memory on the CPU, device-to-device copies or NCCL between
GPUs) and between MPI ranks (one Allreduce of a flat host buffer)."""
import numpy as np

from ..backend import get_array_module, host_float, to_numpy
from ..layers.threads import split_run


def add_into(acc, src):
    """acc += src; on the CPU on every core (a pass bound by memory, which one NumPy thread does not fill)."""
    if get_array_module(acc) is not np:
        acc += src
        return
    a, b = acc.reshape(-1), src.reshape(-1)
    split_run(lambda lo, hi: np.add(a[lo:hi], b[lo:hi], out=a[lo:hi]), a.size, 2 * a.size)


def scale_diffs(blobs, factor):
    """Every blob's diff *= factor (the same values as the plain product), on every core on the CPU."""
    for blob in blobs:
        d = blob.diff
        if get_array_module(d) is not np:
            d *= factor
            continue
        flat = d.reshape(-1)
        split_run(lambda lo, hi, flat=flat: np.multiply(flat[lo:hi], factor, out=flat[lo:hi]), flat.size,
                  flat.size)


def share_weights(nets):
    """Replicas on the CPU read replica 0's parameter storage (every layer's blobs, shared ones included):
    the update of replica 0 is then every replica's, with no copy."""
    for net in nets[1:]:
        for layer0, layer in zip(nets[0].layers, net.layers):
            for b0, b in zip(layer0.blobs, layer.blobs):
                b.share_data(b0)


def share_diffs(nets):
    """nets[1:] accumulate their parameter gradients into nets[0]'s diff arrays (CPU replicas run one after
    another in one lane: Caffe's iter_size accumulation, with no copy and no sum afterwards)."""
    for net in nets[1:]:
        for layer0, layer in zip(nets[0].layers, net.layers):
            for b0, b in zip(layer0.blobs, layer.blobs):
                b.share_diff(b0)


class CopyExchange:
    """Sum diffs into replica 0 and copy weights out of it, one parameter at a time: in memory on the CPU,
    device-to-device copies between GPUs. CPU replicas share replica 0's weights (nothing to copy) unless
    share_cpu_weights is False; then, as with a mix of GPUs and CPUs, each owns its weights and receives
    replica 0's by copy after every update. `lanes` (vggtool.solvers.lanes.plan_lanes): the CPU replicas
    of one lane share their first replica's diffs, and only the lanes' first replicas are summed."""

    def __init__(self, nets, share_cpu_weights=True, lanes=None):
        self.nets = nets
        self.params = [[lp.blob for lp in net.learnable_params] for net in nets]
        self.devices = [net.device for net in nets]
        cpu_only = not any(d.is_gpu for d in self.devices)
        shared = share_cpu_weights and cpu_only
        if shared:
            share_weights(nets)
        self.copied = [] if shared else list(range(1, len(nets)))
        # diff_owner[r]: the replica whose diff arrays replica r accumulates into (itself without lanes)
        self.diff_owner = list(range(len(nets)))
        if cpu_only and lanes is not None:
            for lane in lanes:
                share_diffs([nets[r] for r in lane])
                for r in lane:
                    self.diff_owner[r] = lane[0]
        self.summed = sorted(set(self.diff_owner) - {0})  # the replicas reduce() adds into replica 0
        self.staging = None  # made at the first reduce that needs it (NcclExchange never does)

    def _staging_buffer(self):
        """One buffer on GPU 0, the size of the largest parameter, receiving the other GPUs' diffs."""
        if self.staging is None:
            with self.devices[0]:
                self.staging = self.devices[0].xp.empty(max(b.count for b in self.params[0]),
                                                        dtype=self.nets[0].dtype)
        return self.staging

    def reduce(self):
        dev0 = self.devices[0]
        with dev0:
            for i, blob in enumerate(self.params[0]):
                acc = blob.diff
                for r in self.summed:
                    src = self.params[r][i].diff
                    if dev0.is_gpu:
                        tmp = self._staging_buffer()[:src.size].reshape(src.shape)
                        tmp.data.copy_from_device(src.data, src.nbytes)
                        src = tmp
                    add_into(acc, src)

    def broadcast(self):
        if not self.copied:
            return
        self.devices[0].synchronize()  # the update on replica 0 must be done before others copy it
        for r in self.copied:
            dev = self.devices[r]
            with dev:
                for src, dst in zip(self.params[0], self.params[r]):
                    if dev.is_gpu:
                        dst.data.data.copy_from_device(src.data.data, src.data.nbytes)
                    else:
                        np.copyto(dst.data, src.data)
            dev.synchronize()


class NcclExchange(CopyExchange):
    """The same on several GPUs of one process through NCCL (cupy.cuda.nccl): grouped reduce to replica 0
    and broadcast from it."""

    def __init__(self, nets, nccl):
        super().__init__(nets)
        self.nccl = nccl  # cupy.cuda.nccl (a parameter, so that a test can give a failing one)
        self.comms = nccl.NcclCommunicator.initAll([d.index for d in self.devices])
        self.dtype = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}[
            np.dtype(nets[0].dtype)]

    def _grouped(self, call):
        import cupy
        self.nccl.groupStart()
        try:
            for r, comm in enumerate(self.comms):
                with self.devices[r]:
                    stream = cupy.cuda.get_current_stream().ptr
                    for blob in self.params[r]:
                        call(comm, blob, stream)
        finally:
            self.nccl.groupEnd()
        for d in self.devices:
            d.synchronize()

    def reduce(self):
        nccl = self.nccl
        self._grouped(lambda comm, b, s: comm.reduce(b.diff.data.ptr, b.diff.data.ptr, b.count, self.dtype,
                                                     nccl.NCCL_SUM, 0, s))

    def broadcast(self):
        self.devices[0].synchronize()
        self._grouped(lambda comm, b, s: comm.bcast(b.data.data.ptr, b.count, self.dtype, 0, s))


def _cupy_nccl():
    try:
        from cupy.cuda import nccl
    except ImportError as e:
        return None, f"cupy.cuda.nccl cannot be imported ({e})"
    return (nccl, None) if nccl.available else (None, "this CuPy build has no NCCL")


def local_exchange(nets, share_cpu_weights=True, log=None, nccl=None, lanes=None):
    """NCCL between the GPUs of this process when it starts, else copies; a fallback is logged with its
    reason (one warning line), never silent. `nccl`: the module to use (default cupy.cuda.nccl); `lanes`:
    see CopyExchange."""
    if len(nets) > 1 and all(n.device.is_gpu for n in nets):
        why = None
        ids = [n.device.index for n in nets]
        if len(set(ids)) < len(ids):  # NCCL refuses one GPU twice in a communicator
            nccl, why = None, f"NCCL needs distinct GPUs (replicas on GPUs {', '.join(map(str, ids))})"
        elif nccl is None:
            nccl, why = _cupy_nccl()
        if nccl is not None:
            try:
                return NcclExchange(nets, nccl)
            except Exception as e:  # NCCL present but failing to start (driver, topology, ...)
                why = f"NCCL failed to start ({type(e).__name__}: {e})"
        if log is not None:
            log.warning("parallel.py:1", f"{why}; summing the {len(nets)} GPUs' gradients by device-to-device "
                                         f"copies instead")
    return CopyExchange(nets, share_cpu_weights, lanes)


class MpiExchange:
    """Replica 0's diffs (plus a few scalars) summed over the ranks in one Allreduce of a flat host buffer;
    weights broadcast from rank 0 in one Bcast (at the start only: every rank applies the update).

    On the CPU the buffer IS the diffs: replica 0's parameter gradients live in it (and so do those of the
    replicas of its lane, which share them), so the Allreduce sums them in place, with no copy in or out.
    GPU diffs are copied to the buffer and back."""

    def __init__(self, comm, net, local_nets=()):
        from mpi4py import MPI
        self.MPI, self.comm = MPI, comm
        self.blobs = [lp.blob for lp in net.learnable_params]
        self.size = sum(b.count for b in self.blobs)
        self.buf = np.zeros(self.size + 1, dtype=net.dtype)
        self.in_place = not net.device.is_gpu
        if self.in_place:
            self._place_diffs([net, *local_nets])

    def _place_diffs(self, nets):
        """Move every learnable parameter's diff into its slice of the buffer; any blob of `nets` that shared
        one of those diffs (a shared parameter, a replica of the same lane) follows it."""
        moved = {}  # id(old storage) -> (old storage, its slice of the buffer)
        o = 0
        for b in self.blobs:
            b.diff  # allocate
            old = b.diff_storage
            if id(old) not in moved:  # a blob listed twice keeps its first slice
                moved[id(old)] = (old, self.buf[o:o + b.count])
            o += b.count
        for net in nets:
            for layer in net.layers:
                for blob in layer.blobs:
                    entry = moved.get(id(blob.diff_storage)) if blob.has_diff else None
                    if entry is not None and entry[0] is blob.diff_storage:
                        blob.place_diff(entry[1])

    def _pack(self, which):
        o = 0
        for b in self.blobs:
            self.buf[o:o + b.count] = to_numpy(getattr(b, which)).ravel()
            o += b.count

    def _unpack(self, which):
        o = 0
        for b in self.blobs:
            getattr(b, which)[...] = b.device.asarray(self.buf[o:o + b.count].reshape(b.shape))
            o += b.count

    def allreduce_diffs(self, loss):
        """Sum the diffs over the ranks in place; return the summed loss."""
        if not self.in_place:
            self._pack("diff")
        self.buf[-1] = host_float(loss)
        self.comm.Allreduce(self.MPI.IN_PLACE, self.buf, op=self.MPI.SUM)
        if not self.in_place:
            self._unpack("diff")
        return float(self.buf[-1])

    def allreduce_values(self, values):
        out = np.array(values, dtype=np.float64)
        self.comm.Allreduce(self.MPI.IN_PLACE, out, op=self.MPI.SUM)
        return out

    def broadcast_weights(self):
        """Rank 0's weights to every rank, through the buffer. On the CPU the buffer holds the diffs, which
        are zero after this (as after clear_param_diffs): it is called before an iteration's passes or
        after its update, never between."""
        view = self.buf[:self.size]
        if self.comm.Get_rank() == 0:
            self._pack("data")
        self.comm.Bcast(view, root=0)
        if self.comm.Get_rank() != 0:
            self._unpack("data")
        if self.in_place:
            self.buf[...] = 0

    def broadcast_arrays(self, arrays):
        """Rank 0's values of device arrays (the solver history) into every rank's, one Bcast each."""
        for a in arrays:
            host = np.ascontiguousarray(to_numpy(a))
            self.comm.Bcast(host, root=0)
            if self.comm.Get_rank() != 0:
                a[...] = get_array_module(a).asarray(host)

    def ranks_that_differ(self, arrays):
        """The ranks whose arrays are not bit-identical to rank 0's (empty on every rank when all agree).
        The checksum is the integer sum of the values' bit patterns: one changed value always shows; changes
        that cancel out in the sum would not (vanishingly unlikely from divergent arithmetic)."""
        sums = []
        for a in arrays:
            bits = a.view(np.uint32 if a.dtype.itemsize == 4 else np.uint64)
            sums.append(int(to_numpy(get_array_module(a).sum(bits, dtype=np.uint64))))
        every = self.comm.allgather(sums)
        return [r for r, other in enumerate(every) if other != every[0]]
