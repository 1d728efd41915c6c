"""The one mean loader: the mean a net's input is centred with, from a transform_param (mean_file or
mean_value) or from the command line (--mean-file or --mean-value).

A mean file is a .binaryproto BlobProto (what Caffe's and data_prep's compute_image_mean write:
1 x C x H x W, in the legacy num/channels/height/width fields or in `shape`) or, by its extension, a
.npy array of C x H x W (as pycaffe's ilsvrc_2012_mean.npy). Any other shape is an error (Caffe's data
layer refuses it too); a per-channel mean is a 1 x C x 1 x 1 file (compute_image_mean
--per_channel_only) or mean_value.

Two forms: mean_image() keeps the C x H x W image (a per-channel mean as C x 1 x 1), for the data
layers' transform, which subtracts the mean at the crop's source pixels; load_mean() gives the (C,)
per-channel mean, a mean image averaged over its pixels as pycaffe's classifier does, for the
test-time commands whose images come in every size.
"""
import os

import numpy as np

from ..io.wire import proto_to_array, read_binary_proto
from ..errors import VggtoolError
from ..listargs import parse_list
from ..proto import caffe_pb2


def _read_blob_array(path):
    """The array of a BlobProto file: the one place the mean reads Caffe's wire format."""
    return proto_to_array(read_binary_proto(path, caffe_pb2.BlobProto(), "mean file (BlobProto)"), path)


def _read_npy(path):
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise VggtoolError(f"{path}: not a readable .npy array ({e})") from None


def read_mean_file(path, where="mean_file"):
    """The C x H x W float32 mean image of a .binaryproto or .npy file; errors start with `where`."""
    if not os.path.exists(path):
        raise VggtoolError(f"{where}: {path} does not exist")
    try:
        mean = _read_npy(path) if str(path).endswith(".npy") else _read_blob_array(path)
    except VggtoolError as e:
        raise VggtoolError(f"{where}: {e}") from None
    if mean.dtype.kind not in "fiu":
        raise VggtoolError(f"{where}: {path} holds {mean.dtype} values, not numbers")
    if mean.ndim == 4 and mean.shape[0] == 1:
        mean = mean[0]
    if mean.ndim != 3:
        raise VggtoolError(f"{where}: {path} has shape {mean.shape}; expected 1xCxHxW (or CxHxW); give a "
                           "per-channel mean as mean_value / --mean-value")
    return mean.astype(np.float32)


def mean_values(values, where="mean_value"):
    """(C,) float32 from numbers, or from text 'B,G,R' (one value: the same for every channel)."""
    if isinstance(values, str):
        values = parse_list(values, where, float, "104,117,123", positive=False)
    mean = np.asarray(values, np.float32).reshape(-1)
    if not np.isfinite(mean).all():
        raise VggtoolError(f"{where}: the mean must be finite numbers, got {mean.tolist()}")
    return mean


def mean_image(mean_file=None, mean_value=(), where="transform_param"):
    """A transform_param's mean: C x H x W (mean_file), C x 1 x 1 (mean_value) or None."""
    if mean_file and len(mean_value):
        raise VggtoolError(f"{where}: give mean_file or mean_value, not both")
    if mean_file:
        return read_mean_file(mean_file, f"{where}: mean_file")
    if len(mean_value):
        return mean_values(mean_value, f"{where}: mean_value").reshape(-1, 1, 1)
    return None


def load_mean(mean_value=None, mean_file=None, channels=None):
    """Per-channel mean (C,) float32 from --mean-value (text 'B,G,R' or numbers) or --mean-file (a mean
    image averaged per channel); zeros if neither. One value is repeated to `channels` when given."""
    if mean_value is not None and mean_file is not None:
        raise VggtoolError("give either --mean-value or --mean-file, not both")
    if mean_file is not None:
        image = read_mean_file(mean_file, "--mean-file")
        mean = image.reshape(image.shape[0], -1).astype(np.float64).mean(axis=1).astype(np.float32)
    elif mean_value is not None:
        mean = mean_values(mean_value, "--mean-value")
    else:
        mean = np.zeros(1, np.float32)
    if mean.size == 1 and channels:
        mean = np.repeat(mean, channels)
    if channels and mean.size != channels:
        raise VggtoolError(f"the mean has {mean.size} channel(s), the net's input has {channels}")
    return mean
