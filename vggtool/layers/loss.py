"""EuclideanLoss: sum((a - b)^2) / (2 N), N = the first axis of bottom 0 (Caffe's num; one replica share's
when the net's batch holds several, Layer.shares)."""
from .base import Layer, register_layer


@register_layer("EuclideanLoss")
class EuclideanLossLayer(Layer):
    exact_bottoms = 2
    exact_tops = 1
    is_loss = True
    per_sample = True  # a mean over the batch, taken over one share (shares)

    def reshape(self, bottom, top):
        a, b = bottom
        if a.count_range(1) != b.count_range(1) or a.count != b.count:
            raise self.error(f"the two bottoms must have the same number of values: {a.shape} vs {b.shape}")
        if a.num_axes == 0:
            raise self.error("bottom 0 needs at least one axis (the batch)")
        top[0].reshape(())
        self.num = a.shape[0]

    def forward(self, bottom, top):
        a = bottom[0].data
        self.delta = a - bottom[1].data.reshape(a.shape)
        top[0].data[...] = (self.delta * self.delta).sum() / (2 * max(self.num // self.shares, 1))

    def backward(self, top, propagate_down, bottom):
        scale = top[0].diff.reshape(-1)[0] / max(self.num // self.shares, 1)
        for i, (b, down) in enumerate(zip(bottom, propagate_down)):
            if down:
                # d/da = +delta / N, d/db = -delta / N, times the loss weight.
                b.diff[...] = (scale if i == 0 else -scale) * self.delta.reshape(b.shape)
