"""The memory a training step can share: blob data and diffs, convolution forward caches and layer
workspace that are live at different moments of the step get their bytes from one flat buffer (the arena).

Time in a step is 2L slots for L layers: layer i's forward is slot i, its backward slot 2L-1-i. Each
pooled buffer is live over an interval of slots:
- a blob's data: from its producer's forward to the last forward or backward that reads it (each layer
  says which of its blobs its backward reads: Layer.backward_reads_data). A convolution whose forward
  cache holds what dW needs does not read its input in backward, max pooling keeps its argmax and ReLU a
  mask of its positive outputs (1 byte an element, kept only where that lets the data go sooner);
- a blob's diff: from the backward of the last layer using the blob (which writes it first) to the
  backward of the first (its producer, which reads it last);
- a convolution's forward cache (columns or tiles kept for dW): from its forward to its backward, after
  which the layer drops it (ForwardCache.release);
- a layer call's workspace: that one slot (sizes recorded during the first step after a plan, when the
  workspace hands out buffers that are unmapped after each call).
`plan_offsets` places the intervals in the arena (largest first, each at the lowest offset clear of the
placed intervals that are live at the same time), so the arena is about the largest live set, not the sum.

Nets whose steps never overlap may share one arena (SharedArena): the CPU replicas of one lane of a
ParallelSolver run one after another, and nothing of a step is left in the arena that the next replica's
step would need (their parameter diffs, outputs and losses are kept out of the pool), so a lane holds one
arena instead of one per replica.

Kept out of the pool, with buffers of their own: parameters (the solver reads their diffs), what a layer
without bottoms produces (inputs: set before the forward; Net.backward returns their diffs), net outputs and loss-weighted tops, data or
diffs that blobs share (split tops view their bottom's data; Reshape and Flatten tops their bottom's data
and diff), and diffs that a backward would read before any backward of the step has written them (a
consumer that does not propagate down to its bottom): Caffe's zero-initialised diff, which a shared
buffer would not keep.
"""
from collections import namedtuple

import numpy as np

ALIGN = 64  # bytes: every region starts on a cache line (BLAS and the C kernels read them)

# kind: 'data', 'diff', 'cache' or 'workspace'; key: the blob name, the layer name, or (slot, buffer key)
Interval = namedtuple("Interval", "kind key nbytes first last")
Placed = namedtuple("Placed", "interval offset")


def _aligned(nbytes):
    return -(-int(nbytes) // ALIGN) * ALIGN


def plan_offsets(intervals):
    """([Placed], arena bytes): an offset for every interval such that two intervals live at the same
    slot never overlap in bytes."""
    placed = []
    order = sorted(intervals, key=lambda iv: (-iv.nbytes, iv.first, iv.last, iv.kind, str(iv.key)))
    for iv in order:
        size = _aligned(iv.nbytes)
        busy = sorted((p.offset, p.offset + _aligned(p.interval.nbytes)) for p in placed
                      if p.interval.first <= iv.last and iv.first <= p.interval.last)
        offset = 0
        for start, end in busy:
            if offset + size <= start:
                break
            offset = max(offset, end)
        placed.append(Placed(iv, offset))
    total = max((p.offset + _aligned(p.interval.nbytes) for p in placed), default=0)
    return placed, total


def live_peak(intervals):
    """The most bytes live at one slot: no placement can use less arena than this."""
    slots = {}
    for iv in intervals:
        for t in range(iv.first, iv.last + 1):
            slots[t] = slots.get(t, 0) + _aligned(iv.nbytes)
    return max(slots.values(), default=0)


def _shared_buffers(net, attr):
    """Names of the blobs whose `attr` buffer (_data_buf, _diff_buf) another blob holds too."""
    holders = {}
    for name, blob in net.blobs.items():
        buf = getattr(blob, attr)
        if buf is not None:
            holders.setdefault(id(buf), []).append(name)
    return {name for names in holders.values() if len(names) > 1 for name in names}


def _inputs(net):
    """The blobs that layers without bottoms produce (Input, Data: filled before or by the forward)."""
    return {t for i, name in enumerate(net.layer_names) if not net.bottom_vecs[i] for t in net.top_names[name]}


def poolable_data(net):
    """{blob name: (first slot, last slot)} of the blob data the pool may hold: from the forward of the
    layer producing it to the last forward or backward that reads it. Kept out: what a layer without
    bottoms produces (inputs set before the forward), net outputs, loss-weighted tops and data that
    blobs share (split tops, Reshape)."""
    n = len(net.layers)
    shared = _shared_buffers(net, "_data_buf")
    outputs = set(net.outputs)
    span = {}
    for i, (name, layer) in enumerate(zip(net.layer_names, net.layers)):
        bottoms, tops = net.bottom_vecs[i], net.top_vecs[i]
        for b in net.bottom_names[name] + net.top_names[name]:
            first, last = span.get(b, (i, i))
            span[b] = (min(first, i), max(last, i))
        if net.layer_need_backward[i] or net.runs_every_backward:
            read = {id(blob) for blob in layer.backward_reads_data(bottoms, tops)}
            for b, blob in zip(net.bottom_names[name] + net.top_names[name], list(bottoms) + list(tops)):
                if id(blob) in read:
                    span[b] = (span[b][0], max(span[b][1], 2 * n - 1 - i))
    inputs = _inputs(net)
    return {b: s for b, s in span.items()
            if b not in outputs and b not in shared and b not in inputs
            and not net.blob_loss_weights.get(b)}


def poolable_diffs(net):
    """{blob name: (first slot, last slot)} of the blob diffs the pool may hold (see the module docstring)."""
    n = len(net.layers)
    users = {}  # blob name -> positions of the layers that have it as a bottom or a top
    for i, name in enumerate(net.layer_names):
        for b in net.bottom_names[name] + net.top_names[name]:
            users.setdefault(b, set()).add(i)
    shared = _shared_buffers(net, "_diff_buf")
    outputs = set(net.outputs) | _inputs(net)  # Net.backward() hands out the inputs' diffs
    result = {}
    for name, layers in users.items():
        if name in outputs or name in shared or net.blob_loss_weights.get(name):
            continue
        last = max(layers)
        last_name = net.layer_names[last]
        bottoms, tops = net.bottom_names[last_name], net.top_names[last_name]
        if name in tops:  # the last user writes the blob in forward: its backward would read the diff first
            continue
        written = net.layer_need_backward[last] and all(
            net.bottom_need_backward[last][j] for j, b in enumerate(bottoms) if b == name)
        if written:
            result[name] = (2 * n - 1 - last, 2 * n - 1 - min(layers))
    return result


class SharedArena:
    """The arena a net's pool plans into, the largest it has asked for; several nets whose steps never
    overlap may plan into one (see the module docstring). When one needs more, a larger buffer replaces it
    and the others re-plan into it before their next forward (MemoryPool.stale); the old one goes once no
    net views it."""

    def __init__(self, device):
        self.device = device
        self.buffer = None

    def at_least(self, nbytes):
        if self.buffer is None or self.buffer.size < nbytes:
            self.buffer = None
            self.buffer = _aligned_bytes(self.device, nbytes)
        return self.buffer


class MemoryPool:
    """The arena of one net and where each pooled buffer lives in it, for the shapes of the last plan.
    `shared`: a SharedArena that other nets plan into too; without one the pool has one of its own."""

    def __init__(self, net, shared=None):
        self.net = net
        self.arena_source = shared if shared is not None else SharedArena(net.device)
        self.arena = None  # the flat uint8 buffer (aligned view), or None before the first plan
        self.placed = []  # [Placed] of the last plan
        self.arena_bytes = 0  # bytes the last plan needs
        self.signature = None  # the blob shapes the plan is for
        self.sum_bytes = 0  # what the pooled buffers would take with a buffer each
        self.base_bytes = 0  # the arena the last plan would need without forward caches
        self.pooled_diffs = set()  # names of the blobs whose diffs are in the arena
        self.pooled_data = set()  # ... and whose data are
        self.forward_only_data = set()  # pooled data whose last reader is in the forward

    def shape_signature(self):
        return tuple(blob.shape for blob in self.net.blobs.values())

    def stale(self):
        """Whether shapes changed since the plan, or the workspace met a request the plan lacks."""
        ws = getattr(self.net, "_workspace", None)
        moved = self.arena is not self.arena_source.buffer  # a net sharing it grew it
        return self.signature != self.shape_signature() or (ws is not None and ws.needs_plan) or moved

    def intervals(self):
        """Diffs, caches and workspace (the forward caches as the layers planned them at reshape)."""
        net = self.net
        n = len(net.layers)
        out = []
        for name, (first, last) in poolable_diffs(net).items():
            blob = net.blobs[name]
            out.append(Interval("diff", name, blob.count * blob.dtype.itemsize, first, last))
        for i, layer in enumerate(net.layers):
            cache = getattr(layer, "forward_cache", None)
            if cache is not None and cache.enabled and cache.nbytes:
                out.append(Interval("cache", layer.name, cache.nbytes, i, 2 * n - 1 - i))
        ws = getattr(net, "_workspace", None)
        if ws is not None:
            for (slot, key), nbytes in ws.recorded.items():
                out.append(Interval("workspace", (slot, key), nbytes, slot, slot))
        return out

    def plan(self):
        """Place every pooled buffer for the current shapes and point the blobs, caches and workspace at
        their regions. Forward caches are marked empty (their bytes may move): call between steps."""
        net = self.net
        intervals = self._within_cache_budget(self.intervals(), net.settings.conv_cache_bytes)
        spans = self._data_with_masks() if net.settings.release_data else self._no_masks()
        for name, (first, last) in spans.items():  # after the caches are decided
            blob = net.blobs[name]
            intervals.append(Interval("data", name, blob.count * blob.dtype.itemsize, first, last))
        self.placed, self.arena_bytes = plan_offsets(intervals)
        self.sum_bytes = sum(_aligned(iv.nbytes) for iv in intervals)
        self.signature = self.shape_signature()
        self.arena = None  # the old arena goes once nothing views it (when the source must grow)
        self.arena = self.arena_source.at_least(self.arena_bytes)
        regions = {}
        for p in self.placed:
            iv = p.interval
            regions[(iv.kind, iv.key)] = self.arena[p.offset:p.offset + iv.nbytes]
        layers = {layer.name: layer for layer in net.layers}
        pooled, released = set(), set()
        for (kind, key), region in regions.items():
            if kind == "diff":
                blob = net.blobs[key]
                blob.use_diff_storage(region.view(blob.dtype))
                pooled.add(key)
            elif kind == "data":
                blob = net.blobs[key]
                blob.use_data_storage(region.view(blob.dtype))
                released.add(key)
            elif kind == "cache":
                layer = layers[key]
                layer.forward_cache.use_storage(region.view(layer.dtype))
        self.pooled_diffs, self.pooled_data = pooled, released
        self.forward_only_data = {name for name, (_, last) in spans.items() if last < len(net.layers)}
        for blob in net.blobs.values():  # re-planned: nothing is marked until the next pass
            blob.released = blob.diff_released = None
        for layer in net.layers:
            cache = getattr(layer, "forward_cache", None)
            if cache is not None:
                cache.pooled = (("cache", layer.name) in regions)
                cache.valid = False
        ws = getattr(net, "_workspace", None)
        if ws is not None:
            ws.use_regions({key: region for (kind, key), region in regions.items() if kind == "workspace"})

    def _no_masks(self):
        for layer in self.net.layers:
            if hasattr(layer, "keep_mask"):
                layer.keep_mask, layer.positive = False, None
        return {}

    def _data_with_masks(self):
        """poolable_data, with each ReLU keeping a mask of its positive outputs (1 byte an element) where
        that lets its blob's data go sooner; elsewhere its backward reads the data as usual."""
        net = self.net
        relus = [(i, layer) for i, layer in enumerate(net.layers) if hasattr(layer, "keep_mask")]
        for _, layer in relus:
            layer.keep_mask = True
        spans = poolable_data(net)
        for i, layer in relus:
            layer.keep_mask = False
            without = poolable_data(net)
            top = net.top_names[layer.name][0]
            if top in spans and without.get(top) != spans[top]:
                layer.keep_mask = True
            else:
                layer.positive = None
                spans = without
        return spans

    def _within_cache_budget(self, intervals, limit):
        """The intervals with the forward caches that add at most `limit` bytes to the planned arena
        (taken in forward order while they fit); the layers of the caches left out keep none."""
        fixed = [iv for iv in intervals if iv.kind != "cache"]
        caches = [iv for iv in intervals if iv.kind == "cache"]
        base = plan_offsets(fixed)[1]
        self.base_bytes = base  # the arena without any cache
        kept = caches
        if caches and plan_offsets(intervals)[1] - base > limit:
            kept = []
            for iv in caches:
                if plan_offsets(fixed + kept + [iv])[1] - base <= limit:
                    kept.append(iv)
        names = {iv.key for iv in kept}
        for layer in self.net.layers:
            cache = getattr(layer, "forward_cache", None)
            if cache is not None and cache.enabled and layer.name not in names:
                cache.plan(cache.algorithm, cache.per_image, False)
        return fixed + kept

    def owns(self, array):
        return self.arena is not None and _base(array) is _base(self.arena)

    def where(self, kind, key):
        """(offset, bytes, first slot, last slot) of a pooled buffer, or None."""
        for p in self.placed:
            if (p.interval.kind, p.interval.key) == (kind, key):
                return p.offset, p.interval.nbytes, p.interval.first, p.interval.last
        return None


def _base(array):
    while getattr(array, "base", None) is not None and isinstance(array.base, type(array)):
        array = array.base
    return array


def _aligned_bytes(device, nbytes):
    """A uint8 array of `nbytes` whose first byte is ALIGN-aligned (NumPy aligns large blocks to 16)."""
    xp = device.xp
    with device:
        raw = xp.empty(max(int(nbytes), 1) + ALIGN, dtype=np.uint8)
    address = raw.ctypes.data if xp is np else raw.data.ptr
    start = (-address) % ALIGN
    return raw[start:start + max(int(nbytes), 1)]


def describe(pool, kind, key):
    """'pool: N bytes at offset O, live L1..L2' for the report, or None when (kind, key) is not pooled."""
    where = pool.where(kind, key) if pool is not None else None
    if where is None:
        return None
    offset, nbytes, first, last = where
    return f"pool: {nbytes:,} B at {offset:,}, slots {first}-{last}"
