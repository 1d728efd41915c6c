"""data_prep tools: image list -> LMDB round trips, means, colour statistics, digits export, bad input."""
import os

import cv2
import numpy as np
import pytest

from data_prep.cli import main
from vggtool.io.wire import proto_to_array
from vggtool.data.datum import datum_to_image, iterate_records
from vggtool.proto import caffe_pb2
from vggtool.io.wire import read_binary_proto


def make_images(root, rng, n=6, ext=".png", sizes=((20, 30), (24, 18))):
    """Random images under root/cls<k>/, and a list file; returns (list path, [(name, label, pixels)])."""
    items = []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        name = f"cls{i % 3}/img {i}{ext}"  # a space in the path: the label is the last field
        os.makedirs(root / f"cls{i % 3}", exist_ok=True)
        cv2.imwrite(str(root / name), image)
        items.append((name, i % 3, cv2.imread(str(root / name), cv2.IMREAD_COLOR)))
    listing = root / "list.txt"
    listing.write_text("".join(f"{name} {label}\n" for name, label, _ in items))
    return listing, items


def convert(root, listing, db, *flags):
    return main(["convert_imageset", str(root), str(listing), str(db), *flags])


def records(db):
    return [(k.decode(), d) for k, d in iterate_records(db)]


def test_raw_round_trip_keys_and_fields(tmp_path, rng, capsys):
    listing, items = make_images(tmp_path, rng)
    assert convert(tmp_path, listing, tmp_path / "db") == 0
    assert "Processed 6 files" in capsys.readouterr().out
    recs = records(tmp_path / "db")
    assert [k for k, _ in recs] == [f"{i:08d}_{name}" for i, (name, _, _) in enumerate(items)]
    for (key, datum), (name, label, pixels) in zip(recs, items):
        assert not datum.encoded and datum.label == label
        assert (datum.channels, datum.height, datum.width) == (3,) + pixels.shape[:2]
        # Caffe's layout: C x H x W bytes, BGR.
        np.testing.assert_array_equal(np.frombuffer(datum.data, np.uint8).reshape(3, *pixels.shape[:2]),
                                      pixels.transpose(2, 0, 1))
        np.testing.assert_array_equal(datum_to_image(datum), pixels)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]


def test_encoded_keeps_png_bytes_and_reencodes_jpeg(tmp_path, rng):
    listing, items = make_images(tmp_path, rng)
    assert convert(tmp_path, listing, tmp_path / "db", "--encoded") == 0
    for (_, datum), (name, _, pixels) in zip(records(tmp_path / "db"), items):
        assert datum.encoded and datum.data == (tmp_path / name).read_bytes()
        np.testing.assert_array_equal(datum_to_image(datum), pixels)
    jpg_root = tmp_path / "jpg"
    listing, items = make_images(jpg_root, rng, ext=".jpg")
    assert convert(jpg_root, listing, tmp_path / "db2", "--encoded", "--encode_type", "png") == 0
    for (_, datum), (_, _, pixels) in zip(records(tmp_path / "db2"), items):
        assert datum.data[:8] == b"\x89PNG\r\n\x1a\n"
        np.testing.assert_array_equal(datum_to_image(datum), pixels)  # PNG is lossless
    assert convert(jpg_root, listing, tmp_path / "db3", "--encoded") == 0  # same type, no resize: file bytes
    for (_, datum), (name, _, _) in zip(records(tmp_path / "db3"), items):
        assert datum.data == (jpg_root / name).read_bytes()
    assert convert(jpg_root, listing, tmp_path / "db4", "--encoded", "--resize_smallest", "9") == 0
    for _, datum in records(tmp_path / "db4"):  # resized: re-encoded in the source's type
        assert datum.data[:2] == b"\xff\xd8" and min(datum_to_image(datum).shape[:2]) == 9


def test_resize_gray_shuffle(tmp_path, rng):
    listing, items = make_images(tmp_path, rng)
    assert convert(tmp_path, listing, tmp_path / "s", "--resize_smallest", "12") == 0
    shapes = {(d.height, d.width) for _, d in records(tmp_path / "s")}
    assert shapes == {(12, 18), (16, 12)}  # 20x30 -> 12x18, 24x18 -> 16x12
    assert convert(tmp_path, listing, tmp_path / "hw", "--resize_height", "10", "--resize_width", "7", "--gray") == 0
    assert {(d.channels, d.height, d.width) for _, d in records(tmp_path / "hw")} == {(1, 10, 7)}
    assert convert(tmp_path, listing, tmp_path / "a", "--shuffle", "--seed", "5") == 0
    assert convert(tmp_path, listing, tmp_path / "b", "--shuffle", "--seed", "5") == 0
    a, b = records(tmp_path / "a"), records(tmp_path / "b")
    assert [k for k, _ in a] == [k for k, _ in b]
    assert sorted(k[9:] for k, _ in a) == sorted(n for n, _, _ in items)
    assert [k[9:] for k, _ in a] != [n for n, _, _ in items]


def test_existing_db_check_size_and_map_growth(tmp_path, rng, capsys):
    listing, _ = make_images(tmp_path, rng, n=12)
    assert convert(tmp_path, listing, tmp_path / "db", "--map_size", "32768") == 0  # grows from 32 KiB
    assert len(records(tmp_path / "db")) == 12
    assert convert(tmp_path, listing, tmp_path / "db") == 1
    assert "already exists (pass --overwrite" in capsys.readouterr().err
    assert convert(tmp_path, listing, tmp_path / "db", "--overwrite", "--resize_smallest", "8") == 0
    assert {min(d.height, d.width) for _, d in records(tmp_path / "db")} == {8}
    assert convert(tmp_path, listing, tmp_path / "c", "--check_size") == 1
    assert "--check_size" in capsys.readouterr().err and not (tmp_path / "c").exists()
    assert convert(tmp_path, listing, tmp_path / "l", "--backend", "leveldb") == 1
    assert "only lmdb" in capsys.readouterr().err


def test_bad_lists_and_corrupt_image(tmp_path, rng, capsys):
    listing, items = make_images(tmp_path, rng, ext=".jpg")
    assert convert(tmp_path / "nope", listing, tmp_path / "db") == 1
    assert "image root folder not found" in capsys.readouterr().err
    assert convert(tmp_path, tmp_path / "missing.txt", tmp_path / "db") == 1
    assert "list file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.txt"
    bad.write_text("cls0/a.jpg 0\ncls0/b.jpg\n")
    assert convert(tmp_path, bad, tmp_path / "db") == 1
    assert f"{bad}:2:" in capsys.readouterr().err
    bad.write_text("cls0/a.jpg 0\n\ncls0/b.jpg x\n")
    assert convert(tmp_path, bad, tmp_path / "db") == 1
    assert f"{bad}:3: label 'x' is not an integer" in capsys.readouterr().err
    # Truncate the middle JPEG: skipped, counted and listed; --strict makes it fatal.
    middle = tmp_path / items[3][0]
    middle.write_bytes(middle.read_bytes()[:40])
    assert convert(tmp_path, listing, tmp_path / "db") == 0
    out = capsys.readouterr().out
    assert "Processed 5 files" in out and "Skipped 1 unreadable image(s)" in out and items[3][0] in out
    keys = [k for k, _ in records(tmp_path / "db")]
    assert len(keys) == 5 and not any(items[3][0] in k for k in keys)
    assert convert(tmp_path, listing, tmp_path / "db2", "--strict") == 1
    assert "--strict" in capsys.readouterr().err and not (tmp_path / "db2").exists()


def test_image_mean(tmp_path, rng, capsys):
    listing, items = make_images(tmp_path, rng, sizes=((10, 12),))
    assert convert(tmp_path, listing, tmp_path / "db") == 0
    assert main(["compute_image_mean", str(tmp_path / "db"), str(tmp_path / "mean.binaryproto")]) == 0
    out = capsys.readouterr().out
    mean = proto_to_array(read_binary_proto(tmp_path / "mean.binaryproto", caffe_pb2.BlobProto()))
    expect = np.mean([p.astype(np.float64) for _, _, p in items], axis=0).transpose(2, 0, 1)[None]
    assert mean.shape == (1, 3, 10, 12)
    np.testing.assert_allclose(mean, expect, rtol=1e-6)
    # Caffe's fields, read the way pycaffe scripts read a mean file
    blob = read_binary_proto(tmp_path / "mean.binaryproto", caffe_pb2.BlobProto())
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 3, 10, 12)
    np.testing.assert_allclose(np.array(blob.data).reshape(blob.channels, blob.height, blob.width), expect[0],
                               rtol=1e-6)
    import vggtool.pycaffe as caffe
    assert caffe.io.blobproto_to_array(blob).shape == (1, 3, 10, 12)
    assert f"mean_value channel [0]: {expect[0, 0].mean():.6g}" in out
    # Different sizes: an error unless --per_channel_only.
    listing, items = make_images(tmp_path / "v", rng)
    assert convert(tmp_path / "v", listing, tmp_path / "vdb") == 0
    assert main(["compute_image_mean", str(tmp_path / "vdb"), str(tmp_path / "m2")]) == 1
    assert "--per_channel_only" in capsys.readouterr().err
    assert main(["compute_image_mean", str(tmp_path / "vdb"), str(tmp_path / "m2"), "--per_channel_only"]) == 0
    m2 = proto_to_array(read_binary_proto(tmp_path / "m2", caffe_pb2.BlobProto()))
    expect = np.mean([p.reshape(-1, 3).mean(axis=0) for _, _, p in items], axis=0)
    assert m2.shape == (1, 3, 1, 1)
    np.testing.assert_allclose(m2.reshape(3), expect, rtol=1e-6)
    assert main(["compute_image_mean", str(tmp_path / "nodb"), str(tmp_path / "m3")]) == 1
    assert "database not found" in capsys.readouterr().err


def test_color_stats_match_numpy_covariance(tmp_path, rng):
    # Correlated colours so the eigenvectors are well defined.
    root = tmp_path
    names, pixels = [], []
    for i in range(4):
        base = rng.normal(120, 40, (16, 16, 1))
        rgb = np.clip(base * np.array([1.0, 0.6, 0.3]) + rng.normal(0, 10, (16, 16, 3)), 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / f"{i}.png"), rgb[:, :, ::-1])
        names.append(f"{i}.png 0\n")
        pixels.append(rgb.reshape(-1, 3))
    (root / "l.txt").write_text("".join(names))
    assert convert(root, root / "l.txt", root / "db") == 0
    assert main(["compute_color_stats", str(root / "db"), str(root / "pca"), "--max_pixels_per_image", "0"]) == 0
    vec = read_binary_proto(root / "pca", caffe_pb2.BlobProtoVector())
    values, vectors = (proto_to_array(b).astype(np.float64) for b in vec.blobs)
    cov = np.cov(np.concatenate(pixels).astype(np.float64).T)  # RGB order
    assert values.shape == (3,) and vectors.shape == (3, 3) and values[0] >= values[1] >= values[2]
    np.testing.assert_allclose(cov @ vectors, vectors * values, rtol=1e-3, atol=1e-2 * values[0])
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(3), atol=1e-5)
    assert abs(vectors[0, 0]) > abs(vectors[2, 0])  # the main axis follows R more than B


def test_digits_export_and_convert(tmp_path, capsys):
    out = tmp_path / "digits"
    assert main(["digits", str(out)]) == 0
    train = [line.split() for line in (out / "train.txt").read_text().splitlines()]
    val = [line.split() for line in (out / "val.txt").read_text().splitlines()]
    assert len(train) + len(val) == 1797 and len(val) == pytest.approx(0.2 * 1797, abs=10)
    assert not {n for n, _ in train} & {n for n, _ in val}
    for c in range(10):  # stratified
        n_train = sum(int(l) == c for _, l in train)
        n_val = sum(int(l) == c for _, l in val)
        assert abs(n_val / (n_train + n_val) - 0.2) < 0.02
    image = cv2.imread(str(out / train[0][0]), cv2.IMREAD_UNCHANGED)
    assert image.shape == (32, 32) and image.max() > 200 and image.min() == 0
    from sklearn.datasets import load_digits
    digits = load_digits()
    for name, label in train[:20]:  # images/<label>/<index>.png is digit <index> of scikit-learn
        index = int(os.path.basename(name)[:-4])
        assert digits.target[index] == int(label) and name.startswith(f"images/{label}/")
        image = cv2.imread(str(out / name), cv2.IMREAD_GRAYSCALE)
        assert not image[:4].any() and not image[-4:].any() and not image[:, :4].any()  # default margin 4
        small = cv2.resize(image[4:28, 4:28], (8, 8), interpolation=cv2.INTER_AREA)
        assert np.corrcoef(small.ravel(), digits.images[index].ravel())[0, 1] > 0.9
    assert convert(out, out / "val.txt", tmp_path / "val_lmdb") == 0
    recs = records(tmp_path / "val_lmdb")
    assert [d.label for _, d in recs] == [int(l) for _, l in val]
    assert (recs[0][1].channels, recs[0][1].height, recs[0][1].width) == (3, 32, 32)


@pytest.mark.parametrize("flags,name", [(["--resize_smallest", "-5"], "--resize_smallest"),
                                        (["--resize_height", "-5", "--resize_width", "-5"], "--resize_height"),
                                        (["--resize_height", "8", "--resize_width", "-3"], "--resize_width")])
def test_negative_resize_sizes_are_flag_errors(tmp_path, rng, capsys, flags, name):
    listing, _ = make_images(tmp_path, rng)
    assert convert(tmp_path, listing, tmp_path / "db", *flags) == 1
    err = capsys.readouterr().err
    assert f"{name} must be a positive size" in err and err.count("\n") == 1, err
    assert not (tmp_path / "db").exists()
