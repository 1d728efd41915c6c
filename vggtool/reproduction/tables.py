"""The tables' figures from the stored posteriors: per cell and seed, top-1/top-5 error; per row, mean and
std over seeds; and the findings, each a comparison with a verdict by one rule fixed in advance:

  difference d = mean error of the side the paper says is worse minus the other side's, with its standard
  error SE (paired over seeds when both sides are the same trained models evaluated two ways, else
  unpaired); "reproduced" when d > 2 SE, "same direction, within noise" when 0 < d <= 2 SE, "not
  reproduced" when d <= 0 (and "contradicted" when d < -2 SE). For "X does not help" findings the
  test is reversed: reproduced unless X is better by more than 2 SE. One seed: no verdict."""
import math
from dataclasses import dataclass

import numpy as np

from .. import evaluate
from . import plan


def errors(posteriors, labels):
    """(top-1, top-5) error in % by vggtool.evaluate.topk_error."""
    return (100 * evaluate.topk_error(posteriors, labels, 1), 100 * evaluate.topk_error(posteriors, labels, 5))


@dataclass
class Stat:
    values: list  # one (top-1, top-5) per seed that trained

    @property
    def n(self):
        return len(self.values)

    def mean(self, k=0):
        return float(np.mean([v[k] for v in self.values])) if self.values else math.nan

    def std(self, k=0):
        return float(np.std([v[k] for v in self.values], ddof=1)) if self.n > 1 else math.nan

    def text(self, k=0):
        if not self.values:
            return "n/a"
        if self.n == 1:
            return f"{self.mean(k):.1f}"
        return f"{self.mean(k):.1f} ± {self.std(k):.1f}"


class Figures:
    """Posterior lookups and averages over the run's stored scores. `posteriors(cell, method, q)` returns
    (N, classes) or None when that cell did not train."""

    def __init__(self, posteriors, labels, seeds):
        self.posteriors = posteriors
        self.labels = labels
        self.seeds = list(seeds)

    def cell(self, net, scale, init, seed):
        return plan.Cell(net, scale, init, seed)

    def multi(self, cell, qs, method):
        """Posteriors averaged over the scales qs (and over dense and multi-crop for 'both')."""
        methods = ("dense", "multicrop") if method == "both" else (method,)
        per_method = []
        for m in methods:
            ps = [self.posteriors(cell, m, q) for q in qs]
            if any(p is None for p in ps):
                return None
            per_method.append(np.mean(ps, axis=0))
        return np.mean(per_method, axis=0)

    def stat(self, fn):
        """Stat over seeds of errors(fn(seed)), skipping seeds whose posteriors are missing."""
        values = []
        for seed in self.seeds:
            p = fn(seed)
            if p is not None:
                values.append(errors(p, self.labels))
        return Stat(values)

    # -- the tables' cells -----------------------------------------------------------------------------
    def single(self, net, scale, init=None, q=None):
        init = init or plan.default_init(net)
        q = q or plan.SCALES[scale][1]
        return self.stat(lambda s: self.multi(self.cell(net, scale, init, s), (q,), "dense"))

    def multiscale(self, net, scale, method="dense"):
        qs = plan.SCALES[scale][2]
        return self.stat(lambda s: self.multi(self.cell(net, scale, plan.default_init(net), s), qs, method))

    def fusion(self, members, method):
        """Posteriors of `members` [(net, scale)], each averaged over its Table 4 scales, then over members."""
        def fused(seed):
            ps = [self.multi(self.cell(net, scale, plan.default_init(net), seed), plan.SCALES[scale][2], method)
                  for net, scale in members]
            return None if any(p is None for p in ps) else np.mean(ps, axis=0)
        return self.stat(fused)


# -- findings -------------------------------------------------------------------------------------------
def compare(worse, better, paired):
    """(d, SE, n) for top-1 error: d = mean(worse) - mean(better)."""
    if paired:
        n = min(worse.n, better.n)
        diffs = [w[0] - b[0] for w, b in zip(worse.values[:n], better.values[:n])]
        if n == 0:
            return math.nan, math.nan, 0
        se = float(np.std(diffs, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
        return float(np.mean(diffs)), se, n
    n = min(worse.n, better.n)
    d = worse.mean() - better.mean()
    se = math.sqrt(worse.std() ** 2 / worse.n + better.std() ** 2 / better.n) if n > 1 else math.nan
    return d, se, n


def verdict(d, se, n, no_gain=False):
    """The rule of the module docstring. `no_gain`: the claim is that `better` is NOT better than `worse`
    (d here is then mean(claimed-no-better) - mean(reference))."""
    if n == 0 or math.isnan(d):
        return "no data"
    if n < 2 or math.isnan(se):
        return "one seed: no verdict"
    if no_gain:
        return "reproduced (no gain)" if d >= -2 * se else "not reproduced (it helps here)"
    if d > 2 * se:
        return "reproduced"
    if d > 0:
        return "same direction, within noise"
    return "contradicted" if d < -2 * se else "not reproduced"
