"""Folders as datasets (PyTorch's ImageFolder layout): data_prep image_folder, and --data DIR in test,
classify and extract."""
import cv2
import numpy as np
import pytest

from data_prep.cli import main as data_prep
from eval_helpers import make_model, random_image
from vggtool.vgg import evaluate as ev
from vggtool.cli import main
from vggtool.data.datum import datum_to_image, iterate_records
from vggtool.data.imagefolder import folder_entries, is_image_folder
from vggtool.errors import VggtoolError


@pytest.fixture
def folder(tmp_path, rng):
    """train/<class>/... with classes out of alphabetical creation order and a nested subfolder."""
    root = tmp_path / "train"
    images = {}
    for cls, names in (("zebra", ["b.png", "a.png"]), ("cat", ["x.jpg"]), ("dog", ["sub/q.png", "p.bmp"])):
        for name in names:
            path = root / cls / name
            path.parent.mkdir(parents=True, exist_ok=True)
            img = random_image(rng, 32, 36)
            cv2.imwrite(str(path), img)
            images[f"{cls}/{name}"] = cv2.imread(str(path))  # jpg is lossy: keep what was stored
    (root / "cat" / "notes.txt").write_text("not an image")
    return root, images


def test_folder_entries_follow_imagefolder(folder):
    root, _ = folder
    entries, classes = folder_entries(str(root))
    assert classes == ["cat", "dog", "zebra"]  # sorted subfolder names
    assert entries == [("cat/x.jpg", 0), ("dog/p.bmp", 1), ("dog/sub/q.png", 1),
                       ("zebra/a.png", 2), ("zebra/b.png", 2)]
    # a validation folder with the training set's class order
    entries, classes = folder_entries(str(root), ["zebra", "dog", "cat", "emu"])
    assert dict(entries)["cat/x.jpg"] == 2 and classes[3] == "emu"
    with pytest.raises(VggtoolError, match="not one of the 2 classes"):
        folder_entries(str(root), ["cat", "dog"])
    (root / "empty").mkdir()
    with pytest.raises(VggtoolError, match="'empty' holds no images"):
        folder_entries(str(root))


def test_data_prep_image_folder_writes_list_labels_and_lmdb(folder, tmp_path, capsys):
    root, images = folder
    db = str(tmp_path / "train_lmdb")
    assert data_prep(["image_folder", str(root), db]) == 0
    assert (tmp_path / "train_lmdb_labels.txt").read_text() == "cat\ndog\nzebra\n"
    lines = (tmp_path / "train_lmdb_list.txt").read_text().splitlines()
    assert lines == ["cat/x.jpg 0", "dog/p.bmp 1", "dog/sub/q.png 1", "zebra/a.png 2", "zebra/b.png 2"]
    records = list(iterate_records(db))
    assert [k.decode() for k, _ in records] == [f"{i:08d}_{line.split()[0]}" for i, line in enumerate(lines)]
    for (key, datum), line in zip(records, lines):
        name, label = line.split()
        assert datum.label == int(label)
        np.testing.assert_array_equal(datum_to_image(datum), images[name])
    # the validation folder reuses the training labels file: same indices, nothing rewritten
    val = tmp_path / "val"
    (val / "zebra").mkdir(parents=True)
    cv2.imwrite(str(val / "zebra" / "v.png"), images["zebra/a.png"])
    assert data_prep(["image_folder", str(val), str(tmp_path / "val_lmdb"), "--list_only",
                      "--labels", str(tmp_path / "train_lmdb_labels.txt")]) == 0
    assert (tmp_path / "val_lmdb_list.txt").read_text() == "zebra/v.png 2\n"
    assert not (tmp_path / "val_lmdb").exists()


def test_data_prep_image_folder_refuses_a_flat_folder(tmp_path, rng, capsys):
    cv2.imwrite(str(tmp_path / "a.png"), random_image(rng, 8, 8))
    assert data_prep(["image_folder", str(tmp_path), str(tmp_path / "db")]) == 1
    assert "no class subfolders" in capsys.readouterr().err


def test_test_and_classify_take_a_folder(folder, tmp_path, capsys):
    root, images = folder
    net, weights = make_model(tmp_path)
    common = ["--net", net, "--weights", weights, "--scales", "32", "--mode", "dense"]
    out = str(tmp_path / "scores.npz")
    assert main(["test", *common, "--data", str(root), "--out", out]) == 0
    post, labels, keys = ev.load_scores(out)
    assert list(keys) == ["cat/x.jpg", "dog/p.bmp", "dog/sub/q.png", "zebra/a.png", "zebra/b.png"]
    assert list(labels) == [0, 1, 1, 2, 2]
    e = ev.Evaluator(net, weights, scales=[32], mode="dense")
    np.testing.assert_allclose(post[2], e.evaluate_image(images["dog/sub/q.png"]), atol=1e-6)
    capsys.readouterr()
    # a folder of unlabelled images: classify takes it, test says why it cannot score it
    flat = tmp_path / "flat"
    flat.mkdir()
    cv2.imwrite(str(flat / "one.png"), images["cat/x.jpg"])
    cv2.imwrite(str(flat / "two.png"), images["zebra/b.png"])
    assert main(["test", *common, "--data", str(flat)]) == 1
    assert "no class subfolders" in capsys.readouterr().err
    assert main(["classify", "--net", net, "--weights", weights, "--scales", "32", "--data", str(flat)]) == 0
    printed = capsys.readouterr().out
    assert f"{flat}/one.png" in printed and f"{flat}/two.png" in printed
    assert main(["classify", "--net", net, "--weights", weights, "--scales", "32", str(root)]) == 0
    assert capsys.readouterr().out.count(str(root)) == 5
    assert is_image_folder(str(flat)) and not is_image_folder(str(tmp_path / "scores.npz"))


def test_extract_takes_a_folder(folder, tmp_path, capsys):
    from vggtool.vgg.extract import FeatureExtractor, load_features

    root, images = folder
    net, weights = make_model(tmp_path)
    out = tmp_path / "f.npz"
    rc = main(["extract", "--net", net, "--weights", weights, "--layer", "fc7", "--data", str(root),
               "--scales", "32", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    f = load_features(str(out))
    assert list(f.keys) == ["cat/x.jpg", "dog/p.bmp", "dog/sub/q.png", "zebra/a.png", "zebra/b.png"]
    np.testing.assert_array_equal(f.labels, [0, 1, 1, 2, 2])
    expected = FeatureExtractor(net, weights, "fc7", scales=[32]).describe([images[k] for k in f.keys])
    np.testing.assert_allclose(f.features, expected, rtol=1e-6)
