"""`vggtool plot LOG --out curve.png`: training loss, test outputs and learning rate against iterations,
read from a training log in Caffe's format (what `vggtool train` writes to stderr or --log)."""
import math
import os

from ..errors import VggtoolError
from ..io.files import check_output_path
from ..solvers.parse_log import parse_log

HELP = "plot train loss, test outputs and the learning rate from a training log"


def add_arguments(parser):
    parser.add_argument("log", help="training log (stderr of `vggtool train`, or its --log file)")
    parser.add_argument("--out", required=True, help="image to write (.png, .pdf, .svg)")
    parser.add_argument("--title", default=None, help="figure title (default: the log's file name)")


def _series(rows, key):
    pts = [(r["NumIters"], r[key]) for r in rows if key in r and not math.isnan(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def image_format(path, flag="--out"):
    """The matplotlib format named by the extension of `path` (png when there is none)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ext = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    supported = FigureCanvasAgg(Figure()).get_supported_filetypes()
    if ext not in supported:
        raise VggtoolError(f"{flag} {path}: unsupported image type '.{ext}' (use one of "
                           f"{', '.join('.' + e for e in sorted(supported))})")
    return ext


def run(args):
    if not os.path.exists(args.log):
        raise VggtoolError(f"{args.log}: log file not found")
    if os.path.isdir(args.log):
        raise VggtoolError(f"{args.log}: is a folder, not a training log")
    check_output_path(args.out, "--out")
    fmt = image_format(args.out)
    train, test = parse_log(args.log)
    if not train and not test:
        raise VggtoolError(f"{args.log}: no 'Train net output' or 'Test net output' lines found "
                           "(is this a training log?)")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_test, ax_lr) = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    train_keys = [k for k in (train[0] if train else {}) if k not in ("NumIters", "LearningRate")]
    for key in train_keys:
        ax_loss.plot(*_series(train, key), label=f"train {key}")
    test_keys = sorted({k for r in test for k in r if k not in ("NumIters", "LearningRate")})
    for key in test_keys:
        target = ax_loss if "loss" in key else ax_test
        target.plot(*_series(test, key), marker="o", label=f"test {key}")
    ax_loss.set_ylabel("loss")
    ax_test.set_ylabel("test outputs")
    rows = sorted(train + test, key=lambda r: r["NumIters"])
    ax_lr.step(*_series(rows, "LearningRate"), where="post", label="learning rate")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("iterations")
    for ax in (ax_loss, ax_test, ax_lr):
        if ax.lines:
            ax.legend(loc="best")
        ax.grid(True, alpha=0.3)
    fig.suptitle(args.title or os.path.basename(args.log))
    fig.tight_layout()
    from ..atomic_files import atomic_write_bytes
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt)
    plt.close(fig)
    atomic_write_bytes(args.out, buf.getvalue())
    print(f"wrote {args.out}: {len(train)} train and {len(test)} test point(s)")
    return 0
