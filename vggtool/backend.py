"""The one place that knows NumPy from CuPy.

A `Device` says where arrays live; `device.xp` is the array module to use there. Layer code is written
once against `xp`; nothing else in vggtool imports cupy directly.

Every device-to-host conversion goes through `to_numpy` (or `host_float`/`host_bool` on it), which counts
its calls, on NumPy arrays too: `count_transfers()` lets a test see that a training iteration without a
display brings nothing to the host, as in Caffe (each such conversion waits for the GPU to finish).
"""
import contextlib
import os
import threading

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
        self._local = threading.local()  # per thread: the CuPy contexts entered and not yet exited

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

    def _contexts(self):
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def __enter__(self):
        # Re-entrant: `with device:` nests (Net.forward -> layer -> Blob.reshape), each exit undoing its own
        # enter, so the device current before the outermost enter is current again after it.
        if self.is_gpu:
            ctx = _cupy.cuda.Device(self.index)
            ctx.__enter__()
            self._contexts().append(ctx)
        return self

    def __exit__(self, *exc):
        if self.is_gpu:
            self._contexts().pop().__exit__(*exc)
        return False

    def asarray(self, x, dtype=None):
        """Copy/convert `x` (NumPy or CuPy) onto this device."""
        if self.is_gpu:
            with self:
                return _cupy.asarray(x, dtype=dtype)
        if get_array_module(x) is not np:  # from a GPU: a counted transfer
            x = to_numpy(x)
        return np.asarray(x, dtype=dtype)

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


_transfers = [0]
_transfers_lock = threading.Lock()  # replicas' threads may convert at the same time


def to_numpy(x):
    """x as a NumPy array: the one device-to-host path (every call counted, see transfer_count)."""
    with _transfers_lock:
        _transfers[0] += 1
    if _cupy is not None and isinstance(x, _cupy.ndarray):
        return _cupy.asnumpy(x)
    return np.asarray(x)


def host_float(x):
    """A device scalar (a 0-d or one-element array, or a number) as a Python float, through to_numpy."""
    return float(to_numpy(x).reshape(-1)[0])


def host_bool(x):
    return bool(to_numpy(x).reshape(-1)[0])


def transfer_count():
    """How many times to_numpy has been called in this process."""
    return _transfers[0]


class TransferCount:
    """The to_numpy calls made (by any thread) since it was created, up to `stop()`: `.count`."""

    def __init__(self):
        self.start, self.end = transfer_count(), None

    def stop(self):
        self.end = transfer_count()

    @property
    def count(self):
        return (transfer_count() if self.end is None else self.end) - self.start


@contextlib.contextmanager
def count_transfers():
    """`with count_transfers() as c: ...` then `c.count`: the conversions made inside the block."""
    counter = TransferCount()
    try:
        yield counter
    finally:
        counter.stop()


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
