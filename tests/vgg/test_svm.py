"""vggtool svm: metrics against hand-computed values, splits, SVM protocols, and the CLI end to end on
real images (scikit-learn's digits) through vggtool extract."""
import cv2
import numpy as np
import pytest

from eval_helpers import make_model
from vggtool.vgg import svm
from vggtool.cli import main
from vggtool.errors import VggtoolError
from vggtool.vgg.extract import Features, save_npz


# -- average precision ---------------------------------------------------------------------------------------
def test_ap_without_ties():
    # ranking + - + -: (recall, precision) = (.5, 1), (.5, .5), (1, 2/3), (1, .5)
    scores, pos = [0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]
    # area: recall 0->.5 at precision 1, .5->1 at 2/3
    assert svm.average_precision(scores, pos, "area") == pytest.approx(0.5 + 0.5 * 2 / 3)
    # 11-point: levels 0..0.5 (6) reach precision 1, levels .6..1 (5) reach 2/3
    assert svm.average_precision(scores, pos, "11point") == pytest.approx((6 + 5 * 2 / 3) / 11)


def test_ap_with_ties():
    # 0.9(+) | 0.8(+) 0.8(-) | 0.4(-) | 0.3(+), 3 positives; the tied block enters the ranking at once:
    # points (1/3, 1), (2/3, 2/3), (2/3, 1/2), (1, 3/5)
    scores, pos = [0.8, 0.3, 0.9, 0.8, 0.4], [0, 1, 1, 1, 0]
    assert svm.average_precision(scores, pos, "area") == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    # 11-point: levels 0..0.3 -> 1 (4 levels), 0.4..0.6 -> 2/3 (3), 0.7..1 -> 3/5 (4)
    assert svm.average_precision(scores, pos, "11point") == pytest.approx((4 + 3 * 2 / 3 + 4 * 3 / 5) / 11)
    # the order of tied images never matters: one tie of a positive and a negative is precision 1/2
    for order in ([1, 0], [0, 1]):
        assert svm.average_precision([0.5, 0.5], order, "area") == pytest.approx(0.5)
        assert svm.average_precision([0.5, 0.5], order, "11point") == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    s = rng.integers(0, 4, 30).astype(float)
    y = rng.integers(0, 2, 30)
    p = rng.permutation(30)
    for method in svm.AP_METHODS:
        assert svm.average_precision(s, y, method) == pytest.approx(svm.average_precision(s[p], y[p], method))


def test_ap_ignore_and_undefined():
    # a difficult (ignored) image ranked first changes nothing
    assert svm.average_precision([2.0, 0.9, 0.8], [0, 1, 0], ignore=[1, 0, 0]) == pytest.approx(1.0)
    assert svm.average_precision([2.0, 0.9, 0.8], [0, 1, 0]) == pytest.approx(0.5)
    assert np.isnan(svm.average_precision([0.3, 0.2], [0, 0]))
    with pytest.raises(VggtoolError, match="--ap must be one of"):
        svm.average_precision([1.0], [1], "voc99")


def test_mean_average_precision_multilabel():
    scores = np.array([[0.9, 0.1, 0.5], [0.8, 0.7, 0.4], [0.7, 0.2, 0.3], [0.6, 0.9, 0.2]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    # class 0: + - + -, AP 5/6; class 1: ranking 3(-) 1(+) 2(+) 0(-): (0,0),(.5,.5),(1,2/3),(1,.5) -> 2/3;
    # class 2 has no positive: no AP, left out of the mean
    m, aps = svm.mean_average_precision(scores, targets, "area")
    np.testing.assert_allclose(aps[:2], [5 / 6, 2 / 3])
    assert np.isnan(aps[2]) and m == pytest.approx((5 / 6 + 2 / 3) / 2)


def test_class_recall():
    # predicted 0, 0, 1, 1, 1, 2 -> class 0: 1/1, class 1: 2/3, class 2: 1/2 -> mean 13/18 (accuracy 4/6)
    m, per = svm.class_recall(np.eye(3)[[0, 0, 1, 1, 1, 2]], [0, 1, 1, 1, 2, 2])
    assert per == pytest.approx({0: 1.0, 1: 2 / 3, 2: 0.5})
    assert m == pytest.approx(13 / 18)


def test_class_recall_ties_count_against():
    # A class tied for the highest decision value is not recalled (the rule of the Accuracy layer), whatever
    # its index: all-equal decision values recall nothing.
    m, per = svm.class_recall(np.zeros((4, 3)), [0, 0, 1, 2])
    assert m == 0.0 and per == {0: 0.0, 1: 0.0, 2: 0.0}
    m, _ = svm.class_recall([[1.0, 1.0, 0.0], [2.0, 0.0, 0.0]], [0, 0])
    assert m == 0.5


# -- splits and SVMs ------------------------------------------------------------------------------------------
def test_caltech_splits_are_seeded_and_disjoint():
    labels = np.repeat([0, 1, 2], [40, 90, 35])
    a = list(svm.caltech_splits(labels, 30, 50, 3, seed=5))
    b = list(svm.caltech_splits(labels, 30, 50, 3, seed=5))
    for (tr, te), (tr2, te2) in zip(a, b):
        np.testing.assert_array_equal(tr, tr2)
        np.testing.assert_array_equal(te, te2)
        assert not set(tr) & set(te)
        assert list(np.bincount(labels[tr])) == [30, 30, 30]
        assert list(np.bincount(labels[te])) == [10, 50, 5]
    assert not np.array_equal(a[0][0], a[1][0])
    _, te = next(svm.caltech_splits(labels, 30, 0, 1, seed=0))
    assert list(np.bincount(labels[te])) == [10, 60, 5]
    with pytest.raises(VggtoolError, match="class.*no image left"):
        next(svm.caltech_splits(labels, 35, 50, 1, seed=0))
    fit, val = svm.holdout_split(labels[:90], 0.2, np.random.default_rng(0), stratified=True)
    assert list(np.bincount(labels[:90][val])) == [8, 10] and len(fit) == 72


def blobs(rng, n_per_class, n_classes, dim=8, spread=0.3):
    centres = rng.normal(size=(n_classes, dim))
    labels = np.repeat(np.arange(n_classes), n_per_class)
    return centres[labels] + spread * rng.normal(size=(len(labels), dim)), labels


def test_protocols_on_separable_data(rng):
    x, labels = blobs(rng, 40, 4)
    r = svm.caltech_protocol(Features(x, labels, np.arange(len(x))), 20, 10, splits=2, grid=[0.1, 1])
    assert r["recalls"] == [1.0, 1.0] and r["std"] == 0.0 and r["cs"][0] in (0.1, 1)
    # multi-label: class k present when coordinate k is positive
    xs = rng.normal(size=(200, 5))
    targets = (xs[:, :3] > 0).astype(np.uint8)
    train = Features(xs[:150], targets[:150], np.arange(150))
    test = Features(xs[150:], targets[150:], np.arange(50))
    r = svm.voc_protocol(train, test, grid=[1, 10], method="area")
    assert r["map"] > 0.99 and r["aps"].shape == (3,)
    # a class without positives in training gets constant scores, not a crash
    model = svm.OneVsRest(1.0).fit(xs[:150], np.c_[targets[:150], np.zeros(150)])
    assert (model.decision(xs[150:])[:, 3] == -1).all()


def test_choose_c_returns_the_best_of_the_grid(rng):
    x, labels = blobs(rng, 30, 3, spread=2.0)
    t = svm.one_hot(labels, 3)
    c, table = svm.choose_c(x[::2], t[::2], x[1::2], lambda s: svm.class_recall(s, labels[1::2])[0],
                            [0.001, 0.1, 10])
    assert [g for g, _ in table] == [0.001, 0.1, 10]
    assert dict(table)[c] == max(v for _, v in table)


# -- CLI ------------------------------------------------------------------------------------------------------
def test_svm_cli_voc_stacking_and_errors(rng, tmp_path, capsys):
    xs = rng.normal(size=(120, 6))
    targets = (xs[:, :2] > 0).astype(np.uint8)
    for name, part in (("a", slice(0, 3)), ("b", slice(3, 6))):
        save_npz(str(tmp_path / f"tr_{name}.npz"), xs[:90, part], targets[:90], np.arange(90).astype(str),
                 classes=["cat", "dog"])
        save_npz(str(tmp_path / f"te_{name}.npz"), xs[90:, part], targets[90:], np.arange(30).astype(str),
                 classes=["cat", "dog"])
    tr, te = f"{tmp_path / 'tr_a.npz'},{tmp_path / 'tr_b.npz'}", f"{tmp_path / 'te_a.npz'},{tmp_path / 'te_b.npz'}"
    assert main(["svm", "--features", tr, "--test-features", te, "--ap", "11point"]) == 0
    out = capsys.readouterr().out
    assert "90 images x 6" in out and "AP cat = " in out and "AP dog = " in out and "mAP = " in out
    assert main(["svm", "--features", tr]) == 1
    assert "needs --test-features" in capsys.readouterr().err
    assert main(["svm", "--features", tr, "--protocol", "caltech"]) == 1
    assert "one label per image" in capsys.readouterr().err
    assert main(["svm", "--features", f"{tmp_path / 'tr_a.npz'},{tmp_path / 'te_b.npz'}", "--test-features", te]) == 1
    assert "its images differ" in capsys.readouterr().err
    assert main(["svm", "--features", str(tmp_path / "none.npz"), "--test-features", te]) == 1
    assert "none.npz does not exist" in capsys.readouterr().err


def write_digits(folder, per_class):
    """scikit-learn's real 8x8 digits, upscaled to 32x32 PNGs, with a Caffe list file."""
    from sklearn.datasets import load_digits

    d = load_digits()
    lines = []
    for c in range(10):
        for i in np.flatnonzero(d.target == c)[:per_class]:
            big = cv2.resize((d.images[i] * 255 / 16).astype(np.float32), (32, 32), interpolation=cv2.INTER_CUBIC)
            cv2.imwrite(str(folder / f"{i}.png"), np.clip(np.rint(big), 0, 255).astype(np.uint8))
            lines.append(f"{i}.png {c}\n")
    (folder / "digits.txt").write_text("".join(lines))
    return folder / "digits.txt"


def test_end_to_end_digits_caltech_protocol(tmp_path, capsys):
    """Real images through extract and svm (the small test net has random weights, so the descriptors are
    random conv features; they still separate the digits far above chance, 10%)."""
    net, weights = make_model(tmp_path)
    images = tmp_path / "digits"
    images.mkdir()
    data = write_digits(images, per_class=40)
    feats = tmp_path / "digits.npz"
    assert main(["extract", "--net", net, "--weights", weights, "--layer", "fc7", "--data", str(data),
                 "--root", str(images), "--scales", "32,40", "--flip", "--out", str(feats)]) == 0
    assert main(["svm", "--features", str(feats), "--protocol", "caltech", "--train-per-class", "25",
                 "--test-per-class", "15", "--splits", "2", "--c-grid", "1,100"]) == 0
    out = capsys.readouterr().out
    line = [s for s in out.splitlines() if s.startswith("mean class recall")][0]
    assert line.endswith("% over 2 splits (25 train / 15 test per class, seed 0)")
    assert float(line.split()[4]) > 50


# -- VOC 2007 rules ---------------------------------------------------------------------------------------------
def test_difficult_only_images_are_not_negatives_of_their_class(rng):
    """A training image marked ignore for a class is left out of that class's SVM (devkit practice): the
    result equals training without those images, and differs from counting them as negatives."""
    x = rng.normal(size=(60, 4))
    pos = x[:, 0] + 0.5 * x[:, 1] > 0
    hard = rng.choice(np.flatnonzero(pos), 20, replace=False)  # difficult-only: positive-looking images
    targets = pos.astype(np.uint8)[:, None]
    targets[hard] = 0
    ignore = np.zeros((60, 1), bool)
    ignore[hard] = True
    xt = rng.normal(size=(40, 4))
    tt = (xt[:, 0] + 0.5 * xt[:, 1] > 0).astype(np.uint8)[:, None]
    test = Features(xt, tt, np.arange(40))
    keep = ~ignore[:, 0]
    run = lambda train: svm.voc_protocol(train, test, grid=[1.0])["map"]
    with_mask = run(Features(x, targets, np.arange(60), ignore=ignore))
    without_rows = run(Features(x[keep], targets[keep], np.arange(keep.sum())))
    as_negatives = run(Features(x, targets, np.arange(60)))
    assert with_mask == pytest.approx(without_rows, abs=1e-12)
    assert without_rows > as_negatives + 0.01  # counted as negatives, they blunt the SVM (0.989 vs 0.960)
    # the SVM itself: the masked class's weights are those of the fit on the kept rows
    a = svm.OneVsRest(1.0).fit(x, targets, ignore)
    b = svm.OneVsRest(1.0).fit(x[keep], targets[keep])
    np.testing.assert_allclose(a.w, b.w, rtol=0, atol=1e-12)


def test_ap_rule_follows_the_dataset_unless_asked(rng, tmp_path, capsys):
    voc07 = Features(np.zeros((2, 1)), np.eye(2, dtype=np.uint8), np.arange(2), dataset="VOC2007")
    voc12 = Features(np.zeros((2, 1)), np.eye(2, dtype=np.uint8), np.arange(2), dataset="VOC2012")
    assert svm.ap_rule(None, voc07)[0] == "11point"
    assert svm.ap_rule(None, voc12)[0] == "area"
    assert svm.ap_rule("area", voc07) == ("area", "as --ap asks")
    # The CLI: features saved with dataset VOC2007 (as `vggtool extract` on a VOC2007 folder does) get
    # the 11-point AP; the printed mAP is the 11-point value, not the area one.
    xs = rng.normal(size=(100, 3))
    targets = np.c_[xs[:, 0] > 0.3, xs[:, 1] + 0.7 * rng.normal(size=100) > 0].astype(np.uint8)
    for name, part in (("tr", slice(0, 70)), ("te", slice(70, 100))):
        save_npz(str(tmp_path / f"{name}.npz"), xs[part], targets[part], np.arange(100)[part].astype(str),
                 classes=["cat", "dog"], dataset="VOC2007")
    argv = ["svm", "--features", str(tmp_path / "tr.npz"), "--test-features", str(tmp_path / "te.npz"),
            "--c-grid", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "AP rule: 11-point (the VOC2007 devkit's rule, from the features' dataset VOC2007)" in out
    model = svm.OneVsRest(1.0).fit(xs[:70], targets[:70])
    expect = {m: svm.mean_average_precision(model.decision(xs[70:]), targets[70:], m)[0] for m in svm.AP_METHODS}
    assert expect["11point"] != pytest.approx(expect["area"], abs=1e-4)
    assert f"mAP = {100 * expect['11point']:.2f}% (11-point, VOC2007" in out
    assert main(argv + ["--ap", "area"]) == 0
    out = capsys.readouterr().out
    assert "AP rule: area (as --ap asks)" in out and f"mAP = {100 * expect['area']:.2f}% (area" in out
