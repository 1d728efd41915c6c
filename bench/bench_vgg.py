#!/usr/bin/env python3
"""VGG forward / forward+backward speed of vggtool, against PyTorch measured in the same run.

Builds VGG configuration A, D or E (3x3/pad-1 conv + in-place ReLU, 2x2/2 max pooling, fc6-fc8 with
dropout, SoftmaxWithLoss) as prototxt text, runs it with vggtool on the CPU in float32 and times
  * forward (net.forward_from_to), TRAIN phase net, median of --reps runs
  * forward + backward (net.forward_backward, no solver update)
  * inference: the forward of the same net built in the TEST phase (nothing kept for a backward)
then prints per-layer forward/backward ms (and the convolution layer's internal sections), and, when
`import torch` works, times the same network in PyTorch (forward: eval + no_grad; forward+backward:
train mode, loss.backward(), no optimizer step) in a subprocess with the same thread count, so the
two thread pools never spin against each other, in each of --torch-modes: fp32 (NCHW), fp32
channels_last, and bf16 autocast + channels_last (PyTorch's fastest CPU mode where the CPU has bf16
instructions; vggtool stays in fp32). Ratio = vggtool time / PyTorch time (<= 1 is the goal); the
inference ratio is vggtool's TEST forward against the fastest mode's forward.

Before each case the script waits for a quiet machine (bench/cpu_guard.py, or /work/shared/bench) and
reports the CPU load of other processes seen during the case.

Usage:  python bench/bench_vgg.py [--net D] [--batch 8] [--size 224] [--reps 3] [--threads 2]
        python bench/bench_vgg.py --quick          # seconds: VGG-11, batch 2, 64x64
        python bench/bench_vgg.py --mini --net D   # `vggtool reproduce`'s mini-D: widths / 8, FC 512, one grey
                                                   # 32x32 channel, 10 classes, no dropout, batch 32, 1 thread
        VGGTOOL_CONV_ALGO=im2col python bench/bench_vgg.py   # force one convolution algorithm
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from vgg_configs import CFGS, NAMES, torch_vgg, vgg_layers  # noqa: E402 - bench/ is the script's folder


TORCH_MODES = ("fp32", "channels_last", "bf16_channels_last")


def parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", default="D", choices=sorted(CFGS))
    ap.add_argument("--batch", type=int, help="default 8 (--mini: 32)")
    ap.add_argument("--size", type=int, default=224, help="input height = width")
    ap.add_argument("--reps", type=int, default=3, help="timed runs per case (median reported)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, help="OpenBLAS / torch threads (default 2; --mini: 1)")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    ap.add_argument("--torch-modes", default="fp32,channels_last,bf16_channels_last",
                    help="PyTorch modes to time, comma-separated, from " + ", ".join(TORCH_MODES))
    ap.add_argument("--no-layers", action="store_true", help="skip the per-layer profile")
    ap.add_argument("--guard", type=float, default=0.15,
                    help="foreign CPU load (cores) tolerated during a case; a disturbed case is retried")
    ap.add_argument("--guard-wait", type=float, default=120.0, help="max seconds to wait for a quiet machine")
    ap.add_argument("--quick", action="store_true", help="VGG-11, batch 2, 64x64, 1 rep: runs in seconds")
    ap.add_argument("--mini", action="store_true",
                    help="the laptop-scale nets of `vggtool reproduce` (widths / 8, FC 512, 1 channel, 32x32, 10 "
                         "classes, no dropout; batch 32 and 1 thread unless given)")
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("--torch-only", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.quick:
        a.net, a.batch, a.size, a.reps, a.warmup = "A", 2, 64, 1, 1
        a.guard_wait = min(a.guard_wait, 5.0)
    a.width_div, a.fc, a.channels, a.dropout = 1, 4096, 3, True
    if a.mini:
        a.width_div, a.fc, a.channels, a.dropout, a.size, a.classes = 8, 512, 1, False, 32, 10
    a.batch = a.batch or (32 if a.mini else 8)
    a.threads = a.threads or (1 if a.mini else 2)
    if a.size % 32:
        ap.error("--size must be a multiple of 32 (five 2x2 poolings)")
    a.torch_modes = [m.strip() for m in a.torch_modes.split(",") if m.strip()]
    bad = [m for m in a.torch_modes if m not in TORCH_MODES]
    if bad or not a.torch_modes:
        ap.error(f"--torch-modes: unknown mode(s) {bad}; choose from {', '.join(TORCH_MODES)}")
    return a


A = parse()
os.environ["OPENBLAS_NUM_THREADS"] = str(A.threads)  # before numpy is imported
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # as the CLI does (vggtool.config.apply_process_defaults)
os.environ["OMP_NUM_THREADS"] = str(A.threads)
os.environ["MKL_NUM_THREADS"] = str(A.threads)

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
for cand in (HERE, "/work/shared/bench"):
    if os.path.exists(os.path.join(cand, "cpu_guard.py")):
        sys.path.insert(0, cand)
        break
try:
    from cpu_guard import Guard, wait_quiet  # noqa: E402
except ImportError:  # pragma: no cover - the guard is optional
    Guard = wait_quiet = None


def vgg_prototxt(cfg, batch, size, classes, width_div=1, fc=4096, channels=3, dropout=True):
    """VGG as Caffe prototxt text on an Input layer, with the paper's layer names (conv1_1, ..., fc8)."""
    out = [f'name: "VGG_{cfg}"',
           'layer { name: "data" type: "Input" top: "data" top: "label" input_param { '
           f'shape {{ dim: {batch} dim: {channels} dim: {size} dim: {size} }} shape {{ dim: {batch} }} }} }}']
    return "\n".join(out + vgg_layers(cfg, classes, width_div, fc, dropout)) + "\n"


def macs(cfg, size):
    c, h, total = A.channels, size, 0
    for v in CFGS[cfg]:
        if v == "M":
            h //= 2
        else:
            total += h * h * c * (v // A.width_div) * 9
            c = v // A.width_div
    return total + c * h * h * A.fc + A.fc * A.fc + A.fc * A.classes


LAST_LOAD = {}


def time_runs(fn, warmup, reps):
    """Median-ready list of `reps` timings after `warmup` runs, on a quiet machine when possible."""
    for attempt in range(1, 4):
        if wait_quiet is not None:
            wait_quiet(A.guard, max_wait=A.guard_wait)
            g = Guard()
        for _ in range(warmup):
            fn()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        load = g.stop()["foreign_cores"] if wait_quiet is not None else float("nan")
        LAST_LOAD["foreign"] = load
        if not load >= A.guard:
            break
        print(f"  [cpu_guard] disturbed (foreign load {load:.2f} cores), attempt {attempt}/3", flush=True)
    return ts


# -- PyTorch (run in a subprocess) -------------------------------------------------------------------------
def torch_part():
    """Times every --torch-modes mode; prints one JSON line {version, threads, modes: {mode: {...}}}."""
    import contextlib

    import torch
    import torch.nn as nn

    torch.set_num_threads(A.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    model = torch_vgg(nn, A.net, A.size, A.classes, A.width_div, A.fc, A.channels, A.dropout)
    x = torch.randn(A.batch, A.channels, A.size, A.size)
    y = torch.randint(0, A.classes, (A.batch,))
    lossf = nn.CrossEntropyLoss()
    modes = {}
    for mode in A.torch_modes:
        layout = torch.channels_last if "channels_last" in mode else torch.contiguous_format
        model = model.to(memory_format=layout)
        xm = x.contiguous(memory_format=layout)

        def autocast():
            if mode.startswith("bf16"):
                return torch.autocast("cpu", dtype=torch.bfloat16)
            return contextlib.nullcontext()

        def fwd():
            with torch.no_grad(), autocast():
                model(xm)

        def fwd_bwd():
            model.zero_grad(set_to_none=False)
            with autocast():
                loss = lossf(model(xm), y)
            loss.backward()

        model.eval()
        t_f = time_runs(fwd, A.warmup, A.reps)
        load_f = LAST_LOAD["foreign"]
        model.train()
        t_fb = time_runs(fwd_bwd, A.warmup, A.reps)
        modes[mode] = dict(fwd=t_f, fwd_bwd=t_fb, load_fwd=load_f, load_fwd_bwd=LAST_LOAD["foreign"])
    print(json.dumps(dict(version=torch.__version__, threads=torch.get_num_threads(), modes=modes)))


def run_torch():
    cmd = [sys.executable, os.path.abspath(__file__), "--torch-only", "--net", A.net, "--batch", str(A.batch),
           "--size", str(A.size), "--reps", str(A.reps), "--warmup", str(A.warmup), "--threads", str(A.threads),
           "--classes", str(A.classes), "--guard", str(A.guard), "--guard-wait", str(A.guard_wait),
           "--torch-modes", ",".join(A.torch_modes)]
    if A.mini:
        cmd.append("--mini")
    try:
        import torch  # noqa: F401
    except ImportError:
        print("PyTorch: not importable in this Python; no comparison (install torch in a separate venv)")
        return None
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        print("PyTorch run failed:\n" + res.stderr[-2000:])
        return None
    for line in res.stdout.splitlines():
        if not line.startswith("{"):
            print(line)
    return json.loads(res.stdout.strip().splitlines()[-1])


# -- vggtool -----------------------------------------------------------------------------------------------
def build_net(phase="TRAIN"):
    from vggtool.net import Net
    from vggtool.io.prototxt import parse_net_text

    text = vgg_prototxt(A.net, A.batch, A.size, A.classes, A.width_div, A.fc, A.channels, A.dropout)
    net = Net(parse_net_text(text, f"<VGG {A.net}>"), phase=phase, dtype=np.float32, seed=0)
    if phase == "TRAIN":
        net.share_memory()  # as a Solver's train net (vggtool.net.pool; VGGTOOL_SHARE_MEMORY=off: no pool)
    rng = np.random.default_rng(0)
    net.blobs["data"].data[...] = rng.standard_normal(net.blobs["data"].shape, dtype=np.float32)
    if "label" in net.blobs:
        net.blobs["label"].data[...] = rng.integers(0, A.classes, A.batch)
    return net


def layer_profile(net, reps):
    """Per-layer forward and backward ms (median over reps) and conv section totals (ms per pass)."""
    from vggtool.layers.conv.profile import profiling

    n = len(net.layers)
    fw = [[] for _ in range(n)]
    bw = [[] for _ in range(n)]
    sections = {}
    for _ in range(reps):
        with profiling(net) as prof:
            run_layers_once(net, fw, bw)
        for k, v in prof.seconds.items():
            sections.setdefault(k, []).append(v)
    rows = [dict(name=net.layer_names[i], type=net.layers[i].type, fwd_ms=1e3 * statistics.median(fw[i]),
                 bwd_ms=1e3 * statistics.median(bw[i])) for i in range(n)]
    return rows, {k: 1e3 * statistics.median(v) for k, v in sections.items()}


def run_layers_once(net, fw, bw):
    """One forward and backward pass, layer by layer, appending each layer's seconds to fw[i] / bw[i]."""
    n = len(net.layers)
    for i in range(n):
        t0 = time.perf_counter()
        net.layer_forward(i)
        fw[i].append(time.perf_counter() - t0)
    for i in range(n - 1, -1, -1):
        t0 = time.perf_counter()
        if net.layer_need_backward[i]:
            net.layer_backward(i)
        bw[i].append(time.perf_counter() - t0)


def main():
    if A.torch_only:
        torch_part()
        return
    sys.path.insert(0, os.path.dirname(HERE))
    from vggtool import config

    flop = 2 * A.batch * macs(A.net, A.size)
    print(f"{NAMES[A.net]} (config {A.net}) batch {A.batch}, {A.size}x{A.size}, fp32, {A.threads} threads; "
          f"forward {flop / 1e9:.1f} GFLOP; numpy {np.__version__}; conv algorithm: {config.defaults().conv_algorithm}; "
          f"share_memory {config.defaults().share_memory}, release_data {config.defaults().release_data}, "
          f"conv_cache_mb {config.defaults().conv_cache_mb}",
          flush=True)
    net = build_net()
    t_f = time_runs(net.forward_from_to, A.warmup, A.reps)
    load_f = LAST_LOAD["foreign"]
    t_fb = time_runs(net.forward_backward, A.warmup, A.reps)
    load_fb = LAST_LOAD["foreign"]
    res = dict(net=A.net, batch=A.batch, size=A.size, threads=A.threads, conv_algorithm=config.defaults().conv_algorithm,
               vggtool=dict(fwd=t_f, fwd_bwd=t_fb, load_fwd=load_f, load_fwd_bwd=load_fb))
    med = statistics.median
    print(f"vggtool  forward           median {med(t_f) * 1e3:8.1f} ms  (min {min(t_f) * 1e3:.1f}, "
          f"max {max(t_f) * 1e3:.1f}, n={len(t_f)})  {flop / med(t_f) / 1e9:6.1f} GFLOP/s  [foreign {load_f:.2f}]")
    print(f"vggtool  forward+backward  median {med(t_fb) * 1e3:8.1f} ms  (min {min(t_fb) * 1e3:.1f}, "
          f"max {max(t_fb) * 1e3:.1f}, n={len(t_fb)})  {3 * flop / med(t_fb) / 1e9:6.1f} GFLOP/s  "
          f"[foreign {load_fb:.2f}]", flush=True)
    if not A.no_layers:
        rows, sections = layer_profile(net, max(1, min(A.reps, 3)))
        res["layers"], res["conv_sections"] = rows, sections
        print("\nper layer (median ms)            forward   backward")
        for r in rows:
            print(f"  {r['name']:<14s} {r['type']:<16s} {r['fwd_ms']:9.1f} {r['bwd_ms']:9.1f}")
        by_type = {}
        for r in rows:
            s = by_type.setdefault(r["type"], [0.0, 0.0])
            s[0] += r["fwd_ms"]
            s[1] += r["bwd_ms"]
        print("per layer type (ms):  " + ", ".join(f"{k} {f:.0f}/{b:.0f}" for k, (f, b) in by_type.items()))
        if sections:
            print("convolution sections, all conv layers (ms per pass): "
                  + ", ".join(f"{k} {v:.0f}" for k, v in sorted(sections.items(), key=lambda kv: -kv[1])))
    del net
    net = build_net("TEST")
    t_inf = time_runs(net.forward_from_to, A.warmup, A.reps)
    res["vggtool"].update(inference=t_inf, load_inference=LAST_LOAD["foreign"])
    print(f"vggtool  inference (TEST)  median {med(t_inf) * 1e3:8.1f} ms  (min {min(t_inf) * 1e3:.1f}, "
          f"max {max(t_inf) * 1e3:.1f}, n={len(t_inf)})  {flop / med(t_inf) / 1e9:6.1f} GFLOP/s  "
          f"[foreign {LAST_LOAD['foreign']:.2f}]", flush=True)
    del net
    if not A.no_torch:
        t = run_torch()
        if t:
            res["torch"] = t
            print(f"\nPyTorch {t['version']} ({t['threads']} threads)      forward (eval, no_grad)   forward+backward")
            for mode, r in t["modes"].items():
                tf, tfb = med(r["fwd"]), med(r["fwd_bwd"])
                r["ratio_fwd"], r["ratio_fwd_bwd"] = med(t_f) / tf, med(t_fb) / tfb
                r["ratio_inference"] = med(t_inf) / tf
                print(f"  {mode:<20s} {tf * 1e3:9.1f} ms [foreign {r['load_fwd']:.2f}]  {tfb * 1e3:9.1f} ms "
                      f"[foreign {r['load_fwd_bwd']:.2f}]   ratio vggtool/PyTorch: forward {r['ratio_fwd']:.2f} "
                      f"(TEST {r['ratio_inference']:.2f}), forward+backward {r['ratio_fwd_bwd']:.2f}")
            if "fp32" in t["modes"]:  # the fp32 ratios under their old names
                res["ratio_fwd"], res["ratio_fwd_bwd"] = t["modes"]["fp32"]["ratio_fwd"], t["modes"]["fp32"]["ratio_fwd_bwd"]
            fastest = min(t["modes"], key=lambda k: med(t["modes"][k]["fwd"]))
            res["fastest_torch_forward"] = fastest
            res["ratio_inference_vs_fastest"] = t["modes"][fastest]["ratio_inference"]
            print(f"PyTorch's fastest forward here: {fastest}; vggtool fp32 TEST forward / it = "
                  f"{res['ratio_inference_vs_fastest']:.2f}" + ("" if A.mini or A.quick else " (#16's forward row: < 1 is the target)"))
    if A.json:
        with open(A.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
