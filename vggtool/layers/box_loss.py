"""BoxRegressionLoss: the Euclidean loss of per-class box regression (PCR, paper Appendix A).

Bottoms: pred (N, 4 * K) -- the last FC, 4 box parameters per class --, target (N, 4) -- the ground-truth
box (cx, cy, w, h), e.g. the Data layer's third top --, label (N) -- the ground-truth class. Only the
4 outputs of the ground-truth class enter the loss:
    loss = sum_n || pred[n, 4 l_n : 4 l_n + 4] - target[n] ||^2 / (2 N)
(N: one replica share's when the net's batch holds several, Layer.shares), so the gradient reaches those 4
outputs only; the other classes' outputs get zero. With just two bottoms and 4 outputs (single-class
regression, SCR) it equals EuclideanLoss. No gradient to label.
"""
import numpy as np

from .base import Layer, register_layer


@register_layer("BoxRegressionLoss")
class BoxRegressionLossLayer(Layer):
    min_bottoms = 2
    max_bottoms = 3
    exact_tops = 1
    is_loss = True
    per_sample = True  # a mean over the batch, taken over one share (Layer.shares)

    def reshape(self, bottom, top):
        pred, target = bottom[0], bottom[1]
        n = pred.shape[0] if pred.num_axes else 0
        if pred.num_axes < 1 or pred.count_range(1) % 4:
            raise self.error(f"bottom 0 '{self.bottom_names[0]}' has shape {pred.shape}: needs N x (4 x classes) "
                             "box outputs")
        if target.count != 4 * n:
            raise self.error(f"bottom 1 '{self.bottom_names[1]}' has shape {target.shape}: expected {n} x 4 "
                             "ground-truth boxes (cx, cy, w, h)")
        self.classes = pred.count_range(1) // 4
        if len(bottom) == 2 and self.classes != 1:
            raise self.error(f"{self.classes * 4} outputs (per-class regression) need a third bottom, the "
                             "ground-truth label")
        if len(bottom) == 3 and bottom[2].count != n:
            raise self.error(f"bottom 2 '{self.bottom_names[2]}' has {bottom[2].count} labels for {n} samples")
        self.num = n
        top[0].reshape(())

    @property
    def bottom_names(self):
        return list(self.param.bottom)

    def forward(self, bottom, top):
        xp = self.xp
        pred = bottom[0].data.reshape(self.num, self.classes, 4)
        if len(bottom) == 3:
            labels = bottom[2].data.reshape(-1).astype(xp.int64)
            if xp is not np:  # no check on a GPU (it would wait for the device): clamp the index
                labels = xp.clip(labels, 0, self.classes - 1)
            elif self.num and (labels.min() < 0 or labels.max() >= self.classes):
                raise self.error(f"label outside 0..{self.classes - 1} (the net regresses {self.classes} classes)")
        else:
            labels = xp.zeros(self.num, dtype=xp.int64)
        self.labels = labels
        chosen = pred[xp.arange(self.num), labels]
        self.delta = chosen - bottom[1].data.reshape(self.num, 4)
        top[0].data[...] = (self.delta * self.delta).sum() / (2 * max(self.num // self.shares, 1))

    def backward(self, top, propagate_down, bottom):
        xp = self.xp
        scale = top[0].diff.reshape(-1)[0] / max(self.num // self.shares, 1)
        if propagate_down[0]:
            diff = bottom[0].diff.reshape(self.num, self.classes, 4)
            diff[...] = 0
            diff[xp.arange(self.num), self.labels] = scale * self.delta
        if propagate_down[1]:
            bottom[1].diff[...] = (-scale * self.delta).reshape(bottom[1].shape)

    def allow_force_backward(self, bottom_index):
        return bottom_index != 2  # the label is an index: no gradient
