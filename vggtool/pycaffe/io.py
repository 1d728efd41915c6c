"""caffe.io: blob protos and Datums as arrays, pycaffe's Transformer, and image loading/resizing.

Layouts are pycaffe's: Datums and blobs are C x H x W (channel first); images from load_image are
H x W x C RGB floats in [0, 1]. OpenCV does the decoding and resizing (pycaffe used scikit-image):
resize_image interpolates between pixel centres and holds the edge value beyond the last centre.
"""
import cv2
import numpy as np

from ..io.wire import proto_values
from ..errors import VggtoolError
from ..proto import caffe_pb2


class PycaffeValueError(VggtoolError, ValueError):
    """Where pycaffe raises ValueError (a blob proto without a shape, a Datum array that is not 3-d, a
    mean that does not fit the input)."""


# -- proto / datum / ndarray conversion -----------------------------------------------------------------------
def blobproto_to_array(blob, return_diff=False):
    """The data (or, with return_diff, the diff) of a BlobProto as an array of its shape: the legacy
    num/channels/height/width when any is set, else `shape`."""
    values = proto_values(blob, diff=return_diff)
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        shape = (blob.num, blob.channels, blob.height, blob.width)
    elif blob.HasField("shape"):
        shape = tuple(blob.shape.dim)
    else:
        raise PycaffeValueError(f"blob proto has no shape (neither 'shape' nor num/channels/height/width) and "
                             f"{values.size} value(s)")
    if values.size != int(np.prod(shape)):
        raise PycaffeValueError(f"blob proto of shape {shape} holds {values.size} {'diff' if return_diff else 'data'} "
                             f"value(s), not {int(np.prod(shape))}")
    return values.astype(np.float64).reshape(shape)


def array_to_blobproto(arr, diff=None):
    """An N-d array (and optionally its diff, of the same shape) as a BlobProto with `shape` set."""
    arr = np.asarray(arr)
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(arr.shape)
    blob.data.extend(arr.astype(np.float64).flat)
    if diff is not None:
        diff = np.asarray(diff)
        if diff.size != arr.size:
            raise VggtoolError(f"array_to_blobproto: diff has {diff.size} values, the array {arr.size}")
        blob.diff.extend(diff.astype(np.float64).flat)
    return blob


def arraylist_to_blobprotovector_str(arraylist):
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.extend([array_to_blobproto(a) for a in arraylist])
    return vec.SerializeToString()


def blobprotovector_str_to_arraylist(data):
    vec = caffe_pb2.BlobProtoVector()
    vec.ParseFromString(data)
    return [blobproto_to_array(b) for b in vec.blobs]


def array_to_datum(arr, label=None):
    """A C x H x W array as a Datum: uint8 goes to `data` (bytes), any other dtype to `float_data`."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise PycaffeValueError(f"Incorrect array shape: array_to_datum takes a C x H x W array, got shape {arr.shape}")
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = arr.shape
    if arr.dtype == np.uint8:
        datum.data = np.ascontiguousarray(arr).tobytes()
    else:
        datum.float_data.extend(arr.astype(np.float64).flat)
    if label is not None:
        datum.label = int(label)
    return datum


def datum_to_array(datum):
    """The C x H x W array of a raw Datum (uint8 from `data`, float from `float_data`); the label is
    datum.label. An encoded Datum (compressed image bytes) is decoded to C x H x W BGR uint8."""
    if datum.encoded:
        image = cv2.imdecode(np.frombuffer(datum.data, np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise VggtoolError("datum_to_array: cannot decode the encoded Datum's image bytes")
        return image[None] if image.ndim == 2 else image.transpose(2, 0, 1)
    shape = (datum.channels, datum.height, datum.width)
    if len(datum.data):
        if len(datum.data) != int(np.prod(shape)):
            raise VggtoolError(f"datum_to_array: {len(datum.data)} bytes do not fill shape {shape}")
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape)
    if len(datum.float_data) != int(np.prod(shape)):
        raise VggtoolError(f"datum_to_array: {len(datum.float_data)} floats do not fill shape {shape}")
    return np.array(datum.float_data, dtype=np.float64).reshape(shape)


# -- pre-processing -----------------------------------------------------------------------------------------------
class Transformer:
    """Input preparation for a net, per input blob (pycaffe's order): float32 -> resize to the blob's
    H x W -> transpose -> channel swap -> * raw_scale -> - mean -> * input_scale.

    `inputs`: {blob name: blob shape}, e.g. {'data': net.blobs['data'].data.shape}."""

    def __init__(self, inputs):
        self.inputs = {name: tuple(shape) for name, shape in inputs.items()}
        self.transpose = {}
        self.channel_swap = {}
        self.raw_scale = {}
        self.mean = {}
        self.input_scale = {}

    def _check_input(self, in_):
        if in_ not in self.inputs:
            raise VggtoolError(f"{in_} is not one of the net inputs: {self.inputs}")

    def preprocess(self, in_, data):
        """H' x W' x K image -> K x H x W input for blob `in_`."""
        self._check_input(in_)
        caffe_in = np.asarray(data).astype(np.float32, copy=False)
        in_dims = self.inputs[in_][2:]
        if caffe_in.shape[:2] != in_dims:
            caffe_in = resize_image(caffe_in, in_dims)
        transpose = self.transpose.get(in_)
        if transpose is not None:
            caffe_in = caffe_in.transpose(transpose)
        channel_swap = self.channel_swap.get(in_)
        if channel_swap is not None:
            caffe_in = caffe_in[list(channel_swap), :, :]
        raw_scale = self.raw_scale.get(in_)
        if raw_scale is not None:
            caffe_in = caffe_in * np.float32(raw_scale)
        mean = self.mean.get(in_)
        if mean is not None:
            caffe_in = caffe_in - mean
        input_scale = self.input_scale.get(in_)
        if input_scale is not None:
            caffe_in = caffe_in * np.float32(input_scale)
        return np.ascontiguousarray(caffe_in, dtype=np.float32)

    def deprocess(self, in_, data):
        """Undo preprocess (except the resize): a net input back to an H x W x K image."""
        self._check_input(in_)
        decaf_in = np.array(data, dtype=np.float32).squeeze()
        input_scale = self.input_scale.get(in_)
        if input_scale is not None:
            decaf_in /= input_scale
        mean = self.mean.get(in_)
        if mean is not None:
            decaf_in += mean
        raw_scale = self.raw_scale.get(in_)
        if raw_scale is not None:
            decaf_in /= raw_scale
        channel_swap = self.channel_swap.get(in_)
        if channel_swap is not None:
            decaf_in = decaf_in[np.argsort(channel_swap), :, :]
        transpose = self.transpose.get(in_)
        if transpose is not None:
            decaf_in = decaf_in.transpose(np.argsort(transpose))
        return decaf_in

    def set_transpose(self, in_, order):
        """The axis order, e.g. (2, 0, 1) turns H x W x C into C x H x W."""
        self._check_input(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise VggtoolError("Transpose order needs to have the same number of dimensions as the input.")
        self.transpose[in_] = tuple(order)

    def set_channel_swap(self, in_, order):
        """The channel order after the transpose, e.g. (2, 1, 0): RGB -> BGR."""
        self._check_input(in_)
        if len(order) != self.inputs[in_][1]:
            raise VggtoolError("Channel swap needs to have the same number of dimensions as the input channels.")
        self.channel_swap[in_] = tuple(order)

    def set_raw_scale(self, in_, scale):
        """Multiply the raw input (before the mean), e.g. 255 for [0, 1] images and ImageNet models."""
        self._check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_, mean):
        """The mean to subtract: one value per channel (1-d), or K x H x W (resized to the input if its
        size differs)."""
        self._check_input(in_)
        mean = np.asarray(mean)
        if mean.ndim == 1:
            if mean.shape[0] != self.inputs[in_][1]:
                raise PycaffeValueError("Mean channels incompatible with input.")
            mean = mean[:, None, None]
        else:
            shape = mean.shape if mean.ndim != 2 else (1,) + mean.shape
            if len(shape) != 3:
                raise PycaffeValueError("Mean shape invalid")
            mean = mean.reshape(shape)
            if shape != self.inputs[in_][1:]:
                mean = resize_image(mean.transpose(1, 2, 0), self.inputs[in_][2:]).transpose(2, 0, 1)
        self.mean[in_] = mean

    def set_input_scale(self, in_, scale):
        """Multiply after the mean is subtracted."""
        self._check_input(in_)
        self.input_scale[in_] = scale


# -- image IO ----------------------------------------------------------------------------------------------------
def load_image(filename, color=True):
    """An image file as float32 in [0, 1]: H x W x 3 RGB (color=True; gray images are repeated), or
    H x W x 1 (color=False; colour images become luminance)."""
    raw = cv2.imread(str(filename), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise VggtoolError(f"{filename}: cannot read the image (missing, unreadable or not an image)")
    scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(raw.dtype, 1.0)
    img = raw.astype(np.float32) / np.float32(scale)
    if img.ndim == 3:
        img = img[:, :, 2::-1] if img.shape[2] >= 3 else img[:, :, :1]  # BGR(A) -> RGB
        if not color and img.shape[2] == 3:
            img = img @ np.array([0.2125, 0.7154, 0.0721], np.float32)  # scikit-image's rgb2gray
    if img.ndim == 2:
        img = img[:, :, None]
        if color:
            img = np.tile(img, (1, 1, 3))
    return np.ascontiguousarray(img, dtype=np.float32)


_INTERPOLATION = {0: cv2.INTER_NEAREST, 1: cv2.INTER_LINEAR, 2: cv2.INTER_CUBIC, 3: cv2.INTER_CUBIC}


def resize_image(im, new_dims, interp_order=1):
    """An H x W x K array resized to new_dims (height, width), any K, float32."""
    im = np.asarray(im, dtype=np.float32)
    h, w = int(new_dims[0]), int(new_dims[1])
    if im.shape[:2] == (h, w):
        return im.copy()
    if im.min() == im.max():  # constant: nothing to interpolate
        return np.full((h, w) + im.shape[2:], im.min() if im.size else 0, dtype=np.float32)
    flag = _INTERPOLATION.get(int(interp_order), cv2.INTER_LINEAR)
    k = im.shape[2] if im.ndim == 3 else None
    # OpenCV resizes up to 512 channels at once; wider arrays go in slices
    if k is None or k <= 4:
        out = cv2.resize(im, (w, h), interpolation=flag)
    else:
        out = np.concatenate([cv2.resize(np.ascontiguousarray(im[:, :, i:i + 4]), (w, h), interpolation=flag)
                              .reshape(h, w, -1) for i in range(0, k, 4)], axis=2)
    if k is not None and out.ndim == 2:
        out = out[:, :, None]
    return out.astype(np.float32)


def oversample(images, crop_dims):
    """The four corner crops, the centre crop and their mirrors of each H x W x K image, in pycaffe's
    order (corners row by row, centre; then the same five mirrored): 10*N x h x w x K."""
    im_shape = np.array(images[0].shape)
    crop_dims = np.array(crop_dims)
    centre = im_shape[:2] / 2.0
    boxes = [(i, j, i + crop_dims[0], j + crop_dims[1])
             for i in (0, im_shape[0] - crop_dims[0]) for j in (0, im_shape[1] - crop_dims[1])]
    c = np.concatenate([centre - crop_dims / 2.0, centre + crop_dims / 2.0]).astype(int)
    boxes.append(tuple(c))
    crops = np.empty((10 * len(images), crop_dims[0], crop_dims[1], im_shape[-1]), dtype=np.float32)
    ix = 0
    for im in images:
        for y0, x0, y1, x1 in boxes:
            crops[ix] = im[y0:y1, x0:x1, :]
            ix += 1
        crops[ix:ix + 5] = crops[ix - 5:ix, :, ::-1, :]
        ix += 5
    return crops
