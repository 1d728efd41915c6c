"""Softmax and SoftmaxWithLoss (multinomial logistic loss of the softmax), with Caffe's normalisation."""
import numpy as np

from .base import Layer, register_layer

FLT_MIN = np.finfo(np.float32).tiny
# LossParameter.NormalizationMode
FULL, VALID, BATCH_SIZE, NONE = 0, 1, 2, 3


def softmax(x, axis=1, out=None, xp=np):
    """Numerically stable softmax of x along `axis`, into `out` (which may be x; a new array when None).
    The one softmax: the Softmax layers' and the test-time protocols' (posteriors from score maps)."""
    if out is None:
        out = xp.empty_like(x)
    m = x.max(axis=axis, keepdims=True)
    xp.subtract(x, m, out=out)
    xp.exp(out, out=out)
    out /= out.sum(axis=axis, keepdims=True)
    return out


@register_layer("Softmax")
class SoftmaxLayer(Layer):
    exact_bottoms = 1
    exact_tops = 1

    def merge_obstacle(self):
        return self.batch_axis_obstacle(self.axis)

    def layer_setup(self, bottom, top):
        self.axis = bottom[0].canonical_axis(self.param.softmax_param.axis)

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        softmax(bottom[0].data, self.axis, top[0].data, self.xp)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y, dy = top[0].data, top[0].diff
        dot = (dy * y).sum(axis=self.axis, keepdims=True)
        bottom[0].diff[...] = (dy - dot) * y


def loss_normalizer(mode, outer, inner, valid_count):
    if mode == FULL:
        n = outer * inner
    elif mode == VALID:
        n = outer * inner if valid_count < 0 else valid_count
    elif mode == BATCH_SIZE:
        n = outer
    else:
        n = 1
    return max(1.0, float(n))


def normalization_mode(loss_param):
    # Caffe's rule: the legacy `normalize` flag counts only when `normalization` is not given.
    if loss_param.HasField("normalize") and not loss_param.HasField("normalization"):
        return VALID if loss_param.normalize else BATCH_SIZE
    return loss_param.normalization


@register_layer("SoftmaxWithLoss")
class SoftmaxWithLossLayer(Layer):
    """Bottoms: scores (N, C, ...), labels (N, ...). Tops: loss, and optionally the probabilities."""

    exact_bottoms = 2
    min_tops = 1
    max_tops = 2
    is_loss = True

    def layer_setup(self, bottom, top):
        self.axis = bottom[0].canonical_axis(self.param.softmax_param.axis)
        lp = self.param.loss_param
        self.ignore_label = lp.ignore_label if lp.HasField("ignore_label") else None
        self.mode = normalization_mode(lp)
        self.prob = None

    def merge_obstacle(self):
        if self.mode == VALID and self.ignore_label is not None:
            return "its normalizer, the count of labels not ignored, may differ between shares"
        return self.batch_axis_obstacle(self.axis)

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        self.outer = bottom[0].count_range(0, self.axis)
        self.inner = bottom[0].count_range(self.axis + 1)
        self.classes = shape[self.axis]
        if bottom[1].count != self.outer * self.inner:
            raise self.error(f"label count ({bottom[1].count}, shape {bottom[1].shape}) must equal the number of "
                             f"predictions ({self.outer * self.inner}) of scores shaped {shape}; with scores "
                             f"N x C x H x W, labels must be N x H x W (or N for C-way classification)")
        top[0].reshape(())
        if self.prob is None or self.prob.shape != shape:
            with self.device:
                self.prob = self.xp.empty(shape, dtype=self.dtype)
        if len(top) == 2:
            top[1].reshape(shape)

    def _labels(self, bottom):
        xp = self.xp
        labels = bottom[1].data.reshape(self.outer, self.inner).astype(np.int64)
        valid = xp.ones(labels.shape, dtype=bool) if self.ignore_label is None else labels != self.ignore_label
        bad = valid & ((labels < 0) | (labels >= self.classes))
        if xp is not np:  # no check on a GPU (it would wait for it), as in Caffe's GPU kernel: only clamp
            labels = xp.clip(labels, 0, self.classes - 1)
        elif bad.any():
            value = int(labels[bad].ravel()[0])
            raise self.error(f"label {value} is outside [0, {self.classes}) (the number of classes is the size of "
                             f"axis {self.axis} of the scores)")
        return xp.where(valid, labels, 0), valid

    def forward(self, bottom, top):
        xp = self.xp
        softmax(bottom[0].data, self.axis, self.prob, xp)
        labels, valid = self._labels(bottom)
        p3 = self.prob.reshape(self.outer, self.classes, self.inner)
        picked = xp.take_along_axis(p3, labels[:, None, :], axis=1)[:, 0, :]
        logs = -xp.log(xp.maximum(picked, FLT_MIN)) * valid
        if self.mode == VALID and self.ignore_label is not None:  # counted on the device: no sync
            self.normalizer = xp.maximum(valid.sum(), 1).astype(self.dtype)
        else:
            # one share's count: the loss of several shares is the sum of theirs (merge_obstacle)
            self.normalizer = loss_normalizer(self.mode, self.outer // self.shares, self.inner, -1)
        top[0].data[...] = logs.sum() / self.normalizer
        if len(top) == 2:
            top[1].data[...] = self.prob

    def backward(self, top, propagate_down, bottom):
        if propagate_down[1]:
            raise self.error("cannot backpropagate to the label input")
        if not propagate_down[0]:
            return
        xp = self.xp
        labels, valid = self._labels(bottom)
        dx = bottom[0].diff
        dx[...] = self.prob
        d3 = dx.reshape(self.outer, self.classes, self.inner)
        rows = xp.arange(self.outer)[:, None]
        cols = xp.arange(self.inner)[None, :]
        d3[rows, labels, cols] -= 1
        d3 *= valid[:, None, :]
        dx *= top[0].diff.reshape(-1)[0] / self.normalizer

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1
