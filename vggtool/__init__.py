"""vggtool: a Caffe-style, prototxt-driven toolbox reproducing Simonyan & Zisserman's VGG nets.

The Python API mirrors pycaffe: `vggtool.Net(model, weights=None, phase=vggtool.TEST)`,
`net.blobs[name].data/.diff`, `net.params[layer][i].data`, `net.forward(**inputs)`, `net.backward()`.
"""
import os

# OpenBLAS's idle threads spin for about 2^28 cycles after each GEMM before they sleep. On a machine whose
# cores all run GEMMs, that spinning steals the cores from the element-wise passes that follow (copies,
# transforms, pooling, split over threads): measured 2x slower right after a GEMM. 2^4 cycles: sleep at
# once; waking them costs microseconds per GEMM. Read when OpenBLAS loads, so it only takes effect when
# vggtool is imported before NumPy (the CLI always is); set it yourself otherwise.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
# vggtool reports unreadable images itself (naming the list line); OpenCV's own "[ WARN:0@...]" lines
# about the same files would only clutter the output. Read when OpenCV loads; set the level now if it has.
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
if "cv2" in __import__("sys").modules:  # pragma: no cover - depends on import order
    try:
        import cv2.utils.logging as _cv_logging

        _cv_logging.setLogLevel(_cv_logging.LOG_LEVEL_ERROR)
    except Exception:
        pass

from .backend import CPU, Device, gpu  # noqa: F401
from .errors import VggtoolError  # noqa: F401
from .net import TEST, TRAIN, Net  # noqa: F401

__version__ = "0.1.0"


def get_solver(path, **kwargs):
    """A solver built from a solver prototxt (see vggtool.solvers)."""
    from .solvers import get_solver as _get_solver

    return _get_solver(path, **kwargs)
