"""`vggtool fuse`: average the posteriors of several models (paper §4.3, ConvNet fusion)."""
from ..vgg import evaluate as ev
from ..io.files import check_output_path

HELP = "average the posteriors of several models' score files (.npz from vggtool test --out)"


def add_arguments(parser):
    parser.add_argument("scores", nargs="+", help="score .npz files written by `vggtool test --out`")
    parser.add_argument("--out", default=None, help="write the fused posteriors to this .npz")


def run(args):
    if args.out:
        check_output_path(args.out, "--out")
    for path in args.scores:
        p, labels, _ = ev.load_scores(path)
        print(f"{path}: " + ", ".join(ev.report_lines(p, labels)))
    posteriors, labels, keys = ev.fuse(args.scores)
    print(f"fusion of {len(args.scores)} model(s): " + ", ".join(ev.report_lines(posteriors, labels)))
    if args.out:
        ev.save_scores(args.out, posteriors, labels, keys, fused=list(args.scores))
        print(f"wrote {args.out}")
    return 0
