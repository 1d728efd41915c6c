"""A Net's parameters to and from other nets and files, by layer name: Caffe's CopyTrainedLayersFrom
(copy_layers, with a report of what was copied, ignored and left alone), the stricter check of a net run
as trained (check_loaded), and ShareTrainedLayersWith (share_trained_layers: the solver's test nets and
pycaffe's share_with). The bytes of a .caffemodel are vggtool.io.wire's business."""
import math

from ..errors import VggtoolError
from ..io import prototxt, wire
from ..proto import caffe_pb2


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


def read_weights(source):
    """(NetParameter, label for messages, whether it was read here) of a .caffemodel path (a .prototxt
    path is read as text) or a NetParameter."""
    if isinstance(source, caffe_pb2.NetParameter):
        return source, source.name or "source net", False
    label = str(source)
    param = prototxt.read_net_param(source) if label.endswith(".prototxt") else wire.read_caffemodel(source)
    return param, label, True


def copy_layers(layer_dict, source, label, only=None, report=None):
    """Copy the parameter blobs of `source`'s layers into the namesake layers of `layer_dict` (name ->
    Layer); `only`: the layer names to copy (others ignored). Returns the CopyReport."""
    only = None if only is None else set(only)
    rep = report if report is not None else CopyReport()
    seen = set()
    for src in source.layer:
        target = layer_dict.get(src.name)
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
            _copy_param(label, src.name, k, blob_proto, target.blobs[k])
        rep.copied.append(src.name)
        seen.add(src.name)
    rep.missing.extend(n for n, l in layer_dict.items()
                       if l.blobs and n not in seen and (only is None or n in only))
    return rep


def _copy_param(label, layer_name, k, blob_proto, blob):
    shape = wire.proto_shape(blob_proto)
    legacy = not blob_proto.HasField("shape")
    fits = shape == blob.shape or (
        legacy and len(blob.shape) <= 4 and shape == (1,) * (4 - len(blob.shape)) + blob.shape)
    if not fits:
        raise VggtoolError(
            f"{label}: cannot copy param {k} of layer '{layer_name}': shape mismatch. Source param "
            f"shape is {' '.join(map(str, shape))} ({math.prod(shape)}); target param shape is "
            f"{blob.shape_string()}. To learn this layer's parameters from scratch rather than "
            "copying them from a saved net, rename the layer.")
    values = wire.proto_values(blob_proto, writable=False)
    if values.size != blob.count:
        raise VggtoolError(f"{label}: layer '{layer_name}' param {k} holds {values.size} values, "
                           f"its shape needs {blob.count} (truncated or corrupt file?)")
    blob.data = values.reshape(blob.shape)


def check_loaded(net, path, report):
    """The checks of Net.load_weights: a file from which no parameter was copied is an error naming it;
    layers whose parameters keep their fillers are named in one warning line (Caffe logs what it
    ignores; running them silently would report an untrained net's scores)."""
    with_params = [name for name, layer in net.layer_dict.items() if layer.blobs]
    if with_params and not report.copied:
        weighted = report.ignored  # nothing copied: every source layer with weights was ignored
        why = (f"its layers with weights ({', '.join(weighted[:8])}{', ...' if len(weighted) > 8 else ''}) "
               f"have no namesake in {net.source}" if weighted else
               "it holds no weights at all (a net definition rather than a .caffemodel?)")
        raise VggtoolError(f"{path}: no parameter could be copied into the net: {why}")
    if report.missing:
        from ..solvers.glog import GLog
        GLog().warning("net.cpp:1137", f"{path} has no weights for layer(s) {', '.join(report.missing)}: "
                                       "their parameters are left at their fillers (random initialisation)")


def share_trained_layers(target, source, target_what="here", source_what="the source net"):
    """Make `target`'s layers use the parameter data of `source`'s namesake layers (Caffe's
    Net::ShareTrainedLayersWith): the solver's test nets share the train net's weights, and pycaffe's
    Net.share_with. `target_what` / `source_what` name the two nets in messages."""
    for name, src_layer in source.layer_dict.items():
        layer = target.layer_dict.get(name)
        if layer is None:
            continue
        if len(src_layer.blobs) != len(layer.blobs):
            raise VggtoolError(f"Incompatible number of blobs for layer {name}: {len(src_layer.blobs)} in "
                               f"{source_what}, {len(layer.blobs)} {target_what}")
        for j, (src, dst) in enumerate(zip(src_layer.blobs, layer.blobs)):
            if src.shape != dst.shape:
                raise VggtoolError(f"Cannot share param {j} weights from layer '{name}'; shape mismatch. "
                                   f"Source param shape is {src.shape_string()} ({source_what}); target param "
                                   f"shape is {dst.shape_string()} ({target_what})")
            dst.share_data(src)
