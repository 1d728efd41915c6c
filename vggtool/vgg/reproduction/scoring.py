"""Validation posteriors of a trained cell at one test scale Q, by vggtool.vgg.evaluate's protocol (its
Evaluator, rescale and pre-processing). The paper also averages over horizontal flips, as it trains on
flipped images; the mini nets are trained without flips (a mirrored digit is another glyph), so the test
does not flip either (FLIP):
- dense: the convolutionalised net on the whole rescaled image; as Evaluator.dense, but the validation
  images all have one size, so many images go through the net in one forward pass;
- multi-crop: Evaluator.multicrop (5x5 grid of 32x32 crops, 25 per scale), per image.
Multi-scale, dense + multi-crop and fusion are averages of these posteriors (tables.py), as in
Evaluator.evaluate_image and evaluate.fuse."""
import numpy as np

from .. import evaluate
from vggtool.data.samples import iterate_samples
from vggtool.data.transform import isotropic_resize

BATCH = 64  # images per dense forward pass
FLIP = False  # as the training data layers' mirror (MINI["mirror"] in tools/make_netdefs.py)


class ValidationSet:
    """The validation images (H x W x 1 uint8), labels and keys, read once from the LMDB."""

    def __init__(self, path):
        images, labels, keys = [], [], []
        for key, image, label in iterate_samples(str(path), color=False):
            images.append(image)
            labels.append(label)
            keys.append(key)
        self.images, self.labels, self.keys = images, np.array(labels, np.int64), np.array(keys, dtype=str)


def make_evaluator(deploy, weights, scales, mean, scale):
    return evaluate.Evaluator(str(deploy), str(weights), scales=list(scales), mode="dense", flip=FLIP,
                              mean=mean, scale=scale)


def dense_posteriors(evaluator, images, q, batch=BATCH):
    """(N, classes) float64: Evaluator.dense of each image rescaled to Q, batched over images of one size."""
    out = []
    pending = []

    views = 2 if evaluator.flip else 1

    def flush():
        x = np.stack([v for group in pending for v in group])
        p = evaluator.posteriors(x)
        out.append(p.reshape(len(pending), views, -1).mean(axis=1))
        pending.clear()

    for image in images:
        x = evaluator.preprocess(isotropic_resize(image, q))
        if pending and x.shape != pending[0][0].shape:
            flush()
        pending.append((x, x[:, :, ::-1]) if evaluator.flip else (x,))
        if len(pending) == batch:
            flush()
    if pending:
        flush()
    return np.concatenate(out)


def multicrop_posteriors(evaluator, images, q):
    """(N, classes) float64: Evaluator.multicrop of each image rescaled to Q (grid crops, and their mirrors
    when the evaluator flips)."""
    return np.stack([evaluator.multicrop(isotropic_resize(image, q)) for image in images])
