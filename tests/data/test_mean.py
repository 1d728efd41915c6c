"""The one mean loader (vggtool.data.mean): the data layers' transform and the test-time commands read a
mean file the same way; .npy means as pycaffe's; the shapes the two former loaders disagreed on."""
import numpy as np
import pytest

from vggtool.io.wire import array_to_proto
from vggtool.data.mean import load_mean, mean_image, read_mean_file
from vggtool.data.transform import DataTransformer
from vggtool.errors import VggtoolError
from vggtool.proto import caffe_pb2
from vggtool.io.wire import write_binary_proto

TEST = 1


def write_mean(tmp_path, array, name="mean.binaryproto", legacy=False):
    path = str(tmp_path / name)
    if name.endswith(".npy"):
        np.save(path, array)
        return path
    if legacy:  # as Caffe's compute_image_mean writes it: num/channels/height/width, no shape
        blob = caffe_pb2.BlobProto()
        blob.num, blob.channels, blob.height, blob.width = array.shape
        blob.data.extend(array.astype(np.float32).ravel().tolist())
    else:
        blob = array_to_proto(np.asarray(array, np.float32))
    write_binary_proto(path, blob)
    return path


@pytest.mark.parametrize("kind", ["shape", "legacy", "npy"])
def test_mean_file_forms_give_one_mean_image(tmp_path, kind):
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (1, 3, 4, 5)).astype(np.float32)
    if kind == "npy":
        path = write_mean(tmp_path, image[0], "mean.npy")
    else:
        path = write_mean(tmp_path, image, legacy=kind == "legacy")
    np.testing.assert_array_equal(read_mean_file(path), image[0])
    want = image[0].astype(np.float64).reshape(3, -1).mean(axis=1)  # direct per-channel average
    np.testing.assert_allclose(load_mean(mean_file=path), want, rtol=1e-6)
    # the data layers' transform subtracts the same image (TEST, no crop: every pixel)
    param = caffe_pb2.TransformationParameter(mean_file=path)
    pixels = rng.integers(0, 256, (4, 5, 3)).astype(np.uint8)
    out = DataTransformer(param, TEST)(pixels)
    np.testing.assert_array_equal(out, pixels.transpose(2, 0, 1).astype(np.float32) - image[0])


@pytest.mark.parametrize("shape", [(3,), (2, 3, 4, 5), (3, 4)])
def test_a_mean_file_is_a_mean_image(tmp_path, shape):
    """--mean-file used to take a 1-d blob as per-channel values and the first image of an N > 1 blob;
    the data layer (as Caffe's) refused both. Both loaders now refuse them, naming the file."""
    path = write_mean(tmp_path, np.ones(shape))
    with pytest.raises(VggtoolError, match=r"--mean-file: .*mean.binaryproto has shape .*expected 1xCxHxW"):
        load_mean(mean_file=path)
    with pytest.raises(VggtoolError, match=r"layer 'd': mean_file: .*mean.binaryproto has shape"):
        mean_image(path, (), "layer 'd'")


def test_mean_errors_name_the_file(tmp_path):
    with pytest.raises(VggtoolError, match=r"--mean-file: .*none.binaryproto does not exist"):
        load_mean(mean_file=str(tmp_path / "none.binaryproto"))
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not an array")
    with pytest.raises(VggtoolError, match=r"--mean-file: .*bad.npy: not a readable .npy"):
        load_mean(mean_file=str(bad))
    np.save(str(tmp_path / "obj.npy"), np.array(["a"]))
    with pytest.raises(VggtoolError, match=r"obj.npy holds <U1 values"):
        load_mean(mean_file=str(tmp_path / "obj.npy"))
    with pytest.raises(VggtoolError, match=r"layer 'd': give mean_file or mean_value, not both"):
        mean_image("m", [1.0], "layer 'd'")


def test_mean_values_from_text_numbers_and_transform_param(tmp_path):
    np.testing.assert_array_equal(load_mean("104,117,123"), [104, 117, 123])
    np.testing.assert_array_equal(load_mean([104.0, 117.0, 123.0]), [104, 117, 123])
    np.testing.assert_array_equal(load_mean("50", channels=3), [50, 50, 50])
    assert mean_image(None, [1.0, 2.0, 3.0]).shape == (3, 1, 1)
    assert mean_image(None, ()) is None
    with pytest.raises(VggtoolError, match=r"layer 'd': mean_value: the mean must be finite"):
        mean_image(None, [1.0, float("nan")], "layer 'd'")
    with pytest.raises(VggtoolError, match="2 channel"):
        load_mean("1,2", channels=3)
