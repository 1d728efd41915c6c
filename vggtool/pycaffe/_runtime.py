"""pycaffe's process-wide settings (Caffe's singleton): CPU/GPU mode, device id, random seed, logging,
the Timer, and the solver-count knobs of multi-GPU pycaffe.

vggtool itself never reads a global mode (a Net is told its device); this module is where the
pycaffe names keep theirs and hand them to the nets they build.
"""
import sys
import time

import numpy as np

from ..backend import CPU, gpu
from ..errors import VggtoolError
from ..solvers.glog import GLog


class PycaffeError(VggtoolError, RuntimeError):
    """What pycaffe raises as RuntimeError (a std::runtime_error from _caffe.cpp)."""


_state = {"mode": "cpu", "device_id": 0, "seeds": None, "solver_count": 1, "solver_rank": 0,
          "multiprocess": False, "gpu_warned": False}
_log = GLog()


def set_mode_cpu():
    _state["mode"] = "cpu"


def set_mode_gpu():
    _state["mode"] = "gpu"


def set_device(device_id):
    _state["device_id"] = int(device_id)


def current_device():
    """The device for a net built now: the GPU set by set_device in GPU mode, else the CPU.

    On a machine without CuPy or without that GPU, GPU mode runs on the CPU after one warning (a pycaffe
    script calls set_mode_gpu() out of habit; stopping it there would help nobody)."""
    if _state["mode"] != "gpu":
        return CPU
    try:
        return gpu(_state["device_id"])
    except VggtoolError as e:
        if not _state["gpu_warned"]:
            _log.warning("pycaffe", f"set_mode_gpu: {e}; running on the CPU")
            _state["gpu_warned"] = True
        return CPU


def set_random_seed(seed):
    """Seed the generator that hands each net built afterwards its own seed (Caffe's set_random_seed:
    the same script with the same seed initialises the same weights)."""
    _state["seeds"] = np.random.default_rng(int(seed))


def next_seed():
    """A seed for the next net (None: a fresh random one, Caffe's behaviour without set_random_seed)."""
    gen = _state["seeds"]
    return None if gen is None else int(gen.integers(0, 2**31 - 1))


def layer_type_list():
    from ..layers import layer_types

    return layer_types()


def init_log(level=0, stderr=True):
    """glog's minimum level (0 INFO, 1 WARNING, 2 ERROR); vggtool always logs to stderr."""
    _state["min_level"] = int(level)


def log(message):
    if _state.get("min_level", 0) <= 0:
        _log.info("pycaffe", str(message))


def solver_count():
    return _state["solver_count"]


def set_solver_count(count):
    _state["solver_count"] = int(count)


def solver_rank():
    return _state["solver_rank"]


def set_solver_rank(rank):
    _state["solver_rank"] = int(rank)


def set_multiprocess(value):
    _state["multiprocess"] = bool(value)


def has_nccl():
    """False: vggtool's multi-GPU training is `vggtool train --gpu 0,1` (vggtool.solvers.parallel), not NCCL."""
    return False


class NCCL:
    """pycaffe's NCCL as a build without NCCL has it: constructible, and adding it to a solver or net
    (solver.add_callback(nccl)) does nothing."""

    def __init__(self, solver, uid):
        self.solver = solver
        self.uid = uid


class Timer:
    """Caffe's Timer: start(), stop(), ms (reading ms of a running timer stops it first)."""

    def __init__(self):
        self._start = None
        self._elapsed = None

    def start(self):
        self._start = time.perf_counter()

    def stop(self):
        if self._start is not None:
            self._elapsed = time.perf_counter() - self._start
            self._start = None

    @property
    def ms(self):
        if self._start is None and self._elapsed is None:
            print("Timer has never been run before reading time.", file=sys.stderr)
            return 0.0
        if self._start is not None:
            self.stop()
        return self._elapsed * 1000.0
