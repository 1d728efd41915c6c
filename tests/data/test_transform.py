"""transform_param: scale jittering, crops, mirror, PCA colour shift, mean and scale, TEST determinism."""
import numpy as np
import pytest

from vggtool.io.wire import array_to_proto
from vggtool.data.transform import DataTransformer
from vggtool.errors import VggtoolError
from vggtool.proto import caffe_pb2
from vggtool.io.wire import write_binary_proto

TRAIN, TEST = 0, 1


def tp(**fields):
    p = caffe_pb2.TransformationParameter()
    for k, v in fields.items():
        if isinstance(v, list):
            getattr(p, k).extend(v)
        else:
            setattr(p, k, v)
    return p


def coords_image(h, w):
    """Channel 0 = row, channel 1 = column, channel 2 = 7: a crop tells where it came from."""
    rows, cols = np.mgrid[0:h, 0:w]
    return np.stack([rows, cols, np.full((h, w), 7)], axis=2).astype(np.uint8)


def rngs(n, seed=0):
    return [np.random.default_rng([seed, i]) for i in range(n)]


def test_scale_jitter_in_range_and_uniform():
    t = DataTransformer(tp(smallest_side_min=8, smallest_side_max=12), TRAIN)
    draws = np.array([t.scale_for(r) for r in rngs(2000)])
    assert draws.min() == 8 and draws.max() == 12
    counts = np.bincount(draws - 8, minlength=5)
    assert np.all(np.abs(counts / 2000 - 0.2) < 0.04)  # ~11 sigma-free margin: a loose uniformity check
    # The image really is rescaled to S (smaller side), aspect kept.
    image = np.zeros((20, 30, 3), np.uint8)
    for r in rngs(20):
        s = t.scale_for(np.random.default_rng(r.bit_generator.seed_seq))
        out = t(image, r)
        assert out.shape == (3, s, round(30 * s / 20))


def test_random_crops_in_bounds_and_cover_range():
    image = coords_image(20, 30)
    t = DataTransformer(tp(crop_size=8), TRAIN)
    offsets = set()
    for r in rngs(400):
        out = t(image, r)
        assert out.shape == (3, 8, 8)
        h0, w0 = int(out[0, 0, 0]), int(out[1, 0, 0])
        np.testing.assert_array_equal(out, image[h0:h0 + 8, w0:w0 + 8].transpose(2, 0, 1))
        offsets.add((h0, w0))
    hs, ws = zip(*offsets)
    assert (min(hs), max(hs), min(ws), max(ws)) == (0, 12, 0, 22)


def test_mirror_is_exact_flip_of_the_same_crop():
    image = coords_image(20, 30)
    plain = DataTransformer(tp(crop_size=8, smallest_side_min=16, smallest_side_max=24), TRAIN)
    mirrored = DataTransformer(tp(crop_size=8, smallest_side_min=16, smallest_side_max=24, mirror=True), TRAIN)
    flips = 0
    for i in range(200):
        a = plain(image, np.random.default_rng(i))
        b = mirrored(image, np.random.default_rng(i))  # same S and offsets, then one more draw
        if np.array_equal(b, a[:, :, ::-1]) and not np.array_equal(a, a[:, :, ::-1]):
            flips += 1
        else:
            np.testing.assert_array_equal(b, a)
    assert 70 < flips < 130


def write_pca(path, cov_rgb):
    values, vectors = np.linalg.eigh(cov_rgb)
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.append(array_to_proto(values[::-1].astype(np.float32)))
    vec.blobs.append(array_to_proto(vectors[:, ::-1].astype(np.float32)))
    write_binary_proto(path, vec)


def test_color_shift_covariance(tmp_path):
    cov = np.array([[400.0, 150.0, 50.0], [150.0, 200.0, 20.0], [50.0, 20.0, 100.0]])  # RGB
    write_pca(tmp_path / "pca", cov)
    sigma = 0.5
    t = DataTransformer(tp(pca_stats_file=str(tmp_path / "pca"), pca_sigma=sigma), TRAIN)
    image = np.full((2, 3, 3), 128, np.uint8)
    shifts = []
    for r in rngs(4000):
        out = t(image, r)
        assert np.allclose(out, out[:, :1, :1])  # one shift per image, the same at every pixel
        shifts.append(out[::-1, 0, 0] - 128.0)  # BGR -> RGB
    emp = np.cov(np.array(shifts).T)
    np.testing.assert_allclose(emp, sigma ** 2 * cov, atol=0.08 * sigma ** 2 * cov.max())
    # TEST: no shift.
    assert np.all(DataTransformer(tp(pca_stats_file=str(tmp_path / "pca")), TEST)(image) == 128)


def test_mean_file_on_crop_region_mirror_and_scale(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    mean = rng.uniform(0, 255, (1, 3, 10, 12)).astype(np.float32)
    write_binary_proto(tmp_path / "mean", array_to_proto(mean))
    t = DataTransformer(tp(crop_size=6, mean_file=str(tmp_path / "mean"), scale=0.5), TEST)
    out = t(image)
    chw = image.transpose(2, 0, 1).astype(np.float32)
    np.testing.assert_allclose(out, (chw[:, 2:8, 3:9] - mean[0, :, 2:8, 3:9]) * 0.5, rtol=1e-6)
    # TRAIN with mirror: Caffe subtracts the mean at the source pixel, then flips.
    tm = DataTransformer(tp(crop_size=6, mirror=True, mean_file=str(tmp_path / "mean")), TRAIN)
    for i in range(10):
        r = np.random.default_rng(i)
        h0, w0, flip = r.integers(0, 5), r.integers(0, 7), r.integers(0, 2)
        ref = chw[:, h0:h0 + 6, w0:w0 + 6] - mean[0, :, h0:h0 + 6, w0:w0 + 6]
        np.testing.assert_allclose(tm(image, np.random.default_rng(i)), ref[:, :, ::-1] if flip else ref, rtol=1e-6)
    tv = DataTransformer(tp(mean_value=[10, 20, 30]), TEST)
    np.testing.assert_allclose(tv(image), chw - np.array([10, 20, 30], np.float32).reshape(3, 1, 1))
    t1 = DataTransformer(tp(mean_value=[5]), TEST)
    np.testing.assert_allclose(t1(image), chw - 5)
    small = DataTransformer(tp(smallest_side=20, mean_file=str(tmp_path / "mean")), TEST)
    with pytest.raises(VggtoolError, match="mean_file is 10x12 but image is 20x24"):
        small(image)


def test_test_phase_is_deterministic_and_uses_q():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    p = tp(crop_size=16, mirror=True, smallest_side_min=20, smallest_side_max=40, test_smallest_side=24)
    t = DataTransformer(p, TEST)
    a, b = t(image, np.random.default_rng(1)), t(image, np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)
    assert t.scale_for(None) == 24 and t(image).shape == (3, 16, 16)
    q = DataTransformer(tp(smallest_side=24), TEST)(image)  # 24x36 centre-cropped to 16x16
    np.testing.assert_array_equal(a, q[:, 4:20, 10:26])


def test_bad_parameters():
    with pytest.raises(VggtoolError, match="smallest_side_min 9 must be"):
        DataTransformer(tp(smallest_side_min=9, smallest_side_max=8), TRAIN)
    with pytest.raises(VggtoolError, match="smaller than crop_size"):
        DataTransformer(tp(smallest_side=8, crop_size=16), TRAIN)
    with pytest.raises(VggtoolError, match="mean_file or mean_value"):
        DataTransformer(tp(mean_file="m", mean_value=[1]), TRAIN)
    with pytest.raises(VggtoolError, match="not found|cannot|No such"):
        DataTransformer(tp(pca_stats_file="/nonexistent/pca"), TRAIN)
    with pytest.raises(VggtoolError, match="smaller than crop_size 16"):
        DataTransformer(tp(crop_size=16), TEST)(np.zeros((8, 30, 3), np.uint8))


def reference_rescale(image, q):
    """Independent: smaller side q, the other side rounded; pixel-area averaging when shrinking (no
    aliasing), bilinear when enlarging."""
    import cv2

    h, w = image.shape[:2]
    size = (round(w * q / min(h, w)), q) if h <= w else (q, round(h * q / min(h, w)))
    how = cv2.INTER_AREA if q < min(h, w) else cv2.INTER_LINEAR
    out = cv2.resize(image, size, interpolation=how)
    return out[:, :, None] if out.ndim == 2 else out


@pytest.mark.parametrize("shape,q", [((64, 96, 3), 16), ((120, 80, 3), 32), ((80, 121, 3), 35),
                                     ((40, 52, 3), 48), ((30, 30, 1), 20)])
def test_one_rescale_for_training_testing_extraction_and_localisation(shape, q):
    """An image stored larger than the test scale is shrunk as in training (pixel areas, no aliasing) by
    dense/multi-crop testing, extraction, localisation, heat maps and convert_imageset --resize_smallest,
    and enlarged bilinearly by all of them."""
    from data_prep import convert_imageset
    from vggtool.vgg import evaluate, extract, heatmaps, localize
    from vggtool.data.transform import isotropic_resize

    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    image = np.repeat((((rows + cols) % 2) * 255).astype(np.uint8)[:, :, None], shape[2], axis=2)  # 1-px checks
    want = reference_rescale(image, q)
    trained = DataTransformer(tp(smallest_side=q), TRAIN)(image, np.random.default_rng(0))
    tested = DataTransformer(tp(test_smallest_side=q), TEST)(image)
    np.testing.assert_array_equal(trained, want.transpose(2, 0, 1).astype(np.float32))
    np.testing.assert_array_equal(tested, trained)
    np.testing.assert_array_equal(isotropic_resize(image, q), want)
    for module in (evaluate, extract, localize, heatmaps):  # the one function, not a copy
        assert module.isotropic_resize is isotropic_resize
    np.testing.assert_array_equal(convert_imageset.resize_image(image, smallest=q), want)
    if q < min(shape[:2]) and min(shape[:2]) % q == 0:  # a whole-pixel shrink averages the checks to grey
        assert np.abs(isotropic_resize(image, q).astype(int) - 127.5).max() <= 0.5


def test_caffes_fixed_resize_is_one_function():
    """ImageData's new_height/new_width and convert_imageset --resize_height/--resize_width: bilinear to
    exactly H x W (Caffe's), a 1-channel image keeps its channel axis, the same size is the same array."""
    import cv2
    from data_prep import convert_imageset
    from vggtool.data.transform import fixed_resize
    from vggtool.layers import data as data_layers

    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (9, 13, 3)).astype(np.uint8)
    want = cv2.resize(image, (7, 5), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(fixed_resize(image, 5, 7), want)
    np.testing.assert_array_equal(convert_imageset.resize_image(image, 5, 7), want)
    assert fixed_resize(image[:, :, :1], 5, 7).shape == (5, 7, 1)
    assert fixed_resize(image, 9, 13) is image and convert_imageset.resize_image(image, 9, 13) is image
    assert data_layers.fixed_resize is fixed_resize
