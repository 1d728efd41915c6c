"""The one comma-list parser behind --scales, --cls-scales, --c-grid and --mean-value."""
import numpy as np
import pytest

from vggtool.vgg import evaluate as ev
from vggtool.data.mean import load_mean
from vggtool.vgg import svm
from vggtool.cli import main
from vggtool.errors import VggtoolError
from vggtool.listargs import parse_list


def test_values_and_accepted_forms():
    assert parse_list("256,384,512", "--scales") == [256, 384, 512]
    assert parse_list(" 256 , 384,", "--scales") == [256, 384]  # spaces and a trailing comma
    assert parse_list(384, "--scales") == [384]
    assert parse_list("0.01,1e2", "--c-grid", float) == [0.01, 100.0]
    assert parse_list("-1.5,0,2", "--mean-value", float, positive=False) == [-1.5, 0.0, 2.0]
    assert all(type(v) is int for v in parse_list("1,2", "--scales"))


@pytest.mark.parametrize("text, kind, bad", [
    ("256,abc", int, "'abc' is not an integer"),
    ("256,3.5", int, "'3.5' is not an integer"),
    ("256,0", int, "0 is not positive"),
    ("1,-2", float, "-2 is not positive"),
    ("1,nan", float, "'nan' is not a finite number"),
    ("1,inf", float, "'inf' is not a finite number"),
    (" , ", int, "expects a comma-separated list of positive integers"),
])
def test_errors_name_the_flag_and_the_bad_value(text, kind, bad):
    with pytest.raises(VggtoolError) as e:
        parse_list(text, "--flag-x", kind)
    msg = str(e.value)
    assert msg.startswith("--flag-x") and bad in msg and f"'{text}'" in msg


def test_the_callers_share_it():
    assert ev.parse_scales("256,384") == [256, 384]
    with pytest.raises(VggtoolError, match=r"^--scales: 0 is not positive .*like 256,384,512"):
        ev.parse_scales("256,0")
    with pytest.raises(VggtoolError, match=r"^--cls-scales: 'x' is not an integer"):
        ev.parse_scales("x", "--cls-scales")
    assert svm.parse_grid(None) == list(svm.DEFAULT_C_GRID)
    assert svm.parse_grid("0.5,2") == [0.5, 2.0]
    with pytest.raises(VggtoolError, match=r"^--c-grid: 'ten' is not a number .*like 0.01,0.1,1,10,100"):
        svm.parse_grid("1,ten")
    np.testing.assert_array_equal(load_mean(mean_value="104, 117,123,"), [104, 117, 123])
    with pytest.raises(VggtoolError, match=r"^--mean-value: 'b' is not a number"):
        load_mean(mean_value="104,b,123")


def test_cli_prints_the_message_and_exits_1(tmp_path, capsys):
    assert main(["svm", "--features", str(tmp_path / "f.npz"), "--c-grid", "1,0"]) == 1
    err = capsys.readouterr().err
    assert "--c-grid: 0 is not positive (in '1,0')" in err and "Traceback" not in err
    net, weights = tmp_path / "n.prototxt", tmp_path / "w.caffemodel"
    net.write_text("")
    weights.write_bytes(b"")
    assert main(["classify", "--net", str(net), "--weights", str(weights), "--scales", "256,big", "x.jpg"]) == 1
    err = capsys.readouterr().err
    assert "--scales: 'big' is not an integer (in '256,big')" in err and "Traceback" not in err
