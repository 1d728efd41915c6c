"""vggtool localize: constant-box nets whose every prediction is known, so boxes are hand-computed."""
import cv2
import numpy as np
import pytest

import vggtool
from vggtool.vgg import localize as L
from vggtool.cli import main
from vggtool.vgg.evaluate import save_scores
from vggtool.io.prototxt import parse_net_text

DEPLOY = """name: "const_box"
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: 3 dim: 8 dim: 8 }} }} }}
layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool" pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "fc_box" type: "InnerProduct" bottom: "pool" top: "fc_box" inner_product_param {{ num_output: {n} }} }}
"""


def const_net(tmp_path, params, name="net"):
    """A deploy net (8x8 input, stride 2) predicting the same (K, 4) box parameters in every window."""
    params = np.asarray(params, np.float64).reshape(-1)
    text = DEPLOY.format(n=params.size)
    path = tmp_path / f"{name}.prototxt"
    path.write_text(text)
    net = vggtool.Net(parse_net_text(text), phase="TEST")
    net.params["fc_box"][0].data[...] = 0
    net.params["fc_box"][1].data[...] = params
    net.save(str(tmp_path / f"{name}.caffemodel"))
    return str(path), str(tmp_path / f"{name}.caffemodel")


def test_dense_boxes_are_placed_in_their_windows(tmp_path):
    reg = L.Regressor(*const_net(tmp_path, [0.5, 0.5, 0.5, 0.5]))
    assert (reg.classes, reg.stride, reg.crop_h) == (1, 2, 8)
    b = reg.dense_boxes(np.zeros((12, 12, 3), np.uint8), 12)
    # 12x12 image -> 3x3 windows at offsets 0, 2, 4; box (2, 2, 6, 6) inside each window.
    expect = [[2 + x, 2 + y, 6 + x, 6 + y] for y in (0, 2, 4) for x in (0, 2, 4)]
    np.testing.assert_allclose(b[0], expect)
    # Flip: mirrored windows give the same set of boxes for this symmetric box.
    bf = reg.dense_boxes(np.zeros((12, 12, 3), np.uint8), 12, flip=True)
    assert bf.shape == (1, 18, 4)
    assert sorted(map(tuple, bf[0, 9:])) == sorted(map(tuple, np.array(expect, float)))
    # Q = 24: the image doubles, so boxes come back at half size: windows at 0, 2, .., 16 -> /2.
    b24 = reg.dense_boxes(np.zeros((12, 12, 3), np.uint8), 24)
    np.testing.assert_allclose(b24[0, 0], [1, 1, 3, 3])
    np.testing.assert_allclose(b24[0, -1], [1 + 8, 1 + 8, 3 + 8, 3 + 8])


def test_full_protocol_merging(tmp_path):
    reg = L.Regressor(*const_net(tmp_path, [0.5, 0.5, 0.5, 0.5]))
    image = np.zeros((12, 12, 3), np.uint8)
    # Neighbours overlap with IoU 1/3 (distance 2/3): threshold 0.5 merges none, 0.99 merges all 9
    # into their mean (4, 4, 8, 8).
    (c, box, support), = L.localize_full([reg], image, [3], [12], threshold=0.5)
    assert c == 3 and support == 1 and list(box) == [2, 2, 6, 6]
    (c, box, support), = L.localize_full([reg], image, [3], [12], threshold=0.99)
    np.testing.assert_allclose(box, [4, 4, 8, 8])
    assert support == 9


def test_centre_protocol_and_per_class_choice(tmp_path):
    # PCR with 2 classes: class 0 the centred half-size box, class 1 the whole crop.
    reg = L.Regressor(*const_net(tmp_path, [[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 1, 1]]))
    image = np.zeros((12, 16, 3), np.uint8)
    # Centre 8x8 crop at x 4, y 2: class 0 box (2,2,6,6) -> (6,4,10,8); class 1 -> (4,2,12,10).
    np.testing.assert_allclose(reg.centre_box(image, 12, 0), [6, 4, 10, 8])
    np.testing.assert_allclose(reg.centre_box(image, 12, 1), [4, 2, 12, 10])
    # Q = 24: 24x32 image, crop at x 12, y 8: (14,10,18,14) -> halved (7,5,9,7).
    np.testing.assert_allclose(reg.centre_box(image, 24, 0), [7, 5, 9, 7])


def write_set(tmp_path):
    """Three 12x16 images; box lists with ground truth for labels 0, 1, 1."""
    lines = []
    gts = [(0, [8, 4, 12, 8]), (1, [4, 2, 12, 10]), (1, [0, 0, 3, 3])]
    for i, (label, gt) in enumerate(gts):
        cv2.imwrite(str(tmp_path / f"i{i}.png"), np.zeros((12, 16, 3), np.uint8))
        lines.append(f"i{i}.png {label} " + " ".join(map(str, gt)))
    (tmp_path / "val.txt").write_text("\n".join(lines) + "\n")
    return tmp_path / "val.txt"


def test_cli_centre_and_full(tmp_path, capsys):
    listing = write_set(tmp_path)
    net, weights = const_net(tmp_path, [[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 1, 1]])
    base = ["localize", "--net", net, "--weights", weights, "--data", str(listing), "--root", str(tmp_path),
            "--scales", "12"]
    assert main(base + ["--protocol", "centre", "--out", str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out
    # Image 0: centre box (6, 4, 10, 8) vs (8, 4, 12, 8): IoU 8 / 24, wrong; image 1 right; image 2 wrong.
    assert "localisation error (ground-truth class, centre crop) = 66.67% (3 images)" in out
    import json
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["correct"] == [False, True, False]
    np.testing.assert_allclose(saved["boxes"][1][0], [4, 2, 12, 10])
    # Full: the classifier ranks class 1 first for images 0, 1 and class 0 for image 2. Threshold 1
    # merges class 1's windows (all overlapping) into their mean (4, 2, 12, 10); class 0's 4x4 boxes
    # form clusters, the first being (8, 4, 12, 8) (checked against localize_full directly).
    # With top 1, image 0 gets a class-1 guess (wrong class), image 1 is right, image 2's box misses.
    posts = np.array([[0.2, 0.8], [0.1, 0.9], [0.7, 0.3]])
    save_scores(str(tmp_path / "s.npz"), posts, [0, 1, 1], ["i0.png", "i1.png", "i2.png"])
    assert main(base + ["--scores", str(tmp_path / "s.npz"), "--top", "1", "--threshold", "1",
                        "--out", str(tmp_path / "f.npz")]) == 0
    assert "top-1 localisation error = 66.67% (3 images)" in capsys.readouterr().out
    with np.load(tmp_path / "f.npz") as z:
        np.testing.assert_array_equal(z["classes"][:, 0], [1, 1, 0])
        assert list(z["correct"]) == [False, True, False]
        np.testing.assert_allclose(z["boxes"][:, 0], [[4, 2, 12, 10], [4, 2, 12, 10], [8, 4, 12, 8]])
    reg = L.Regressor(net, weights)
    (_, box, _), = L.localize_full([reg], np.zeros((12, 16, 3), np.uint8), [0], [12], threshold=1)
    np.testing.assert_allclose(box, [8, 4, 12, 8])
    # Top 2 also guesses class 0 for image 0: its merged box must match. Two nets pool their boxes.
    assert main(base + ["--net", net, "--weights", weights, "--scores", str(tmp_path / "s.npz"),
                        "--top", "2", "--flip", "--threshold", "1"]) == 0
    assert "top-2 localisation error = 33.33% (3 images)" in capsys.readouterr().out


def test_cli_errors(tmp_path, capsys):
    listing = write_set(tmp_path)
    net, weights = const_net(tmp_path, [0.5, 0.5, 0.5, 0.5])
    base = ["localize", "--net", net, "--weights", weights, "--data", str(listing), "--root", str(tmp_path)]
    assert main(base) == 1
    assert "--scores S.npz" in capsys.readouterr().err
    save_scores(str(tmp_path / "s.npz"), np.ones((1, 2)), [0], ["other.png"])
    assert main(base + ["--scores", str(tmp_path / "s.npz")]) == 1
    assert "has no image 'i0.png'" in capsys.readouterr().err
    assert main(base + ["--protocol", "centre", "--scales", "4"]) == 1
    assert "smaller than the net's 8x8 input" in capsys.readouterr().err
    (tmp_path / "nobox.txt").write_text("i0.png 0\n")
    assert main(["localize", "--net", net, "--weights", weights, "--data", str(tmp_path / "nobox.txt"),
                 "--root", str(tmp_path), "--protocol", "centre"]) == 1
    assert "has no box" in capsys.readouterr().err


def test_cli_classifier_run_here(tmp_path, capsys):
    """--cls-net: a classifier (constant posteriors favouring class 1) ranks the classes in-process."""
    listing = write_set(tmp_path)
    net, weights = const_net(tmp_path, [[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 1, 1]])
    text = DEPLOY.format(n=2) + 'layer { name: "prob" type: "Softmax" bottom: "fc_box" top: "prob" }\n'
    (tmp_path / "cls.prototxt").write_text(text)
    cls = vggtool.Net(parse_net_text(text), phase="TEST")
    cls.params["fc_box"][0].data[...] = 0
    cls.params["fc_box"][1].data[...] = [0.0, 1.0]
    cls.save(str(tmp_path / "cls.caffemodel"))
    assert main(["localize", "--net", net, "--weights", weights, "--data", str(listing), "--root", str(tmp_path),
                 "--scales", "12", "--threshold", "1", "--top", "1", "--cls-net", str(tmp_path / "cls.prototxt"),
                 "--cls-weights", str(tmp_path / "cls.caffemodel"), "--out", str(tmp_path / "o.npz")]) == 0
    # Class 1 everywhere: only image 1 (class 1, box (4, 2, 12, 10)) is right.
    assert "top-1 localisation error = 66.67% (3 images)" in capsys.readouterr().out
    with np.load(tmp_path / "o.npz") as z:
        assert list(z["classes"][:, 0]) == [1, 1, 1] and list(z["correct"]) == [False, True, False]


def test_cli_full_tied_posteriors_count_against(tmp_path, capsys):
    """Equal posteriors for both classes: the true class is not in the top 1 (ties count against, the
    rule of `vggtool test` and the Accuracy layer), so no image is localised at top-1; at top-2 it is."""
    listing = write_set(tmp_path)
    net, weights = const_net(tmp_path, [[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 1, 1]])
    save_scores(str(tmp_path / "s.npz"), np.full((3, 2), 0.5), [0, 1, 1], ["i0.png", "i1.png", "i2.png"])
    base = ["localize", "--net", net, "--weights", weights, "--data", str(listing), "--root", str(tmp_path),
            "--scales", "12", "--scores", str(tmp_path / "s.npz"), "--threshold", "1"]
    assert main(base + ["--top", "1"]) == 0
    assert "top-1 localisation error = 100.00% (3 images)" in capsys.readouterr().out
    assert main(base + ["--top", "2"]) == 0
    assert "top-2 localisation error = 33.33% (3 images)" in capsys.readouterr().out


def spot_classifier(tmp_path):
    """A 2-class classifier (8x8 input, stride 2): class 1's score grows with the brightness of its
    window, and a small bias ranks class 1 first even on a black image."""
    text = DEPLOY.format(n=2) + 'layer { name: "prob" type: "Softmax" bottom: "fc_box" top: "prob" }\n'
    (tmp_path / "spot.prototxt").write_text(text)
    cls = vggtool.Net(parse_net_text(text), phase="TEST")
    cls.params["fc_box"][0].data[...] = 0
    cls.params["fc_box"][0].data[1] = 0.01
    cls.params["fc_box"][1].data[...] = [0.0, 0.1]
    cls.save(str(tmp_path / "spot.caffemodel"))
    return str(tmp_path / "spot.prototxt"), str(tmp_path / "spot.caffemodel")


def test_merged_boxes_are_ranked_by_the_class_score_map(tmp_path, capsys):
    """OverFeat's ranking: with nothing to merge (threshold 0.5: neighbours' IoU is 1/3), the box of the
    window the classifier is surest of wins, not the first (top-left) window's."""
    image = np.zeros((12, 16, 3), np.uint8)
    image[10:12, 14:16] = 255  # only the window at x 8, y 4 (covering [8, 16) x [4, 12)) sees the spot
    cv2.imwrite(str(tmp_path / "spot.png"), image)
    (tmp_path / "spot.txt").write_text("spot.png 1 10 6 14 10\n")
    net, weights = const_net(tmp_path, [0.5, 0.5, 0.5, 0.5])
    cls_net, cls_weights = spot_classifier(tmp_path)
    assert main(["localize", "--net", net, "--weights", weights, "--data", str(tmp_path / "spot.txt"),
                 "--root", str(tmp_path), "--scales", "12", "--top", "1", "--cls-net", cls_net,
                 "--cls-weights", cls_weights, "--out", str(tmp_path / "o.json")]) == 0
    out = capsys.readouterr().out
    assert "boxes weighted by the class score maps of --cls-net" in out
    assert "top-1 localisation error = 0.00% (1 images)" in out
    import json
    saved = json.loads((tmp_path / "o.json").read_text())
    assert saved["classes"] == [[1]]
    np.testing.assert_allclose(saved["boxes"][0][0], [10, 6, 14, 10])
    # --true-class: the ground-truth class only; unweighted (no classifier) the first window's box wins.
    base = ["localize", "--net", net, "--weights", weights, "--data", str(tmp_path / "spot.txt"), "--root",
            str(tmp_path), "--scales", "12", "--true-class"]
    assert main(base) == 0
    out = capsys.readouterr().out
    assert "boxes weighted by the count of windows" in out
    assert "localisation error (ground-truth class, dense + merge) = 100.00% (1 images)" in out
    assert main(base + ["--cls-net", cls_net, "--cls-weights", cls_weights]) == 0
    assert "localisation error (ground-truth class, dense + merge) = 0.00% (1 images)" in capsys.readouterr().out
    # The same through the library, flips included: the mirrored spot's window (x 0 of the mirror)
    # maps back onto the same box, so the two merge (IoU 1) and outweigh every other window.
    reg = L.Regressor(net, weights)
    maps, posterior = L.ClassScoreMaps(vggtool.vgg.evaluate.Evaluator(cls_net, cls_weights, scales=[12])) \
        .image_maps(image, [12], flip=True)
    assert posterior[1] > posterior[0]
    (c, box, weight), = L.localize_full([reg], image, [1], [12], flip=True, score_map=maps)
    np.testing.assert_allclose(box, [10, 6, 14, 10])
    spot = maps[12, False].values[2, 4, 1]  # window x 8 = index 4, y 4 = index 2
    assert spot > 0.99 and weight == pytest.approx(2 * spot, rel=1e-12)
    # Without the maps every box weighs 1 and the first window's box wins the tie.
    (_, box, support), = L.localize_full([reg], image, [1], [12])
    assert support == 1 and list(box) == [2, 2, 6, 6]


def test_window_scores_take_the_nearest_classifier_window():
    # Classifier map: stride 4, crop 8, 3 x 3 locations (value = 10 * row + column); regression
    # windows: stride 2, crop 8, 3 x 5. Window centres 4, 6, 8, 10, 12 -> classifier columns
    # rint((c - 4) / 4) = 0, 0 (0.5 rounds to even), 1, 2 (1.5 rounds to even), 2.
    values = (10 * np.arange(3)[:, None] + np.arange(3)[None, :]).astype(float)[:, :, None]
    got = L.window_scores(L.ScoreMap(values, 4, (8, 8)), (3, 5), 2, (8, 8))[:, :, 0]
    np.testing.assert_array_equal(got, [[0, 0, 1, 2, 2], [0, 0, 1, 2, 2], [10, 10, 11, 12, 12]])


def test_scores_file_posteriors_weigh_and_order_the_guesses(tmp_path):
    """Without a score map, each box of class c weighs the image's posterior of c: guesses come out
    ordered by posterior x support."""
    reg = L.Regressor(*const_net(tmp_path, [[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 1, 1]]))
    image = np.zeros((12, 12, 3), np.uint8)
    guesses = L.localize_full([reg], image, [0, 1], [12], threshold=1, posterior=[0.6, 0.4])
    # Threshold 1: the 9 boxes of each class merge; weights 9 x 0.6 and 9 x 0.4.
    assert [c for c, _, _ in guesses] == [0, 1]
    assert [w for _, _, w in guesses] == pytest.approx([5.4, 3.6])
    guesses = L.localize_full([reg], image, [0, 1], [12], threshold=1, posterior=[0.3, 0.7])
    assert [c for c, _, _ in guesses] == [1, 0]


def test_score_map_posterior_is_the_dense_evaluators(tmp_path):
    """The posterior localize derives from the maps it weighs the boxes with is Evaluator's dense one."""
    cls_net, cls_weights = spot_classifier(tmp_path)
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (13, 17, 3)).astype(np.uint8)
    ev = vggtool.vgg.evaluate.Evaluator(cls_net, cls_weights, scales=[12, 16], flip=True)
    _, posterior = L.ClassScoreMaps(ev).image_maps(image, [12, 16], flip=True)
    np.testing.assert_allclose(posterior, ev.evaluate_image(image), rtol=0, atol=1e-12)


def test_cli_folder_of_images_gives_guesses_without_an_error_figure(tmp_path, capsys):
    """--data FOLDER: class subfolders (labels as ImageFolder) or images alone; no ground-truth boxes, so the
    guesses are the same as from a box list of the same images, written to --out and --draw, and no error
    is printed."""
    listing = write_set(tmp_path)
    net, weights = const_net(tmp_path, [[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 1, 1]])
    for i, label in enumerate([0, 1, 1]):
        for folder in (tmp_path / "classes" / f"c{label}", tmp_path / "loose"):
            folder.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / f"i{i}.png"), np.zeros((12, 16, 3), np.uint8))
    base = ["localize", "--net", net, "--weights", weights, "--scales", "12"]
    assert main(base + ["--protocol", "centre", "--data", str(listing), "--root", str(tmp_path),
                        "--out", str(tmp_path / "list.json")]) == 0
    capsys.readouterr()
    assert main(base + ["--protocol", "centre", "--data", str(tmp_path / "classes"),
                        "--out", str(tmp_path / "folder.json"), "--draw", str(tmp_path / "pics")]) == 0
    out = capsys.readouterr().out
    assert "3 images without ground-truth boxes: guesses only, no localisation error" in out
    assert "error =" not in out
    import json
    from_list, from_folder = (json.loads((tmp_path / f).read_text()) for f in ("list.json", "folder.json"))
    assert from_folder["keys"] == ["c0/i0.png", "c1/i1.png", "c1/i2.png"] and "correct" not in from_folder
    assert from_folder["labels"] == from_list["labels"] == [0, 1, 1]
    np.testing.assert_array_equal(from_folder["boxes"], from_list["boxes"])
    assert len(list((tmp_path / "pics").rglob("*.png"))) == 3
    # Images alone: no labels, so only the full protocol (classes from a classifier's scores) applies.
    assert main(base + ["--protocol", "centre", "--data", str(tmp_path / "loose"),
                        "--out", str(tmp_path / "x.json")]) == 1
    assert "has no label" in capsys.readouterr().err
    save_scores(str(tmp_path / "s.npz"), np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]]), [-1, -1, -1],
                ["i0.png", "i1.png", "i2.png"])
    assert main(base + ["--data", str(tmp_path / "loose"), "--scores", str(tmp_path / "s.npz"), "--top", "1",
                        "--threshold", "1", "--out", str(tmp_path / "loose.json")]) == 0
    assert json.loads((tmp_path / "loose.json").read_text())["classes"] == [[0], [1], [1]]
    # Without --out or --draw there would be nothing to show: an error before any work.
    assert main(base + ["--data", str(tmp_path / "loose"), "--scores", str(tmp_path / "s.npz")]) == 1
    assert "give --out and/or --draw" in capsys.readouterr().err
