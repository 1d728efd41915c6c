"""The one place that knows NumPy from CuPy.

A `Device` says where arrays live; `device.xp` is the array module to use there. Layer code is written
once against `xp`; nothing else in vggtool imports cupy directly.
"""
import os

import numpy as np

from .errors import VggtoolError

try:  # CuPy is an optional extra; importing it must never break the CPU path.
    import cupy as _cupy
except Exception:  # pragma: no cover - depends on the machine
    _cupy = None


class Device:
    """A CPU or one NVIDIA GPU. Use `with device:` around work that allocates on it."""

    def __init__(self, kind="cpu", index=0):
        if kind not in ("cpu", "gpu"):
            raise VggtoolError(f"unknown device kind '{kind}' (use 'cpu' or 'gpu')")
        self.kind = kind
        self.index = int(index)
        self._ctx = None

    @property
    def is_gpu(self):
        return self.kind == "gpu"

    @property
    def xp(self):
        return _cupy if self.is_gpu else np

    @property
    def name(self):
        return f"gpu:{self.index}" if self.is_gpu else "cpu"

    def __repr__(self):
        return f"Device({self.name})"

    def __eq__(self, other):
        return isinstance(other, Device) and (self.kind, self.index) == (other.kind, other.index)

    def __hash__(self):
        return hash((self.kind, self.index))

    def __enter__(self):
        if self.is_gpu:
            self._ctx = _cupy.cuda.Device(self.index)
            self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        if self._ctx is not None:
            self._ctx.__exit__(*exc)
            self._ctx = None
        return False

    def asarray(self, x, dtype=None):
        """Copy/convert `x` (NumPy or CuPy) onto this device."""
        if self.is_gpu:
            with self:
                return _cupy.asarray(x, dtype=dtype)
        return np.asarray(to_numpy(x), dtype=dtype)

    def memory_bytes(self):
        """The device's total memory: no array larger than this can be allocated on it."""
        if self.is_gpu:
            with self:
                return int(_cupy.cuda.runtime.memGetInfo()[1])
        return _physical_memory()

    def synchronize(self):
        if self.is_gpu:
            with self:
                _cupy.cuda.get_current_stream().synchronize()


CPU = Device("cpu")


def _physical_memory():
    """The machine's RAM, or the process's address-space limit (ulimit -v) when that is smaller."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system: no bound from here
        total = 1 << 62
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            total = min(total, soft)
    except (ImportError, ValueError, OSError):
        pass
    return total


def gpu_count():
    if _cupy is None:
        return 0
    try:
        return _cupy.cuda.runtime.getDeviceCount()
    except Exception:
        return 0


def gpu(index=0):
    """The GPU `index`, or a clear error when CuPy or the GPU is missing."""
    if _cupy is None:
        raise VggtoolError("a GPU was requested but CuPy is not installed: pip install 'vggtool[gpu]'")
    count = gpu_count()
    if index < 0 or index >= count:
        raise VggtoolError(f"GPU {index} requested but {count} GPU(s) are visible")
    return Device("gpu", index)


def get_array_module(x):
    """numpy or cupy, chosen from the array itself (never from a global mode)."""
    if _cupy is not None and isinstance(x, _cupy.ndarray):
        return _cupy
    return np


def to_numpy(x):
    if _cupy is not None and isinstance(x, _cupy.ndarray):
        return _cupy.asnumpy(x)
    return np.asarray(x)


def parse_devices(gpu_spec=None, devices_spec=None):
    """Turn `--gpu 0,1|all` or `--devices cpu:4|gpu:0,gpu:1` into a list of Devices.

    `cpu:N` means N CPU replicas (used to run the multi-device logic without GPUs).
    """
    if gpu_spec and devices_spec:
        raise VggtoolError("give either --gpu or --devices, not both")
    if gpu_spec:
        spec = str(gpu_spec).strip()
        if spec == "all":
            count = gpu_count()
            if count == 0:
                raise VggtoolError("--gpu all: no GPU is visible (is CuPy installed?)")
            return [gpu(i) for i in range(count)]
        try:
            ids = [int(s) for s in spec.split(",") if s.strip() != ""]
        except ValueError:
            raise VggtoolError(f"--gpu expects a list of integers or 'all', got '{gpu_spec}'") from None
        if len(set(ids)) != len(ids):
            raise VggtoolError(f"--gpu lists a device twice: '{gpu_spec}'")
        return [gpu(i) for i in ids]
    if devices_spec:
        out = []
        for item in str(devices_spec).split(","):
            item = item.strip()
            if item == "cpu":
                out.append(CPU)
            elif item.startswith("cpu:"):
                try:
                    n = int(item[4:])
                except ValueError:
                    n = 0
                if n < 1:
                    raise VggtoolError(f"--devices: '{item}' needs a positive replica count, e.g. cpu:4")
                out.extend([CPU] * n)
            elif item.startswith("gpu:"):
                try:
                    out.append(gpu(int(item[4:])))
                except ValueError:
                    raise VggtoolError(f"--devices: bad GPU id in '{item}'") from None
            else:
                raise VggtoolError(f"--devices: cannot read '{item}' (use cpu, cpu:N or gpu:K)")
        return out
    return [CPU]
