"""digits: scikit-learn's bundled handwritten digits (1,797 real 8x8 images, 10 classes, no download)
exported as PNG files with Caffe image lists, ready for convert_imageset.

Layout: OUT/images/<label>/<index>.png (1-channel, --size x --size, default 32, the digit upscaled to
size - 2 * margin and centred on a black canvas (default margin 4: a 24x24 digit), so that scale
jittering and random crops as in the paper (e.g. smallest_side_min 24 / smallest_side_max 32 /
crop_size 24) keep most of the digit in view), OUT/train.txt and OUT/val.txt
(`images/<label>/<index>.png label`, a seeded stratified split). convert_imageset reads the PNGs as
3-channel BGR unless --gray.
"""
import os

import cv2
import numpy as np

from vggtool.errors import VggtoolError
from vggtool.io.files import check_output_path

HELP = "export scikit-learn's handwritten digits as PNG files with train.txt/val.txt lists"


def add_arguments(p):
    p.add_argument("out", help="output folder")
    p.add_argument("--size", type=int, default=32, help="side of the square PNGs (default 32)")
    p.add_argument("--margin", type=int, default=4,
                   help="black border around the digit in pixels (default 4: a 24x24 digit in a 32x32 image)")
    p.add_argument("--val_fraction", type=float, default=0.2, help="fraction held out for val (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the stratified split (default 0)")


def stratified_split(labels, val_fraction, seed):
    """Index arrays (train, val): each class split in the same proportion, seeded."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(len(idx) * val_fraction))
        val.extend(idx[:k])
        train.extend(idx[k:])
    return np.sort(train), np.sort(val)


def export_digits(out, size=32, val_fraction=0.2, seed=0, margin=4):
    from sklearn.datasets import load_digits

    if size < 8:
        raise VggtoolError(f"--size {size}: the digits are 8x8, use 8 or more")
    if margin < 0 or size - 2 * margin < 8:
        raise VggtoolError(f"--margin {margin}: leaves less than 8 pixels for the digit in a {size}x{size} image")
    inner = size - 2 * margin
    if not 0 < val_fraction < 1:
        raise VggtoolError(f"--val_fraction {val_fraction}: must lie strictly between 0 and 1")
    digits = load_digits()
    images, labels = digits.images, digits.target.astype(int)  # values 0..16
    names = []
    for i, (image, label) in enumerate(zip(images, labels)):
        pixels = np.clip(image * (255.0 / 16.0), 0, 255).astype(np.float32)
        big = np.zeros((size, size), np.float32)
        big[margin:margin + inner, margin:margin + inner] = cv2.resize(pixels, (inner, inner),
                                                                        interpolation=cv2.INTER_CUBIC)
        name = f"images/{label}/{i:04d}.png"
        os.makedirs(os.path.join(out, os.path.dirname(name)), exist_ok=True)
        if not cv2.imwrite(os.path.join(out, name), np.clip(np.rint(big), 0, 255).astype(np.uint8)):
            raise VggtoolError(f"cannot write {os.path.join(out, name)}")
        names.append(name)
    train, val = stratified_split(labels, val_fraction, seed)
    for list_name, idx in (("train.txt", train), ("val.txt", val)):
        with open(os.path.join(out, list_name), "w", encoding="utf-8") as f:
            f.writelines(f"{names[i]} {labels[i]}\n" for i in idx)
    return len(train), len(val)


def run(args):
    check_output_path(args.out, "output folder", folder=True)
    n_train, n_val = export_digits(args.out, args.size, args.val_fraction, args.seed, args.margin)
    print(f"Wrote {n_train + n_val} digit images ({args.size}x{args.size} PNG) to {args.out}: "
          f"train.txt {n_train}, val.txt {n_val}")
    return 0
