"""`vggtool test`: Caffe's `caffe test` (TEST phase with the net's own data layer, K iterations) and,
with --data, the VGG evaluation protocol (dense / multi-crop, multi-scale, flips) of vggtool.vgg.evaluate."""
import argparse
import os
import sys

import numpy as np

from .. import backend
from ..errors import VggtoolError
from ..io.files import check_output_path
from ..solvers.glog import GLog, fmt

HELP = "score a net: Caffe's test (net's own data layer) or, with --data, VGG dense/multi-crop evaluation"


def add_arguments(parser):
    parser.add_argument("--net", "--model", dest="net", required=True, help="net prototxt")
    parser.add_argument("--weights", required=True, help=".caffemodel with the trained weights")
    parser.add_argument("--iterations", type=int, default=50, help="Caffe mode: batches to run (default 50)")
    parser.add_argument("--gpu", default=None, help="GPU id to run on (default: CPU)")
    parser.add_argument("--stage", default="", help="Caffe mode: comma-separated net stages")
    parser.add_argument("--level", type=int, default=0, help="Caffe mode: net level")
    g = parser.add_argument_group("VGG evaluation (with --data)")
    g.add_argument("--data", default=None, help="LMDB of Datum, or an image list file 'path label'")
    g.add_argument("--root", default="", help="folder the list file's paths are relative to")
    g.add_argument("--scales", default=None, help="test scales Q, the smallest image side (default: crop x 8/7, 12/7, "
                   "16/7, i.e. 256,384,512 for a 224 crop)")
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=False, help="also evaluate horizontal flips (dense: flipped "
                   "image; multi-crop: mirrored crops, 50 per scale)")
    g.add_argument("--mode", default="dense", choices=("dense", "multicrop", "both"))
    g.add_argument("--crop", type=int, default=None, help="multi-crop size (default: the net's input size)")
    add_transform_arguments(g)
    g.add_argument("--average", default="posteriors", choices=("posteriors", "scores"),
                   help="dense score map: softmax per location then average (default), or average then softmax")
    g.add_argument("--blob", default=None, help="class score blob (default: input of the final Softmax)")
    g.add_argument("--batch", type=int, default=50, help="crops per forward pass in multi-crop (default 50)")
    g.add_argument("--out", default=None, help="write posteriors, labels and keys to this .npz")
    g.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    g.add_argument("--heatmaps", default=None, metavar="DIR",
                   help="write each image's class score maps (true and predicted class) as heat maps to DIR")
    g.add_argument("--labels", default=None, help="class names, one a line, for the --heatmaps titles")


def add_transform_arguments(parser):
    """The test-time input transform (image - mean) * scale: the same flags for test, classify, extract."""
    parser.add_argument("--mean-value", default=None, help="per-channel mean B,G,R (or one value)")
    parser.add_argument("--mean-file", default=None, help="mean .binaryproto (averaged per channel)")
    parser.add_argument("--scale", type=float, default=None,
                        help="multiply the mean-subtracted input by this (Caffe's transform_param scale)")
    parser.add_argument("--no-recorded-transform", dest="recorded_transform", action="store_false",
                        help="ignore the mean and scale of the model's own transform_param")


def transform_options(args):
    """{'mean': per-channel mean or None, 'scale': float}: the flags of add_transform_arguments, else the
    model's own transform_param (vggtool.data.recorded_transform: the --net prototxt, then the --weights file).
    When neither gives a mean, say so: the images then go in without mean subtraction."""
    from ..data.mean import load_mean
    from ..data.recorded_transform import recorded_transform, resolve_mean_file

    mean, scale = None, args.scale
    if args.mean_value is not None or args.mean_file is not None:
        mean = load_mean(args.mean_value, args.mean_file)
    net = args.net[0] if isinstance(args.net, list) else args.net
    weights = args.weights[0] if isinstance(args.weights, list) else args.weights
    tp, where = recorded_transform(net, weights) if getattr(args, "recorded_transform", True) else (None, None)
    used = []
    if mean is None and tp is not None and (tp.mean_file or len(tp.mean_value)):
        if tp.mean_file:
            mean = load_mean(mean_file=resolve_mean_file(tp.mean_file, where, where.split(", layer")[0]))
            used.append(f"mean_file {tp.mean_file}")
        else:
            mean = load_mean(list(tp.mean_value))
            used.append("mean_value " + ",".join(f"{v:g}" for v in tp.mean_value))
    if scale is None and tp is not None and tp.HasField("scale"):
        scale = tp.scale
        used.append(f"scale {tp.scale:g}")
    if used:
        print(f"input transform from {where}: {', '.join(used)}", file=sys.stderr)
    if mean is None:
        print("note: no mean given (--mean-value / --mean-file) and none in the model's transform_param: "
              "the images are not mean-subtracted", file=sys.stderr)
    return {"mean": mean, "scale": 1.0 if scale is None else scale}


def _device(args):
    if args.gpu is None:
        return backend.CPU
    return backend.parse_devices(args.gpu)[0]


def glog(message):
    """One log line in glog's format on stderr, at the place `caffe test` logs it from."""
    GLog().info(f"caffe.cpp:{sys._getframe(1).f_lineno}", message)


def run_caffe_test(args):
    from ..net import Net

    if args.iterations <= 0:
        raise VggtoolError(f"--iterations must be positive, got {args.iterations}")
    if not os.path.exists(args.weights):
        raise VggtoolError(f"--weights: {args.weights} does not exist")
    device = _device(args)
    glog("Use CPU." if not device.is_gpu else f"Use GPU with device ID {device.index}")
    stages = [s for s in args.stage.split(",") if s]
    net = Net(args.net, args.weights, phase="TEST", stages=stages, level=args.level, device=device,
              log=GLog())
    glog(f"Running for {args.iterations} iterations.")
    sums, loss = None, 0.0
    for i in range(args.iterations):
        out = net.forward()
        loss += float(backend.to_numpy(net.last_loss))
        values = [(name, np.ravel(backend.to_numpy(out[name])).astype(np.float64)) for name in net.outputs]
        for name, v in values:
            for x in v:
                glog(f"Batch {i}, {name} = {fmt(x)}")
        if sums is None:
            sums = [v.copy() for _, v in values]
        else:
            for s, (_, v) in zip(sums, values):
                s += v
    for layer in net.layers:  # corrupt records skipped by the data layers, counted
        line = getattr(layer, "skipped_summary", lambda: None)()
        if line:
            GLog().warning(f"caffe.cpp:{sys._getframe().f_lineno}", line)
    glog(f"Loss: {fmt(loss / args.iterations)}")
    for name, s in zip(net.outputs, sums):
        weight = net.blob_loss_weights.get(name, 0.0)
        for x in s / args.iterations:
            extra = f" (* {fmt(weight)} = {fmt(weight * x)} loss)" if weight else ""
            glog(f"{name} = {fmt(x)}{extra}")
    return 0


def run_evaluation(args):
    from ..vgg import evaluate as ev

    scales = ev.parse_scales(args.scales) if args.scales is not None else None
    if not os.path.exists(args.data):
        raise VggtoolError(f"--data: {args.data} does not exist (give an LMDB folder or an image list file)")
    if args.root and not os.path.isdir(args.root):
        raise VggtoolError(f"--root: {args.root} is not a folder")
    if args.out:
        check_output_path(args.out, "--out")
    evaluator = ev.Evaluator(args.net, args.weights, scales=scales, mode=args.mode, flip=args.flip,
                             crop=args.crop, blob=args.blob, average=args.average, device=_device(args),
                             batch=args.batch, **transform_options(args))
    print(f"evaluating {args.net} ({args.mode}, scales {','.join(map(str, evaluator.scales))}"
          f"{', flips' if args.flip else ''}, score blob '{evaluator.score_blob}')", flush=True)
    posteriors, labels, keys = ev.evaluate(evaluator, args.data, args.root, args.limit)
    for line in ev.report_lines(posteriors, labels):
        print(line)
    if args.out:
        ev.save_scores(args.out, posteriors, labels, keys, scales=np.array(evaluator.scales), mode=args.mode,
                       flip=args.flip)
        print(f"wrote {args.out}")
    if args.heatmaps:
        from ..data.imagelist import read_names
        from ..data.samples import iterate_samples
        from ..vgg.heatmaps import write_heatmaps

        names = read_names(args.labels) if args.labels else None
        samples = iterate_samples(args.data, args.root, args.limit, color=evaluator.channels == 3)
        written = write_heatmaps(evaluator, samples, posteriors, args.heatmaps, names)
        print(f"wrote {len(written)} heat map(s) to {args.heatmaps}")
    return 0


def run(args):
    return run_evaluation(args) if args.data is not None else run_caffe_test(args)
