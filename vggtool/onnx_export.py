"""Export a Caffe net (prototxt + weights) to an ONNX model, layer by layer, with the `onnx` package's helpers.

The graph is built for opset 17. Blob names follow Caffe: the last value written to a blob carries the blob's
name (so after `relu1_1` runs in place, "conv1_1" is the rectified output, as in `net.blobs`), earlier
values are named "blob@layer". Graph inputs are the Input layer's tops, with a dynamic batch dimension
("batch") and, when the net has no InnerProduct layer (a convolutionalised net), dynamic "height" and
"width"; graph outputs are the net's outputs (blobs no layer consumes), or the blobs asked for.

Layer semantics that need care (each checked against onnxruntime in tests/test_onnx_export.py):
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
"""
import os

import numpy as np

from .io import prototxt
from .backend import to_numpy
from .errors import VggtoolError

OPSET = 17
INT64_MAX = np.iinfo(np.int64).max


def _onnx():
    try:
        import onnx
    except ImportError:
        raise VggtoolError("ONNX export needs the 'onnx' package: pip install onnx "
                           "(or pip install 'vggtool[convert]')") from None
    return onnx


class _Graph:
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


def _error(net, layer, message):
    return VggtoolError(f"{net.source}: layer '{layer.name}' ({layer.type}): {message}")


def _pair_attrs(layer):
    g = layer.geom
    return dict(kernel_shape=[g.kh, g.kw], strides=[g.sh, g.sw], pads=[g.ph, g.pw, g.ph, g.pw],
                dilations=[g.dh, g.dw])


def _convolution(g, layer, bottoms, tops):
    weight = g.param(layer, 0, "weight")
    inputs = [weight] + ([g.param(layer, 1, "bias")] if layer.bias_term else [])
    for x, top in zip(bottoms, tops):
        g.node("Conv", [x] + inputs, [top], layer.name, group=layer.group, **_pair_attrs(layer))


def _inner_product(g, layer, bottoms, tops, bottom_blobs):
    (x,), (top,) = bottoms, tops
    name, axis = layer.name, layer.axis
    rank = bottom_blobs[0].num_axes
    bias = [g.param(layer, 1, "bias")] if layer.bias_term else []
    if axis == 1:
        if rank != 2:
            flat = g.tmp(name, "flatten")
            g.node("Flatten", [x], [flat], f"{name}/Flatten", axis=1)
            x = flat
        g.node("Gemm", [x, g.param(layer, 0, "weight")] + bias, [top], name, transB=0 if layer.transpose else 1)
        return
    # axis > 1 (or 0): keep dims [0, axis), flatten the rest into K, multiply by W^T (K, N).
    lead = g.shape_slice(name, x, 0, axis)
    shape = g.tmp(name, "shape")
    g.node("Concat", [lead, g.int64s(name, "minus1", [-1])], [shape], f"{name}/Concat", axis=0)
    flat = g.tmp(name, "flat")
    g.node("Reshape", [x, shape], [flat], f"{name}/Reshape")
    weight = g.param(layer, 0, "weight", transform=None if layer.transpose else "T")
    if bias:
        prod = g.tmp(name, "matmul")
        g.node("MatMul", [flat, weight], [prod], f"{name}/MatMul")
        g.node("Add", [prod] + bias, [top], name)
    else:
        g.node("MatMul", [flat, weight], [top], name)


def _pooling(g, layer, bottoms, tops):
    from .layers.pooling import AVE, CEIL, MAX
    if len(tops) != 1:
        raise _error(g.net, layer, "the argmax mask top has no ONNX equivalent; export the layer with one top")
    (x,), (top,) = bottoms, tops
    op = "Max" if layer.method == MAX else "Average"
    if layer.global_pooling:
        g.node(f"Global{op}Pool", [x], [top], layer.name)
        return
    ceil = layer.round_mode == CEIL
    if ceil and not (layer.ph or layer.pw) and (layer.kh < layer.sh or layer.kw < layer.sw):
        raise _error(g.net, layer, f"kernel {layer.kh}x{layer.kw} smaller than stride {layer.sh}x{layer.sw} "
                     "without padding in CEIL mode: Caffe keeps an empty last window there, which ONNX drops")
    attrs = dict(kernel_shape=[layer.kh, layer.kw], strides=[layer.sh, layer.sw],
                 pads=[layer.ph, layer.pw, layer.ph, layer.pw], ceil_mode=int(ceil))
    if layer.method == AVE:
        attrs["count_include_pad"] = 1
    g.node(f"{op}Pool", [x], [top], layer.name, **attrs)


def _lrn(g, layer, bottoms, tops):
    from .layers.lrn import ACROSS_CHANNELS
    (x,), (top,) = bottoms, tops
    name = layer.name
    if layer.region == ACROSS_CHANNELS:
        g.node("LRN", [x], [top], name, size=layer.size, alpha=float(layer.alpha), beta=float(layer.beta),
               bias=float(layer.k))
        return
    # WITHIN_CHANNEL: x * (1 + alpha * mean of x^2 over a size x size window)^-beta
    pad = (layer.size - 1) // 2
    sq, avg, scaled, base, power = (g.tmp(name, w) for w in ("sq", "avg", "scaled", "base", "pow"))
    g.node("Mul", [x, x], [sq], f"{name}/Square")
    g.node("AveragePool", [sq], [avg], f"{name}/AveragePool", kernel_shape=[layer.size] * 2, strides=[1, 1],
           pads=[pad] * 4, count_include_pad=1)
    g.node("Mul", [avg, g.const(f"{name}/alpha", np.float32(layer.alpha))], [scaled], f"{name}/Alpha")
    g.node("Add", [scaled, g.const(f"{name}/one", np.float32(1))], [base], f"{name}/Add")
    g.node("Pow", [base, g.const(f"{name}/minus_beta", np.float32(-layer.beta))], [power], f"{name}/Pow")
    g.node("Mul", [x, power], [top], name)


def _relu(g, layer, bottoms, tops):
    if layer.slope:
        g.node("LeakyRelu", bottoms, tops, layer.name, alpha=float(layer.slope))
    else:
        g.node("Relu", bottoms, tops, layer.name)


def _unary(op):
    def convert(g, layer, bottoms, tops):
        g.node(op, bottoms, tops, layer.name)
    return convert


def _identity(g, layer, bottoms, tops):
    for i, top in enumerate(tops):
        g.node("Identity", [bottoms[0]], [top], layer.name if i == 0 else f"{layer.name}_{i}")


def _softmax(g, layer, bottoms, tops):
    g.node("Softmax", bottoms, tops, layer.name, axis=layer.axis)


def _flatten(g, layer, bottoms, tops, bottom_blobs):
    (x,), (top,) = bottoms, tops
    b = bottom_blobs[0]
    p = layer.param.flatten_param
    start, end = b.canonical_axis(p.axis), b.canonical_axis(p.end_axis)
    if start == 1 and end == b.num_axes - 1:
        g.node("Flatten", [x], [top], layer.name, axis=1)
        return
    parts = [g.shape_slice(layer.name, x, 0, start), g.int64s(layer.name, "minus1", [-1])]
    if end + 1 < b.num_axes:
        parts.append(g.shape_slice(layer.name, x, end + 1))
    shape = g.tmp(layer.name, "shape")
    g.node("Concat", parts, [shape], f"{layer.name}/Concat", axis=0)
    g.node("Reshape", [x, shape], [top], layer.name)


def _reshape(g, layer, bottoms, tops, bottom_blobs):
    """Caffe's reshape_param replaces axes [axis, axis + num_axes); its 0s copy the bottom's dim at that
    position of the replaced range (not of the whole shape, as ONNX's 0 would), so they are resolved here
    into Shape slices and the target shape is concatenated (allowzero=1: no dim is reinterpreted)."""
    (x,), (top,) = bottoms, tops
    p = layer.param.reshape_param
    n = bottom_blobs[0].num_axes
    start = p.axis if p.axis >= 0 else n + p.axis + 1
    end = n if p.num_axes == -1 else start + p.num_axes
    name = layer.name
    parts = []
    if start > 0:
        parts.append(g.shape_slice(name, x, 0, start))
    literal = []
    for i, d in enumerate(layer.dims):
        if d == 0:
            if literal:
                parts.append(g.int64s(name, "dims", literal))
                literal = []
            parts.append(g.shape_slice(name, x, start + i, start + i + 1))
        else:
            literal.append(d)
    if literal:
        parts.append(g.int64s(name, "dims", literal))
    if end < n:
        parts.append(g.shape_slice(name, x, end))
    shape = g.tmp(name, "shape")
    g.node("Concat", parts, [shape], f"{name}/Concat", axis=0)
    g.node("Reshape", [x, shape], [top], name, allowzero=1)


def _concat(g, layer, bottoms, tops):
    if len(bottoms) == 1:
        return _identity(g, layer, bottoms, tops)
    g.node("Concat", bottoms, tops, layer.name, axis=layer.axis)


def _slice(g, layer, bottoms, tops):
    (x,) = bottoms
    if len(tops) == 1:
        return _identity(g, layer, bottoms, tops)
    points = list(layer.param.slice_param.slice_point)
    if not points:  # equal parts (the axis may be dynamic): Split without sizes, opset 13-17
        g.node("Split", [x], tops, layer.name, axis=layer.axis)
        return
    bounds = [0] + points + [INT64_MAX]
    for i, top in enumerate(tops):
        g.node("Slice", [x, g.int64s(layer.name, f"start{i}", [bounds[i]]), g.int64s(layer.name, f"end{i}", [bounds[i + 1]]),
                         g.int64s(layer.name, f"axis{i}", [layer.axis])], [top], f"{layer.name}/{i}")


def _eltwise(g, layer, bottoms, tops):
    from .layers.eltwise import MAX, PROD, SUM
    name = layer.name
    if layer.op == PROD:
        acc = bottoms[0]
        for i, b in enumerate(bottoms[1:], 1):
            out = tops[0] if i == len(bottoms) - 1 else g.tmp(name, f"prod{i}")
            g.node("Mul", [acc, b], [out], f"{name}/Mul{i}")
            acc = out
    elif layer.op == MAX:
        g.node("Max", bottoms, tops, name)
    else:
        terms = []
        for i, (b, c) in enumerate(zip(bottoms, layer.coeffs)):
            if c == 1:
                terms.append(b)
                continue
            scaled = g.tmp(name, f"scaled{i}")
            g.node("Mul", [b, g.const(f"{name}/coeff{i}", np.float32(c))], [scaled], f"{name}/Coeff{i}")
            terms.append(scaled)
        g.node("Sum", terms, tops, name)


def _silence(g, layer, bottoms, tops):
    pass


# Caffe type -> converter(graph, layer, bottom values, top values[, bottom blobs])
CONVERTERS = {
    "Convolution": _convolution,
    "InnerProduct": _inner_product,
    "Pooling": _pooling,
    "LRN": _lrn,
    "ReLU": _relu,
    "Sigmoid": _unary("Sigmoid"),
    "TanH": _unary("Tanh"),
    "Dropout": _identity,
    "Split": _identity,
    "Softmax": _softmax,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Concat": _concat,
    "Slice": _slice,
    "Eltwise": _eltwise,
    "Silence": _silence,
}
NEEDS_BOTTOM_BLOBS = {"InnerProduct", "Flatten", "Reshape"}


def _last_writers(net):
    last = {}
    for i, name in enumerate(net.layer_names):
        for top in net.top_names[name]:
            last[top] = i
    return last


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
    g = _Graph(onnx, net, _last_writers(net))
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

    convolutionalize: turn InnerProduct layers into convolutions first (vggtool.surgery), for dense
    evaluation at any input size. Every layer with parameters must find them in `weights`."""
    from .net import Net
    onnx = _onnx()
    param = prototxt.read_net_param(net_path)
    trained = prototxt.read_net_param(weights, is_text=False)
    net = Net(param, phase="TEST", source=net_path)
    report = net.copy_from(trained)
    if report.missing:
        raise VggtoolError(f"{weights}: no weights for layer(s) {', '.join(report.missing)} of {net_path}; "
                           "the export would carry their untrained initial values")
    if convolutionalize:
        from . import surgery
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
