"""Export a Caffe net (prototxt + weights) to an ONNX model, layer by layer, with the `onnx` package's helpers.

The graph is built for opset 17. Blob names follow Caffe: the last value written to a blob carries the blob's
name (so after `relu1_1` runs in place, "conv1_1" is the rectified output, as in `net.blobs`), earlier
values are named "blob@layer". Graph inputs are the Input layer's tops, with a dynamic batch dimension
("batch") and, when the net has no InnerProduct layer (a convolutionalised net), dynamic "height" and
"width"; graph outputs are the net's outputs (blobs no layer consumes), or the blobs asked for.

Layer semantics that need care (each checked against onnxruntime in tests/interop/test_onnx_export.py):
- Pooling CEIL: Caffe's output size is ceil((H + 2p - k) / s) + 1, less one when the layer is padded and
  the last window would start in the bottom/right padding; ONNX MaxPool/AveragePool with ceil_mode=1 and
  symmetric pads compute the same size, drop the same window, and clip the last window to the input.
  AVE divides by the window clipped to the padded input (H + p), which is ONNX's count_include_pad=1.
  They differ only for an unpadded layer with kernel < stride, where Caffe keeps an empty last window
  (output -FLT_MAX); such a layer is refused.
- LRN ACROSS_CHANNELS: Caffe's and ONNX's definitions agree (both divide alpha by local_size, bias = k).
  WITHIN_CHANNEL is composed as x * (1 + alpha * avgpool(x^2))^-beta, as Caffe composes it.
- InnerProduct flattens from `axis` (Caffe) into one K-vector: Flatten + Gemm for axis 1, a Reshape of the
  dims after `axis` + MatMul otherwise.
- Dropout at test time is the identity (vggtool's and Caffe's dropout scale at training time).

The layers' converters are in vggtool.interop.onnx_layers; here: the graph under construction, the
checks, the inputs and outputs, shape inference and the export itself.
"""
import os

import numpy as np

from ..io import prototxt
from ..backend import to_numpy
from ..errors import VggtoolError
from .onnx_layers import CONVERTERS, NEEDS_BOTTOM_BLOBS

OPSET = 17


def _onnx():
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


def _check_exportable(net):
    for name, layer in net.layer_dict.items():
        if layer.type != "Input" and layer.type not in CONVERTERS:
            raise VggtoolError(
                f"{net.source}: layer '{name}' of type {layer.type} cannot be exported to ONNX (exportable: Input, "
                f"{', '.join(sorted(CONVERTERS))}; export a deploy net, without data, loss or accuracy layers)")


def default_dynamic_spatial(net):
    """Height and width can vary when no InnerProduct fixes them (a convolutionalised net)."""
    return not any(layer.type == "InnerProduct" for layer in net.layers)


def _input_dims(net, name, dynamic_batch, dynamic_spatial):
    shape = list(net.blobs[name].shape)
    multi = len(net.inputs) > 1
    dims = list(shape)
    if dynamic_batch and dims:
        dims[0] = "batch"
    if dynamic_spatial and len(dims) == 4:
        dims[2] = f"{name}_height" if multi else "height"
        dims[3] = f"{name}_width" if multi else "width"
    return dims


def net_to_onnx(net, outputs=None, dynamic_batch=True, dynamic_spatial=None):
    """onnx.ModelProto for a vggtool Net (built in the TEST phase, with its weights).

    outputs: blob names to expose (default: the net's outputs). dynamic_spatial: None = when the net has no
    InnerProduct layer."""
    onnx = _onnx()
    helper = onnx.helper
    _check_exportable(net)
    if dynamic_spatial is None:
        dynamic_spatial = default_dynamic_spatial(net)
    outputs = list(net.outputs if outputs is None else outputs)
    for name in outputs:
        if name not in net.blobs:
            raise VggtoolError(f"{net.source}: no blob named '{name}' to export as an output "
                               f"(blobs: {', '.join(net.blobs)})")
    g = Graph(onnx, net, net.last_writers())
    inputs = []
    for i, (name, layer) in enumerate(net.layer_dict.items()):
        g.layer_index = i
        tops = net.top_names[name]
        if layer.type == "Input":
            for top in tops:
                g.used.add(top)
                g.value[top] = top
                inputs.append(helper.make_tensor_value_info(
                    top, onnx.TensorProto.FLOAT, _input_dims(net, top, dynamic_batch, dynamic_spatial)))
            continue
        bottoms = [g.value[b] for b in net.bottom_names[name]]
        top_values = [g.top_name(t, name) for t in tops]
        convert = CONVERTERS[layer.type]
        if layer.type in NEEDS_BOTTOM_BLOBS:
            convert(g, layer, bottoms, top_values, net.bottom_vecs[i])
        else:
            convert(g, layer, bottoms, top_values)
        for t, v in zip(tops, top_values):
            g.value[t] = v
    graph_outputs = []
    for name in outputs:
        value = g.value[name]
        if value != name:  # an input blob asked for as an output
            g.node("Identity", [value], [g.unique(name + "_out")], f"{name}/output")
            value = g.nodes[-1].output[0]
        rank = net.blobs[name].num_axes  # dims left unknown here; shape inference names them below
        graph_outputs.append(helper.make_tensor_value_info(value, onnx.TensorProto.FLOAT, [None] * rank))
    opsets = [helper.make_opsetid("", OPSET)]
    _infer_output_shapes(onnx, g, inputs, graph_outputs, opsets)
    graph = helper.make_graph(g.nodes, net.name or "net", inputs, graph_outputs, initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=opsets, producer_name="vggtool",
                              doc_string=f"exported by vggtool from {net.source}")
    model.ir_version = helper.find_min_ir_version_for(opsets)
    return model


def _infer_output_shapes(onnx, g, inputs, outputs, opsets):
    """Fill the outputs' dims (static sizes, "batch", or unnamed) by ONNX shape inference, run on a copy
    of the graph whose weights are typed inputs instead of data (no copy of the weights)."""
    helper = onnx.helper
    typed = [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in g.initializers]
    skeleton = helper.make_model(helper.make_graph(g.nodes, "skeleton", inputs + typed, outputs),
                                 opset_imports=opsets)
    skeleton.ir_version = helper.find_min_ir_version_for(opsets)
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(skeleton).graph.output}
    for v in outputs:
        if v.name in inferred and inferred[v.name].type.tensor_type.HasField("shape"):
            v.type.CopyFrom(inferred[v.name].type)


def save_model(model, path):
    """Write an ONNX model atomically (protobuf's 2 GB limit applies: VGG-E is 0.6 GB)."""
    data = model.SerializeToString()
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def export(net_path, weights, onnx_path, convolutionalize=False, outputs=None, dynamic_spatial=None, check=True):
    """Export `net_path` (deploy prototxt) with `weights` (.caffemodel) to `onnx_path`; returns the model.

    convolutionalize: turn InnerProduct layers into convolutions first (vggtool.vgg.surgery), for dense
    evaluation at any input size. Every layer with parameters must find them in `weights`."""
    from ..net import Net
    onnx = _onnx()
    param = prototxt.read_net_param(net_path)
    trained = prototxt.read_net_param(weights, is_text=False)
    net = Net(param, phase="TEST", source=net_path)
    report = net.copy_from(trained)
    if report.missing:
        raise VggtoolError(f"{weights}: no weights for layer(s) {', '.join(report.missing)} of {net_path}; "
                           "the export would carry their untrained initial values")
    if convolutionalize:
        from ..vgg import surgery
        if not surgery.needs_surgery(param):
            raise VggtoolError(f"{net_path}: --convolutionalize: the net has no InnerProduct layer")
        del net
        _, net = surgery.convolutionalize(param, trained, net_path)
    del trained
    model = net_to_onnx(net, outputs=outputs, dynamic_spatial=dynamic_spatial)
    if check:
        onnx.checker.check_model(model)
    save_model(model, onnx_path)
    return model
