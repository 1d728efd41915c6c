"""The report's figures (PNG, matplotlib, written atomically): training curves, error against depth, error
against the test scale."""
import io
import math

import numpy as np

from ... import atomic_files
from ...solvers.parse_log import parse_log
from . import plan


def _save(fig, path):
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_files.atomic_write_bytes(str(path), buf.getvalue())


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _mean_curve(logs, kind, key):
    """(iterations, mean over logs) of a logged output, on the iterations every log has."""
    series = []
    for log in logs:
        rows = parse_log(str(log))[0 if kind == "train" else 1]
        series.append({r["NumIters"]: r[key] for r in rows if key in r and not math.isnan(r[key])})
    common = sorted(set.intersection(*(set(s) for s in series))) if series else []
    return common, [float(np.mean([s[i] for s in series])) for i in common]


def training_curves(run, path):
    """Training loss and held-out top-1 error against iterations, S 36, mean over seeds, one line per net."""
    plt = _pyplot()
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(11, 4.2))
    for net in plan.NETS:
        init = plan.default_init(net)
        logs = [run.log(plan.Cell(net, "s36", init, s)) for s in range(1, run.seeds + 1)]
        logs = [log for log in logs if log.exists()]
        if not logs:
            continue
        its, loss = _mean_curve(logs, "train", "loss")
        ax_loss.plot(its, loss, label=plan.LABEL[net])
        its, acc = _mean_curve(logs, "test", "accuracy")
        ax_err.plot(its, [100 * (1 - a) for a in acc], marker="o", label=plan.LABEL[net])
    ax_loss.set(xlabel="iteration", ylabel="training loss (smoothed)", title="training loss, S = 36")
    ax_err.set(xlabel="iteration", ylabel="held-out top-1 error (%)", title="held-out error, S = 36 (Q = 36)")
    for ax in (ax_loss, ax_err):
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.suptitle(f"mean over {run.seeds} seed(s); the plateau policy watches the held-out error")
    _save(fig, path)


def error_vs_depth(fig_data, path):
    """Top-1 error against weight layers: Table 3 at S 36 (all six nets) and Table 4 jittered (C, D, E)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    rows = [(net, fig_data.single(net, "s36")) for net in plan.NETS]
    xs = [plan.DEPTH[net] + (0.25 if net == "vgg_a_lrn" else 0) for net, _ in rows]
    ax.errorbar(xs, [st.mean() for _, st in rows], yerr=[0 if math.isnan(st.std()) else st.std() for _, st in rows],
                marker="o", capsize=3, label="S 36, Q 36 (Table 3)")
    for x, (net, st) in zip(xs, rows):
        ax.annotate(plan.LABEL[net], (x, st.mean()), textcoords="offset points", xytext=(4, 4), fontsize=8)
    jit = [(net, fig_data.multiscale(net, "jitter")) for net in ("vgg_c", "vgg_d", "vgg_e")]
    ax.errorbar([plan.DEPTH[n] + 0.15 for n, _ in jit], [st.mean() for _, st in jit],
                yerr=[0 if math.isnan(st.std()) else st.std() for _, st in jit], marker="s", capsize=3,
                label="S [36;72], Q 36,54,72 (Table 4)")
    ax.set(xlabel="weight layers", ylabel="top-1 validation error (%)", title="error against depth")
    ax.grid(True, alpha=0.3)
    ax.legend()
    _save(fig, path)


def error_vs_scale(fig_data, path):
    """Top-1 error of D against the single test scale Q, one line per training scale."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for scale, (label, _, _) in plan.SCALES.items():
        stats = [fig_data.single(plan.SWEEP_NET, scale, q=q) for q in plan.SWEEP]
        ax.errorbar(plan.SWEEP, [st.mean() for st in stats],
                    yerr=[0 if math.isnan(st.std()) else st.std() for st in stats], marker="o", capsize=3,
                    label=f"trained at S {label}")
    ax.set(xlabel="test scale Q (smallest side)", ylabel="top-1 validation error (%)",
           title=f"{plan.LABEL[plan.SWEEP_NET]}: error against the test scale (dense, flips)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    _save(fig, path)
