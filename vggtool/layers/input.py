"""Input layers without a data source: Input (shapes given, data set by the caller) and DummyData."""
from ..fillers import fill
from .base import Layer, register_layer


@register_layer("Input")
class InputLayer(Layer):
    """Tops with fixed shapes whose data the caller provides (net.blobs[...].data or net.forward(name=...))."""

    exact_bottoms = 0
    min_tops = 1

    def layer_setup(self, bottom, top):
        shapes = list(self.param.input_param.shape)
        if len(shapes) not in (1, len(top)):
            raise self.error(f"input_param gives {len(shapes)} shape(s) for {len(top)} top(s); "
                             "give one shape for all tops or one per top")
        for i, blob in enumerate(top):
            blob.reshape(shapes[0] if len(shapes) == 1 else shapes[i])

    def reshape(self, bottom, top):
        pass  # the caller reshapes input blobs directly

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass


@register_layer("DummyData")
class DummyDataLayer(Layer):
    """Tops filled by fillers (constant 0 unless data_filler says otherwise); as in Caffe, the
    non-constant ones are refilled each forward.

    A refill draws from a Generator keyed like Net.sample_rng: (net seed, layer, t, sample_offset),
    t being net.iteration, or the next t when net.iteration has not changed since the last forward (as
    the Data layer). So the values depend on the iteration, not on how many forwards ran before: a
    resumed run sees the same values as an uninterrupted one.
    """

    exact_bottoms = 0
    min_tops = 1

    def layer_setup(self, bottom, top):
        p = self.param.dummy_data_param
        n = len(top)
        if len(p.shape):
            if len(p.shape) not in (1, n):
                raise self.error(f"dummy_data_param gives {len(p.shape)} shape(s) for {n} top(s)")
            shapes = [tuple(p.shape[0 if len(p.shape) == 1 else i].dim) for i in range(n)]
        else:
            legacy = [list(p.num), list(p.channels), list(p.height), list(p.width)]
            if any(len(v) not in (1, n) for v in legacy):
                raise self.error("dummy_data_param needs shape or num/channels/height/width (one each, or one per top)")
            shapes = [tuple(v[0 if len(v) == 1 else i] for v in legacy) for i in range(n)]
        fillers = list(p.data_filler)
        if len(fillers) not in (0, 1, n):
            raise self.error(f"dummy_data_param gives {len(fillers)} data_filler(s) for {n} top(s)")
        from ..proto import caffe_pb2

        default = caffe_pb2.FillerParameter(type="constant", value=0)
        self.fillers = [fillers[0 if len(fillers) == 1 else i] if fillers else default for i in range(n)]
        self.refill = [(f.type or "constant") != "constant" for f in self.fillers]
        self._rng = self.rng()  # setup values, and the refills of a layer without a net
        for blob, shape, filler in zip(top, shapes, self.fillers):
            blob.reshape(shape)
            fill(blob, filler, self._rng)

    def reshape(self, bottom, top):
        pass

    def forward_rng(self):
        if self.net is None:
            return self._rng
        return self.net.sample_rng(self.name, 0, iteration=self.batch_position())

    def forward(self, bottom, top):
        if not any(self.refill):
            return
        rng = self.forward_rng()
        for blob, filler, refill in zip(top, self.fillers, self.refill):
            if refill:
                fill(blob, filler, rng)

    def backward(self, top, propagate_down, bottom):
        pass
