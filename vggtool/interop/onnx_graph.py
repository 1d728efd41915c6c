"""The ONNX graph under construction for one export: nodes, initialisers (the weights, as float32;
shared parameters appear once) and the map from Caffe blob names to ONNX value names."""
import numpy as np

from ..backend import to_numpy
from ..errors import VggtoolError

OPSET = 17


def onnx_module():
    """The `onnx` library (an optional dependency), or an error saying how to install it."""
    try:
        import onnx
    except ImportError:
        raise VggtoolError("ONNX export needs the 'onnx' package: pip install onnx "
                           "(or pip install 'vggtool[convert]')") from None
    return onnx


class Graph:
    """Nodes, initialisers and Caffe blob -> ONNX value bookkeeping for one export."""

    def __init__(self, onnx, net, last_writer):
        self.onnx = onnx
        self.helper = onnx.helper
        self.net = net
        self.nodes = []
        self.initializers = []
        self.value = {}  # Caffe blob name -> current ONNX value name
        self.last_writer = last_writer  # blob name -> index of the last layer writing it
        self.used = set()  # value names (node names are another namespace)
        self.node_names = set()
        self._param_names = {}  # id(blob data) -> initialiser name (shared parameters appear once)
        self.layer_index = 0

    def unique(self, name, taken=None):
        taken = self.used if taken is None else taken
        base, k = name, 1
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        return name

    def top_name(self, blob, layer):
        """ONNX name for a new value of Caffe blob `blob` written by `layer`."""
        if self.last_writer.get(blob) == self.layer_index and blob not in self.used:
            self.used.add(blob)
            return blob
        return self.unique(f"{blob}@{layer}")

    def tmp(self, layer, what):
        return self.unique(f"{layer}/{what}")

    def const(self, name, array):
        name = self.unique(name)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def int64s(self, layer, what, values):
        return self.const(f"{layer}/{what}", np.asarray(values, dtype=np.int64))

    def param(self, layer, k, suffix, transform=None):
        blob = layer.blobs[k]
        array = to_numpy(blob.data)
        key = (id(blob.data), transform)
        if key not in self._param_names:
            data = array.astype(np.float32)
            if transform == "T":
                data = data.T
            self._param_names[key] = self.const(f"{layer.name}.{suffix}", data)
        return self._param_names[key]

    def node(self, op, inputs, outputs, name, **attrs):
        self.nodes.append(self.helper.make_node(op, inputs, outputs, name=self.unique(name, self.node_names),
                                                **attrs))
        return outputs

    def shape_slice(self, layer, x, start, end=None):
        """The dims [start, end) of value x's shape, as a 1-d int64 value (Shape with start/end, opset 15)."""
        out = self.tmp(layer, f"shape{start}_{'' if end is None else end}")
        attrs = {"start": start} if end is None else {"start": start, "end": end}
        self.node("Shape", [x], [out], f"{layer}/Shape", **attrs)
        return out
