"""One transform: test --data / classify / extract take the mean and scale from the model's own
transform_param (net prototxt, then the weights file) unless a flag overrides; no silent mean 0."""
import cv2
import numpy as np
import pytest

from eval_helpers import make_model, random_image, weights_with_data_layer
from vggtool.vgg import evaluate as ev
from vggtool.cli import main
from vggtool.io import prototxt, wire
from vggtool.io.wire import caffemodel_layers
from vggtool.proto import caffe_pb2
from vggtool.data.recorded_transform import recorded_transform


def test_layers_read_without_blobs(tmp_path):
    net, weights = make_model(tmp_path)
    snap = weights_with_data_layer(tmp_path, weights, (1, 2, 3), scale=0.5)
    layers = caffemodel_layers(snap)
    full = prototxt.read_net_param(snap, is_text=False)
    assert [l.name for l in layers] == [l.name for l in full.layer]
    assert all(len(l.blobs) == 0 for l in layers) and any(len(l.blobs) for l in full.layer)
    stripped = caffe_pb2.LayerParameter()
    stripped.CopyFrom(full.layer[3])
    stripped.ClearField("blobs")
    assert layers[3] == stripped
    tp, where = recorded_transform(net, snap)
    assert list(tp.mean_value) == [1, 2, 3] and tp.scale == 0.5 and "test_data" in where


def _images(tmp_path, rng):
    lines = []
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), random_image(rng, 32, 36))
        lines.append(f"{i}.png {i}")
    (tmp_path / "l.txt").write_text("\n".join(lines) + "\n")
    return str(tmp_path / "l.txt")


def test_test_takes_the_recorded_mean_and_scale_unless_overridden(tmp_path, rng, capsys):
    net, weights = make_model(tmp_path)
    snap = weights_with_data_layer(tmp_path, weights, (100, 110, 120), scale=0.5)
    listing = _images(tmp_path, rng)
    run = ["test", "--net", net, "--data", listing, "--root", str(tmp_path), "--scales", "32"]

    def scores(*extra, weights_file=snap):
        out = str(tmp_path / "s.npz")
        assert main(run + ["--weights", weights_file, "--out", out, *extra]) == 0
        return ev.load_scores(out)[0]

    recorded = scores()
    err = capsys.readouterr().err
    assert "input transform from" in err and "mean_value 100,110,120" in err and "scale 0.5" in err
    explicit = scores("--mean-value", "100,110,120", "--scale", "0.5", weights_file=weights)
    np.testing.assert_allclose(recorded, explicit, atol=1e-6)
    capsys.readouterr()
    plain = scores(weights_file=weights)
    assert "not mean-subtracted" in capsys.readouterr().err  # said, not silent
    assert not np.allclose(plain, recorded, atol=1e-4)
    overridden = scores("--mean-value", "0", "--scale", "1")
    np.testing.assert_allclose(overridden, plain, atol=1e-6)
    np.testing.assert_allclose(scores("--no-recorded-transform"), plain, atol=1e-6)


def test_recorded_mean_file_and_missing_file(tmp_path, rng, capsys):
    net, weights = make_model(tmp_path)
    mean = caffe_pb2.BlobProto(num=1, channels=3, height=2, width=2)
    mean.data.extend([100.0] * 4 + [110.0] * 4 + [120.0] * 4)
    wire.write_binary_proto(str(tmp_path / "m.binaryproto"), mean)
    listing = _images(tmp_path, rng)
    base = ["test", "--net", net, "--data", listing, "--root", str(tmp_path), "--scales", "32"]
    snap = weights_with_data_layer(tmp_path, weights, mean_file="m.binaryproto")  # beside the snapshot
    a, b = str(tmp_path / "a.npz"), str(tmp_path / "b.npz")
    assert main(base + ["--weights", snap, "--out", a]) == 0
    assert main(base + ["--weights", weights, "--mean-value", "100,110,120", "--out", b]) == 0
    np.testing.assert_allclose(ev.load_scores(a)[0], ev.load_scores(b)[0], atol=1e-6)
    bad = weights_with_data_layer(tmp_path, weights, mean_file="gone.binaryproto")
    capsys.readouterr()
    assert main(base + ["--weights", bad]) == 1
    assert "mean_file 'gone.binaryproto' not found" in capsys.readouterr().err
