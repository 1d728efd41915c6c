"""Blob: an N-d array of data and one of gradients (diff), like Caffe's Blob.

Storage is a flat buffer that only grows: reshaping to a size that fits reuses it, so a net that is
reshaped every iteration (or per image in dense evaluation) does not reallocate. The diff buffer is
allocated on first use, so nets that never run backward pay nothing for it. Reading and writing blobs as
Caffe's BlobProto is vggtool.io.wire's business.
"""
import math

import numpy as np

from .backend import CPU
from .errors import VggtoolError


MAX_AXES = 32  # Caffe's kMaxBlobAxes
MAX_DIM = 2**31 - 1  # Caffe's dimensions are ints
MAX_ELEMENTS = 2**60


class BlobShapeError(VggtoolError):
    """A shape no blob can take (negative, too many axes, more bytes than the device holds). The net adds
    the layer's name (vggtool.net.build.layer_context)."""


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
        # a message while the data (diff) bytes belong to a net's memory pool: after their last reader in a
        # pass, until the producer writes them again (vggtool.net.pool); reading them then is an error
        self.released = None
        self.diff_released = None
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

    def _refresh_views(self):
        count = self.count
        self._data = self._data_buf[:count].reshape(self._shape)
        self._diff = None if self._diff_buf is None else self._diff_buf[:count].reshape(self._shape)

    # -- data and diff -----------------------------------------------------------------------------------
    @property
    def data(self):
        if self.released is not None:
            raise VggtoolError(self.released)
        return self._data

    @data.setter
    def data(self, value):
        self._assign(self._data, value, "data")

    @property
    def diff(self):
        if self.diff_released is not None:
            raise VggtoolError(self.diff_released)
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

    @property
    def diff_storage(self):
        """The flat array behind diff, None before the diff is first used (blobs sharing a diff hold the
        same one)."""
        return self._diff_buf

    def place_diff(self, storage):
        """Keep the diff in `storage` from now on (a flat array of this blob's dtype and device, at least
        count long), carrying the current values over: the MPI exchange puts every gradient in its
        Allreduce buffer this way."""
        if storage.size < self.count or storage.dtype != self.dtype:
            raise VggtoolError(f"{self._what()}: a diff of {self.count} {self.dtype} values cannot be kept in "
                               f"{storage.size} {storage.dtype} values")
        storage[:self.count] = self.diff.ravel()
        self._diff_buf = storage
        self._refresh_views()

    def use_data_storage(self, flat):
        """Keep the data in `flat` (as use_diff_storage); the values there are not carried over."""
        if flat.size < self.count or flat.dtype != self.dtype:
            raise VggtoolError(f"{self._what()}: data storage of {flat.size} {flat.dtype} for {self.count} {self.dtype}")
        self._data_buf = flat
        self._refresh_views()

    def use_diff_storage(self, flat):
        """Keep the diff in `flat` (a 1-d array of at least `count` elements of this dtype: the net's
        memory pool, vggtool.net.pool); a reshape beyond it gives the blob a buffer of its own again."""
        if flat.size < self.count or flat.dtype != self.dtype:
            raise VggtoolError(f"{self._what()}: diff storage of {flat.size} {flat.dtype} for {self.count} {self.dtype}")
        self._diff_buf = flat
        self._refresh_views()

    def share_diff(self, other):
        if other.count != self.count:
            raise VggtoolError(f"cannot share diff between blobs of shapes {self._shape} and {other.shape}")
        other.diff  # allocate
        self._diff_buf = other._diff_buf
        self._refresh_views()
