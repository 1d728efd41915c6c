"""transform_param: from a decoded uint8 image to the float32 C x H x W network input.

Order (Caffe's, with vggtool's extensions in the middle): isotropic rescale (smallest_side /
smallest_side_min..max / test_smallest_side) -> crop (random in TRAIN, centred in TEST) -> mirror
(TRAIN) -> float -> PCA colour shift (TRAIN) -> mean subtraction -> scale. Pixels stay BGR on the 0-255
scale until the mean is subtracted. All random draws come from the per-sample Generator passed in, so
a sample's augmentation depends only on (seed, layer, iteration, global sample index).

PCA colour shift (AlexNet): pca_stats_file is data_prep compute_color_stats' BlobProtoVector, RGB order,
eigenvalues lambda_i of the 0-255 RGB covariance and unit eigenvectors p_i (columns). Each TRAIN image
gets sum_i alpha_i * sqrt(lambda_i) * p_i added to every pixel (R, G, B mapped to Caffe's B, G, R),
alpha_i ~ N(0, pca_sigma). sqrt(lambda_i) is the standard deviation along p_i, the scale AlexNet's
published numbers and common implementations use; the shift's covariance is then pca_sigma^2 times the
data's colour covariance (with lambda_i itself, on a 0-255 scale, shifts would be hundreds of levels).
"""
import cv2
import numpy as np

from . import boxes as box_geometry
from ..io.wire import proto_to_array, read_binary_proto
from ..errors import VggtoolError
from ..proto import caffe_pb2
from .mean import mean_image

TRAIN = 0
MAX_RESIZE_CHANNELS = 4


def isotropic_resize(image, smallest):
    """Rescale so the smaller side is `smallest`, keeping the aspect ratio (the other side rounded):
    cv2.INTER_AREA when shrinking (no aliasing), INTER_LINEAR when enlarging. The one rescale of vggtool:
    training's transform, testing, extraction and localisation, and convert_imageset --resize_smallest: an
    image stored at 512 and tested at Q=256 is not aliased, so a net sees at test time the pixels it was
    trained on."""
    h, w = image.shape[:2]
    if min(h, w) == smallest:
        return image
    scale = smallest / min(h, w)
    size = (max(smallest, round(w * scale)), max(smallest, round(h * scale)))  # cv2 wants (w, h)
    out = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    return out[:, :, None] if out.ndim == 2 else out


def fixed_resize(image, height, width):
    """Caffe's resize to height x width, aspect ratio not kept (ImageData's new_height/new_width,
    convert_imageset --resize_height/--resize_width): bilinear, as Caffe's cv::resize call."""
    if image.shape[:2] == (height, width):
        return image
    out = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return out[:, :, None] if out.ndim == 2 and image.ndim == 3 else out


def read_pca_stats(path, where="transform_param"):
    vec = read_binary_proto(path, caffe_pb2.BlobProtoVector(), "colour statistics (BlobProtoVector)")
    if len(vec.blobs) != 2:
        raise VggtoolError(f"{where}: pca_stats_file {path} holds {len(vec.blobs)} blob(s); expected 2 "
                           "(eigenvalues, eigenvectors) as written by data_prep compute_color_stats")
    values = proto_to_array(vec.blobs[0], f"{where}: pca_stats_file {path} blob 0").astype(np.float64).reshape(-1)
    vectors = proto_to_array(vec.blobs[1], f"{where}: pca_stats_file {path} blob 1").astype(np.float64)
    if values.shape != (3,) or vectors.size != 9:
        raise VggtoolError(f"{where}: pca_stats_file {path}: expected 3 eigenvalues and a 3x3 eigenvector "
                           f"matrix, got shapes {values.shape} and {vectors.shape}")
    return values, vectors.reshape(3, 3)


class DataTransformer:
    """Applies a TransformationParameter; `where` names the layer in error messages."""

    def __init__(self, param, phase, where="transform_param"):
        self.p = param
        self.train = phase == TRAIN
        self.where = where
        p = param
        if p.force_color and p.force_gray:
            raise self.error("force_color and force_gray exclude each other")
        self.jitter = p.HasField("smallest_side_min") or p.HasField("smallest_side_max")
        if self.jitter:
            if not (p.HasField("smallest_side_min") and p.HasField("smallest_side_max")):
                raise self.error("scale jittering needs both smallest_side_min and smallest_side_max")
            if not 0 < p.smallest_side_min <= p.smallest_side_max:
                raise self.error(f"smallest_side_min {p.smallest_side_min} must be > 0 and <= "
                                 f"smallest_side_max {p.smallest_side_max}")
        for name in ("smallest_side", "smallest_side_min", "test_smallest_side"):
            if p.HasField(name) and p.crop_size and getattr(p, name) < p.crop_size:
                raise self.error(f"{name} {getattr(p, name)} is smaller than crop_size {p.crop_size}")
        self.mean = mean_image(p.mean_file, p.mean_value, where)  # C x H x W, C x 1 x 1 or None
        self.pca = None
        if p.pca_stats_file:
            values, vectors = read_pca_stats(p.pca_stats_file, where)
            self.pca = (np.sqrt(np.clip(values, 0, None)), vectors)
        # The fields read for every sample, as plain attributes (a protobuf field read costs more).
        self.crop_size, self.pca_sigma, self.scale = p.crop_size, p.pca_sigma, p.scale
        self.random_mirror = self.train and p.mirror
        self.scale_range = (p.smallest_side_min, p.smallest_side_max + 1) if self.train and self.jitter else None
        self.fixed_scale = self._fixed_scale()

    def error(self, message):
        return VggtoolError(f"{self.where}: {message}")

    @property
    def color(self):
        """The `color` argument of datum_to_image: True/False force 3/1 channels, None keeps them."""
        return True if self.p.force_color else (False if self.p.force_gray else None)

    def scale_for(self, rng):
        """The smaller side S this sample is rescaled to (None: no rescale)."""
        if self.scale_range is not None:
            return int(rng.integers(*self.scale_range))
        return self.fixed_scale

    def _fixed_scale(self):
        """S when it is not drawn: TRAIN without jitter, TEST."""
        p = self.p
        if self.train:
            return p.smallest_side or None
        if p.HasField("test_smallest_side"):
            return p.test_smallest_side
        if p.smallest_side:
            return p.smallest_side
        if self.jitter:  # no TEST scale given: the middle of the training range
            return (p.smallest_side_min + p.smallest_side_max) // 2
        return None

    @property
    def colour_shift(self):
        """Whether samples get a PCA colour shift (pca_stats_file, TRAIN only)."""
        return self.pca is not None and self.train

    def __call__(self, image, rng=None, source="image", boxes=None):
        """HxWxC uint8 (BGR or gray) -> float32 CxHxW. `rng` is required in TRAIN.

        With `boxes` ((k, 4) x1, y1, x2, y2 in the image's pixels, see vggtool.data.boxes) returns
        (output, boxes moved through the same rescale, crop and mirror; not clipped to the crop)."""
        pixels, shift, crop, boxes = self.geometry(image, rng, source, boxes)
        out = self.to_float(np, pixels[None], None if shift is None else shift[None], np.array([crop]))[0]
        return out if boxes is None else (out, boxes)

    def geometry(self, image, rng=None, source="image", boxes=None):
        """The sample's random draws and its uint8 part: (C x H x W uint8 view of the rescaled, cropped,
        mirrored image; its colour shift, float32 (3, 1, 1), or None; crop (h_off, w_off, mirror) for the
        mean image; boxes moved along, or None). to_float finishes a batch of these."""
        if image.ndim == 2:
            image = image[:, :, None]
        s = self.scale_for(rng)
        if s:
            self._check_resizable(image, source)
            old_hw = image.shape[:2]
            image = isotropic_resize(image, s)
            if boxes is not None:
                boxes = box_geometry.resize_boxes(boxes, old_hw, image.shape[:2])
        h, w, c = image.shape
        crop = self.crop_size
        h_off = w_off = 0
        if crop:
            if h < crop or w < crop:
                raise self.error(f"{source} is {h}x{w}, smaller than crop_size {crop} "
                                 "(rescale it with smallest_side or convert with --resize_smallest)")
            if self.train:
                h_off = int(rng.integers(0, h - crop + 1))
                w_off = int(rng.integers(0, w - crop + 1))
            else:
                h_off, w_off = (h - crop) // 2, (w - crop) // 2
            image = image[h_off:h_off + crop, w_off:w_off + crop]
        mirror = bool(self.random_mirror and rng.integers(0, 2))
        if mirror:
            image = image[:, ::-1]
        if boxes is not None:
            boxes = box_geometry.crop_boxes(boxes, w_off, h_off, image.shape[1], image.shape[0], clip=False)
            if mirror:
                boxes = box_geometry.flip_boxes(boxes, image.shape[1])
        shift = None
        if self.colour_shift:
            if c != 3:
                raise self.error(f"pca_stats_file needs 3-channel images, {source} has {c}")
            std, vectors = self.pca
            alpha = rng.normal(0.0, self.pca_sigma, 3)
            shift = -(vectors @ (alpha * std))[::-1].astype(np.float32).reshape(3, 1, 1)  # RGB -> BGR
        if self.mean is not None:
            self._check_mean(c, h, w, source)
        return image.transpose(2, 0, 1), shift, (h_off, w_off, int(mirror)), boxes

    def to_float(self, xp, pixels, shifts=None, crops=None, mean=None, out=None):
        """The float part of a batch, with `xp` where `pixels` (N, C, H, W) uint8 lie: float32, minus the
        colour shifts (N, 3, 1, 1) plus the mean (`mean`: the mean image on that device; default
        self.mean), times scale; in `out` (float32, N x C x H x W) if given. crops: geometry's crops,
        a host (N, 3) array (needed for a mean image). Each element gets the same float32 operations, in
        the same order, as one sample alone: a batch equals its samples bit for bit."""
        # The colour shift and a per-channel mean are one offset per channel; the conversion and the
        # subtraction are one pass (float32(pixel) - offset, as two passes would compute it).
        offset = shifts
        if self.mean is not None:
            region = self._mean_regions(xp, self.mean if mean is None else mean, pixels.shape, crops)
            offset = region if offset is None else offset + region
        if out is None:
            out = xp.empty(pixels.shape, dtype=xp.float32)
        if offset is not None:
            # in the offset's precision where it is float64, as `out -= offset` computed it
            xp.subtract(pixels, offset, out=out, dtype=np.result_type(np.float32, offset.dtype))
        else:
            out[...] = pixels
        if self.scale != 1:
            out *= np.float32(self.scale)
        return out

    def _check_resizable(self, image, source):
        # OpenCV shrinks (INTER_AREA) images of at most 4 channels
        if image.shape[2] > MAX_RESIZE_CHANNELS:
            raise self.error(f"{source} has {image.shape[2]} channels; rescaling (smallest_side, "
                             f"smallest_side_min/max, test_smallest_side) handles at most {MAX_RESIZE_CHANNELS}")

    def _check_mean(self, c, h, w, source):
        mean = self.mean
        if mean.shape[0] not in (1, c):
            raise self.error(f"the mean has {mean.shape[0]} channel(s) but {source} has {c}")
        if mean.shape[1:] != (1, 1) and mean.shape[1:] != (h, w):
            raise self.error(f"mean_file is {mean.shape[1]}x{mean.shape[2]} but {source} is {h}x{w} (after "
                             "rescaling); use a mean of the same size or a per-channel mean "
                             "(mean_value, or compute_image_mean --per_channel_only)")

    @staticmethod
    def _mean_regions(xp, mean, shape, crops):
        """The mean to subtract from a batch of `shape`: a per-channel mean as it is; of a mean image, as
        Caffe, the pixels under each sample's crop (mirrored along with them): one slice when all samples
        share the crop, else one gather (N, C, ch, cw), no loop over the samples."""
        if mean.shape[1:] == (1, 1):
            return mean
        ch, cw = shape[2], shape[3]
        crops = np.asarray(crops)
        if (crops == crops[0]).all():
            h_off, w_off, mirror = (int(v) for v in crops[0])
            region = mean[:, h_off:h_off + ch, w_off:w_off + cw]
            return region[:, :, ::-1] if mirror else region
        rows = crops[:, :1] + np.arange(ch)
        cols = np.where(crops[:, 2:] != 0, crops[:, 1:2] + (cw - 1 - np.arange(cw)), crops[:, 1:2] + np.arange(cw))
        region = mean[:, xp.asarray(rows)[:, :, None], xp.asarray(cols)[:, None, :]]  # (C, N, ch, cw)
        return region.transpose(1, 0, 2, 3)

    def output_shape(self, image):
        """C x H x W of the output for this (representative) decoded image, without random draws."""
        if image.ndim == 2:
            image = image[:, :, None]
        c = image.shape[2]
        if self.p.crop_size:
            return (c, self.p.crop_size, self.p.crop_size)
        if self.train and self.jitter:
            raise self.error("scale jittering (smallest_side_min/max) gives images of varying size: "
                             "set crop_size")
        s = self.scale_for(None)
        if s:
            self._check_resizable(image, "the first record")
            image = isotropic_resize(image, s)
        return (c,) + image.shape[:2]
