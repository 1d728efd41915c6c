"""`vggtool svm`: linear SVMs on extracted features; VOC mean AP or Caltech mean class recall."""
import numpy as np

from ..errors import VggtoolError

HELP = "train one-vs-rest linear SVMs on features (.npz from vggtool extract) and report mAP / class recall"


def add_arguments(parser):
    parser.add_argument("--features", required=True, help="features .npz; several comma-separated files of "
                        "the same images are stacked (late fusion of nets)")
    parser.add_argument("--test-features", default=None, help="voc: test-set features .npz (same stacking)")
    parser.add_argument("--protocol", default="voc", choices=("voc", "caltech"),
                        help="voc: train on --features, mean AP on --test-features; caltech: random splits "
                        "of --features, mean class recall (default voc)")
    parser.add_argument("--ap", default=None, choices=("area", "11point"), help="voc: AP as the area under "
                        "the monotone precision/recall curve (VOC2010+) or VOC2007's 11-point (default: "
                        "11point for features of a VOC2007 folder, area otherwise)")
    parser.add_argument("--train-per-class", type=int, default=30, help="caltech: training images per class")
    parser.add_argument("--test-per-class", type=int, default=50, help="caltech: at most this many test images "
                        "per class (0: all the others; default 50)")
    parser.add_argument("--splits", type=int, default=3, help="caltech: random splits (default 3)")
    parser.add_argument("--c-grid", default=None, help="SVM C values to choose from (default 0.01,0.1,1,10,100)")
    parser.add_argument("--holdout", type=float, default=0.2, help="fraction of the training images held out "
                        "to choose C (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the splits (default 0)")


def _pct(x):
    return f"{100 * x:.2f}%"


def run(args):
    from ..vgg import extract as fx, svm

    grid = svm.parse_grid(args.c_grid)
    train = fx.load_features(args.features)
    kind = "multi-label" if train.multilabel else "single-label"
    print(f"features: {len(train.keys)} images x {train.features.shape[1]} ({' + '.join(train.sources)}), {kind}")
    if args.protocol == "caltech":
        if args.test_features:
            raise VggtoolError("--test-features is for --protocol voc; caltech splits --features itself")
        r = svm.caltech_protocol(train, args.train_per_class, args.test_per_class, args.splits, grid,
                                 args.holdout, args.seed)
        for i, (rec, c, n) in enumerate(zip(r["recalls"], r["cs"], r["n_test"]), 1):
            print(f"split {i}/{args.splits}: C = {c:g}, mean class recall = {_pct(rec)} ({n} test images)")
        print(f"mean class recall = {100 * r['mean']:.2f} +- {100 * r['std']:.2f} % over {args.splits} splits "
              f"({args.train_per_class} train / {args.test_per_class or 'all other'} test per class, seed "
              f"{args.seed})")
    else:
        if not args.test_features:
            raise VggtoolError("--protocol voc needs --test-features (the test set's features .npz)")
        test = fx.load_features(args.test_features)
        method, why = svm.ap_rule(args.ap, test, train)
        print(f"AP rule: {'11-point' if method == '11point' else 'area'} ({why})")
        r = svm.voc_protocol(train, test, grid, method, args.holdout, args.seed)
        print("validation mAP per C: " + ", ".join(f"C={c:g}: {_pct(m)}" for c, m in r["table"]))
        print(f"C = {r['c']:g}")
        names = test.classes if test.classes is not None else train.classes
        for k, ap in enumerate(r["aps"]):
            name = names[k] if names is not None and k < len(names) else str(k)
            print(f"AP {name} = {'n/a (no positive)' if np.isnan(ap) else _pct(ap)}")
        what = "area under the P/R curve, VOC2010+" if method == "area" else "11-point, VOC2007"
        print(f"mAP = {_pct(r['map'])} ({what}; {len(test.keys)} test images)")
    if r["not_converged"]:
        print(f"note: {r['not_converged']} SVM fit(s) stopped at the iteration limit (liblinear)")
    return 0
