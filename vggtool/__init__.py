"""vggtool: a Caffe-style, prototxt-driven toolbox reproducing Simonyan & Zisserman's VGG nets.

The Python API mirrors pycaffe: `vggtool.Net(model, weights=None, phase=vggtool.TEST)`,
`net.blobs[name].data/.diff`, `net.params[layer][i].data`, `net.forward(**inputs)`, `net.backward()`.
"""
from .backend import CPU, Device, gpu  # noqa: F401
from .errors import VggtoolError  # noqa: F401
from .net import TEST, TRAIN, Net  # noqa: F401

__version__ = "0.1.0"


def get_solver(path, **kwargs):
    """A solver built from a solver prototxt (see vggtool.solvers)."""
    from .solvers import get_solver as _get_solver

    return _get_solver(path, **kwargs)
