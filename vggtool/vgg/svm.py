"""Linear SVMs on extracted features and the benchmarks' metrics (paper Appendix B).

One-vs-rest linear SVMs (scikit-learn's LinearSVC, squared hinge, one per class); the penalty C is chosen
from a grid on a held-out part (20%) of the training images, then the SVMs are retrained on all of them.
As in the VOC devkit's practice, a training image whose only objects of a class are `difficult` (marked
`ignore`) is left out of that class's SVM: it is neither a positive nor a negative for it.

Metrics
- Average precision (VOC), from the images ranked by decision value. Tie rule: images with equal
  decision values enter the ranking together, as one block; precision and recall are taken only after
  whole blocks (so the order of tied images never matters). `area` (VOC2010+ devkit): the area
  under the precision/recall curve with precision made monotone (at each recall, the best precision at
  that or a higher recall). `11point` (VOC2007 devkit): mean over recall levels 0, 0.1, ..., 1 of the
  best precision at a recall >= that level (0 if none). Without a rule asked for, the dataset picks it
  (ap_rule: VOC2007 -> 11point, the protocol of the paper's VOC-2007 figures; otherwise area). Images
  marked `ignore` for a class (VOC difficult-only) are left out of that class; a class with no positive
  test image has no AP and is left out of the mean.
- Mean class recall (Caltech): per class, the fraction of its test images whose highest decision value is
  that class; averaged over the classes present in the test set (compensates unequal class sizes).
"""
import warnings

import numpy as np

from ..errors import VggtoolError
from ..listargs import parse_list
from ..ranking import topk_hits

AP_METHODS = ("area", "11point")
DEFAULT_C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)


# -- metrics ------------------------------------------------------------------------------------------------
def pr_points(scores, positive):
    """(recall, precision) after each block of tied scores, best scores first."""
    scores = np.asarray(scores, np.float64)
    positive = np.asarray(positive, bool)
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], positive[order]
    block_end = np.r_[s[1:] != s[:-1], True]
    tp = np.cumsum(y)[block_end]
    fp = np.cumsum(~y)[block_end]
    return tp / max(1, positive.sum()), tp / (tp + fp)


def average_precision(scores, positive, method="area", ignore=None):
    """AP of one class (nan when there is no positive)."""
    if method not in AP_METHODS:
        raise VggtoolError(f"--ap must be one of {', '.join(AP_METHODS)}, got '{method}'")
    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    if ignore is not None:
        keep = ~np.asarray(ignore, bool)
        scores, positive = scores[keep], positive[keep]
    if not positive.any():
        return float("nan")
    recall, precision = pr_points(scores, positive)
    if method == "11point":
        return float(np.mean([precision[recall >= t].max(initial=0.0) for t in np.linspace(0, 1, 11)]))
    mrec = np.r_[0.0, recall, 1.0]
    mpre = np.r_[0.0, precision, 0.0]
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[step] - mrec[step - 1]) * mpre[step]))


def mean_average_precision(scores, targets, method="area", ignore=None):
    """(mAP over classes with positives, per-class AP array) for N x C scores and N x C 0/1 targets."""
    scores, targets = np.asarray(scores), np.asarray(targets)
    aps = np.array([average_precision(scores[:, c], targets[:, c], method,
                                      None if ignore is None else ignore[:, c]) for c in range(targets.shape[1])])
    if np.isnan(aps).all():
        raise VggtoolError("no class has a positive test image: mean AP is undefined")
    return float(np.nanmean(aps)), aps


def class_recall(scores, labels):
    """(mean class recall, {class: recall}) over the classes present in `labels`, from N x C decision
    values: an image is recalled when its class has the top value (vggtool.ranking: a tie is a miss)."""
    labels = np.asarray(labels)
    hit = topk_hits(np.asarray(scores, np.float64), labels, 1) if len(labels) else np.zeros(0, bool)
    per = {int(c): float(np.mean(hit[labels == c])) for c in np.unique(labels)}
    if not per:
        raise VggtoolError("no test images: class recall is undefined")
    return float(np.mean(list(per.values()))), per


# -- one-vs-rest linear SVMs -----------------------------------------------------------------------------------
def one_hot(labels, n_classes):
    out = np.zeros((len(labels), n_classes), np.uint8)
    out[np.arange(len(labels)), labels] = 1
    return out


class OneVsRest:
    """One LinearSVC per class; decision values X @ W.T + b. A class without positives (or without
    negatives) among the training images gets a constant -1 (or +1)."""

    def __init__(self, c, seed=0):
        self.c, self.seed, self.not_converged = float(c), seed, 0

    def fit(self, x, targets, ignore=None):
        """`ignore` (N x C bool, or None): images left out of class k's SVM (VOC difficult-only)."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.svm import LinearSVC

        targets = np.asarray(targets, bool)
        self.w = np.zeros((targets.shape[1], x.shape[1]))
        self.b = np.zeros(targets.shape[1])
        for k in range(targets.shape[1]):
            xk, y = x, targets[:, k]
            if ignore is not None and ignore[:, k].any():
                keep = ~np.asarray(ignore[:, k], bool)
                xk, y = x[keep], y[keep]
            if y.all() or not y.any():
                self.b[k] = 1.0 if y.all() else -1.0
                continue
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                svc = LinearSVC(C=self.c, dual="auto", max_iter=5000, random_state=self.seed).fit(xk, y)
            self.not_converged += any(issubclass(w.category, ConvergenceWarning) for w in caught)
            self.w[k], self.b[k] = svc.coef_[0], svc.intercept_[0]
        return self

    def decision(self, x):
        return np.asarray(x, np.float64) @ self.w.T + self.b


def parse_grid(text, flag="--c-grid"):
    """SVM C values from '0.01,0.1,1' (positive numbers); None: the default grid."""
    if text is None:
        return list(DEFAULT_C_GRID)
    return parse_list(text, flag, float, "0.01,0.1,1,10,100")


def choose_c(x_fit, t_fit, x_val, score, grid, seed=0, ignore_fit=None):
    """(best C, [(C, validation score)]): the first C of the grid with the highest score(decision values)."""
    table = [(c, score(OneVsRest(c, seed).fit(x_fit, t_fit, ignore_fit).decision(x_val))) for c in grid]
    best = max(range(len(table)), key=lambda i: (table[i][1], -i))
    return table[best][0], table


def holdout_split(n_or_labels, fraction, rng, stratified):
    """(fit, validation) index arrays: `fraction` of the images held out (per class when stratified)."""
    if not 0 < fraction < 1:
        raise VggtoolError(f"--holdout must lie strictly between 0 and 1, got {fraction}")
    if stratified:
        labels = np.asarray(n_or_labels)
        fit, val = [], []
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            k = min(len(idx) - 1, max(1, int(round(fraction * len(idx))))) if len(idx) > 1 else 0
            val.extend(idx[:k])
            fit.extend(idx[k:])
        return np.sort(fit), np.sort(val)
    idx = rng.permutation(int(n_or_labels))
    k = max(1, int(round(fraction * len(idx))))
    return np.sort(idx[k:]), np.sort(idx[:k])


# -- protocols ---------------------------------------------------------------------------------------------------
def voc_protocol(train, test, grid=None, method="area", holdout=0.2, seed=0):
    """Train on `train` (Features), choose C by validation mAP, report on `test`.
    Returns dict(c, table, map, aps, not_converged)."""
    grid = parse_grid(None) if grid is None else grid
    n_classes = _n_classes(train, test)
    t_train, t_test = _targets(train, n_classes), _targets(test, n_classes)
    if train.features.shape[1] != test.features.shape[1]:
        raise VggtoolError(f"training features are {train.features.shape[1]}-D, test features "
                           f"{test.features.shape[1]}-D: extract both with the same net, layer and scales")
    rng = np.random.default_rng(seed)
    fit, val = holdout_split(len(train.keys), holdout, rng, stratified=False)
    x = train.features.astype(np.float64)
    ignore = _ignore(train, n_classes)
    ign = ignore[val] if ignore is not None else None
    c, table = choose_c(x[fit], t_train[fit], x[val],
                        lambda s: _nan_safe_map(s, t_train[val], method, ign), grid, seed,
                        ignore[fit] if ignore is not None else None)
    model = OneVsRest(c, seed).fit(x, t_train, ignore)
    m, aps = mean_average_precision(model.decision(test.features), t_test, method, test.ignore)
    return dict(c=c, table=table, map=m, aps=aps, not_converged=model.not_converged)


def ap_rule(requested, *feature_sets):
    """(AP rule, why): `requested` (--ap) when given, else 11point for VOC2007 features, else area."""
    if requested is not None:
        if requested not in AP_METHODS:
            raise VggtoolError(f"--ap must be one of {', '.join(AP_METHODS)}, got '{requested}'")
        return requested, "as --ap asks"
    names = sorted({f.dataset for f in feature_sets if getattr(f, "dataset", None)})
    if any(n.upper() == "VOC2007" for n in names):
        return "11point", "the VOC2007 devkit's rule, from the features' dataset VOC2007"
    if names:
        return "area", f"the VOC2010+ devkit's rule, from the features' dataset {', '.join(names)}"
    return "area", "the VOC2010+ devkit's rule (the features name no dataset; --ap 11point for VOC2007)"


def _ignore(features, n_classes):
    """N x n_classes difficult-only mask (padded like _targets), or None."""
    if features.ignore is None:
        return None
    ign = np.zeros((len(features.keys), n_classes), bool)
    ign[:, :features.ignore.shape[1]] = features.ignore
    return ign


def _nan_safe_map(scores, targets, method, ignore):
    aps = [average_precision(scores[:, k], targets[:, k], method, None if ignore is None else ignore[:, k])
           for k in range(targets.shape[1])]
    aps = [a for a in aps if not np.isnan(a)]
    return float(np.mean(aps)) if aps else 0.0


def _n_classes(*sets):
    n = 0
    for s in sets:
        n = max(n, s.labels.shape[1] if s.multilabel else int(s.labels.max()) + 1)
        if s.classes is not None:
            n = max(n, len(s.classes))
    return n


def _targets(features, n_classes):
    if features.multilabel:
        t = np.zeros((len(features.labels), n_classes), np.uint8)
        t[:, :features.labels.shape[1]] = features.labels
        return t
    return one_hot(features.labels, n_classes)


def caltech_splits(labels, train_per_class, test_per_class, splits, seed):
    """Yield (train, test) index arrays: per class `train_per_class` random images for training and up to
    `test_per_class` (0: all the others) of the rest for testing."""
    if train_per_class <= 0 or test_per_class < 0 or splits <= 0:
        raise VggtoolError("--train-per-class and --splits must be positive, --test-per-class >= 0")
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    small = [f"{c} ({n})" for c, n in zip(classes, counts) if n <= train_per_class]
    if small:
        raise VggtoolError(f"--train-per-class {train_per_class}: class(es) {', '.join(small[:5])} have no image "
                           "left for testing; lower --train-per-class")
    rng = np.random.default_rng(seed)
    for _ in range(splits):
        train, test = [], []
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            train.extend(idx[:train_per_class])
            rest = idx[train_per_class:]
            test.extend(rest[:test_per_class] if test_per_class else rest)
        yield np.sort(train), np.sort(test)


def caltech_protocol(features, train_per_class=30, test_per_class=50, splits=3, grid=None, holdout=0.2,
                     seed=0):
    """Mean class recall over seeded random splits. Returns dict(recalls, mean, std (ddof 0), cs, tables)."""
    if features.multilabel:
        raise VggtoolError("the caltech protocol needs one label per image (these features are multi-label; "
                           "use --protocol voc)")
    grid = parse_grid(None) if grid is None else grid
    x, labels = features.features.astype(np.float64), np.asarray(features.labels)
    n_classes = int(labels.max()) + 1
    rng = np.random.default_rng([seed, 1])
    out = dict(recalls=[], cs=[], tables=[], n_test=[], not_converged=0)
    for train, test in caltech_splits(labels, train_per_class, test_per_class, splits, seed):
        fit, val = holdout_split(labels[train], holdout, rng, stratified=True)
        fit, val = train[fit], train[val]
        c, table = choose_c(x[fit], one_hot(labels[fit], n_classes), x[val],
                            lambda s: class_recall(s, labels[val])[0], grid, seed)
        model = OneVsRest(c, seed).fit(x[train], one_hot(labels[train], n_classes))
        recall, _ = class_recall(model.decision(x[test]), labels[test])
        out["recalls"].append(recall)
        out["cs"].append(c)
        out["tables"].append(table)
        out["n_test"].append(len(test))
        out["not_converged"] += model.not_converged
    out["mean"], out["std"] = float(np.mean(out["recalls"])), float(np.std(out["recalls"]))
    return out
