"""Unmodified-style pycaffe scripts (tests/pycaffe_scripts/) run as subprocesses with
`import vggtool.pycaffe as caffe`: the classification notebook's steps and the LeNet NetSpec example."""
import os
import re
import subprocess
import sys

import cv2
import lmdb
import numpy as np
import pytest

from vggtool.data.datum import record_key
from vggtool.net import Net
from vggtool.proto import caffe_pb2

from repo_paths import REPO  # noqa: E402
SCRIPTS = os.path.join(os.path.dirname(__file__), "pycaffe_scripts")

DEPLOY = """name: "colours"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 10 dim: 3 dim: 16 dim: 16 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 3 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def run_script(name, cwd, import_caffe=False):
    """Run a script of tests/pycaffe/pycaffe_scripts; with import_caffe, its import line turned back into
    pycaffe's own `import caffe` and run through `python -m vggtool.pycaffe`."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO,
                                                       os.environ.get("PYTHONPATH", "")]))
    script = os.path.join(SCRIPTS, name)
    command = [sys.executable, script]
    if import_caffe:
        text = open(script).read().replace("import vggtool.pycaffe as caffe", "import caffe")
        text = text.replace("from vggtool.pycaffe import", "from caffe import")
        assert "vggtool" not in text.split('"""')[-1]
        script = os.path.join(str(cwd), "original_" + name)
        with open(script, "w") as f:
            f.write(text)
        command = [sys.executable, "-m", "vggtool.pycaffe", script]
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize("import_caffe", [False, True])
def test_classification_script(tmp_path, import_caffe):
    (tmp_path / "deploy.prototxt").write_text(DEPLOY)
    net = Net(str(tmp_path / "deploy.prototxt"), phase="TEST")
    net.params["conv"][0].data = np.eye(3).reshape(3, 3, 1, 1)
    net.params["conv"][1].data[...] = 0
    net.params["fc"][0].data = 0.05 * np.eye(3)
    net.params["fc"][1].data[...] = 0
    net.save(str(tmp_path / "weights.caffemodel"))
    mean = np.empty((3, 16, 16), np.float32)
    mean[:] = np.array([10, 20, 30], np.float32)[:, None, None]  # B, G, R
    np.save(tmp_path / "mean.npy", mean)
    (tmp_path / "labels.txt").write_text("blue\ngreen\nred\n")
    image = np.zeros((16, 16, 3), np.uint8)
    image[..., 2] = 255  # OpenCV writes BGR: a red image
    image[4:8, 4:8, 1] = 51  # a touch of green in one corner patch
    cv2.imwrite(str(tmp_path / "image.png"), image)

    out = run_script("classify.py", tmp_path, import_caffe)
    assert "predicted class is: 2" in out
    assert "output label: red" in out
    assert "Classifier predicts: red" in out
    # The probabilities by hand: BGR means of the image after raw_scale 255 and mean subtraction, x 0.05
    green = 51 * 16 / 256
    logits = 0.05 * np.array([0 - 10, green - 20, 255 - 30])
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    printed = re.search(r"probabilities and labels: \[\((?:np\.float32\()?([0-9.e-]+)", out).group(1)
    assert abs(float(printed) - expected[2]) < 1e-5
    assert "data\t(50, 3, 16, 16)" in out  # the reshape took effect
    assert "fc\t(3, 3) (3,)" in out


def _digits_lmdb(path, images, labels):
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i, (image, label) in enumerate(zip(images, labels)):
            d = caffe_pb2.Datum(channels=1, height=28, width=28, label=int(label), data=image.tobytes())
            txn.put(record_key(i, f"{i}.png"), d.SerializeToString())
    env.close()


def test_lenet_netspec_script(tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.stack([cv2.resize((im * 16).clip(0, 255).astype(np.uint8), (28, 28)) for im in digits.images])
    (tmp_path / "mnist").mkdir()
    _digits_lmdb(tmp_path / "mnist" / "mnist_train_lmdb", images[:480], digits.target[:480])
    _digits_lmdb(tmp_path / "mnist" / "mnist_test_lmdb", images[1000:1100], digits.target[1000:1100])

    out = run_script("lenet_netspec.py", tmp_path)
    text = (tmp_path / "mnist" / "lenet_auto_train.prototxt").read_text()
    assert 'source: "mnist/mnist_train_lmdb"' in text and "backend: LMDB" in text
    assert "('conv1', (16, 20, 24, 24))" in out and "('score', (10, 500))" in out
    lr = float(re.search(r"iter 31 lr ([0-9.e-]+)", out).group(1))
    assert abs(lr - 0.01 * (1 + 0.0001 * 31) ** -0.75) < 1e-9  # the "inv" policy at iteration 31
    first, last = map(float, re.search(r"first train loss ([0-9.e-]+) last train loss ([0-9.e-]+)", out).groups())
    assert last < 0.7 * first  # it learns
    acc = float(re.search(r"test accuracy ([0-9.]+)", out).group(1))
    assert acc > 0.3  # chance is 0.1
