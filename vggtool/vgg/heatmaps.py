"""Class score maps of dense evaluation as heat maps over the image (`vggtool test --heatmaps DIR`).

Dense evaluation turns the net into a fully convolutional one: at scale Q it gives a posterior per
location of the class score map. class_map() returns that map for one class; heatmap_picture() stretches
it over the image (jet colours, half transparent), the true class on the left, the predicted class on
the right, averaged over the test scales."""
import os
import re

import cv2
import numpy as np

from ..atomic_files import atomic_write_bytes
from ..backend import to_numpy
from ..data.transform import isotropic_resize
from ..layers.softmax import softmax


def class_map(evaluator, image, q, cls):
    """The posterior of class `cls` at each location of the dense score map of `image` rescaled to Q
    (h x w float64; its mean is the dense posterior of that class without flips)."""
    x = evaluator.preprocess(isotropic_resize(image, q))
    net = evaluator.net
    net.forward(**{evaluator.input: x[None]}, end=evaluator.end_layer)
    s = to_numpy(net.blobs[evaluator.score_blob].data).astype(np.float64)[0]
    p = s if evaluator.is_posterior else softmax(s.reshape(s.shape[0], -1), axis=0).reshape(s.shape)
    return p[int(cls)]


def overlay(image, prob_map, title):
    """The image (BGR or gray uint8) with `prob_map` (values in [0, 1]) stretched over it in jet colours."""
    if image.ndim == 2 or image.shape[2] == 1:
        image = cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR)
    h, w = image.shape[:2]
    stretched = cv2.resize(prob_map.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    colours = cv2.applyColorMap(np.clip(stretched * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    out = cv2.addWeighted(image, 0.5, colours, 0.5, 0)
    cv2.putText(out, title, (2, max(10, h // 12)), cv2.FONT_HERSHEY_SIMPLEX, max(0.3, h / 400), (255, 255, 255),
                1, cv2.LINE_AA)
    return out


def heatmap_picture(evaluator, image, label, predicted, names=None):
    """Side by side: the map of the true class (when known, label >= 0) and of the predicted class, each
    averaged over the evaluator's scales (resized to the first scale's map size)."""
    def averaged(cls):
        maps = [class_map(evaluator, image, q, cls) for q in evaluator.scales]
        shape = maps[0].shape
        return np.mean([cv2.resize(m.astype(np.float32), (shape[1], shape[0])) if m.shape != shape else m
                        for m in maps], axis=0)

    def name(c):
        return names[c] if names else f"class {c}"

    panels = []
    if label is not None and label >= 0:
        panels.append(overlay(image, averaged(label), f"true: {name(label)}"))
    panels.append(overlay(image, averaged(predicted), f"predicted: {name(predicted)}"))
    return np.concatenate(panels, axis=1)


def picture_name(key):
    """A PNG file name for an image key: extension dropped, folders flattened with '__', odd characters
    replaced ('a/one.jpg' -> 'a__one.png')."""
    stem = os.path.splitext(str(key))[0]
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem.replace("/", "__")) + ".png"


def write_heatmaps(evaluator, samples, posteriors, folder, names=None):
    """One PNG per (key, image, label) of `samples` in `folder`; `posteriors` (N, classes) give the
    predicted class. Returns the paths written."""
    os.makedirs(folder, exist_ok=True)
    written = []
    for (key, image, label), post in zip(samples, posteriors):
        picture = heatmap_picture(evaluator, image, label, int(np.argmax(post)), names)
        ok, png = cv2.imencode(".png", picture)
        path = os.path.join(folder, picture_name(key))
        atomic_write_bytes(path, png.tobytes())
        written.append(path)
    return written
