"""Localisation testing (paper Appendix A): a box-regression net's predictions -> boxes -> error.

The regression net is a deploy net whose last layer gives 4 (SCR, one box for every class) or 4 x K
(PCR, one box per class) outputs: (cx, cy, w, h) normalised by the net's input (crop) size, as the
data layer's "box" top trains it (vggtool.data.boxes). Two protocols:

- `centre` (paper's "ground-truth class, centre crop"): rescale the image so its smallest side is Q,
  take the centred crop, predict the ground-truth class's box (PCR) or the box (SCR), map it back to the
  image. Error: fraction of images whose box has IoU <= 0.5 with every ground-truth box.
- `full`: the net, convolutionalised (vggtool.vgg.surgery), runs densely over the whole image at every
  scale Q (and its mirror with --flip): output location (i, j) is the crop window whose top-left
  corner is (j, i) x the net's total stride in the rescaled image, and its box is placed in that
  window (windows reaching past the border, from Caffe's ceil-rounded pooling, are used as they are).
  For each of the top-k classes (vggtool.ranking; ties broken against the true class) of a classification
  model (posteriors from `vggtool test --out`, or
  a classification net run here) the boxes of that class from every location, scale, flip and net are
  pooled and merged greedily (vggtool.data.boxes.merge_boxes). As in OverFeat, which the paper follows,
  merged boxes are ranked by the classifier: each window's box weighs the class score of that window
  (the classification net's softmax score map at the same scale and view, the location whose window
  centre is nearest), or, from a scores file where no map exists, the image's posterior of the class;
  a merged box weighs the sum of its windows' weights. The heaviest merged box is the guess for the
  class and the guesses are ordered by weight. Top-k error: an image is correct when one of its k
  guesses has the right class and IoU > 0.5 with a ground-truth box of that class.
"""
import io
import json
import os

import numpy as np

from .. import atomic_files
from ..io import prototxt
from ..backend import CPU, to_numpy
from ..data import boxes as B
from ..data.transform import isotropic_resize
from ..errors import VggtoolError
from ..layers.softmax import softmax
from ..net import Net
from ..proto import caffe_pb2
from . import surgery
from .evaluate import InputTransform

PROTOCOLS = ("centre", "full")


def net_stride(net):
    """Product of the strides of the Convolution and Pooling layers: one output step in input pixels."""
    stride = 1
    for layer in net.layers:
        if layer.type == "Convolution":
            p = layer.param.convolution_param
            stride *= p.stride[0] if len(p.stride) else (p.stride_h or 1)
        elif layer.type == "Pooling":
            p = layer.param.pooling_param
            stride *= p.stride_h or p.stride
    return stride


class Regressor:
    """A box-regression deploy net, convolutionalised in memory so it runs on images of any size."""

    def __init__(self, model, weights, *, mean=None, scale=1.0, blob=None, device=CPU, source=None):
        source = source or (model if isinstance(model, str) else "net")
        if weights is not None and not os.path.exists(str(weights)):
            raise VggtoolError(f"--weights: {weights} does not exist")
        param = model if isinstance(model, caffe_pb2.NetParameter) else prototxt.read_net_param(model)
        if surgery.needs_surgery(param):
            _, self.net = surgery.convolutionalize(param, weights, source, device=device)
        else:
            self.net = Net(param, weights, phase="TEST", device=device, source=source)
        net = self.net
        if not net.inputs:
            raise VggtoolError(f"{source}: the deploy net has no input blob (give it an Input layer)")
        self.input = net.inputs[0]
        shape = net.blobs[self.input].shape
        if len(shape) != 4:
            raise VggtoolError(f"{source}: input blob '{self.input}' has shape {shape}; expected N x C x H x W")
        self.channels, self.crop_h, self.crop_w = shape[1], shape[2], shape[3]
        if blob is None:
            if len(net.outputs) != 1:
                raise VggtoolError(f"{source}: the net has outputs {', '.join(net.outputs)}; choose the box "
                                   "blob with --blob")
            blob = net.outputs[0]
        if blob not in net.blobs or blob == self.input:
            raise VggtoolError(f"{source}: --blob '{blob}' is not a blob computed by the net")
        self.blob = blob
        outputs = net.blobs[blob].shape[1]
        if outputs % 4:
            raise VggtoolError(f"{source}: blob '{blob}' has {outputs} channels; a box-regression net has 4 "
                               "(single-class) or 4 x classes (per-class) outputs")
        self.classes = outputs // 4
        self.stride = net_stride(net)
        self.preprocess = InputTransform(mean, self.channels, scale)

    def predict(self, image):
        """HxWxC uint8 -> (Hm, Wm, K, 4) box parameters, one set per crop window of the image."""
        x = self.preprocess(image)[None]
        if x.shape[2] < self.crop_h or x.shape[3] < self.crop_w:
            raise VggtoolError(f"image of {x.shape[2]}x{x.shape[3]} is smaller than the net's "
                               f"{self.crop_h}x{self.crop_w} input")
        out = to_numpy(self.net.forward(**{self.input: x})[self.blob]).astype(np.float64)
        out = out.reshape(self.classes, 4, out.shape[2], out.shape[3])
        return out.transpose(2, 3, 0, 1)

    def centre_box(self, image, q, label):
        """The centre-crop box (x1, y1, x2, y2 image pixels) of class `label` (any class for SCR)."""
        scaled = isotropic_resize(image, q)
        h, w = scaled.shape[:2]
        y0, x0 = (h - self.crop_h) // 2, (w - self.crop_w) // 2
        params = self.predict(scaled[y0:y0 + self.crop_h, x0:x0 + self.crop_w])[0, 0]
        p = params[label if self.classes > 1 else 0]
        box = B.from_cxcywh(p[None], self.crop_w, self.crop_h)
        box = B.crop_boxes(box, -x0, -y0, w, h)  # back to the rescaled image, clipped to it
        return B.resize_boxes(box, (h, w), image.shape[:2])[0]

    def dense_boxes(self, image, q, flip=False, score_map=None):
        """(K, L, 4) boxes in image pixels: per class, one per output location (and per mirror).
        With `score_map` ({(q, mirrored): ScoreMap}, ClassScoreMaps.image_maps) also (classes, L)
        weights: the class scores of each box's window (see window_scores)."""
        scaled = isotropic_resize(image, q)
        h, w = scaled.shape[:2]
        views = [(scaled, False)] + ([(np.ascontiguousarray(scaled[:, ::-1]), True)] if flip else [])
        out, weights = [], []
        for view, mirrored in views:
            params = self.predict(view)  # (Hm, Wm, K, 4)
            hm, wm = params.shape[:2]
            if score_map is not None:
                scores = window_scores(score_map[q, mirrored], (hm, wm), self.stride, (self.crop_h, self.crop_w))
                weights.append(scores.reshape(hm * wm, -1).T)
            ys, xs = np.meshgrid(np.arange(hm) * self.stride, np.arange(wm) * self.stride, indexing="ij")
            b = B.from_cxcywh(params.reshape(-1, 4), self.crop_w, self.crop_h).reshape(hm, wm, self.classes, 4)
            b[..., [0, 2]] += xs[:, :, None, None]
            b[..., [1, 3]] += ys[:, :, None, None]
            b = B.crop_boxes(b.reshape(-1, 4), 0, 0, w, h)  # clip to the image
            if mirrored:
                b = B.flip_boxes(b, w)
            b = B.resize_boxes(b, (h, w), image.shape[:2])
            out.append(b.reshape(hm * wm, self.classes, 4).transpose(1, 0, 2))
        if score_map is not None:
            return np.concatenate(out, axis=1), np.concatenate(weights, axis=1)
        return np.concatenate(out, axis=1)


def window_scores(scores, shape, stride, crop):
    """(Hm, Wm, classes): for each regression window (top-left corner at its index x `stride`, size
    `crop`), the class scores of the classifier window (ScoreMap `scores`, with its own stride and
    crop) whose centre is nearest; the same location when both nets share their geometry."""
    out = scores.values
    for axis, n in enumerate(shape):
        centres = np.arange(n) * stride + crop[axis] / 2
        idx = np.rint((centres - scores.crop[axis] / 2) / scores.stride)
        out = np.take(out, np.clip(idx, 0, scores.values.shape[axis] - 1).astype(int), axis=axis)
    return out


class ScoreMap:
    """A classifier's per-location class scores (Hc, Wc, classes) with the geometry of its windows."""

    def __init__(self, values, stride, crop):
        self.values, self.stride, self.crop = values, stride, crop


class ClassScoreMaps:
    """The classification net of `vggtool localize --cls-net` (a vggtool.vgg.evaluate.Evaluator) run densely
    on the same rescaled views as the box nets (vggtool.data.transform.isotropic_resize, then the mirror): softmax score
    maps that weigh the boxes, and the image's posterior, their average over locations, views and scales
    (what Evaluator's dense mode computes)."""

    def __init__(self, evaluator):
        self.evaluator = evaluator
        self.stride = net_stride(evaluator.net)
        self.crop = evaluator.crop

    def view_map(self, view):
        """HxWxC uint8 view -> ScoreMap of softmax class scores (Hc, Wc, classes)."""
        ev = self.evaluator
        ev.net.forward(**{ev.input: ev.preprocess(view)[None]}, end=ev.end_layer)
        s = to_numpy(ev.net.blobs[ev.score_blob].data).astype(np.float64)[0]
        probs = s if ev.is_posterior else softmax(s, axis=0)
        return ScoreMap(probs.transpose(1, 2, 0), self.stride, self.crop)

    def image_maps(self, image, scales, flip=False):
        """({(q, mirrored): ScoreMap}, posterior (classes,)) of one image."""
        maps, per_scale = {}, []
        for q in scales:
            scaled = isotropic_resize(image, q)
            views = [(scaled, False)] + ([(np.ascontiguousarray(scaled[:, ::-1]), True)] if flip else [])
            for view, mirrored in views:
                maps[q, mirrored] = self.view_map(view)
            per_scale.append(np.mean([maps[q, m].values.mean(axis=(0, 1)) for _, m in views], axis=0))
        return maps, np.mean(per_scale, axis=0)


# -- protocols --------------------------------------------------------------------------------------------
def localize_centre(regressors, image, label, q):
    """Protocol (a): one box of the ground-truth class (several nets: their boxes averaged)."""
    return np.mean([r.centre_box(image, q, label) for r in regressors], axis=0)


def localize_full(regressors, image, classes, scales, flip=False, threshold=0.5, score_map=None,
                  posterior=None):
    """Protocol (b): [(class, merged box, weight)] for each class in `classes` (e.g. the top 5), heaviest
    first. Box weights: the class score of the box's window from `score_map` ({(q, mirrored): ScoreMap},
    ClassScoreMaps.image_maps, at every scale of `scales`), else the image's `posterior` of the class, else 1 (weight = support)."""
    boxes, weights = [], []
    for r in regressors:
        for q in scales:
            if score_map is None:
                b = r.dense_boxes(image, q, flip)
                w = np.ones((1, b.shape[1]))
            else:
                b, w = r.dense_boxes(image, q, flip, score_map)
            boxes.append(b)
            weights.append(w)
    guesses = []
    for c in classes:
        pooled = np.concatenate([b[c if len(b) > 1 else 0] for b in boxes], axis=0)
        w = np.concatenate([x[c if len(x) > 1 else 0] for x in weights])
        if posterior is not None and score_map is None:
            w = w * float(posterior[c])
        keep = B.area(pooled) > 0
        pooled, w = pooled[keep], w[keep]
        if len(pooled) == 0:
            guesses.append((int(c), np.zeros(4), 0.0))
            continue
        merged, total = B.merge_boxes(pooled, w, threshold=threshold)
        guesses.append((int(c), merged[0], float(total[0])))
    order = sorted(range(len(guesses)), key=lambda i: -guesses[i][2])  # stable: ties keep class order
    return [guesses[i] for i in order]


def save_boxes(path, result):
    """Write the result dict as .json (lists) or .npz (arrays), atomically."""
    if path.endswith(".json"):
        data = json.dumps({k: np.asarray(v).tolist() for k, v in result.items()}, indent=1).encode()
    else:
        buf = io.BytesIO()
        np.savez(buf, **{k: np.asarray(v) for k, v in result.items()})
        data = buf.getvalue()
    atomic_files.atomic_write_bytes(path, data)
