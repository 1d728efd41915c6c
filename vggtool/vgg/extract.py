"""Very deep features for other data sets (paper Appendix B), and Caffe's extract_features.

Pooled descriptors (the default): the deploy net's InnerProduct layers are convolutionalised
(vggtool.vgg.surgery) and the net runs densely on the whole image, isotropically rescaled so its smallest
side is Q (vggtool.data.transform.isotropic_resize). The chosen blob's map (N x C x H x W) is averaged over its spatial
positions (global average pooling), the descriptor averaged with the horizontally flipped image's
(--flip), the per-scale descriptors concatenated (`stack`) or averaged (`average`) in --scales order,
and the result L2-normalised.

Raw blobs (--no-pool, Caffe's extract_features): the net runs unchanged on each image (rescaled when one
scale is given) and the blob is kept as it is, flattened, without normalisation.

Images are read in chunks; within a chunk the rescaled images of equal size go through the net together
(flips in the same batch), so a data set of equal-sized images runs in full batches.
The blob is read right after the last layer that writes it, so in-place layers (fc7's ReLU and, in
TEST, Dropout) are applied and later layers (fc8) are not run.
"""
import io
import os
import shutil

import numpy as np

from .. import atomic_files
from ..io import prototxt
from ..atomic_files import remove_stale_temporaries, temporary_folder
from ..backend import CPU, to_numpy
from ..data.transform import isotropic_resize
from ..errors import VggtoolError
from ..proto import caffe_pb2
from . import evaluate as ev

AGGREGATES = ("stack", "average")


def l2_normalise(x, eps=1e-12):
    x = np.asarray(x, np.float64)
    norm = np.sqrt((x * x).sum(axis=-1, keepdims=True))
    return x / np.maximum(norm, eps)


class FeatureExtractor:
    def __init__(self, model, weights, layer, *, scales=None, flip=False, aggregate="stack", mean=None,
                 pool=True, device=CPU, batch=8, source=None, scale=1.0):
        source = source or (model if isinstance(model, str) else "net")
        if aggregate not in AGGREGATES:
            raise VggtoolError(f"--aggregate must be one of {', '.join(AGGREGATES)}, got '{aggregate}'")
        if isinstance(model, str) and not os.path.exists(model):
            raise VggtoolError(f"--net: {model} does not exist")
        param = model if isinstance(model, caffe_pb2.NetParameter) else prototxt.read_net_param(model)
        self.fc_layers = [layer_param.name for layer_param in param.layer if layer_param.type == "InnerProduct"]
        self.net, self.input, shape = ev.load_deploy_net(param, weights, source, device, convolutionalize=pool)
        self.channels, self.input_size = shape[1], (shape[2], shape[3])
        self.pool, self.flip, self.aggregate = bool(pool), bool(flip), aggregate
        self.batch = max(1, int(batch))
        if pool:
            self.scales = ev.default_scales(self.input_size) if scales is None else [int(q) for q in scales]
        else:
            self.scales = [] if scales is None else [int(q) for q in scales]
            if len(self.scales) > 1 or self.flip:
                raise VggtoolError("--no-pool keeps one raw blob per image: give at most one scale and no --flip")
        if pool and not self.scales:
            raise VggtoolError("give at least one scale (--scales)")
        if self.fc_layers:
            for q in self.scales:
                if q < max(self.input_size):
                    raise VggtoolError(
                        f"--scales: Q={q} is smaller than the net's {self.input_size[0]}x{self.input_size[1]} "
                        f"input, which its fully-connected layers ({', '.join(self.fc_layers)}) need: "
                        f"use scales >= {max(self.input_size)}")
        self.preprocess = ev.InputTransform(mean, self.channels, scale)  # (image - mean) * scale
        self.blob, self.end_layer = self._pick_blob(layer, source)
        self.blob_shape = None  # (C, H, W) of the raw blob, set by the first --no-pool batch

    def _pick_blob(self, blob, source):
        net = self.net
        last = {blob: net.layer_names[i] for blob, i in net.last_writers().items()}
        if blob not in last or blob == self.input:
            raise VggtoolError(f"{source}: --layer '{blob}' is not a blob computed by the net "
                               f"(blobs: {', '.join(b for b in net.blobs if b != self.input)})")
        return blob, last[blob]

    # -- forward -----------------------------------------------------------------------------------------
    def run_blob(self, batch):
        """N x C x H x W input -> the blob, as float64 NumPy (N, ...)."""
        self.net.forward(**{self.input: batch}, end=self.end_layer)
        return to_numpy(self.net.blobs[self.blob].data).astype(np.float64)

    def pooled(self, batch):
        """Global average pooling over the blob's spatial positions -> (N, C)."""
        b = self.run_blob(batch)
        return b.reshape(b.shape[0], b.shape[1], -1).mean(axis=2) if b.ndim > 2 else b

    def _group_forward(self, arrays, fn):
        """fn over arrays (C x H x W each), batched by equal shape; results (one row each) in input order."""
        out = [None] * len(arrays)
        groups = {}
        for i, a in enumerate(arrays):
            groups.setdefault(a.shape, []).append(i)
        for idx in groups.values():
            for k in range(0, len(idx), self.batch):
                part = idx[k:k + self.batch]
                res = fn(np.stack([arrays[i] for i in part]))
                for i, r in zip(part, res):
                    out[i] = r
        return out

    def describe(self, images):
        """Descriptors (len(images), D) float32 for a list of HxWxC BGR uint8 images."""
        if not self.pool:
            return self._raw(images)
        per_scale = []
        for q in self.scales:
            xs = [self.preprocess(isotropic_resize(im, q)) for im in images]
            if self.flip:
                xs = [a for x in xs for a in (x, np.ascontiguousarray(x[:, :, ::-1]))]
            d = np.array(self._group_forward(xs, self.pooled))
            if self.flip:
                d = 0.5 * (d[0::2] + d[1::2])
            per_scale.append(d)
        d = np.concatenate(per_scale, axis=1) if self.aggregate == "stack" else np.mean(per_scale, axis=0)
        return l2_normalise(d).astype(np.float32)

    def _raw(self, images):
        xs = []
        for im in images:
            x = self.preprocess(isotropic_resize(im, self.scales[0]) if self.scales else im)
            if self.fc_layers and x.shape[1:] != self.input_size:
                raise VggtoolError(
                    f"an image of {x.shape[1]}x{x.shape[2]} does not fit the net's {self.input_size[0]}x"
                    f"{self.input_size[1]} input (it has fully-connected layers): resize the images, e.g. "
                    "data_prep convert_imageset --resize, or drop --no-pool for pooled dense features")
            xs.append(x)

        def raw(batch):
            b = self.run_blob(batch)
            shape = b.shape[1:] + (1,) * (3 - len(b.shape[1:]))
            if self.blob_shape is None:
                self.blob_shape = shape
            elif shape != self.blob_shape:
                raise VggtoolError(f"--no-pool: blob '{self.blob}' is {shape} for some images and "
                                   f"{self.blob_shape} for others; give equal-sized images or one --scales")
            return b.reshape(b.shape[0], -1)

        return np.array(self._group_forward(xs, raw), np.float32)


# -- data set -> features ------------------------------------------------------------------------------------
def extract(extractor, image_set, limit=None, chunk=64, progress=True):
    """(features (N, D) float32, labels per image [tuples], keys) over an ImageSet."""
    from ..data.samples import count_samples, iterate_image_set
    from ..progress import progress as progress_bar

    total = len(image_set) if image_set.lmdb is None else count_samples(image_set.lmdb)
    if limit is not None:
        total = min(total, limit)
    feats, labels, keys, pending = [], [], [], []

    def flush():
        if pending:
            feats.append(extractor.describe([im for _, im, _ in pending]))
            bar.update(len(pending))
            pending.clear()

    bar = progress_bar(total=total, unit="img", disable=not progress, desc=f"extracting {extractor.blob}")
    with bar:
        for key, image, lab in iterate_image_set(image_set, extractor.channels == 3, limit):
            channels = image.shape[2] if image.ndim == 3 else 1
            if channels != extractor.channels:
                raise VggtoolError(f"--data {image_set.source}: image '{key}' has {channels} channel(s), the "
                                   f"net's input has {extractor.channels}")
            keys.append(key)
            labels.append(lab)
            pending.append((key, image, lab))
            if len(pending) >= chunk:
                flush()
        flush()
    if not keys:
        raise VggtoolError(f"--data: {image_set.source} holds no images")
    return np.concatenate(feats), labels, keys


# -- feature files -------------------------------------------------------------------------------------------
def save_npz(path, features, labels, keys, classes=None, ignore=None, **meta):
    """features (N x D float32), labels ((N,) or N x C multi-hot), keys; classes/ignore when known."""
    arrays = dict(features=np.asarray(features, np.float32), labels=np.asarray(labels),
                  keys=np.asarray(keys, dtype=str), **{k: np.asarray(v) for k, v in meta.items()})
    if classes is not None:
        arrays["classes"] = np.asarray(classes, dtype=str)
    if ignore is not None:
        arrays["ignore"] = np.asarray(ignore, bool)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_files.atomic_write_bytes(path, buf.getvalue())


def save_lmdb(path, features, labels, keys, blob_shape=None, overwrite=False):
    """An LMDB of Datum with float_data (Caffe's extract_features output), keyed `%08d_<key>`; the label is
    the image's class (0 for multi-label data). Written under a temporary name, then renamed."""
    from ..data.datum import open_lmdb, record_key

    if os.path.exists(path) and not overwrite:
        raise VggtoolError(f"{path} already exists (pass --overwrite to replace it)")
    features = np.asarray(features, np.float32)
    c, h, w = blob_shape if blob_shape is not None else (features.shape[1], 1, 1)
    labels = np.asarray(labels)
    single = labels.ndim == 1
    remove_stale_temporaries(path)  # what a killed extraction left
    tmp = temporary_folder(path)
    shutil.rmtree(tmp, ignore_errors=True)
    env = open_lmdb(tmp, write=True, map_size=max(1 << 24, 2 * features.nbytes + 4096 * len(features)))
    try:
        with env.begin(write=True) as txn:
            for i, (vec, key) in enumerate(zip(features, keys)):
                datum = caffe_pb2.Datum(channels=c, height=h, width=w, label=int(labels[i]) if single else 0)
                datum.float_data.extend(vec.tolist())
                txn.put(record_key(i, key), datum.SerializeToString())
        env.close()
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        env.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class Features:
    def __init__(self, features, labels, keys, classes=None, ignore=None, sources=(), dataset=None):
        self.features, self.labels, self.keys = features, labels, keys
        self.classes, self.ignore, self.sources = classes, ignore, list(sources)
        self.dataset = dataset  # e.g. "VOC2007" (from a VOC folder), else None

    @property
    def multilabel(self):
        return self.labels.ndim == 2


def load_npz(path):
    if not os.path.exists(path):
        raise VggtoolError(f"features file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            return Features(z["features"].astype(np.float32), z["labels"], z["keys"],
                            z["classes"] if "classes" in z else None, z["ignore"] if "ignore" in z else None,
                            [path], str(z["dataset"]) if "dataset" in z else None)
    except KeyError as e:
        raise VggtoolError(f"{path}: not a vggtool features file (it lacks an array: {e})") from None
    except (ValueError, OSError) as e:
        raise VggtoolError(f"{path}: cannot read features: {e}") from None


def load_features(paths):
    """Load one or several features files of the same images; several are stacked (late fusion: the
    descriptors of several nets concatenated per image)."""
    if isinstance(paths, str):
        paths = [p for p in paths.split(",") if p]
    if not paths:
        raise VggtoolError("give at least one features .npz file")
    first = load_npz(paths[0])
    parts = [first.features]
    for path in paths[1:]:
        other = load_npz(path)
        if len(other.keys) != len(first.keys) or not np.array_equal(other.keys, first.keys):
            raise VggtoolError(f"{path}: its images differ from those of {paths[0]}: stack features of the "
                               "same images, extracted in the same order")
        if other.labels.shape != first.labels.shape or not np.array_equal(other.labels, first.labels):
            raise VggtoolError(f"{path}: its labels differ from those of {paths[0]}")
        parts.append(other.features)
    first.features = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
    first.sources = list(paths)
    return first
