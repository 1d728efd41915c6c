"""`vggtool localize`: localisation error of box-regression nets (paper Appendix A, vggtool.vgg.localize)."""
import argparse
import os

import numpy as np

from .. import backend, ranking
from ..errors import VggtoolError
from ..io.files import check_output_path
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

    from ..data.samples import iterate_boxed_samples
    from ..vgg import localize as loc

    _check_arguments(args)
    device = backend.CPU if args.gpu is None else backend.parse_devices(args.gpu)[0]
    transform = transform_options(args)
    regs = [loc.Regressor(n, w, blob=args.blob, device=device, **transform) for n, w in zip(args.net, args.weights)]
    scales = _scales(args, regs[0])
    full = args.protocol == "full"
    ranker = _ClassRanker(args, scales, device, transform) if full else None
    _print_header(args, regs, scales, ranker)

    result = {"keys": [], "labels": [], "classes": [], "boxes": [], "correct": []}
    samples = iterate_boxed_samples(args.data, args.root, args.limit, color=regs[0].channels == 3)
    for key, image, label, gt in progress(samples, unit="img", desc="localizing", mininterval=1):
        _check_sample(args, regs[0], key, label, gt, full)
        if full:
            pairs = ranker.guesses(regs, key, image, label)
        else:
            pairs = [(label, loc.localize_centre(regs, image, label, scales[0]))]
        _record(args, result, key, image, label, gt, pairs)
    if not result["keys"]:
        raise VggtoolError(f"--data: {args.data} holds no images")
    _report(args, result, full)
    return 0


def _check_arguments(args):
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


def _scales(args, reg):
    """The test scales Q: --scales, or the box net's input size x 8/7; none below the net's input."""
    from ..vgg import evaluate as ev

    crop = max(reg.crop_h, reg.crop_w)
    scales = ev.parse_scales(args.scales) if args.scales else [int(round(crop * 8 / 7))]
    for q in scales:
        if q < crop:
            raise VggtoolError(f"--scales: Q={q} is smaller than the net's {crop}x{crop} input")
    return scales


class _ClassRanker:
    """The full protocol's classes to localise and the weights of their boxes: posteriors from --scores, or
    the score maps and posteriors of --cls-net, or (--true-class alone) the ground truth, windows counted."""

    def __init__(self, args, scales, device, transform):
        from ..vgg import evaluate as ev
        from ..vgg import localize as loc

        self.args, self.scales = args, scales
        self.scores, self.classifier, self.cls_scales = None, None, None
        if args.scores is not None and args.cls_net is not None:
            raise VggtoolError("give --scores or --cls-net, not both")
        if args.scores is None and args.cls_net is None and not args.true_class:
            raise VggtoolError("--protocol full ranks classes by a classifier: give --scores S.npz (from "
                               "`vggtool test --out`) or --cls-net with --cls-weights")
        if args.scores:
            posteriors, _, keys = ev.load_scores(args.scores)
            self.scores = {str(k): p for k, p in zip(keys, posteriors)}
        elif args.cls_net:
            if not args.cls_weights:
                raise VggtoolError("--cls-net needs --cls-weights")
            self.cls_scales = ev.parse_scales(args.cls_scales, "--cls-scales") if args.cls_scales else scales
            self.classifier = ev.Evaluator(args.cls_net, args.cls_weights, scales=self.cls_scales, mode="dense",
                                           flip=args.flip, device=device, **transform)
            self.score_maps = loc.ClassScoreMaps(self.classifier)
            small = [q for q in scales if q < max(self.classifier.crop)]
            if small:
                raise VggtoolError(f"--scales: Q={small[0]} is smaller than the {self.classifier.crop[0]}x"
                                   f"{self.classifier.crop[1]} input of --cls-net, whose score maps weigh the boxes")

    def weighting(self):
        return ("class score maps of --cls-net" if self.classifier else "per-image posteriors of --scores"
                if self.scores else "count of windows (no classifier)")

    def guesses(self, regs, key, image, label):
        """[(class, box)] of one image, heaviest merged box first."""
        from ..vgg import localize as loc

        args = self.args
        maps, posterior = None, None
        if self.scores is not None:
            if key not in self.scores:
                raise VggtoolError(f"--scores {args.scores} has no image '{key}' (score the same --data "
                                   "with `vggtool test --out`)")
            posterior = self.scores[key]
        elif self.classifier is not None:
            # The classifier's score maps at the box nets' scales weigh the boxes (OverFeat's ranking).
            maps, posterior = self.score_maps.image_maps(image, self.scales, args.flip)
            if list(self.cls_scales) != list(self.scales):
                posterior = self.classifier.evaluate_image(image)
        # ties broken against the label, as in `vggtool test`
        classes = [label] if args.true_class else ranking.top_classes(posterior, args.top, label=label)
        guesses = loc.localize_full(regs, image, classes, self.scales, args.flip, args.threshold,
                                    score_map=maps, posterior=posterior)
        return [(c, b) for c, b, _ in guesses]


def _print_header(args, regs, scales, ranker):
    full = ranker is not None
    print(f"localize: {len(regs)} net(s), protocol {args.protocol}, scales {','.join(map(str, scales))}"
          + (f", {'ground-truth class' if args.true_class else f'top {args.top}'}, merge threshold "
             f"{args.threshold}, boxes weighted by the {ranker.weighting()}" if full else ""),
          flush=True)


def _check_sample(args, reg, key, label, gt, full):
    """Refuse an image the protocol cannot score: no boxes and nothing to keep the guesses in, or no label
    (or one the net does not regress) where the protocol localises the ground-truth class."""
    if gt is None and not (args.out or args.draw):
        raise VggtoolError(f"--data: {args.data} is a folder of images without ground-truth boxes: there is "
                           "no error to print, so give --out and/or --draw to keep the guesses")
    if (not full or args.true_class) and label < 0:
        raise VggtoolError(f"--data: image '{key}' has no label (a folder without class subfolders); the "
                           f"{'centre' if not full else '--true-class'} protocol needs the ground-truth class")
    if (not full or args.true_class) and reg.classes > 1 and not 0 <= label < reg.classes:
        raise VggtoolError(f"--data: image '{key}' has label {label}; the net regresses "
                           f"{reg.classes} classes")


def _record(args, result, key, image, label, gt, pairs):
    """Keep one image's guesses, whether they are correct (None without ground truth), and its picture."""
    from ..data import boxes as B

    result["keys"].append(key)
    result["labels"].append(label)
    result["classes"].append([c for c, _ in pairs])
    result["boxes"].append([b for _, b in pairs])
    ok = None if gt is None else B.correct(pairs, label, gt)
    result["correct"].append(ok)
    if args.draw:
        from ..vgg.box_pictures import draw_boxes, write_box_picture
        write_box_picture(args.draw, key, draw_boxes(image, np.zeros((0, 4)) if gt is None else gt, pairs,
                                                     label, ok))


def _report(args, result, full):
    """Print the localisation error (when there is ground truth) and write --out."""
    from ..vgg import localize as loc

    keys, ok = result["keys"], result.pop("correct")
    out = {"keys": np.array(keys, dtype=str), "labels": np.array(result["labels"], np.int64),
           "classes": np.array(result["classes"], np.int64), "boxes": np.array(result["boxes"], np.float32)}
    if ok[0] is None:
        print(f"{len(keys)} images without ground-truth boxes: guesses only, no localisation error")
    else:
        error = 100 * (1 - np.mean(ok))
        what = ("localisation error (ground-truth class, dense + merge)" if full and args.true_class
                else f"top-{args.top} localisation error" if full
                else "localisation error (ground-truth class, centre crop)")
        print(f"{what} = {error:.2f}% ({len(keys)} images)")
        out["correct"] = np.array(ok)
    if args.out:
        loc.save_boxes(args.out, out)
        print(f"wrote {args.out}")
