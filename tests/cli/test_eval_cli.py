"""`vggtool test` (Caffe mode and VGG evaluation), `fuse` and `classify` end to end, in-process."""
import math
import re

import cv2
import numpy as np
import pytest

from eval_helpers import CLASSES, chain_terms, make_model, random_image
from numerics import assert_close_to_scale
from vggtool import Net
from vggtool.vgg import evaluate as ev
from vggtool.cli import main
from vggtool.data.datum import array_to_datum, open_lmdb, record_key

SIZES = [(32, 32), (50, 36), (40, 71), (64, 48)]


@pytest.fixture
def model(tmp_path):
    return make_model(tmp_path)


@pytest.fixture
def image_list(tmp_path, rng):
    root = tmp_path / "images"
    root.mkdir()
    lines, images = [], []
    for i, (h, w) in enumerate(SIZES):
        img = random_image(rng, h, w)
        cv2.imwrite(str(root / f"img{i}.png"), img)
        lines.append(f"img{i}.png {i % CLASSES}")
        images.append(img)
    listfile = tmp_path / "val.txt"
    listfile.write_text("\n".join(lines) + "\n")
    return str(listfile), str(root), images


def test_caffe_test_mode_with_dummy_data(tmp_path, capsys):
    text = """
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 }
    data_filler { type: "constant" value: 1 } data_filler { type: "constant" value: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 3 } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip" bottom: "label" top: "accuracy" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    net = Net(str(path), phase="TEST")
    net.params["ip"][0].data = np.zeros((3, 3))
    net.params["ip"][1].data = np.array([0.0, 0.0, 1.0])  # class 2 wins everywhere
    weights = str(tmp_path / "w.caffemodel")
    net.save(weights)
    assert main(["test", "--net", str(path), "--weights", weights, "--iterations", "3"]) == 0
    out = capsys.readouterr().err  # glog lines go to stderr, as Caffe's
    loss = -math.log(math.e / (2 + math.e))
    assert re.search(r"^I\d{4} [\d:.]+ +\d+ \S+\] Running for 3 iterations\.$", out, re.M)
    assert len(re.findall(r"\] Batch \d, accuracy = 1$", out, re.M)) == 3
    assert re.search(r"\] Batch 2, loss = 0\.551445$", out, re.M)
    assert re.search(r"\] accuracy = 1$", out, re.M)
    assert re.search(rf"\] loss = {loss:.6g} \(\* 1 = {loss:.6g} loss\)$", out, re.M)
    assert main(["test", "--net", str(path), "--weights", str(tmp_path / "none"), "--iterations", "1"]) == 1


def test_evaluation_list_file_sizes_and_npz(model, image_list, tmp_path, capsys):
    listfile, root, images = image_list
    out = str(tmp_path / "scores.npz")
    rc = main(["test", "--net", model[0], "--weights", model[1], "--data", listfile, "--root", root,
               "--scales", "32,40", "--flip", "--mode", "both", "--mean-value", "100,110,120", "--out", out])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    with np.load(out, allow_pickle=False) as z:
        post, labels, keys = z["posteriors"], z["labels"], z["keys"]
    assert post.shape == (len(SIZES), CLASSES)
    assert list(keys) == [f"img{i}.png" for i in range(len(SIZES))]
    assert list(labels) == [i % CLASSES for i in range(len(SIZES))]
    e = ev.Evaluator(model[0], model[1], scales=[32, 40], mode="both", flip=True, mean=[100, 110, 120])
    for img, p in zip(images, post):
        assert_close_to_scale(p, e.evaluate_image(img), chain_terms("prob") + 50)
    top1 = 100 * ev.topk_error(post, labels, 1)
    assert f"top-1 error = {top1:.2f}%" in captured.out
    assert "top-5 error = " in captured.out


def test_evaluation_from_lmdb_matches_list(model, image_list, tmp_path, capsys):
    listfile, root, images = image_list
    db = str(tmp_path / "val_lmdb")
    env = open_lmdb(db, write=True, map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i, img in enumerate(images):
            txn.put(record_key(i, f"img{i}.png"), array_to_datum(img, i % CLASSES).SerializeToString())
    env.close()
    a, b = str(tmp_path / "a.npz"), str(tmp_path / "b.npz")
    common = ["--net", model[0], "--weights", model[1], "--scales", "36", "--mode", "dense"]
    assert main(["test", *common, "--data", db, "--out", a, "--limit", "3"]) == 0
    assert main(["test", *common, "--data", listfile, "--root", root, "--out", b, "--limit", "3"]) == 0
    pa, la, ka = ev.load_scores(a)
    pb, lb, _ = ev.load_scores(b)
    assert len(ka) == 3 and ka[0] == "00000000_img0.png"
    assert_close_to_scale(pa, pb, chain_terms("prob"))
    np.testing.assert_array_equal(la, lb)


def test_fuse_cli(model, image_list, tmp_path, capsys):
    listfile, root, _ = image_list
    other = make_model(tmp_path, seed=99, name="other")
    outs = []
    for net, weights in (model, other):
        outs.append(str(tmp_path / f"{len(outs)}.npz"))
        assert main(["test", "--net", net, "--weights", weights, "--data", listfile, "--root", root,
                     "--scales", "32", "--out", outs[-1]]) == 0
    fused = str(tmp_path / "fused.npz")
    capsys.readouterr()
    assert main(["fuse", *outs, "--out", fused]) == 0
    assert "fusion of 2 model(s): top-1 error = " in capsys.readouterr().out
    p, _, _ = ev.load_scores(fused)
    np.testing.assert_allclose(p, (ev.load_scores(outs[0])[0] + ev.load_scores(outs[1])[0]) / 2, atol=1e-6)
    # a score file of another data set (other images) is refused with a clear message
    short = str(tmp_path / "short.npz")
    assert main(["test", "--net", model[0], "--weights", model[1], "--data", listfile, "--root", root,
                 "--scales", "32", "--out", short, "--limit", "2"]) == 0
    capsys.readouterr()
    assert main(["fuse", outs[0], short]) == 1
    err = capsys.readouterr().err
    assert "short.npz: its images (2) differ" in err and "Traceback" not in err


def test_user_errors_are_clear(model, image_list, tmp_path, capsys):
    listfile, root, _ = image_list
    base = ["test", "--net", model[0], "--weights", model[1]]
    assert main([*base, "--data", str(tmp_path / "missing_lmdb"), "--scales", "32"]) == 1
    assert "missing_lmdb does not exist" in capsys.readouterr().err
    assert main([*base, "--data", listfile, "--root", root, "--scales", "32,16"]) == 1
    assert "Q=16 is smaller than the 32x32 crop" in capsys.readouterr().err
    assert main([*base, "--data", listfile, "--root", str(tmp_path), "--scales", "32"]) == 1
    assert "val.txt:1: cannot read image" in capsys.readouterr().err
    assert main(["fuse", str(tmp_path / "nothing.npz")]) == 1
    assert "nothing.npz does not exist" in capsys.readouterr().err


def test_classify_prints_top5_with_names(model, image_list, tmp_path, capsys):
    _, root, images = image_list
    labels = tmp_path / "synset_words.txt"
    labels.write_text("".join(f"n{i:08d} thing {i}\n" for i in range(CLASSES)))
    path = f"{root}/img2.png"
    assert main(["classify", "--net", model[0], "--weights", model[1], "--labels", str(labels),
                 "--scales", "32,40", path]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == path and len(out) == 6
    p = ev.Evaluator(model[0], model[1], scales=[32, 40], flip=True).evaluate_image(images[2])
    best = np.argsort(-p, kind="stable")[:5]
    assert [line.split(" - ")[1] for line in out[1:]] == [f"n{c:08d} thing {c}" for c in best]
    # default scales: crop x 8/7, 12/7, 16/7 (256, 384, 512 for 224) -> 37, 55, 73 here
    assert main(["classify", "--net", model[0], "--weights", model[1], path]) == 0
    assert "class " in capsys.readouterr().out


def test_constant_scores_count_as_errors_in_test_and_fuse(model, image_list, tmp_path, capsys):
    """All-zero weights give every class the same posterior: a tie is a miss (as the Accuracy layer), so
    top-1 and top-5 error are 100%, in `test --data` and in `fuse`."""
    listfile, root, _ = image_list
    net = Net(model[0], model[1], phase="TEST")
    for blobs in net.params.values():
        for b in blobs:
            b.data[...] = 0
    zero = str(tmp_path / "zero.caffemodel")
    net.save(zero)
    out = str(tmp_path / "zero.npz")
    assert main(["test", "--net", model[0], "--weights", zero, "--data", listfile, "--root", root,
                 "--scales", "32", "--out", out]) == 0
    text = capsys.readouterr().out
    assert "top-1 error = 100.00%" in text and "top-5 error = 100.00% (4 images)" in text
    assert main(["fuse", out, out]) == 0
    assert "fusion of 2 model(s): top-1 error = 100.00%, top-5 error = 100.00%" in capsys.readouterr().out


def test_weights_that_fit_nothing_are_an_error_naming_the_file(model, image_list, tmp_path, capsys):
    """--weights of another net (no layer name in common) or a net definition (a text file without weights)
    must not run the net at its random initialisation."""
    listfile, root, _ = image_list
    other = tmp_path / "other.prototxt"
    other.write_text('name: "other"\nlayer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 5 } } }\n'
                     'layer { name: "unrelated_ip" type: "InnerProduct" bottom: "x" top: "y" '
                     'inner_product_param { num_output: 3 } }\n')
    Net(str(other), phase="TEST").save(str(tmp_path / "other.caffemodel"))
    for weights in (str(tmp_path / "other.caffemodel"), model[0]):
        for extra in (["--data", listfile, "--root", root, "--scales", "32"], ["--iterations", "1"]):
            assert main(["test", "--net", model[0], "--weights", weights, *extra]) == 1
            err = capsys.readouterr().err
            assert weights in err and "no parameter" in err, err
    img = str(tmp_path / "images" / "img0.png")
    assert main(["classify", "--net", model[0], "--weights", str(tmp_path / "other.caffemodel"), img]) == 1
    assert "other.caffemodel" in capsys.readouterr().err


def test_layers_left_at_their_fillers_are_named(model, image_list, tmp_path, capsys):
    """Weights that cover only some layers: the run goes on (as Caffe's), with a warning naming the layers
    whose parameters keep their random initialisation."""
    from vggtool.io import prototxt

    listfile, root, _ = image_list
    param = prototxt.read_net_param(model[1])
    for layer in param.layer:
        if layer.name in ("fc7", "fc8"):
            del layer.blobs[:]
    partial = tmp_path / "partial.caffemodel"
    partial.write_bytes(param.SerializeToString())
    assert main(["test", "--net", model[0], "--weights", str(partial), "--data", listfile, "--root", root,
                 "--scales", "32"]) == 0
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if line.startswith("W") and "fc7, fc8" in line]
    assert len(warning) == 1 and str(partial) in warning[0] and "fc6" not in warning[0], err
    assert main(["test", "--net", model[0], "--weights", model[1], "--data", listfile, "--root", root,
                 "--scales", "32"]) == 0
    assert "left at their fillers" not in capsys.readouterr().err
