"""The input transform a model was trained with, for commands that feed it images (test --data,
classify, extract, localize): the transform_param (mean_value / mean_file, scale) of the first TEST-phase
layer that has one, in the net prototxt or else in the weights file (a vggtool or Caffe snapshot keeps
the training net's layers, data layers included, beside the weights).

The weights file is walked on the wire without decoding its parameter blobs, so a 500 MB .caffemodel
costs one read, not a parse of every weight."""
import mmap
import os

from google.protobuf.message import DecodeError

from .. import protoio
from ..blob import _varint
from ..errors import VggtoolError
from ..proto import caffe_pb2

_LAYER_FIELD = caffe_pb2.NetParameter.DESCRIPTOR.fields_by_name["layer"].number
_BLOBS_FIELD = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name["blobs"].number


def _fields(buf, start, end):
    """(field number, wire type, value start, value end) of the fields in buf[start:end]."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            begin = pos
            _, pos = _varint(buf, pos)
            yield number, wire, begin, pos
        elif wire == 2:
            length, pos = _varint(buf, pos)
            yield number, wire, pos, pos + length
            pos += length
        elif wire == 5:
            yield number, wire, pos, pos + 4
            pos += 4
        elif wire == 1:
            yield number, wire, pos, pos + 8
            pos += 8
        else:
            raise VggtoolError(f"corrupt protobuf (wire type {wire})")


def _layers_without_blobs(path):
    """The LayerParameters of a binary NetParameter file, their `blobs` left out."""
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
    """The layers of _layers_without_blobs, or None when the bytes are not a NetParameter. Returns instead of
    raising so that no traceback keeps a view of the mapped file alive."""
    try:
        out = []
        for number, wire, start, end in _fields(buf, 0, len(buf)):
            if number != _LAYER_FIELD or wire != 2:
                continue
            layer = caffe_pb2.LayerParameter()
            for n, w, s, e in _fields(buf, start, end):
                if n == _BLOBS_FIELD:
                    continue
                # the field again as bytes: its key, (length,) and value
                head = _key_bytes(n, w, e - s if w == 2 else None)
                layer.MergeFromString(head + bytes(buf[s:e]))
            out.append(layer)
        return out
    except (IndexError, VggtoolError, DecodeError):
        return None


def _key_bytes(number, wire, length):
    from ..blob import _encode_varint

    head = _encode_varint(number << 3 | wire)
    return head + _encode_varint(length) if length is not None else head


def _in_test(layer):
    if len(layer.include):
        return any(not r.HasField("phase") or r.phase == caffe_pb2.TEST for r in layer.include)
    return not any(r.HasField("phase") and r.phase == caffe_pb2.TEST for r in layer.exclude)


def _sets_something(tp):
    return bool(tp.mean_file or len(tp.mean_value) or tp.HasField("scale"))


def find_transform(layers):
    """The transform_param of the first TEST layer that sets a mean or a scale (else any phase's)."""
    candidates = [l for l in layers if l.HasField("transform_param") and _sets_something(l.transform_param)]
    for layer in candidates:
        if _in_test(layer):
            return layer
    return candidates[0] if candidates else None


def recorded_transform(net_path, weights_path=None):
    """(transform_param, description of where it was found) or (None, None)."""
    sources = []
    if net_path and os.path.isfile(net_path):
        sources.append((net_path, lambda: list(protoio.read_net_param(net_path).layer), True))
    if weights_path and os.path.isfile(weights_path) and not str(weights_path).endswith((".h5", ".hdf5")):
        sources.append((weights_path, lambda: _layers_without_blobs(weights_path), False))
    for where, read, is_net in sources:
        try:
            layers = read()
        except VggtoolError:
            if is_net:
                raise
            continue  # an unreadable weights file: loading the weights names the problem
        layer = find_transform(layers)
        if layer is not None:
            return layer.transform_param, f"{where}, layer '{layer.name}'"
    return None, None


def resolve_mean_file(path, where, beside):
    """A transform_param mean_file as Caffe reads it (relative to the working directory), or beside the
    file that names it."""
    if os.path.isfile(path):
        return path
    alt = os.path.join(os.path.dirname(os.path.abspath(beside)), path)
    if os.path.isfile(alt):
        return alt
    raise VggtoolError(f"{where}: transform_param mean_file '{path}' not found (looked in the current "
                       f"directory and beside {beside}); pass --mean-file or --mean-value")
