"""DIR/REPORT.md: the tables in the paper's layout, each row beside the paper's figure, the findings with
their verdicts, the cost of each table, the plots; and DIR/results.json with the same figures."""
import datetime
import json
import math
import os
import platform
import subprocess
from pathlib import Path

from ... import atomic_files
from . import paper, plan, plots, tables

# Paper's scale for each mini scale, for the "paper" columns.
PAPER_S = {"s36": "256", "s54": "384", "jitter": "[256;512]"}
PAPER_Q = {"s36": "256", "s54": "384", "jitter": "384"}
PAPER_QS = {"s36": "224,256,288", "s54": "352,384,416", "jitter": "256,384,512"}
COST_TAGS = [("data", "data preparation"), ("table3", "Table 3 (training its 12 rows, single-scale test)"),
             ("table4", "Table 4 (the other test scales)"), ("table5", "Table 5 (multi-crop)"),
             ("table6", "Table 6 (fusion: averages of stored posteriors)"),
             ("init", "initialisation study (its extra trainings and tests)"), ("plots", "error-against-Q sweep")]


def commit_of_checkout():
    root = Path(__file__).resolve().parents[3]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + (" (with uncommitted changes)" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _pair(paper_row):
    return ("", "") if paper_row is None else (f"{paper_row[0]:.1f}", f"{paper_row[1]:.1f}")


def _row(cells, st, paper_row):
    p1, p5 = _pair(paper_row)
    return "| " + " | ".join(cells + [st.text(0), st.text(1), p1, p5, str(st.n)]) + " |"


HEAD = ("| top-1 val. error (%) | top-5 val. error (%) | paper top-1 | paper top-5 | seeds |",
        "|---|---|---|---|---|")


def table3(fig):
    lines = ["| ConvNet config. | train (S) | test (Q) " + HEAD[0], "|---|---|---" + HEAD[1]]
    for net, scale in plan.TABLE3_ROWS:
        label, q, _ = plan.SCALES[scale]
        lines.append(_row([plan.LABEL[net], f"{label} ({PAPER_S[scale]})", f"{q} ({PAPER_Q[scale]})"],
                          fig.single(net, scale), paper.TABLE3.get((net, scale))))
    return lines


def table4(fig):
    lines = ["| ConvNet config. | train (S) | test (Q) " + HEAD[0], "|---|---|---" + HEAD[1]]
    for net, scale in plan.TABLE4_ROWS:
        label, _, qs = plan.SCALES[scale]
        lines.append(_row([plan.LABEL[net], f"{label} ({PAPER_S[scale]})",
                           f"{','.join(map(str, qs))} ({PAPER_QS[scale]})"],
                          fig.multiscale(net, scale), paper.TABLE4.get((net, scale))))
    return lines


METHOD_NAME = {"dense": "dense", "multicrop": "multi-crop", "both": "multi-crop & dense"}


def table5(fig):
    lines = ["| ConvNet config. | evaluation method " + HEAD[0], "|---|---" + HEAD[1]]
    for net in ("vgg_d", "vgg_e"):
        for method in plan.METHODS:
            lines.append(_row([plan.LABEL[net], METHOD_NAME[method]], fig.multiscale(net, "jitter", method),
                              paper.TABLE5.get((net, method))))
    return lines


def table6(fig):
    lines = ["| combined ConvNet models " + HEAD[0], "|---" + HEAD[1]]
    sub = ", ".join(f"({plan.LABEL[n]}/{plan.SCALES[s][0]}/{','.join(map(str, plan.SCALES[s][2]))})"
                    for n, s in plan.SUBMISSION7)
    lines.append(_row([f"7 nets as the ILSVRC submission, dense: {sub}"], fig.fusion(plan.SUBMISSION7, "dense"),
                      paper.TABLE6["submission7"]))
    pair = ", ".join(f"({plan.LABEL[n]}/[36;72]/36,54,72)" for n, _ in plan.FUSION_PAIR)
    for method in plan.METHODS:
        lines.append(_row([f"{pair}, {METHOD_NAME[method]}"], fig.fusion(list(plan.FUSION_PAIR), method),
                          paper.TABLE6[("de", method)]))
    return lines


def init_table(fig):
    lines = ["| ConvNet config. | initialisation | train (S) / test (Q) " + HEAD[0], "|---|---|---" + HEAD[1]]
    for net, scale, init in plan.INIT_ROWS:
        lines.append(_row([plan.LABEL[net], plan.INITS[init], "36 / 36"], fig.single(net, scale, init), None))
    return lines


def findings_table(fig):
    lines = ["| finding (paper) | paper top-1 | here: top-1 difference ± SE (seeds) | verdict |", "|---|---|---|---|"]
    notes = []
    for claim, paper_fig, worse, better, paired, no_gain, reason in tables.findings(fig):
        d, se, n = tables.compare(worse, better, paired)
        v = tables.verdict(d, se, n, no_gain)
        here = "n/a" if math.isnan(d) else (f"{d:+.1f}" + ("" if math.isnan(se) else f" ± {se:.1f}") + f" ({n})")
        lines.append(f"| {claim} | {paper_fig} | {here} | {v} |")
        if v.startswith(("not reproduced", "contradicted", "same direction")):
            notes.append(f"- *{claim}* — {v}. Why we think so (a hypothesis, not tested here): {reason}.")
    return lines, notes


def _cost_lines(run):
    by_tag = run.costs.by_tag()
    total_w = sum(w for w, _ in by_tag.values())
    total_c = sum(c for _, c in by_tag.values())
    lines = ["| part | wall (s) | CPU (s) |", "|---|---|---|"]
    for tag, name in COST_TAGS:
        w, c = by_tag.get(tag, (0.0, 0.0))
        lines.append(f"| {name} | {w:.0f} | {c:.0f} |")
    lines.append(f"| **total** | **{total_w:.0f}** | **{total_c:.0f}** |")
    return lines, total_w, total_c


def stuck_cells(run):
    """Trained cells whose final training loss is still near chance (ln 10 = 2.303 for 10 classes)."""
    return [r for r in run.records.values() if r.get("status") == "ok" and r.get("final_loss") is not None
            and r["final_loss"] > 0.95 * math.log(10)]


def _elapsed_text(run):
    sessions = getattr(run, "sessions", [])
    total = sum(x["elapsed_s"] for x in sessions)
    jobs = sorted({x["jobs"] for x in sessions})
    return (f"{total:.0f} s elapsed ({total / 60:.1f} min) in {len(sessions)} session(s), "
            + ("one cell at a time" if jobs == [1] else f"{'/'.join(map(str, jobs))} cell(s) at a time"))


def header(run, wall, cpu):
    b, counts = run.budget, run.counts
    failed = [r for r in run.records.values() if r.get("status") != "ok"]
    stuck = stuck_cells(run)
    return [
        "# The paper's findings at laptop scale (`vggtool reproduce`)",
        "",
        f"- command: `{run.command}`",
        f"- started {run.started['time']} at vggtool commit `{run.started['commit']}`; this report written "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC at `{commit_of_checkout()}`; "
        f"{platform.machine()} with {os.cpu_count()} CPU(s), Python {platform.python_version()}, "
        f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}",
        f"- run size `{b.name}`: {run.seeds} seed(s) per cell, {b.iterations} SGD iterations of batch 32 per cell, "
        f"held-out test every {b.test_interval}; data: {counts['train']} training, {counts['holdout']} held-out "
        f"and {counts['val']} validation images (renders per source digit {b.renders}"
        + (f", the first {b.per_class} digits of each class" if b.per_class else ", all 1,797 source digits") + ")",
        f"- cost: {_elapsed_text(run)}; the steps took {wall:.0f} s wall and {cpu:.0f} s CPU in all "
        "(summed over steps that ran at once; per table below)"
        + (f"; {len(failed)} cell(s) did not train: " + ", ".join(f"{r['cell']} ({r['status']})" for r in failed)
           if failed else "; every cell trained")
        + (f"; **{len(stuck)} of {len(run.records)} cell(s) ended at chance level** (final training loss above "
           "0.95 ln 10): " + ", ".join(r["cell"] for r in stuck) if stuck else ""),
        "",
        "Errors are on the validation split (source digits never seen in training), in %, mean ± sample std over "
        "seeds; the paper's figures (ILSVRC-2012 val) are beside them for reference only: the data, the nets' "
        "widths and the budget differ, so the comparison that matters is between rows. Scales are written as "
        "here (paper).",
        "",
    ]


def findings_section(fig, run):
    finding_lines, notes = findings_table(fig)
    stuck = stuck_cells(run)
    if stuck:  # a verdict between nets that learned nothing is noise, whatever its sign
        notes.append(f"- {len(stuck)} of {len(run.records)} trained cells ended at chance level (listed above); "
                     "every verdict that involves them compares nets that did not learn, so it is no evidence for "
                     "or against the paper's finding.")
    return [
        "## Findings",
        "",
        "Rule, fixed before any run: d = top-1 error of the side the paper finds worse minus the other side's; "
        "SE its standard error over seeds (paired when both sides are the same models evaluated two ways); "
        "*reproduced* when d > 2 SE, *same direction, within noise* when 0 < d ≤ 2 SE, *not reproduced* when "
        "d ≤ 0 (*contradicted* below −2 SE). For 'does not help' findings: reproduced unless the change helps "
        "by more than 2 SE.",
        "",
        *finding_lines,
        "",
        *(["Where a finding did not reproduce, and why we think so:", "", *notes, ""] if notes else []),
    ]


def tables_section(fig):
    return [
        "## Table 3: single test scale", "", *table3(fig), "",
        "## Table 4: multiple test scales", "", *table4(fig), "",
        "## Table 5: dense and multi-crop evaluation (S in [36;72], Q in {36, 54, 72})", "", *table5(fig), "",
        "## Table 6: fusion",
        "",
        "Posteriors averaged over the models of the same seed. The pair is the paper's (D and E, jittered S), "
        "fixed in advance rather than picked by validation error.",
        "",
        *table6(fig),
        "",
        "Table 7 (comparison with other ILSVRC entries) has no counterpart: the other methods are not run.",
        "",
        "## Initialisation (§3.1)",
        "",
        "The paper starts the deeper nets from A and notes that random initialisation by Glorot's procedure "
        "without pre-training works too; it gives no figures. Here the random start is He's (Glorot's procedure "
        "with a ReLU's factor 2, Caffe's `msra`), the same as A's.",
        "",
        *init_table(fig),
        "",
    ]


def figures_and_cost(cost_lines):
    return [
        "## Figures", "",
        "![training curves](training_curves.png)", "",
        "![error against depth](error_vs_depth.png)", "",
        "![error against test scale](error_vs_scale.png)", "",
        "## Cost", "",
        *cost_lines,
        "",
        "CPU seconds are this process's own, so on a shared machine they approximate the wall time the same work "
        "takes on an idle core (one BLAS thread).",
        "",
    ]


DIFFERENCES = [
    "## How the data, nets and recipe differ from the paper",
    "",
    "- Data: `data_prep scaled_digits` — scikit-learn's 8×8 digits, each drawn at a random size of 10 to "
    "24 pixels (log-uniform) and position on a 36×36 canvas with 1–3 fragments of other digits and "
    "Gaussian noise; train / held-out / validation split by source digit. 10 classes, so top-5 error is "
    "small.",
    "- Nets: `netdefs/mini/` — Table 1's layers with every width divided by 8 (conv 8…64, FC 512), one "
    "grey channel, a 32×32 crop (pool5 is 1×1 instead of 7×7).",
    "- Recipe (one for every cell, `solver/mini/`): SGD, momentum 0.9, weight decay 5·10⁻⁴, batch 32, "
    "lr 3·10⁻³, ÷10 after 3 held-out tests without a better accuracy (at most 3 times, and only once the "
    "best held-out accuracy has passed 0.2), random crops. The plateau policy watches a held-out part of "
    "the training digits, not the validation set.",
    "- Five departures, the same for every net, each chosen on training loss only. Before any full run, "
    "on mini-A: no dropout (with dropout 0.5 on the 512-wide FC layers mini-A stays at chance for 1,200 "
    "iterations at lr 10⁻²); He (`msra`) weights for A and A-LRN instead of N(0, 0.1²) (which starts "
    "overconfident, loss 5.8, and kills the ReLUs: A stays at chance) or Caffe's xavier (loss still 2.30 "
    "after 600 iterations); no flips (a mirrored digit is another glyph; training loss 1.54 against 1.94 "
    "with flips after 1,000 iterations). After a first run at the paper's lr 10⁻² (D and E without "
    "pre-training, and 7 of the 18 cells of D and E from A, ended at chance, each with its rate already "
    "cut by the plateau policy): lr 3·10⁻³ (at 10⁻² D from He weights stays at loss 2.30 for 1,500 "
    "iterations at a fixed rate; at 3·10⁻³ it reaches 0.98, E 1.61, A 0.90) and no drop before the "
    "held-out accuracy passes 0.2 (twice chance). The deeper nets' layers not taken from A start from He "
    "weights too (from N(0, 0.1²), as in the paper, D and E from A ended at chance: loss 2.304 after 1,200 "
    "iterations). See README section 9, `tools/make_netdefs.py` (MINI_SOLVER) and "
    "`vggtool/vgg/reproduction/plan.py` (INITS).",
    "- Dense evaluation's geometry: the nets' stride is 32 (five poolings) as in the paper, but the window is "
    "32 pixels instead of 224, so neighbouring windows of the score map do not overlap, and at a Q that is not "
    "a multiple of 32 the outer windows lie mostly outside the image (at Q = 36 three of the four; Caffe's "
    "ceil-mode pooling keeps them). The score map is averaged over all its windows, as in the paper, where "
    "every window lies inside the image (Q = 256…512 for a 224 window). Multi-crop evaluation takes its crops "
    "inside the image and is not affected.",
    "- Every training scale trains for the same number of iterations from the same start (the paper "
    "fine-tuned S 384 from S 256 and jittered S from S 384 to save time; here the comparison is kept "
    "even). No colour shift (grey images).",
    "",
]


def write_results(run, fig, path):
    results = {"budget": run.budget.as_dict(), "seeds": run.seeds, "records": run.records,
               "costs": run.costs.steps,
               "findings": [{"claim": c, "paper": p, "d_se_n": tables.compare(w, bt, pr),
                             "verdict": tables.verdict(*tables.compare(w, bt, pr), ng)}
                            for c, p, w, bt, pr, ng, _ in tables.findings(fig)]}
    atomic_files.atomic_write_bytes(str(path), json.dumps(results, indent=1).encode())


def write(run):
    """DIR/REPORT.md, its plots and DIR/results.json; returns the report's path."""
    out = run.out
    fig = tables.Figures(run.posteriors, run.val.labels, range(1, run.seeds + 1))
    plots.training_curves(run, out / "training_curves.png")
    plots.error_vs_depth(fig, out / "error_vs_depth.png")
    plots.error_vs_scale(fig, out / "error_vs_scale.png")
    cost_lines, wall, cpu = _cost_lines(run)
    text = (header(run, wall, cpu) + findings_section(fig, run) + tables_section(fig) + figures_and_cost(cost_lines)
            + DIFFERENCES)
    path = out / "REPORT.md"
    atomic_files.atomic_write_bytes(str(path), "\n".join(text).encode())
    write_results(run, fig, out / "results.json")
    return path
