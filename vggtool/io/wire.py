"""Caffe's binary files on the wire: BlobProto <-> array, .caffemodel (a NetParameter with weights),
.solverstate (SolverState) and .binaryproto (a BlobProto or BlobProtoVector, e.g. a mean).

The one place that knows the protobuf wire format. Packed float fields are read from and written to the
serialised bytes directly: the protobuf runtime handles them one Python float at a time, which takes
seconds for VGG-sized blobs. Reads are bounded (files.read_bounded) and checked (shape against values,
text fields that must be UTF-8); writes are atomic (atomic_files)."""
import math
import mmap
import os

import numpy as np
from google.protobuf import message as pb_message

from ..atomic_files import atomic_write_bytes, atomic_write_chunks
from ..backend import to_numpy
from ..errors import VggtoolError
from ..proto import caffe_pb2
from .files import read_bounded
from .upgrade import upgrade_net

_LAYER_FIELD = caffe_pb2.NetParameter.DESCRIPTOR.fields_by_name["layer"].number
_BLOBS_FIELD = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name["blobs"].number


# -- varints and fields -------------------------------------------------------------------------------------
def read_varint(buf, pos):
    """(value, position after it) of the varint at buf[pos]."""
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def encode_varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_header(number, size):
    """The key and length of a length-delimited field `number` holding `size` bytes."""
    return encode_varint(number << 3 | 2) + encode_varint(size)


def fields(buf, start, end, what="protobuf"):
    """(field number, wire type, value start, value end) of the fields serialised in buf[start:end]."""
    pos = start
    while pos < end:
        key, pos = read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            begin = pos
            _, pos = read_varint(buf, pos)
            yield number, wire, begin, pos
        elif wire == 2:
            length, pos = read_varint(buf, pos)
            yield number, wire, pos, pos + length
            pos += length
        elif wire == 5:
            yield number, wire, pos, pos + 4
            pos += 4
        elif wire == 1:
            yield number, wire, pos, pos + 8
            pos += 8
        else:
            raise VggtoolError(f"corrupt {what}: wire type {wire}")


def chunks_size(chunks):
    return sum(len(c) if isinstance(c, bytes) else c.nbytes for c in chunks)


# -- whole messages -----------------------------------------------------------------------------------------
def read_binary_proto(path, message, what="binary proto"):
    data = read_bounded(path, what)
    try:
        message.ParseFromString(data)
    except pb_message.DecodeError as e:
        raise VggtoolError(f"{path}: not a valid {what} (truncated or corrupt: {e})") from None
    bad = _non_text_string(message)
    if bad:
        raise VggtoolError(f"{path}: not a valid {what}: its field {bad} is not UTF-8 text (corrupt file?)")
    return message


def _non_text_string(message, prefix=""):
    """The name of the first string field holding bytes that are not UTF-8 (proto2 parses them and hands
    them over as bytes, which would fail far from here, in a path or a name), or None."""
    for field, value in message.ListFields():
        name = prefix + field.name
        if field.type == field.TYPE_MESSAGE:
            for sub in (value if _is_repeated(field) else [value]):
                bad = _non_text_string(sub, name + ".")
                if bad:
                    return bad
        elif field.type == field.TYPE_STRING:
            if any(isinstance(v, bytes) for v in (value if _is_repeated(field) else [value])):
                return name
    return None


def _is_repeated(field):
    flag = getattr(field, "is_repeated", None)  # newer protobuf runtimes; older ones have `label`
    return bool(flag) if flag is not None else field.label == field.LABEL_REPEATED


def write_binary_proto(path, message):
    atomic_write_bytes(path, message.SerializeToString())


# -- BlobProto <-> array ------------------------------------------------------------------------------------
def proto_shape(proto):
    """The shape of a BlobProto: its `shape` field, or the legacy num/channels/height/width."""
    if proto.HasField("shape"):
        return tuple(int(d) for d in proto.shape.dim)
    if any(proto.HasField(f) for f in ("num", "channels", "height", "width")):
        return (proto.num, proto.channels, proto.height, proto.width)
    return (len(proto.data) or len(proto.double_data),)


# BlobProto's packed value fields: (field number, dtype).
_VALUE_FIELDS = {"data": (5, np.float32), "diff": (6, np.float32),
                 "double_data": (8, np.float64), "double_diff": (9, np.float64)}


def _packed_fields(proto):
    """{field number: [byte chunks]} for the length-delimited (and unpacked float) fields of a BlobProto."""
    buf = memoryview(proto.SerializeToString())  # slices of a memoryview do not copy the values
    out = {}
    for number, wire, start, end in fields(buf, 0, len(buf), "BlobProto"):
        if wire != 0:
            out.setdefault(number, []).append(buf[start:end])
    return out


def proto_values(proto, diff=False, writable=True):
    """The values of a BlobProto as a NumPy array (float32 or float64 as stored).

    `writable=False` may return a read-only view of the serialised bytes (no copy; for callers that
    copy the values into a blob anyway)."""
    found = _packed_fields(proto)
    double = "double_diff" if diff else "double_data"
    single = "diff" if diff else "data"
    for name in (double, single):
        number, dtype = _VALUE_FIELDS[name]
        if number in found:
            chunks = found[number]
            raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            # Little-endian on disk; on a little-endian machine astype(copy=False) keeps the buffer.
            values = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype, copy=False)
            return values.copy() if writable and not values.flags.writeable else values
    return np.zeros(0, dtype=np.float32)


def set_proto_values(proto, array, diff=False):
    """Append `array` to the BlobProto's data (or diff), as float32 unless it is float64."""
    array = to_numpy(array)
    double = array.dtype == np.float64
    name = ("double_diff" if diff else "double_data") if double else ("diff" if diff else "data")
    number, dtype = _VALUE_FIELDS[name]
    raw = np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
    if raw:
        proto.MergeFromString(field_header(number, len(raw)) + raw)


def array_to_proto(array, proto=None):
    """A NumPy array as a BlobProto (float32 unless the array is float64)."""
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


def blob_to_proto(blob, proto, write_diff=False):
    """Fill `proto` (cleared first) with a Blob's shape, data and, with write_diff, its diff."""
    proto.Clear()
    proto.shape.dim.extend(blob.shape)
    set_proto_values(proto, blob.data)
    if write_diff:
        set_proto_values(proto, blob.diff, diff=True)
    return proto


def blob_from_proto(blob, proto, reshape=True):
    """Copy a BlobProto's data (and its diff, when it holds one of the right size) into a Blob, reshaping
    it to the proto's shape or, with reshape=False, checking the counts agree."""
    shape = proto_shape(proto)
    if reshape:
        blob.reshape(shape)
    elif math.prod(shape) != blob.count:
        raise VggtoolError(f"blob proto of shape {shape} does not fit blob of shape {blob.shape}")
    values = proto_values(proto, writable=False)
    if values.size != blob.count:
        raise VggtoolError(f"blob proto holds {values.size} values but its shape {shape} needs {blob.count}")
    blob.data = values.reshape(blob.shape)
    diff = proto_values(proto, diff=True, writable=False)
    if diff.size == blob.count:
        blob.diff = diff.reshape(blob.shape)
    return blob


def _values_chunks(number_single, number_double, array):
    """Wire chunks of one packed value field holding `array` (float32, or float64 when it is float64)."""
    array = to_numpy(array)
    double = array.dtype == np.float64
    dtype = np.dtype(np.float64 if double else np.float32).newbyteorder("<")
    raw = np.ascontiguousarray(array, dtype=dtype).reshape(-1)
    if raw.size == 0:
        return []
    number = number_double if double else number_single
    return [field_header(number, raw.nbytes), memoryview(raw).cast("B")]


def blob_field_chunks(field_number, shape, data, diff=None):
    """The wire chunks of a BlobProto (shape, data, optional diff) as field `field_number` of its parent.

    Lets a .caffemodel be written straight from the arrays, without building a NetParameter that
    holds a second copy of every weight."""
    head = caffe_pb2.BlobProto()
    head.shape.dim.extend(shape)
    chunks = [head.SerializeToString()] + _values_chunks(5, 8, data)
    if diff is not None:
        chunks += _values_chunks(6, 9, diff)
    return [field_header(field_number, chunks_size(chunks))] + chunks


# -- .caffemodel --------------------------------------------------------------------------------------------
def read_caffemodel(path):
    """The NetParameter of a binary .caffemodel, upgraded to today's format."""
    net = read_binary_proto(str(path), caffe_pb2.NetParameter(), "caffemodel")
    upgrade_net(net, source=str(path))
    return net


def net_to_proto(net_param, layer_blobs, write_diff=False):
    """A copy of `net_param` whose layers hold the Blobs `layer_blobs(name)` gives (a list, maybe empty)."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    for layer_param in out.layer:
        layer_param.ClearField("blobs")
        for blob in layer_blobs(layer_param.name):
            blob_to_proto(blob, layer_param.blobs.add(), write_diff=write_diff)
    return out


def write_caffemodel(path, net_param, layer_blobs, write_diff=False):
    """Write what net_to_proto would give as a .caffemodel, atomically (the same bytes up to field order,
    streamed from the arrays without an intermediate copy)."""
    atomic_write_chunks(path, _caffemodel_chunks(net_param, layer_blobs, write_diff))


def _caffemodel_chunks(net_param, layer_blobs, write_diff):
    head = caffe_pb2.NetParameter()
    head.CopyFrom(net_param)
    head.ClearField("layer")
    chunks = [head.SerializeToString()]
    for layer_param in net_param.layer:
        lp = caffe_pb2.LayerParameter()
        lp.CopyFrom(layer_param)
        lp.ClearField("blobs")
        body = [lp.SerializeToString()]
        for blob in layer_blobs(layer_param.name):
            body += blob_field_chunks(_BLOBS_FIELD, blob.shape, blob.data, blob.diff if write_diff else None)
        chunks.append(field_header(_LAYER_FIELD, chunks_size(body)))
        chunks += body
    return chunks


def without_blobs(net_param):
    """A copy of a NetParameter with every layer's parameter blobs left out (its definition alone)."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    for layer in out.layer:
        layer.ClearField("blobs")
    return out


def caffemodel_layers(path):
    """The LayerParameters of a binary NetParameter file, their `blobs` left out: the file is walked on
    the wire (memory-mapped) without decoding a single weight, so a 500 MB .caffemodel costs one read."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return []
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            buf = memoryview(m)
            layers = _walk_layers(buf)
            buf.release()  # before the mmap closes; _walk_layers keeps no view of it
    if layers is None:
        raise VggtoolError(f"{path}: not a readable .caffemodel (corrupt or truncated)")
    return layers


def _walk_layers(buf):
    """The layers of caffemodel_layers, or None when the bytes are not a NetParameter. Returns instead of
    raising so that no traceback keeps a view of the mapped file alive."""
    try:
        out = []
        for number, wire, start, end in fields(buf, 0, len(buf)):
            if number != _LAYER_FIELD or wire != 2:
                continue
            layer = caffe_pb2.LayerParameter()
            for n, w, s, e in fields(buf, start, end):
                if n == _BLOBS_FIELD:
                    continue
                # the field again as bytes: its key, (length,) and value
                head = encode_varint(n << 3 | w) + (encode_varint(e - s) if w == 2 else b"")
                layer.MergeFromString(head + bytes(buf[s:e]))
            out.append(layer)
        return out
    except (IndexError, VggtoolError, pb_message.DecodeError):
        return None


# -- .solverstate -------------------------------------------------------------------------------------------
def solver_state(it, learned_net, current_step, history):
    """A SolverState message: iteration, weights file, multistep position and history arrays."""
    state = caffe_pb2.SolverState()
    state.iter = it
    state.learned_net = learned_net
    state.current_step = current_step
    for h in history:
        array_to_proto(h, state.history.add())
    return state


def read_solverstate(path):
    state = read_binary_proto(path, caffe_pb2.SolverState(), "solverstate")
    if not state.HasField("iter"):
        raise VggtoolError(f"{path}: not a solver state (no 'iter' field): corrupt or not a .solverstate file")
    return state


def history_arrays(state, path):
    """The history blobs as (shape, flat float values) pairs, checked for consistency."""
    out = []
    for i, blob in enumerate(state.history):
        shape = proto_shape(blob)
        values = proto_values(blob)
        if values.size != math.prod(shape):
            raise VggtoolError(f"{path}: history blob {i} holds {values.size} values but its shape {shape} "
                               f"needs {math.prod(shape)} (truncated or corrupt file?)")
        out.append((shape, values))
    return out
