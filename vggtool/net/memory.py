"""Where a Net's memory goes: every blob's data and diff, the parameters, the convolutions' forward
caches, the arrays layers keep between passes, and the net's shared scratch workspace.

`memory_report(net)` reads the net as it is now: buffers allocated so far (a blob's diff appears after
the first backward or loss set-up; a convolution's cache after its first TRAIN forward). Each buffer is
counted once, in the first row that holds it; a later row that views it shows 0 bytes and names the
row it shares with (split tops view their bottom's data, shared parameters their owner's storage).
An in-place top is its bottom's blob, so it is one row, naming the layers that write it in place.

In a net whose memory is pooled (Net.share_memory, vggtool.net.pool) one 'pool' row holds the arena;
the blob data and diffs, caches and workspace placed in it show 0 bytes and where in the pool they live
(bytes, offset, the slots of the step they are live in), and the report carries the pool's figures:
the arena, the sum of what it holds (what separate buffers would take) and the largest live set.

Not counted: temporaries a layer allocates and frees within one forward or backward, BLAS's own
buffers, and a data layer's batches waiting in its prefetch queue; the process's peak resident memory
(bench/bench_memory.py) includes them.
"""
from collections import namedtuple

import numpy as np

from .pool import describe, live_peak

# kind: 'blob', 'param', 'cache' (a convolution's forward data kept for dW), 'layer' (an array a layer
# keeps: pooling's argmax, dropout's mask, softmax's probabilities), 'workspace' (net-wide scratch) or
# 'pool' (the arena of a pooled net).
# data_bytes / diff_bytes: bytes of storage this row owns (0 when shared); diff_bytes None: not allocated.
MemoryRow = namedtuple("MemoryRow", "kind name shape data_bytes diff_bytes shared_with")

KINDS = ("blob", "param", "cache", "layer", "workspace", "pool")
# The pool's figures: arena bytes, the sum of the buffers it holds, the largest set live at one slot.
PoolFigures = namedtuple("PoolFigures", "arena_bytes sum_bytes live_peak_bytes")


class MemoryReport:
    """The rows of memory_report, with totals per kind."""

    def __init__(self, rows, caffe_data_bytes, pool=None):
        self.rows = rows
        self.caffe_data_bytes = caffe_data_bytes  # Caffe's "Memory required for data" for the current shapes
        self.pool = pool  # PoolFigures of a pooled net, else None

    def total(self, kind=None, part=None):
        """Bytes of `kind` rows (all rows when None); `part`: 'data', 'diff' or both (None)."""
        total = 0
        for row in self.rows:
            if kind is not None and row.kind != kind:
                continue
            if part in (None, "data"):
                total += row.data_bytes
            if part in (None, "diff"):
                total += row.diff_bytes or 0
        return total

    def totals(self):
        """(label, bytes) in table order: blob data, blob diff, param data, param diff, caches, layer
        arrays, workspace, pool, all."""
        return [("blob data", self.total("blob", "data")), ("blob diff", self.total("blob", "diff")),
                ("param data", self.total("param", "data")), ("param diff", self.total("param", "diff")),
                ("conv caches", self.total("cache")), ("layer arrays", self.total("layer")),
                ("workspace", self.total("workspace")), ("pool", self.total("pool")), ("all", self.total())]


def caffe_data_bytes(net):
    """Caffe's "Memory required for data": the bytes of every layer's top data at the current shapes,
    an in-place top counted again for each layer that writes it (Caffe's Net::Init counts so)."""
    return sum(top.count * top.dtype.itemsize for tops in net.top_vecs for top in tops)


def memory_report(net):
    """A MemoryReport of `net` (see the module's docstring)."""
    owners = {}  # id of a root buffer -> the row name that counted it
    keep = []  # the buffers whose ids are in owners, alive while the report is made
    rows = []

    def claim(array, label):
        """(bytes this row owns, the earlier owner's name or None) for `array` (None: not allocated)."""
        if array is None:
            return None, None
        root = _root(array)
        owner = owners.get(id(root))
        if owner is not None:
            return 0, owner
        owners[id(root)] = label
        keep.append(root)
        return int(root.nbytes), None

    pool = getattr(net, "memory_pool", None)
    figures = None
    if pool is not None and pool.arena is not None:
        arena = _root(pool.arena)
        owners[id(arena)] = "pool"
        keep.append(arena)
        intervals = [p.interval for p in pool.placed]
        figures = PoolFigures(pool.arena_bytes, pool.sum_bytes, live_peak(intervals))
        rows.append(MemoryRow("pool", "arena", f"{len(intervals)} regions", int(arena.nbytes), None,
                              f"planned {pool.arena_bytes:,} B for {pool.sum_bytes:,} B of buffers"))
    in_place = _in_place_writers(net)
    for name, blob in net.blobs.items():
        rows.append(_blob_row("blob", name, blob, claim, in_place.get(name, []), pool))
    seen_params = {}
    for layer_name, layer in zip(net.layer_names, net.layers):
        for k, blob in enumerate(layer.blobs):
            label = f"{layer_name} param {k}"
            if id(blob) in seen_params:  # shared by ParamSpec name: the owner's very Blob
                rows.append(MemoryRow("param", label, _shape(blob.shape), 0, 0 if blob.has_diff else None,
                                      seen_params[id(blob)]))
                continue
            seen_params[id(blob)] = label
            rows.append(_blob_row("param", label, blob, claim, []))
    for layer_name, layer in zip(net.layer_names, net.layers):
        cache = getattr(layer, "forward_cache", None)
        array = getattr(cache, "_array", None)
        if array is not None and cache.enabled:
            nbytes, shared = claim(array, f"{layer_name} cache")
            shared = describe(pool, "cache", layer_name) or shared
            rows.append(MemoryRow("cache", layer_name, f"{array.size} ({cache.algorithm})", nbytes, None, shared))
        for attr, value in sorted(vars(layer).items()):
            if _is_array(value, net) and id(_root(value)) not in owners:  # views of counted buffers: skip
                nbytes, _ = claim(value, f"{layer_name}.{attr}")
                rows.append(MemoryRow("layer", f"{layer_name}.{attr}", _shape(value.shape), nbytes, None, None))
    workspace = getattr(net, "_workspace", None)
    for (slot, dtype), buf in sorted(getattr(workspace, "_buffers", {}).items()):
        nbytes, shared = claim(buf, f"workspace {slot}")
        rows.append(MemoryRow("workspace", f"{slot} ({np.dtype(dtype).name})", str(buf.size), nbytes, None, shared))
    if pool is not None:
        rows.extend(_pooled_workspace_rows(pool))
    return MemoryReport(rows, caffe_data_bytes(net), figures)


def _pooled_workspace_rows(pool):
    """One row per workspace slot the pool holds: its largest region and the layer calls using it."""
    slots = {}
    for p in pool.placed:
        if p.interval.kind == "workspace":
            step, (slot, dtype) = p.interval.key
            largest, calls = slots.get((slot, dtype), (0, 0))
            slots[(slot, dtype)] = (max(largest, p.interval.nbytes), calls + 1)
    return [MemoryRow("workspace", f"{slot} ({np.dtype(dtype).name})", f"{largest // np.dtype(dtype).itemsize}",
                      0, None, f"pool: {calls} layer call(s), largest {largest:,} B")
            for (slot, dtype), (largest, calls) in sorted(slots.items())]


def _blob_row(kind, name, blob, claim, writers, pool=None):
    data, data_owner = claim(blob._data_buf, name)
    diff, diff_owner = claim(blob._diff_buf, f"{name} diff")
    shared = []
    if data_owner == "pool":
        shared.append("data " + (describe(pool, "data", name) or "pool"))
    elif data_owner:
        shared.append(f"data of {data_owner}")
    if diff_owner == "pool":
        shared.append("diff " + (describe(pool, "diff", name) or "pool"))
    elif diff_owner:
        shared.append(f"diff of {diff_owner.removesuffix(' diff')}")
    if writers:
        shared.append("in place: " + ", ".join(writers))
    return MemoryRow(kind, name, _shape(blob.shape), data, diff, "; ".join(shared) or None)


def _in_place_writers(net):
    """Blob name -> the layers whose top is that blob, taken as their bottom (in place)."""
    writers = {}
    for layer_name, bottoms, tops in zip(net.layer_names, net.bottom_vecs, net.top_vecs):
        for j, top in enumerate(tops):
            if j < len(bottoms) and bottoms[j] is top:
                writers.setdefault(net.top_names[layer_name][j], []).append(layer_name)
    return writers


def _root(array):
    """The array that owns `array`'s memory (a view's base, followed down)."""
    while isinstance(getattr(array, "base", None), type(array)):
        array = array.base
    return array


def _is_array(value, net):
    return isinstance(value, np.ndarray) or (net.xp is not np and isinstance(value, net.xp.ndarray))


def _shape(shape):
    return " ".join(map(str, shape)) if shape else "(scalar)"


def format_report(report):
    """The report as a text table: one line per row, then the totals and Caffe's data figure. The name and
    shape columns widen to their longest entry (at least 24 and 22 characters), so the byte columns line up."""
    name_w = max([24] + [len(row.name) for row in report.rows])
    shape_w = max([22] + [len(row.shape) for row in report.rows])
    lines = [f"{'kind':<9} {'name':<{name_w}} {'shape':<{shape_w}} {'data bytes':>14} {'diff bytes':>14}  shared with"]
    for row in report.rows:
        diff = "-" if row.diff_bytes is None else f"{row.diff_bytes:,}"
        lines.append(f"{row.kind:<9} {row.name:<{name_w}} {row.shape:<{shape_w}} {row.data_bytes:>14,} {diff:>14}  "
                     f"{row.shared_with or ''}".rstrip())
    for label, nbytes in report.totals():
        lines.append(f"{'total':<9} {label:<{name_w + 1 + shape_w}} {nbytes:>14,}  ({_human(nbytes)})")
    if report.pool is not None:
        f = report.pool
        lines.append(f"Pool (data, diffs, caches and workspace live at different moments share it): arena "
                     f"{f.arena_bytes:,} ({_human(f.arena_bytes)}) for {f.sum_bytes:,} ({_human(f.sum_bytes)}) of "
                     f"buffers; largest set live at once {f.live_peak_bytes:,} ({_human(f.live_peak_bytes)})")
    lines.append(f"Caffe's \"Memory required for data\" at these shapes (every top's data, in-place tops again): "
                 f"{report.caffe_data_bytes:,} ({_human(report.caffe_data_bytes)})")
    return "\n".join(lines)


def _human(nbytes):
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{nbytes} B"
