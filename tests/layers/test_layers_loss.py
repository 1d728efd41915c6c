"""Softmax, SoftmaxWithLoss (every normalization), Accuracy (Caffe's counting) and EuclideanLoss."""
import math

import numpy as np
import pytest

from vggtool.errors import VggtoolError
from vggtool.testing import check_gradients, layer_net


def run(text, inputs, dtype=np.float32, phase="TEST"):
    inputs = {k: np.asarray(v, dtype=dtype) for k, v in inputs.items()}
    net = layer_net(text, inputs, dtype=dtype, phase=phase)
    net.forward(**inputs)
    return net


# -- Softmax ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis,shape", [(1, (2, 3)), (1, (2, 4, 2, 3)), (2, (2, 3, 4)), (-1, (3, 2, 5))])
def test_softmax(axis, shape, engine):
    rng = np.random.default_rng(51)
    x = rng.standard_normal(shape) * 3
    text = f'layer {{ name: "s" type: "Softmax" bottom: "x" top: "y" softmax_param {{ axis: {axis} }} }}'
    y = run(text, {"x": x}).blobs["y"].data
    a = axis % len(shape)
    for idx in np.ndindex(*(shape[:a] + shape[a + 1:])):
        row = [x[idx[:a] + (c,) + idx[a:]] for c in range(shape[a])]
        denom = sum(math.exp(v) for v in row)
        for c, v in enumerate(row):
            assert y[idx[:a] + (c,) + idx[a:]] == pytest.approx(math.exp(v) / denom, rel=1e-5)
    check_gradients(text, {"x": x}, **engine)


def test_softmax_is_stable_for_large_scores():
    y = run('layer { name: "s" type: "Softmax" bottom: "x" top: "y" }', {"x": [[1000.0, 1000.0, -1000.0]]}).blobs["y"].data
    np.testing.assert_allclose(y, [[0.5, 0.5, 0.0]])


# -- SoftmaxWithLoss ----------------------------------------------------------------------------------
def swl_text(loss_param="", extra=""):
    return ('layer { name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" '
            f'loss_param {{ {loss_param} }} {extra} }}')


def test_softmax_with_loss_hand_computed():
    # Scores (0, 0) -> p = 1/2, loss ln 2; scores (ln 1, ln 3) -> p = (1/4, 3/4), label 1 -> -ln 3/4.
    net = run(swl_text(), {"x": [[0.0, 0.0], [0.0, math.log(3)]], "label": [0, 1]})
    assert float(net.blobs["loss"].data) == pytest.approx((math.log(2) - math.log(0.75)) / 2, rel=1e-6)


def swl_reference(x, labels, ignore, mode):
    """Direct loop: sum of -log softmax at the label over N x H x W positions, / Caffe's normalizer."""
    n_, c_, h_, w_ = x.shape
    total, valid = 0.0, 0
    for n in range(n_):
        for i in range(h_):
            for j in range(w_):
                lab = int(labels[n, i, j])
                if ignore is not None and lab == ignore:
                    continue
                row = [float(x[n, c, i, j]) for c in range(c_)]
                m = max(row)
                logz = m + math.log(sum(math.exp(v - m) for v in row))
                total += logz - row[lab]
                valid += 1
    normalizer = {"FULL": n_ * h_ * w_, "VALID": valid, "BATCH_SIZE": n_, "NONE": 1}[mode]
    return total / max(1, normalizer)


@pytest.mark.parametrize("loss_param,mode", [
    ("", "VALID"),                                   # Caffe's default
    ("normalization: FULL", "FULL"),
    ("normalization: VALID", "VALID"),
    ("normalization: BATCH_SIZE", "BATCH_SIZE"),
    ("normalization: NONE", "NONE"),
    ("normalize: true", "VALID"),                    # legacy flag
    ("normalize: false", "BATCH_SIZE"),
    ("normalization: FULL normalize: false", "FULL"),  # an explicit normalization wins over the flag
])
@pytest.mark.parametrize("ignore", [None, 2])
def test_softmax_with_loss_normalizations(loss_param, mode, ignore, engine):
    rng = np.random.default_rng(52)
    x = rng.standard_normal((2, 4, 2, 3)) * 2
    labels = rng.integers(0, 4, size=(2, 2, 3)).astype(np.float64)
    labels[0, 0, :] = 2  # some ignored positions when ignore_label is 2
    lp = loss_param + ("" if ignore is None else f" ignore_label: {ignore}")
    net = run(swl_text(lp), {"x": x, "label": labels})
    expected = swl_reference(x.astype(np.float32).astype(np.float64), labels, ignore, mode)
    assert float(net.blobs["loss"].data) == pytest.approx(expected, rel=1e-5)
    check_gradients(swl_text(lp), {"x": x, "label": labels}, check=["x"], max_checks=60, **engine)


def test_softmax_with_loss_all_ignored_normalizer_is_at_least_one(engine):
    net = run(swl_text("ignore_label: 1"), {"x": [[1.0, 2.0], [3.0, 0.0]], "label": [1, 1]})
    assert float(net.blobs["loss"].data) == 0.0  # 0 / max(1, 0), not NaN
    check_gradients(swl_text("ignore_label: 1"), {"x": np.array([[1.0, 2.0], [3.0, 0.0]]), "label": np.array([1.0, 1.0])},
                    check=["x"], **engine)


def test_softmax_with_loss_weight_and_prob_top():
    rng = np.random.default_rng(53)
    x = rng.standard_normal((3, 5))
    labels = np.array([0.0, 4.0, 2.0])
    text = ('layer { name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" top: "prob" '
            'loss_weight: 2 loss_weight: 0 }')
    net = run(text, {"x": x, "label": labels}, dtype=np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    prob = e / e.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(net.blobs["prob"].data, prob, rtol=1e-12)
    net.backward_from_to(1, 1)
    expected = prob.copy()
    expected[np.arange(3), labels.astype(int)] -= 1
    np.testing.assert_allclose(net.blobs["x"].diff, 2 * expected / 3, rtol=1e-10)  # weight 2, VALID 3


def test_softmax_with_loss_bad_label():
    with pytest.raises(VggtoolError, match="label 7 is outside"):
        run(swl_text(), {"x": np.zeros((2, 3)), "label": [0, 7]})


# -- Accuracy -----------------------------------------------------------------------------------------
def acc_text(spec="", per_class=False):
    return ('layer { name: "a" type: "Accuracy" bottom: "x" bottom: "label" top: "acc"'
            + (' top: "per_class"' if per_class else "") + f' accuracy_param {{ {spec} }} }}')


SCORES = [[0.1, 0.5, 0.4],   # label 1: top-1
          [0.3, 0.3, 0.4],   # label 0: ties with class 1 and is beaten by 2 -> only top-3
          [0.2, 0.7, 0.1]]   # label 2: last -> only top-3
LABELS = [1, 0, 2]


@pytest.mark.parametrize("k,expected", [(1, 1 / 3), (2, 1 / 3), (3, 1.0)])
def test_accuracy_top_k_hand_computed(k, expected):
    net = run(acc_text(f"top_k: {k}", per_class=True), {"x": SCORES, "label": LABELS})
    assert float(net.blobs["acc"].data) == pytest.approx(expected)
    per_class = {1: [0, 1, 0], 2: [0, 1, 0], 3: [1, 1, 1]}[k]
    np.testing.assert_allclose(net.blobs["per_class"].data, per_class)


def test_accuracy_ties_count_against_like_caffe():
    # Caffe counts every other class scoring >= the true class as better: a tie is not a top-1 hit.
    net = run(acc_text(), {"x": [[0.5, 0.5], [0.5, 0.5]], "label": [0, 1]})
    assert float(net.blobs["acc"].data) == 0.0
    net = run(acc_text("top_k: 2"), {"x": [[0.5, 0.5], [0.5, 0.5]], "label": [0, 1]})
    assert float(net.blobs["acc"].data) == 1.0
    # A NaN true score is a miss (Caffe's >= test would make it a hit: a diverged net at 100%).
    net = run(acc_text(), {"x": [[np.nan, 0.5], [0.1, 0.5]], "label": [0, 1]})
    assert float(net.blobs["acc"].data) == 0.5


def test_accuracy_ignore_label_and_empty_classes():
    scores = SCORES + [[0.0, 0.0, 0.0, 0.0][:3]]
    net = run(acc_text("ignore_label: 0", per_class=True), {"x": scores, "label": LABELS + [0]})
    assert float(net.blobs["acc"].data) == pytest.approx(1 / 2)  # samples 0 and 2 count; one hit
    np.testing.assert_allclose(net.blobs["per_class"].data, [0, 1, 0])  # class 0: no samples -> 0
    net = run(acc_text("ignore_label: 1"), {"x": [[0.0, 1.0]], "label": [1]})
    assert float(net.blobs["acc"].data) == 0.0  # nothing counted


def accuracy_reference(x, labels, k, ignore):
    """Direct loop of Caffe's rule over N x C x H x W scores."""
    n_, c_, h_, w_ = x.shape
    hits = count = 0
    class_hits, class_count = [0] * c_, [0] * c_
    for n in range(n_):
        for i in range(h_):
            for j in range(w_):
                lab = int(labels[n, i, j])
                if lab == ignore:
                    continue
                better = sum(1 for c in range(c_) if c != lab and x[n, c, i, j] >= x[n, lab, i, j])
                hits += better < k
                count += 1
                class_hits[lab] += better < k
                class_count[lab] += 1
    per_class = [h / c if c else 0.0 for h, c in zip(class_hits, class_count)]
    return (hits / count if count else 0.0), per_class


@pytest.mark.parametrize("k", [1, 2, 4])
def test_accuracy_spatial_matches_loop(k):
    rng = np.random.default_rng(54)
    x = rng.integers(0, 3, size=(2, 5, 3, 2)).astype(np.float32)  # small integers: many ties
    labels = rng.integers(0, 5, size=(2, 3, 2)).astype(np.float32)
    net = run(acc_text(f"top_k: {k} ignore_label: 4", per_class=True), {"x": x, "label": labels})
    overall, per_class = accuracy_reference(x, labels, k, 4)
    assert float(net.blobs["acc"].data) == pytest.approx(overall)
    np.testing.assert_allclose(net.blobs["per_class"].data, per_class, rtol=1e-6)


def test_accuracy_has_no_gradient_and_does_not_block_force_backward():
    net = layer_net(acc_text(), {"x": np.zeros((2, 3)), "label": np.zeros(2)})
    assert net.bottom_need_backward[-1] == [False, False]


# -- EuclideanLoss ------------------------------------------------------------------------------------
EUCLID = 'layer { name: "e" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "loss" }'


def test_euclidean_hand_computed():
    # ((1-0)^2 + (2-0)^2 + (3-1)^2 + (4-1)^2) / (2 * 2) = (1 + 4 + 4 + 9) / 4 = 4.5
    net = run(EUCLID, {"a": [[1, 2], [3, 4]], "b": [[0, 0], [1, 1]]})
    assert float(net.blobs["loss"].data) == pytest.approx(4.5)


def test_euclidean_matches_loop_and_gradients(engine):
    rng = np.random.default_rng(55)
    a, b = rng.standard_normal((2, 3, 2, 2, 2))
    net = run(EUCLID, {"a": a, "b": b})
    total = sum((float(np.float32(a[i])) - float(np.float32(b[i]))) ** 2 for i in np.ndindex(a.shape))
    assert float(net.blobs["loss"].data) == pytest.approx(total / (2 * 3), rel=1e-5)
    check_gradients(EUCLID, {"a": a, "b": b}, **engine)
    # The loss weight scales both gradients: d/da = w (a - b) / N, d/db = -w (a - b) / N.
    net = run(EUCLID.replace("}", "loss_weight: 3 }"), {"a": a, "b": b}, dtype=np.float64)
    net.backward_from_to(1, 1)
    np.testing.assert_allclose(net.blobs["a"].diff, 3 * (a - b) / 3)
    np.testing.assert_allclose(net.blobs["b"].diff, -3 * (a - b) / 3)


def test_euclidean_shape_mismatch():
    with pytest.raises(VggtoolError, match="same number of values"):
        run(EUCLID, {"a": np.zeros((2, 3)), "b": np.zeros((2, 4))})


# -- a batch of several replicas' shares (a lane run as one pass: vggtool.solvers.parallel) ---------------
SHARED_BATCH_LAYERS = {
    "softmax VALID": swl_text("normalization: VALID"),
    "softmax BATCH_SIZE": swl_text("normalization: BATCH_SIZE"),
    "softmax FULL": swl_text("normalization: FULL"),
    "softmax NONE": swl_text("normalization: NONE"),
    "euclidean": 'layer { name: "l" type: "EuclideanLoss" bottom: "x" bottom: "t" top: "loss" }',
    "box": 'layer { name: "l" type: "BoxRegressionLoss" bottom: "b" bottom: "t" bottom: "label" top: "loss" }',
    "accuracy": 'layer { name: "l" type: "Accuracy" bottom: "x" bottom: "label" top: "loss" }',
}


@pytest.mark.parametrize("kind", list(SHARED_BATCH_LAYERS))
def test_a_batch_of_shares_gives_the_sum_of_the_shares_values_and_gradients(kind):
    """With net.batch_shares = 2 a loss or accuracy is normalised by one share's count: over a batch of two
    shares it is the sum of the two shares' values, and its gradient the two shares' gradients side by side."""
    rng = np.random.default_rng(7)
    x = {"x": rng.standard_normal((6, 3, 2, 2)), "label": rng.integers(0, 3, (6, 2, 2)).astype(float)}
    if kind == "euclidean":
        x = {"x": x["x"], "t": rng.standard_normal((6, 3, 2, 2))}
    elif kind == "box":
        x = {"b": rng.standard_normal((6, 12)), "t": rng.standard_normal((6, 4)),
             "label": rng.integers(0, 3, 6).astype(float)}
    text = SHARED_BATCH_LAYERS[kind]

    def value_and_gradient(inputs, shares):
        net = layer_net(text, inputs)
        net.batch_shares = shares
        net.forward(**inputs)
        value = float(net.blobs["loss"].data)
        if kind == "accuracy":
            return value, None
        net.backward()
        return value, net.blobs["x" if "x" in inputs else "b"].diff.copy()

    whole, whole_grad = value_and_gradient(x, 2)
    parts = [value_and_gradient({k: v[s] for k, v in x.items()}, 1) for s in (slice(0, 3), slice(3, 6))]
    assert whole == pytest.approx(parts[0][0] + parts[1][0], rel=1e-12)
    assert abs(whole) > 0.1
    if whole_grad is not None:
        np.testing.assert_allclose(whole_grad, np.concatenate([parts[0][1], parts[1][1]]), rtol=1e-12, atol=1e-15)
