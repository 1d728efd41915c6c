"""vggtool.config: one settings object, environment variables as its defaults, overridable per Net and per
command; importing vggtool changes no environment."""
import os
import subprocess
import sys

import numpy as np
import pytest

from vggtool import config
from vggtool.cli import main
from vggtool.errors import VggtoolError
from vggtool.layers.conv.profile import NO_PROFILE, profiling
from vggtool.net import Net
from vggtool.io.prototxt import parse_net_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_environment_gives_the_defaults():
    env = {"VGGTOOL_CONV_ALGO": "winograd", "VGGTOOL_CONV_CACHE_MB": "12", "VGGTOOL_DATA_THREADS": "3",
           "VGGTOOL_NUM_THREADS": "2", "VGGTOOL_NO_CKERNELS": "1", "VGGTOOL_NO_CBLAS": "yes"}
    s = config.Settings.from_environ(env)
    assert (s.conv_algorithm, s.conv_cache_mb, s.data_threads, s.num_threads, s.c_kernels, s.cblas) == \
        ("winograd2", 12, 3, 2, False, False)  # 'winograd' is the older spelling of winograd2
    assert s.conv_cache_bytes == 12 << 20
    d = config.Settings.from_environ({"VGGTOOL_NO_CKERNELS": "0", "VGGTOOL_CONV_ALGO": ""})
    assert d.c_kernels and d.conv_algorithm == "auto"  # 0 keeps them on; empty means unset
    assert config.Settings.from_environ({}) == config.Settings()
    assert config.Settings().fuse_relu and not config.Settings.from_environ({"VGGTOOL_FUSE_RELU": "off"}).fuse_relu


@pytest.mark.parametrize("var, value, message", [
    ("VGGTOOL_NUM_THREADS", "many", "VGGTOOL_NUM_THREADS='many' is not an integer"),
    ("VGGTOOL_NUM_THREADS", "0", "VGGTOOL_NUM_THREADS='0' must be at least 1"),
    ("VGGTOOL_DATA_THREADS", "x", "VGGTOOL_DATA_THREADS='x' is not an integer"),
    ("VGGTOOL_CONV_CACHE_MB", "-1", "VGGTOOL_CONV_CACHE_MB='-1' must be at least 0"),
    ("VGGTOOL_NO_CKERNELS", "maybe", "VGGTOOL_NO_CKERNELS='maybe' is not a boolean"),
    ("VGGTOOL_NO_CBLAS", "2", "VGGTOOL_NO_CBLAS='2' is not a boolean"),
    ("VGGTOOL_FUSE_RELU", "sometimes", "VGGTOOL_FUSE_RELU='sometimes' is not a boolean"),
    ("VGGTOOL_CONV_ALGO", "fft", "VGGTOOL_CONV_ALGO: unknown convolution algorithm 'fft'"),
])
def test_bad_environment_values_name_the_variable(var, value, message):
    with pytest.raises(VggtoolError, match="^" + message.replace("(", r"\(")):
        config.Settings.from_environ({var: value})


def test_replace_validates_and_rejects_unknown_keys():
    s = config.Settings()
    assert s.replace(num_threads="4", c_kernels="false").num_threads == 4
    with pytest.raises(VggtoolError, match="unknown setting 'threads'"):
        s.replace(threads=2)
    with pytest.raises(VggtoolError, match="data_threads='none' is not an integer"):
        s.replace(data_threads="none")
    assert config.parse_assignments(["conv-algorithm=im2col", "num_threads=1"]) == \
        {"conv_algorithm": "im2col", "num_threads": "1"}
    with pytest.raises(VggtoolError, match="expected KEY=VALUE"):
        config.parse_assignments(["im2col"])


def test_override_is_scoped():
    before = config.defaults()
    with config.override(conv_algorithm="shifted") as inside:
        assert config.defaults() is inside and inside.conv_algorithm == "shifted"
    assert config.defaults() is before


NET = """
layer { name: "data" type: "Input" top: "x" input_param { shape { dim: 1 dim: 8 dim: 48 dim: 48 } } }
layer { name: "c1" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "c2" type: "Convolution" bottom: "y" top: "z" convolution_param { num_output: 8 kernel_size: 3 pad: 1
        vggtool_algorithm: "im2col" } }
"""


def test_each_net_has_its_own_settings():
    param = parse_net_text(NET, "<net>")
    a = Net(param, phase="TRAIN", settings=config.Settings(conv_algorithm="shifted"))
    b = Net(param, phase="TRAIN", settings=config.Settings(conv_algorithm="im2col"))
    assert a.layer_dict["c1"].chosen_algorithm() == "shifted"
    assert b.layer_dict["c1"].chosen_algorithm() == "im2col"
    assert a.layer_dict["c2"].chosen_algorithm() == "im2col"  # the prototxt field wins
    assert Net(param, phase="TEST").settings is config.defaults()
    cudnn = parse_net_text(NET.replace("pad: 1 }", "pad: 1 engine: CUDNN }", 1), "<net>")
    assert Net(cudnn, settings=config.Settings(conv_algorithm="shifted")).layer_dict["c1"].chosen_algorithm() \
        == "shifted"  # Caffe's engine field names Caffe's back ends: accepted, no effect


def test_kept_tiles_are_not_read_as_columns_after_the_algorithm_changes():
    """A TRAIN forward keeps Winograd tiles; if the net's setting then says im2col, backward recomputes
    its columns instead of reading the tiles, and gets im2col's own gradient."""
    param = parse_net_text(NET, "<net>")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 8, 48, 48))
    grads = []
    for first in ("winograd2", "im2col"):
        rng = np.random.default_rng(1)
        net = Net(param, phase="TRAIN", dtype=np.float64, seed=1, settings=config.Settings(conv_algorithm=first))
        net.blobs["x"].data[...] = x
        net.forward()
        assert net.layer_dict["c1"].forward_cache.valid
        net.settings = net.settings.replace(conv_algorithm="im2col")
        layer = net.layer_dict["c1"]
        net.blobs["y"].diff[...] = rng.standard_normal(net.blobs["y"].shape)
        layer.backward([net.blobs["y"]], [False], [net.blobs["x"]])
        grads.append(layer.blobs[0].diff.copy())
    assert np.abs(grads[1]).max() > 0
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-9, atol=1e-9 * np.abs(grads[1]).max())


def test_the_forward_cache_budget_is_net_wide():
    """Each layer keeps 8*9*48*48 float32 columns (648 KiB): a 1 MiB budget holds the first layer's only."""
    param = parse_net_text(NET, "<net>")
    net = Net(param, phase="TRAIN", settings=config.Settings(conv_algorithm="im2col", conv_cache_mb=1))
    assert [net.layer_dict[n].forward_cache.enabled for n in ("c1", "c2")] == [True, False]
    assert net.conv_cache.claimed() == 8 * 9 * 48 * 48 * 4
    roomy = Net(param, phase="TRAIN", settings=config.Settings(conv_algorithm="im2col", conv_cache_mb=2))
    assert [roomy.layer_dict[n].forward_cache.enabled for n in ("c1", "c2")] == [True, True]
    assert "_conv_column_claims" not in vars(net)


def test_profiling_lends_a_profiler_for_the_block():
    net = Net(parse_net_text(NET, "<net>"), phase="TRAIN", settings=config.Settings(conv_algorithm="im2col"))
    net.blobs["x"].data[...] = np.random.default_rng(0).standard_normal(net.blobs["x"].shape)
    with profiling(net) as prof:
        net.forward()
    assert prof.seconds["im2col_gemm"] > 0 and "im2col" in prof.seconds
    assert all(net.layer_dict[n].profiler is NO_PROFILE for n in ("c1", "c2"))


def test_cli_set_overrides_the_environment_for_one_command(tmp_path, capsys, monkeypatch):
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    assert main(["--set", "conv_algorithm=shifted", "time", "--net", str(path), "--iterations", "1"]) == 0
    assert "Convolution algorithms: c1 shifted, c2 im2col" in capsys.readouterr().err
    assert config.defaults().conv_algorithm == config.Settings.from_environ().conv_algorithm  # restored
    assert main(["--set=conv_algorithm=fft", "time", "--net", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "vggtool: error: conv_algorithm: unknown convolution algorithm 'fft'; use one of " \
        "auto, im2col, shifted, winograd2, winograd4 ('winograd' means winograd2)"
    assert main(["--set", "cores=2", "time", "--net", str(path)]) == 1
    assert "unknown setting 'cores'" in capsys.readouterr().err


def test_a_bad_environment_variable_fails_the_command_in_one_line(tmp_path):
    env = dict(os.environ, VGGTOOL_NUM_THREADS="lots", PYTHONPATH=ROOT)
    res = subprocess.run([sys.executable, "-m", "vggtool", "device_query"], env=env, capture_output=True, text=True)
    assert res.returncode == 1
    assert res.stderr.strip() == "vggtool: error: VGGTOOL_NUM_THREADS='lots' is not an integer"


def test_importing_vggtool_changes_no_environment():
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_THREAD_TIMEOUT", "OPENCV_LOG_LEVEL")}
    code = ("import os, sys, vggtool; net = vggtool.Net; "
            "print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'), os.environ.get('OPENCV_LOG_LEVEL')); "
            "import vggtool.cli; print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'))")
    res = subprocess.run([sys.executable, "-c", code], env=dict(env, PYTHONPATH=ROOT), capture_output=True, text=True)
    assert res.stdout.split() == ["None", "None", "4"], res.stderr


def test_the_cli_sets_the_openblas_timeout_before_numpy_loads():
    """OpenBLAS reads OPENBLAS_THREAD_TIMEOUT when NumPy loads it: the CLI must set it before that."""
    code = ("import sys, vggtool.config as c; real = c.apply_process_defaults\n"
            "def spy():\n    print('numpy' in sys.modules); real()\n"
            "c.apply_process_defaults = spy\nimport vggtool.cli, numpy; print(numpy.__name__)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert res.stdout.split() == ["False", "numpy"], res.stderr  # called once, before NumPy was imported
