"""vggtool.pycaffe.Net: pycaffe's constructor forms, C++-exposed names, forward/backward checks, batched
passes, MemoryData input, weight sharing, HDF5 weights, callbacks, set_random_seed."""
import numpy as np
import pytest

import vggtool.pycaffe as caffe
from vggtool.errors import VggtoolError

NET = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 3 dim: 6 dim: 6 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 5 kernel_size: 3 weight_filler { type: "gaussian" std: 0.3 }
                      bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""

MEMORY_NET = """name: "mem"
layer { name: "data" type: "MemoryData" top: "data" top: "label"
  memory_data_param { batch_size: 2 channels: 3 height: 2 width: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
  inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    return str(path)


@pytest.fixture
def net(model):
    caffe.set_random_seed(5)
    return caffe.Net(model, caffe.TEST)


def batch(rng, n=4):
    return rng.standard_normal((n, 3, 6, 6)).astype(np.float32)


def test_constructor_forms_give_the_same_net(model, net, tmp_path, rng):
    weights = str(tmp_path / "w.caffemodel")
    net.save(weights)
    x = batch(rng)
    want = net.forward(data=x)["prob"].copy()
    for other in (caffe.Net(model, weights, caffe.TEST), caffe.Net(model, caffe.TEST, weights=weights),
                  caffe.Net(model, caffe.TEST, level=0, stages=[], weights=weights)):
        np.testing.assert_array_equal(other.forward(data=x)["prob"], want)
    with pytest.raises(RuntimeError, match="Could not open file"):
        caffe.Net(str(tmp_path / "missing.prototxt"), caffe.TEST)
    with pytest.raises(RuntimeError, match="Could not open file"):
        caffe.Net(model, caffe.TEST, weights=str(tmp_path / "missing.caffemodel"))


def test_stages_select_layers(tmp_path):
    text = NET + 'layer { name: "extra" type: "ReLU" bottom: "prob" top: "extra" include { stage: "more" } }\n'
    path = tmp_path / "staged.prototxt"
    path.write_text(text)
    assert "extra" not in caffe.Net(str(path), caffe.TEST).blobs
    assert "extra" in caffe.Net(str(path), caffe.TEST, stages=["more"]).blobs


def test_cxx_exposed_names(net):
    assert net._blob_names == ["data", "conv1", "fc", "prob"]
    assert list(net.blobs) == net._blob_names
    assert net._layer_names == ["data", "conv1", "relu1", "fc", "prob"]
    assert net.inputs == ["data"] and net._inputs == [0]
    assert net.outputs == ["prob"] and net._outputs == [3]
    assert net._blob_loss_weights == [0.0, 0.0, 0.0, 0.0]
    assert [l.type for l in net.layers] == ["Input", "Convolution", "ReLU", "InnerProduct", "Softmax"]
    assert list(net.params) == ["conv1", "fc"] and net.params["conv1"][0].data.shape == (5, 3, 3, 3)
    assert net._bottom_ids(3) == [1] and net._top_ids(3) == [2]
    assert net.top_names["relu1"] == ["conv1"] and net.bottom_names["fc"] == ["conv1"]
    assert list(net.layer_dict) == net._layer_names
    b = net.blobs["data"]
    assert (b.num, b.channels, b.height, b.width, b.count) == (4, 3, 6, 6, 432)


def test_loss_weights_name_the_loss(tmp_path):
    path = tmp_path / "mem.prototxt"
    path.write_text(MEMORY_NET)
    net = caffe.Net(str(path), caffe.TRAIN)
    assert dict(net.blob_loss_weights) == {"data": 0.0, "label": 0.0, "fc": 0.0, "loss": 1.0}
    assert net._blob_loss_weights == [0.0, 0.0, 0.0, 1.0]


def test_forward_checks_inputs_like_pycaffe(net, rng):
    with pytest.raises(Exception, match="Input is not batch sized"):
        net.forward(data=batch(rng, 3))
    with pytest.raises(Exception, match="Input blob arguments do not match net inputs"):
        net.forward(conv1=np.zeros((4, 5, 4, 4), np.float32))
    assert net.blobs["data"].shape == (4, 3, 6, 6)  # never reshaped by forward


def test_forward_start_end_blobs(net, rng):
    x = batch(rng)
    full = net.forward(data=x)["prob"].copy()
    out = net.forward(end="fc", blobs=["conv1"])
    assert set(out) == {"fc", "conv1"}
    # restart above the data: change conv1's output by hand and run the rest
    net.blobs["conv1"].data[...] = 0
    out = net.forward(start="fc")
    b = net.params["fc"][1].data
    e = np.exp(b - b.max())
    np.testing.assert_allclose(out["prob"], np.tile(e / e.sum(), (4, 1)), rtol=1e-6)
    assert not np.allclose(out["prob"], full)


def test_reshape_then_forward_without_net_reshape(net, rng):
    net.blobs["data"].reshape(7, 3, 6, 6)
    x = batch(rng, 7)
    net.blobs["data"].data[...] = x
    out = net.forward()
    assert out["prob"].shape == (7, 3)


def test_backward_returns_input_diffs_and_matches_numerical_gradient(tmp_path, rng):
    path = tmp_path / "fb.prototxt"
    path.write_text("force_backward: true\n" + NET)  # as in Caffe: no loss, so backward needs it
    caffe.set_random_seed(1)
    net = caffe.Net(str(path), caffe.TEST, dtype=np.float64)
    x = rng.standard_normal((4, 3, 6, 6))
    g = rng.standard_normal((4, 3))
    net.forward(data=x)
    diffs = net.backward(prob=g, diffs=["fc"])
    assert set(diffs) == {"data", "fc"}
    with pytest.raises(Exception, match="Diff is not batch sized"):
        net.backward(prob=g[:2])
    # d(sum(g * prob))/dx by central differences at a few positions
    got = diffs["data"].copy()
    for idx in [(0, 0, 0, 0), (1, 2, 3, 4), (3, 1, 5, 5)]:
        xp, xm = x.copy(), x.copy()
        xp[idx] += 1e-6
        xm[idx] -= 1e-6
        fp = (net.forward(data=xp)["prob"] * g).sum()
        fm = (net.forward(data=xm)["prob"] * g).sum()
        assert abs((fp - fm) / 2e-6 - got[idx]) < 1e-6


def test_forward_all_batches_and_drops_padding(net, rng):
    x = rng.standard_normal((10, 3, 6, 6)).astype(np.float32)
    out = net.forward_all(data=x, blobs=["fc"])
    assert out["prob"].shape == (10, 3) and out["fc"].shape == (10, 3)
    for i in range(0, 8, 4):
        np.testing.assert_array_equal(out["prob"][i:i + 4], net.forward(data=x[i:i + 4])["prob"])
    last = np.concatenate([x[8:], np.zeros((2, 3, 6, 6), np.float32)])
    np.testing.assert_array_equal(out["prob"][8:], net.forward(data=last)["prob"][:2])


def test_forward_backward_all(tmp_path, rng):
    path = tmp_path / "fb.prototxt"
    path.write_text("force_backward: true\n" + NET)
    net = caffe.Net(str(path), caffe.TEST)
    x = rng.standard_normal((6, 3, 6, 6)).astype(np.float32)
    g = rng.standard_normal((6, 3)).astype(np.float32)
    outs, diffs = net.forward_backward_all(data=x, prob=g)
    assert outs["prob"].shape == (6, 3) and diffs["data"].shape == (6, 3, 6, 6)
    assert np.abs(diffs["data"]).max() > 0
    net.forward(data=x[:4])
    np.testing.assert_array_equal(diffs["data"][:4], net.backward(prob=g[:4])["data"])
    last_x = np.concatenate([x[4:], np.zeros((2, 3, 6, 6), np.float32)])
    last_g = np.concatenate([g[4:], np.zeros((2, 3), np.float32)])
    net.forward(data=last_x)
    np.testing.assert_array_equal(diffs["data"][4:], net.backward(prob=last_g)["data"][:2])


def test_private_forward_backward_and_callbacks(net, rng):
    net.blobs["data"].data[...] = batch(rng)
    seen = []
    net.before_forward(lambda i: seen.append(("bf", i)))
    net.after_forward(lambda i: seen.append(("af", i)))
    net.after_backward(lambda i: seen.append(("ab", i)))
    loss = net._forward(0, len(net.layers) - 1)
    assert loss == 0.0 and isinstance(loss, float)
    assert seen[:2] == [("bf", 0), ("af", 0)] and seen[-1] == ("af", 4) and len(seen) == 10
    net._backward(4, 0)
    assert [s for s in seen if s[0] == "ab"] == [("ab", i) for i in (4, 3, 2, 1, 0)]


def test_set_random_seed_repeats_weights(model):
    caffe.set_random_seed(11)
    a = caffe.Net(model, caffe.TEST)
    b = caffe.Net(model, caffe.TEST)
    caffe.set_random_seed(11)
    c = caffe.Net(model, caffe.TEST)
    np.testing.assert_array_equal(a.params["conv1"][0].data, c.params["conv1"][0].data)
    assert not np.array_equal(a.params["conv1"][0].data, b.params["conv1"][0].data)


def test_share_with(model, net):
    other = caffe.Net(model, caffe.TEST)
    other.share_with(net)
    net.params["fc"][0].data[...] = 0.25
    assert (other.params["fc"][0].data == 0.25).all()


def test_memory_data_and_set_input_arrays(tmp_path, rng):
    path = tmp_path / "mem.prototxt"
    path.write_text(MEMORY_NET)
    net = caffe.Net(str(path), caffe.TRAIN)
    data = rng.standard_normal((4, 3, 2, 2)).astype(np.float32)
    labels = np.array([0, 3, 1, 2], np.float32)
    net.set_input_arrays(data, labels)
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, data[:2])
    np.testing.assert_array_equal(net.blobs["label"].data, [0, 3])
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, data[2:])
    net.forward()  # wraps around
    np.testing.assert_array_equal(net.blobs["label"].data, [0, 3])
    with pytest.raises(RuntimeError, match="multiple of batch size"):
        net.set_input_arrays(data[:3].copy(), labels[:3].copy())
    with pytest.raises(RuntimeError, match="must be float32"):
        net.set_input_arrays(data.astype(np.float64), labels)
    with pytest.raises(RuntimeError, match="wrong number of channels"):
        net.set_input_arrays(np.zeros((4, 2, 2, 2), np.float32), labels)
    with pytest.raises(RuntimeError, match="same first dimension"):
        net.set_input_arrays(data, labels[:2].copy())


def test_memory_data_needs_data_and_set_input_arrays_needs_the_layer(tmp_path, model, net):
    path = tmp_path / "mem.prototxt"
    path.write_text(MEMORY_NET)
    with pytest.raises(VggtoolError, match="set_input_arrays"):
        caffe.Net(str(path), caffe.TRAIN).forward()
    with pytest.raises(RuntimeError, match="first layer is a MemoryDataLayer"):
        net.set_input_arrays(np.zeros((4, 3, 6, 6), np.float32), np.zeros(4, np.float32))
    bad = tmp_path / "bad.prototxt"
    bad.write_text(MEMORY_NET.replace("height: 2", "height: 0"))
    with pytest.raises(VggtoolError, match="must be specified and positive"):
        caffe.Net(str(bad), caffe.TRAIN)


def test_hdf5_round_trip_in_caffes_layout(model, net, tmp_path, rng):
    h5py = pytest.importorskip("h5py")
    path = str(tmp_path / "w.h5")
    net.save_hdf5(path)
    with h5py.File(path, "r") as f:
        assert list(f["data"]) == ["data", "conv1", "relu1", "fc", "prob"]  # every layer, in order
        assert list(f["data/conv1"]) == ["0", "1"]
        np.testing.assert_array_equal(f["data/fc/0"][()], net.params["fc"][0].data)
    other = caffe.Net(model, caffe.TEST)
    other.load_hdf5(path)
    x = batch(rng)
    np.testing.assert_array_equal(other.forward(data=x)["prob"], net.forward(data=x)["prob"])
    # copy_from and the weights= argument recognise an HDF5 file by its signature, as Caffe does
    import shutil
    shutil.copy(path, str(tmp_path / "weights.bin"))
    third = caffe.Net(model, caffe.TEST, weights=str(tmp_path / "weights.bin"))
    np.testing.assert_array_equal(third.params["fc"][0].data, net.params["fc"][0].data)
    with h5py.File(path, "a") as f:
        del f["data/fc/0"]
    with pytest.raises(VggtoolError, match="Incompatible number of blobs for layer fc"):
        other.load_hdf5(path)


def test_hdf5_stores_a_shared_parameter_once(tmp_path):
    pytest.importorskip("h5py")
    import h5py

    text = """name: "shared"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 } } }
layer { name: "a" type: "InnerProduct" bottom: "data" top: "a" param { name: "w" }
  inner_product_param { num_output: 4 bias_term: false weight_filler { type: "gaussian" } } }
layer { name: "b" type: "InnerProduct" bottom: "a" top: "b" param { name: "w" }
  inner_product_param { num_output: 4 bias_term: false weight_filler { type: "gaussian" } } }
"""
    path = tmp_path / "shared.prototxt"
    path.write_text(text)
    net = caffe.Net(str(path), caffe.TEST)
    h5 = str(tmp_path / "s.h5")
    net.save_hdf5(h5)
    with h5py.File(h5, "r") as f:
        assert list(f["data/a"]) == ["0"] and list(f["data/b"]) == []
    other = caffe.Net(str(path), caffe.TEST)
    other.load_hdf5(h5)
    np.testing.assert_array_equal(other.params["b"][0].data, net.params["a"][0].data)


def test_runtime_names():
    assert "Convolution" in caffe.layer_type_list() and "MemoryData" in caffe.layer_type_list()
    caffe.set_mode_gpu()
    caffe.set_device(0)
    caffe.set_mode_cpu()
    assert caffe.solver_count() == 1 and caffe.solver_rank() == 0 and caffe.has_nccl() is False
    t = caffe.Timer()
    t.start()
    sum(range(1000))
    t.stop()
    first = t.ms
    assert first > 0 and t.ms == first  # stopped: reading again gives the same time
    assert caffe.TRAIN == 0 and caffe.TEST == 1


def test_gpu_mode_without_a_gpu_warns_once_and_runs_on_the_cpu(model, capsys, monkeypatch):
    from vggtool import backend
    from vggtool.pycaffe import _runtime

    if backend.gpu_count() > 0:
        pytest.skip("a GPU is present: GPU mode uses it")
    monkeypatch.setitem(_runtime._state, "gpu_warned", False)
    caffe.set_mode_gpu()
    try:
        a = caffe.Net(model, caffe.TEST)
        b = caffe.Net(model, caffe.TEST)
    finally:
        caffe.set_mode_cpu()
    assert a.device == backend.CPU and b.device == backend.CPU
    err = capsys.readouterr().err
    assert err.count("running on the CPU") == 1
