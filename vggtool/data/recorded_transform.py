"""The input transform a model was trained with, for commands that feed it images (test --data,
classify, extract, localize): the transform_param (mean_value / mean_file, scale) of the first TEST-phase
layer that has one, in the net prototxt or else in the weights file (a vggtool or Caffe snapshot keeps
the training net's layers, data layers included, beside the weights).

The weights file is walked on the wire without decoding its parameter blobs, so a 500 MB .caffemodel
costs one read, not a parse of every weight."""
import os

from ..errors import VggtoolError
from ..io import prototxt, wire
from ..io.files import find_beside
from ..proto import caffe_pb2


def _in_test(layer):
    if len(layer.include):
        return any(not r.HasField("phase") or r.phase == caffe_pb2.TEST for r in layer.include)
    return not any(r.HasField("phase") and r.phase == caffe_pb2.TEST for r in layer.exclude)


def _sets_something(tp):
    return bool(tp.mean_file or len(tp.mean_value) or tp.HasField("scale"))


def find_transform(layers):
    """The transform_param of the first TEST layer that sets a mean or a scale (else any phase's)."""
    candidates = [l for l in layers if l.HasField("transform_param") and _sets_something(l.transform_param)]
    for layer in candidates:
        if _in_test(layer):
            return layer
    return candidates[0] if candidates else None


def recorded_transform(net_path, weights_path=None, weights_param=None):
    """(transform_param, description of where it was found) or (None, None). weights_param: the weights
    file's NetParameter when it has been read already (a Net's weights_param), so it is not read again."""
    sources = []
    if net_path and os.path.isfile(net_path):
        sources.append((net_path, lambda: list(prototxt.read_net_param(net_path).layer), True))
    if weights_param is not None:
        sources.append((weights_path or "weights", lambda: list(weights_param.layer), False))
    elif weights_path and os.path.isfile(weights_path) and not str(weights_path).endswith((".h5", ".hdf5")):
        sources.append((weights_path, lambda: wire.caffemodel_layers(weights_path), False))
    for where, read, is_net in sources:
        try:
            layers = read()
        except VggtoolError:
            if is_net:
                raise
            continue  # an unreadable weights file: loading the weights names the problem
        layer = find_transform(layers)
        if layer is not None:
            return layer.transform_param, f"{where}, layer '{layer.name}'"
    return None, None


def resolve_mean_file(path, where, beside):
    """A transform_param mean_file as Caffe reads it (relative to the working directory), or beside the
    file that names it."""
    found = find_beside(path, beside, files_only=True)
    if found is not None:
        return found
    raise VggtoolError(f"{where}: transform_param mean_file '{path}' not found (looked in the current "
                       f"directory and beside {beside}); pass --mean-file or --mean-value")
