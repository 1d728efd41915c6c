"""--scale (Caffe's transform_param scale, after mean subtraction), one InputTransform shared by
`vggtool test`, `classify` and `extract`: checked on nets whose output is linear in the input."""
import cv2
import numpy as np
import pytest

from vggtool import Net
from vggtool.vgg import evaluate as ev
from vggtool.data.mean import load_mean
from vggtool.cli import main
from vggtool.errors import VggtoolError
from vggtool.vgg.extract import load_features
from numerics import assert_close_to_scale

MEAN = "90,100,110"
CONV_TERMS = 3 * 3 * 3  # the 3x3 convolution of LINEAR over 3 channels

# Input -> bias-free convolution (linear) [-> Softmax]: conv(s * (x - m)) = s * conv(x - m).
LINEAR = """name: "linear"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 bias_term: false weight_filler { type: "gaussian" std: 0.1 } } }
"""
SCORES = """
layer { name: "score" type: "Convolution" bottom: "conv" top: "score"
  convolution_param { num_output: 5 kernel_size: 6 bias_term: false weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "prob" type: "Softmax" bottom: "score" top: "prob" }
"""


def write_net(folder, text, name):
    path = folder / f"{name}.prototxt"
    path.write_text(text)
    weights = folder / f"{name}.caffemodel"
    Net(str(path), phase="TEST", seed=3).save(str(weights))
    return str(path), str(weights)


def test_transform_subtracts_the_mean_then_scales(rng):
    image = rng.integers(0, 256, size=(5, 6, 3), dtype=np.uint8)
    mean = np.array([90, 100, 110], np.float32)
    x = ev.InputTransform(mean, 3, scale=-0.25)(image)
    np.testing.assert_array_equal(x, ((image.astype(np.float32) - mean) * np.float32(-0.25)).transpose(2, 0, 1))
    assert x.dtype == np.float32 and x.flags.c_contiguous
    gray = ev.InputTransform([7], 1, scale=2)(image[:, :, 0])
    np.testing.assert_array_equal(gray[0], (image[:, :, 0].astype(np.float32) - 7) * 2)
    with pytest.raises(VggtoolError, match="the mean has 2 channel"):
        ev.InputTransform([1, 2], 3)
    with pytest.raises(VggtoolError, match="--scale must be a finite number"):
        ev.InputTransform(None, 3, scale=float("nan"))


def test_extract_scale_end_to_end(rng, tmp_path, capsys):
    net, weights = write_net(tmp_path, LINEAR, "linear")
    names = []
    for i in range(3):
        names.append(f"im{i}.png")
        cv2.imwrite(str(tmp_path / names[-1]), rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8))
    (tmp_path / "list.txt").write_text("".join(f"{n} {i}\n" for i, n in enumerate(names)))
    base = ["extract", "--net", net, "--weights", weights, "--layer", "conv", "--data",
            str(tmp_path / "list.txt"), "--root", str(tmp_path), "--mean-value", MEAN]

    def features(*extra):
        out = tmp_path / f"f{len(list(tmp_path.glob('f*.npz')))}.npz"
        rc = main(base + ["--out", str(out), *extra])
        assert rc == 0, capsys.readouterr().err
        return load_features(str(out)).features.astype(np.float64)

    raw1, raw_half = features("--no-pool"), features("--no-pool", "--scale", "-0.5")
    # Independently: the net on (image - mean) directly, with no scale.
    direct = Net(net, weights, phase="TEST")
    for n, row in zip(names, raw1):
        x = cv2.imread(str(tmp_path / n)).astype(np.float32) - np.array([90, 100, 110], np.float32)
        direct.forward(data=x.transpose(2, 0, 1)[None])
        assert_close_to_scale(row, np.ravel(direct.blobs["conv"].data), CONV_TERMS)
    # Linear and mean subtracted first: exactly -0.5 times (scaling before the mean would not be).
    assert np.abs(raw1).max() > 1
    assert_close_to_scale(raw_half, -0.5 * raw1, CONV_TERMS)
    # Pooled descriptors are L2-normalised: a positive scale cancels, a negative one flips the sign.
    pooled1, pooled3, pooled_neg = features("--scales", "8"), features("--scales", "8", "--scale", "3"), \
        features("--scales", "8", "--scale", "-2")
    assert_close_to_scale(pooled3, pooled1, CONV_TERMS + 36)  # + the spatial mean of 6x6 positions
    assert_close_to_scale(pooled_neg, -pooled1, CONV_TERMS + 36)
    assert main(base + ["--no-pool", "--scale", "inf", "--out", str(tmp_path / "x.npz")]) == 1
    assert "--scale must be a finite number" in capsys.readouterr().err


def test_evaluator_scale_multiplies_the_logits(rng, tmp_path):
    net, weights = write_net(tmp_path, LINEAR + SCORES, "scores")
    image = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    mean = load_mean(MEAN)

    def log_posteriors(scale):
        e = ev.Evaluator(net, weights, scales=[8], mean=mean, scale=scale, average="scores")
        lp = np.log(e.evaluate_image(image))
        return lp - lp.mean()  # the logits up to a constant

    one, three = log_posteriors(1.0), log_posteriors(3.0)
    assert np.ptp(one) > 0.1
    assert_close_to_scale(three, 3 * one, CONV_TERMS + 4 * 6 * 6)  # conv, then the 6x6 score conv


@pytest.mark.parametrize("command", ["test", "classify", "extract", "localize"])
def test_the_commands_take_the_same_transform_flags(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    for flag in ("--mean-value", "--mean-file", "--scale SCALE"):
        assert flag in out
    assert "transform_param scale" in out


def test_localize_regressor_applies_mean_then_scale(tmp_path):
    """Box regression sees (image - mean) * scale, as the evaluator does: the preprocessed input is checked
    directly, then the output of a linear net (one bias-free fc layer)."""
    from vggtool.vgg import localize as L

    text = ('name: "r" layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 '
            'dim: 8 } } } layer { name: "box" type: "InnerProduct" bottom: "data" top: "box" inner_product_param { '
            'num_output: 4 bias_term: false weight_filler { type: "gaussian" std: 0.1 } } }')
    path = tmp_path / "r.prototxt"
    path.write_text(text)
    net = Net(str(path), phase="TEST")
    net.save(str(tmp_path / "r.caffemodel"))
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3)).astype(np.uint8)
    mean = np.array([10.0, 20.0, 30.0])
    got = {s: L.Regressor(str(path), str(tmp_path / "r.caffemodel"), mean=mean, scale=s) for s in (1.0, -0.5)}
    want = (image.transpose(2, 0, 1).astype(np.float32) - mean.reshape(3, 1, 1)) * -0.5
    np.testing.assert_allclose(got[-0.5].preprocess(image), want, rtol=1e-6)
    boxes = {s: r.predict(image) for s, r in got.items()}
    assert_close_to_scale(boxes[-0.5], -0.5 * boxes[1.0], 3 * 8 * 8)  # one fc over 3x8x8
