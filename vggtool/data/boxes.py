"""Bounding-box geometry for localisation (paper Appendix A): transforms, IoU, greedy merging.

Conventions (used by data_prep, the data layers, the loss and `vggtool localize`):
- A box is (x1, y1, x2, y2) in CONTINUOUS pixel coordinates: pixel column i covers [i, i + 1), so a box
  covering columns 0..w-1 has x1 = 0, x2 = w and width x2 - x1. (VOC's 1-based inclusive
  xmin..xmax becomes x1 = xmin - 1, x2 = xmax.) With this convention rescaling multiplies coordinates
  and a horizontal flip of an image of width W maps x to W - x, with no off-by-one terms.
- The regression target / net output is (cx, cy, w, h) of the box inside the network's crop,
  NORMALISED by the crop size: cx = (x1 + x2) / 2 / crop_w, w = (x2 - x1) / crop_w (same for y with
  crop_h). A box filling the crop is (0.5, 0.5, 1, 1); values keep one scale whatever the crop size, so
  a net trained on 224 crops predicts, when applied densely, a box relative to each 224 window.
- The training target is NOT clipped to the crop: an object partly outside the crop keeps its full
  extent (cx, cy may fall outside [0, 1]), so a net learns to predict whole objects from partial views
  and the boxes of off-centre windows in dense application still agree (OverFeat does the same).
  Boxes are clipped to the IMAGE when predictions are mapped back (vggtool.vgg.localize).

Merging (OverFeat-style, greedy): the distance of two boxes is 1 - IoU. While the closest pair is
closer than `threshold` (IoU > 1 - threshold), it is replaced by the weighted average of the two
(weights: the boxes' weights -- counts, or per-box scores -- which add up). Merged boxes are returned
by decreasing total weight, so the box supported by the most (or most confident) predictions is first.
"""
import numpy as np


def as_boxes(boxes):
    """(k, 4) float64 array from any sequence of 4-vectors (or a flat list of 4k numbers)."""
    a = np.asarray(boxes, dtype=np.float64)
    return a.reshape(-1, 4)


# -- transforms -------------------------------------------------------------------------------------------
def scale_boxes(boxes, sx, sy):
    """Boxes after resizing the image by factors sx (width) and sy (height)."""
    b = as_boxes(boxes).copy()
    b[:, [0, 2]] *= sx
    b[:, [1, 3]] *= sy
    return b


def resize_boxes(boxes, old_hw, new_hw):
    """Boxes after an image of size old_hw = (h, w) was resized to new_hw (isotropic or not: the
    per-axis ratios of the integer sizes are exact)."""
    return scale_boxes(boxes, new_hw[1] / old_hw[1], new_hw[0] / old_hw[0])


def crop_boxes(boxes, x_off, y_off, crop_w, crop_h, clip=True):
    """Boxes in the coordinates of the crop whose top-left corner is (x_off, y_off); clipped to it."""
    b = as_boxes(boxes).copy()
    b[:, [0, 2]] -= x_off
    b[:, [1, 3]] -= y_off
    if clip:
        b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, crop_w)
        b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, crop_h)
    return b


def flip_boxes(boxes, width):
    """Boxes after mirroring an image of this width left-right."""
    b = as_boxes(boxes).copy()
    b[:, 0], b[:, 2] = width - b[:, 2], width - b[:, 0]
    return b


def to_cxcywh(boxes, crop_w=1.0, crop_h=1.0):
    """(x1, y1, x2, y2) -> (cx, cy, w, h), divided by the crop size."""
    b = as_boxes(boxes)
    out = np.stack([(b[:, 0] + b[:, 2]) / 2 / crop_w, (b[:, 1] + b[:, 3]) / 2 / crop_h,
                    (b[:, 2] - b[:, 0]) / crop_w, (b[:, 3] - b[:, 1]) / crop_h], axis=1)
    return out


def from_cxcywh(params, crop_w=1.0, crop_h=1.0):
    """(cx, cy, w, h) normalised by the crop size -> (x1, y1, x2, y2) crop pixels. Negative widths
    (a net may predict them) count as zero."""
    p = as_boxes(params)
    cx, cy = p[:, 0] * crop_w, p[:, 1] * crop_h
    w, h = np.maximum(p[:, 2], 0) * crop_w, np.maximum(p[:, 3], 0) * crop_h
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


# -- overlap ----------------------------------------------------------------------------------------------
def area(boxes):
    b = as_boxes(boxes)
    return np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0)


def iou(a, b):
    """(len(a), len(b)) matrix of intersection over union; 0 where the union is empty."""
    a, b = as_boxes(a), as_boxes(b)
    ix = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    iy = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.maximum(ix, 0) * np.maximum(iy, 0)
    union = area(a)[:, None] + area(b)[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


# -- merging ----------------------------------------------------------------------------------------------
def merge_boxes(boxes, weights=None, threshold=0.5):
    """Greedy merge (see the module doc): returns (merged boxes (m, 4), their weights (m,)), sorted by
    decreasing weight. `threshold` is on the distance 1 - IoU: 0 merges nothing, 1 merges every pair
    that overlaps at all."""
    b = as_boxes(boxes).copy()
    w = np.ones(len(b)) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1).copy()
    if len(w) != len(b):
        raise ValueError(f"{len(b)} boxes but {len(w)} weights")
    alive = np.ones(len(b), bool)
    dist = 1.0 - iou(b, b)
    np.fill_diagonal(dist, np.inf)
    while alive.sum() > 1:
        i, j = np.unravel_index(np.argmin(dist), dist.shape)
        if not dist[i, j] < threshold:
            break
        total = w[i] + w[j]
        # Zero-weight boxes still merge (as plain averages) rather than dividing by zero.
        b[i] = (w[i] * b[i] + w[j] * b[j]) / total if total > 0 else (b[i] + b[j]) / 2
        w[i] = total
        alive[j] = False
        dist[j, :] = dist[:, j] = np.inf
        row = 1.0 - iou(b[i:i + 1], b)[0]
        row[~alive] = np.inf
        row[i] = np.inf
        dist[i, :] = dist[:, i] = row
    keep = np.flatnonzero(alive)
    order = keep[np.argsort(-w[keep], kind="stable")]
    return b[order], w[order]


def correct(guesses, gt_label, gt_boxes, min_iou=0.5):
    """True when one of the (label, box) guesses has the ground-truth label and IoU > min_iou with one
    of the ground-truth boxes (ILSVRC's localisation criterion)."""
    gt = as_boxes(gt_boxes)
    if len(gt) == 0:
        return False
    for label, box in guesses:
        if int(label) == int(gt_label) and iou(as_boxes(box), gt).max() > min_iou:
            return True
    return False
