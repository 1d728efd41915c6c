"""`vggtool device_query`: the devices vggtool can use (Caffe's device_query)."""
import os

import numpy as np

from .. import backend

HELP = "show the CPU and the GPUs vggtool can use"


def add_arguments(parser):
    parser.add_argument("--gpu", default=None, help="GPU id(s) to describe (default: all visible)")


def run(args):
    requested = None if args.gpu is None else backend.parse_devices(args.gpu)  # an unknown id is an error
    print(f"CPU: {os.cpu_count()} core(s), NumPy {np.__version__}")
    count = backend.gpu_count()
    if count == 0:
        print("GPUs: none visible (install the 'gpu' extra with CuPy to use NVIDIA GPUs)")
        return 0
    import cupy

    ids = range(count) if requested is None else [d.index for d in requested]
    for i in ids:
        dev = backend.gpu(i)
        props = cupy.cuda.runtime.getDeviceProperties(dev.index)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        print(f"GPU {i}: {name}, {props['totalGlobalMem'] / 2**30:.1f} GiB, "
              f"compute capability {props['major']}.{props['minor']}")
    return 0
