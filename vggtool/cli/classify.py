"""`vggtool classify`: top-5 classes of each image, dense multi-scale evaluation by default."""
import argparse
import os

import cv2

from ..vgg import evaluate as ev
from ..errors import VggtoolError
from ..ranking import top_classes
from .test import _device, add_transform_arguments, transform_options

HELP = "print the top-5 classes of images (dense multi-scale evaluation by default)"


def add_arguments(parser):
    parser.add_argument("--net", "--model", dest="net", required=True, help="deploy prototxt")
    parser.add_argument("--weights", required=True, help=".caffemodel")
    parser.add_argument("--labels", default=None, help="class names, one a line (e.g. synset_words.txt)")
    parser.add_argument("--scales", default=None,
                        help="test scales Q (default: crop x 8/7, 12/7, 16/7, i.e. 256,384,512 for a 224 net)")
    parser.add_argument("--mode", default="dense", choices=ev.MODES)
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                        help="average with the horizontally flipped image (default; --no-flip: do not)")
    add_transform_arguments(parser)
    parser.add_argument("--average", default="posteriors", choices=("posteriors", "scores"),
                        help="dense score map: softmax per location then average (default), or average then softmax")
    parser.add_argument("--blob", default=None, help="class score blob (default: input of the final Softmax)")
    parser.add_argument("--top", type=int, default=5, help="classes to print per image (default 5)")
    parser.add_argument("--gpu", default=None, help="GPU id (default: CPU)")
    parser.add_argument("--data", default=None,
                        help="a folder of images, or of class subfolders (ImageFolder layout), to classify too")
    parser.add_argument("images", nargs="*", help="image files or folders of images")


def read_labels(path):
    if not os.path.exists(path):
        raise VggtoolError(f"--labels: {path} does not exist")
    from ..data.imagelist import read_names

    return read_names(path)


def image_paths(args):
    """The files to classify: the image arguments, with folders (and --data) expanded to their images,
    subfolders included, in sorted order."""
    from ..data.imagefolder import images_under

    items = list(args.images) + ([args.data] if args.data else [])
    if not items:
        raise VggtoolError("give image files or folders (positional arguments or --data)")
    out = []
    for item in items:
        if os.path.isdir(item):
            found = [os.path.join(item, p) for p in images_under(item, item)]
            if not found:
                raise VggtoolError(f"{item}: a folder without images")
            out.extend(found)
        else:
            out.append(item)
    return out


def run(args):
    paths = image_paths(args)
    for path in (args.net, args.weights):
        if not os.path.exists(path):
            raise VggtoolError(f"{path} does not exist")
    transform = transform_options(args)
    labels = read_labels(args.labels) if args.labels else None
    scales = ev.parse_scales(args.scales) if args.scales else None
    evaluator = ev.Evaluator(args.net, args.weights, scales=scales, mode=args.mode, flip=args.flip,
                             blob=args.blob, average=args.average, device=_device(args), **transform)
    for path in paths:
        image = cv2.imread(path, cv2.IMREAD_COLOR if evaluator.channels == 3 else cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise VggtoolError(f"cannot read image {path}")
        p = evaluator.evaluate_image(image)
        if labels is not None and len(labels) != len(p):
            raise VggtoolError(f"--labels: {args.labels} names {len(labels)} classes, the net scores {len(p)}")
        print(path)
        for c in top_classes(p, args.top):
            name = labels[c] if labels else f"class {c}"
            print(f"  {p[c]:.4f} - {name}")
    return 0
