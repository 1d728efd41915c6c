"""Input layers without a data source: Input (shapes given, data set by the caller) and DummyData."""
import numpy as np

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


@register_layer("MemoryData")
class MemoryDataLayer(Layer):
    """Batches taken in turn from arrays the caller hands over (Caffe's MemoryDataLayer; pycaffe's
    net.set_input_arrays). Tops: data (batch_size x channels x height x width) and label (batch_size).

    `reset(data, labels)` keeps references to the arrays, as Caffe keeps their pointers: each forward
    copies the next batch_size rows, wrapping around at the end.
    """

    exact_bottoms = 0
    exact_tops = 2

    def layer_setup(self, bottom, top):
        p = self.param.memory_data_param
        self.batch_size, self.channels, self.height, self.width = p.batch_size, p.channels, p.height, p.width
        if self.batch_size * self.channels * self.height * self.width <= 0:
            raise self.error("batch_size, channels, height, and width must be specified and positive in "
                             "memory_data_param")
        top[0].reshape((self.batch_size, self.channels, self.height, self.width))
        top[1].reshape((self.batch_size,))
        self._data = self._labels = None
        self._pos = 0

    def reset(self, data, labels):
        """Use `data` (N x C x H x W) and `labels` (N values) from the next forward on; N must be a
        multiple of batch_size."""
        data = np.asarray(data)
        labels = np.asarray(labels)
        want = (self.channels, self.height, self.width)
        if data.ndim != 4 or data.shape[1:] != want:
            raise self.error(f"data array has shape {data.shape}; expected N x {want[0]} x {want[1]} x {want[2]}")
        if labels.size != data.shape[0]:
            raise self.error(f"data and labels must have the same first dimension ({data.shape[0]} images, "
                             f"{labels.size} labels)")
        if data.shape[0] == 0 or data.shape[0] % self.batch_size:
            raise self.error(f"the number of images ({data.shape[0]}) must be a positive multiple of "
                             f"batch_size {self.batch_size}")
        self._data, self._labels = data, labels.reshape(-1)
        self._pos = 0

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        if self._data is None:
            raise self.error("no data yet: hand it over with set_input_arrays (layer.reset) before forward")
        b, pos = self.batch_size, self._pos
        top[0].data = self._data[pos:pos + b]
        top[1].data = self._labels[pos:pos + b]
        self._pos = (pos + b) % self._data.shape[0]

    def backward(self, top, propagate_down, bottom):
        pass

    def allow_force_backward(self, bottom_index):
        return False
