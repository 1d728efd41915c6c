"""`vggtool demo`: the whole VGG pipeline on real data (scikit-learn's handwritten digits) on a CPU.

prepare the images -> convert to LMDB -> train VGG-mini with scale jittering (snapshots, Caffe log) ->
dense multi-scale evaluation with flips -> training curve. Every step is an ordinary vggtool/data_prep
command run inside the output folder; the commands are printed so they can be rerun by hand.
"""
import os
import re
import shutil
import time
from pathlib import Path

from ..errors import VggtoolError
from ..io.files import checkout_file

HELP = "train and densely test a VGG-style net on the bundled digits data, end to end (a few minutes)"

SNAPSHOT_LINE = re.compile(r"Snapshotting to binary proto file (.+\.caffemodel)\s*$", re.M)
TEST_SCALES = "24,28,32"  # {Smin, (Smin+Smax)/2, Smax} for training jitter [24, 32], as in the paper


def last_snapshot(log):
    """The model this training run saved last, from its own log: not the highest-numbered snapshot in the
    folder, which may be an earlier run's (a re-run in a used --out, or one with fewer --iterations)."""
    models = SNAPSHOT_LINE.findall(Path(log).read_text(encoding="utf-8", errors="replace"))
    if not models:
        raise VggtoolError(f"training wrote no snapshot (no 'Snapshotting to binary proto file' line in {log})")
    return models[-1]


def add_arguments(parser):
    parser.add_argument("--out", default="demo_run", help="working folder (default demo_run)")
    parser.add_argument("--iterations", type=int, default=None, help="override the solver's max_iter")
    parser.add_argument("--devices", default=None, help="e.g. cpu:2 to train on two CPU replicas")


def _step(title, argv, tool="vggtool"):
    from . import main as vggtool_main
    from data_prep.cli import main as data_prep_main

    print(f"\n== {title}\n$ {tool} {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    rc = (vggtool_main if tool == "vggtool" else data_prep_main)(argv)
    if rc:
        raise VggtoolError(f"step '{title}' failed (exit {rc})")
    return time.perf_counter() - start


def run(args):
    from ..vgg import evaluate

    out = Path(args.out).resolve()
    # the flags are checked before anything is written
    if out.exists() and not out.is_dir():
        raise VggtoolError(f"--out {args.out} is an existing file, not a folder")
    if args.iterations is not None and args.iterations < 1:
        raise VggtoolError(f"--iterations must be at least 1, got {args.iterations}")
    if args.devices:
        from .. import backend
        backend.parse_devices(devices_spec=args.devices)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("train_val.prototxt", "deploy.prototxt"):
        shutil.copyfile(checkout_file("netdefs", "demo", name, command="the demo"), out / name)
    # the shipped solver names the net from the repository root; the run uses its own copy beside it
    solver_text = Path(checkout_file("solver", "demo_solver.prototxt", command="the demo")).read_text(encoding="utf-8")
    solver_text = re.sub(r'^net: "[^"]*"', 'net: "train_val.prototxt"', solver_text, count=1, flags=re.M)
    (out / "solver.prototxt").write_text(solver_text, encoding="utf-8")
    (out / "snapshots").mkdir(exist_ok=True)
    here = os.getcwd()
    os.chdir(out)
    times = {}
    try:
        if not (out / "digits" / "val.txt").exists():
            times["prepare"] = _step("prepare the digits images", ["digits", "digits"], "data_prep")
        for split in ("train", "val"):
            if not (out / f"digits_{split}_lmdb").exists():
                times[f"convert {split}"] = _step(
                    f"convert {split} to LMDB",
                    ["convert_imageset", "--gray", "digits", f"digits/{split}.txt", f"digits_{split}_lmdb"],
                    "data_prep")
        if (out / "train.log").exists():
            (out / "train.log").unlink()
        train = ["train", "--solver", "solver.prototxt", "--log", "train.log"]
        if args.iterations is not None:
            train += ["--iterations", str(args.iterations)]
        if args.devices:
            train += ["--devices", args.devices]
        times["train"] = _step("train (scale jittering S in [24, 32], crops 24x24, flips)", train)
        weights = last_snapshot(out / "train.log")
        times["test"] = _step("dense multi-scale evaluation with flips", [
            "test", "--net", "deploy.prototxt", "--weights", str(weights), "--data", "digits_val_lmdb",
            "--scales", TEST_SCALES, "--flip", "--mode", "dense", "--mean-value", "50", "--scale", "0.0125",
            "--out", "scores.npz"])
        times["plot"] = _step("training curve", ["plot", "train.log", "--out", "training_curve.png"])
        posteriors, labels, _ = evaluate.load_scores("scores.npz")
    finally:
        os.chdir(here)
    top1 = 100 * evaluate.topk_error(posteriors, labels, 1)
    top5 = 100 * evaluate.topk_error(posteriors, labels, 5)
    print("\n== done: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
    print(f"files in {out}: train.log, snapshots/, scores.npz, training_curve.png")
    print(f"VGG-mini on digits (validation, {len(labels)} images; dense, scales {TEST_SCALES}, flips): "
          f"top-1 error {top1:.2f}%, top-5 error {top5:.2f}%")
    return 0
