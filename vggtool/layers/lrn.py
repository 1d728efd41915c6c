"""LRN (local response normalisation), Caffe's two regions.

ACROSS_CHANNELS: scale = k + alpha/size * sum of x^2 over `size` channels centred on the channel (zero
beyond the ends); y = x * scale^-beta.
WITHIN_CHANNEL: Caffe composes it as x * (1 + alpha * avg)^-beta, avg = AVE pooling of x^2 over a
size x size window, stride 1, pad (size-1)/2. With an odd size and stride 1 no window reaches past
H + pad, so Caffe's AVE divisor is always size^2 (padding cells count as zeros); k is not used.
Window sums are size - 1 shifted slice additions: exact, vectorised, and size is small (5 in VGG).
"""
from .base import Layer, register_layer

ACROSS_CHANNELS, WITHIN_CHANNEL = 0, 1


def window_sum(xp, x, axis, size):
    """Sum over a centred window of odd `size` along `axis`, zero beyond the ends (its own transpose):
    x plus each neighbour shifted in, without a padded copy."""
    out = x.copy()
    n = x.shape[axis]
    lo, hi = [slice(None)] * x.ndim, [slice(None)] * x.ndim
    for d in range(1, min((size - 1) // 2, n - 1) + 1):
        lo[axis], hi[axis] = slice(0, n - d), slice(d, n)
        out[tuple(hi)] += x[tuple(lo)]  # the neighbour d before
        out[tuple(lo)] += x[tuple(hi)]  # the neighbour d after
    return out


def neg_power(xp, s, beta):
    """s ** -beta; VGG's and AlexNet's beta 0.75 as square roots, several times cheaper than pow."""
    if beta == 0.75:
        r = xp.sqrt(s)
        r *= s
        xp.sqrt(r, out=r)
        return xp.reciprocal(r, out=r)
    return xp.power(s, -beta)


@register_layer("LRN")
class LRNLayer(Layer):
    per_sample = True
    exact_bottoms = 1
    exact_tops = 1

    def layer_setup(self, bottom, top):
        p = self.param.lrn_param
        self.size = p.local_size
        if self.size <= 0 or self.size % 2 != 1:
            raise self.error(f"local_size must be a positive odd number (Caffe's rule), got {self.size}")
        self.alpha, self.beta, self.k = p.alpha, p.beta, p.k
        self.region = p.norm_region
        if self.region not in (ACROSS_CHANNELS, WITHIN_CHANNEL):
            raise self.error(f"unknown norm_region {self.region}")
        if len(top) and len(bottom) and top[0] is bottom[0]:
            raise self.error("LRN cannot run in place (top must differ from bottom)")
        self.scale = None

    def reshape(self, bottom, top):
        if bottom[0].num_axes != 4:
            raise self.error(f"needs a 4-d bottom (N, C, H, W), got shape {bottom[0].shape}")
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        xp = self.xp
        x, y = bottom[0].data, top[0].data
        sq = x * x
        if self.region == ACROSS_CHANNELS:
            s = window_sum(xp, sq, 1, self.size)
            s *= self.alpha / self.size
            s += self.k
        else:
            s = window_sum(xp, window_sum(xp, sq, 2, self.size), 3, self.size)
            s *= self.alpha / (self.size * self.size)
            s += 1
        self.scale = s  # kept for backward (Caffe's "scale_" blob), with s^-beta
        self.scale_pow = neg_power(xp, s, self.beta)
        xp.multiply(x, self.scale_pow, out=y)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp
        x, y, dy = bottom[0].data, top[0].data, top[0].diff
        s = self.scale
        # y = x * s^-beta with s = c0 + c * W(x^2), W a symmetric window sum:
        # dx = dy * s^-beta - 2 * beta * c * x * W(dy * y / s).
        t = dy * y
        t /= s
        if self.region == ACROSS_CHANNELS:
            c = self.alpha / self.size
            w = window_sum(xp, t, 1, self.size)
        else:
            c = self.alpha / (self.size * self.size)
            w = window_sum(xp, window_sum(xp, t, 2, self.size), 3, self.size)
        w *= x
        w *= -2 * self.beta * c
        dx = bottom[0].diff
        xp.multiply(dy, self.scale_pow, out=dx)
        dx += w
