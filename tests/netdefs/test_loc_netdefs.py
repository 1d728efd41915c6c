"""netdefs/vgg_d_loc and solver/vgg_d_loc_*: generated files up to date, lr_mult as stated, nets build and
train one step on a tiny LMDB with boxes (layer widths shrunk so the test stays fast; structure kept)."""
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from data_prep.cli import main as data_prep
from vggtool import Net
from vggtool.io.prototxt import read_net_param, read_solver_param

from repo_paths import REPO  # noqa: E402
ROOT = REPO
LOC = os.path.join(ROOT, "netdefs", "vgg_d_loc")
CONV = [f"conv{b}_{i}" for b, n in enumerate([2, 2, 3, 3, 3], 1) for i in range(1, n + 1)]


def test_generated_files_are_current(tmp_path):
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_loc_netdefs.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True)
    for rel in ["netdefs/vgg_d_loc/" + f for f in os.listdir(LOC)] + \
               [f"solver/vgg_d_loc_{v}.prototxt" for v in ("pcr", "pcr_fc", "scr")]:
        with open(os.path.join(ROOT, rel)) as a, open(tmp_path / rel) as b:
            assert a.read() == b.read(), f"{rel} differs from tools/make_loc_netdefs.py's output"


def test_solvers_lr_and_nets():
    for v in ("pcr", "pcr_fc", "scr"):
        s = read_solver_param(os.path.join(ROOT, "solver", f"vgg_d_loc_{v}.prototxt"))
        assert s.base_lr == pytest.approx(1e-3)
        assert s.net == f"netdefs/vgg_d_loc/train_val_{v}.prototxt"
        assert s.lr_policy == "plateau" and s.plateau_output == "loss"


def test_deploy_matches_classification_d_names():
    """conv1_1..fc7 carry D's names (weights copy from the classification net); fc8_loc is new."""
    d = [l.name for l in read_net_param(os.path.join(ROOT, "netdefs", "vgg_d", "deploy.prototxt")).layer
         if l.type in ("Convolution", "InnerProduct")]
    for v, outputs in (("pcr", 4000), ("scr", 4)):
        net = read_net_param(os.path.join(LOC, f"deploy_{v}.prototxt"))
        weighted = [l for l in net.layer if l.type in ("Convolution", "InnerProduct")]
        assert [l.name for l in weighted] == d[:-1] + ["fc8_loc"]
        assert weighted[-1].inner_product_param.num_output == outputs


def test_loc_body_is_classification_d_body():
    """conv1_1 .. drop7 are configuration D's layers message for message (one generator writes both); the
    train_val differs only in fillers and lr_mult (frozen convolutions in pcr_fc)."""
    def layers(path, strip=False):
        out = []
        for layer in read_net_param(path).layer:
            if layer.type in ("Input", "Data") or layer.name.startswith(("fc8", "loss", "accuracy", "prob")):
                continue
            if strip:
                del layer.param[:]
                for p in (layer.convolution_param, layer.inner_product_param):
                    p.ClearField("weight_filler")
                    p.ClearField("bias_filler")
            out.append(layer)
        return out
    d = os.path.join(ROOT, "netdefs", "vgg_d")
    assert len(layers(os.path.join(d, "deploy.prototxt"))) == 13 * 2 + 5 + 2 * 3
    for v in ("pcr", "scr"):
        assert layers(os.path.join(LOC, f"deploy_{v}.prototxt")) == layers(os.path.join(d, "deploy.prototxt"))
    for v in ("pcr", "pcr_fc", "scr"):
        assert layers(os.path.join(LOC, f"train_val_{v}.prototxt"), strip=True) == \
            layers(os.path.join(d, "train_val.prototxt"), strip=True)


@pytest.fixture(scope="module")
def tiny_db(tmp_path_factory):
    root = tmp_path_factory.mktemp("locdb")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(2):
        cv2.imwrite(str(root / f"{i}.png"), rng.integers(0, 256, (32, 40, 3), dtype=np.uint8))
        lines.append(f"{i}.png {i * 7} 4 2 30 20")
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    assert data_prep(["convert_imageset", str(root), str(root / "list.txt"), str(root / "db")]) == 0
    return str(root / "db")


def shrunk(variant, db):
    """The train_val with the tiny LMDB as source, batch 2, conv widths cut to 4 channels, fc6/fc7 to 16."""
    p = read_net_param(os.path.join(LOC, f"train_val_{variant}.prototxt"))
    for layer in p.layer:
        if layer.type == "Data":
            layer.data_param.source, layer.data_param.batch_size = db, 2
        elif layer.type == "Convolution":
            layer.convolution_param.num_output = 4
        elif layer.type == "InnerProduct" and layer.name != "fc8_loc":
            layer.inner_product_param.num_output = 16  # at 4, ReLU + dropout could leave fc7 all zero
    return p


@pytest.mark.parametrize("variant,learning", [("pcr", CONV + ["fc6", "fc7", "fc8_loc"]),
                                              ("pcr_fc", ["fc6", "fc7", "fc8_loc"]),
                                              ("scr", CONV + ["fc6", "fc7", "fc8_loc"])])
def test_train_val_builds_trains_and_lr_mults(tiny_db, variant, learning):
    net = Net(shrunk(variant, tiny_db), phase="TRAIN", seed=1)
    lrs = {}
    for p in net.learnable_params:
        lrs.setdefault(p.layer, []).append(p.lr_mult)
    assert set(lrs) == set(CONV + ["fc6", "fc7", "fc8_loc"])
    for layer, mults in lrs.items():
        assert mults == ([1, 2] if layer in learning else [0, 0]), layer
    assert net.blobs["fc8_loc"].shape == (2, 4000 if variant.startswith("pcr") else 4)
    net.forward_backward()
    box = np.asarray(net.blobs["box"].data)  # (cx, cy, w, h) in crop units
    # 32x40 -> smallest side 256 (x8): the box (4, 2, 30, 20) becomes 208 x 144 pixels of the 224 crop.
    np.testing.assert_allclose(box[:, 2:], [[208 / 224, 144 / 224]] * 2, rtol=1e-6)
    assert np.isfinite(float(net.blobs["loss"].data))
    grad = np.abs(np.asarray(net.params["fc8_loc"][0].diff)).reshape(-1, 4, 16).sum(axis=(1, 2))
    if variant.startswith("pcr"):  # only the rows of the two ground-truth classes (0 and 7) get gradient
        assert set(np.flatnonzero(grad)) <= {0, 7} and grad[0] > 0
    assert np.any(np.asarray(net.params["conv1_1"][0].diff) != 0) == ("conv1_1" in learning)
