"""Localisation demo on real pixels (paper Appendix A in miniature), a few minutes of CPU:

    PYTHONPATH=. python bench/localize_demo.py [--work demo_run/localize] [--skip-train]

1. scikit-learn's handwritten digits (real 8x8 scans) pasted at random sizes (16..40 px) and positions
   on 64x64 noisy canvases; the ground-truth box is the tight box of the digit's ink. Train canvases use
   the training digits, val canvases the held-out ones (data_prep.digits' stratified split).
2. Box lists -> LMDB with boxes (data_prep convert_imageset --gray).
3. vggtool train: a small VGG-style classifier (netdefs/demo_loc/cls_*), then the per-class box regression
   net initialised from it (netdefs/demo_loc/loc_*, BoxRegressionLoss), both on random 48x48 crops of
   the 64x64 canvases (the box target follows the crop and is not clipped to it).
4. vggtool test --out: the classifier's dense posteriors; vggtool localize: (a) centre crop with the
   ground-truth class, (b) dense application at Q=64 (3x3 windows of 48, stride 8) + greedy merging of the
   boxes of the top-5 (and top-1) classes. Prints the commands and the errors.
"""
import argparse
import os
import re
import subprocess
import sys
import time

import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def make_canvases(out, n_train, n_val, size=64, seed=0):
    from sklearn.datasets import load_digits

    from data_prep.digits import stratified_split

    digits = load_digits()
    train_idx, val_idx = stratified_split(digits.target, 0.2, seed)
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    for split, idx, n in (("train", train_idx, n_train), ("val", val_idx, n_val)):
        lines = []
        for k in range(n):
            i = int(idx[k % len(idx)])
            s = int(rng.integers(16, 41))
            digit = cv2.resize((digits.images[i] * (255 / 16)).astype(np.float32), (s, s),
                               interpolation=cv2.INTER_LINEAR)
            x, y = (int(v) for v in rng.integers(0, size - s + 1, 2))
            canvas = rng.normal(20, 8, (size, size)).astype(np.float32)
            region = canvas[y:y + s, x:x + s]
            np.maximum(region, digit, out=region)
            ys, xs = np.nonzero(digit > 64)  # the tight box of the ink
            box = (x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1)
            name = f"images/{split}_{k:05d}.png"
            cv2.imwrite(os.path.join(out, name), np.clip(np.rint(canvas), 0, 255).astype(np.uint8))
            lines.append(f"{name} {digits.target[i]} " + " ".join(str(int(v)) for v in box))
        with open(os.path.join(out, f"{split}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")


def sh(cmd, log=None):
    """Run a vggtool/data_prep command from the repository root, echo it, return its stdout."""
    print("$ " + " ".join(cmd), flush=True)
    env = dict(os.environ, PYTHONPATH=ROOT)
    t = time.time()
    p = subprocess.run([sys.executable, "-m"] + cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if log:
        with open(log, "w") as f:
            f.write(p.stdout + p.stderr)
    if p.returncode:
        sys.exit(f"failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    print(f"  ({time.time() - t:.0f} s)", flush=True)
    return p.stdout


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="demo_run/localize", help="work folder (the netdefs read LMDBs here)")
    ap.add_argument("--train", type=int, default=3000, help="training canvases")
    ap.add_argument("--val", type=int, default=300, help="validation canvases")
    ap.add_argument("--skip-train", action="store_true", help="reuse the data and weights of an earlier run")
    args = ap.parse_args(argv)
    work = args.work
    os.makedirs(os.path.join(ROOT, work), exist_ok=True)
    cls_w, loc_w = f"{work}/cls_iter_1400.caffemodel", f"{work}/loc_iter_1400.caffemodel"
    if not args.skip_train:
        make_canvases(os.path.join(ROOT, work), args.train, args.val)
        for split in ("train", "val"):
            sh(["data_prep", "convert_imageset", work, f"{work}/{split}.txt", f"{work}/{split}_lmdb", "--gray",
                "--overwrite"])
        sh(["vggtool", "train", "--solver", "solver/demo_loc_cls.prototxt"], log=f"{ROOT}/{work}/cls.log")
        sh(["vggtool", "train", "--solver", "solver/demo_loc_pcr.prototxt", "--weights", cls_w],
           log=f"{ROOT}/{work}/loc.log")
    for name in ("cls", "loc"):
        with open(f"{ROOT}/{work}/{name}.log") as f:
            tests = re.findall(r"Test net output #\d+: (\w+) = ([\d.e+-]+)", f.read())
        print(f"{name} net, last test outputs: " + ", ".join(f"{k} = {v}" for k, v in tests[-2:]))
    out = sh(["vggtool", "test", "--net", "netdefs/demo_loc/cls_deploy.prototxt", "--weights", cls_w,
              "--data", f"{work}/val_lmdb", "--scales", "64", "--mean-value", "20", "--out", f"{work}/scores.npz"])
    print("  " + out.strip().replace("\n", "\n  "))
    # One-hot ground-truth posteriors: dense + merge judged on box quality alone, like the centre protocol.
    from vggtool.evaluate import load_scores, save_scores
    _, labels, keys = load_scores(f"{ROOT}/{work}/scores.npz")
    save_scores(f"{ROOT}/{work}/gt_scores.npz", np.eye(10)[labels], labels, keys)
    loc = ["vggtool", "localize", "--net", "netdefs/demo_loc/loc_deploy.prototxt", "--weights", loc_w,
           "--data", f"{work}/val_lmdb", "--mean-value", "20"]
    runs = [("centre crop, GT class (a)", ["--protocol", "centre", "--scales", "64"]),
            ("dense Q=64,72 + merge, GT class", ["--scores", f"{work}/gt_scores.npz", "--scales", "64,72",
                                                 "--top", "1"]),
            ("dense Q=64 + merge, top-1", ["--scores", f"{work}/scores.npz", "--scales", "64", "--top", "1"]),
            ("dense Q=64 + merge, top-5", ["--scores", f"{work}/scores.npz", "--scales", "64", "--top", "5",
                                           "--out", f"{work}/boxes.npz"]),
            ("dense Q=64,72 + merge, top-5", ["--scores", f"{work}/scores.npz", "--scales", "64,72", "--top", "5"])]
    results = []
    for title, extra in runs:
        text = sh(loc + extra)
        m = re.search(r"error[^=]*= ([\d.]+)%", text)
        results.append((title, float(m.group(1))))
        print("  " + text.strip().splitlines()[-2 if "wrote" in text else -1])
    print("\nlocalisation error on", args.val, "val canvases:")
    for title, err in results:
        print(f"  {title:32s} {err:6.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
