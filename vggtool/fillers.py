"""Weight fillers (Caffe's FillerParameter): constant, uniform, gaussian, xavier, msra, bilinear.

Values are drawn on the CPU from a seeded NumPy Generator, then copied to the blob's device, so a
net initialised with the same seed is identical on every device.
"""
import math

import numpy as np

from .errors import VggtoolError


def _fans(shape):
    count = math.prod(shape)
    fan_in = count // shape[0] if shape and shape[0] else count
    fan_out = count // shape[1] if len(shape) > 1 and shape[1] else count
    return fan_in, fan_out


def _variance_n(param, shape):
    fan_in, fan_out = _fans(shape)
    norm = param.variance_norm
    # FillerParameter.VarianceNorm: FAN_IN = 0, FAN_OUT = 1, AVERAGE = 2
    if norm == 1:
        return fan_out
    if norm == 2:
        return (fan_in + fan_out) / 2.0
    return fan_in


def fill_array(param, shape, rng, dtype=np.float32):
    """A new NumPy array of `shape` filled as `param` (a FillerParameter) says."""
    kind = param.type or "constant"
    shape = tuple(shape)
    if math.prod(shape) == 0:  # nothing to fill (and no fan to divide by)
        return np.zeros(shape, dtype)
    if kind in ("uniform", "gaussian"):
        values = (param.min, param.max) if kind == "uniform" else (param.mean, param.std)
        if not all(math.isfinite(v) for v in values):
            raise VggtoolError(f"{kind} filler: its parameters must be finite, got {values}")
    if kind == "constant":
        out = np.full(shape, param.value, dtype=np.float64)
    elif kind == "uniform":
        if param.max < param.min:
            raise VggtoolError(f"uniform filler: max ({param.max}) is below min ({param.min})")
        out = rng.uniform(param.min, param.max, size=shape)
    elif kind == "gaussian":
        if param.std < 0:
            raise VggtoolError(f"gaussian filler: std must be >= 0, got {param.std}")
        out = rng.normal(param.mean, param.std, size=shape)
        if param.sparse >= 0 and len(shape) >= 2:
            # Caffe's sparse gaussian: each output unit keeps about `sparse` non-zero inputs.
            num_outputs = shape[0]
            keep = min(1.0, param.sparse / max(1, math.prod(shape) // num_outputs))
            out *= rng.uniform(size=shape) < keep
    elif kind == "xavier":
        scale = math.sqrt(3.0 / _variance_n(param, shape))
        out = rng.uniform(-scale, scale, size=shape)
    elif kind == "msra":
        std = math.sqrt(2.0 / _variance_n(param, shape))
        out = rng.normal(0.0, std, size=shape)
    elif kind == "bilinear":
        if len(shape) != 4 or shape[2] != shape[3]:
            raise VggtoolError(f"bilinear filler needs a 4-d blob with square kernels, got {shape}")
        k = shape[3]
        f = math.ceil(k / 2.0)
        c = (2 * f - 1 - f % 2) / (2.0 * f)
        ys, xs = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
        kernel = (1 - np.abs(xs / f - c)) * (1 - np.abs(ys / f - c))
        out = np.broadcast_to(kernel, shape).copy()
    elif kind == "positive_unitball":
        out = rng.uniform(0, 1, size=shape)
        flat = out.reshape(shape[0], -1)
        flat /= flat.sum(axis=1, keepdims=True)
    else:
        raise VggtoolError(f"unknown filler type '{kind}' "
                           "(known: constant, uniform, gaussian, xavier, msra, bilinear, positive_unitball)")
    return out.astype(dtype)


def fill(blob, param, rng):
    try:
        blob.data = fill_array(param, blob.shape, rng, dtype=blob.dtype)
    except VggtoolError as e:
        if not getattr(blob, "name", None):
            raise
        raise VggtoolError(f"{blob.name}: {e}") from None
