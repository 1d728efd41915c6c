"""Accuracy: the fraction of predictions whose true class is among the top_k scores.

Caffe's rule (accuracy_layer.cpp/.cu), vggtool.ranking's topk_hits: a prediction is correct when fewer
than top_k OTHER classes score >= the true class, so a tie with another class counts against it (and a
NaN true score, which Caffe would count, is a miss). Ignored labels count nowhere;
the optional second top is the accuracy per true class (0 for a class with no samples). A net whose batch
holds several replicas' shares (Layer.shares) gives the sum of the shares' accuracies."""
import numpy as np

from ..ranking import topk_hits
from .base import Layer, register_layer


@register_layer("Accuracy")
class AccuracyLayer(Layer):
    exact_bottoms = 2
    min_tops = 1
    max_tops = 2
    is_metric = True

    def layer_setup(self, bottom, top):
        p = self.param.accuracy_param
        self.top_k = p.top_k
        self.axis = bottom[0].canonical_axis(p.axis)
        self.ignore_label = p.ignore_label if p.HasField("ignore_label") else None
        self.per_class = len(top) == 2

    def merge_obstacle(self):
        if self.ignore_label is not None:
            return "its count of labels not ignored may differ between shares"
        if self.per_class:
            return "its per-class accuracies are not sums over shares"
        return self.batch_axis_obstacle(self.axis)

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        self.outer = bottom[0].count_range(0, self.axis)
        self.inner = bottom[0].count_range(self.axis + 1)
        self.classes = shape[self.axis]
        if self.top_k > self.classes:
            raise self.error(f"top_k ({self.top_k}) must not exceed the number of classes ({self.classes})")
        if bottom[1].count != self.outer * self.inner:
            raise self.error(f"label count ({bottom[1].count}) must equal the number of predictions "
                             f"({self.outer * self.inner}) of scores shaped {shape}")
        top[0].reshape(())
        if len(top) == 2:
            top[1].reshape((self.classes,))

    def forward(self, bottom, top):
        xp = self.xp
        scores = bottom[0].data.reshape(self.outer, self.classes, self.inner)
        labels = bottom[1].data.reshape(self.outer, self.inner).astype(np.int64)
        valid = xp.ones(labels.shape, dtype=bool) if self.ignore_label is None else labels != self.ignore_label
        safe = xp.where(valid, labels, 0)
        if xp is not np:  # checked on the CPU only: on a GPU it would wait for the device (Caffe: CPU only)
            safe = xp.clip(safe, 0, self.classes - 1)
        elif (valid & ((safe < 0) | (safe >= self.classes))).any():
            raise self.error(f"a label is outside [0, {self.classes})")
        correct = topk_hits(scores, safe, self.top_k, axis=1, xp=xp) & valid
        if self.shares > 1:  # the sum of the shares' accuracies (merge_obstacle: none is ignored)
            top[0].data[...] = correct.sum() / (self.outer * self.inner // self.shares)
        else:
            top[0].data[...] = correct.sum() / xp.maximum(valid.sum(), 1)  # stays on the device; 0 with no label
        if len(top) == 2:
            # One bincount each instead of a loop over (possibly 1000) classes; weights, not masks (no sync).
            totals = xp.bincount(safe.ravel(), weights=valid.ravel().astype(np.float64), minlength=self.classes)
            hits = xp.bincount(safe.ravel(), weights=correct.ravel().astype(np.float64), minlength=self.classes)
            top[1].data[...] = xp.where(totals > 0, hits / xp.maximum(totals, 1), 0)

    def backward(self, top, propagate_down, bottom):
        if any(propagate_down):
            raise self.error("Accuracy has no gradient; do not backpropagate through it")

    def allow_force_backward(self, bottom_index):
        return False
