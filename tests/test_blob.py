"""Blob: reshape without reallocation, lazy diff, BlobProto round trips (float and double, legacy shapes)."""
import struct

import numpy as np
import pytest

from vggtool import VggtoolError
from vggtool.blob import Blob
from vggtool.io.wire import array_to_proto, blob_from_proto, blob_to_proto, proto_shape, proto_to_array, proto_values
from vggtool.proto import caffe_pb2


def test_reshape_reuses_capacity():
    b = Blob((2, 3, 4, 5))
    buf = b._data_buf
    b.data = np.arange(120).reshape(2, 3, 4, 5)
    b.reshape(1, 3, 4, 5)  # shrink: same storage
    assert b._data_buf is buf and b.shape == (1, 3, 4, 5) and b.count == 60
    assert np.shares_memory(b.data, buf)
    np.testing.assert_array_equal(b.data.reshape(-1), np.arange(60))
    b.reshape((2, 60))  # back to the capacity: still the same storage
    assert b._data_buf is buf and b.data.shape == (2, 60)
    b.reshape([3, 50])  # grows: new storage
    assert b._data_buf is not buf and b._data_buf.size == 150


def test_diff_is_lazy_and_follows_reshape():
    b = Blob((4, 5))
    assert not b.has_diff and b._diff_buf is None
    assert b.diff.shape == (4, 5) and not b.diff.any()
    assert b.has_diff
    dbuf = b._diff_buf
    b.diff = np.ones((4, 5))
    b.reshape(2, 5)
    assert b._diff_buf is dbuf and b.diff.shape == (2, 5)
    b.reshape(8, 5)
    assert b.diff.shape == (8, 5)


def test_shapes_and_legacy_accessors():
    b = Blob((2, 3))
    assert (b.num, b.channels, b.height, b.width) == (2, 3, 1, 1)
    assert b.num_axes == 2 and b.count_range(1) == 3 and b.canonical_axis(-1) == 1
    assert b.shape_string() == "2 3 (6)"
    assert Blob(()).count == 1 and Blob(7).shape == (7,)
    with pytest.raises(VggtoolError, match="negative"):
        Blob((2, -1))
    with pytest.raises(VggtoolError, match="axis 2 out of range"):
        b.canonical_axis(2)
    with pytest.raises(VggtoolError, match="legacy 4-d accessor"):
        Blob((1, 1, 1, 1, 2)).num


def test_assignment_checks_size():
    b = Blob((2, 3))
    b.data = np.arange(6)  # same size, other shape: reshaped, as Caffe's flat copy
    np.testing.assert_array_equal(b.data, np.arange(6).reshape(2, 3))
    with pytest.raises(VggtoolError, match="shape \\(5,\\) to blob data of shape \\(2, 3\\)"):
        b.data = np.zeros(5)


@pytest.mark.parametrize("dtype,field", [(np.float32, "data"), (np.float64, "double_data")])
def test_proto_round_trip(dtype, field):
    rng = np.random.default_rng(0)
    b = Blob((3, 4, 2), dtype=dtype)
    b.data = rng.standard_normal((3, 4, 2))
    b.diff = rng.standard_normal((3, 4, 2))
    proto = blob_to_proto(b, caffe_pb2.BlobProto(), write_diff=True)
    assert list(proto.shape.dim) == [3, 4, 2]
    assert len(getattr(proto, field)) == 24
    # Through the wire format, then into a blob of another shape.
    back = caffe_pb2.BlobProto.FromString(proto.SerializeToString())
    c = Blob((1,), dtype=dtype)
    blob_from_proto(c, back)
    assert c.shape == (3, 4, 2)
    np.testing.assert_array_equal(c.data, b.data)
    np.testing.assert_array_equal(c.diff, b.diff)
    # The protobuf runtime reads the same values as the fast reader.
    np.testing.assert_array_equal(np.array(getattr(back, field), dtype=dtype).reshape(3, 4, 2), b.data)


def test_proto_without_diff_leaves_diff_alone():
    b = Blob((2,))
    b.data = [1, 2]
    proto = blob_to_proto(b, caffe_pb2.BlobProto())
    assert len(proto.diff) == 0
    c = Blob((2,))
    blob_from_proto(c, proto)
    assert not c.has_diff


def test_from_proto_without_reshape_checks_count():
    proto = array_to_proto(np.arange(6, dtype=np.float32).reshape(2, 3))
    b = Blob((3, 2))
    blob_from_proto(b, proto, reshape=False)
    np.testing.assert_array_equal(b.data.reshape(-1), np.arange(6))
    with pytest.raises(VggtoolError, match="does not fit"):
        blob_from_proto(Blob((5,)), proto, reshape=False)
    bad = array_to_proto(np.zeros(5, dtype=np.float32))
    bad.shape.dim[0] = 6
    with pytest.raises(VggtoolError, match="holds 5 values but its shape \\(6,\\) needs 6"):
        blob_from_proto(Blob((1,)), bad)


def test_legacy_shape_fields():
    p = caffe_pb2.BlobProto(num=1, channels=1, height=3, width=2)
    p.data.extend([1, 2, 3, 4, 5, 6])
    assert proto_shape(p) == (1, 1, 3, 2)
    np.testing.assert_array_equal(proto_to_array(p), np.arange(1, 7, dtype=np.float32).reshape(1, 1, 3, 2))
    q = caffe_pb2.BlobProto()
    q.double_data.extend([1.5, 2.5])
    assert proto_shape(q) == (2,) and proto_to_array(q).dtype == np.float64


def test_unpacked_float_values_are_read():
    # Some writers emit `repeated float data` unpacked (one tag per value, wire type 5).
    values = [0.5, -1.25, 3.0]
    raw = b"".join(bytes([5 << 3 | 5]) + struct.pack("<f", v) for v in values)
    p = caffe_pb2.BlobProto.FromString(raw)
    np.testing.assert_array_equal(proto_values(p), np.array(values, dtype=np.float32))


def test_array_to_proto_round_trip_large():
    a = np.random.default_rng(1).standard_normal((64, 3, 11, 11)).astype(np.float32)
    p = array_to_proto(a)
    np.testing.assert_array_equal(proto_to_array(caffe_pb2.BlobProto.FromString(p.SerializeToString())), a)
    d = array_to_proto(a.astype(np.float64))
    assert len(d.data) == 0 and proto_to_array(d).dtype == np.float64


def test_share_data_and_diff():
    a, b = Blob((2, 3)), Blob((3, 2))
    b.share_data(a)
    b.share_diff(a)
    a.data = np.arange(6)
    a.diff = np.ones(6)
    np.testing.assert_array_equal(b.data.reshape(-1), np.arange(6))
    assert b.diff.sum() == 6
    with pytest.raises(VggtoolError, match="cannot share"):
        Blob((5,)).share_data(a)


def test_proto_to_array_is_writable():
    a = proto_to_array(array_to_proto(np.ones((2, 3), dtype=np.float32)))
    a -= 1  # e.g. a mean image modified in place
    assert not a.any()
    assert proto_values(array_to_proto(np.ones(3)), writable=True).flags.writeable


def test_place_diff_keeps_the_values_and_refuses_storage_that_does_not_fit():
    b = Blob((2, 3))
    b.diff[...] = np.arange(6).reshape(2, 3)
    other = Blob((2, 3))
    other.share_diff(b)
    storage = np.full(10, -1, dtype=np.float32)
    b.place_diff(storage)
    assert np.shares_memory(b.diff, storage) and b.diff_storage is storage
    np.testing.assert_array_equal(storage[:6], np.arange(6))
    assert not np.shares_memory(other.diff, storage)  # a sharer follows only when moved too (MpiExchange)
    with pytest.raises(VggtoolError, match="a diff of 6 float32 values cannot be kept in 5 float32 values"):
        b.place_diff(np.zeros(5, dtype=np.float32))
    with pytest.raises(VggtoolError, match="cannot be kept in 6 float64 values"):
        b.place_diff(np.zeros(6))
