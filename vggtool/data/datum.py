"""Caffe's Datum records and LMDB databases, shared by data_prep, the data layers and evaluation.

A Datum holds one image as channels x height x width uint8 bytes in BGR order (Caffe's layout), or the
compressed file bytes with `encoded: true`, plus an integer label. convert_imageset keys records as
`%08d_<relative path>` in list order.
"""
import os
import threading
import weakref

import cv2
import numpy as np

from ..errors import VggtoolError
from ..proto import caffe_pb2
from .lmdb_check import check_complete, read_errors


def record_key(index, path):
    return f"{index:08d}_{path}".encode("utf-8")


def array_to_datum(image, label=0):
    """A raw Datum from an image array: H x W x C (OpenCV's BGR) or H x W (gray), uint8."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.dtype != np.uint8:
        raise VggtoolError(f"Datum images must be uint8, got {image.dtype}")
    h, w, c = image.shape
    return caffe_pb2.Datum(channels=c, height=h, width=w, label=int(label),
                           data=np.ascontiguousarray(image.transpose(2, 0, 1)).tobytes())


def encoded_datum(file_bytes, label=0):
    """An encoded Datum holding the compressed bytes of an image file (JPEG, PNG, ...)."""
    return caffe_pb2.Datum(encoded=True, label=int(label), data=bytes(file_bytes))


def decode_image_bytes(data, color=True, source="image"):
    flag = cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag) if len(data) else None
    except cv2.error:  # OpenCV refuses some malformed buffers with an exception instead of None
        image = None
    if image is None:
        raise VggtoolError(f"{source}: cannot decode the image bytes (corrupt or unsupported format)")
    return image


def datum_to_image(datum, color=None, source="record"):
    """The image of a Datum as H x W x C uint8 BGR (C = 1 or 3); float_data gives float32.

    `color`: None keeps the stored channels; True/False force 3-channel BGR / 1-channel gray (Caffe's
    force_color / force_gray).
    """
    if datum.encoded:
        image = decode_image_bytes(datum.data, color=color is not False, source=source)
        if image.ndim == 2:
            image = image[:, :, None]
    else:
        c, h, w = datum.channels, datum.height, datum.width
        if min(c, h, w) <= 0:
            raise VggtoolError(f"{source}: Datum of shape {c}x{h}x{w} (every dimension must be positive)")
        if len(datum.data):
            if len(datum.data) != c * h * w:
                raise VggtoolError(f"{source}: Datum holds {len(datum.data)} bytes but its shape "
                                   f"{c}x{h}x{w} needs {c * h * w}")
            image = np.frombuffer(datum.data, dtype=np.uint8).reshape(c, h, w).transpose(1, 2, 0)
        elif len(datum.float_data):
            if len(datum.float_data) != c * h * w:
                raise VggtoolError(f"{source}: Datum holds {len(datum.float_data)} floats but its shape "
                                   f"{c}x{h}x{w} needs {c * h * w}")
            image = np.asarray(datum.float_data, dtype=np.float32).reshape(c, h, w).transpose(1, 2, 0)
        else:
            raise VggtoolError(f"{source}: empty Datum (no data and no float_data)")
    if color is True and image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif color is False and image.shape[2] == 3:
        image = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_BGR2GRAY)[:, :, None]
    return np.ascontiguousarray(image)


# Caffe opens the LMDBs it writes with mode 0664; the umask applies (LMDB's own default would ignore it).
LMDB_FILE_MODE = 0o664


def lmdb_for_writing(path, map_size, **options):
    """A new (or existing) LMDB folder opened for writing: the folder gets 0777 & ~umask, the files
    LMDB_FILE_MODE & ~umask, as Caffe's do."""
    import lmdb

    os.makedirs(path, exist_ok=True)
    return lmdb.open(path, map_size=map_size, subdir=True, meminit=False, mode=LMDB_FILE_MODE, **options)


def is_lmdb(path):
    """Whether `path` is an LMDB folder (holds a data.mdb)."""
    return os.path.isdir(path) and os.path.exists(os.path.join(path, "data.mdb"))


def open_lmdb(path, write=False, map_size=1 << 30):
    """Open an LMDB environment with errors that say what is wrong with `path`."""
    import lmdb

    path = os.fspath(path)
    if not write:
        if not os.path.exists(path):
            raise VggtoolError(f"database not found: {path}")
        if not os.path.exists(os.path.join(path, "data.mdb")) if os.path.isdir(path) else True:
            raise VggtoolError(f"{path} is not an LMDB database (no data.mdb inside; is it a LevelDB or a "
                               "folder of images?)")
    try:
        if write:
            return lmdb_for_writing(path, map_size, map_async=True)
        env = lmdb.open(path, readonly=True, lock=False, readahead=False, subdir=True)
    except lmdb.Error as e:
        raise VggtoolError(f"cannot open LMDB database {path}: {e}") from None
    try:
        check_complete(env, path)
    except VggtoolError:
        env.close()
        raise
    return env


_SHARED = weakref.WeakValueDictionary()
_SHARED_LOCK = threading.Lock()


def shared_lmdb(path):
    """A read-only LMDB environment shared within the process.

    LMDB refuses to open one environment twice in a process, and several nets (a train and a test net,
    the replicas of a multi-device run) may read the same database. The environment closes when its
    last user drops it; do not close it yourself. A rebuilt database (new data.mdb) gets a new one.
    """
    path = os.fspath(path)
    data = os.path.join(path, "data.mdb")
    try:
        st = os.stat(data)
        key = (os.path.realpath(path), st.st_ino, st.st_mtime_ns)
    except OSError:
        key = None
    with _SHARED_LOCK:
        env = _SHARED.get(key) if key else None
        if env is None:
            env = open_lmdb(path)
            if key:
                _SHARED[key] = env
    return env


def iterate_records(path):
    """Yield (key, Datum) in key order from the LMDB at `path`."""
    env = shared_lmdb(path)
    with read_errors(path), env.begin(buffers=False) as txn:
        for key, value in txn.cursor():
            yield key, parse_datum(value, f"{path}: record {key.decode(errors='replace')}")


def parse_datum(value, source):
    """A Datum from record bytes; an error naming `source` when they are not one."""
    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(value)
    except Exception as e:  # protobuf's DecodeError (its type depends on the protobuf runtime)
        raise VggtoolError(f"{source} is not a Datum (corrupt database?): {e}") from None
    return datum
