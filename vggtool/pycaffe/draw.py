"""The net as a graph picture (pycaffe's caffe.draw, drawn with matplotlib: no Graphviz needed).

Layers are boxes coloured by type (convolutions red, pooling orange, inner products purple, others blue,
in-place neuron layers green), blobs grey; edges carry the output count (or batch size) as Caffe's
draw_net.py labels them. rankdir 'LR' (left to right), 'RL', 'TB' (top down) or 'BT'. The layout puts
each node one rank after the furthest of its inputs.
"""
import io as _io
import os

from ..errors import VggtoolError
from ..proto import caffe_pb2

LAYER_COLORS = {"Convolution": "#FF5050", "Deconvolution": "#FF5050", "Pooling": "#FF9900",
                "InnerProduct": "#CC33FF"}
DEFAULT_LAYER_COLOR = "#6495ED"
NEURON_LAYER_COLOR = "#90EE90"
BLOB_COLOR = "#E0E0E0"


def get_pooling_types_dict():
    """{pooling enum value: name}, e.g. {0: 'MAX', 1: 'AVE', 2: 'STOCHASTIC'}."""
    desc = caffe_pb2.PoolingParameter.PoolMethod.DESCRIPTOR
    return {v.number: v.name for v in desc.values}


def get_edge_label(layer):
    """The label of a layer's output edges: the batch size of data layers, num_output of convolutions and
    inner products, else nothing."""
    if layer.type == "Data":
        return f"Batch {layer.data_param.batch_size}"
    if layer.type == "ImageData":
        return f"Batch {layer.image_data_param.batch_size}"
    if layer.type == "MemoryData":
        return f"Batch {layer.memory_data_param.batch_size}"
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return ""


def get_layer_lr_mult(layer):
    """(weight lr_mult, bias lr_mult) of a Convolution/Deconvolution/InnerProduct layer (1 when unset)."""
    weight, bias = 1.0, 1.0
    if len(layer.param) > 0:
        weight = layer.param[0].lr_mult
    if len(layer.param) > 1:
        bias = layer.param[1].lr_mult
    return weight, bias


def _first(values, default):
    return values[0] if len(values) else default


def get_layer_label(layer, rankdir, display_lrm=False):
    """The text of a layer's node: name, (type), and for convolutions and pools kernel, stride, pad."""
    sep = " " if rankdir in ("TB", "BT") else "\n"
    if layer.type in ("Convolution", "Deconvolution"):
        p = layer.convolution_param
        label = (f"{layer.name}{sep}({layer.type}){sep}kernel size: {_first(p.kernel_size, 1)}{sep}"
                 f"stride: {_first(p.stride, 1)}{sep}pad: {_first(p.pad, 0)}")
    elif layer.type == "Pooling":
        p = layer.pooling_param
        label = (f"{layer.name}{sep}(Pooling {get_pooling_types_dict()[p.pool]}){sep}kernel size: "
                 f"{p.kernel_size}{sep}stride: {p.stride}{sep}pad: {p.pad}")
    else:
        label = f"{layer.name}{sep}({layer.type})"
    if display_lrm and layer.type in ("Convolution", "Deconvolution", "InnerProduct"):
        w, b = get_layer_lr_mult(layer)
        label += f"{sep}lr mult: {w:g}, {b:g}"
    return label


def choose_color_by_layertype(layertype):
    return LAYER_COLORS.get(layertype, DEFAULT_LAYER_COLOR)


def _included(layer, phase):
    if phase is None:
        return True
    included = len(layer.include) == 0
    for rule in layer.include:
        included = included or rule.phase == phase
    for rule in layer.exclude:
        included = included and rule.phase != phase
    return included


def get_graph(caffe_net, rankdir="LR", label_edges=True, phase=None, display_lrm=False):
    """The picture's graph: (nodes, edges). nodes: {id: (label, colour, is_blob)}; edges: [(src, dst,
    label)]. An in-place layer sits on its blob's edge instead of looping back to it."""
    nodes, edges = {}, []
    current = {}  # blob name -> the node that holds its latest value
    for i, layer in enumerate(caffe_net.layer):
        if not _included(layer, phase):
            continue
        node = f"layer{i}:{layer.name}"
        in_place = len(layer.bottom) == 1 and len(layer.top) == 1 and layer.bottom[0] == layer.top[0]
        color = NEURON_LAYER_COLOR if in_place else choose_color_by_layertype(layer.type)
        nodes[node] = (get_layer_label(layer, rankdir, display_lrm), color, False)
        for bottom in layer.bottom:
            if bottom not in current:
                current[bottom] = f"blob:{bottom}"
                nodes[current[bottom]] = (bottom, BLOB_COLOR, True)
            edges.append((current[bottom], node, ""))
        label = get_edge_label(layer) if label_edges else ""
        for top in layer.top:
            if top in layer.bottom:
                current[top] = node
                continue
            blob = f"blob{i}:{top}"
            nodes[blob] = (top, BLOB_COLOR, True)
            edges.append((node, blob, label))
            current[top] = blob
    return nodes, edges


def _layout(nodes, edges):
    """{node: (rank, slot)}: rank = longest path from a source; slots in order of appearance."""
    rank = {n: 0 for n in nodes}
    for src, dst, _ in edges:  # edges come in topological order (layers in net order)
        rank[dst] = max(rank[dst], rank[src] + 1)
    slots, pos = {}, {}
    for n in nodes:
        r = rank[n]
        pos[n] = (r, slots.get(r, 0))
        slots[r] = slots.get(r, 0) + 1
    return pos, max(slots.values(), default=1), max(rank.values(), default=0) + 1


def draw_net(caffe_net, rankdir="LR", ext="png", phase=None, display_lrm=False):
    """The picture of a NetParameter as image bytes in format `ext` (png, pdf, svg, jpg, ...)."""
    if rankdir not in ("LR", "RL", "TB", "BT"):
        raise VggtoolError(f"rankdir must be LR, RL, TB or BT, got '{rankdir}'")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nodes, edges = get_graph(caffe_net, rankdir, phase=phase, display_lrm=display_lrm)
    pos, width, depth = _layout(nodes, edges)
    horizontal = rankdir in ("LR", "RL")
    step_rank, step_slot = (2.2, 1.3) if horizontal else (1.2, 2.6)

    def xy(n):
        r, s = pos[n]
        r = (depth - 1 - r) if rankdir in ("RL", "BT") else r
        centre = s - (sum(1 for p in pos.values() if p[0] == pos[n][0]) - 1) / 2
        return (r * step_rank, -centre * step_slot) if horizontal else (centre * step_slot, -r * step_rank)

    size = (depth * step_rank + 1, width * step_slot + 1) if horizontal else (width * step_slot + 1, depth * step_rank + 1)
    fig = plt.figure(figsize=(min(size[0], 200), min(size[1], 200)))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_axis_off()
    for src, dst, label in edges:
        (x0, y0), (x1, y1) = xy(src), xy(dst)
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="-|>", color="#404040", shrinkA=18, shrinkB=18, lw=0.8))
        if label:  # beside the arrow's middle, not on it
            dx, dy = (0.0, 0.12) if horizontal else (0.12, 0.0)
            ax.text((x0 + x1) / 2 + dx, (y0 + y1) / 2 + dy, label, fontsize=7, color="#202020",
                    ha="center" if horizontal else "left", va="bottom" if horizontal else "center")
    for n, (label, color, is_blob) in nodes.items():
        x, y = xy(n)
        box = dict(boxstyle="round,pad=0.4" if is_blob else "square,pad=0.4", facecolor=color,
                   edgecolor="#404040", lw=0.6)
        ax.text(x, y, label, fontsize=7, ha="center", va="center", bbox=box)
    xs = [xy(n)[0] for n in nodes] or [0]
    ys = [xy(n)[1] for n in nodes] or [0]
    ax.set_xlim(min(xs) - 1.2, max(xs) + 1.2)
    ax.set_ylim(min(ys) - 1.0, max(ys) + 1.0)
    buf = _io.BytesIO()
    fig.savefig(buf, format=ext, dpi=100)
    plt.close(fig)
    return buf.getvalue()


def draw_net_to_file(caffe_net, filename, rankdir="LR", phase=None, display_lrm=False):
    """Write the picture of a NetParameter to `filename` (format from its extension), atomically."""
    from ..atomic_files import atomic_write_bytes

    ext = os.path.splitext(str(filename))[1][1:].lower() or "png"
    atomic_write_bytes(filename, draw_net(caffe_net, rankdir, ext, phase, display_lrm))
