"""`vggtool time`: per-layer timing output, and clear one-line errors for bad input."""
import os
import re
import subprocess
import sys

import pytest

from vggtool.cli import main

from repo_paths import REPO  # noqa: E402
ROOT = REPO

INPUT_NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""

DATA_NET = """
layer { name: "data" type: "DummyData" top: "data" top: "label"
        dummy_data_param { shape { dim: 3 dim: 6 } shape { dim: 3 }
                           data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


GLOG = re.compile(r"^I\d{4} [\d:.]+ +\d+ (caffe\.cpp:\d+|net\.cpp:\d+|time\.py)\] ", re.M)


def glog_messages(err):
    """The messages of `caffe time`'s glog lines (every line must be one)."""
    lines = [l for l in err.splitlines() if l.strip()]
    assert all(GLOG.match(l) for l in lines), [l for l in lines if not GLOG.match(l)][:3]
    return "\n".join(GLOG.sub("", l) for l in lines)


def write(tmp_path, text, name="net.prototxt"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_time_lists_every_layer(tmp_path, capsys):
    rc = main(["time", "--net", write(tmp_path, INPUT_NET), "--iterations", "3"])
    out = glog_messages(capsys.readouterr().err)
    assert rc == 0
    for layer in ("data", "conv1", "relu1", "pool1", "fc", "prob"):
        assert f"{layer:>10}\tforward: " in out
        assert f"{layer:>10}\tbackward: " in out
    assert out.count("forward-backward time:") == 3
    assert "Convolution algorithms: conv1 " in out  # the code each conv layer runs, named
    for line in ("Average Forward pass: ", "Average Backward pass: ", "Average Forward-Backward: ", "Total Time: "):
        assert line in out
    values = {l.split(":")[0]: float(l.split(": ")[1].split()[0]) for l in out.splitlines()
              if l.startswith(("Average F", "Average B", "Total"))}
    assert values["Total Time"] == pytest.approx(3 * values["Average Forward-Backward"], rel=1e-3)
    assert values["Average Forward pass"] + values["Average Backward pass"] <= values["Average Forward-Backward"] * 1.01


def test_time_runs_data_layers_and_reports_loss(tmp_path, capsys):
    # Caffe's -model and -iterations spellings.
    rc = main(["time", "-model", write(tmp_path, DATA_NET), "-iterations=2", "--phase", "TRAIN"])
    out = glog_messages(capsys.readouterr().err)
    assert rc == 0
    loss_line = next(l for l in out.splitlines() if l.startswith("Initial loss: "))
    assert float(loss_line.split(": ")[1]) > 0  # softmax loss of 4 classes with random scores
    assert "      loss\tbackward: " in out


BAD_NETS = {
    "malformed": ('layer { name: "data" type: "Input" top: "data"\n  input_param { shape { dim: 1 } }\n  bogus_field: 3 }\n',
                  ["net.prototxt:3:", "bogus_field"]),
    "unknown_type": ('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }\n'
                     'layer { name: "mystery" type: "Frobnicate" bottom: "data" top: "y" }\n',
                     ["mystery", "Frobnicate", "known types", "Convolution"]),
    "undefined_bottom": ('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }\n'
                         'layer { name: "fc" type: "InnerProduct" bottom: "dat" top: "y" '
                         'inner_product_param { num_output: 2 } }\n', ["'fc'", "'dat'"]),
}


@pytest.mark.parametrize("case", list(BAD_NETS))
def test_time_bad_net_one_clear_error(tmp_path, case):
    text, needles = BAD_NETS[case]
    path = write(tmp_path, text)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "vggtool", "time", "--net", path], capture_output=True,
                          text=True, cwd=ROOT, env=env)
    assert proc.returncode == 1
    err = "\n".join(l for l in proc.stderr.strip().splitlines() if not GLOG.match(l))  # glog lines aside
    assert "Traceback" not in proc.stderr
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err


def test_time_missing_file(tmp_path, capsys):
    missing = str(tmp_path / "nope.prototxt")
    assert main(["time", "--net", missing]) == 1
    err = "\n".join(l for l in capsys.readouterr().err.strip().splitlines() if not GLOG.match(l))
    assert len(err.splitlines()) == 1 and "not found" in err and missing in err


def test_time_rejects_zero_iterations(tmp_path, capsys):
    assert main(["time", "--net", write(tmp_path, INPUT_NET), "--iterations", "0"]) == 1
    assert "--iterations" in capsys.readouterr().err


def test_time_gpu_without_gpu(tmp_path, capsys):
    from vggtool import backend

    if backend.gpu_count():
        pytest.skip("a GPU is visible here")
    assert main(["time", "--net", write(tmp_path, INPUT_NET), "--gpu", "0"]) == 1
    err = "\n".join(l for l in capsys.readouterr().err.strip().splitlines() if not GLOG.match(l))
    assert len(err.splitlines()) == 1 and "vggtool time: error:" in err


@pytest.mark.gpu
def test_time_on_gpu(tmp_path, capsys):
    assert main(["time", "--net", write(tmp_path, INPUT_NET), "--gpu", "0", "--iterations", "2"]) == 0
    out = glog_messages(capsys.readouterr().err)
    assert "Use GPU with device ID 0" in out and f"{'conv1':>10}\tbackward: " in out


def test_time_logs_the_net_setup_like_caffe(tmp_path, capsys):
    assert main(["time", "--net", write(tmp_path, INPUT_NET), "--iterations", "1"]) == 0
    out = glog_messages(capsys.readouterr().err)
    assert "Setting up conv1" in out and "Top shape: 2 3 8 8 (384)" in out
    assert "Memory required for data: " in out and "Network initialization done." in out


def test_time_memory_prints_the_report_on_stdout(tmp_path, capsys):
    assert main(["time", "--net", write(tmp_path, INPUT_NET), "--iterations", "1", "--memory"]) == 0
    captured = capsys.readouterr()
    glog_messages(captured.err)  # stderr keeps Caffe's lines only
    lines = captured.out.splitlines()
    assert lines[0].startswith("Memory of net 'tiny' after the benchmark")
    assert lines[1].split()[:3] == ["kind", "name", "shape"]
    table = [l for l in lines[2:] if not l.startswith(("total", "Caffe's", "Pool ("))]
    rows = [l.split() for l in table]
    # data 2x3x8x8 float32, no diff (nothing propagates to the input), its own buffer (an input)
    assert ["blob", "data", "2", "3", "8", "8", "1,536", "-"] in rows
    # `time` shares memory as a training net: conv1's data lives in the pool until relu1 and pool1 have
    # read it (relu1 keeps a mask for its backward); its diff is its own (no loss: nothing writes it first)
    conv1 = next(r for r in rows if r[:2] == ["blob", "conv1"])
    assert conv1[2:8] == ["2", "4", "8", "8", "0", "2,048"] and conv1[8:10] == ["data", "pool:"]
    assert conv1[-3:] == ["in", "place:", "relu1"]
    assert ["param", "fc", "param", "0", "5", "64", "1,280", "1,280"] in rows
    cache = next(r for r in rows if r[0] == "cache" and r[1] == "conv1")  # TRAIN: conv1 keeps its forward data
    assert cache[4] == "0" and cache[6] == "pool:"
    assert any(r[:2] == ["layer", "relu1.positive"] for r in rows)
    pool = next(r for r in rows if r[0] == "pool")
    number = lambda s: 0 if s.strip() == "-" else int(s.replace(",", ""))
    # each row counts the bytes it owns (0 where it lives in the pool or views another row): they add up
    owned = [number(l[58:72]) + number(l[73:87]) for l in table]
    all_line = next(l for l in lines if l.startswith("total     all "))
    assert int(all_line.split()[2].replace(",", "")) == sum(owned) > number(pool[4]) > 0
    assert next(l for l in lines if l.startswith("Pool (")).count("arena") == 1
    assert lines[-1].endswith("6,224 (6.1 KiB)")
