#!/usr/bin/env python3
"""Peak resident memory of one VGG training step (forward + backward; with --update, also SGD's update with
momentum and weight decay), vggtool against PyTorch.

Each side runs in its own subprocess, so neither sees the other's allocations:
  * vggtool: netdefs/vgg_<cfg>/deploy.prototxt with the batch and size asked for, a label input and
    SoftmaxWithLoss instead of Softmax, built as a TRAIN net (dropout on, the convolutions' forward
    caches at their default budget) whose memory is shared as a Solver's train net's is (Net.share_memory,
    vggtool.net.pool; VGGTOOL_SHARE_MEMORY=off measures every buffer on its own), float32, `--steps`
    calls of net.forward_backward();
  * PyTorch: the same layers in torch.nn (in-place ReLU, dropout 0.5, CrossEntropyLoss), train mode,
    `--steps` rounds of zero_grad + loss.backward().
With --update, each side trains instead: vggtool a Solver (SGD, momentum 0.9, weight decay 5e-4, lr 0.01,
`--steps` iterations of solver.step: its train net pooled, the momentum history, and for rules without a
one-pass C update the update's chunked scratch), PyTorch torch.optim.SGD with the same settings (its momentum buffers) after each backward.
Each subprocess reads /proc/self/status: VmRSS right after its imports ("after imports") and VmHWM, the
peak resident set, after the steps ("peak"). "net" = peak - after imports: the bytes the model, its
inputs and the step cost beyond the libraries. The ratio vggtool / PyTorch is printed for both; the
issue's target (#16) reads the peak. For vggtool the memory report (vggtool.net.memory) is printed
beside the peak: its totals and largest rows show where the bytes go; what the peak holds beyond them
is temporaries, BLAS buffers and the allocator's slack. Each step is timed too; with --steps > 1 the
median seconds of steps 2.. of each side and their ratio are printed (the first step allocates).

The PyTorch half runs with --torch-python (default: this Python) and is skipped, saying so, when
`import torch` fails there.

Usage:  python bench/bench_memory.py [--net D] [--batch 8] [--size 224] [--threads 2] [--steps 2]
        python bench/bench_memory.py --torch-python /path/to/venv-with-torch/bin/python
        python bench/bench_memory.py --quick      # VGG-11, batch 2, 64x64: seconds
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from vgg_configs import CFGS, NAMES, sgd_solver_text, torch_vgg  # bench/, the script's own folder

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MIB = 2**20


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", default="D", choices=sorted(CFGS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224, help="input height = width (a multiple of 32)")
    ap.add_argument("--threads", type=int, default=2, help="OpenBLAS / torch threads in each subprocess")
    ap.add_argument("--steps", type=int, default=2, help="forward+backward steps before the peak is read")
    ap.add_argument("--update", action="store_true",
                    help="whole training steps: SGD with momentum 0.9 and weight decay after each backward")
    ap.add_argument("--rows", type=int, default=8, help="largest rows of vggtool's memory report to print")
    ap.add_argument("--torch-python", default=sys.executable, help="the Python that runs the PyTorch half")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch half")
    ap.add_argument("--quick", action="store_true", help="VGG-11, batch 2, 64x64")
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("--part", choices=("vggtool", "torch"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.quick:
        a.net, a.batch, a.size = "A", 2, 64
    if a.size % 32:
        ap.error("--size must be a multiple of 32 (five 2x2 poolings)")
    return a


def proc_status(field):
    """A VmRSS / VmHWM figure of this process, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


# -- the two halves (each in its own subprocess) -----------------------------------------------------------
def vggtool_part(a):
    import numpy as np

    sys.path.insert(0, ROOT)
    from vggtool.io import prototxt
    from vggtool.net import Net
    from vggtool.net.memory import memory_report

    after_imports = proc_status("VmRSS")
    solver = None
    if a.update:
        from vggtool.proto import caffe_pb2
        from vggtool.solvers import Solver
        from vggtool.solvers.glog import GLog

        sp = prototxt.parse_text(sgd_solver_text(seed=0), caffe_pb2.SolverParameter())
        sp.net_param.CopyFrom(training_param(prototxt, a))
        solver = Solver(sp, log=GLog(stream=False))
        net = solver.net  # pooled, as every Solver's train net
    else:
        net = Net(training_param(prototxt, a), phase="TRAIN", seed=0)
        net.share_memory()  # as the Solver's train net does (settings.share_memory; VGGTOOL_SHARE_MEMORY=off: none)
    rng = np.random.default_rng(0)
    net.blobs["data"].data = rng.standard_normal(net.blobs["data"].shape, dtype=np.float32)
    net.blobs["label"].data = rng.integers(0, 1000, a.batch)
    built = proc_status("VmRSS")
    seconds = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        solver.step(1) if solver is not None else net.forward_backward()
        seconds.append(time.perf_counter() - t0)
    report = memory_report(net)
    largest = sorted(report.rows, key=lambda r: -(r.data_bytes + (r.diff_bytes or 0)))[:a.rows]
    return dict(after_imports=after_imports, built=built, peak=proc_status("VmHWM"), seconds=seconds,
                totals=report.totals(), caffe_data_bytes=report.caffe_data_bytes,
                pool=report.pool._asdict() if report.pool is not None else None,
                share_memory=net.settings.share_memory, release_data=net.settings.release_data,
                largest=[(r.kind, r.name, r.shape, r.data_bytes, r.diff_bytes or 0) for r in largest],
                numpy=np.__version__)


def training_param(prototxt, a):
    """The net's deploy definition made a training net: batch and size set, a label input, and
    SoftmaxWithLoss in place of the final Softmax; Gaussian weights as a trained-from-scratch net has."""
    param = prototxt.read_net_param(os.path.join(ROOT, "netdefs", f"vgg_{a.net.lower()}", "deploy.prototxt"))
    data = param.layer[0]
    assert data.type == "Input" and param.layer[-1].type == "Softmax", "unexpected deploy.prototxt"
    data.input_param.shape[0].dim[:] = [a.batch, 3, a.size, a.size]
    data.top.append("label")
    data.input_param.shape.add().dim.append(a.batch)
    loss = param.layer[-1]
    loss.type, loss.name, loss.top[:] = "SoftmaxWithLoss", "loss", ["loss"]
    loss.bottom.append("label")
    for layer in param.layer:
        p = {"Convolution": layer.convolution_param, "InnerProduct": layer.inner_product_param}.get(layer.type)
        if p is not None:
            p.weight_filler.type, p.weight_filler.std = "gaussian", 0.01
    return param


def torch_part(a):
    try:
        import torch
        import torch.nn as nn
    except ImportError as e:
        return dict(skipped=f"import torch failed in {sys.executable}: {e}")
    after_imports = proc_status("VmRSS")
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = torch_vgg(nn, a.net, a.size, 1000)
    model.train()
    x = torch.randn(a.batch, 3, a.size, a.size)
    y = torch.randint(0, 1000, (a.batch,))
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4) if a.update else None
    built = proc_status("VmRSS")
    seconds = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        model.zero_grad(set_to_none=False)
        loss_fn(model(x), y).backward()
        if opt is not None:
            opt.step()
        seconds.append(time.perf_counter() - t0)
    return dict(after_imports=after_imports, built=built, peak=proc_status("VmHWM"), version=torch.__version__,
                seconds=seconds)


# -- the driver ----------------------------------------------------------------------------------------------
def run_part(a, part, python):
    cmd = [python, os.path.abspath(__file__), "--part", part, "--net", a.net, "--batch", str(a.batch),
           "--size", str(a.size), "--threads", str(a.threads), "--steps", str(a.steps), "--rows", str(a.rows)]
    if a.update:
        cmd.append("--update")
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads),
               MKL_NUM_THREADS=str(a.threads))
    env.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # as the CLI sets it (vggtool.config)
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode:
        return dict(skipped=f"the {part} subprocess failed (exit {res.returncode}): {res.stderr.strip()[-1500:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def mib(nbytes):
    return f"{nbytes / MIB:9,.0f} MiB"


def main():
    a = parse()
    if a.part:
        print(json.dumps(vggtool_part(a) if a.part == "vggtool" else torch_part(a)))
        return
    what = "training step (forward+backward+SGD update)" if a.update else "forward+backward"
    print(f"{NAMES[a.net]} (config {a.net}) TRAIN {what}, batch {a.batch}, {a.size}x{a.size}, fp32, "
          f"{a.threads} threads, peak after {a.steps} step(s); each side in its own process", flush=True)
    res = dict(net=a.net, batch=a.batch, size=a.size, threads=a.threads, steps=a.steps, update=a.update)
    v = res["vggtool"] = run_part(a, "vggtool", sys.executable)
    if "skipped" in v:
        sys.exit(v["skipped"])
    print(f"vggtool (numpy {v['numpy']}):  after imports {mib(v['after_imports'])},  net built {mib(v['built'])},  "
          f"peak {mib(v['peak'])},  net (peak - after imports) {mib(v['peak'] - v['after_imports'])}")
    print("  vggtool's memory report after the steps (vggtool.net.memory; `vggtool time --memory` prints all rows):")
    for label, nbytes in v["totals"]:
        print(f"    {label:<13} {mib(nbytes)}")
    print(f"    Caffe's \"Memory required for data\": {mib(v['caffe_data_bytes'])};  peak not in the report: "
          f"{mib(v['peak'] - v['after_imports'] - dict(v['totals'])['all'])} (temporaries, BLAS, allocator)")
    pool = v.get("pool")
    if pool:
        print(f"    pool: arena {mib(pool['arena_bytes'])} holding {mib(pool['sum_bytes'])} of data, diffs, caches and "
              f"workspace live at different moments (largest live set {mib(pool['live_peak_bytes'])}); "
              f"share_memory={v['share_memory']}, release_data={v['release_data']}")
    else:
        print(f"    pool: none (share_memory={v['share_memory']}: every buffer its own)")
    print("  largest rows:")
    for kind, name, shape, data, diff in v["largest"]:
        print(f"    {kind:<9} {name:<22} {shape:<20} data {mib(data)}  diff {mib(diff)}")
    if a.no_torch:
        print("PyTorch: skipped (--no-torch)")
    else:
        t = res["torch"] = run_part(a, "torch", a.torch_python)
        if "skipped" in t:
            print(f"PyTorch: skipped ({t['skipped']})")
        else:
            print(f"PyTorch {t['version']}:  after imports {mib(t['after_imports'])},  model built {mib(t['built'])},  "
                  f"peak {mib(t['peak'])},  net (peak - after imports) {mib(t['peak'] - t['after_imports'])}")
            res["ratio_peak"] = v["peak"] / t["peak"]
            res["ratio_net"] = (v["peak"] - v["after_imports"]) / (t["peak"] - t["after_imports"])
            print(f"ratio vggtool / PyTorch:  peak {res['ratio_peak']:.2f}   net {res['ratio_net']:.2f}   "
                  f"(target: peak <= 1.0)")
            if a.steps > 1:  # the first step pays the allocations and the pool's planning: not timed
                vs, ts = statistics.median(v["seconds"][1:]), statistics.median(t["seconds"][1:])
                res["ratio_step_time"] = vs / ts
                print(f"seconds per {what} (median of steps 2..{a.steps}): vggtool {vs:.2f}, PyTorch {ts:.2f}, "
                      f"ratio {vs / ts:.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
