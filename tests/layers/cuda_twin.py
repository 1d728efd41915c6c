"""The named CUDA kernels' source (vggtool/layers/cuda_kernels.py) compiled as C and run on the CPU.

`twin()` compiles `cuda_kernels.source(cuda=False)` with a prelude that declares blockIdx, blockDim,
threadIdx and gridDim as globals, plus one driver per kernel that loops over an emulated grid (a few
blocks of a few threads, so the grid-stride loops wrap several times) and calls the kernel once per
(block, thread). The same text NVRTC compiles for the GPU thus runs here, and its results can be compared
with the C kernels and the NumPy code. Returns None where no C compiler works.
"""
import ctypes
import functools
import os
import shutil
import subprocess
import sysconfig
import tempfile

import numpy as np

from vggtool.layers import cuda_kernels

PRELUDE = """
typedef struct { long long x, y, z; } emulated_dim3;
static emulated_dim3 blockIdx, blockDim, threadIdx, gridDim;
"""
GRID, THREADS = 3, 5  # 15 emulated threads: every loop wraps for all but the tiniest counts
_CTYPE = {"in": ctypes.c_void_p, "out": ctypes.c_void_p, "in_u8": ctypes.c_void_p, "out_u8": ctypes.c_void_p,
          "i64": ctypes.c_longlong}


def _drivers():
    out = []
    for suffix, real in (("f32", "float"), ("f64", "double")):
        for name, (params, _) in cuda_kernels.KERNELS.items():
            args = ", ".join(a for _, a in params)
            out.append(f"void run_{name}_{suffix}({cuda_kernels.parameters(name, real)})\n{{\n"
                       f"    gridDim.x = {GRID}; blockDim.x = {THREADS};\n"
                       f"    for (long long b = 0; b < {GRID}; b++)\n"
                       f"        for (long long t = 0; t < {THREADS}; t++) {{\n"
                       f"            blockIdx.x = b; threadIdx.x = t;\n"
                       f"            {name}_{suffix}({args});\n        }}\n}}\n")
    return "\n".join(out)


@functools.lru_cache(maxsize=1)
def twin():
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if not shutil.which(compiler):
        return None
    folder = tempfile.mkdtemp(prefix="vggtool-cuda-twin-")
    c_file, lib = os.path.join(folder, "twin.c"), os.path.join(folder, "twin.so")
    with open(c_file, "w") as f:
        f.write(PRELUDE + cuda_kernels.source(cuda=False) + _drivers())
    result = subprocess.run([compiler, "-O1", "-std=c99", "-Wall", "-Werror", "-shared", "-fPIC", c_file, "-o", lib],
                            capture_output=True, text=True)
    if result.returncode:
        raise AssertionError(f"the CUDA kernels' source does not compile as C:\n{result.stderr}")
    return ctypes.CDLL(lib)


def run(name, dtype, *args):
    """Kernel `name` for `dtype` on the CPU, NumPy arrays and integers in KERNELS' parameter order."""
    lib = twin()
    params = cuda_kernels.KERNELS[name][0]
    fn = getattr(lib, "run_" + cuda_kernels.kernel_name(name, dtype))
    fn.restype = None
    fn.argtypes = [_CTYPE[kind] for kind, _ in params]
    values = []
    for (kind, arg), value in zip(params, args):
        if kind == "i64":
            values.append(int(value))
        else:
            assert isinstance(value, np.ndarray) and value.flags.c_contiguous, arg
            values.append(value.ctypes.data)
    fn(*values)
