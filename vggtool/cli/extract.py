"""`vggtool extract`: image descriptors from a blob of a net (paper Appendix B; Caffe's extract_features)."""
import argparse
import os

import numpy as np

from ..errors import VggtoolError
from .test import _device, add_transform_arguments, transform_options

HELP = "extract image features from a net's blob: dense, globally pooled, flipped, multi-scale, L2-normalised"


def add_arguments(parser):
    parser.add_argument("--net", "--model", dest="net", required=True, help="deploy prototxt")
    parser.add_argument("--weights", required=True, help=".caffemodel")
    parser.add_argument("--layer", "--blob", dest="layer", required=True, help="blob to extract, e.g. fc7")
    parser.add_argument("--data", required=True, help="image list 'path [label ...]', LMDB of Datum, or a VOC "
                        "folder (Annotations/, ImageSets/Main/, JPEGImages/)")
    parser.add_argument("--root", default="", help="folder the list file's paths are relative to")
    parser.add_argument("--split", default="trainval", help="VOC: the ImageSets/Main split (default trainval)")
    parser.add_argument("--classes", default=None, help="class names a,b,c (or a file, one per line); VOC: "
                        "their order (default: sorted names found)")
    parser.add_argument("--multilabel", action="store_true", help="store labels as N x C multi-hot even if "
                        "every image has one label")
    parser.add_argument("--scales", default=None, help="scales Q (smallest image side), e.g. 256,384,512 "
                        "(default: input size x 8/7, 12/7, 16/7; --no-pool: images as they are)")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=False, help="average with the horizontally flipped image")
    parser.add_argument("--aggregate", default="stack", choices=("stack", "average"),
                        help="combine scales by concatenation (stack, default) or averaging")
    parser.add_argument("--no-pool", dest="pool", action="store_false", help="keep the raw blob per image "
                        "(no surgery, no pooling, no normalisation), like Caffe's extract_features")
    add_transform_arguments(parser)  # --mean-value, --mean-file, --scale: as test and classify
    parser.add_argument("--format", default="npz", choices=("npz", "lmdb"), help="output: .npz (features, "
                        "labels, keys) or an LMDB of Datum float_data")
    parser.add_argument("--out", required=True, help="output .npz file or LMDB folder")
    parser.add_argument("--overwrite", action="store_true", help="lmdb: replace an existing database")
    parser.add_argument("--batch", type=int, default=8, help="net inputs per forward pass, flips included (default 8)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--gpu", default=None, help="GPU id to run on (default: CPU)")


def run(args):
    from ..vgg import evaluate as ev, extract as fx
    from ..data import imagesets as lb

    scales = ev.parse_scales(args.scales) if args.scales is not None else None
    if args.batch <= 0:
        raise VggtoolError(f"--batch must be positive, got {args.batch}")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        raise VggtoolError(f"--out: folder {out_dir} does not exist")
    extractor = fx.FeatureExtractor(args.net, args.weights, args.layer, scales=scales, flip=args.flip,
                                    aggregate=args.aggregate, pool=args.pool, device=_device(args),
                                    batch=args.batch, **transform_options(args))
    image_set = lb.open_image_set(args.data, args.root, args.split, lb.parse_classes(args.classes))
    how = (f"dense, scales {','.join(map(str, extractor.scales))} ({args.aggregate})"
           f"{', flips' if args.flip else ''}, global average pooling, L2" if args.pool else "raw blob")
    print(f"extracting '{extractor.blob}' of {args.net}: {how}", flush=True)
    features, labels, keys = fx.extract(extractor, image_set, args.limit)
    label_arr = lb.label_array(labels, image_set.classes, args.multilabel or image_set.multilabel, args.data)
    ignore = image_set.ignore[:len(keys)] if image_set.ignore is not None else None
    if args.format == "npz":
        fx.save_npz(args.out, features, label_arr, keys, image_set.classes, ignore, layer=extractor.blob,
                    scales=np.array(extractor.scales, np.int64), flip=args.flip, aggregate=args.aggregate,
                    pooled=args.pool, net=args.net,
                    **({"dataset": image_set.dataset} if image_set.dataset else {}))
    else:
        fx.save_lmdb(args.out, features, label_arr, keys, None if args.pool else extractor.blob_shape,
                     args.overwrite)
    kind = "multi-hot labels" if label_arr.ndim == 2 else "labels"
    print(f"wrote {args.out}: {features.shape[0]} images x {features.shape[1]} features, {kind}")
    return 0
