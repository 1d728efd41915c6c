"""The VGG testing protocol: multi-crop grid, flips, scales, dense vs single crop, fusion, top-k error."""
import numpy as np
import pytest

from eval_helpers import CLASSES, CROP, chain_terms, make_model, random_image
from numerics import assert_close_to_scale
from vggtool import Net
from vggtool.vgg import evaluate as ev
from vggtool.data.mean import load_mean
from vggtool.data.transform import isotropic_resize
from vggtool.errors import VggtoolError

PROB_TERMS = chain_terms("prob") + 50  # the net's sums, then averages over up to 50 crops
MEAN = np.array([100.0, 110.0, 120.0], np.float32)


@pytest.fixture
def model(tmp_path):
    return make_model(tmp_path)


def evaluator(model, **kw):
    kw.setdefault("scales", [CROP])
    kw.setdefault("mean", MEAN)
    return ev.Evaluator(model[0], model[1], **kw)


def single_crop_posterior(deploy, crop_hwc):
    """Reference: the ORIGINAL (fully-connected) deploy net on one crop, Caffe pre-processing by hand."""
    x = (crop_hwc.astype(np.float32) - MEAN).transpose(2, 0, 1)[None]
    return deploy.forward(data=x)["prob"][0].astype(np.float64)


def test_topk_error_hand_checked():
    p = np.array([[0.1, 0.5, 0.2, 0.2],    # label 1: top-1 right
                  [0.4, 0.3, 0.2, 0.1],    # label 2: third -> top-1 wrong, top-2 wrong, top-3 right
                  [0.25, 0.25, 0.3, 0.2],  # label 0: tied with 1, beaten by 2 -> right only at 3 (a tie counts against)
                  [0.1, 0.2, 0.3, 0.4]])   # label 0: last -> wrong up to top-3
    labels = [1, 2, 0, 0]
    assert ev.topk_error(p, labels, 1) == 0.75
    assert ev.topk_error(p, labels, 2) == 0.75
    assert ev.topk_error(p, labels, 3) == 0.25
    assert ev.topk_error(p, labels, 4) == 0.0
    assert ev.topk_error(np.full((3, 4), 0.25), [0, 1, 3], 1) == 1.0  # constant scores: all ties, all wrong
    assert ev.topk_error([[np.nan, 0.1], [0.9, 0.1]], [0, 0], 1) == 0.5  # a NaN score is never a hit


def test_grid_has_25_positions_in_bounds_with_corners():
    pos = ev.grid_positions(40, 57, CROP, CROP)
    assert len(pos) == 25 and len(set(pos)) == 25
    assert all(0 <= y <= 40 - CROP and 0 <= x <= 57 - CROP for y, x in pos)
    assert {(0, 0), (0, 25), (8, 0), (8, 25)} <= set(pos)
    ys, xs = sorted({y for y, _ in pos}), sorted({x for _, x in pos})
    assert ys == [0, 2, 4, 6, 8] and len(xs) == 5 and max(np.diff(xs)) - min(np.diff(xs)) <= 1


def test_multicrop_is_50_crops_per_scale_averaged(model, rng):
    e = evaluator(model, mode="multicrop", flip=True, batch=7)  # 7: batches that do not divide 50
    image = random_image(rng, 36, 45)
    crops = e.crops(image)
    assert len(crops) == 50 and all(c.shape == (3, CROP, CROP) for c in crops)
    deploy = Net(model[0], model[1], phase="TEST")
    refs = []
    for y, x in ev.grid_positions(36, 45, CROP, CROP):
        window = image[y:y + CROP, x:x + CROP]
        refs.append(single_crop_posterior(deploy, window))
        refs.append(single_crop_posterior(deploy, window[:, ::-1]))
    assert np.ptp(refs, axis=0).max() > 1e-3  # crops really differ: the average is not trivial
    assert_close_to_scale(e.multicrop(image), np.mean(refs, axis=0), PROB_TERMS)  # batches of 7 vs 1
    assert len(evaluator(model, mode="multicrop", flip=False).crops(image)) == 25


def test_dense_at_crop_size_equals_single_crop(model, rng):
    image = random_image(rng, CROP, CROP)
    deploy = Net(model[0], model[1], phase="TEST")
    e = evaluator(model, mode="dense", flip=False)
    assert_close_to_scale(e.evaluate_image(image), single_crop_posterior(deploy, image), PROB_TERMS)


def test_dense_is_softmax_per_location_then_average(model, rng):
    e = evaluator(model, mode="dense", flip=False)
    image = random_image(rng, 48, 64)
    x = (image.astype(np.float32) - MEAN).transpose(2, 0, 1)[None]
    scores = e.net.forward(data=x)["prob"][0]  # the converted net still ends in Softmax over channels
    assert scores.shape[1:] == (3, 5)
    assert_close_to_scale(e.dense(image), scores.reshape(CLASSES, -1).mean(axis=1), PROB_TERMS)
    # average='scores': the paper's sum-pooled score map, then softmax
    fc8 = e.net.blobs["fc8"].data[0].reshape(CLASSES, -1).mean(axis=1).astype(np.float64)
    expected = np.exp(fc8 - fc8.max()) / np.exp(fc8 - fc8.max()).sum()
    pooled = evaluator(model, mode="dense", flip=False, average="scores")
    assert_close_to_scale(pooled.dense(image), expected, PROB_TERMS)
    assert np.abs(pooled.dense(image) - e.dense(image)).max() > 1e-4  # the two really differ


def test_flip_and_scale_averaging(model, rng):
    image = random_image(rng, 40, 52)
    plain = evaluator(model, flip=False, scales=[32, 40, 48])
    flipped = evaluator(model, flip=True, scales=[32, 40, 48])
    per_scale = []
    for q in (32, 40, 48):
        img = isotropic_resize(image, q)
        assert min(img.shape[:2]) == q
        a, b = plain.dense(img), plain.dense(np.ascontiguousarray(img[:, ::-1]))
        assert np.abs(a - b).max() > 1e-4
        one = (a + b) / 2
        assert_close_to_scale(flipped.dense(img), one, PROB_TERMS)
        per_scale.append(one)
    assert np.abs(per_scale[0] - per_scale[2]).max() > 1e-4
    assert_close_to_scale(flipped.evaluate_image(image), np.mean(per_scale, axis=0), PROB_TERMS)
    both = evaluator(model, flip=True, scales=[32, 40], mode="both")
    dense = np.mean([flipped.dense(isotropic_resize(image, q)) for q in (32, 40)], axis=0)
    multi = np.mean([flipped.multicrop(isotropic_resize(image, q)) for q in (32, 40)], axis=0)
    assert_close_to_scale(both.evaluate_image(image), (dense + multi) / 2, PROB_TERMS)


def test_rescale_is_isotropic():
    img = np.zeros((30, 90, 3), np.uint8)
    assert isotropic_resize(img, 40).shape == (40, 120, 3)
    assert isotropic_resize(img.transpose(1, 0, 2), 40).shape == (120, 40, 3)


def test_images_of_different_sizes_in_one_evaluator(model, rng):
    e = evaluator(model, mode="both", flip=True, scales=[32, 44])
    for h, w in [(32, 32), (100, 40), (35, 77), (64, 64)]:
        p = e.evaluate_image(random_image(rng, h, w))
        assert p.shape == (CLASSES,) and abs(p.sum() - 1) < 1e-5


def test_score_blob_choice(model):
    e = evaluator(model)
    assert (e.score_blob, e.is_posterior) == ("fc8", False)
    assert evaluator(model, blob="prob").is_posterior
    with pytest.raises(VggtoolError, match="--blob 'nope'"):
        evaluator(model, blob="nope")


def test_scale_smaller_than_crop_is_an_error(model):
    with pytest.raises(VggtoolError, match="Q=24 is smaller than the 32x32 crop"):
        evaluator(model, scales=[32, 24])


def test_fusion_is_the_mean(tmp_path, rng):
    keys = np.array(["a.jpg", "b.jpg", "c.jpg"])
    labels = np.array([0, 1, 2])
    ps = [rng.dirichlet(np.ones(4), size=3) for _ in range(3)]
    paths = []
    for i, p in enumerate(ps):
        paths.append(str(tmp_path / f"m{i}.npz"))
        ev.save_scores(paths[-1], p, labels, keys)
    fused, l, k = ev.fuse(paths)
    np.testing.assert_allclose(fused, np.mean(ps, axis=0), atol=1e-6)
    assert list(k) == list(keys) and list(l) == list(labels)
    other = str(tmp_path / "other.npz")
    ev.save_scores(other, ps[0], labels, np.array(["x.jpg", "b.jpg", "c.jpg"]))
    with pytest.raises(VggtoolError, match="other.npz: its images"):
        ev.fuse(paths[:1] + [other])
    relabelled = str(tmp_path / "relabelled.npz")
    ev.save_scores(relabelled, ps[0], np.array([0, 1, 3]), keys)
    with pytest.raises(VggtoolError, match="labels differ"):
        ev.fuse([paths[0], relabelled])


def test_mean_file_is_averaged_per_channel(tmp_path):
    from vggtool.io.wire import array_to_proto
    from vggtool.io.wire import write_binary_proto
    mean = np.stack([np.full((4, 5), v, np.float32) for v in (1, 2, 3)])[None]
    path = str(tmp_path / "mean.binaryproto")
    write_binary_proto(path, array_to_proto(mean))
    np.testing.assert_allclose(load_mean(mean_file=path), [1, 2, 3])
    np.testing.assert_allclose(load_mean(mean_value="104,117,123"), [104, 117, 123])
    with pytest.raises(VggtoolError, match="does not exist"):
        load_mean(mean_file=str(tmp_path / "none.binaryproto"))
