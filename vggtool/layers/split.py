"""Split: one bottom shared by several tops (inserted automatically); backward sums the top gradients."""
from .base import Layer, register_layer


@register_layer("Split")
class SplitLayer(Layer):
    per_sample = True
    exact_bottoms = 1
    min_tops = 1

    def reshape(self, bottom, top):
        for t in top:
            t.reshape(bottom[0].shape)
            t.share_data(bottom[0])  # no copy: every top views the bottom's data

    def forward(self, bottom, top):
        pass

    def backward_reads_data(self, bottom, top):
        return []

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        diff = bottom[0].diff
        diff[...] = top[0].diff
        for t in top[1:]:
            diff += t.diff


@register_layer("Silence")
class SilenceLayer(Layer):
    """Consumes blobs so they are not net outputs; passes zero gradients back."""
    per_sample = True

    min_bottoms = 1
    exact_tops = 0

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        for b, down in zip(bottom, propagate_down):
            if down:
                b.diff[...] = 0
