"""Net construction semantics (Caffe's Net::Init): filtering, in-place, splits, losses, backward, sharing."""
import numpy as np
import pytest

from vggtool import Net, VggtoolError
from vggtool.backend import to_numpy
from vggtool.io.prototxt import parse_net_text


def build(text, phase="TRAIN", **kw):
    kw.setdefault("dtype", np.float64)
    return Net(parse_net_text(text, "<test>"), phase=phase, seed=0, **kw)


def inputs(**shapes):
    tops = "".join(f' top: "{n}"' for n in shapes)
    dims = "".join("shape {" + "".join(f" dim: {d}" for d in s) + " }" for s in shapes.values())
    return f'layer {{ name: "input" type: "Input"{tops} input_param {{ {dims} }} }}\n'


def ip(name, bottom, n, extra="", top=None):
    return (f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{top or name}" {extra} '
            f'inner_product_param {{ num_output: {n} weight_filler {{ type: "gaussian" std: 1 }} '
            f'bias_filler {{ type: "gaussian" std: 1 }} }} }}\n')


def names(net):
    return list(net.layer_names)


def user_layers(net):
    return [n for n in net.layer_names if net.layer_type(n) != "Split"]


# -- include / exclude ---------------------------------------------------------------------------------
RULES = inputs(x=(1, 2)) + "".join(
    f'layer {{ name: "{n}" type: "ReLU" bottom: "x" top: "{n}" {rule} }}\n' for n, rule in [
        ("train", "include { phase: TRAIN }"),
        ("test", "include { phase: TEST }"),
        ("not_test", "exclude { phase: TEST }"),
        ("s1", 'include { stage: "s1" }'),
        ("s1_and_s2", 'include { stage: "s1" stage: "s2" }'),
        ("s1_or_s2", 'include { stage: "s1" } include { stage: "s2" }'),
        ("no_s1", 'include { not_stage: "s1" }'),
        ("lvl_ge1", "include { min_level: 1 }"),
        ("lvl_le0", "include { max_level: 0 }"),
        ("test_lvl2", "include { phase: TEST min_level: 2 }"),
    ])


@pytest.mark.parametrize("phase,stages,level,expected", [
    ("TRAIN", (), 0, ["train", "not_test", "no_s1", "lvl_le0"]),
    ("TEST", (), 0, ["test", "no_s1", "lvl_le0"]),
    ("TRAIN", ("s1",), 0, ["train", "not_test", "s1", "s1_or_s2", "lvl_le0"]),
    ("TRAIN", ("s2",), 0, ["train", "not_test", "s1_or_s2", "no_s1", "lvl_le0"]),
    ("TRAIN", ("s1", "s2"), 0, ["train", "not_test", "s1", "s1_and_s2", "s1_or_s2", "lvl_le0"]),
    ("TEST", (), 2, ["test", "no_s1", "lvl_ge1", "test_lvl2"]),
    ("TRAIN", (), 1, ["train", "not_test", "no_s1", "lvl_ge1"]),
])
def test_include_exclude_rules(phase, stages, level, expected):
    net = build(RULES, phase=phase, stages=stages, level=level)
    assert user_layers(net) == ["input"] + expected


def test_state_in_the_prototxt_is_used():
    net = build('state { stage: "s1" level: 1 }\n' + RULES, phase="TRAIN")
    assert user_layers(net) == ["input", "train", "not_test", "s1", "s1_or_s2", "lvl_ge1"]


def test_include_and_exclude_together_is_an_error():
    text = inputs(x=(1, 2)) + 'layer { name: "both" type: "ReLU" bottom: "x" top: "y" include { phase: TRAIN } exclude { phase: TEST } }'
    with pytest.raises(VggtoolError, match="'both'.*include.*exclude"):
        build(text)


def test_unknown_phase_string():
    with pytest.raises(VggtoolError, match="phase 'VAL'"):
        build(inputs(x=(1, 2)), phase="VAL")


# -- in-place, splits --------------------------------------------------------------------------------
def test_in_place_top_shares_the_blob(rng):
    net = build(inputs(x=(2, 3)) + ip("fc", "x", 4) + 'layer { name: "relu" type: "ReLU" bottom: "fc" top: "fc" }')
    assert list(net.blobs) == ["x", "fc"]
    i = names(net).index("relu")
    assert net.top_vecs[i][0] is net.bottom_vecs[i][0]
    out = net.forward(x=rng.standard_normal((2, 3)))
    w, b = (to_numpy(p.data) for p in net.params["fc"])
    x = to_numpy(net.blobs["x"].data)
    np.testing.assert_allclose(to_numpy(out["fc"]), np.maximum(x @ w.T + b, 0))
    assert net.outputs == ["fc"]


TWO_HEADS = """force_backward: true
layer { name: "input" type: "Input" top: "x" top: "label" input_param { shape { dim: 3 dim: 5 } shape { dim: 3 } } }
%s
"""
HEAD = ('layer {{ name: "ip{k}" type: "InnerProduct" bottom: "x" top: "ip{k}" inner_product_param {{ num_output: 4 '
        'weight_filler {{ type: "gaussian" std: 1 }} }} }}\n'
        'layer {{ name: "loss{k}" type: "SoftmaxWithLoss" bottom: "ip{k}" bottom: "label" top: "loss{k}" }}\n')


def test_split_insertion_names_and_gradient_accumulation(rng):
    x = rng.standard_normal((3, 5))
    label = np.array([0, 3, 1], dtype=np.float64)
    both = build(TWO_HEADS % (HEAD.format(k=1) + HEAD.format(k=2)))
    # Caffe's names: <blob>_<producer>_<top index>_split[_<k>]
    assert "x_input_0_split" in names(both) and "label_input_1_split" in names(both)
    assert both.layer_type("x_input_0_split") == "Split"
    assert both.top_names["x_input_0_split"] == ["x_input_0_split_0", "x_input_0_split_1"]
    assert both.bottom_names["ip1"] == ["x_input_0_split_0"]
    assert both.bottom_names["ip2"] == ["x_input_0_split_1"]
    both.forward(x=x, label=label)
    both.backward()
    grads = []
    for k in (1, 2):
        single = build(TWO_HEADS % HEAD.format(k=k))
        assert not any(n.endswith("_split") for n in names(single))
        np.testing.assert_array_equal(to_numpy(single.params[f"ip{k}"][0].data), to_numpy(both.params[f"ip{k}"][0].data))
        single.forward(x=x, label=label)
        single.backward()
        grads.append(to_numpy(single.blobs["x"].diff).copy())
        np.testing.assert_allclose(to_numpy(both.params[f"ip{k}"][0].diff), to_numpy(single.params[f"ip{k}"][0].diff))
    np.testing.assert_allclose(to_numpy(both.blobs["x"].diff), grads[0] + grads[1], rtol=1e-12)


def test_loss_weighted_top_that_also_feeds_a_layer(rng):
    # "a" is a loss (weight 2) and the input of "b" (loss weight 1): the split keeps both contributions.
    text = inputs(x=(2, 3)) + ip("a", "x", 4, "loss_weight: 2") + ip("b", "a", 2, "loss_weight: 1")
    net = build(text)
    assert "a_a_0_split" in names(net)
    # pycaffe: every blob, in blob order, 0 where unweighted; the weight of "a" moved to the split's first top.
    assert list(net.blob_loss_weights) == list(net.blobs)
    assert {k: v for k, v in net.blob_loss_weights.items() if v} == {"a_a_0_split_0": 2.0, "b": 1.0}
    assert net.blob_loss_weights["a"] == 0.0 and net.blob_loss_weights["a_a_0_split_1"] == 0.0
    x = rng.standard_normal((2, 3))
    net.forward(x=x)
    loss = net.forward_from_to()
    a = to_numpy(net.blobs["a"].data)
    assert float(loss) == pytest.approx(2 * a.sum() + to_numpy(net.blobs["b"].data).sum())
    net.clear_param_diffs()
    net.backward_from_to()
    wb = to_numpy(net.params["b"][0].data)
    da = 2 + wb.sum(axis=0)  # d loss / d a for each sample
    np.testing.assert_allclose(to_numpy(net.params["a"][0].diff), np.outer(da, x.sum(axis=0)))
    np.testing.assert_allclose(to_numpy(net.params["a"][1].diff), 2 * da)


# -- losses and backward -----------------------------------------------------------------------------
def test_loss_weight_on_a_non_loss_layer(rng):
    net = build(inputs(x=(2, 3)) + ip("fc", "x", 4, "loss_weight: 2.5"))
    x = rng.standard_normal((2, 3))
    net.blobs["x"].data = x
    loss = net.forward_backward()
    assert float(loss) == pytest.approx(2.5 * to_numpy(net.blobs["fc"].data).sum())
    np.testing.assert_allclose(to_numpy(net.params["fc"][0].diff), 2.5 * np.ones((4, 1)) * x.sum(axis=0))
    np.testing.assert_allclose(to_numpy(net.params["fc"][1].diff), 2.5 * 2 * np.ones(4))


LOSS_NET = inputs(x=(3, 4), label=(3,)) + ip("fc", "x", 5) + \
    'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" %s }\n'


def run_loss(extra, rng_seed=0):
    net = build(LOSS_NET % extra)
    r = np.random.default_rng(rng_seed)
    net.blobs["x"].data = r.standard_normal((3, 4))
    net.blobs["label"].data = np.array([0, 4, 2])
    loss = float(net.forward_backward())
    return net, loss


def test_loss_weight_on_a_loss_layer_scales_loss_and_gradients():
    base, loss1 = run_loss("")
    scaled, loss3 = run_loss("loss_weight: 3")
    assert base.blob_loss_weights == {"x": 0.0, "label": 0.0, "fc": 0.0, "loss": 1.0}
    assert list(scaled.blob_loss_weights.items()) == [("x", 0.0), ("label", 0.0), ("fc", 0.0), ("loss", 3.0)]
    assert loss3 == pytest.approx(3 * loss1)
    assert float(to_numpy(scaled.blobs["loss"].data)) == pytest.approx(loss1)  # the top holds the unweighted loss
    np.testing.assert_allclose(to_numpy(scaled.params["fc"][0].diff), 3 * to_numpy(base.params["fc"][0].diff))


def test_loss_weight_zero_means_no_backward():
    net, loss = run_loss("loss_weight: 0")
    assert loss == 0.0 and net.blob_loss_weights == {"x": 0.0, "label": 0.0, "fc": 0.0, "loss": 0.0}
    assert not any(net.layer_need_backward)
    assert not np.any(to_numpy(net.params["fc"][0].diff))


def test_propagate_down_false_cuts_the_branch():
    net, _ = run_loss("propagate_down: false propagate_down: false")
    assert net.layer_need_backward[names(net).index("fc")] is False
    assert not np.any(to_numpy(net.params["fc"][0].diff))
    net2, _ = run_loss("propagate_down: true propagate_down: false")
    assert net2.bottom_need_backward[names(net2).index("loss")] == [True, False]
    assert np.any(to_numpy(net2.params["fc"][0].diff))


def test_propagate_down_count_must_match_bottoms():
    with pytest.raises(VggtoolError, match="'loss'.*propagate_down has 1"):
        build(LOSS_NET % "propagate_down: false")


def test_layers_not_leading_to_a_loss_get_no_backward(rng):
    text = LOSS_NET % "" + ip("side", "x", 2)
    net = build(text)
    need = dict(zip(names(net), net.layer_need_backward))
    assert need["side"] is False and need["fc"] is True and need["loss"] is True
    assert "side" in net.outputs and "loss" in net.outputs
    net.blobs["x"].data = rng.standard_normal((3, 4))
    net.blobs["label"].data = np.array([1, 1, 0])
    net.forward_backward()
    assert not np.any(to_numpy(net.params["side"][0].diff))
    # Input data needs no gradient without force_backward.
    assert net.bottom_need_backward[names(net).index("fc")] == [False]


def test_force_backward_gives_input_gradients(rng):
    body = inputs(x=(2, 3)) + ip("fc", "x", 4) + 'layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }'
    plain = build(body)
    assert not any(plain.layer_need_backward)
    net = build("force_backward: true\n" + body)
    assert all(net.layer_need_backward)
    x = rng.standard_normal((2, 3))
    prob = to_numpy(net.forward(x=x)["prob"])
    dtop = rng.standard_normal((2, 4))
    dx = to_numpy(net.backward(prob=dtop)["x"])
    w = to_numpy(net.params["fc"][0].data)
    dfc = prob * (dtop - (dtop * prob).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(dx, dfc @ w, rtol=1e-10)


# -- shared parameters --------------------------------------------------------------------------------
def shared_net(n2=4, in2=3, mode="", lr2=""):
    spec = 'param {{ name: "w" {m} {lr} }} param {{ name: "b" {m} }}'
    return (inputs(x1=(2, 3), x2=(2, in2))
            + ip("ip1", "x1", 4, spec.format(m="", lr="") + " loss_weight: 1")
            + ip("ip2", "x2", n2, spec.format(m=mode, lr=lr2) + " loss_weight: 1"))


def test_shared_parameters_accumulate_both_uses(rng):
    net = build(shared_net())
    assert net.params["ip1"][0] is net.params["ip2"][0]
    assert [(p.layer, p.index) for p in net.learnable_params] == [("ip1", 0), ("ip1", 1)]
    x1, x2 = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    net.forward(x1=x1, x2=x2)
    net.backward()
    expected = np.ones((4, 1)) * (x1.sum(axis=0) + x2.sum(axis=0))
    np.testing.assert_allclose(to_numpy(net.params["ip1"][0].diff), expected)
    np.testing.assert_allclose(to_numpy(net.params["ip1"][1].diff), 4 * np.ones(4))


def test_shared_parameter_shape_mismatch_strict_and_permissive(rng):
    with pytest.raises(VggtoolError, match="'ip2'.*shared parameter 'w'.*'ip1'"):
        build(shared_net(n2=5))
    # Same count (4x6 vs 3x8 weights), different shape: STRICT refuses, PERMISSIVE shares the storage.
    text = (inputs(x1=(2, 6), x2=(2, 8)) + ip("ip1", "x1", 4, 'param { name: "w" } loss_weight: 1')
            + ip("ip2", "x2", 3, 'param { name: "w" %s } loss_weight: 1'))
    with pytest.raises(VggtoolError, match="shared parameter 'w' has shape 3 8"):
        build(text % "")
    net = build(text % "share_mode: PERMISSIVE")
    net.params["ip1"][0].data = np.arange(24.0).reshape(4, 6)
    np.testing.assert_array_equal(to_numpy(net.params["ip2"][0].data), np.arange(24.0).reshape(3, 8))
    x1, x2 = rng.standard_normal((2, 6)), rng.standard_normal((2, 8))
    net.forward(x1=x1, x2=x2)
    net.backward()
    expected = (np.ones((4, 1)) * x1.sum(axis=0)).reshape(-1) + (np.ones((3, 1)) * x2.sum(axis=0)).reshape(-1)
    np.testing.assert_allclose(to_numpy(net.params["ip1"][0].diff).reshape(-1), expected)


def test_shared_parameter_lr_mult_mismatch():
    with pytest.raises(VggtoolError, match="shared parameter 'w' has lr_mult 2"):
        build(shared_net(lr2="lr_mult: 2"))


def test_lr_and_decay_mult_exposed(rng):
    text = inputs(x=(2, 3)) + ip("a", "x", 4, "param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }") \
        + ip("b", "a", 2, "param { lr_mult: 0 } param { lr_mult: 0 } loss_weight: 1")
    net = build(text)
    got = [(p.layer, p.index, p.lr_mult, p.decay_mult) for p in net.learnable_params]
    assert got == [("a", 0, 1, 1), ("a", 1, 2, 0), ("b", 0, 0, 1), ("b", 1, 0, 1)]
    assert net.learnable_params[0].blob is net.params["a"][0]
    net.blobs["x"].data = rng.standard_normal((2, 3))
    net.forward_backward()
    assert np.any(to_numpy(net.params["a"][0].diff))
    assert not np.any(to_numpy(net.params["b"][0].diff))  # lr_mult 0: frozen, no gradient computed


def test_too_many_param_specs():
    with pytest.raises(VggtoolError, match="'a'.*3 param"):
        build(inputs(x=(2, 3)) + ip("a", "x", 4, "param {} param {} param {}"))


# -- structural errors ---------------------------------------------------------------------------------
def test_duplicate_layer_names():
    with pytest.raises(VggtoolError, match="two layers are named 'r'"):
        build(inputs(x=(1, 2)) + 'layer { name: "r" type: "ReLU" bottom: "x" top: "y" }\n'
              'layer { name: "r" type: "ReLU" bottom: "x" top: "z" }')


def test_top_produced_twice():
    with pytest.raises(VggtoolError, match="'r2'.*top blob 'y' is produced by more than one layer"):
        build(inputs(x=(1, 2)) + 'layer { name: "r1" type: "ReLU" bottom: "x" top: "y" }\n'
              'layer { name: "r2" type: "ReLU" bottom: "x" top: "y" }')


def test_undefined_bottom_names_layer_and_blob():
    with pytest.raises(VggtoolError, match="layer 'r' .*unknown bottom blob 'nope'"):
        build(inputs(x=(1, 2)) + 'layer { name: "r" type: "ReLU" bottom: "nope" top: "y" }')


def test_unknown_layer_type_lists_known_types():
    with pytest.raises(VggtoolError) as e:
        build(inputs(x=(1, 2)) + 'layer { name: "w" type: "Warp" bottom: "x" top: "y" }')
    msg = str(e.value)
    assert "'w'" in msg and "'Warp'" in msg and "known types" in msg
    for t in ("Convolution", "InnerProduct", "ReLU", "SoftmaxWithLoss"):
        assert t in msg


def test_python_layer_refused():
    text = inputs(x=(1, 2)) + 'layer { name: "py" type: "Python" bottom: "x" top: "y" python_param { module: "os" layer: "system" } }'
    with pytest.raises(VggtoolError, match="'py'.*Python.*refused"):
        build(text)


def test_wrong_bottom_count_names_layer():
    with pytest.raises(VggtoolError, match="layer 'fc' \\(InnerProduct\\)"):
        build(inputs(x=(1, 2), y=(1, 2)) + 'layer { name: "fc" type: "InnerProduct" bottom: "x" bottom: "y" top: "z" '
              'inner_product_param { num_output: 1 } }')


def test_propagate_down_false_below_a_learning_layer(rng):
    # fc2 learns but does not pass gradients to "fc": fc gets no backward (Caffe's blobs_skip_backp).
    text = inputs(x=(2, 3)) + ip("fc", "x", 4) + ip("fc2", "fc", 2, "propagate_down: false loss_weight: 1")
    net = build(text)
    need = dict(zip(names(net), net.layer_need_backward))
    assert need == {"input": False, "fc": False, "fc2": True}
    net.blobs["x"].data = rng.standard_normal((2, 3))
    net.blobs["fc"].diff = np.ones((2, 4))  # stale values must not reach fc's parameters
    net.forward_backward()
    assert np.any(to_numpy(net.params["fc2"][0].diff))
    assert not np.any(to_numpy(net.params["fc"][0].diff))


def test_partial_passes_and_nonfinite_detection(rng):
    net = build(inputs(x=(2, 3)) + ip("a", "x", 4) + ip("b", "a", 2, "loss_weight: 1"))
    x = rng.standard_normal((2, 3))
    out = net.forward(x=x, end="a")
    assert list(out) == ["a"] and not net.blobs["b"].data.any()
    net.forward(start="b")
    w, bias = (to_numpy(p.data) for p in net.params["b"])
    np.testing.assert_allclose(to_numpy(net.blobs["b"].data), to_numpy(net.blobs["a"].data) @ w.T + bias)
    assert net.first_nonfinite_layer() is None
    net.params["b"][0].data[0, 0] = np.inf
    net.forward()
    assert net.first_nonfinite_layer() == "b"
    with pytest.raises(VggtoolError, match="no layer named 'c'"):
        net.forward(end="c")


def test_building_with_a_log_writes_caffes_setup_lines():
    import io

    from vggtool.io.prototxt import parse_net_text
    from vggtool.solvers.glog import GLog

    text = """
layer { name: "data" type: "Input" top: "data" top: "label" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 4 } }
layer { name: "relu" type: "ReLU" bottom: "ip" top: "ip" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" loss_weight: 2 }
"""
    stream = io.StringIO()
    log = GLog(stream=False)
    log.line = lambda where, message, severity="I": stream.write(f"{where}] {message}\n")
    Net(parse_net_text(text), phase="TRAIN", log=log)
    lines = stream.getvalue().splitlines()
    assert "net.cpp:86] Creating Layer data" in lines
    assert "net.cpp:131] Top shape: 2 3 (6)" in lines and "net.cpp:131] Top shape: 2 (2)" in lines
    assert "net.cpp:131] Top shape: 2 4 (8)" in lines
    # memory as Caffe counts it: float32 bytes of every top, in-place tops again: (6 + 2) + 8 + 8 + 1
    memory = [int(l.rsplit(" ", 1)[1]) for l in lines if "Memory required for data" in l]
    assert memory == [32, 64, 96, 100]
    assert "net.cpp:134]     with loss weight 2" in lines
    assert lines[-1] == "net.cpp:257] Network initialization done."
