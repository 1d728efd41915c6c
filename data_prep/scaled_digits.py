"""scaled_digits: scikit-learn's bundled handwritten digits made into a task where scale matters, the data
of `vggtool reproduce` (offline, deterministic, real pixels).

Each image is a --canvas x --canvas grayscale PNG (default 36: the smallest training scale S, so that every
rescale the training and testing protocols make is an enlargement): a background of random grey level, up
to --fragments clutter fragments (a 3x3 to 5x5 window of another digit's 8x8 pixels, i.e. under two thirds
of a digit, scaled like a digit and placed anywhere, partly outside the canvas allowed), then the labelled
digit itself, rescaled to a random side in [--min_size, --max_size] (log-uniform: default 10 to 24 pixels,
a 2.4x range) at a random position inside the canvas, then Gaussian noise. Strokes are combined by maximum,
so clutter can touch or cross the digit.

Splits are by source image: the 1,797 digits are split (stratified, seeded) into val (--val_fraction),
holdout (--holdout_fraction of the rest: the held-out set the plateau learning-rate policy watches) and
train; each source digit is drawn --renders times (train,holdout,val; different size, position and clutter
each time), and clutter comes only from digits of the same split, so no digit's pixels appear in two
splits. Every image depends only on (--seed, split, source index, render), not on the other options.

Layout: OUT/images/<split>/<label>/<source>_<render>.png; OUT/train.txt (seeded shuffled order, so that
convert_imageset without --shuffle writes mixed batches), OUT/holdout.txt, OUT/val.txt: `path label` lines
for `data_prep convert_imageset --gray`.
"""
import os

import cv2
import numpy as np

from vggtool.errors import VggtoolError

from .digits import stratified_split

HELP = "make the scale-varying digits-with-clutter data of `vggtool reproduce` (PNG + train/holdout/val lists)"

SPLITS = ("train", "holdout", "val")


def add_arguments(p):
    p.add_argument("out", help="output folder")
    p.add_argument("--canvas", type=int, default=36, help="side of the square images (default 36)")
    p.add_argument("--min_size", type=int, default=10, help="smallest digit side in pixels (default 10)")
    p.add_argument("--max_size", type=int, default=24, help="largest digit side in pixels (default 24)")
    p.add_argument("--fragments", type=int, default=3, help="clutter fragments per image: 1..N (default 3)")
    p.add_argument("--noise", type=float, default=8.0, help="std of the Gaussian pixel noise, 0-255 (default 8)")
    p.add_argument("--renders", default="4,2,2",
                   help="images per source digit in train,holdout,val (default 4,2,2)")
    p.add_argument("--val_fraction", type=float, default=0.2, help="source digits held out for val (default 0.2)")
    p.add_argument("--holdout_fraction", type=float, default=0.1,
                   help="of the remaining source digits, held out for the plateau policy (default 0.1)")
    p.add_argument("--per_class", type=int, default=0,
                   help="use only the first N source digits of each class (0: all; small runs and tests)")
    p.add_argument("--seed", type=int, default=0, help="seed of the splits and the drawing (default 0)")


def parse_renders(text):
    try:
        values = [int(v) for v in str(text).split(",")]
    except ValueError:
        values = []
    if len(values) != 3 or min(values) < 1:
        raise VggtoolError(f"--renders {text}: give three positive integers train,holdout,val (e.g. 4,2,2)")
    return dict(zip(SPLITS, values))


def split_sources(labels, val_fraction, holdout_fraction, seed):
    """{split: sorted source indices}: val stratified from all, holdout stratified from the rest."""
    rest, val = stratified_split(labels, val_fraction, seed)
    train_i, holdout_i = stratified_split(labels[rest], holdout_fraction, seed + 1)
    as_int = lambda a: np.asarray(a, dtype=np.int64)  # an empty split sorts to a float array
    rest, val, train_i, holdout_i = as_int(rest), as_int(val), as_int(train_i), as_int(holdout_i)
    return {"train": rest[train_i], "holdout": rest[holdout_i], "val": val}


def _paste_max(canvas, piece, y, x):
    """canvas = max(canvas, piece) where the piece (top-left at y, x; may overhang) covers it."""
    c = canvas.shape[0]
    h, w = piece.shape
    y0, x0, y1, x1 = max(0, y), max(0, x), min(c, y + h), min(c, x + w)
    if y0 < y1 and x0 < x1:
        np.maximum(canvas[y0:y1, x0:x1], piece[y0 - y:y1 - y, x0 - x:x1 - x], out=canvas[y0:y1, x0:x1])


def _scaled(pixels, height, width):
    out = cv2.resize(pixels, (max(1, int(width)), max(1, int(height))), interpolation=cv2.INTER_CUBIC)
    return np.clip(out, 0, 255)


def render(digit, clutter, rng, canvas=36, min_size=10, max_size=24, fragments=3, noise=8.0):
    """One canvas x canvas uint8 image of the 8x8 `digit` (values 0..255) among fragments of `clutter`
    (a list of 8x8 arrays) drawn with `rng`."""
    def side():
        return float(np.exp(rng.uniform(np.log(min_size), np.log(max_size))))

    image = np.full((canvas, canvas), rng.uniform(0, 40), np.float32)
    for _ in range(int(rng.integers(1, fragments + 1)) if fragments > 0 else 0):
        other = clutter[int(rng.integers(len(clutter)))]
        h, w = (int(v) for v in rng.integers(3, 6, size=2))
        y, x = int(rng.integers(0, 9 - h)), int(rng.integers(0, 9 - w))
        per_pixel = side() / 8  # canvas pixels per source pixel: fragments are drawn at digit scale
        piece = _scaled(other[y:y + h, x:x + w], round(h * per_pixel), round(w * per_pixel))
        piece *= rng.uniform(0.5, 1.0)
        _paste_max(image, piece, int(rng.integers(-piece.shape[0] // 2, canvas - piece.shape[0] // 2)),
                   int(rng.integers(-piece.shape[1] // 2, canvas - piece.shape[1] // 2)))
    s = int(round(side()))
    piece = _scaled(digit, s, s) * rng.uniform(0.7, 1.0)
    _paste_max(image, piece, int(rng.integers(0, canvas - s + 1)), int(rng.integers(0, canvas - s + 1)))
    image += rng.normal(0.0, noise, image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def make_scaled_digits(out, canvas=36, min_size=10, max_size=24, fragments=3, noise=8.0, renders="4,2,2",
                       val_fraction=0.2, holdout_fraction=0.1, per_class=0, seed=0):
    """Write the images and lists; returns {split: number of images}."""
    from sklearn.datasets import load_digits

    if not 8 <= min_size <= max_size <= canvas:
        raise VggtoolError(f"--min_size {min_size} / --max_size {max_size}: need 8 <= min_size <= max_size <= "
                           f"--canvas {canvas}")
    if fragments < 0 or noise < 0:
        raise VggtoolError("--fragments and --noise must not be negative")
    for flag, v in (("--val_fraction", val_fraction), ("--holdout_fraction", holdout_fraction)):
        if not 0 < v < 1:
            raise VggtoolError(f"{flag} {v}: must lie strictly between 0 and 1")
    counts = parse_renders(renders)
    digits = load_digits()
    pixels = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.float32)
    labels = digits.target.astype(int)
    keep = np.arange(len(labels))
    if per_class:
        keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)])
    sources = {split: keep[idx] for split, idx in split_sources(labels[keep], val_fraction, holdout_fraction,
                                                                 seed).items()}
    written = {}
    for split_id, split in enumerate(SPLITS):
        idx = sources[split]
        if len(idx) < 2:
            raise VggtoolError(f"the {split} split has {len(idx)} source digit(s); use more (--per_class)")
        lines = []
        for i in idx:
            clutter = [pixels[j] for j in idx if j != i]
            for r in range(counts[split]):
                rng = np.random.default_rng([seed, split_id, int(i), r])
                image = render(pixels[i], clutter, rng, canvas, min_size, max_size, fragments, noise)
                name = f"images/{split}/{labels[i]}/{i:04d}_{r}.png"
                os.makedirs(os.path.join(out, os.path.dirname(name)), exist_ok=True)
                if not cv2.imwrite(os.path.join(out, name), image):
                    raise VggtoolError(f"cannot write {os.path.join(out, name)}")
                lines.append(f"{name} {labels[i]}\n")
        if split == "train":
            lines = [lines[k] for k in np.random.default_rng([seed, 99]).permutation(len(lines))]
        with open(os.path.join(out, f"{split}.txt"), "w", encoding="utf-8") as f:
            f.writelines(lines)
        written[split] = len(lines)
    return written


def run(args):
    from vggtool.errors import VggtoolError
    from vggtool.io.files import check_output_path

    check_output_path(args.out, "output folder", folder=True)
    if args.seed < 0:
        raise VggtoolError(f"--seed must be a non-negative integer, got {args.seed}")
    written = make_scaled_digits(args.out, args.canvas, args.min_size, args.max_size, args.fragments, args.noise,
                                 args.renders, args.val_fraction, args.holdout_fraction, args.per_class,
                                 args.seed)
    print(f"Wrote {sum(written.values())} images ({args.canvas}x{args.canvas} PNG) to {args.out}: "
          + ", ".join(f"{split}.txt {n}" for split, n in written.items()))
    return 0
