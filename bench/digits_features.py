"""Appendix B in miniature on real images available offline: features of a net trained on one task,
fixed (no fine-tuning), describe the images of ANOTHER task for linear SVMs.

    PYTHONPATH=. python bench/digits_features.py [--out bench_out/digits] [--iterations 300]
    PYTHONPATH=. python bench/digits_features.py --net N --weights W --mean-value 50 --scale 0.0125 \
        --train-scale 24,32 --data LIST --root DIR        # a net of your own on data of your own

Default run (scikit-learn's handwritten digits, 1,797 real 8x8 scans, exported by `data_prep digits` as
32x32 PNGs with the digit 24x24 in the centre):
1. source task ("ILSVRC"): VGG-mini (netdefs/demo, the demo's recipe: scale jittering S in [24, 32],
   24x24 crops, flips, mean 50, scale 0.0125, SGD with the plateau policy) trained on the digits 0-4
   only, twice, with two seeds: two nets for the late-fusion row (the paper fuses Net-D and Net-E).
2. target task ("Caltech-101"): the digits 5-9, which neither net has seen. fc7 descriptors from
   `vggtool extract` (dense application, global average pooling, flips averaged, L2), with the mean,
   scale and test scales that follow the nets' training scale: Q = 28 ((Smin + Smax) / 2) single-scale,
   Q = 24,28,32 ({Smin, mid, Smax}) multi-scale, as in the paper's testing rule.
3. `vggtool svm --protocol caltech`: 30 training and 50 test images per class, 3 seeded random splits,
   C chosen on 20% of each training split; mean class recall.
Rows: raw pixels (baseline); centre crop (Q = 28, the central 24x24 crop) vs dense at Q = 28; single vs
multi-scale; stacking vs averaging the scales; one net vs the two nets' descriptors stacked. The
paper's figures (Table 11, Caltech-101, mean class recall) are printed beside for reference; they come
from ILSVRC-trained 16/19-layer nets on 102 classes, so only the direction of each comparison is
comparable, not the level.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import time

import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from vggtool.vgg import svm  # noqa: E402
from vggtool.data.transform import isotropic_resize  # noqa: E402
from vggtool.vgg.extract import Features, l2_normalise, load_features  # noqa: E402

SOURCE, TARGET = range(0, 5), range(5, 10)
PAPER = {  # Table 11, Caltech-101 mean class recall (%), and the paper's finding for each comparison
    "dense": "dense over the image (Appendix B's descriptor)",
    "multi": "multi-scale beats single-scale (Sect. 4.2)",
    "stack": "Caltech: stacking beats averaging",
    "one": "Net-D 91.8 +- 1.0",
    "fusion": "Net-D & Net-E 92.7 +- 0.5",
}


def sh(cmd, cwd=ROOT, log=None):
    """Run a vggtool/data_prep command (python -m), echo it, fail loudly; returns (stdout, seconds)."""
    print("$ " + " ".join(cmd) + (f"   (in {cwd})" if cwd != ROOT else ""), flush=True)
    t = time.time()
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-m"] + cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if log:
        with open(log, "w") as f:
            f.write(p.stdout + p.stderr)
    if p.returncode:
        sys.exit(f"failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p.stdout, time.time() - t


def test_scales(train_scale, input_size):
    """The paper's test scales for a training scale: jittered [Smin, Smax] -> single (Smin + Smax) / 2,
    multi {Smin, mid, Smax}; fixed S -> single S, multi {S - d, S, S + d} with d = S / 8 (the paper's
    32 at S = 256), kept >= the net's input size."""
    s = [int(v) for v in train_scale.split(",")]
    if len(s) == 2:
        mid = (s[0] + s[1]) // 2
        multi = [s[0], mid, s[1]]
    else:
        mid, d = s[0], max(1, round(s[0] / 8))
        multi = [s[0] - d, s[0], s[0] + d]
    multi = sorted({max(q, input_size) for q in multi})
    return mid, multi


def lines_of(path, classes, relabel):
    out = []
    with open(path) as f:
        for line in f:
            name, label = line.split()
            if int(label) in classes:
                out.append(f"{name} {int(label) - relabel}\n")
    return out


def prepare(out):
    """Digits PNGs; source lists (0-4, train/val) and the target list (5-9 relabelled 0-4, all images)."""
    if not os.path.exists(os.path.join(out, "digits", "val.txt")):
        sh(["data_prep", "digits", os.path.join(out, "digits")])
    d = os.path.join(out, "digits")
    for split in ("train", "val"):
        with open(os.path.join(d, f"source_{split}.txt"), "w") as f:
            f.writelines(lines_of(os.path.join(d, f"{split}.txt"), SOURCE, 0))
    with open(os.path.join(d, "target.txt"), "w") as f:
        f.writelines(sorted(lines_of(os.path.join(d, "train.txt"), TARGET, 5)
                            + lines_of(os.path.join(d, "val.txt"), TARGET, 5)))
    return d


def train_source_nets(out, digits, iterations, seeds):
    """Two VGG-mini nets on the source digits with the demo's recipe; returns [(deploy, weights)]."""
    for split in ("train", "val"):
        db = os.path.join(out, f"digits_{split}_lmdb")
        if not os.path.exists(db):
            sh(["data_prep", "convert_imageset", "--gray", digits, os.path.join(digits, f"source_{split}.txt"), db])
    shutil.copyfile(os.path.join(ROOT, "netdefs", "demo", "train_val.prototxt"), os.path.join(out, "train_val.prototxt"))
    with open(os.path.join(ROOT, "solver", "demo_solver.prototxt")) as f:
        solver = f.read()
    n_val = len(open(os.path.join(digits, "source_val.txt")).readlines())
    nets = []
    for seed in seeds:
        text = re.sub(r"max_iter: \d+", f"max_iter: {iterations}", solver)
        text = re.sub(r"random_seed: \d+", f"random_seed: {seed}", text)
        text = re.sub(r"snapshot: \d+", f"snapshot: {iterations}", text)
        text = re.sub(r"test_iter: \d+", f"test_iter: {max(1, n_val // 60)}", text)
        # The demo's plateau schedule, compressed to the shorter run: test every 50, patience 2.
        text = re.sub(r"test_interval: \d+", "test_interval: 50", text)
        text = re.sub(r"plateau_patience: \d+", "plateau_patience: 2", text)
        text = text.replace('snapshot_prefix: "snapshots/vgg_mini"', f'snapshot_prefix: "source_seed{seed}"')
        with open(os.path.join(out, f"solver_seed{seed}.prototxt"), "w") as f:
            f.write(text)
        weights = os.path.join(out, f"source_seed{seed}_iter_{iterations}.caffemodel")
        if not os.path.exists(weights):
            _, secs = sh(["vggtool", "train", "--solver", f"solver_seed{seed}.prototxt", "--log",
                          f"train_seed{seed}.log"], cwd=out)
            print(f"  trained in {secs:.0f} s", flush=True)
        with open(os.path.join(out, f"train_seed{seed}.log")) as f:
            acc = re.findall(r"Test net output #\d+: accuracy = ([\d.]+)", f.read())
        print(f"  source net seed {seed}: last validation accuracy on the digits 0-4 = {acc[-1] if acc else '?'}")
        nets.append((os.path.join(ROOT, "netdefs", "demo", "deploy.prototxt"), weights))
    return nets


def write_centre_crops(list_path, root, out, q, crop):
    """The central crop x crop of each image rescaled to Q = q (vggtool.data.transform.isotropic_resize), as PNGs."""
    os.makedirs(os.path.join(out, "crops"), exist_ok=True)
    lines = []
    with open(list_path) as f:
        for line in f:
            name, label = line.rsplit(None, 1)
            image = cv2.imread(os.path.join(root, name), cv2.IMREAD_GRAYSCALE)
            scaled = isotropic_resize(image[:, :, None], q)[:, :, 0]
            y, x = (scaled.shape[0] - crop) // 2, (scaled.shape[1] - crop) // 2
            crop_name = "crops/" + name.replace("/", "_")
            cv2.imwrite(os.path.join(out, crop_name), scaled[y:y + crop, x:x + crop])
            lines.append(f"{crop_name} {label}\n")
    with open(os.path.join(out, "crops.txt"), "w") as f:
        f.writelines(lines)
    return os.path.join(out, "crops.txt")


def caltech(paths, splits):
    r = svm.caltech_protocol(load_features(paths), 30, 50, splits)
    return 100 * r["mean"], 100 * r["std"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench_out/digits", help="work folder")
    ap.add_argument("--iterations", type=int, default=300, help="training iterations of each source net "
                    "(default 300, about 40 epochs of the 0-4 training images)")
    ap.add_argument("--net", default=None, help="a trained deploy prototxt instead of the two source nets")
    ap.add_argument("--weights", default=None, help="its .caffemodel")
    ap.add_argument("--data", default=None, help="with --net: the target image list `path label`")
    ap.add_argument("--root", default="", help="with --data: the folder its paths are relative to")
    ap.add_argument("--mean-value", default="50", help="the net's training mean (default 50, the demo's)")
    ap.add_argument("--scale", default="0.0125", help="the net's training scale factor (default 0.0125)")
    ap.add_argument("--train-scale", default="24,32", help="the net's training smallest side S, or Smin,Smax "
                    "for jittering: the test scales follow it (default 24,32, the demo's)")
    ap.add_argument("--input", type=int, default=24, help="the net's input (crop) size (default 24)")
    ap.add_argument("--splits", type=int, default=3, help="Caltech-protocol random splits (default 3)")
    args = ap.parse_args(argv)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    start = time.time()
    if args.net:
        if not (args.weights and args.data):
            sys.exit("--net needs --weights and --data")
        nets, data, root = [(args.net, args.weights)], args.data, args.root
    else:
        digits = prepare(out)
        nets = train_source_nets(out, digits, args.iterations, seeds=(1, 2))
        data, root = os.path.join(digits, "target.txt"), digits
    single, multi = test_scales(args.train_scale, args.input)
    multi_text = ",".join(map(str, multi))
    transform = ["--mean-value", args.mean_value, "--scale", args.scale]

    def extract(k, name, scales, aggregate="stack", data_=None, root_=None):
        path = os.path.join(out, f"fc7_net{k}_{name}.npz")
        net, weights = nets[k]
        sh(["vggtool", "extract", "--net", net, "--weights", weights, "--layer", "fc7", "--data", data_ or data,
            "--root", root_ if root_ is not None else root, "--scales", scales, "--flip", "--aggregate", aggregate,
            "--out", path] + transform)
        return path

    rows = []
    with open(data) as f:
        entries = [line.rsplit(None, 1) for line in f if line.strip()]
    pixels = np.stack([cv2.resize(cv2.imread(os.path.join(root, n), cv2.IMREAD_GRAYSCALE), (8, 8),
                                  interpolation=cv2.INTER_AREA).reshape(-1) for n, _ in entries])
    labels = np.array([int(v) for _, v in entries])
    r = svm.caltech_protocol(Features(l2_normalise(pixels), labels, np.arange(len(labels))), 30, 50, args.splits)
    rows.append(("raw pixels (8x8, L2), baseline", 100 * r["mean"], 100 * r["std"], ""))
    crops = write_centre_crops(data, root, out, single, args.input)
    f = extract(0, "centre", str(args.input), data_=crops, root_=out)
    rows.append((f"net 1, centre crop {args.input} of Q={single}", *caltech(f, args.splits), ""))
    f = extract(0, "single", str(single))
    rows.append((f"net 1, dense, Q={single}", *caltech(f, args.splits), PAPER["dense"]))
    f_stack = extract(0, "stack", multi_text, "stack")
    rows.append((f"net 1, dense, Q={multi_text}, stacked", *caltech(f_stack, args.splits),
                 PAPER["multi"] + "; " + PAPER["one"]))
    f = extract(0, "average", multi_text, "average")
    rows.append((f"net 1, dense, Q={multi_text}, averaged", *caltech(f, args.splits), PAPER["stack"]))
    if len(nets) > 1:
        f2 = extract(1, "stack", multi_text, "stack")
        rows.append((f"net 2, dense, Q={multi_text}, stacked", *caltech(f2, args.splits), "Net-E 92.3 +- 0.5"))
        rows.append(("nets 1 + 2, descriptors stacked (late fusion)", *caltech(f"{f_stack},{f2}", args.splits),
                     PAPER["fusion"]))
    what = "digits 5-9 (unseen by the nets)" if not args.net else data
    print(f"\n{what}: {len(labels)} images; Caltech protocol, 30 train / 50 test per class, {args.splits} splits; "
          f"fc7, flips averaged; mean {args.mean_value}, scale {args.scale}; {time.time() - start:.0f} s in all\n")
    print(f"| {'descriptor':48s} | mean class recall (%) | paper (Caltech-101, Table 11 / Appendix B) |")
    print(f"|{'-' * 50}|{'-' * 23}|{'-' * 44}|")
    for name, m, s, paper in rows:
        print(f"| {name:48s} | {m:6.2f} +- {s:4.2f}        | {paper:42s} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
