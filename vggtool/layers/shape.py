"""Shape layers: Flatten and Reshape (views sharing the bottom's data and diff, no copy), Concat, Slice."""
import math

from .base import Layer, register_layer



def axis_parts(array, axis, sizes):
    """Consecutive views of `array` along `axis` with the given sizes (Concat's inputs, Slice's outputs)."""
    idx, start = [slice(None)] * array.ndim, 0
    for size in sizes:
        idx[axis] = slice(start, start + size)
        yield array[tuple(idx)]
        start += size


class _ViewLayer(Layer):
    """A top that is a reshaped view of the bottom: data and diff are shared, so forward and backward
    have nothing to do (Caffe's ShareData/ShareDiff)."""

    exact_bottoms = 1
    exact_tops = 1

    def layer_setup(self, bottom, top):
        if top[0] is bottom[0]:
            raise self.error(f"{self.type} cannot run in place (give the top another name)")
        self.view_setup(bottom[0])

    def view_setup(self, bottom):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(self.top_shape(bottom[0]))
        top[0].share_data(bottom[0])
        top[0].share_diff(bottom[0])

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass


@register_layer("Flatten")
class FlattenLayer(_ViewLayer):
    def merge_obstacle(self):
        return self.batch_axis_obstacle(self.start)

    def top_shape(self, b):
        p = self.param.flatten_param
        start = self.start = b.canonical_axis(p.axis)
        end = b.canonical_axis(p.end_axis)
        if end < start:
            raise self.error(f"end_axis {p.end_axis} comes before axis {p.axis} for a bottom of shape {b.shape}")
        return b.shape[:start] + (b.count_range(start, end + 1),) + b.shape[end + 1:]


@register_layer("Reshape")
class ReshapeLayer(_ViewLayer):
    """reshape_param.shape replaces bottom axes [axis, axis + num_axes); a dim of 0 copies the bottom's
    dim at that position, one dim of -1 is inferred from the count."""

    def view_setup(self, bottom):
        dims = list(self.param.reshape_param.shape.dim)
        self.dims = dims
        self.copy_axes = [i for i, d in enumerate(dims) if d == 0]
        inferred = [i for i, d in enumerate(dims) if d == -1]
        if len(inferred) > 1:
            raise self.error("reshape_param.shape may contain at most one -1 (the inferred dim)")
        if any(d < -1 for d in dims):
            raise self.error(f"reshape_param.shape dims must be >= -1, got {dims}")
        self.inferred = inferred[0] if inferred else None

    def merge_obstacle(self):
        if self.start == 0 and self.dims[:1] != [0]:
            return "its new shape does not copy axis 0, the batch"
        return None

    def top_shape(self, b):
        p = self.param.reshape_param
        n = b.num_axes
        start = self.start = p.axis if p.axis >= 0 else n + p.axis + 1
        if not 0 <= start <= n:
            raise self.error(f"axis {p.axis} out of range for a bottom of shape {b.shape}")
        if p.num_axes < -1:
            raise self.error(f"num_axes must be >= -1, got {p.num_axes}")
        end = n if p.num_axes == -1 else start + p.num_axes
        if end > n:
            raise self.error(f"axis {p.axis} + num_axes {p.num_axes} exceeds the {n} axes of bottom shape {b.shape}")
        dims = list(self.dims)
        for i in self.copy_axes:
            if start + i >= end:
                raise self.error(f"new shape {self.dims} has a 0 at position {i} but there is no corresponding "
                                 f"bottom axis to copy (bottom shape {b.shape})")
            dims[i] = b.shape[start + i]
        shape = list(b.shape[:start]) + dims + list(b.shape[end:])
        if self.inferred is not None:
            known = math.prod(d for i, d in enumerate(dims) if i != self.inferred)
            known *= b.count_range(0, start) * b.count_range(end)
            if known == 0 or b.count % known:
                raise self.error(f"cannot infer the -1 dim of {self.dims}: bottom shape {b.shape} "
                                 f"({b.count} values) is not divisible by {known}")
            shape[start + self.inferred] = b.count // known
        if math.prod(shape) != b.count:
            raise self.error(f"new shape {tuple(shape)} ({math.prod(shape)} values) does not match bottom "
                             f"shape {b.shape} ({b.count} values)")
        return tuple(shape)


def _legacy_axis(layer, bottom, legacy_field, param):
    """Caffe's axis or its legacy *_dim (a non-negative axis, which wins when given)."""
    if param.HasField(legacy_field):
        axis = getattr(param, legacy_field)
        if axis >= bottom.num_axes:
            raise layer.error(f"{legacy_field} {axis} out of range for a bottom of shape {bottom.shape}")
        return axis
    try:
        return bottom.canonical_axis(param.axis)
    except Exception as e:
        raise layer.error(str(e)) from None


@register_layer("Concat")
class ConcatLayer(Layer):
    min_bottoms = 1
    exact_tops = 1

    def merge_obstacle(self):
        return self.batch_axis_obstacle(self.axis)

    def reshape(self, bottom, top):
        p = self.param.concat_param
        self.axis = _legacy_axis(self, bottom[0], "concat_dim", p)
        ref = bottom[0].shape
        for i, b in enumerate(bottom[1:], 1):
            s = b.shape
            if len(s) != len(ref) or s[:self.axis] != ref[:self.axis] or s[self.axis + 1:] != ref[self.axis + 1:]:
                raise self.error(f"bottoms must match except along axis {self.axis}: bottom 0 is {ref}, "
                                 f"bottom {i} is {s}")
        self.sizes = [b.shape[self.axis] for b in bottom]
        top[0].reshape(ref[:self.axis] + (sum(self.sizes),) + ref[self.axis + 1:])
        if len(bottom) == 1:  # Caffe: one bottom -> the top is a view of it
            top[0].share_data(bottom[0])
            top[0].share_diff(bottom[0])

    def _parts(self, array):
        return axis_parts(array, self.axis, self.sizes)

    def forward(self, bottom, top):
        if len(bottom) == 1:
            return
        for b, part in zip(bottom, self._parts(top[0].data)):
            part[...] = b.data

    def backward(self, top, propagate_down, bottom):
        if len(bottom) == 1:
            return
        for b, down, part in zip(bottom, propagate_down, self._parts(top[0].diff)):
            if down:
                b.diff[...] = part


@register_layer("Slice")
class SliceLayer(Layer):
    exact_bottoms = 1
    min_tops = 1

    def merge_obstacle(self):
        return self.batch_axis_obstacle(self.axis)

    def reshape(self, bottom, top):
        p = self.param.slice_param
        b = bottom[0]
        self.axis = _legacy_axis(self, b, "slice_dim", p)
        total = b.shape[self.axis]
        points = list(p.slice_point)
        if points:
            if len(points) != len(top) - 1:
                raise self.error(f"{len(points)} slice_point(s) for {len(top)} tops; give one fewer than the tops")
            bounds = [0] + points + [total]
            sizes = [hi - lo for lo, hi in zip(bounds, bounds[1:])]
            if any(s <= 0 for s in sizes):
                raise self.error(f"slice_point {points} must increase strictly within (0, {total}) "
                                 f"(the size of axis {self.axis})")
        else:
            if total % len(top):
                raise self.error(f"axis {self.axis} of size {total} cannot be split equally into {len(top)} tops; "
                                 "give slice_point")
            sizes = [total // len(top)] * len(top)
        self.sizes = sizes
        for t, size in zip(top, sizes):
            t.reshape(b.shape[:self.axis] + (size,) + b.shape[self.axis + 1:])
        if len(top) == 1:  # Caffe: one top -> a view of the bottom
            top[0].share_data(b)
            top[0].share_diff(b)

    def _parts(self, array):
        return axis_parts(array, self.axis, self.sizes)

    def forward(self, bottom, top):
        if len(top) == 1:
            return
        for t, part in zip(top, self._parts(bottom[0].data)):
            t.data[...] = part

    def backward(self, top, propagate_down, bottom):
        if len(top) == 1 or not propagate_down[0]:
            return
        for t, part in zip(top, self._parts(bottom[0].diff)):
            part[...] = t.diff
