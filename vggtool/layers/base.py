"""The layer lifecycle, as in Caffe: setup = check blob counts -> layer_setup -> reshape -> loss weights.

Subclasses declare their arity (`exact_bottoms`, `min_bottoms`, ...) and fill in `layer_setup`,
`reshape`, `forward` and `backward`. Conventions (Caffe's):
- parameter gradients ACCUMULATE into `self.blobs[i].diff` (the solver zeroes them), which makes
  iter_size, shared parameters and multi-device sums free;
- bottom gradients are OVERWRITTEN;
- a loss layer reads its loss weight from `top[0].diff` (set by the net) and scales its gradient by it.
"""
import math
import mmap

import numpy as np

from ..errors import VggtoolError

_REGISTRY = {}


def register_layer(type_name):
    """Class decorator: make the class the implementation of prototxt `type: "<type_name>"`."""

    def decorate(cls):
        if type_name in _REGISTRY:
            raise RuntimeError(f"layer type '{type_name}' registered twice "
                               f"({_REGISTRY[type_name].__name__} and {cls.__name__})")
        cls.type = type_name
        _REGISTRY[type_name] = cls
        return cls

    return decorate


def layer_types():
    return sorted(_REGISTRY)


def layer_class(type_name, layer_name="?"):
    if type_name == "Python":
        raise VggtoolError(f"layer '{layer_name}': the Python layer type runs code named by the prototxt "
                           "and is refused (vggtool never executes code from a model file)")
    try:
        return _REGISTRY[type_name]
    except KeyError:
        raise VggtoolError(f"layer '{layer_name}': unknown layer type '{type_name}' "
                           f"(known types: {', '.join(layer_types())})") from None


class Workspace:
    """Scratch buffers shared by the layers of one net (im2col columns, padded copies, ...).

    `get(slot, shape)` returns a view of a flat buffer that only grows, so scratch memory is allocated
    once per slot, not per layer or per iteration. A view is valid until the next `get` of that slot.

    In a net whose memory is pooled (vggtool.net.pool) the net names the layer call being run
    (`at(step)`): a request the pool has a region for gets that region; any other is served by a buffer
    of its own that is freed when the next call starts, and its size is recorded for the pool's next
    plan (`recorded`, `needs_plan`).
    """

    def __init__(self, device):
        self.device = device
        self._buffers = {}
        self.pooled = False  # the net's MemoryPool plans this workspace
        self.step = None  # the layer call being run (a slot of vggtool.net.pool), when pooled
        self.recorded = {}  # (step, (slot, dtype)) -> bytes, every request seen while pooled
        self.needs_plan = False  # a request the current regions lack was recorded
        self._regions = {}  # (step, (slot, dtype)) -> flat uint8 region of the pool's arena
        self._transient = {}  # (slot, dtype) -> a buffer for this call only (recording)

    def at(self, step):
        """Start layer call `step`: the buffers of the previous call's unplanned requests go."""
        self.step = step
        self._transient.clear()

    def use_regions(self, regions):
        self._regions = dict(regions)
        self._buffers.clear()  # the pool serves the calls the net runs
        self.needs_plan = False

    def get(self, slot, shape, dtype, zero=False):
        dtype = np.dtype(dtype)
        key = (slot, dtype.str)
        size = math.prod(shape)
        if self.pooled and self.step is not None:
            view = self._pooled(key, size, dtype)
        else:
            view = self._own(self._buffers, key, size, dtype)
        view = view[:size].reshape(shape)
        if zero:
            view.fill(0)
        return view

    def _pooled(self, key, size, dtype):
        nbytes = max(size, 1) * dtype.itemsize
        where = (self.step, key)
        region = self._regions.get(where)
        if region is not None and region.size >= nbytes:
            return region[:nbytes].view(dtype)
        if self.recorded.get(where, 0) < nbytes:
            self.recorded[where] = nbytes
            self.needs_plan = True
        return self._own(self._transient, key, size, dtype, transient=True)

    def _own(self, buffers, key, size, dtype, transient=False):
        buf = buffers.get(key)
        if buf is None or buf.size < size:
            if transient and self.device.xp is np:
                # Its own mapping, unmapped when dropped: glibc's heap would keep the freed pages of such
                # buffers resident, on top of the pool that replaces them.
                buf = np.frombuffer(mmap.mmap(-1, max(size, 1) * dtype.itemsize), dtype=dtype)
            else:
                with self.device:
                    buf = self.device.xp.empty(max(size, 1), dtype=dtype)
            buffers[key] = buf
        return buf


class Layer:
    type = None
    exact_bottoms = None
    min_bottoms = None
    max_bottoms = None
    exact_tops = None
    min_tops = None
    max_tops = None
    # Loss layers: the default loss_weight of top 0 is 1 (Caffe's *Loss layers).
    is_loss = False
    # A scalar measure of the batch that is shown, never backpropagated (Accuracy).
    is_metric = False
    # Each sample's tops depend on that sample alone (axis 0 is the batch): a pass over several replicas'
    # shares of a batch computes what the shares would have computed apart (see merge_obstacle).
    per_sample = False
    # Data layers (no bottoms) are told the net's iteration for their per-sample randomness.

    def __init__(self, param, net=None, device=None, dtype=np.float32):
        from ..backend import CPU

        self.param = param
        self.name = param.name
        self.net = net
        self.phase = net.phase if net is not None else "TEST"
        self.device = device if device is not None else (net.device if net is not None else CPU)
        self.xp = self.device.xp
        self.dtype = np.dtype(dtype if net is None else net.dtype)
        self.blobs = []  # learnable parameters (Blob)
        self.param_propagate_down = []

    # -- lifecycle ---------------------------------------------------------------------------------------
    def setup(self, bottom, top):
        self._check_counts(bottom, top)
        self.layer_setup(bottom, top)
        self.reshape(bottom, top)
        if not self.param_propagate_down or len(self.param_propagate_down) != len(self.blobs):
            self.param_propagate_down = [True] * len(self.blobs)

    def _check_counts(self, bottom, top):
        def check(what, n, exact, lo, hi):
            if exact is not None and n != exact:
                raise self.error(f"takes {exact} {what} blob(s) as input, got {n}"
                                 if what == "bottom" else f"produces {exact} {what} blob(s), got {n}")
            if lo is not None and n < lo:
                raise self.error(f"takes at least {lo} {what} blob(s), got {n}")
            if hi is not None and n > hi:
                raise self.error(f"takes at most {hi} {what} blob(s), got {n}")

        check("bottom", len(bottom), self.exact_bottoms, self.min_bottoms, self.max_bottoms)
        check("top", len(top), self.exact_tops, self.min_tops, self.max_tops)

    def layer_setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        raise NotImplementedError

    def forward(self, bottom, top):
        raise NotImplementedError

    def backward(self, top, propagate_down, bottom):
        raise NotImplementedError

    def allow_force_backward(self, bottom_index):
        return True

    def merge_obstacle(self):
        """Why this layer, run once over several replicas' shares of a batch, would not give what they give
        apart (a phrase for a log line), or None. The parallel solver runs a lane's CPU replicas as one pass
        only where no layer has a reason (vggtool.solvers.parallel). Layers that average over the batch
        (losses, Accuracy) divide by one share's count instead (`shares`) and return None where that is
        exact."""
        return None if self.per_sample else "it may combine samples"

    def batch_axis_obstacle(self, axis):
        """merge_obstacle of a layer that works along `axis`: a reason when that is axis 0, the batch."""
        return f"it works along axis {axis}, the batch" if axis == 0 else None

    @property
    def shares(self):
        """How many replicas' shares of the batch this net's batch holds (net.batch_shares; 1 alone)."""
        return int(getattr(self.net, "batch_shares", 1) or 1)

    def backward_reads_data(self, bottom, top):
        """The blobs (of `bottom` and `top`) whose data this layer's backward reads. A net whose memory is
        pooled (vggtool.net.pool) keeps a blob's data only until its last reader; layers whose backward
        needs less than all their blobs say so here."""
        return list(bottom) + list(top)

    # -- helpers -----------------------------------------------------------------------------------------
    def error(self, message):
        return VggtoolError(f"layer '{self.name}' ({self.type}): {message}")

    def new_param(self, shape):
        from ..blob import Blob

        blob = Blob(shape, dtype=self.dtype, device=self.device, name=f"{self.name} param {len(self.blobs)}")
        self.blobs.append(blob)
        return blob

    def workspace(self, slot, shape, zero=False):
        """A scratch array from the net's shared Workspace (see Workspace)."""
        owner = self.net if self.net is not None else self
        ws = getattr(owner, "_workspace", None)
        if ws is None:
            ws = owner._workspace = Workspace(self.device)
        return ws.get(slot, shape, self.dtype, zero)

    def rng(self):
        """A NumPy Generator for initialisation, from the net's seed and this layer's name."""
        if self.net is not None:
            return self.net.layer_rng(self.name)
        return np.random.default_rng()

    _t, _last_iteration = 0, None  # batch_position's state (per instance once set)

    def batch_position(self):
        """Batch index t for this forward, for layers that produce new data each batch: net.iteration, or
        the next batch when net.iteration has not changed since the last forward (a caller that never sets
        it walks through the data, as with Caffe's layers). Call once per forward."""
        it = int(getattr(self.net, "iteration", 0) or 0)
        self._t = self._t + 1 if it == self._last_iteration else it
        self._last_iteration = it
        return self._t
