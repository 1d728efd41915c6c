"""pycaffe's Net on vggtool's engine: the constructor forms, forward/backward with pycaffe's checks,
batched forward_all, MemoryData input, weight sharing and HDF5 weights (python/caffe/pycaffe.py and
_caffe.cpp are the reference for names and behaviour)."""
import os
from itertools import zip_longest

import numpy as np

from .. import net as engine
from ..backend import to_numpy
from ..net.weights import share_trained_layers
from . import _runtime
from ._runtime import PycaffeError


def _check_file(path):
    if not os.path.isfile(str(path)):
        raise PycaffeError(f"Could not open file {path}")


def _is_hdf5(path):
    try:
        with open(path, "rb") as f:
            return f.read(8) == b"\x89HDF\r\n\x1a\n"
    except OSError:
        return False


def _check_memory_array(arr, name, channels, height, width):
    """_caffe.cpp's CheckContiguousArray: the exact checks pycaffe makes before handing arrays over."""
    if not isinstance(arr, np.ndarray) or not arr.flags["C_CONTIGUOUS"]:
        raise PycaffeError(f"{name} must be C contiguous")
    if arr.ndim != 4:
        raise PycaffeError(f"{name} must be 4-d")
    if arr.dtype != np.float32:
        raise PycaffeError(f"{name} must be float32")
    if arr.shape[1] != channels:
        raise PycaffeError(f"{name} has wrong number of channels")
    if arr.shape[2] != height:
        raise PycaffeError(f"{name} has wrong height")
    if arr.shape[3] != width:
        raise PycaffeError(f"{name} has wrong width")


class Net(engine.Net):
    """caffe.Net: `Net(model, phase)`, `Net(model, weights, phase)` (pycaffe's deprecated form), or
    `Net(model, phase, level=0, stages=None, weights=None)`. The device is the one set_mode_gpu /
    set_device chose; the seed comes from set_random_seed."""

    def __init__(self, network_file, *args, level=0, stages=None, weights=None, phase=None, **engine_kwargs):
        weights, phase = engine._weights_and_phase(args, weights, phase)
        if isinstance(network_file, (str, os.PathLike)):
            _check_file(network_file)
        if weights is not None:
            _check_file(weights)
        engine_kwargs.setdefault("device", _runtime.current_device())
        engine_kwargs.setdefault("seed", _runtime.next_seed())
        self._before_forward, self._after_forward = [], []
        self._before_backward, self._after_backward = [], []
        super().__init__(network_file, weights=weights, phase=phase, stages=tuple(stages or ()), level=level,
                         **engine_kwargs)

    # -- the C++-exposed names (_caffe.cpp) ----------------------------------------------------------------
    @property
    def _layer_names(self):
        return self.layer_names

    @property
    def _blob_names(self):
        return list(self.blobs)

    @property
    def _blobs(self):
        return list(self.blobs.values())

    @property
    def _blob_loss_weights(self):
        return list(self.blob_loss_weights.values())

    @property
    def _inputs(self):
        names = self._blob_names
        return [names.index(n) for n in self.inputs]

    @property
    def _outputs(self):
        names = self._blob_names
        return [names.index(n) for n in self.outputs]

    def _bottom_ids(self, i):
        names = self._blob_names
        return [names.index(n) for n in self.bottom_names[self._layer_names[i]]]

    def _top_ids(self, i):
        names = self._blob_names
        return [names.index(n) for n in self.top_names[self._layer_names[i]]]

    def _forward(self, start, end):
        """Run layers start..end (indices, inclusive); the weighted loss as a float (Net::ForwardFromTo)."""
        return float(self.forward_from_to(start, end))

    def _backward(self, start, end):
        self.backward_from_to(start, end)

    def before_forward(self, fn):
        self._before_forward.append(fn)

    def after_forward(self, fn):
        self._after_forward.append(fn)

    def before_backward(self, fn):
        self._before_backward.append(fn)

    def after_backward(self, fn):
        self._after_backward.append(fn)

    def forward_from_to(self, start=0, end=None):
        """As Caffe's Layer::Forward, each layer reshapes its tops before it runs, so `blob.reshape(...)`
        on an input followed by forward() works without net.reshape()."""
        end = len(self.layers) - 1 if end is None else end
        loss = 0.0
        with self.device:
            for i in range(start, end + 1):
                for fn in self._before_forward:
                    fn(i)
                self.layers[i].reshape(self.bottom_vecs[i], self.top_vecs[i])
                loss = loss + super().forward_from_to(i, i)
                for fn in self._after_forward:
                    fn(i)
        return loss

    def backward_from_to(self, start=None, end=0):
        start = len(self.layers) - 1 if start is None else start
        if not (self._before_backward or self._after_backward):
            return super().backward_from_to(start, end)
        for i in range(start, end - 1, -1):
            for fn in self._before_backward:
                fn(i)
            super().backward_from_to(i, i)
            for fn in self._after_backward:
                fn(i)

    # -- forward and backward (pycaffe.py) ---------------------------------------------------------------------
    def _set_batch(self, arrays, expected, what):
        """Copy `arrays` into the blobs' data (or diff), with pycaffe's checks: the names must be exactly
        `expected` and each array's first axis the blob's batch size (blobs are never reshaped here)."""
        if set(arrays) != set(expected):
            kind = "Input blob arguments do not match net inputs" if what == "data" else \
                "Top diff arguments do not match net outputs"
            raise PycaffeError(f"{kind}. (given: {', '.join(sorted(arrays))}; "
                               f"expected: {', '.join(sorted(expected))})")
        for name, value in arrays.items():
            blob = self.blobs[name]
            if np.shape(value)[0] != blob.shape[0]:
                kind = "Input is not batch sized" if what == "data" else "Diff is not batch sized"
                raise PycaffeError(f"{kind}: blob '{name}' holds a batch of {blob.shape[0]}, the array has "
                                   f"{np.shape(value)[0]} (reshape the blob and call net.reshape() first)")
            target = blob.data if what == "data" else blob.diff
            try:
                target[...] = blob.device.asarray(value, dtype=blob.dtype)
            except ValueError:
                raise PycaffeError(f"blob '{name}' has shape {blob.shape}; cannot take an array of shape "
                                   f"{np.shape(value)}") from None

    def forward(self, blobs=None, start=None, end=None, **kwargs):
        """{blob: data} of the outputs (or of layer `end`'s tops) plus `blobs`, after running the net from
        layer `start` to layer `end` (names, inclusive); kwargs set the inputs' data."""
        blobs = list(blobs or [])
        start_ind = self._layer_names.index(start) if start is not None else 0
        if end is not None:
            end_ind = self._layer_names.index(end)
            outputs = set(self.top_names[end] + blobs)
        else:
            end_ind = len(self.layers) - 1
            outputs = set(self.outputs + blobs)
        if kwargs:
            self._set_batch(kwargs, self.inputs, "data")
        self.last_loss = self.forward_from_to(start_ind, end_ind)
        return {name: self.blobs[name].data for name in outputs}

    def backward(self, diffs=None, start=None, end=None, **kwargs):
        """{blob: diff} of the inputs (or of layer `end`'s bottoms) plus `diffs`, after running backward from
        layer `start` down to layer `end`; kwargs set the outputs' diffs."""
        diffs = list(diffs or [])
        start_ind = self._layer_names.index(start) if start is not None else len(self.layers) - 1
        if end is not None:
            end_ind = self._layer_names.index(end)
            outputs = set(self.bottom_names[end] + diffs)
        else:
            end_ind = 0
            outputs = set(self.inputs + diffs)
        if kwargs:
            self._set_batch(kwargs, self.outputs, "diff")
        self.backward_from_to(start_ind, end_ind)
        return {name: self.blobs[name].diff for name in outputs}

    def _batch(self, arrays):
        """Split {name: N x ...} into the net's batch size (the first blob's first axis); the last batch is
        padded with zeros. Yields {name: batch}."""
        if not arrays:
            return
        num = len(next(iter(arrays.values())))
        batch_size = next(iter(self.blobs.values())).shape[0]
        for i in range(0, num - num % batch_size, batch_size):
            yield {name: a[i:i + batch_size] for name, a in arrays.items()}
        rest = num % batch_size
        if rest:
            yield {name: np.concatenate([np.asarray(a[num - rest:]),
                                         np.zeros((batch_size - rest,) + np.shape(a)[1:], dtype=np.float32)])
                   for name, a in arrays.items()}

    def forward_all(self, blobs=None, **kwargs):
        """forward() over inputs of any length, in batches; {blob: array of all N results}."""
        if not kwargs:
            raise PycaffeError("forward_all needs the inputs as keyword arguments (blob name = N x ... array)")
        num = len(next(iter(kwargs.values())))
        collected = {name: [] for name in set(self.outputs + list(blobs or []))}
        for batch in self._batch(kwargs):
            outs = self.forward(blobs=blobs, **batch)
            for name, value in outs.items():
                collected[name].extend(to_numpy(value).copy())
        return {name: np.asarray(v)[:num] for name, v in collected.items()}

    def forward_backward_all(self, blobs=None, diffs=None, **kwargs):
        """forward_all and backward in step: kwargs hold inputs (for forward) and output diffs (for
        backward). Returns ({blob: data}, {blob: diff}) for all N."""
        collected = {name: [] for name in set(self.outputs + list(blobs or []))}
        collected_diffs = {name: [] for name in set(self.inputs + list(diffs or []))}
        forward_batches = self._batch({n: kwargs[n] for n in self.inputs if n in kwargs})
        backward_batches = self._batch({n: kwargs[n] for n in self.outputs if n in kwargs})
        for fb, bb in zip_longest(forward_batches, backward_batches, fillvalue={}):
            outs = self.forward(blobs=blobs, **fb)
            grads = self.backward(diffs=diffs, **bb)
            for name, value in outs.items():
                collected[name].extend(to_numpy(value).copy())
            for name, value in grads.items():
                collected_diffs[name].extend(to_numpy(value).copy())
        num = len(next(iter(kwargs.values()))) if kwargs else None
        return ({n: np.asarray(v)[:num] for n, v in collected.items()},
                {n: np.asarray(v)[:num] for n, v in collected_diffs.items()})

    # -- data and weights --------------------------------------------------------------------------------------
    def set_input_arrays(self, data, labels):
        """Hand N x C x H x W float32 data and N labels to the net's first layer, a MemoryData layer."""
        if len(self.layers) == 0 or self.layers[0].type != "MemoryData":
            raise PycaffeError("set_input_arrays may only be called if the first layer is a MemoryDataLayer")
        labels = np.asarray(labels)
        if labels.ndim == 1:
            labels = np.ascontiguousarray(labels[:, None, None, None])
        layer = self.layers[0]
        _check_memory_array(data, "data array", layer.channels, layer.height, layer.width)
        _check_memory_array(labels, "labels array", 1, 1, 1)
        if data.shape[0] != labels.shape[0]:
            raise PycaffeError("data and labels must have the same first dimension")
        if data.shape[0] % layer.batch_size != 0:
            raise PycaffeError("first dimensions of input arrays must be a multiple of batch size")
        layer.reset(data, labels)

    def share_with(self, other):
        """Use `other`'s parameter data for the layers both nets name alike (Net::ShareTrainedLayersWith)."""
        share_trained_layers(self, other)

    def load_weights(self, path):
        # Caffe's Net(model, weights, phase) is CopyTrainedLayersFrom: layers without a namesake are
        # skipped, not an error (the engine's stricter load_weights is for vggtool's own commands).
        return self.copy_from(path)

    def copy_from(self, source, only=None, report=None):
        """Weights from a .caffemodel (or, like Caffe, an HDF5 weights file written by save_hdf5)."""
        if isinstance(source, (str, os.PathLike)) and _is_hdf5(source):  # Caffe: H5Fis_hdf5
            return self.load_hdf5(source)
        return super().copy_from(source, only=only, report=report)

    def save_hdf5(self, filename, write_diff=False):
        from . import _hdf5

        _hdf5.save(self, filename, write_diff)

    def load_hdf5(self, filename):
        from . import _hdf5

        _hdf5.load(self, filename)
