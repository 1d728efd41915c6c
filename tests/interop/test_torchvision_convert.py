"""VGG weights between .caffemodel and torchvision's layout (vggtool.interop.torchvision, `vggtool convert`).

NumPy-only: the conv1_1 fold against a direct convolution in both conventions (interior and border), the
layer map against torchvision's state-dict keys, round trips through safetensors. With torch installed:
torchvision's VGG layout built in torch.nn scores a photo as vggtool does with the converted weights.
"""
import os

import cv2
import numpy as np
import pytest

import vggtool
from vggtool.io import prototxt
from vggtool.interop import torchvision as tc
from vggtool.cli import main
from vggtool.errors import VggtoolError

pytest.importorskip("safetensors")

from repo_paths import REPO  # noqa: E402
ROOT = REPO
CONFIGS = {"vgg_a": "vgg11", "vgg_b": "vgg13", "vgg_d": "vgg16", "vgg_e": "vgg19"}
# torchvision.models.vgg11/13/16/19().state_dict(): the features.N of each Conv2d
TORCHVISION_CONV_INDICES = {
    "vgg11": [0, 3, 6, 8, 11, 13, 16, 18],
    "vgg13": [0, 2, 5, 7, 10, 12, 15, 17, 20, 22],
    "vgg16": [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28],
    "vgg19": [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34],
}
HIDDEN = 64  # fc6/fc7 width in these tests (torchvision's is 4096; fc6 still takes 512 x 7 x 7)


def narrow_deploy(tmp_path, config, hidden=HIDDEN):
    param = prototxt.read_net_param(os.path.join(ROOT, "netdefs", config, "deploy.prototxt"))
    for layer in param.layer:
        if layer.name in ("fc6", "fc7"):
            layer.inner_product_param.num_output = hidden
    path = str(tmp_path / f"{config}_deploy.prototxt")
    prototxt.write_text_proto(path, param)
    return path


def randomize(net, seed):
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        if layer.blobs:
            w, b = layer.blobs
            w.data = rng.standard_normal(w.shape, dtype=np.float32) * np.float32(np.sqrt(2 / (w.count / w.shape[0])))
            b.data = rng.standard_normal(b.shape, dtype=np.float32) * np.float32(0.1)


def correlate(x, w, b):
    """Direct 3x3, pad 1 correlation in float64: x (C, H, W), w (O, C, 3, 3) -> (O, H, W)."""
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2))  # C, H, W, 3, 3
    return np.einsum("chwij,ocij->ohw", windows, w) + b[:, None, None]


def both_conventions(pixels_rgb, conv):
    """The same RGB 0-255 image as torchvision's input (RGB, normalised) and Caffe's (BGR minus mean)."""
    x_torch = (pixels_rgb / 255 - conv.torch_mean) / conv.torch_std
    x_caffe = pixels_rgb[..., ::-1] - conv.caffe_mean
    return x_torch.transpose(2, 0, 1), x_caffe.transpose(2, 0, 1)


def test_fold_is_exact_everywhere_with_the_default_caffe_mean():
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((8, 3, 3, 3)), rng.standard_normal(8)
    pixels = rng.uniform(0, 255, (11, 13, 3))
    pixels[0, :] = 0  # saturated borders: where padding matters most
    pixels[:, -1] = 255
    conv = tc.Conventions()
    assert np.allclose(conv.caffe_mean, (103.53, 116.28, 123.675)) and conv.exact_on_border()
    fw, fb = tc.fold_into_caffe(w, b, conv)
    x_torch, x_caffe = both_conventions(pixels, conv)
    y_torch, y_caffe = correlate(x_torch, w, b), correlate(x_caffe, fw, fb)
    assert np.abs(y_caffe - y_torch).max() <= 1e-12 * np.abs(y_torch).max()
    assert np.array_equal(fb, b)  # the mean folds into nothing: both paddings are the same pixel
    uw, ub = tc.unfold_from_caffe(fw, fb, conv)
    assert np.abs(uw - w).max() < 1e-14 and np.abs(ub - b).max() < 1e-14
    # the channel swap is real: the folded filter on BGR is the torch filter on RGB, scaled
    assert np.allclose(fw[:, 0], w[:, 2] / (255 * 0.225))


def test_fold_with_another_caffe_mean_is_exact_inside_and_bounded_on_the_border():
    rng = np.random.default_rng(1)
    w, b = rng.standard_normal((8, 3, 3, 3)), rng.standard_normal(8)
    pixels = rng.uniform(0, 255, (11, 13, 3))
    conv = tc.Conventions(caffe_mean=(103.939, 116.779, 123.68))  # VGG's published mean
    assert not conv.exact_on_border()
    fw, fb = tc.fold_into_caffe(w, b, conv)
    x_torch, x_caffe = both_conventions(pixels, conv)
    diff = np.abs(correlate(x_caffe, fw, fb) - correlate(x_torch, w, b))
    scale = np.abs(correlate(x_torch, w, b)).max()
    assert diff[:, 1:-1, 1:-1].max() <= 1e-12 * scale  # every window inside the image: exact
    border = diff.copy()
    border[:, 1:-1, 1:-1] = 0
    assert 1e-4 < border.max() <= tc.border_bound(w, conv)  # the padding pixel differs: not exact there


def test_float32_fold_round_trip_is_within_one_ulp():
    rng = np.random.default_rng(2)
    w = (rng.standard_normal((64, 3, 3, 3)) * 0.05).astype(np.float32)
    b = (rng.standard_normal(64) * 0.1).astype(np.float32)
    conv = tc.Conventions()
    tw, tb = tc.unfold_from_caffe(w, b, conv)
    assert tw.dtype == np.float32
    bw, bb = tc.fold_into_caffe(tw, tb, conv)
    np.testing.assert_array_max_ulp(bw, w, maxulp=1)
    assert np.array_equal(bb, b)


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_layer_map_gives_torchvisions_keys(tmp_path, config):
    net = vggtool.Net(narrow_deploy(tmp_path, config, hidden=1), phase="TEST")
    arch, pairs = tc.layer_map(net)
    assert arch == CONFIGS[config]
    convs = [p for _, p in pairs if p.startswith("features")]
    assert convs == [f"features.{i}" for i in TORCHVISION_CONV_INDICES[arch]]
    assert pairs[0][0] == "conv1_1"
    assert pairs[-3:] == [("fc6", "classifier.0"), ("fc7", "classifier.3"), ("fc8", "classifier.6")]


@pytest.mark.parametrize("config, layer", [("vgg_a_lrn", "norm1"), ("vgg_c", "conv3_3")])
def test_configurations_without_a_torchvision_counterpart_are_refused(config, layer):
    path = os.path.join(ROOT, "netdefs", config, "deploy.prototxt")
    param = prototxt.read_net_param(path)
    for l in param.layer:
        if l.name in ("fc6", "fc7"):
            l.inner_product_param.num_output = 1
    with pytest.raises(VggtoolError, match=f"layer '{layer}'"):
        tc.layer_map(vggtool.Net(param, phase="TEST", source=path))


def weights_of(path, prototxt):
    net = vggtool.Net(prototxt, path, phase="TEST")
    return {(name, k): np.array(b.data) for name, l in net.layer_dict.items() for k, b in enumerate(l.blobs)}


def test_round_trip_caffemodel_safetensors_caffemodel(tmp_path, capsys):
    prototxt = narrow_deploy(tmp_path, "vgg_a")
    net = vggtool.Net(prototxt, phase="TEST")
    randomize(net, 3)
    original = str(tmp_path / "a.caffemodel")
    net.save(original)
    before = weights_of(original, prototxt)

    # layout only: bit-exact, down to the file's bytes
    st, back = str(tmp_path / "a.safetensors"), str(tmp_path / "back.caffemodel")
    assert main(["convert", "--net", prototxt, "--from", original, "--to", st, "--no-fold"]) == 0
    assert main(["convert", "--net", prototxt, "--from", st, "--to", back, "--no-fold"]) == 0
    with open(original, "rb") as f1, open(back, "rb") as f2:
        assert f1.read() == f2.read()
    state = tc.read_state_dict(st)
    assert sorted(state, key=tc._key_order)[:2] == ["classifier.0.bias", "classifier.0.weight"]
    assert state["classifier.0.weight"].shape == (HIDDEN, 25088)
    assert np.array_equal(state["features.3.weight"], before[("conv2_1", 0)])

    # with the fold: every tensor bit-exact but conv1_1's weights, within one ulp (float32 cannot undo x 255 std)
    st, back = str(tmp_path / "f.safetensors"), str(tmp_path / "fback.caffemodel")
    assert main(["convert", "--net", prototxt, "--from", original, "--to", st]) == 0
    out = capsys.readouterr().out
    assert "vgg11 (configuration A)" in out and "exact on the whole image" in out
    assert main(["convert", "--net", prototxt, "--from", st, "--to", back]) == 0
    after = weights_of(back, prototxt)
    for key, value in before.items():
        if key == ("conv1_1", 0):
            np.testing.assert_array_max_ulp(after[key], value, maxulp=1)
        else:
            assert np.array_equal(after[key], value), key
    from safetensors import safe_open
    with safe_open(st, "np") as f:
        meta = f.metadata()
    assert meta["format"] == "pt" and meta["arch"] == "vgg11" and "0.229, 0.224, 0.225" in meta["input"]
    state = tc.read_state_dict(st)
    w = state["features.0.weight"]
    assert np.allclose(w[:, 0], before[("conv1_1", 0)][:, 2] * 255 * 0.229, rtol=1e-6)  # R of torch = R of Caffe


def test_convert_errors(tmp_path, capsys):
    prototxt = narrow_deploy(tmp_path, "vgg_a")
    net = vggtool.Net(prototxt, phase="TEST")
    arch, state = tc.caffe_to_torchvision(net)
    bn = dict(state, **{"features.1.running_mean": np.zeros(64, np.float32)})
    with pytest.raises(VggtoolError, match="features.1.running_mean.*batch-norm"):
        tc.torchvision_to_caffe(bn, net)
    del state["classifier.6.bias"]
    with pytest.raises(VggtoolError, match="needs classifier.6.bias"):
        tc.torchvision_to_caffe(state, net)
    st = str(tmp_path / "x.safetensors")
    tc.write_safetensors(st, dict(state, **{"classifier.6.bias": np.zeros(1000, np.float32)}))
    wrong = narrow_deploy(tmp_path, "vgg_d")
    assert main(["convert", "--net", wrong, "--from", st, "--to", str(tmp_path / "x.caffemodel")]) == 1
    assert "have no place in vgg16" in capsys.readouterr().err
    net.save(str(tmp_path / "a.caffemodel"))
    assert main(["convert", "--net", prototxt, "--from", str(tmp_path / "a.caffemodel"), "--to", str(tmp_path / "x.pth")]) == 1
    assert "write .safetensors" in capsys.readouterr().err
    assert main(["convert", "--net", prototxt, "--from", st, "--to", str(tmp_path / "y.caffemodel"),
                 "--torch-std", "0.2,0,0.2"]) == 1
    assert "--torch-std" in capsys.readouterr().err


def photo_224():
    """A real photo (scikit-learn ships two), centre square, 224 x 224, RGB uint8."""
    from sklearn.datasets import load_sample_image
    img = load_sample_image("china.jpg")
    h, w = img.shape[:2]
    s = min(h, w)
    img = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return cv2.resize(img, (224, 224), interpolation=cv2.INTER_AREA)


def test_border_bound_reported_for_another_caffe_mean(tmp_path, capsys):
    prototxt = narrow_deploy(tmp_path, "vgg_a")
    net = vggtool.Net(prototxt, phase="TEST")
    randomize(net, 4)
    st = str(tmp_path / "t.safetensors")
    tc.write_safetensors(st, tc.caffe_to_torchvision(net)[1])
    assert main(["convert", "--net", prototxt, "--from", st, "--to", str(tmp_path / "c.caffemodel"),
                 "--caffe-mean", "103.939,116.779,123.68"]) == 0
    out = capsys.readouterr().out
    assert "exact in the image interior" in out and "may differ by up to" in out


# -- with torch: torchvision's layout in plain torch.nn ---------------------------------------------------

def torchvision_vgg(torch, arch, hidden, classes=1000):
    """torchvision.models.vgg.VGG's module tree (features / avgpool / classifier), without torchvision."""
    nn = torch.nn
    layers, channels = [], 3
    for v in tc.CFGS[arch]:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = v

    class VGG(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*layers)
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(
                nn.Linear(512 * 7 * 7, hidden), nn.ReLU(True), nn.Dropout(),
                nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(), nn.Linear(hidden, classes))

        def forward(self, x):
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    return VGG().eval()


def vggtool_scores(prototxt, weights, pixels_rgb, caffe_mean):
    net = vggtool.Net(prototxt, weights, phase="TEST")
    x = (pixels_rgb[..., ::-1].astype(np.float32) - np.float32(caffe_mean)).transpose(2, 0, 1)[None]
    net.forward(data=np.ascontiguousarray(x))
    return net.blobs["fc8"].data.copy(), net.blobs["prob"].data.copy()


def torch_scores(torch, model, pixels_rgb, conv):
    x = ((pixels_rgb / 255.0 - conv.torch_mean) / conv.torch_std).astype(np.float32).transpose(2, 0, 1)[None]
    with torch.no_grad():
        scores = model(torch.from_numpy(np.ascontiguousarray(x)))
    return scores.numpy(), torch.softmax(scores, 1).numpy()


def rel(a, ref):
    return float(np.abs(a - ref).max() / np.abs(ref).max())


@pytest.mark.slow  # ~25 s on the loaded 2-core machine (two VGG forward passes in each library)
def test_torchvision_layout_in_torch_scores_a_photo_as_vggtool(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from safetensors.numpy import save_file
    torch.manual_seed(0)
    conv = tc.Conventions()
    pixels = photo_224()

    # torchvision -> Caffe: a torch VGG-16 (torchvision's initialisation) saved as safetensors and as .pth
    prototxt = narrow_deploy(tmp_path, "vgg_d")
    model = torchvision_vgg(torch, "vgg16", HIDDEN)
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            torch.nn.init.uniform_(m.bias, -0.1, 0.1)
        elif isinstance(m, torch.nn.Linear):  # He-scaled (not torchvision's 0.01): scores not bias-dominated
            torch.nn.init.normal_(m.weight, 0, float(np.sqrt(2 / m.in_features)))
            torch.nn.init.uniform_(m.bias, -0.1, 0.1)
    save_file({k: v.numpy() for k, v in model.state_dict().items()}, str(tmp_path / "vgg16.safetensors"))
    torch.save(model.state_dict(), str(tmp_path / "vgg16.pth"))
    want_scores, want_prob = torch_scores(torch, model, pixels, conv)
    fc8_bias = model.classifier[6].bias.detach().numpy()
    assert np.std(want_scores - fc8_bias) > 5 * np.std(fc8_bias)  # the scores come from the image
    caffemodel = str(tmp_path / "vgg16.caffemodel")
    assert main(["convert", "--net", prototxt, "--from", str(tmp_path / "vgg16.safetensors"), "--to", caffemodel]) == 0
    assert "vgg16 (configuration D)" in capsys.readouterr().out
    scores, prob = vggtool_scores(prototxt, caffemodel, pixels, conv.caffe_mean)
    errs = rel(scores, want_scores), rel(prob, want_prob)
    print(f"torch -> caffe (vgg16): scores {errs[0]:.2e}, posteriors {errs[1]:.2e}")
    assert max(errs) < 1e-5
    assert np.argmax(scores) == np.argmax(want_scores)
    from_pth = str(tmp_path / "pth.caffemodel")  # torch.load(weights_only=True) reads the same tensors
    assert main(["convert", "--net", prototxt, "--from", str(tmp_path / "vgg16.pth"), "--to", from_pth]) == 0
    with open(caffemodel, "rb") as f1, open(from_pth, "rb") as f2:
        assert f1.read() == f2.read()

    # Caffe -> torchvision: vggtool VGG-11 weights into the torch model (strict: every key, every shape)
    prototxt = narrow_deploy(tmp_path, "vgg_a")
    net = vggtool.Net(prototxt, phase="TEST")
    randomize(net, 5)
    conv1 = net.layer_dict["conv1_1"].blobs[0]
    conv1.data = conv1.data / np.float32(100)  # 0-255 inputs: keep the scores O(1), as a trained net's
    caffemodel = str(tmp_path / "mine.caffemodel")
    net.save(caffemodel)
    st = str(tmp_path / "mine.safetensors")
    assert main(["convert", "--net", prototxt, "--from", caffemodel, "--to", st]) == 0
    from safetensors.torch import load_file
    model = torchvision_vgg(torch, "vgg11", HIDDEN)
    model.load_state_dict(load_file(st), strict=True)
    want_scores, want_prob = vggtool_scores(prototxt, caffemodel, pixels, conv.caffe_mean)
    fc8_bias = np.asarray(net.layer_dict["fc8"].blobs[1].data)
    assert np.std(want_scores - fc8_bias) > 5 * np.std(fc8_bias)
    scores, prob = torch_scores(torch, model, pixels, conv)
    errs = rel(scores, want_scores), rel(prob, want_prob)
    print(f"caffe -> torch (vgg11): scores {errs[0]:.2e}, posteriors {errs[1]:.2e}")
    assert max(errs) < 1e-5
    assert np.argmax(scores) == np.argmax(want_scores)
