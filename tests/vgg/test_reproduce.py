"""`vggtool reproduce` and its parts: the scaled-digits data, the mini nets of Table 1, batched dense scoring
against vggtool.vgg.evaluate's per-image protocol, the findings' rule, and the --quick run end to end."""
import json
import math
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from data_prep.cli import main as data_prep
from data_prep.scaled_digits import make_scaled_digits, render
from vggtool import Net
from vggtool.vgg import evaluate
from vggtool.data.transform import isotropic_resize
from vggtool.io.prototxt import read_net_param
from vggtool.vgg.reproduction import plan, scoring, tables
from vggtool.proto import caffe_pb2
from vggtool.vgg.reproduction.run import score_plan

from repo_paths import REPO  # noqa: E402
ROOT = REPO

# Table 1's pattern written out independently of tools/make_netdefs.py, widths / 8 (see netdefs/mini).
MINI_TABLE1 = {
    "vgg_a": "8 | 16 | 32,32 | 64,64 | 64,64",
    "vgg_a_lrn": "8 | 16 | 32,32 | 64,64 | 64,64",
    "vgg_b": "8,8 | 16,16 | 32,32 | 64,64 | 64,64",
    "vgg_c": "8,8 | 16,16 | 32,32,1x1-32 | 64,64,1x1-64 | 64,64,1x1-64",
    "vgg_d": "8,8 | 16,16 | 32,32,32 | 64,64,64 | 64,64,64",
    "vgg_e": "8,8 | 16,16 | 32,32,32,32 | 64,64,64,64 | 64,64,64,64",
}


def _sources(listing):
    return {line.split()[0].split("/")[-1].split("_")[0] for line in listing.read_text().splitlines()}


def test_scaled_digits_deterministic_and_split_by_source(tmp_path):
    a = make_scaled_digits(str(tmp_path / "a"), per_class=12, renders="2,1,1")
    b = make_scaled_digits(str(tmp_path / "b"), per_class=12, renders="3,1,1")
    assert a == {"train": 2 * sum(1 for _ in (tmp_path / "a" / "train.txt").open()) // 2, "holdout": a["holdout"],
                 "val": a["val"]}
    splits = {s: _sources(tmp_path / "a" / f"{s}.txt") for s in ("train", "holdout", "val")}
    assert not (splits["train"] & splits["val"]) and not (splits["train"] & splits["holdout"])
    assert not (splits["holdout"] & splits["val"])
    assert sum(len(v) for v in splits.values()) == 120  # 12 digits x 10 classes, each in exactly one split
    # an image depends on (seed, split, source, render) only: more renders leave the first ones unchanged
    for line in (tmp_path / "a" / "val.txt").read_text().splitlines():
        name = line.split()[0]
        x = cv2.imread(str(tmp_path / "a" / name), cv2.IMREAD_UNCHANGED)
        y = cv2.imread(str(tmp_path / "b" / name), cv2.IMREAD_UNCHANGED)
        assert x.shape == (36, 36) and x.dtype == np.uint8
        assert np.array_equal(x, y)
    assert b["train"] == 3 * len(splits["train"])


def test_render_places_a_digit_of_the_drawn_size():
    digit = np.zeros((8, 8), np.float32)
    digit[:, 3:5] = 255.0  # a vertical bar over the whole 8x8 height
    for seed in range(20):
        image = render(digit, [digit], np.random.default_rng(seed), canvas=36, min_size=10, max_size=24,
                       fragments=0, noise=0.0)
        ys, xs = np.nonzero(image > 120)
        height = ys.max() - ys.min() + 1
        assert 9 <= height <= 25  # the bar spans the digit's side, 10..24 (+-1 for interpolation)


def test_scaled_digits_bad_options_are_clear_errors(tmp_path, capsys):
    assert data_prep(["scaled_digits", str(tmp_path / "x"), "--renders", "1,2"]) == 1
    assert "--renders 1,2" in capsys.readouterr().err
    assert data_prep(["scaled_digits", str(tmp_path / "x"), "--max_size", "40"]) == 1
    assert "--max_size 40" in capsys.readouterr().err


def _expected_layers(config):
    out = []
    for block, convs in enumerate(MINI_TABLE1[config].split(" | "), start=1):
        for i, conv in enumerate(convs.split(","), start=1):
            kernel, width = (1, int(conv[4:])) if conv.startswith("1x1-") else (3, int(conv))
            out.append((f"conv{block}_{i}", width, kernel, (kernel - 1) // 2))
    return out


@pytest.mark.parametrize("config", sorted(MINI_TABLE1))
def test_mini_nets_follow_table1(config):
    param = read_net_param(os.path.join(ROOT, "netdefs", "mini", config, "deploy.prototxt"))
    convs = [(l.name, l.convolution_param.num_output, l.convolution_param.kernel_size[0],
              l.convolution_param.pad[0] if l.convolution_param.pad else 0)
             for l in param.layer if l.type == "Convolution"]
    assert convs == _expected_layers(config)
    assert [l.name for l in param.layer if l.type == "Pooling"] == [f"pool{i}" for i in range(1, 6)]
    assert [l.type for l in param.layer if l.type == "LRN"] == (["LRN"] if config == "vgg_a_lrn" else [])
    net = Net(param, phase="TEST")
    assert net.blobs["pool5"].shape == (1, 64, 1, 1)
    assert net.blobs["prob"].shape == (1, 10)
    assert sum(1 for l in net.layers if l.type in ("Convolution", "InnerProduct")) == plan.DEPTH[config]


def test_mini_files_are_the_generators_output(tmp_path):
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_netdefs.py"), "--out", str(tmp_path / "n"),
                    "--solver-out", str(tmp_path / "s")], check=True, capture_output=True)
    for config in MINI_TABLE1:
        for name in ("deploy.prototxt", "train_val.prototxt", "train_val_msra.prototxt"):
            with open(tmp_path / "n" / "mini" / config / name) as a, \
                    open(os.path.join(ROOT, "netdefs", "mini", config, name)) as b:
                assert a.read() == b.read(), (config, name)
        with open(tmp_path / "s" / "mini" / f"{config}.prototxt") as a, \
                open(os.path.join(ROOT, "solver", "mini", f"{config}.prototxt")) as b:
            assert a.read() == b.read(), config


def test_the_recipe_trains_a_from_he_weights_without_dropout_or_flips():
    # At the mini widths N(0, 0.1^2) and dropout 0.5 each kept mini-A at chance, and xavier and flips slowed
    # it (README section 9): the nets trained from scratch start from He (msra) weights, no mini net has a
    # Dropout layer, and no data layer mirrors.
    assert plan.default_init("vgg_a") == plan.default_init("vgg_a_lrn") == "msra"
    assert all(plan.default_init(n) == "from_a" for n in plan.NETS if n not in ("vgg_a", "vgg_a_lrn"))
    for config in MINI_TABLE1:
        for name in ("deploy.prototxt", "train_val.prototxt", "train_val_msra.prototxt"):
            param = read_net_param(os.path.join(ROOT, "netdefs", "mini", config, name))
            assert not [l.name for l in param.layer if l.type == "Dropout"], (config, name)
            assert not [l.name for l in param.layer if l.type == "Data" and l.transform_param.mirror], (config, name)
        he = read_net_param(os.path.join(ROOT, "netdefs", "mini", config, "train_val_msra.prototxt"))
        fillers = [l.convolution_param.weight_filler.type if l.type == "Convolution" else
                   l.inner_product_param.weight_filler.type
                   for l in he.layer if l.type in ("Convolution", "InnerProduct")]
        assert fillers and set(fillers) == {"msra"}, config


def test_test_flips_follow_the_training_flips():
    # The paper averages test posteriors over flips because it trains on flipped images; a test that flips
    # what the net never saw flipped averages in posteriors of other glyphs.
    for config in MINI_TABLE1:
        param = read_net_param(os.path.join(ROOT, "netdefs", "mini", config, "train_val_msra.prototxt"))
        mirrors = {l.transform_param.mirror for l in param.layer
                   if l.type == "Data" and l.include[0].phase == caffe_pb2.TRAIN}
        assert mirrors == {scoring.FLIP}, config


@pytest.mark.parametrize("flip", [False, True])
def test_batched_dense_equals_the_per_image_protocol(tmp_path, rng, flip):
    deploy = os.path.join(ROOT, "netdefs", "mini", "vgg_a", "deploy.prototxt")
    net = Net(deploy, phase="TEST", seed=3)
    for blobs in net.params.values():
        w = blobs[0]
        fan_in = w.count // w.shape[0]
        w.data = rng.standard_normal(w.shape).astype(np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        blobs[1].data = rng.uniform(-0.1, 0.1, blobs[1].shape).astype(np.float32)
    weights = str(tmp_path / "w.caffemodel")
    net.save(weights)
    mean = np.array([30.0], np.float32)
    ev = scoring.make_evaluator(deploy, weights, (36, 54), mean, 0.0125)
    assert ev.flip == scoring.FLIP
    ev.flip = flip
    images = [rng.integers(0, 256, (36, 36, 1), dtype=np.uint8) for _ in range(5)]
    images += [rng.integers(0, 256, (40, 36, 1), dtype=np.uint8) for _ in range(2)]  # another size: own batch
    for q in (36, 54):
        got = scoring.dense_posteriors(ev, images, q, batch=3)
        want = np.stack([ev.dense(isotropic_resize(im, q)) for im in images])
        assert got.shape == (7, 10)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)  # posteriors in [0, 1]
        assert np.allclose(got.sum(axis=1), 1.0)
    crops = scoring.multicrop_posteriors(ev, images[:2], 54)
    np.testing.assert_allclose(crops[1], ev.multicrop(isotropic_resize(images[1], 54)), rtol=0, atol=1e-12)


def test_findings_rule():
    worse = tables.Stat([(20.0, 2.0), (22.0, 2.0), (21.0, 2.0)])
    better = tables.Stat([(15.0, 1.0), (16.0, 1.0), (17.0, 1.0)])
    d, se, n = tables.compare(worse, better, paired=False)
    assert d == pytest.approx(5.0) and n == 3
    assert se == pytest.approx(math.sqrt(1.0 / 3 + 1.0 / 3))
    assert tables.verdict(d, se, n) == "reproduced"
    d, se, n = tables.compare(worse, better, paired=True)  # differences 5, 6, 4
    assert (d, se) == (pytest.approx(5.0), pytest.approx(1.0 / math.sqrt(3)))
    assert tables.verdict(-d, se, n) == "contradicted"
    assert tables.verdict(0.5, 1.0, 3) == "same direction, within noise"
    assert tables.verdict(-0.5, 1.0, 3) == "not reproduced"
    assert tables.verdict(-1.5, 1.0, 3, no_gain=True) == "reproduced (no gain)"
    assert tables.verdict(-2.5, 1.0, 3, no_gain=True).startswith("not reproduced")
    assert tables.verdict(1.0, math.nan, 1) == "one seed: no verdict"
    assert tables.Stat([(20.0, 2.0), (22.0, 4.0)]).text(1) == "3.0 ± 1.4"


def test_every_table_cell_is_scored():
    needs = {c: {(m, q) for m, q, _ in score_plan(plan.Cell(*c, 1))} for c in plan.configs()}
    for net, scale in plan.TABLE3_ROWS:
        assert ("dense", plan.SCALES[scale][1]) in needs[(net, scale, plan.default_init(net))]
    for net, scale in plan.TABLE4_ROWS:
        assert {("dense", q) for q in plan.SCALES[scale][2]} <= needs[(net, scale, plan.default_init(net))]
    for net, scale in plan.FUSION_PAIR:
        assert {("multicrop", q) for q in plan.SCALES[scale][2]} <= needs[(net, scale, "from_a")]
    for scale in plan.SCALES:
        assert {("dense", q) for q in plan.SWEEP} <= needs[("vgg_d", scale, "from_a")]
    assert all(m == "dense" for c, s in needs.items() if c[0] not in ("vgg_d", "vgg_e") for m, _ in s)
    assert plan.configs()[0] == ("vgg_a", "s36", "msra")  # A first: the deeper nets start from it


@pytest.mark.slow
def test_quick_run_writes_the_report_tables_and_plots(tmp_path, capsys):
    from vggtool.cli import main

    out = tmp_path / "run"
    # two worker processes: the deeper nets of each seed start only once that seed's A has finished
    assert main(["reproduce", "--out", str(out), "--quick", "--seeds", "2", "--jobs", "2"]) == 0
    report = (out / "REPORT.md").read_text()
    for title in ("## Findings", "## Table 3", "## Table 4", "## Table 5", "## Table 6", "## Initialisation",
                  "## Cost"):
        assert title in report
    rows = [line for line in report.splitlines() if line.startswith("| ")]

    def section(title):
        part = report.split(title, 1)[1].split("\n## ", 1)[0]
        return [line for line in part.splitlines() if line.startswith("| ") and not line.startswith("|---")][1:]

    assert len(section("## Table 3")) == 12 and len(section("## Table 4")) == 10
    assert len(section("## Table 5")) == 6 and len(section("## Table 6")) == 4
    assert len(section("## Initialisation")) == len(plan.INIT_ROWS)
    for line in section("## Table 3") + section("## Table 5"):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[-1] == "2" and " ± " in cells[-5]  # two seeds: mean ± std
        top1 = float(cells[-5].split(" ± ")[0])
        assert 0.0 <= top1 <= 100.0
    assert rows
    for name in ("training_curves.png", "error_vs_depth.png", "error_vs_scale.png"):
        image = cv2.imread(str(out / name))
        assert image is not None and image.shape[0] > 100 and image.shape[1] > 100, name
    results = json.loads((out / "results.json").read_text())
    assert len(results["records"]) == 2 * len(plan.configs())
    assert all(r["status"] == "ok" for r in results["records"].values())
    assert "2 cell(s) at a time" in report
    # a rerun (in this process) finds every step done: nothing is trained or scored again
    before = (out / "costs.json").read_text()
    capsys.readouterr()
    assert main(["reproduce", "--out", str(out), "--quick", "--seeds", "2", "--jobs", "1"]) == 0
    assert "trained" not in capsys.readouterr().out
    assert (out / "costs.json").read_text() == before
    # --report-only writes the report again from the stored results and adds no session to the elapsed time
    sessions = json.loads((out / "elapsed.json").read_text())["sessions"]
    assert [s["command"] for s in sessions][-1].endswith("--jobs 1")
    (out / "REPORT.md").unlink()
    assert main(["reproduce", "--out", str(out), "--quick", "--seeds", "2", "--report-only"]) == 0
    assert "nothing trained or scored" in capsys.readouterr().out
    assert json.loads((out / "elapsed.json").read_text())["sessions"] == sessions
    again = (out / "REPORT.md").read_text()
    assert "command: `" + sessions[-1]["command"] + "`" in again and "2 session(s)" in again
    assert (out / "costs.json").read_text() == before
    assert main(["reproduce", "--out", str(tmp_path / "empty"), "--quick", "--report-only"]) == 1
    assert "holds no run" in capsys.readouterr().err and not (tmp_path / "empty").exists()
    (out / "models" / f"{plan.cells(2)[-1].name}.json").rename(out / "last.json")  # as if stopped before the end
    assert main(["reproduce", "--out", str(out), "--quick", "--seeds", "2", "--report-only"]) == 1
    assert "needs a finished run, and 1 of" in capsys.readouterr().err
    # a run of another size in the same folder is refused
    assert main(["reproduce", "--out", str(out)]) == 1
    assert "another size" in capsys.readouterr().err
