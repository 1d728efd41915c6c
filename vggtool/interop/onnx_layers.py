"""Caffe layers as ONNX nodes: one converter per layer type, in CONVERTERS. A converter adds its nodes
to the graph `g` (vggtool.interop.onnx.Graph) for one layer, from the ONNX values of its bottoms to
those of its tops; the semantics that need care are in vggtool.interop.onnx's docstring."""
import numpy as np

from ..errors import VggtoolError

INT64_MAX = np.iinfo(np.int64).max


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
    from ..layers.pooling import AVE, CEIL, MAX
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
    from ..layers.lrn import ACROSS_CHANNELS
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
    from ..layers.eltwise import MAX, PROD
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
