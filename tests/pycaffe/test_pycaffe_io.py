"""vggtool.pycaffe.io: blob protos and Datums in pycaffe's C x H x W layout, the Transformer, image
loading, resizing and oversampling."""
import cv2
import numpy as np
import pytest

import vggtool.pycaffe as caffe
from vggtool.data import datum as vgg_datum
from vggtool.proto import caffe_pb2

io = caffe.io


def test_blobproto_round_trip_and_diff(rng):
    a = rng.standard_normal((2, 3, 4))
    d = rng.standard_normal((2, 3, 4))
    blob = io.array_to_blobproto(a, d)
    assert list(blob.shape.dim) == [2, 3, 4]
    np.testing.assert_allclose(io.blobproto_to_array(blob), a.astype(np.float32))
    np.testing.assert_allclose(io.blobproto_to_array(blob, return_diff=True), d.astype(np.float32))
    # serialised and parsed back (the packed floats are read from the wire)
    again = caffe_pb2.BlobProto.FromString(blob.SerializeToString())
    np.testing.assert_allclose(io.blobproto_to_array(again), a.astype(np.float32))


def test_blobproto_legacy_shape_and_no_shape():
    legacy = caffe_pb2.BlobProto(num=1, channels=2, height=1, width=3, data=list(range(6)))
    assert io.blobproto_to_array(legacy).shape == (1, 2, 1, 3)
    with pytest.raises(ValueError, match="no shape"):
        io.blobproto_to_array(caffe_pb2.BlobProto(data=[1.0, 2.0]))
    with pytest.raises(ValueError, match="holds 2 data"):
        io.blobproto_to_array(caffe_pb2.BlobProto(shape=caffe_pb2.BlobShape(dim=[3]), data=[1.0, 2.0]))


def test_blobprotovector_strings(rng):
    arrays = [rng.standard_normal((2, 2)), rng.standard_normal(3)]
    back = io.blobprotovector_str_to_arraylist(io.arraylist_to_blobprotovector_str(arrays))
    for a, b in zip(arrays, back):
        np.testing.assert_allclose(b, a.astype(np.float32))


def test_datum_is_channel_first_uint8_and_float(rng):
    chw = rng.integers(0, 256, (3, 5, 7)).astype(np.uint8)
    datum = io.array_to_datum(chw, label=4)
    assert (datum.channels, datum.height, datum.width, datum.label) == (3, 5, 7, 4)
    np.testing.assert_array_equal(io.datum_to_array(datum), chw)
    floats = rng.standard_normal((2, 3, 4)).astype(np.float32)
    fd = io.array_to_datum(floats)
    assert len(fd.data) == 0 and len(fd.float_data) == 24
    np.testing.assert_allclose(io.datum_to_array(fd), floats)
    with pytest.raises(ValueError, match="C x H x W"):
        io.array_to_datum(np.zeros((4, 4), np.uint8))
    # the same record as vggtool's data_prep writes it (H x W x C image in, C x H x W bytes stored)
    stored = vgg_datum.array_to_datum(chw.transpose(1, 2, 0))
    np.testing.assert_array_equal(io.datum_to_array(stored), chw)
    np.testing.assert_array_equal(vgg_datum.datum_to_image(datum), chw.transpose(1, 2, 0))


def test_datum_to_array_decodes_encoded_datums(rng):
    hwc = rng.integers(0, 256, (4, 6, 3)).astype(np.uint8)
    ok, png = cv2.imencode(".png", hwc)
    datum = vgg_datum.encoded_datum(png.tobytes(), label=1)
    np.testing.assert_array_equal(io.datum_to_array(datum), hwc.transpose(2, 0, 1))


def test_transformer_matches_the_steps_by_hand(rng):
    t = io.Transformer({"data": (1, 3, 4, 5)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255)
    mean = np.array([104.0, 117.0, 123.0])
    t.set_mean("data", mean)
    t.set_input_scale("data", 0.5)
    image = rng.random((4, 5, 3)).astype(np.float32)
    out = t.preprocess("data", image)
    want = (image.transpose(2, 0, 1)[::-1] * 255 - mean[:, None, None]) * 0.5
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(t.deprocess("data", out), image, atol=1e-6)
    with pytest.raises(Exception, match="not one of the net inputs"):
        t.preprocess("label", image)
    with pytest.raises(Exception, match="Mean channels incompatible"):
        t.set_mean("data", np.zeros(4))
    with pytest.raises(Exception, match="Channel swap"):
        t.set_channel_swap("data", (1, 0))


def test_transformer_resizes_to_the_input_and_a_full_mean(rng):
    t = io.Transformer({"data": (1, 3, 8, 8)})
    t.set_transpose("data", (2, 0, 1))
    t.set_mean("data", np.full((3, 4, 4), 0.25, np.float32))  # resized to 8 x 8
    out = t.preprocess("data", np.full((16, 16, 3), 0.75, np.float32))
    assert out.shape == (3, 8, 8)
    np.testing.assert_allclose(out, 0.5, atol=1e-6)


def test_load_image_rgb_gray_and_scale(tmp_path):
    bgr = np.zeros((3, 4, 3), np.uint8)
    bgr[..., 2] = 255  # red
    bgr[0, 0] = (0, 51, 0)
    cv2.imwrite(str(tmp_path / "c.png"), bgr)
    img = io.load_image(str(tmp_path / "c.png"))
    assert img.dtype == np.float32 and img.shape == (3, 4, 3)
    np.testing.assert_allclose(img[1, 1], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(img[0, 0], [0.0, 0.2, 0.0], atol=1e-7)
    gray = io.load_image(str(tmp_path / "c.png"), color=False)
    assert gray.shape == (3, 4, 1)
    np.testing.assert_allclose(gray[1, 1, 0], 0.2125, atol=1e-6)
    cv2.imwrite(str(tmp_path / "g.png"), np.full((2, 2), 255, np.uint8))
    g3 = io.load_image(str(tmp_path / "g.png"))
    assert g3.shape == (2, 2, 3) and (g3 == 1).all()
    with pytest.raises(Exception, match="cannot read"):
        io.load_image(str(tmp_path / "none.png"))


def _bilinear(im, h, w):
    """Resampling between pixel centres with the edge held: the reference for resize_image."""
    H, W = im.shape[:2]
    out = np.empty((h, w) + im.shape[2:])
    for i in range(h):
        y = min(max((i + 0.5) * H / h - 0.5, 0), H - 1)
        y0 = int(np.floor(y))
        y1 = min(y0 + 1, H - 1)
        for j in range(w):
            x = min(max((j + 0.5) * W / w - 0.5, 0), W - 1)
            x0 = int(np.floor(x))
            x1 = min(x0 + 1, W - 1)
            fy, fx = y - y0, x - x0
            out[i, j] = ((1 - fy) * ((1 - fx) * im[y0, x0] + fx * im[y0, x1])
                         + fy * ((1 - fx) * im[y1, x0] + fx * im[y1, x1]))
    return out


@pytest.mark.parametrize("channels", [1, 3, 7])
def test_resize_image_is_bilinear(rng, channels):
    im = rng.random((4, 5, channels)).astype(np.float32)
    out = io.resize_image(im, (8, 10))
    assert out.shape == (8, 10, channels) and out.dtype == np.float32
    np.testing.assert_allclose(out, _bilinear(im.astype(np.float64), 8, 10), atol=1e-3)
    const = io.resize_image(np.full((3, 3, 2), 7.0, np.float32), (5, 6))
    assert const.shape == (5, 6, 2) and (const == 7).all()


def test_oversample_crops_in_pycaffes_order(rng):
    im = rng.random((6, 8, 3)).astype(np.float32)
    crops = io.oversample([im, im + 1], (4, 4))
    assert crops.shape == (20, 4, 4, 3)
    corners = [im[:4, :4], im[:4, 4:], im[2:, :4], im[2:, 4:], im[1:5, 2:6]]
    for k, c in enumerate(corners):
        np.testing.assert_array_equal(crops[k], c)
        np.testing.assert_array_equal(crops[5 + k], c[:, ::-1])
    np.testing.assert_array_equal(crops[10], im[:4, :4] + 1)
