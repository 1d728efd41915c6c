"""VGG testing protocol (paper §3.2, §4): dense and multi-crop evaluation at several scales, flips, fusion.

Per image and test scale Q the image is rescaled isotropically so its smallest side is Q, then
- dense: the convolutionalised net (vggtool.vgg.surgery) runs on the whole image -> class score map ->
  softmax over classes at every location -> spatial average (and the same for the flipped image);
  `average='scores'` instead averages the score map then applies softmax (the paper's sum-pooling);
- multi-crop: a 5x5 regular grid of crop x crop windows (corners included) and, with flips, their
  mirrors: 50 crops per scale, batched -> softmax -> average.
Posteriors are averaged over flips and scales; `both` averages the dense and multi-crop posteriors.

The score blob: `blob` if given, else the input of the net's final Softmax layer, else its only output.
If the chosen blob is itself a Softmax output it is used as the posterior as is.
Pre-processing as Caffe: BGR float, minus the mean (per channel; a mean file is averaged per channel,
as pycaffe's classifier does, since images here have every size).
"""
import io
import os

import numpy as np

from .. import atomic_files
from ..io import prototxt
from ..backend import CPU, to_numpy
from ..data.transform import isotropic_resize
from ..errors import VggtoolError
from ..layers.softmax import softmax
from ..listargs import parse_list
from ..net import Net
from ..proto import caffe_pb2
from ..ranking import topk_error  # noqa: F401 - the one top-k rule; evaluate.topk_error for callers
from . import surgery

MODES = ("dense", "multicrop", "both")
AVERAGES = ("posteriors", "scores")  # dense map: softmax per location then average, or average then softmax
GRID = 5  # multi-crop grid per side (the paper: 5x5 crops, 2 flips -> 50 per scale)


# -- images -----------------------------------------------------------------------------------------------
def grid_positions(h, w, crop_h, crop_w, grid=GRID):
    """Top-left corners of a grid x grid regular grid of crops, evenly spaced, corners included."""
    if h < crop_h or w < crop_w:
        raise VggtoolError(f"image of {h}x{w} is smaller than the {crop_h}x{crop_w} crop")
    ys = np.rint(np.linspace(0, h - crop_h, grid)).astype(int)
    xs = np.rint(np.linspace(0, w - crop_w, grid)).astype(int)
    return [(int(y), int(x)) for y in ys for x in xs]


def default_scales(crop):
    """The paper's Q in {256, 384, 512} for a 224 crop, i.e. crop x 8/7, 12/7, 16/7."""
    return [int(round(max(crop) * f / 7)) for f in (8, 12, 16)]


def load_deploy_net(model, weights, source, device=CPU, convolutionalize=True):
    """(net, input blob name, its N x C x H x W shape) of a deploy net for testing, its InnerProduct
    layers turned into convolutions (unless `convolutionalize` is False or it has none)."""
    if weights is not None and not os.path.exists(str(weights)):
        raise VggtoolError(f"--weights: {weights} does not exist")
    if isinstance(model, str) and not os.path.exists(model):
        raise VggtoolError(f"--net: {model} does not exist")
    param = model if isinstance(model, caffe_pb2.NetParameter) else prototxt.read_net_param(model)
    if convolutionalize and surgery.needs_surgery(param):
        _, net = surgery.convolutionalize(param, weights, source, device=device)
    else:
        net = Net(param, weights, phase="TEST", device=device, source=source)
    if not net.inputs:
        raise VggtoolError(f"{source}: the deploy net has no input blob (give it an Input layer)")
    name = net.inputs[0]
    shape = net.blobs[name].shape
    if len(shape) != 4:
        raise VggtoolError(f"{source}: input blob '{name}' has shape {shape}; expected N x C x H x W")
    return net, name, shape


class InputTransform:
    """Caffe's test-time transform: HxWxC (or HxW) BGR uint8 image -> CxHxW float32 (image - mean) * scale.
    Shared by the evaluator, the feature extractor and the localiser (--mean-value/--mean-file, --scale)."""

    def __init__(self, mean, channels, scale=1.0):
        self.channels = int(channels)
        self.mean = np.zeros(self.channels, np.float32) if mean is None else np.ravel(mean).astype(np.float32)
        if self.mean.size == 1:
            self.mean = np.repeat(self.mean, self.channels)
        if self.mean.shape != (self.channels,):
            raise VggtoolError(f"the mean has {self.mean.size} channel(s), the net's input has {self.channels}")
        self.scale = float(scale)  # Caffe's transform_param scale, applied after mean subtraction
        if not np.isfinite(self.scale):
            raise VggtoolError(f"--scale must be a finite number, got {scale}")

    def __call__(self, image):
        if image.ndim == 2:
            image = image[:, :, None]
        if image.shape[2] != self.channels:
            raise VggtoolError(f"image has {image.shape[2]} channel(s), the net's input has {self.channels}")
        x = image.astype(np.float32) - self.mean
        if self.scale != 1.0:
            x *= np.float32(self.scale)
        return np.ascontiguousarray(x.transpose(2, 0, 1))


# -- the evaluator ----------------------------------------------------------------------------------------
class Evaluator:
    """Runs a deploy net (InnerProducts convolutionalised in memory) under the VGG testing protocol."""

    def __init__(self, model, weights, *, scales=None, mode="dense", flip=False, crop=None, mean=None,
                 blob=None, device=CPU, batch=50, average="posteriors", source=None, scale=1.0):
        source = source or (model if isinstance(model, str) else "net")
        if average not in AVERAGES:
            raise VggtoolError(f"--average must be one of {', '.join(AVERAGES)}, got '{average}'")
        self.average = average
        if mode not in MODES:
            raise VggtoolError(f"--mode must be one of {', '.join(MODES)}, got '{mode}'")
        self.net, self.input, shape = load_deploy_net(model, weights, source, device)
        self.channels = shape[1]
        self.crop = (shape[2], shape[3]) if crop is None else (int(crop), int(crop))
        self.scales = default_scales(self.crop) if scales is None else [int(q) for q in scales]
        if not self.scales:
            raise VggtoolError("give at least one test scale (--scales)")
        for q in self.scales:
            if q < max(self.crop):
                raise VggtoolError(f"--scales: Q={q} is smaller than the {self.crop[0]}x{self.crop[1]} crop; "
                                   f"use scales >= {max(self.crop)} or a smaller --crop")
        self.mode, self.flip, self.batch = mode, bool(flip), max(1, int(batch))
        self.preprocess = InputTransform(mean, self.channels, scale)
        self.score_blob, self.end_layer, self.is_posterior = self._pick_score_blob(blob, source)

    def _pick_score_blob(self, blob, source):
        net = self.net
        producers = {blob: net.layer_names[i] for blob, i in net.last_writers().items()}
        if blob is None:
            last = net.layer_names[-1]
            if net.layer_dict[last].type == "Softmax":
                blob = net.bottom_names[last][0]
            elif len(net.outputs) == 1:
                blob = net.outputs[0]
            else:
                raise VggtoolError(f"{source}: the net has outputs {', '.join(net.outputs)}; choose the class "
                                   "score blob with --blob")
        if blob not in producers or blob == self.input:
            raise VggtoolError(f"{source}: --blob '{blob}' is not a blob computed by the net "
                               f"(blobs: {', '.join(net.blobs)})")
        end = producers[blob]
        return blob, end, net.layer_dict[end].type == "Softmax"

    # -- forward ---------------------------------------------------------------------------------------
    def posteriors(self, batch):
        """N x C x H x W input -> (N, classes) posteriors: softmax per location then spatial average
        (average='scores': the paper's sum-pooling of the score map, then softmax)."""
        self.net.forward(**{self.input: batch}, end=self.end_layer)
        s = to_numpy(self.net.blobs[self.score_blob].data).astype(np.float64)
        s = s.reshape(s.shape[0], s.shape[1], -1)
        if self.is_posterior:
            return s.mean(axis=2)
        if self.average == "scores":
            return softmax(s.mean(axis=2), axis=1)
        return softmax(s, axis=1).mean(axis=2)

    def dense(self, image_q):
        x = self.preprocess(image_q)
        batch = np.stack([x, x[:, :, ::-1]]) if self.flip else x[None]
        return self.posteriors(batch).mean(axis=0)

    def crops(self, image_q):
        """The multi-crop batch (views into the image): grid crops, then their mirrors when flipping."""
        x = self.preprocess(image_q)
        ch, cw = self.crop
        out = [x[:, y:y + ch, xx:xx + cw] for y, xx in grid_positions(x.shape[1], x.shape[2], ch, cw)]
        if self.flip:
            out += [c[:, :, ::-1] for c in out]
        return out

    def multicrop(self, image_q):
        crops = self.crops(image_q)
        total = 0.0
        for i in range(0, len(crops), self.batch):
            chunk = np.stack(crops[i:i + self.batch])
            total = total + self.posteriors(chunk).sum(axis=0)
        return total / len(crops)

    def evaluate_image(self, image):
        """Posterior (classes,) for one HxWxC BGR uint8 image, averaged over scales, flips and methods."""
        methods = ("dense", "multicrop") if self.mode == "both" else (self.mode,)
        per_method = []
        for m in methods:
            fn = self.dense if m == "dense" else self.multicrop
            per_method.append(np.mean([fn(isotropic_resize(image, q)) for q in self.scales], axis=0))
        return np.mean(per_method, axis=0)


def evaluate(evaluator, data, root="", limit=None, progress=True):
    """(posteriors (N, classes) float32, labels (N,), keys (N,)) over a data set."""
    from ..data.samples import count_samples, iterate_samples
    from ..progress import progress as progress_bar

    total = count_samples(data) if os.path.exists(data) else None
    if total is not None and limit is not None:
        total = min(total, limit)
    posts, labels, keys = [], [], []
    samples = iterate_samples(data, root, limit, color=evaluator.channels == 3)
    bar = progress_bar(samples, total=total, unit="img", disable=not progress, desc="evaluating")
    for key, image, label in bar:
        posts.append(evaluator.evaluate_image(image))
        labels.append(label)
        keys.append(key)
        if len(posts) % 10 == 0:
            bar.set_postfix(top1=f"{100 * topk_error(posts, labels, 1):.1f}%")
    if not posts:
        raise VggtoolError(f"--data: {data} holds no images")
    return np.array(posts, np.float32), np.array(labels, np.int64), np.array(keys, dtype=str)


# -- score files ------------------------------------------------------------------------------------------
def save_scores(path, posteriors, labels, keys, **meta):
    buf = io.BytesIO()
    np.savez(buf, posteriors=np.asarray(posteriors, np.float32), labels=np.asarray(labels, np.int64),
             keys=np.asarray(keys, dtype=str), **{k: np.asarray(v) for k, v in meta.items()})
    atomic_files.atomic_write_bytes(path, buf.getvalue())


def load_scores(path):
    if not os.path.exists(path):
        raise VggtoolError(f"{path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            return z["posteriors"], z["labels"], z["keys"]
    except KeyError as e:
        raise VggtoolError(f"{path}: not a vggtool scores file (no {e} array)") from None
    except (ValueError, OSError) as e:
        raise VggtoolError(f"{path}: cannot read scores: {e}") from None


def fuse(paths):
    """Average the posteriors of several score files; keys and labels must agree."""
    if not paths:
        raise VggtoolError("give at least one scores .npz file")
    p0, labels, keys = load_scores(paths[0])
    total = p0.astype(np.float64)
    for path in paths[1:]:
        p, l, k = load_scores(path)
        if len(k) != len(keys) or not np.array_equal(k, keys):
            raise VggtoolError(f"{path}: its images ({len(k)}) differ from those of {paths[0]} ({len(keys)}): "
                               "fuse scores of the same data set, evaluated in the same order")
        if not np.array_equal(l, labels):
            raise VggtoolError(f"{path}: its labels differ from those of {paths[0]} (another data set?)")
        if p.shape != p0.shape:
            raise VggtoolError(f"{path}: posteriors of shape {p.shape}, {paths[0]} has {p0.shape} "
                               "(models with different classes?)")
        total += p
    return (total / len(paths)).astype(np.float32), labels, keys


def report_lines(posteriors, labels):
    n = len(labels)
    return [f"top-1 error = {100 * topk_error(posteriors, labels, 1):.2f}%",
            f"top-5 error = {100 * topk_error(posteriors, labels, 5):.2f}% ({n} images)"]


def parse_scales(text, flag="--scales"):
    """Test scales Q from '256,384,512' (positive integers)."""
    return parse_list(text, flag, int, "256,384,512")
