"""`vggtool localize`: localisation error of box-regression nets (paper Appendix A, vggtool.localize)."""
import argparse
import os

import numpy as np

from .. import backend, ranking
from ..errors import VggtoolError
from ..protoio import check_output_path
from .test import add_transform_arguments, transform_options

HELP = "localisation: boxes from box-regression nets (centre crop or dense + greedy merging), top-k error"


def add_arguments(parser):
    parser.add_argument("--net", "--model", dest="net", action="append", required=True,
                        help="deploy prototxt of a box-regression net (repeat with --weights to pool several nets)")
    parser.add_argument("--weights", action="append", required=True, help=".caffemodel of the --net at the same position")
    parser.add_argument("--data", required=True,
                        help="LMDB of Datum with boxes, a list `path label x1 y1 x2 y2 ...`, or a folder of images "
                             "(class subfolders, or images alone: no ground truth, so guesses only, to --out/--draw)")
    parser.add_argument("--root", default="", help="folder the list file's paths are relative to")
    parser.add_argument("--protocol", default="full", choices=("centre", "full"),
                        help="centre: ground-truth class, centre crop; full: dense boxes merged for the top-k "
                        "classes of a classifier (default)")
    parser.add_argument("--scales", default=None, help="test scales Q (smallest image side); centre uses the "
                        "first (default: the net's input size x 8/7)")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=False, help="full: also the mirrored image")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="full: merge while the closest pair's 1 - IoU is below this (default 0.5)")
    parser.add_argument("--top", type=int, default=5, help="full: guesses per image (default 5)")
    parser.add_argument("--true-class", action="store_true", help="full: localise the ground-truth class "
                        "only (classification errors excluded, as in the centre protocol); a classifier, if "
                        "given, still weighs the boxes")
    parser.add_argument("--scores", default=None, help="full: class posteriors from `vggtool test --out` (.npz)")
    parser.add_argument("--cls-net", default=None, help="full: classification deploy net run here instead; its "
                        "score maps at --scales also weigh each window's box when merging")
    parser.add_argument("--cls-weights", default=None, help="weights of --cls-net")
    parser.add_argument("--cls-scales", default=None, help="scales of --cls-net (default: --scales)")
    add_transform_arguments(parser)
    parser.add_argument("--blob", default=None, help="box output blob (default: the net's only output)")
    parser.add_argument("--gpu", default=None, help="GPU id to run on (default: CPU)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--out", default=None, help="write the boxes to this .npz or .json")
    parser.add_argument("--draw", default=None, metavar="DIR",
                        help="write each image with its true (green) and predicted (red) boxes to DIR")


def run(args):
    from ..progress import progress

    from .. import boxes as B
    from .. import evaluate as ev
    from .. import localize as loc
    from ..data.samples import iterate_boxed_samples

    if len(args.net) != len(args.weights):
        raise VggtoolError(f"{len(args.net)} --net but {len(args.weights)} --weights: give one --weights per --net")
    if args.top < 1:
        raise VggtoolError(f"--top must be positive, got {args.top}")
    if not 0 <= args.threshold <= 1:
        raise VggtoolError(f"--threshold is a distance 1 - IoU in [0, 1], got {args.threshold}")
    if args.root and not os.path.isdir(args.root):
        raise VggtoolError(f"--root: {args.root} is not a folder")
    if args.out:
        check_output_path(args.out, "--out")
    device = backend.CPU if args.gpu is None else backend.parse_devices(args.gpu)[0]
    transform = transform_options(args)
    regs = [loc.Regressor(n, w, blob=args.blob, device=device, **transform) for n, w in zip(args.net, args.weights)]
    crop = max(regs[0].crop_h, regs[0].crop_w)
    scales = ev.parse_scales(args.scales) if args.scales else [int(round(crop * 8 / 7))]
    for q in scales:
        if q < crop:
            raise VggtoolError(f"--scales: Q={q} is smaller than the net's {crop}x{crop} input")
    full = args.protocol == "full"
    scores, classifier, cls_scales = None, None, None
    if full:
        if args.scores is not None and args.cls_net is not None:
            raise VggtoolError("give --scores or --cls-net, not both")
        if args.scores is None and args.cls_net is None and not args.true_class:
            raise VggtoolError("--protocol full ranks classes by a classifier: give --scores S.npz (from "
                               "`vggtool test --out`) or --cls-net with --cls-weights")
        if args.scores:
            posteriors, _, keys = ev.load_scores(args.scores)
            scores = {str(k): p for k, p in zip(keys, posteriors)}
        elif args.cls_net:
            if not args.cls_weights:
                raise VggtoolError("--cls-net needs --cls-weights")
            cls_scales = ev.parse_scales(args.cls_scales, "--cls-scales") if args.cls_scales else scales
            classifier = ev.Evaluator(args.cls_net, args.cls_weights, scales=cls_scales, mode="dense",
                                      flip=args.flip, device=device, **transform)
            score_maps = loc.ClassScoreMaps(classifier)
            small = [q for q in scales if q < max(classifier.crop)]
            if small:
                raise VggtoolError(f"--scales: Q={small[0]} is smaller than the {classifier.crop[0]}x"
                                   f"{classifier.crop[1]} input of --cls-net, whose score maps weigh the boxes")
    weighting = ("class score maps of --cls-net" if classifier else "per-image posteriors of --scores" if scores
                 else "count of windows (no classifier)")
    print(f"localize: {len(regs)} net(s), protocol {args.protocol}, scales {','.join(map(str, scales))}"
          + (f", {'ground-truth class' if args.true_class else f'top {args.top}'}, merge threshold "
             f"{args.threshold}, boxes weighted by the {weighting}" if full else ""),
          flush=True)

    keys, labels, guesses_cls, guesses_box, ok = [], [], [], [], []
    samples = iterate_boxed_samples(args.data, args.root, args.limit, color=regs[0].channels == 3)
    for key, image, label, gt in progress(samples, unit="img", desc="localizing", mininterval=1):
        if gt is None and not (args.out or args.draw):
            raise VggtoolError(f"--data: {args.data} is a folder of images without ground-truth boxes: there is "
                               "no error to print, so give --out and/or --draw to keep the guesses")
        if (not full or args.true_class) and label < 0:
            raise VggtoolError(f"--data: image '{key}' has no label (a folder without class subfolders); the "
                               f"{'centre' if not full else '--true-class'} protocol needs the ground-truth class")
        if (not full or args.true_class) and regs[0].classes > 1 and not 0 <= label < regs[0].classes:
            raise VggtoolError(f"--data: image '{key}' has label {label}; the net regresses "
                               f"{regs[0].classes} classes")
        if full:
            maps, posterior = None, None
            if scores is not None:
                if key not in scores:
                    raise VggtoolError(f"--scores {args.scores} has no image '{key}' (score the same --data "
                                       "with `vggtool test --out`)")
                posterior = scores[key]
            elif classifier is not None:
                # The classifier's score maps at the box nets' scales weigh the boxes (OverFeat's ranking).
                maps, posterior = score_maps.image_maps(image, scales, args.flip)
                if list(cls_scales) != list(scales):
                    posterior = classifier.evaluate_image(image)
            # ties broken against the label, as in `vggtool test`
            classes = [label] if args.true_class else ranking.top_classes(posterior, args.top, label=label)
            guesses = loc.localize_full(regs, image, classes, scales, args.flip, args.threshold,
                                        score_map=maps, posterior=posterior)
            pairs = [(c, b) for c, b, _ in guesses]
        else:
            pairs = [(label, loc.localize_centre(regs, image, label, scales[0]))]
        keys.append(key)
        labels.append(label)
        guesses_cls.append([c for c, _ in pairs])
        guesses_box.append([b for _, b in pairs])
        ok.append(None if gt is None else B.correct(pairs, label, gt))
        if args.draw:
            from ..box_pictures import draw_boxes, write_box_picture
            write_box_picture(args.draw, key, draw_boxes(image, np.zeros((0, 4)) if gt is None else gt, pairs,
                                                         label, ok[-1]))
    if not keys:
        raise VggtoolError(f"--data: {args.data} holds no images")
    result = {"keys": np.array(keys, dtype=str), "labels": np.array(labels, np.int64),
              "classes": np.array(guesses_cls, np.int64), "boxes": np.array(guesses_box, np.float32)}
    if ok[0] is None:
        print(f"{len(keys)} images without ground-truth boxes: guesses only, no localisation error")
    else:
        error = 100 * (1 - np.mean(ok))
        what = ("localisation error (ground-truth class, dense + merge)" if full and args.true_class
                else f"top-{args.top} localisation error" if full
                else "localisation error (ground-truth class, centre crop)")
        print(f"{what} = {error:.2f}% ({len(keys)} images)")
        result["correct"] = np.array(ok)
    if args.out:
        loc.save_boxes(args.out, result)
        print(f"wrote {args.out}")
    return 0
