"""BoxRegressionLoss (per-class box regression): value, gradient check, gradients only at the GT class."""
import numpy as np
import pytest

from vggtool.errors import VggtoolError
from vggtool.testing import check_gradients, layer_net

PCR = 'layer { name: "l" type: "BoxRegressionLoss" bottom: "pred" bottom: "box" bottom: "label" top: "loss" }'
SCR = 'layer { name: "l" type: "BoxRegressionLoss" bottom: "pred" bottom: "box" top: "loss" }'


def inputs(n=3, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    return {"pred": rng.standard_normal((n, 4 * classes)), "box": rng.uniform(0, 1, (n, 4)),
            "label": np.array([2, 0, 4][:n], dtype=np.float64)}


def test_value_is_euclidean_over_the_ground_truth_class_only():
    x = inputs()
    net = layer_net(PCR, x)
    net.forward(**x)
    ref = sum(np.sum((x["pred"][i, 4 * int(l):4 * int(l) + 4] - x["box"][i]) ** 2)
              for i, l in enumerate(x["label"])) / (2 * 3)
    assert float(net.blobs["loss"].data) == pytest.approx(ref, rel=1e-12)


def test_gradients_reach_only_ground_truth_class_outputs():
    x = inputs()
    net = layer_net(PCR, x)
    net.forward(**x)
    net.backward()
    diff = np.asarray(net.blobs["pred"].diff).reshape(3, 5, 4)
    for i, l in enumerate(x["label"].astype(int)):
        expected = (x["pred"][i, 4 * l:4 * l + 4] - x["box"][i]) / 3
        np.testing.assert_allclose(diff[i, l], expected, rtol=1e-12)
        others = np.delete(diff[i], l, axis=0)
        assert np.all(others == 0)
    np.testing.assert_allclose(net.blobs["box"].diff, -diff[np.arange(3), x["label"].astype(int)])


def test_gradient_check_pcr_and_scr():
    check_gradients(PCR, inputs(), check=["pred", "box"])
    x = inputs(classes=1)
    del x["label"]
    check_gradients(SCR, x)


def test_scr_equals_euclidean_loss():
    x = inputs(classes=1)
    del x["label"]
    a = layer_net(SCR, x)
    a.forward(**x)
    b = layer_net('layer { name: "l" type: "EuclideanLoss" bottom: "pred" bottom: "box" top: "loss" }', x)
    b.forward(**x)
    assert float(a.blobs["loss"].data) == pytest.approx(float(b.blobs["loss"].data), rel=1e-12)


def test_errors_name_the_problem():
    x = inputs()
    del x["label"]
    with pytest.raises(VggtoolError, match="third bottom"):
        layer_net(SCR, x)
    x = inputs()
    x["label"] = np.array([7.0, 0, 0])
    net = layer_net(PCR, x)
    with pytest.raises(VggtoolError, match="label outside 0..4"):
        net.forward(**x)
