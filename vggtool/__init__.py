"""vggtool: a Caffe-style, prototxt-driven toolbox reproducing Simonyan & Zisserman's VGG nets.

The Python API mirrors pycaffe: `vggtool.Net(model, weights=None, phase=vggtool.TEST)`,
`net.blobs[name].data/.diff`, `net.params[layer][i].data`, `net.forward(**inputs)`, `net.backward()`.
Settings: `vggtool.config` (`Net(..., settings=vggtool.config.Settings(...))`).

Importing vggtool changes no environment and loads nothing heavy: the names below are imported on
first use, so the CLI (vggtool.cli) can call `vggtool.config.apply_process_defaults()` before NumPy
loads OpenBLAS. A library user who wants the same OpenBLAS behaviour calls it before importing NumPy.
"""
import importlib

__version__ = "0.1.0"

# public name -> module that defines it (imported on first access, PEP 562)
_LAZY = {"CPU": "backend", "Device": "backend", "gpu": "backend", "VggtoolError": "errors",
         "TEST": "net", "TRAIN": "net", "Net": "net"}
__all__ = sorted(_LAZY) + ["config", "get_solver"]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if name == "config":
        return importlib.import_module(".config", __name__)
    raise AttributeError(f"module 'vggtool' has no attribute {name!r}")


def get_solver(path, **kwargs):
    """A solver built from a solver prototxt (see vggtool.solvers)."""
    from .solvers import get_solver as _get_solver

    return _get_solver(path, **kwargs)
