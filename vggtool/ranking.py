"""The one top-k rule of vggtool (Caffe's accuracy_layer): the true class is among the top k when fewer
than k OTHER classes score >= it, so a tie with another class counts against the image. A NaN score of
the true class is never a hit (Caffe's comparison would count it as one: a silent 100%).

Used by the Accuracy layer, `vggtool test --data`, `fuse`, `demo`, `localize` (top-k classes) and the
SVM class recall. Works on NumPy and CuPy arrays (`xp`)."""
import numpy as np


def topk_hits(scores, labels, k, axis=1, xp=np):
    """Boolean array (scores' shape without `axis`): is `labels` among the top `k` of `scores`?"""
    scores = xp.asarray(scores)
    labels = xp.expand_dims(xp.asarray(labels).astype(np.int64), axis)
    true = xp.take_along_axis(scores, labels, axis=axis)
    better = (scores >= true).sum(axis=axis) - 1  # the true class scores >= itself
    return (better < k) & ~xp.isnan(xp.squeeze(true, axis=axis))


def topk_error(scores, labels, k):
    """Fraction of rows (N x classes scores) whose label is not among the top k (nan for no rows)."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) == 0:
        return float("nan")
    return float(np.mean(~topk_hits(scores, labels, k)))


def top_classes(scores, k, label=None):
    """The k highest-scoring classes, best first. Ties are broken against `label` when it is given (it
    goes after the classes it ties with), so a guess list built from it agrees with topk_hits."""
    scores = np.asarray(scores, dtype=np.float64)
    key = -scores
    if label is not None:
        key = np.stack([key, np.arange(len(scores)) == label])  # lexsort: last key is the primary one
        order = np.lexsort(key[::-1])
    else:
        order = np.argsort(key, kind="stable")
    return [int(c) for c in order[:k]]
