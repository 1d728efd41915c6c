"""Blob: an N-d array of data and one of gradients (diff), like Caffe's Blob.

Storage is a flat buffer that only grows: reshaping to a size that fits reuses it, so a net that is
reshaped every iteration (or per image in dense evaluation) does not reallocate. The diff buffer is
allocated on first use, so nets that never run backward pay nothing for it.
"""
import math

import numpy as np

from .backend import CPU, to_numpy
from .errors import VggtoolError


MAX_AXES = 32  # Caffe's kMaxBlobAxes
MAX_DIM = 2**31 - 1  # Caffe's dimensions are ints
MAX_ELEMENTS = 2**60


class BlobShapeError(VggtoolError):
    """A shape no blob can take (negative, too many axes, more bytes than the device holds). The net adds
    the layer's name (Net._layer_context)."""


def _as_shape(args):
    if len(args) == 1 and not isinstance(args[0], (int, np.integer)):
        arg = args[0]
        if hasattr(arg, "dim"):  # BlobShape message
            arg = list(arg.dim)
        args = tuple(arg)
    shape = tuple(int(d) for d in args)
    if len(shape) > MAX_AXES:
        raise BlobShapeError(f"shape of {len(shape)} axes; a blob has at most {MAX_AXES} (as in Caffe)")
    if any(d < 0 for d in shape):
        raise BlobShapeError(f"negative dimension in shape {shape}")
    if any(d > MAX_DIM for d in shape):
        raise BlobShapeError(f"dimension above {MAX_DIM} (Caffe's int) in shape {shape}")
    if math.prod(d for d in shape if d) > MAX_ELEMENTS:  # even an empty view of it is refused by NumPy
        raise BlobShapeError(f"shape {shape} has more elements than any array can hold")
    return shape


class Blob:
    def __init__(self, shape=(), dtype=np.float32, device=CPU, name=None):
        self.name = name  # for messages (the net's blob name, or "<layer> param k")
        self.device = device
        self.dtype = np.dtype(dtype)
        self._data_buf = None
        self._diff_buf = None
        self._data = None
        self._diff = None
        self._shape = None
        self.reshape(shape)

    # -- shape -------------------------------------------------------------------------------------------
    @property
    def shape(self):
        return self._shape

    @property
    def count(self):
        return math.prod(self._shape)

    @property
    def num_axes(self):
        return len(self._shape)

    def count_range(self, start, end=None):
        end = self.num_axes if end is None else end
        return math.prod(self._shape[start:end])

    def canonical_axis(self, axis):
        n = self.num_axes
        if not -n <= axis < max(n, 1):
            raise VggtoolError(f"axis {axis} out of range for a {n}-axis blob of shape {self._shape}")
        return axis + n if axis < 0 else axis

    def legacy_dim(self, i):
        """Caffe's num/channels/height/width accessors: missing trailing axes count as 1."""
        if self.num_axes > 4:
            raise VggtoolError(f"legacy 4-d accessor used on a blob of shape {self._shape}")
        return self._shape[i] if i < self.num_axes else 1

    num = property(lambda self: self.legacy_dim(0))
    channels = property(lambda self: self.legacy_dim(1))
    height = property(lambda self: self.legacy_dim(2))
    width = property(lambda self: self.legacy_dim(3))

    def shape_string(self):
        return " ".join(str(d) for d in self._shape) + f" ({self.count})"

    def reshape(self, *shape):
        try:
            shape = _as_shape(shape)
        except BlobShapeError as e:
            raise BlobShapeError(f"{self._what()}: {e}") from None
        if shape == self._shape:
            return
        count = math.prod(shape)
        xp = self.device.xp
        with self.device:
            if self._data_buf is None or self._data_buf.size < count:
                self._check_fits(shape, count)
                self._data_buf = xp.zeros(count, dtype=self.dtype)
                self._diff_buf = None
            if self._diff_buf is not None and self._diff_buf.size < count:
                self._diff_buf = None
        self._shape = shape
        self._refresh_views()

    def _what(self):
        return f"blob '{self.name}'" if self.name else "blob"

    def _check_fits(self, shape, count):
        """Refuse a buffer larger than the device's memory before asking for it: an allocator may grant
        it lazily and the process then dies when the pages are touched (or MemoryError comes from deep
        inside a layer)."""
        need = count * self.dtype.itemsize
        have = self.device.memory_bytes()
        if need > have:
            raise BlobShapeError(f"{self._what()}: shape {' x '.join(map(str, shape))} needs "
                                 f"{need / 2**30:.4g} GiB, more than the {have / 2**30:.4g} GiB of "
                                 f"{self.device.name} memory")

    def reshape_like(self, other):
        self.reshape(other.shape)

    def _refresh_views(self):
        count = self.count
        self._data = self._data_buf[:count].reshape(self._shape)
        self._diff = None if self._diff_buf is None else self._diff_buf[:count].reshape(self._shape)

    # -- data and diff -----------------------------------------------------------------------------------
    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, value):
        self._assign(self._data, value, "data")

    @property
    def diff(self):
        if self._diff is None:
            with self.device:
                self._diff_buf = self.device.xp.zeros(max(self._data_buf.size, 1), dtype=self.dtype)
            self._refresh_views()
        return self._diff

    @diff.setter
    def diff(self, value):
        self._assign(self.diff, value, "diff")

    @property
    def has_diff(self):
        return self._diff is not None

    def _assign(self, target, value, what):
        value = self.device.asarray(value, dtype=self.dtype)
        if value.shape != target.shape and value.size != target.size:
            raise VggtoolError(f"cannot assign an array of shape {tuple(value.shape)} to blob {what} "
                               f"of shape {self._shape}")
        target[...] = value.reshape(target.shape)

    def share_data(self, other):
        """Use `other`'s data storage (shared parameters); shapes must agree."""
        if other.count != self.count:
            raise VggtoolError(f"cannot share data between blobs of shapes {self._shape} and {other.shape}")
        self._data_buf = other._data_buf
        self._refresh_views()

    def share_diff(self, other):
        if other.count != self.count:
            raise VggtoolError(f"cannot share diff between blobs of shapes {self._shape} and {other.shape}")
        other.diff  # allocate
        self._diff_buf = other._diff_buf
        self._refresh_views()

    # -- serialisation (BlobProto) -----------------------------------------------------------------------
    def to_proto(self, proto, write_diff=False):
        proto.Clear()
        proto.shape.dim.extend(self._shape)
        set_proto_values(proto, self._data)
        if write_diff:
            set_proto_values(proto, self.diff, diff=True)
        return proto

    def from_proto(self, proto, reshape=True):
        shape = proto_shape(proto)
        if reshape:
            self.reshape(shape)
        elif math.prod(shape) != self.count:
            raise VggtoolError(f"blob proto of shape {shape} does not fit blob of shape {self._shape}")
        values = proto_values(proto, writable=False)
        if values.size != self.count:
            raise VggtoolError(f"blob proto holds {values.size} values but its shape {shape} needs {self.count}")
        self.data = values.reshape(self._shape)
        diff = proto_values(proto, diff=True, writable=False)
        if diff.size == self.count:
            self.diff = diff.reshape(self._shape)


def proto_shape(proto):
    """The shape of a BlobProto: its `shape` field, or the legacy num/channels/height/width."""
    if proto.HasField("shape"):
        return tuple(int(d) for d in proto.shape.dim)
    if any(proto.HasField(f) for f in ("num", "channels", "height", "width")):
        return (proto.num, proto.channels, proto.height, proto.width)
    return (len(proto.data) or len(proto.double_data),)


# BlobProto's packed value fields: (field number, dtype). Reading them through the protobuf runtime one
# Python float at a time takes seconds for VGG-sized blobs, so they are read from the wire bytes.
_VALUE_FIELDS = {"data": (5, np.float32), "diff": (6, np.float32),
                 "double_data": (8, np.float64), "double_diff": (9, np.float64)}


def _varint(buf, pos):
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _packed_fields(proto):
    """{field number: [byte chunks]} for the length-delimited fields of a serialised BlobProto."""
    buf = memoryview(proto.SerializeToString())  # slices of a memoryview do not copy the values
    out = {}
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 2:
            length, pos = _varint(buf, pos)
            out.setdefault(field, []).append(buf[pos:pos + length])
            pos += length
        elif wire == 5:
            out.setdefault(field, []).append(buf[pos:pos + 4])  # unpacked float
            pos += 4
        elif wire == 1:
            out.setdefault(field, []).append(buf[pos:pos + 8])
            pos += 8
        else:
            raise VggtoolError(f"corrupt BlobProto: wire type {wire}")
    return out


def proto_values(proto, diff=False, writable=True):
    """The values of a BlobProto as a NumPy array (float32 or float64 as stored).

    `writable=False` may return a read-only view of the serialised bytes (no copy; for callers that
    copy the values into a blob anyway)."""
    fields = _packed_fields(proto)
    double = "double_diff" if diff else "double_data"
    single = "diff" if diff else "data"
    for name in (double, single):
        number, dtype = _VALUE_FIELDS[name]
        if number in fields:
            chunks = fields[number]
            raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            # Little-endian on disk; on a little-endian machine astype(copy=False) keeps the buffer.
            values = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype, copy=False)
            return values.copy() if writable and not values.flags.writeable else values
    return np.zeros(0, dtype=np.float32)


def _encode_varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def set_proto_values(proto, array, diff=False):
    """Append `array` to the BlobProto's data (or diff), as float32 unless it is float64."""
    array = to_numpy(array)
    double = array.dtype == np.float64
    name = ("double_diff" if diff else "double_data") if double else ("diff" if diff else "data")
    number, dtype = _VALUE_FIELDS[name]
    raw = np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
    if raw:
        proto.MergeFromString(_encode_varint(number << 3 | 2) + _encode_varint(len(raw)) + raw)


def _values_chunks(number_single, number_double, array):
    """Wire chunks of one packed value field holding `array` (float32, or float64 when it is float64)."""
    array = to_numpy(array)
    double = array.dtype == np.float64
    dtype = np.dtype(np.float64 if double else np.float32).newbyteorder("<")
    raw = np.ascontiguousarray(array, dtype=dtype).reshape(-1)
    if raw.size == 0:
        return []
    number = number_double if double else number_single
    return [_encode_varint(number << 3 | 2) + _encode_varint(raw.nbytes), memoryview(raw).cast("B")]


def blob_field_chunks(field_number, shape, data, diff=None):
    """The wire chunks of a BlobProto (shape, data, optional diff) as field `field_number` of its parent.

    Lets a .caffemodel be written straight from the arrays, without building a NetParameter that
    holds a second copy of every weight."""
    from .proto import caffe_pb2

    head = caffe_pb2.BlobProto()
    head.shape.dim.extend(shape)
    chunks = [head.SerializeToString()] + _values_chunks(5, 8, data)
    if diff is not None:
        chunks += _values_chunks(6, 9, diff)
    return [_encode_varint(field_number << 3 | 2) + _encode_varint(chunks_size(chunks))] + chunks


def chunks_size(chunks):
    return sum(len(c) if isinstance(c, bytes) else c.nbytes for c in chunks)


def array_to_proto(array, proto=None):
    """A NumPy array as a BlobProto (float32 unless the array is float64)."""
    from .proto import caffe_pb2

    proto = caffe_pb2.BlobProto() if proto is None else proto
    array = to_numpy(array)
    proto.shape.dim.extend(array.shape)
    set_proto_values(proto, array)
    return proto


def proto_to_array(proto, source="blob proto"):
    """The BlobProto's values shaped as it says; an error naming `source` when they do not fill it."""
    shape = proto_shape(proto)
    values = proto_values(proto)
    if any(d < 0 for d in shape) or values.size != math.prod(shape):
        raise VggtoolError(f"{source}: holds {values.size} value(s) but its shape "
                           f"{' x '.join(map(str, shape))} needs {math.prod(shape)} (truncated or corrupt?)")
    return values.reshape(shape)
