"""vggtool extract: pooled dense descriptors checked against running the nets directly, raw blobs,
label sources (lists, LMDB, VOC folders), output formats and bad input."""
import cv2
import numpy as np
import pytest

from eval_helpers import CROP, chain_terms, make_model, random_image
from numerics import assert_close_to_scale
from vggtool import Net
from vggtool.vgg import surgery
from vggtool.cli import main
from vggtool.errors import VggtoolError
from vggtool.vgg.extract import FeatureExtractor, load_features
from vggtool.data.imagesets import label_array, open_image_set, read_labelled_list

MEAN = np.array([100.0, 110.0, 120.0], np.float32)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("extract_model"))


def resize_smallest(image, q):
    """Independent isotropic rescale: smallest side q, the other rounded; pixel areas when shrinking."""
    h, w = image.shape[:2]
    size = (int(round(w * q / h)), q) if h <= w else (q, int(round(h * q / w)))
    how = cv2.INTER_AREA if q < min(h, w) else cv2.INTER_LINEAR
    return image if (size[1], size[0]) == (h, w) else cv2.resize(image, size, interpolation=how)


def direct_descriptor(conv_net, image, scales, flip, aggregate, blob="fc7"):
    """Run the convolutionalised net on the rescaled (and mirrored) image; pool, average, combine, L2."""
    per_scale = []
    for q in scales:
        x = (resize_smallest(image, q).astype(np.float32) - MEAN).transpose(2, 0, 1)
        views = [x, x[:, :, ::-1]] if flip else [x]
        pooled = []
        for v in views:
            conv_net.forward(data=np.ascontiguousarray(v)[None])
            fmap = np.array(conv_net.blobs[blob].data, np.float64)[0]
            pooled.append(fmap.mean(axis=(1, 2)))
        per_scale.append(np.mean(pooled, axis=0))
    d = np.concatenate(per_scale) if aggregate == "stack" else np.mean(per_scale, axis=0)
    return d / np.linalg.norm(d)


@pytest.mark.parametrize("aggregate,flip", [("stack", True), ("average", True), ("stack", False)])
def test_pooled_descriptor_matches_direct_computation(model, rng, aggregate, flip):
    net, weights = model
    _, conv = surgery.convolutionalize(net, weights)
    images = [random_image(rng, 40, 52), random_image(rng, 61, 33), random_image(rng, 32, 32)]
    scales = [32, 48]
    ex = FeatureExtractor(net, weights, "fc7", scales=scales, flip=flip, aggregate=aggregate, mean=MEAN, batch=4)
    got = ex.describe(images)
    assert got.shape == (3, 16 * (2 if aggregate == "stack" else 1))
    for image, row in zip(images, got):
        assert_close_to_scale(row, direct_descriptor(conv, image, scales, flip, aggregate), chain_terms("fc7"))
        assert np.isclose(np.linalg.norm(row), 1.0, atol=1e-5)
    # the pooled maps really are spatial at Q=48 (fc6 is now a 4x4 convolution)
    conv.forward(data=np.zeros((1, 3, 48, 62), np.float32))
    assert conv.blobs["fc7"].shape[2:] == (3, 5)  # Caffe pools round up: 62 -> 31 -> 16 -> 8


def test_at_input_size_equals_the_deploy_net(model, rng):
    """At Q = input size, the dense descriptor is the deploy net's own fc7 (after ReLU), L2-normalised."""
    net, weights = model
    image = random_image(rng, CROP, CROP)
    deploy = Net(net, weights, phase="TEST")
    deploy.forward(data=(image.astype(np.float32) - MEAN).transpose(2, 0, 1)[None])
    fc7 = np.array(deploy.blobs["fc7"].data, np.float64)[0]
    assert (fc7 >= 0).all()
    got = FeatureExtractor(net, weights, "fc7", scales=[CROP], mean=MEAN).describe([image])[0]
    assert_close_to_scale(got, fc7 / np.linalg.norm(fc7), chain_terms("fc7"))


def test_flip_averaged_descriptor_is_mirror_invariant(model, rng):
    net, weights = model
    image = random_image(rng, 37, 50)
    ex = FeatureExtractor(net, weights, "conv3", scales=[32, 40], flip=True, mean=MEAN)
    a, b = ex.describe([image, np.ascontiguousarray(image[:, ::-1])])
    assert_close_to_scale(a, b, chain_terms("conv3"))
    assert a.shape == (16,)  # conv3 has 8 channels, two scales stacked


def test_batching_by_size_does_not_change_results(model, rng):
    net, weights = model
    images = [random_image(rng, h, w) for h, w in [(32, 40), (40, 32), (32, 40), (50, 50), (32, 40), (33, 47)]]
    ex = FeatureExtractor(net, weights, "fc6", scales=[32, 44], flip=True, mean=MEAN, batch=3)
    together = ex.describe(images)
    one_by_one = np.concatenate([ex.describe([im]) for im in images])
    assert_close_to_scale(together, one_by_one, chain_terms("fc6"))


def write_images(folder, rng, n, size=(32, 32)):
    names = []
    for i in range(n):
        name = f"im {i}.png" if i == 0 else f"im{i}.png"  # a path with a space
        cv2.imwrite(str(folder / name), random_image(rng, *size))
        names.append(name)
    return names


def test_cli_multilabel_list_to_npz(model, rng, tmp_path, capsys):
    net, weights = model
    names = write_images(tmp_path, rng, 4, (36, 44))
    labels = [(0, 2), (1,), (), (2, 0, 3)]
    (tmp_path / "list.txt").write_text("".join(f"{n} {' '.join(map(str, l))}\n" for n, l in zip(names, labels)))
    out = tmp_path / "f.npz"
    rc = main(["extract", "--net", net, "--weights", weights, "--layer", "fc7", "--data", str(tmp_path / "list.txt"),
               "--root", str(tmp_path), "--scales", "32,40", "--flip", "--mean-value", "100,110,120",
               "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    f = load_features(str(out))
    assert list(f.keys) == names
    np.testing.assert_array_equal(f.labels, [[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0], [1, 0, 1, 1]])
    images = [cv2.imread(str(tmp_path / n)) for n in names]
    expected = FeatureExtractor(net, weights, "fc7", scales=[32, 40], flip=True, mean=MEAN).describe(images)
    assert_close_to_scale(f.features, expected, chain_terms("fc7"))
    assert f.features.dtype == np.float32 and f.features.shape == (4, 32)


def test_cli_lmdb_input_single_labels_and_late_fusion(model, rng, tmp_path, capsys):
    from vggtool.data.datum import array_to_datum, open_lmdb, record_key

    net, weights = model
    images = [random_image(rng, 34, 40) for _ in range(3)]
    env = open_lmdb(str(tmp_path / "db"), write=True, map_size=1 << 22)
    with env.begin(write=True) as txn:
        for i, im in enumerate(images):
            txn.put(record_key(i, f"x{i}.jpg"), array_to_datum(im, label=i + 4).SerializeToString())
    env.close()
    for layer in ("fc6", "fc7"):
        rc = main(["extract", "--net", net, "--weights", weights, "--layer", layer, "--data", str(tmp_path / "db"),
                   "--scales", "32", "--out", str(tmp_path / f"{layer}.npz")])
        assert rc == 0, capsys.readouterr().err
    both = load_features(f"{tmp_path / 'fc6.npz'},{tmp_path / 'fc7.npz'}")
    np.testing.assert_array_equal(both.labels, [4, 5, 6])
    expected = [FeatureExtractor(net, weights, b, scales=[32]).describe(images) for b in ("fc6", "fc7")]
    assert_close_to_scale(both.features, np.concatenate(expected, axis=1), chain_terms("fc7"))


def test_no_pool_raw_blob_to_npz_and_lmdb(model, rng, tmp_path, capsys):
    from vggtool.data.datum import iterate_records

    net, weights = model
    names = write_images(tmp_path, rng, 3)
    (tmp_path / "list.txt").write_text("".join(f"{n} {i}\n" for i, n in enumerate(names)))
    deploy = Net(net, weights, phase="TEST")
    expected = []
    for n in names:
        deploy.forward(data=cv2.imread(str(tmp_path / n)).astype(np.float32).transpose(2, 0, 1)[None])
        expected.append(np.array(deploy.blobs["pool3"].data[0]))
    common = ["extract", "--net", net, "--weights", weights, "--layer", "pool3", "--no-pool",
              "--data", str(tmp_path / "list.txt"), "--root", str(tmp_path)]
    assert main(common + ["--out", str(tmp_path / "raw.npz")]) == 0, capsys.readouterr().err
    f = load_features(str(tmp_path / "raw.npz"))
    # one image at a time here, a batch of 3 in extract: other GEMM shapes, other summation order
    assert_close_to_scale(f.features, np.array(expected).reshape(3, -1), chain_terms("pool3"))
    assert main(common + ["--format", "lmdb", "--out", str(tmp_path / "raw_db")]) == 0
    records = list(iterate_records(str(tmp_path / "raw_db")))
    assert [k.decode() for k, _ in records] == [f"{i:08d}_{n}" for i, n in enumerate(names)]
    for i, (_, datum) in enumerate(records):
        assert (datum.channels, datum.height, datum.width, datum.label) == (8, 4, 4, i)
        assert_close_to_scale(np.array(datum.float_data).reshape(8, 4, 4), expected[i], chain_terms("pool3"))
    assert main(common + ["--format", "lmdb", "--out", str(tmp_path / "raw_db")]) == 1
    assert "already exists" in capsys.readouterr().err


def test_list_and_voc_labels(model, rng, tmp_path, capsys):
    (tmp_path / "l.txt").write_text("a b.png 3 1\nc.png\n\nd.png 2\n")
    assert read_labelled_list(str(tmp_path / "l.txt")) == [("a b.png", (3, 1), 1), ("c.png", (), 2), ("d.png", (2,), 4)]
    np.testing.assert_array_equal(label_array([(1,), (0,)]), [1, 0])
    np.testing.assert_array_equal(label_array([(1,), (0,)], multilabel=True), [[0, 1], [1, 0]])
    voc = tmp_path / "VOC"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    objects = {"001": [("dog", 0), ("cat", 0)], "002": [("person", 0), ("dog", 1)], "003": [("cat", 1)]}
    for i, objs in objects.items():
        body = "".join(f"<object><name>{n}</name><difficult>{d}</difficult></object>" for n, d in objs)
        (voc / "Annotations" / f"{i}.xml").write_text(f"<annotation><folder>VOC2007</folder>{body}</annotation>")
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("001\n002\n003\n")
    s = open_image_set(str(voc))
    assert s.classes == ["cat", "dog", "person"] and s.keys == ["001", "002", "003"]
    np.testing.assert_array_equal(label_array(s.labels, s.classes, s.multilabel), [[1, 1, 0], [0, 0, 1], [0, 0, 0]])
    np.testing.assert_array_equal(s.ignore, [[0, 0, 0], [0, 1, 0], [1, 0, 0]])
    assert s.files[0].endswith("JPEGImages/001.jpg")
    assert s.dataset == "VOC2007"  # the annotations' <folder>, which picks vggtool svm's AP rule
    with pytest.raises(VggtoolError, match="not among --classes"):
        open_image_set(str(voc), classes=["cat", "dog"])
    with pytest.raises(VggtoolError, match="check --split"):
        open_image_set(str(voc), split="test")
    # end to end: the npz carries the multi-hot labels, class names and the difficult-only mask
    (voc / "JPEGImages").mkdir()
    for i in objects:
        cv2.imwrite(str(voc / "JPEGImages" / f"{i}.jpg"), random_image(rng, 32, 40))
    net, weights = model
    out = tmp_path / "voc.npz"
    assert main(["extract", "--net", net, "--weights", weights, "--layer", "fc7", "--data", str(voc),
                 "--scales", "32", "--out", str(out)]) == 0, capsys.readouterr().err
    f = load_features(str(out))
    assert list(f.classes) == ["cat", "dog", "person"] and list(f.keys) == ["001", "002", "003"]
    np.testing.assert_array_equal(f.labels, label_array(s.labels, s.classes, True))
    np.testing.assert_array_equal(f.ignore, s.ignore)
    assert f.dataset == "VOC2007"


def run_cli(capsys, argv):
    rc = main(argv)
    return rc, capsys.readouterr().err


def test_bad_input(model, rng, tmp_path, capsys):
    net, weights = model
    write_images(tmp_path, rng, 1)
    (tmp_path / "list.txt").write_text("im 0.png 1\n")
    base = ["extract", "--net", net, "--weights", weights, "--data", str(tmp_path / "list.txt"),
            "--root", str(tmp_path), "--out", str(tmp_path / "o.npz")]
    rc, err = run_cli(capsys, base + ["--layer", "fc9", "--scales", "32"])
    assert rc == 1 and "--layer 'fc9' is not a blob" in err and "fc7" in err
    rc, err = run_cli(capsys, base + ["--layer", "fc7", "--scales", "32,24"])
    assert rc == 1 and "Q=24 is smaller than the net's 32x32 input" in err and "fc6" in err
    (tmp_path / "bad.txt").write_text("im 0.png 1\nmissing.png 2\n")
    rc, err = run_cli(capsys, base[:6] + [str(tmp_path / "bad.txt")] + base[7:] + ["--layer", "fc7", "--scales", "32"])
    assert rc == 1 and "bad.txt:2: image" in err and "missing.png does not exist" in err
    rc, err = run_cli(capsys, ["extract", "--net", net, "--weights", str(tmp_path / "nope.caffemodel"),
                               "--layer", "fc7", "--data", str(tmp_path / "list.txt"), "--root", str(tmp_path),
                               "--out", str(tmp_path / "o.npz")])
    assert rc == 1 and "nope.caffemodel does not exist" in err
    rc, err = run_cli(capsys, base[:6] + [str(tmp_path / "none.txt")] + base[7:] + ["--layer", "fc7"])
    assert rc == 1 and "none.txt does not exist" in err
    big = tmp_path / "big.png"
    cv2.imwrite(str(big), random_image(rng, 40, 40))
    (tmp_path / "big.txt").write_text("big.png 0\n")
    rc, err = run_cli(capsys, base[:6] + [str(tmp_path / "big.txt")] + base[7:] + ["--layer", "fc7", "--no-pool"])
    assert rc == 1 and "40x40 does not fit the net's 32x32 input" in err
    rc, err = run_cli(capsys, base + ["--layer", "fc7", "--no-pool", "--flip"])
    assert rc == 1 and "--no-pool keeps one raw blob" in err
