"""The Convolution layer: Caffe's parameters and lifecycle; the arithmetic lives in one module per algorithm.

Which algorithm runs (policy.py): the layer's prototxt `convolution_param { vggtool_algorithm: "..." }`
if given, else the net's `settings.conv_algorithm` (vggtool.config; `VGGTOOL_CONV_ALGO` by default),
resolved against what the layer's shape allows. Caffe's `engine` field names Caffe's own back ends
(CAFFE, CUDNN) and does not choose among these; it is accepted and has no effect.
"""
from ...config import conv_algorithm_name, defaults
from ...fillers import fill
from ..base import Layer, register_layer
from . import im2col, policy, shifted, winograd
from .geometry import read_conv_geometry
from .profile import NO_PROFILE


@register_layer("Convolution")
class ConvolutionLayer(Layer):
    """Caffe's Convolution: 2-d, any kernel/stride/pad/dilation/group. Algorithms: 'im2col' (any shape),
    'shifted' (stride 1, pad <= dilation * (kernel - 1), not 1x1), 'winograd2' / 'winograd4' (3x3,
    stride 1, dilation 1, group 1, pad <= 2); a layer asked for one its shape does not allow takes im2col."""
    per_sample = True

    min_bottoms = 1
    bottom_shape = None  # (N, C, H, W) of the last reshape: 'auto' picks the algorithm by input size
    # Set by the net for one forward (Net.layer_forward): the in-place ReLU that follows will run in the
    # same pass, so the output pass applies max(., 0) itself and that ReLU skips its own pass.
    rectify_output = False
    rectify_mask = None  # ... and where that ReLU keeps a mask of positive outputs: it, to fill in the same pass

    def layer_setup(self, bottom, top):
        p = self.param.convolution_param
        if len(top) != len(bottom):
            raise self.error(f"needs as many tops as bottoms, got {len(bottom)} bottom(s) and {len(top)} top(s)")
        if p.axis != 1:
            raise self.error("only axis: 1 (channels) is supported")
        if bottom[0].num_axes != 4:
            raise self.error(f"needs a 4-d bottom (N, C, H, W), got shape {bottom[0].shape}")
        self.requested_algorithm = None
        if p.HasField("vggtool_algorithm"):
            self.requested_algorithm = conv_algorithm_name(
                p.vggtool_algorithm, f"layer '{self.name}' (Convolution): vggtool_algorithm")
        self.geom = read_conv_geometry(self, p)
        self.num_output, self.group = p.num_output, p.group
        channels = bottom[0].shape[1]
        if self.num_output <= 0:
            raise self.error("num_output must be positive")
        if self.group <= 0 or channels % self.group or self.num_output % self.group:
            raise self.error(f"group {self.group} must divide both the input channels ({channels}) "
                             f"and num_output ({self.num_output})")
        self.channels = channels
        self.bias_term = p.bias_term
        self.forward_cache = policy.ForwardCache()
        self.profiler = NO_PROFILE
        weight = self.new_param((self.num_output, channels // self.group, self.geom.kh, self.geom.kw))
        fill(weight, p.weight_filler, self.rng())
        if self.bias_term:
            fill(self.new_param((self.num_output,)), p.bias_filler, self.rng())

    def settings(self):
        return self.net.settings if self.net is not None else defaults()

    def chosen_algorithm(self):
        """'im2col', 'shifted', 'winograd2' or 'winograd4': what this layer runs for its last reshape."""
        return policy.choose_algorithm(self, self.requested_algorithm or self.settings().conv_algorithm)

    def winograd_applicable(self):
        return policy.winograd_applicable(self.geom, self.group)

    def shifted_applicable(self):
        return policy.shifted_applicable(self.geom)

    def reshape(self, bottom, top):
        self.bottom_shape = tuple(bottom[0].shape)
        for b, t in zip(bottom, top):
            if b.num_axes != 4 or b.shape[1] != self.channels:
                raise self.error(f"bottom of shape {b.shape} does not match the {self.channels} input "
                                 "channels the layer was set up for")
            if b.shape != bottom[0].shape:
                raise self.error(f"all bottoms must have the same shape, got {bottom[0].shape} and {b.shape}")
            ho, wo = self.geom.output_shape(b.shape[2], b.shape[3])
            if ho <= 0 or wo <= 0:
                raise self.error(f"input {b.shape[2]}x{b.shape[3]} is smaller than the kernel "
                                 f"{self.geom.kh}x{self.geom.kw} (pad {self.geom.ph},{self.geom.pw})")
            t.reshape(b.shape[0], self.num_output, ho, wo)
        self._plan_forward_cache(bottom, top)

    def _plan_forward_cache(self, bottom, top):
        """Keep the forward columns (im2col) or transformed input tiles (Winograd) for the weight gradient
        when this TRAIN net's budget allows (one bottom only: the cache holds one batch)."""
        algo = self.chosen_algorithm()  # the cache's layout depends on it
        per_image = policy.cache_elements_per_image(algo, self.geom, self.channels, top[0].shape[2], top[0].shape[3])
        nbytes = per_image * bottom[0].shape[0] * self.dtype.itemsize
        budget = self.net.conv_cache if self.net is not None else None
        # a net whose memory is pooled sizes the caches by what they add to its peak (vggtool.net.pool)
        limit = float("inf") if getattr(self.net, "memory_pool", None) is not None else self.settings().conv_cache_bytes
        enabled = (self.phase == 0 and len(bottom) == 1 and budget is not None
                   and budget.claim(self.name, nbytes, limit))
        if budget is not None and not enabled:
            budget.claim(self.name, 0, 0)  # drop an earlier claim
        self.forward_cache.plan(algo, per_image, enabled, bottom[0].shape[0], self.dtype.itemsize)

    def forward(self, bottom, top):
        algo = self.chosen_algorithm()
        cache = self.forward_cache
        keep = cache.enabled and algo == cache.algorithm  # (settings changed after reshape: no cache)
        for b, t in zip(bottom, top):
            if algo in policy.WINOGRAD_TILE:
                winograd.forward(self, b.data, t.data, policy.WINOGRAD_TILE[algo], keep)
            elif algo == "shifted":
                shifted.forward(self, b.data, t.data)
            else:
                im2col.forward(self, b.data, t.data, keep)
        cache.valid = keep and algo != "shifted"

    def backward_reads_data(self, bottom, top):
        """The input, unless the forward cache holds what dW needs (dX needs only its shape)."""
        cache = self.forward_cache
        return [] if cache.enabled and cache.algorithm != "shifted" else list(bottom)

    def backward(self, top, propagate_down, bottom):
        want_w = self.param_propagate_down[0]
        want_b = self.bias_term and self.param_propagate_down[1]
        algo = self.chosen_algorithm()
        if algo != self.forward_cache.algorithm:  # settings changed since reshape: the kept layout differs
            self.forward_cache.valid = False
        cache = self.forward_cache  # planned (enabled) but not filled: the pool may have let the input go
        if want_w and cache.enabled and not cache.valid and self.net is not None and \
                not all(self.net.data_is_kept(b) for b in bottom):
            raise self.error("backward without the forward that fills its cache: in a net whose memory is "
                             "shared (settings.share_memory) its input's data is gone by now; run forward first")
        for b, t, down in zip(bottom, top, propagate_down):
            if want_b:
                self._add_bias_grad(t.diff)
            dx = b.diff if down else None
            if algo in policy.WINOGRAD_TILE:
                m = policy.WINOGRAD_TILE[algo]
                if want_w:
                    winograd.backward_weights(self, b.data, t.diff, m)
                if down:
                    winograd.backward_data(self, b.data.shape, t.diff, dx, m)
            elif algo == "shifted":
                if want_w:
                    shifted.backward_weights(self, b.data, t.diff)
                if down:
                    shifted.backward_data(self, t.diff, dx)
            elif want_w or down:
                im2col.backward(self, b.data, t.diff, dx, want_w)
        self.forward_cache.release()

    def _add_bias_grad(self, dy):
        """blobs[1].diff += dy summed over images and positions: per image a BLAS matrix-vector product
        with ones (NumPy's sum over axes (0, 2, 3) strides across planes and is slower)."""
        n, co = dy.shape[0], dy.shape[1]
        ones = getattr(self, "_ones", None)
        if ones is None or ones.size != dy[0, 0].size or ones.dtype != dy.dtype:
            with self.device:
                ones = self._ones = self.xp.ones(dy[0, 0].size, dtype=dy.dtype)
        self.blobs[1].diff += self.xp.matmul(dy.reshape(n, co, -1), ones).sum(axis=0)
