"""Net: builds a Caffe NetParameter for a phase and runs it forward and backward.

Follows Caffe's Net::Init: filter layers by the NetState (phase, level, stages), insert Split layers
where one top feeds several bottoms (their gradients are summed), wire in-place tops, set loss weights,
share parameters by ParamSpec name, and work out which layers need backward (from the losses down,
with propagate_down and force_backward).
"""
import contextlib
import math
import zlib
from collections import OrderedDict, defaultdict, namedtuple

import numpy as np

from . import protoio
from .backend import CPU, to_numpy
from .blob import Blob, BlobShapeError, _encode_varint, blob_field_chunks, chunks_size, proto_shape, proto_values
from .config import defaults as default_settings
from .errors import VggtoolError
from .layers import layer_class
from .layers.conv.policy import CacheBudget
from .proto import caffe_pb2

TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST

# One learnable parameter as the solver sees it.
LearnableParam = namedtuple("LearnableParam", "blob lr_mult decay_mult layer index")


def phase_value(phase):
    if isinstance(phase, str):
        try:
            return caffe_pb2.Phase.Value(phase.upper())
        except ValueError:
            raise VggtoolError(f"unknown phase '{phase}' (use TRAIN or TEST)") from None
    return int(phase)


def state_meets_rule(state, rule, layer_name):
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def filter_net(net_param, state):
    """A copy of `net_param` keeping only the layers whose include/exclude rules admit `state`."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    del out.layer[:]
    for layer in net_param.layer:
        if len(layer.include) and len(layer.exclude):
            raise VggtoolError(f"layer '{layer.name}': specify either include rules or exclude rules, not both")
        if len(layer.include):
            keep = any(state_meets_rule(state, r, layer.name) for r in layer.include)
        else:
            keep = not any(state_meets_rule(state, r, layer.name) for r in layer.exclude)
        if keep:
            out.layer.add().CopyFrom(layer)
    return out


def split_layer_name(layer_name, blob_name, top_index):
    return f"{blob_name}_{layer_name}_{top_index}_split"


def split_blob_name(layer_name, blob_name, top_index, split_index):
    return f"{blob_name}_{layer_name}_{top_index}_split_{split_index}"


def insert_splits(net_param, source="net"):
    """Insert a Split layer after every top that feeds more than one consumer (a loss counts as one)."""
    layers = list(net_param.layer)
    last_producer = {}
    consumers = defaultdict(int)
    bottom_source = {}
    loss_weight_of = {}
    for i, layer in enumerate(layers):
        for j, name in enumerate(layer.bottom):
            if name not in last_producer:
                raise VggtoolError(f"{source}: layer '{layer.name}' ({layer.type}) has unknown bottom blob "
                                   f"'{name}' (bottom #{j}); no earlier layer produces it")
            src = last_producer[name]
            bottom_source[(i, j)] = src
            consumers[src] += 1
        for j, name in enumerate(layer.top):
            last_producer[name] = (i, j)
        for j in range(min(len(layer.loss_weight), len(layer.top))):
            src = last_producer[layer.top[j]]
            loss_weight_of[src] = layer.loss_weight[j]
            if layer.loss_weight[j]:
                consumers[src] += 1

    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    del out.layer[:]
    next_split = defaultdict(int)
    for i, layer in enumerate(layers):
        new = out.layer.add()
        new.CopyFrom(layer)
        for j, name in enumerate(layer.bottom):
            src = bottom_source[(i, j)]
            if consumers[src] > 1:
                src_layer = layers[src[0]]
                new.bottom[j] = split_blob_name(src_layer.name, name, src[1], next_split[src])
                next_split[src] += 1
        for j, name in enumerate(layer.top):
            count = consumers[(i, j)]
            if count <= 1:
                continue
            split = out.layer.add()
            split.name = split_layer_name(layer.name, name, j)
            split.type = "Split"
            split.bottom.append(name)
            weight = loss_weight_of.get((i, j), 0)
            for k in range(count):
                split.top.append(split_blob_name(layer.name, name, j, k))
                # A loss-weighted top moves its weight to the split's first output.
                split.loss_weight.append(weight if (k == 0 and weight) else 0)
            if weight:
                del new.loss_weight[:]
                next_split[(i, j)] = 1
            else:
                del split.loss_weight[:]
    return out


@contextlib.contextmanager
def _layer_context(layer):
    """Name the layer in a BlobShapeError raised while it sets up or reshapes its blobs. A blob larger
    than the device is refused before allocation (Blob._check_fits); memory running out over many blobs
    that each fit is reported here too, naming the layer that asked last."""
    try:
        yield
    except BlobShapeError as e:
        raise VggtoolError(f"layer '{layer.name}' ({layer.type}): {e}") from None
    except MemoryError as e:  # also CuPy's OutOfMemoryError, a MemoryError subclass
        raise VggtoolError(f"layer '{layer.name}' ({layer.type}): out of memory while setting up its blobs "
                           f"({' '.join(str(e).split())[:200]}); the net is too large for this device") from None


def _field_header(number, size):
    return _encode_varint(number << 3 | 2) + _encode_varint(size)


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


class CopyReport:
    """What `Net.copy_from` did: layers copied, source layers ignored, target layers left as they were."""

    def __init__(self):
        self.copied = []
        self.ignored = []  # in the source but not in this net (or not selected)
        self.missing = []  # layers of this net with parameters that the source does not have

    def lines(self):
        out = [f"Copying weights: copied {len(self.copied)} layer(s): {', '.join(self.copied) or '-'}"]
        if self.ignored:
            out.append(f"Ignoring source layer(s) not in the target net or not selected: {', '.join(self.ignored)}")
        if self.missing:
            out.append(f"Layer(s) with parameters not found in the source (keep their initialisation): "
                       f"{', '.join(self.missing)}")
        return out


class Net:
    """A Caffe net for one phase, on one device. Mirrors pycaffe's `caffe.Net`.

    `Net(model, weights=None, phase='TEST')`, also `Net(model, phase)` as in pycaffe; `model` is a
    prototxt path or a NetParameter.
    """

    def __init__(self, model, *args, weights=None, phase=None, stages=(), level=0, device=CPU,
                 dtype=np.float32, seed=None, source=None, batch_divisor=1, log=None, settings=None):
        weights, phase = _weights_and_phase(args, weights, phase)
        if isinstance(model, caffe_pb2.NetParameter):
            net_param = caffe_pb2.NetParameter()
            net_param.CopyFrom(model)
            from .upgrade import upgrade_net
            upgrade_net(net_param, source=source or "net")
            self.source = source or (net_param.name or "net")
        else:
            net_param = protoio.read_net_param(model)
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
        self.log = log  # a GLog: Caffe's set-up lines (Top shape, Memory required for data) while building
        self.settings = settings if settings is not None else default_settings()  # vggtool.config.Settings
        self.conv_cache = CacheBudget()  # forward data the convolutions keep for backward (TRAIN)
        state = caffe_pb2.NetState()
        state.CopyFrom(net_param.state)
        state.phase = self.phase
        if level:
            state.level = level
        state.stage.extend(s for s in stages if s not in state.stage)
        self.state = state
        self.param = filter_net(net_param, state)
        self.name = self.param.name
        with device:
            self._init_layers(insert_splits(self.param, self.source))
        if weights:
            self.load_weights(weights)

    # -- construction ------------------------------------------------------------------------------------
    def _init_layers(self, param):
        self.layers = []
        self._layer_names = []
        self.blobs = OrderedDict()
        self.bottom_vecs, self.top_vecs = [], []
        self.bottom_names, self.top_names = OrderedDict(), OrderedDict()
        self.bottom_need_backward = []
        self.layer_need_backward = []
        self.blob_loss_weights = OrderedDict()
        self.learnable_params = []
        self.inputs = []
        self._param_owner = {}  # ParamSpec name -> (layer name, index, blob, lr_mult, decay_mult)
        blob_need_backward = {}
        available = OrderedDict()
        names_seen = set()
        memory = 0  # bytes of data blobs, counted as Caffe counts them (every top, in-place ones again)
        for layer_param in param.layer:
            name = layer_param.name
            if name in names_seen:
                raise VggtoolError(f"{self.source}: two layers are named '{name}'; layer names must be unique")
            names_seen.add(name)
            layer_param.phase = self.phase
            cls = layer_class(layer_param.type, name)
            if len(layer_param.propagate_down) and len(layer_param.propagate_down) != len(layer_param.bottom):
                raise VggtoolError(f"layer '{name}': propagate_down has {len(layer_param.propagate_down)} "
                                   f"entries but the layer has {len(layer_param.bottom)} bottom(s)")
            layer = cls(layer_param, net=self)
            bottoms = []
            for j, bname in enumerate(layer_param.bottom):
                if bname not in available:
                    raise VggtoolError(f"layer '{name}' ({layer_param.type}): unknown bottom blob '{bname}' "
                                       f"(bottom #{j}); no earlier layer produces it")
                bottoms.append(self.blobs[bname])
                del available[bname]
            tops = []
            for j, tname in enumerate(layer_param.top):
                if j < len(layer_param.bottom) and layer_param.bottom[j] == tname:
                    blob = self.blobs[tname]  # in place
                elif tname in self.blobs:
                    raise VggtoolError(f"layer '{name}': top blob '{tname}' is produced by more than one layer "
                                       "(only in-place use, with the same name as the bottom at the same "
                                       "position, may repeat a name)")
                else:
                    blob = Blob((), dtype=self.dtype, device=self.device, name=tname)
                    self.blobs[tname] = blob
                    self.blob_loss_weights[tname] = 0.0  # every blob, in blob order (pycaffe)
                tops.append(blob)
                available[tname] = True
            if layer_param.type == "Input":
                self.inputs.extend(layer_param.top)
            if self.log:
                self.log.info("net.cpp:86", f"Creating Layer {name}")
            with _layer_context(layer):
                layer.setup(bottoms, tops)
            self._setup_loss_weights(layer, layer_param, tops)
            if self.log:
                memory += self._log_setup(name, layer_param, tops, memory)
            self._setup_params(layer, layer_param)
            self.layers.append(layer)
            self._layer_names.append(name)
            self.bottom_vecs.append(bottoms)
            self.top_vecs.append(tops)
            self.bottom_names[name] = list(layer_param.bottom)
            self.top_names[name] = list(layer_param.top)
            # Which blobs carry gradients (forward pass of the need-backward analysis).
            # As Caffe: an explicit propagate_down decides the bottom's flag; the layer needs backward if
            # any bottom blob carries gradients or any parameter learns (propagate_down is applied later).
            blob_needs = [blob_need_backward.get(b, False) for b in layer_param.bottom]
            bneed = [bool(layer_param.propagate_down[j]) if len(layer_param.propagate_down) else b
                     for j, b in enumerate(blob_needs)]
            need = any(layer.param_propagate_down) or any(blob_needs)
            for tname in layer_param.top:
                blob_need_backward[tname] = need
            self.layer_need_backward.append(need)
            self.bottom_need_backward.append(bneed)
        self.outputs = sorted(available)  # Caffe keeps them in a std::set: output #i is in name order
        if self.log:
            self.log.info("net.cpp:257", "Network initialization done.")
        self._prune_backward(param)
        self.layer_dict = OrderedDict(zip(self._layer_names, self.layers))
        self.params = OrderedDict((n, l.blobs) for n, l in zip(self._layer_names, self.layers) if l.blobs)

    def _log_setup(self, name, layer_param, tops, memory):
        """Caffe's lines after setting up a layer; returns the bytes its tops add."""
        from .solvers.glog import fmt

        self.log.info("net.cpp:124", f"Setting up {name}")
        added = 0
        for j, top in enumerate(tops):
            self.log.info("net.cpp:131", f"Top shape: {top.shape_string().strip()}")
            weight = self.blob_loss_weights.get(layer_param.top[j], 0.0) if j < len(layer_param.top) else 0.0
            if weight:
                self.log.info("net.cpp:134", f"    with loss weight {fmt(weight)}")
            added += top.count * self.dtype.itemsize
        self.log.info("net.cpp:139", f"Memory required for data: {memory + added}")
        return added

    def _setup_loss_weights(self, layer, layer_param, tops):
        if len(layer_param.loss_weight) > len(tops):
            raise VggtoolError(f"layer '{layer.name}': {len(layer_param.loss_weight)} loss_weight values for "
                               f"{len(tops)} top blob(s)")
        for j, top in enumerate(tops):
            if j < len(layer_param.loss_weight):
                weight = layer_param.loss_weight[j]
            else:
                weight = 1.0 if (layer.is_loss and j == 0) else 0.0
            if weight:
                top.diff[...] = weight
                self.blob_loss_weights[layer_param.top[j]] = weight

    def _setup_params(self, layer, layer_param):
        if len(layer_param.param) > len(layer.blobs):
            raise VggtoolError(f"layer '{layer.name}': {len(layer_param.param)} param {{}} specs given but the "
                               f"layer has {len(layer.blobs)} parameter blob(s)")
        for k in range(len(layer.blobs)):
            spec = layer_param.param[k] if k < len(layer_param.param) else caffe_pb2.ParamSpec()
            lr_mult, decay_mult = spec.lr_mult, spec.decay_mult
            blob = layer.blobs[k]
            if spec.name and spec.name in self._param_owner:
                owner_layer, owner_k, owner, o_lr, o_decay = self._param_owner[spec.name]
                permissive = spec.share_mode == caffe_pb2.ParamSpec.PERMISSIVE
                if (owner.count != blob.count) if permissive else (owner.shape != blob.shape):
                    raise VggtoolError(f"layer '{layer.name}': shared parameter '{spec.name}' has shape "
                                       f"{blob.shape_string()} here but {owner.shape_string()} in its owner "
                                       f"layer '{owner_layer}'")
                if spec.HasField("lr_mult") and lr_mult != o_lr:
                    raise VggtoolError(f"layer '{layer.name}': shared parameter '{spec.name}' has lr_mult "
                                       f"{lr_mult} but its owner '{owner_layer}' has {o_lr}")
                if spec.HasField("decay_mult") and decay_mult != o_decay:
                    raise VggtoolError(f"layer '{layer.name}': shared parameter '{spec.name}' has decay_mult "
                                       f"{decay_mult} but its owner '{owner_layer}' has {o_decay}")
                if owner.shape != blob.shape:
                    blob.share_data(owner)
                    blob.share_diff(owner)
                else:
                    layer.blobs[k] = owner
                layer.param_propagate_down[k] = o_lr != 0
                continue
            if spec.name:
                self._param_owner[spec.name] = (layer.name, k, blob, lr_mult, decay_mult)
            layer.param_propagate_down[k] = lr_mult != 0
            self.learnable_params.append(LearnableParam(blob, lr_mult, decay_mult, layer.name, k))

    def _prune_backward(self, param):
        """Caffe's backward pass of Net::Init: layers that do not lead to a loss, or whose every top is
        cut off by its consumers' propagate_down, run no backward (unless force_backward)."""
        under_loss, skip = set(), set()
        for i in range(len(self.layers) - 1, -1, -1):
            name = self._layer_names[i]
            tops = self.top_names[name]
            contributes = any(self.blob_loss_weights[t] or t in under_loss for t in tops)
            skipped = all(t in skip for t in tops)
            if self.layer_need_backward[i] and skipped:
                self.layer_need_backward[i] = False
                self.bottom_need_backward[i] = [False] * len(self.bottom_vecs[i])
            if not contributes:
                self.layer_need_backward[i] = False
            for j, bname in enumerate(self.bottom_names[name]):
                if contributes:
                    under_loss.add(bname)
                else:
                    self.bottom_need_backward[i][j] = False
                if not self.bottom_need_backward[i][j]:
                    skip.add(bname)
        if param.force_backward:
            # Every layer runs backward, to every bottom that allows it, and every parameter gets a gradient.
            for i, layer in enumerate(self.layers):
                self.layer_need_backward[i] = True
                self.bottom_need_backward[i] = [need or layer.allow_force_backward(j)
                                                for j, need in enumerate(self.bottom_need_backward[i])]
                layer.param_propagate_down = [True] * len(layer.blobs)

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

    # -- running ------------------------------------------------------------------------------------------
    def _layer_index(self, name, default):
        if name is None:
            return default
        try:
            return self._layer_names.index(name)
        except ValueError:
            raise VggtoolError(f"no layer named '{name}' in net '{self.name}'") from None

    def forward_from_to(self, start=0, end=None):
        """Run layers start..end (inclusive); return the weighted loss (a device scalar, no sync)."""
        end = len(self.layers) - 1 if end is None else end
        loss = 0.0
        with self.device:
            for i in range(start, end + 1):
                self.layers[i].forward(self.bottom_vecs[i], self.top_vecs[i])
                loss = loss + self._layer_loss(i)
        return loss

    def _layer_loss(self, i):
        loss = 0.0
        for j, top in enumerate(self.top_vecs[i]):
            weight = self.blob_loss_weights[self.top_names[self._layer_names[i]][j]]
            if weight:
                loss = loss + weight * top.data.sum()
        return loss

    def backward_from_to(self, start=None, end=0):
        start = len(self.layers) - 1 if start is None else start
        with self.device:
            for i in range(start, end - 1, -1):
                if self.layer_need_backward[i]:
                    self.layers[i].backward(self.top_vecs[i], self.bottom_need_backward[i], self.bottom_vecs[i])

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
        names = self.outputs if end is None else self.top_names[self._layer_names[e]]
        names = list(names) + [b for b in (blobs or []) if b not in names]
        return {n: self.blobs[n].data for n in names}

    def backward(self, diffs=None, start=None, end=None, **kwargs):
        """pycaffe's backward: set top diffs from kwargs, run, return {input name: diff array}."""
        self._set_inputs(kwargs, what="diff")
        s = self._layer_index(start, len(self.layers) - 1)
        e = self._layer_index(end, 0)
        self.backward_from_to(s, e)
        names = self.inputs if end is None else self.bottom_names[self._layer_names[e]]
        names = list(names) + [b for b in (diffs or []) if b not in names]
        return {n: self.blobs[n].diff for n in names}

    def forward_backward(self):
        loss = self.forward_from_to()
        self.backward_from_to()
        return loss

    def reshape(self):
        with self.device:
            for layer, bottom, top in zip(self.layers, self.bottom_vecs, self.top_vecs):
                with _layer_context(layer):
                    layer.reshape(bottom, top)

    def clear_param_diffs(self):
        for p in self.learnable_params:
            p.blob.diff[...] = 0

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
            arrays = [t.data for t in self.top_vecs[i]] if not diff else \
                [b.diff for b in self.layers[i].blobs] + [b.diff for b in self.bottom_vecs[i] if b.has_diff]
            for a in arrays:
                if a.size and not bool(xp.isfinite(a).all()):
                    return self._layer_names[i]
        return None

    # -- weights ------------------------------------------------------------------------------------------
    def load_weights(self, path):
        """copy_from(path) for a net that is run as trained (test, classify, extract, localize): a file
        from which no parameter is copied is an error naming it; layers whose parameters keep their
        fillers are named in one warning line (Caffe logs what it ignores; running them silently would
        report an untrained net's scores)."""
        report = self.copy_from(path)
        with_params = [name for name, layer in self.layer_dict.items() if layer.blobs]
        if with_params and not report.copied:
            weighted = report.ignored  # nothing copied: every source layer with weights was ignored
            why = (f"its layers with weights ({', '.join(weighted[:8])}{', ...' if len(weighted) > 8 else ''}) "
                   f"have no namesake in {self.source}" if weighted else
                   "it holds no weights at all (a net definition rather than a .caffemodel?)")
            raise VggtoolError(f"{path}: no parameter could be copied into the net: {why}")
        if report.missing:
            from .solvers.glog import GLog
            GLog().warning("net.cpp:1137", f"{path} has no weights for layer(s) {', '.join(report.missing)}: "
                                           "their parameters are left at their fillers (random initialisation)")
        return report

    def copy_from(self, source, only=None, report=None):
        """Copy parameters from a .caffemodel path or NetParameter, by layer name (Caffe's CopyTrainedLayersFrom).

        `only`: an iterable of layer names to copy (others ignored). Returns a CopyReport.
        """
        if not isinstance(source, caffe_pb2.NetParameter):
            label = str(source)
            source = protoio.read_net_param(source, is_text=False) if not label.endswith(".prototxt") \
                else protoio.read_net_param(source)
        else:
            label = source.name or "source net"
        only = None if only is None else set(only)
        rep = report if report is not None else CopyReport()
        seen = set()
        for src in source.layer:
            target = self.layer_dict.get(src.name)
            if target is None or (only is not None and src.name not in only):
                if len(src.blobs):
                    rep.ignored.append(src.name)
                continue
            if len(src.blobs) == 0:
                continue  # nothing to copy (a parameterless layer, or a definition without weights)
            if len(src.blobs) != len(target.blobs):
                raise VggtoolError(f"{label}: cannot copy layer '{src.name}': the source has {len(src.blobs)} "
                                   f"parameter blob(s), the target has {len(target.blobs)}")
            for k, blob_proto in enumerate(src.blobs):
                blob = target.blobs[k]
                shape = proto_shape(blob_proto)
                legacy = not blob_proto.HasField("shape")
                fits = shape == blob.shape or (
                    legacy and len(blob.shape) <= 4 and shape == (1,) * (4 - len(blob.shape)) + blob.shape)
                if not fits:
                    raise VggtoolError(
                        f"{label}: cannot copy param {k} of layer '{src.name}': shape mismatch. Source param "
                        f"shape is {' '.join(map(str, shape))} ({math.prod(shape)}); target param shape is "
                        f"{blob.shape_string()}. To learn this layer's parameters from scratch rather than "
                        "copying them from a saved net, rename the layer.")
                values = proto_values(blob_proto, writable=False)
                if values.size != blob.count:
                    raise VggtoolError(f"{label}: layer '{src.name}' param {k} holds {values.size} values, "
                                       f"its shape needs {blob.count} (truncated or corrupt file?)")
                blob.data = values.reshape(blob.shape)
            rep.copied.append(src.name)
            seen.add(src.name)
        rep.missing.extend(n for n, l in self.layer_dict.items()
                           if l.blobs and n not in seen and (only is None or n in only))
        return rep

    def to_proto(self, write_diff=False):
        out = caffe_pb2.NetParameter()
        out.CopyFrom(self.param)
        for layer_param in out.layer:
            layer_param.ClearField("blobs")
            layer = self.layer_dict.get(layer_param.name)
            if layer is not None:
                for blob in layer.blobs:
                    blob.to_proto(layer_param.blobs.add(), write_diff=write_diff)
        return out

    def save(self, path, write_diff=False):
        """Write the weights as a binary .caffemodel, atomically (the same bytes as to_proto() would
        serialise to, up to field order, streamed from the arrays without an intermediate copy)."""
        protoio.atomic_write_chunks(path, self._caffemodel_chunks(write_diff))

    def _caffemodel_chunks(self, write_diff):
        head = caffe_pb2.NetParameter()
        head.CopyFrom(self.param)
        head.ClearField("layer")
        chunks = [head.SerializeToString()]
        layer_field = caffe_pb2.NetParameter.DESCRIPTOR.fields_by_name["layer"].number
        blobs_field = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name["blobs"].number
        for layer_param in self.param.layer:
            lp = caffe_pb2.LayerParameter()
            lp.CopyFrom(layer_param)
            lp.ClearField("blobs")
            body = [lp.SerializeToString()]
            layer = self.layer_dict.get(layer_param.name)
            for blob in (layer.blobs if layer is not None else []):
                body += blob_field_chunks(blobs_field, blob.shape, blob.data, blob.diff if write_diff else None)
            chunks.append(_field_header(layer_field, chunks_size(body)))
            chunks += body
        return chunks

    # -- information --------------------------------------------------------------------------------------
    def num_params(self):
        return sum(p.blob.count for p in self.learnable_params)

    def layer_type(self, name):
        return self.layer_dict[name].type

    def __repr__(self):
        return f"Net('{self.name}', phase={caffe_pb2.Phase.Name(self.phase)}, {len(self.layers)} layers, {self.device.name})"


def as_numpy_dict(d):
    return {k: to_numpy(v) for k, v in d.items()}
