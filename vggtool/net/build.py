"""Building a Net's layers from its filtered, split NetParameter (Caffe's Net::Init after
FilterNet and InsertSplits, which are net_graph.py): each layer constructed and wired to its bottom
and top blobs (an in-place top is its bottom's blob), set up with its loss weights and parameters
(lr_mult, decay_mult, sharing by ParamSpec name: Caffe's AppendParam), the set-up lines logged, and
the need-backward analysis (from the losses down, with propagate_down and force_backward)."""
import contextlib
from collections import OrderedDict, namedtuple

from ..blob import Blob, BlobShapeError
from ..errors import VggtoolError
from ..layers import layer_class
from ..proto import caffe_pb2

# One learnable parameter as the solver sees it.
LearnableParam = namedtuple("LearnableParam", "blob lr_mult decay_mult layer index")


@contextlib.contextmanager
def layer_context(layer):
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


class NetBuilder:
    """The layers of `net` and their wiring, built by build(param); the Net takes them over."""

    def __init__(self, net):
        self.net = net  # the layers' owner: phase, dtype, device, log, source; passed to each layer
        self.layers = []
        self.index = {}  # layer name -> position
        self.blobs = OrderedDict()
        self.bottom_vecs, self.top_vecs = [], []
        self.bottom_names, self.top_names = OrderedDict(), OrderedDict()  # pycaffe's names and layout
        self.bottom_need_backward = []
        self.layer_need_backward = []
        self.blob_loss_weights = OrderedDict()
        self.learnable_params = []
        self.inputs = []
        self.outputs = []
        self.param_owner = {}  # ParamSpec name -> (layer name, index, blob, lr_mult, decay_mult)
        self._blob_need_backward = {}

    def build(self, param):
        available = OrderedDict()  # blobs produced and not yet consumed: what is left are the outputs
        memory = 0  # bytes of data blobs, counted as Caffe counts them (every top, in-place ones again)
        for layer_param in param.layer:
            memory += self._add_layer(layer_param, available, memory)
        self.outputs = sorted(available)  # Caffe keeps them in a std::set: output #i is in name order
        if self.net.log:
            self.net.log.info("net.cpp:257", "Network initialization done.")
        self._prune_backward(param)
        return self

    def _add_layer(self, layer_param, available, memory):
        """Build one layer, wire its blobs and set it up; returns the bytes of data its tops add."""
        name = layer_param.name
        if name in self.index:
            raise VggtoolError(f"{self.net.source}: two layers are named '{name}'; layer names must be unique")
        layer_param.phase = self.net.phase
        cls = layer_class(layer_param.type, name)
        if len(layer_param.propagate_down) and len(layer_param.propagate_down) != len(layer_param.bottom):
            raise VggtoolError(f"layer '{name}': propagate_down has {len(layer_param.propagate_down)} "
                               f"entries but the layer has {len(layer_param.bottom)} bottom(s)")
        layer = cls(layer_param, net=self.net)
        bottoms = self._wire_bottoms(layer_param, available)
        tops = self._wire_tops(layer_param, available)
        if layer_param.type == "Input":
            self.inputs.extend(layer_param.top)
        if self.net.log:
            self.net.log.info("net.cpp:86", f"Creating Layer {name}")
        with layer_context(layer):
            layer.setup(bottoms, tops)
        self._setup_loss_weights(layer, layer_param, tops)
        added = self._log_setup(name, layer_param, tops, memory) if self.net.log else 0
        self._setup_params(layer, layer_param)
        self.index[name] = len(self.layers)
        self.layers.append(layer)
        self.bottom_vecs.append(bottoms)
        self.top_vecs.append(tops)
        self.bottom_names[name] = list(layer_param.bottom)
        self.top_names[name] = list(layer_param.top)
        self._mark_need_backward(layer, layer_param)
        return added

    def _wire_bottoms(self, layer_param, available):
        bottoms = []
        for j, bname in enumerate(layer_param.bottom):
            if bname not in available:
                raise VggtoolError(f"layer '{layer_param.name}' ({layer_param.type}): unknown bottom blob "
                                   f"'{bname}' (bottom #{j}); no earlier layer produces it")
            bottoms.append(self.blobs[bname])
            del available[bname]
        return bottoms

    def _wire_tops(self, layer_param, available):
        """The top blobs: new ones, or the bottom itself for an in-place top (same name, same position)."""
        tops = []
        for j, tname in enumerate(layer_param.top):
            if j < len(layer_param.bottom) and layer_param.bottom[j] == tname:
                blob = self.blobs[tname]  # in place
            elif tname in self.blobs:
                raise VggtoolError(f"layer '{layer_param.name}': top blob '{tname}' is produced by more than "
                                   "one layer (only in-place use, with the same name as the bottom at the same "
                                   "position, may repeat a name)")
            else:
                blob = Blob((), dtype=self.net.dtype, device=self.net.device, name=tname)
                self.blobs[tname] = blob
                self.blob_loss_weights[tname] = 0.0  # every blob, in blob order (pycaffe)
            tops.append(blob)
            available[tname] = True
        return tops

    def _mark_need_backward(self, layer, layer_param):
        """Which blobs carry gradients (the forward pass of the need-backward analysis). As Caffe: an
        explicit propagate_down decides the bottom's flag; the layer needs backward if any bottom blob
        carries gradients or any parameter learns (propagate_down is applied in _prune_backward)."""
        blob_needs = [self._blob_need_backward.get(b, False) for b in layer_param.bottom]
        bneed = [bool(layer_param.propagate_down[j]) if len(layer_param.propagate_down) else b
                 for j, b in enumerate(blob_needs)]
        need = any(layer.param_propagate_down) or any(blob_needs)
        for tname in layer_param.top:
            self._blob_need_backward[tname] = need
        self.layer_need_backward.append(need)
        self.bottom_need_backward.append(bneed)

    def _log_setup(self, name, layer_param, tops, memory):
        """Caffe's lines after setting up a layer; returns the bytes its tops add."""
        from ..solvers.glog import fmt

        self.net.log.info("net.cpp:124", f"Setting up {name}")
        added = 0
        for j, top in enumerate(tops):
            self.net.log.info("net.cpp:131", f"Top shape: {top.shape_string().strip()}")
            weight = self.blob_loss_weights.get(layer_param.top[j], 0.0) if j < len(layer_param.top) else 0.0
            if weight:
                self.net.log.info("net.cpp:134", f"    with loss weight {fmt(weight)}")
            added += top.count * self.net.dtype.itemsize
        self.net.log.info("net.cpp:139", f"Memory required for data: {memory + added}")
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
            if spec.name and spec.name in self.param_owner:
                owner_layer, owner_k, owner, o_lr, o_decay = self.param_owner[spec.name]
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
                self.param_owner[spec.name] = (layer.name, k, blob, lr_mult, decay_mult)
            layer.param_propagate_down[k] = lr_mult != 0
            self.learnable_params.append(LearnableParam(blob, lr_mult, decay_mult, layer.name, k))

    def _prune_backward(self, param):
        """Caffe's backward pass of Net::Init: layers that do not lead to a loss, or whose every top is
        cut off by its consumers' propagate_down, run no backward (unless force_backward)."""
        under_loss, skip = set(), set()
        for i in range(len(self.layers) - 1, -1, -1):
            name = self.layers[i].name
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
