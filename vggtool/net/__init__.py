"""Net: builds a Caffe NetParameter for a phase and runs it forward and backward.

Follows Caffe's Net::Init: filter layers by the NetState (phase, level, stages) and insert Split layers
where one top feeds several bottoms (vggtool.net.graph), wire in-place tops, set loss weights, share
parameters by ParamSpec name, and work out which layers need backward (from the losses down, with
propagate_down and force_backward). Weights in and out: vggtool.net.weights and vggtool.io.wire.
"""
import contextlib
import zlib
from collections import OrderedDict

import numpy as np

from . import debug_info as net_debug_info
from . import weights as net_weights
from ..backend import CPU
from ..config import defaults as default_settings
from ..errors import VggtoolError
from ..io import prototxt, wire
from ..io.upgrade import upgrade_net
from ..layers import gemm
from ..layers.threads import split_run
from ..layers.base import Workspace
from ..layers.conv.policy import CacheBudget
from .build import NetBuilder, layer_context
from .fusion import fusable_relus
from .graph import filter_net, insert_splits, phase_value
from .pool import MemoryPool
from ..proto import caffe_pb2

TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST

def _is_phase(x):
    return isinstance(x, (int, np.integer)) or (isinstance(x, str) and x.upper() in ("TRAIN", "TEST"))


def _weights_and_phase(args, weights, phase):
    """pycaffe's call forms: Net(model, phase), Net(model, weights, phase), Net(model, phase, weights=w)."""
    if len(args) > 2:
        raise TypeError(f"Net() takes at most 3 positional arguments ({len(args) + 1} given)")
    args = list(args)
    if args and _is_phase(args[0]):
        if phase is not None or len(args) > 1:
            raise TypeError("Net(): the phase is given twice")
        phase = args.pop(0)
    elif args:
        if weights is not None:
            raise TypeError("Net(): the weights are given twice")
        weights = args.pop(0)
        if args:
            if phase is not None:
                raise TypeError("Net(): the phase is given twice")
            phase = args.pop(0)
    return weights, TEST if phase is None else phase


class Net:
    """A Caffe net for one phase, on one device. Mirrors pycaffe's `caffe.Net`.

    `Net(model, weights=None, phase='TEST')`, also `Net(model, phase)` as in pycaffe; `model` is a
    prototxt path or a NetParameter.
    """

    def __init__(self, model, *args, weights=None, phase=None, stages=(), level=0, device=CPU,
                 dtype=np.float32, seed=None, source=None, batch_divisor=1, batch_shares=1, log=None,
                 settings=None):
        weights, phase = _weights_and_phase(args, weights, phase)
        if isinstance(model, caffe_pb2.NetParameter):
            net_param = caffe_pb2.NetParameter()
            net_param.CopyFrom(model)
            upgrade_net(net_param, source=source or "net")
            self.source = source or (net_param.name or "net")
        else:
            net_param = prototxt.read_net_param(model)
            self.source = str(model)
        if not len(net_param.layer):
            raise VggtoolError(f"{self.source}: the net has no layers (an empty or wrong prototxt?)")
        self.phase = phase_value(phase)
        self.device = device
        self.xp = device.xp
        self.dtype = np.dtype(dtype)
        self.seed = int(seed) if seed is not None else int(np.random.SeedSequence().entropy % (2**63))
        self.iteration = 0  # set by the solver: drives per-sample randomness
        self.sample_offset = 0  # global index of this replica's first sample in the whole batch
        self.batch_divisor = int(batch_divisor)  # replicas sharing each batch (read by data layers at setup)
        # replicas' shares this net's batch holds (a lane's replicas run as one pass): the losses and
        # accuracies, means over one share, sum over the shares (Layer.shares, merge_obstacle)
        self.batch_shares = int(batch_shares)
        self.log = log  # a GLog: Caffe's set-up lines (Top shape, Memory required for data) while building
        self.weights_param = None  # the NetParameter of the last weights copied in (see copy_from)
        self.settings = settings if settings is not None else default_settings()  # vggtool.config.Settings
        self.conv_cache = CacheBudget()  # forward data the convolutions keep for backward (TRAIN)
        self.memory_pool = None  # a MemoryPool once share_memory() is on (vggtool.net.pool)
        self.runs_every_backward = False  # `vggtool time`: every layer's backward runs, needed or not
        self._workspace = Workspace(device)  # scratch shared by the layers (Layer.workspace)
        state = caffe_pb2.NetState()
        state.CopyFrom(net_param.state)
        state.phase = self.phase
        if level:
            state.level = level
        state.stage.extend(s for s in stages if s not in state.stage)
        self.state = state
        self.param = filter_net(net_param, state)
        self.debug_info = bool(self.param.debug_info)  # Caffe's per-layer value lines (vggtool.net.debug_info)
        self.name = self.param.name
        with device:
            self._init_layers(insert_splits(self.param, self.source))
        if weights:
            self.load_weights(weights)
        if self.settings.share_memory == "on":
            self.share_memory()

    # -- construction ------------------------------------------------------------------------------------
    def _init_layers(self, param):
        built = NetBuilder(self)
        self.blobs = built.blobs  # the same dict while the layers are built (an Input layer's docs name it)
        built.build(param)
        self.layers, self._index, self.inputs, self.outputs = built.layers, built.index, built.inputs, built.outputs
        self.bottom_vecs, self.top_vecs = built.bottom_vecs, built.top_vecs
        self.bottom_names, self.top_names = built.bottom_names, built.top_names  # pycaffe's names and layout
        self.bottom_need_backward, self.layer_need_backward = built.bottom_need_backward, built.layer_need_backward
        self.blob_loss_weights = built.blob_loss_weights
        self.learnable_params = built.learnable_params
        self._param_owner = built.param_owner  # ParamSpec name -> (layer name, index, blob, lr_mult, decay_mult)
        self.layer_dict = OrderedDict(zip(self._index, self.layers))
        self._fused_relus = fusable_relus(self)  # conv index -> the in-place ReLU its output pass applies
        self.params = OrderedDict((n, l.blobs) for n, l in zip(self._index, self.layers) if l.blobs)

    # -- randomness ---------------------------------------------------------------------------------------
    def layer_rng(self, layer_name):
        """The Generator for a layer's parameter initialisation (same seed -> same weights)."""
        return np.random.default_rng([self.seed, zlib.crc32(layer_name.encode())])

    def sample_rng(self, layer_name, index, iteration=None):
        """A Generator for the sample at `index` within this replica's share of the current batch.

        Seeded by (net seed, layer, iteration, global sample index), so how a batch is split over devices
        does not change any sample's random draws. `iteration`: the layer's own batch index (default
        net.iteration; see Layer.batch_position).
        """
        t = self.iteration if iteration is None else iteration
        key = [self.seed, zlib.crc32(layer_name.encode()), int(t), int(self.sample_offset + index)]
        return np.random.Generator(np.random.Philox(np.random.SeedSequence(key)))

    # -- memory -------------------------------------------------------------------------------------------
    def share_memory(self, arena=None):
        """Pool the blob diffs, the convolutions' forward caches, the layers' workspace and (settings.release_data)
        the intermediate blobs' data (vggtool.net.pool): buffers live at different moments of a step share
        bytes, so the peak is the largest live set. Afterwards an intermediate blob's diff is valid only
        during backward (between the backward that writes it and its producer's, which reads it) and its
        data from its producer's forward to its last reader; parameters, inputs, outputs and loss tops stay.
        The Solver's train net and `vggtool time` call it (as PyTorch frees non-leaf gradients); a plain
        Net keeps every diff, as pycaffe's. settings.share_memory: 'auto' (this), 'on' (every Net at
        construction), 'off' (never; this call does nothing). Returns whether the memory is pooled.
        arena: a vggtool.net.pool.SharedArena to plan into (nets whose steps never overlap, such as the CPU
        replicas of one lane), given at the first call or later: the net re-plans into it before its next
        forward."""
        if self.settings.share_memory == "off":
            return False
        if self.memory_pool is None:
            self.memory_pool = MemoryPool(self, shared=arena)
            self._workspace.pooled = True
            self.reshape()  # the caches are re-planned for the pool's budget, then the pool itself
        elif arena is not None:
            self.memory_pool.arena_source = arena  # stale now: the next forward re-plans into it
        return True

    def diff_is_kept(self, blob):
        """Whether `blob`'s diff keeps its value after backward (False: a region of the pool)."""
        return self.memory_pool is None or blob.name not in self.memory_pool.pooled_diffs \
            or self.blobs.get(blob.name) is not blob

    def data_is_kept(self, blob):
        """Whether `blob`'s data keeps its value after forward (False: a region of the pool, valid from
        its producer's forward to its last reader)."""
        return self.memory_pool is None or blob.name not in self.memory_pool.pooled_data \
            or self.blobs.get(blob.name) is not blob

    def _not_kept(self, name, what, note=""):
        return (f"net '{self.name}': the {what} of blob '{name}' is not kept after the pass{note}: this net shares "
                "its memory (settings.share_memory; a Solver's train net and `vggtool time` do by default), so its "
                "bytes hold other buffers once its last reader has run; build it with share_memory=off to read it")

    def _check_kept(self, names, what):
        for name in names:
            blob = self.blobs.get(name)
            kept = self.data_is_kept(blob) if what == "data" else self.diff_is_kept(blob)
            if blob is not None and not kept:
                raise VggtoolError(self._not_kept(name, what))

    def plan_memory_if_stale(self):
        """Re-plan the pool between steps when shapes changed or the workspace recorded new requests."""
        if self.memory_pool is not None and self.memory_pool.stale():
            self.memory_pool.plan()

    def layer_forward(self, i, fuse=True):
        """Layer i's forward on its blobs (the net's loops and `vggtool time` run layers through these).
        fuse: the caller runs layer i + 1 next, so a convolution may apply that in-place ReLU itself
        (vggtool.net.fusion)."""
        if self.memory_pool is not None:
            self._workspace.at(i)
            for top in self.top_vecs[i]:  # written now: readable again
                top.released = None
        relu = self._fused_relus.get(i)
        fused = relu is not None and fuse and not self.debug_info
        if relu is not None:
            conv, out = self.layers[i], self.top_vecs[i][0]
            conv.rectify_output = fused
            # a pooled net's ReLU keeps a mask for its backward: the convolution fills it in the same pass
            mask = relu.mask_buffer(out.count).reshape(out.shape) if fused and relu.keep_mask else None
            conv.rectify_mask = mask
        self.layers[i].forward(self.bottom_vecs[i], self.top_vecs[i])
        if relu is not None:
            conv.rectify_mask = None  # the ReLU's own array: only lent for this forward
            relu.input_rectified = fused

    def layer_backward(self, i):
        """Layer i's backward, propagating to the bottoms the net's need-backward analysis chose."""
        if self.memory_pool is not None:
            self._workspace.at(2 * len(self.layers) - 1 - i)
            for bottom in self.bottom_vecs[i]:
                bottom.diff_released = None
        self.layers[i].backward(self.top_vecs[i], self.bottom_need_backward[i], self.bottom_vecs[i])

    def _release(self, names, what):
        """Mark pooled blobs whose last reader has run: reading them raises until they are written again."""
        for name in names:
            blob = self.blobs[name]
            message = self._not_kept(name, what, " (a new forward recomputes it)")
            if what == "data":
                blob.released = message
            else:
                blob.diff_released = message

    def _calls_done(self):
        if self.memory_pool is not None:
            self._workspace.at(None)

    # -- running ------------------------------------------------------------------------------------------
    def _layer_index(self, name, default):
        return default if name is None else self.layer_index(name)

    def forward_from_to(self, start=0, end=None):
        """Run layers start..end (inclusive); return the weighted loss (a device scalar, no sync)."""
        end = len(self.layers) - 1 if end is None else end
        loss = 0.0
        with self.device, self.blas_on_one_thread():
            if start == 0:
                self.plan_memory_if_stale()  # between steps: new shapes or recorded workspace
            for i in range(start, end + 1):
                self.layer_forward(i, fuse=i < end)
                loss = loss + self._layer_loss(i)
                if self.debug_info:
                    net_debug_info.forward(self, i)
            self._calls_done()
            if self.memory_pool is not None and end == len(self.layers) - 1:
                self._release(self.memory_pool.forward_only_data, "data")
        return loss

    def blas_on_one_thread(self):
        """A CPU net's passes run OpenBLAS on one thread and split their GEMMs themselves
        (vggtool.layers.gemm.blas_on_one_thread: OpenBLAS's spinning idle threads would take the cores
        from the threaded passes between GEMMs)."""
        return gemm.blas_on_one_thread() if self.xp is np else contextlib.nullcontext()

    def _layer_loss(self, i):
        loss = 0.0
        for j, top in enumerate(self.top_vecs[i]):
            weight = self.blob_loss_weights[self.top_names[self.layers[i].name][j]]
            if weight:
                loss = loss + weight * top.data.sum()
        return loss

    def backward_from_to(self, start=None, end=0):
        start = len(self.layers) - 1 if start is None else start
        if self.memory_pool is not None:  # layers may look at a released input's shape in backward
            for name in self.memory_pool.forward_only_data:
                self.blobs[name].released = None
        with self.device, self.blas_on_one_thread():
            for i in range(start, end - 1, -1):
                if self.layer_need_backward[i]:
                    self.layer_backward(i)
                    if self.debug_info:  # now: a pooled diff is valid right after the layer writes it
                        net_debug_info.backward(self, i)
            self._calls_done()
            if self.debug_info and start == len(self.layers) - 1 and end == 0:
                net_debug_info.all_params(self)
            if self.memory_pool is not None and end == 0:
                self._release(self.memory_pool.pooled_data, "data")
                self._release(self.memory_pool.pooled_diffs, "diff")

    def _set_inputs(self, kwargs, what="data"):
        reshaped = False
        for name, value in kwargs.items():
            if name not in self.blobs:
                raise VggtoolError(f"net '{self.name}' has no blob named '{name}'")
            blob = self.blobs[name]
            value = self.device.asarray(value, dtype=self.dtype)
            if what == "data" and tuple(value.shape) != blob.shape:
                if name not in self.inputs:
                    raise VggtoolError(f"blob '{name}' has shape {blob.shape}, got an array of shape "
                                       f"{tuple(value.shape)} (only net inputs can change shape)")
                blob.reshape(value.shape)
                reshaped = True
            setattr(blob, what, value)
        if reshaped:
            self.reshape()

    def forward(self, blobs=None, start=None, end=None, **kwargs):
        """pycaffe's forward: set inputs from kwargs, run, return {output name: data array}."""
        self._set_inputs(kwargs)
        s = self._layer_index(start, 0)
        e = self._layer_index(end, len(self.layers) - 1)
        self.last_loss = self.forward_from_to(s, e)
        names = self.outputs if end is None else self.top_names[self.layers[e].name]
        names = list(names) + [b for b in (blobs or []) if b not in names]
        self._check_kept(names, "data")
        return {n: self.blobs[n].data for n in names}

    def backward(self, diffs=None, start=None, end=None, **kwargs):
        """pycaffe's backward: set top diffs from kwargs, run, return {input name: diff array}."""
        self._set_inputs(kwargs, what="diff")
        s = self._layer_index(start, len(self.layers) - 1)
        e = self._layer_index(end, 0)
        self.backward_from_to(s, e)
        names = self.inputs if end is None else self.bottom_names[self.layers[e].name]
        names = list(names) + [b for b in (diffs or []) if b not in names]
        self._check_kept(names, "diff")
        return {n: self.blobs[n].diff for n in names}

    def forward_backward(self):
        with self.blas_on_one_thread():  # one hold for both passes: no count restored in between
            loss = self.forward_from_to()
            self.backward_from_to()
        return loss

    def reshape(self):
        with self.device:
            for layer, bottom, top in zip(self.layers, self.bottom_vecs, self.top_vecs):
                with layer_context(layer):
                    layer.reshape(bottom, top)
            if self.memory_pool is not None:
                self.memory_pool.plan()

    def clear_param_diffs(self):
        for p in self.learnable_params:
            diff = p.blob.diff
            if self.xp is np and diff.flags.c_contiguous:  # a memset per thread: VGG-16's 553 MB in half the time
                flat = diff.reshape(-1)
                split_run(lambda lo, hi, flat=flat: flat[lo:hi].fill(0), flat.size, flat.size)
            else:
                diff[...] = 0

    def batch_positions(self):
        """Each layer's Layer.batch_position state, to put back with restore_batch_positions after a
        forward that must not move the data on (the solver's check of a snapshot's loss)."""
        return [(layer._t, layer._last_iteration) for layer in self.layers]

    def restore_batch_positions(self, saved):
        for layer, (t, last) in zip(self.layers, saved):
            layer._t, layer._last_iteration = t, last

    def first_nonfinite_layer(self, diff=False):
        """Name of the first layer (forward order; reverse for diffs) whose output or gradient is not finite."""
        xp = self.xp
        order = range(len(self.layers)) if not diff else range(len(self.layers) - 1, -1, -1)
        for i in order:
            arrays = [t.data for t in self.top_vecs[i] if self.data_is_kept(t)] if not diff else \
                [b.diff for b in self.layers[i].blobs] + \
                [b.diff for b in self.bottom_vecs[i] if b.has_diff and self.diff_is_kept(b)]
            for a in arrays:
                if a.size and not bool(xp.isfinite(a).all()):
                    return self.layers[i].name
        return None

    # -- weights ------------------------------------------------------------------------------------------
    def load_weights(self, path):
        """copy_from(path) for a net that is run as trained (test, classify, extract, localize), with the
        checks of net_weights.check_loaded."""
        report = self.copy_from(path)
        net_weights.check_loaded(self, path, report)
        return report

    def copy_from(self, source, only=None, report=None):
        """Copy parameters from a .caffemodel path or NetParameter, by layer name (Caffe's CopyTrainedLayersFrom).

        `only`: an iterable of layer names to copy (others ignored). Returns a CopyReport. Afterwards
        `weights_param` is the source's NetParameter (read from a file: its layers without their blobs),
        for readers of its definition such as recorded_transform."""
        param, label, read_here = net_weights.read_weights(source)
        rep = net_weights.copy_layers(self.layer_dict, param, label, only, report)
        if read_here:
            for layer in param.layer:
                layer.ClearField("blobs")  # copied: free them now
        self.weights_param = param
        return rep

    def _param_blobs(self, layer_name):
        layer = self.layer_dict.get(layer_name)
        return layer.blobs if layer is not None else []

    def to_proto(self, write_diff=False):
        return wire.net_to_proto(self.param, self._param_blobs, write_diff)

    def save(self, path, write_diff=False):
        """Write the weights as a binary .caffemodel, atomically (wire.write_caffemodel)."""
        wire.write_caffemodel(path, self.param, self._param_blobs, write_diff)

    # -- information --------------------------------------------------------------------------------------
    @property
    def layer_names(self):
        """The layers' names in execution order (pycaffe: net._layer_names)."""
        return list(self._index)

    def layer_index(self, name):
        """The position of layer `name` in execution order (pycaffe: list(net._layer_names).index)."""
        try:
            return self._index[name]
        except KeyError:
            raise VggtoolError(f"no layer named '{name}' in net '{self.name}'") from None

    def last_writers(self):
        """{blob name: position of the last layer writing it} over the net's computed blobs (an in-place
        top is written by several layers; its value after the last one is the one the net ends with)."""
        return {top: i for i, name in enumerate(self.layer_names) for top in self.top_names[name]}

    def merge_obstacle(self):
        """Why one pass of this net over several replicas' shares of a batch would not give the sum of
        their passes (losses, gradients, outputs), naming the layer or output; None when it would."""
        for layer in self.layers:
            why = layer.merge_obstacle()
            if why:
                return f"layer '{layer.name}' ({layer.type}): {why}"
        writers = self.last_writers()
        for name in self.outputs:
            layer = self.layers[writers[name]] if name in writers else None
            if layer is None or self.blobs[name].count != 1 or not (layer.is_loss or layer.is_metric):
                return f"output '{name}' is not a loss or an accuracy, which the shares would sum"
        return None

    def layer(self, name):
        """The layer named `name` (pycaffe: net.layer_dict[name]), an error naming it when there is none."""
        return self.layers[self.layer_index(name)]

    def param_owner(self, spec_name):
        """(layer name, parameter index) of the layer that owns the shared parameter `spec_name` (a
        ParamSpec name), or None when no layer shares a parameter of that name."""
        owner = self._param_owner.get(spec_name)
        return None if owner is None else (owner[0], owner[1])

    def num_params(self):
        return sum(p.blob.count for p in self.learnable_params)

    def layer_type(self, name):
        return self.layer_dict[name].type

    def __repr__(self):
        return f"Net('{self.name}', phase={caffe_pb2.Phase.Name(self.phase)}, {len(self.layers)} layers, {self.device.name})"

