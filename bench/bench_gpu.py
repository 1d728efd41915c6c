#!/usr/bin/env python3
"""The GPU half of issue 17, measured: used by tools/gpu_check.sh (which runs everything on a GPU).

    python bench/bench_gpu.py replicas [--device gpu|cpu] [--dtype float64]
        1 vs 2 replicas of one device train 4 iterations alike (ImageData input: no LMDB needed);
        prints the largest weight difference relative to the largest weight; exit 1 when over the bound.
    python bench/bench_gpu.py vgg [--device gpu|cpu] [--batches 32,64] [--size 224] [--net D] [--out DIR]
        VGG forward and forward+backward with vggtool and with PyTorch (cuDNN on a GPU), each case in its
        own process, fp32 and TF32-allowed, with peak memory; a table on stdout and DIR/vgg_gpu.json.
    python bench/bench_gpu.py vgg --dry-run
        the same code on the CPU with VGG-11, batch 2, 32x32, one rep: checks the script, measures nothing.
    python bench/bench_gpu.py prototxt PATH [--net D] [--batch 32] [--size 224]
        writes that VGG net (Input layer) for `vggtool time`.

Peak memory: PyTorch's torch.cuda.max_memory_allocated(); vggtool's CuPy memory pool total_bytes() after
the run (the pool returns nothing to the driver, so it is the most the run ever held); on the CPU the
process's peak resident size. TF32: torch.backends.{cuda.matmul,cudnn}.allow_tf32; for CuPy CUPY_TF32=1
in the case's environment plus the cuBLAS handle's TF32 math mode.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "bench"))

from vgg_configs import torch_vgg  # noqa: E402


def bench_vgg():
    """bench/bench_vgg.py's VGG definitions (it parses sys.argv on import: give it none)."""
    saved, sys.argv = sys.argv, sys.argv[:1]
    try:
        import bench_vgg as module
    finally:
        sys.argv = saved
    return module


def device_of(name):
    from vggtool import backend

    return backend.gpu(0) if name == "gpu" else backend.CPU


# -- 1 vs 2 replicas ---------------------------------------------------------------------------------
REPLICA_NET = """
name: "replicas"
layer {{ name: "data" type: "ImageData" top: "data" top: "label"
  image_data_param {{ source: "{source}" root_folder: "{root}" batch_size: 8 shuffle: true is_color: false }}
  transform_param {{ crop_size: 12 mirror: true scale: 0.0039 }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param {{ num_output: 6 kernel_size: 3 pad: 1 weight_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "conv" }}
layer {{ name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "fc1" type: "InnerProduct" bottom: "pool" top: "fc1"
  inner_product_param {{ num_output: 16 weight_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "drop" type: "Dropout" bottom: "fc1" top: "fc1" dropout_param {{ dropout_ratio: 0.5 }} }}
layer {{ name: "fc2" type: "InnerProduct" bottom: "fc1" top: "fc2"
  inner_product_param {{ num_output: 3 weight_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc2" bottom: "label" top: "loss" }}
"""


def replica_images(folder, count=24):
    import cv2

    rng = np.random.default_rng(0)
    lines = []
    for i in range(count):
        name = f"img{i}.png"
        cv2.imwrite(os.path.join(folder, name), rng.integers(0, 256, (16, 16), dtype=np.uint8))
        lines.append(f"{name} {i % 3}")
    source = os.path.join(folder, "list.txt")
    with open(source, "w") as f:
        f.write("\n".join(lines) + "\n")
    return source


def train_replicas(devices, folder, dtype):
    from vggtool.proto import caffe_pb2
    from vggtool.io.prototxt import parse_net_text
    from vggtool.solvers.glog import GLog
    from vggtool.solvers.parallel import get_solver

    p = caffe_pb2.SolverParameter()
    text = REPLICA_NET.format(source=replica_images(folder), root=folder + os.sep)
    p.net_param.CopyFrom(parse_net_text(text, "<replica net>"))
    p.base_lr, p.momentum, p.weight_decay, p.lr_policy = 0.05, 0.9, 5e-4, "fixed"
    p.max_iter, p.display, p.random_seed = 4, 0, 11
    solver = get_solver(p, devices=devices, dtype=dtype, log=GLog(stream=False))
    solver.step(4)
    from vggtool.backend import to_numpy

    return [to_numpy(lp.blob.data).astype(np.float64) for lp in solver.net.learnable_params], solver


def cmd_replicas(args):
    dev = device_of(args.device)
    dtype = np.dtype(args.dtype)
    with tempfile.TemporaryDirectory() as folder:
        one, _ = train_replicas([dev], folder, dtype)
        two, solver = train_replicas([dev, dev], folder, dtype)
    scale = max(float(np.abs(w).max()) for w in one)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(one, two))
    bound = 64 * np.finfo(dtype).eps * np.sqrt(8 * 16 * 16 * 6)  # sums of up to batch x pixels x channels
    ok = diff <= bound * scale
    print(f"replicas on {dev.name} ({dtype.name}, exchange {type(solver.exchange).__name__}): 1 vs 2 replicas "
          f"after 4 iterations: max weight difference {diff:.3g} = {diff / scale:.3g} x the largest weight "
          f"(bound {bound:.3g}): {'EQUIVALENT' if ok else 'DIFFERENT'}", flush=True)
    return 0 if ok else 1


# -- VGG timings -------------------------------------------------------------------------------------
def median_ms(fn, sync, warmup, reps):
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def peak_rss_bytes():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def case_vggtool(args):
    from vggtool.net import Net
    from vggtool.io.prototxt import parse_net_text

    dev = device_of(args.device)
    applied = []
    if dev.is_gpu and args.precision == "tf32":
        applied.append(f"CUPY_TF32={os.environ.get('CUPY_TF32')}")
        try:  # sgemm called directly (layers/gemm.py) follows the handle's math mode, not CUPY_TF32
            import cupy
            from cupy_backends.cuda.libs import cublas

            with dev:
                cublas.setMathMode(cupy.cuda.device.get_cublas_handle(), 3)  # CUBLAS_TF32_TENSOR_OP_MATH
            applied.append("cuBLAS handle TF32 math mode")
        except Exception as e:
            applied.append(f"cuBLAS math mode NOT set ({type(e).__name__}: {e})")
    text = bench_vgg().vgg_prototxt(args.net, args.batch, args.size, 1000)
    net = Net(parse_net_text(text, "<vgg>"), phase="TRAIN", device=dev, seed=0)
    rng = np.random.default_rng(0)
    net.blobs["data"].data = rng.standard_normal(net.blobs["data"].shape).astype(np.float32)
    net.blobs["label"].data = rng.integers(0, 1000, net.blobs["label"].shape).astype(np.float32)
    fwd = median_ms(lambda: net.forward_from_to(), dev.synchronize, args.warmup, args.reps)
    fwd_bwd = median_ms(lambda: net.forward_backward(), dev.synchronize, args.warmup, args.reps)
    if dev.is_gpu:
        import cupy

        peak = int(cupy.get_default_memory_pool().total_bytes())
    else:
        peak = peak_rss_bytes()
    return dict(fwd_ms=fwd, fwd_bwd_ms=fwd_bwd, peak_bytes=peak, notes=applied)


def case_torch(args):
    import torch
    import torch.nn as nn

    gpu = args.device == "gpu"
    where = torch.device("cuda:0" if gpu else "cpu")
    tf32 = args.precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = torch_vgg(nn, args.net, args.size, 1000).to(where)
    x = torch.randn(args.batch, 3, args.size, args.size, device=where)
    y = torch.randint(0, 1000, (args.batch,), device=where)
    lossf = nn.CrossEntropyLoss()
    sync = torch.cuda.synchronize if gpu else (lambda: None)

    def fwd():
        with torch.no_grad():
            model(x)

    def fwd_bwd():
        model.zero_grad(set_to_none=False)
        lossf(model(x), y).backward()

    if gpu:
        torch.cuda.reset_peak_memory_stats()
    model.eval()
    t_f = median_ms(fwd, sync, args.warmup, args.reps)
    model.train()
    t_fb = median_ms(fwd_bwd, sync, args.warmup, args.reps)
    peak = int(torch.cuda.max_memory_allocated()) if gpu else peak_rss_bytes()
    notes = [f"torch {torch.__version__}", f"cudnn {torch.backends.cudnn.version()}" if gpu else "cpu"]
    return dict(fwd_ms=t_f, fwd_bwd_ms=t_fb, peak_bytes=peak, notes=notes)


def cmd_case(args):
    out = (case_vggtool if args.engine == "vggtool" else case_torch)(args)
    print("CASE " + json.dumps(out), flush=True)
    return 0


def run_case(args, engine, batch, precision, algorithm=None):
    env = dict(os.environ, CUPY_TF32="1" if precision == "tf32" else "0")
    if algorithm:
        env["VGGTOOL_CONV_ALGO"] = algorithm
    cmd = [sys.executable, os.path.abspath(__file__), "case", "--engine", engine, "--device", args.device,
           "--batch", str(batch), "--size", str(args.size), "--net", args.net, "--precision", precision,
           "--reps", str(args.reps), "--warmup", str(args.warmup)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.case_timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("CASE ")]
    if proc.returncode or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return dict(error=f"exit {proc.returncode}: " + " | ".join(tail), wall_s=time.perf_counter() - t0)
    result = json.loads(lines[-1][5:])
    result["wall_s"] = time.perf_counter() - t0
    return result


def cmd_vgg(args):
    if args.dry_run:
        args.device, args.net, args.size, args.batches, args.reps, args.warmup = "cpu", "A", 32, "2", 1, 0
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    for precision in ("fp32", "tf32"):
        for batch in batches:
            for engine in ("vggtool", "torch"):
                r = run_case(args, engine, batch, precision)
                r.update(engine=engine, batch=batch, precision=precision)
                rows.append(r)
                print(format_row(r), flush=True)
    for algorithm in [a for a in args.extra_algorithms.split(",") if a]:  # fp32, the first batch size
        r = run_case(args, "vggtool", batches[0], "fp32", algorithm)
        r.update(engine=f"vggtool:{algorithm}", batch=batches[0], precision="fp32")
        rows.append(r)
        print(format_row(r), flush=True)
    print_ratios(rows)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "vgg_gpu.json"), "w") as f:
            json.dump(dict(device=args.device, net=args.net, size=args.size, dry_run=args.dry_run, rows=rows), f,
                      indent=1)
    return 0 if all("error" not in r for r in rows) else 1


def format_row(r):
    head = f"{r['engine']:>8} {r['precision']} batch {r['batch']:>3}:"
    if "error" in r:
        return f"{head} FAILED {r['error']}"
    return (f"{head} forward {r['fwd_ms']:9.1f} ms  forward+backward {r['fwd_bwd_ms']:9.1f} ms  "
            f"peak {r['peak_bytes'] / 2**30:6.2f} GiB  ({'; '.join(r['notes'])}; {r['wall_s']:.0f} s)")


def print_ratios(rows):
    """Training throughput of vggtool relative to PyTorch's (images/s ratio = torch ms / vggtool ms)."""
    by = {(r["engine"], r["precision"], r["batch"]): r for r in rows if "error" not in r}
    for (engine, precision, batch), v in sorted(by.items()):
        t = by.get(("torch", precision, batch))
        if engine.startswith("vggtool") and t:
            print(f"ratio {precision} batch {batch}: {engine} training throughput = "
                  f"{t['fwd_bwd_ms'] / v['fwd_bwd_ms']:.3f} x PyTorch's, forward {t['fwd_ms'] / v['fwd_ms']:.3f} x, "
                  f"peak memory {v['peak_bytes'] / max(t['peak_bytes'], 1):.2f} x", flush=True)


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("replicas")
    rep.add_argument("--device", choices=("gpu", "cpu"), default="gpu")
    rep.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    for name in ("vgg", "case"):
        p = sub.add_parser(name)
        p.add_argument("--device", choices=("gpu", "cpu"), default="gpu")
        p.add_argument("--net", default="D", choices=("A", "D", "E"))
        p.add_argument("--size", type=int, default=224)
        p.add_argument("--reps", type=int, default=5)
        p.add_argument("--warmup", type=int, default=2)
    vgg = sub.choices["vgg"]
    vgg.add_argument("--batches", default="32,64")
    vgg.add_argument("--out", default=None)
    vgg.add_argument("--dry-run", action="store_true")
    vgg.add_argument("--case-timeout", type=float, default=240)
    vgg.add_argument("--extra-algorithms", default="",
                     help="comma list: also time vggtool with VGGTOOL_CONV_ALGO set to each (fp32, first batch)")
    case = sub.choices["case"]
    case.add_argument("--engine", choices=("vggtool", "torch"), required=True)
    case.add_argument("--batch", type=int, required=True)
    case.add_argument("--precision", choices=("fp32", "tf32"), default="fp32")
    proto = sub.add_parser("prototxt")
    proto.add_argument("path")
    proto.add_argument("--net", default="D", choices=("A", "D", "E"))
    proto.add_argument("--batch", type=int, default=32)
    proto.add_argument("--size", type=int, default=224)
    return ap.parse_args(argv)


def cmd_prototxt(args):
    """The VGG net timed here, as a file (for `vggtool time`)."""
    text = bench_vgg().vgg_prototxt(args.net, args.batch, args.size, 1000)
    # `vggtool time` fills Input blobs with normal noise: the labels come from a DummyData layer instead
    first, rest = text.split("\n", 2)[1], text.split("\n", 2)[2]
    assert first.startswith('layer { name: "data" type: "Input"'), first
    data = (f'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: {args.batch} dim: 3 '
            f'dim: {args.size} dim: {args.size} }} }} }}\n'
            f'layer {{ name: "label" type: "DummyData" top: "label" dummy_data_param {{ shape {{ dim: {args.batch} }} '
            f'data_filler {{ type: "constant" value: 7 }} }} }}\n')
    with open(args.path, "w") as f:
        f.write(text.split("\n", 1)[0] + "\n" + data + rest)
    return 0


def main(argv=None):
    args = parse(argv)
    return {"replicas": cmd_replicas, "vgg": cmd_vgg, "case": cmd_case, "prototxt": cmd_prototxt}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
