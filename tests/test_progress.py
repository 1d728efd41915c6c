"""Progress bars only on a terminal; in a pipe, plain lines now and then."""
import io

from vggtool.progress import PlainProgress, progress


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_pipe_gets_about_ten_plain_lines():
    out = io.StringIO()
    items = list(progress(range(100), desc="evaluating", unit="img", stream=out))
    assert items == list(range(100))
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 10  # at 10, 20, ..., 90 and the final 100
    assert lines[0].startswith("evaluating: 10/100 img (") and lines[-1].startswith("evaluating: 100/100 img (")


def test_update_postfix_unknown_total_and_disable():
    out = io.StringIO()
    with progress(total=None, desc="x", stream=out) as bar:
        bar.update(3)
        bar.set_postfix(top1="12.0%")
    assert out.getvalue().startswith("x: 3 it (") and "top1=12.0%" in out.getvalue()
    quiet = io.StringIO()
    list(progress(range(5), stream=quiet, disable=True))
    assert quiet.getvalue() == ""


def test_terminal_gets_tqdm():
    term = FakeTerminal()
    bar = progress(range(3), desc="t", stream=term)
    assert not isinstance(bar, PlainProgress)
    list(bar)
    assert "\r" in term.getvalue()


def test_vggtool_test_in_a_pipe_writes_no_carriage_returns(tmp_path, rng, capsys):
    import cv2

    from eval_helpers import make_model, random_image
    from vggtool.cli import main

    net, weights = make_model(tmp_path)
    lines = []
    for i in range(12):
        cv2.imwrite(str(tmp_path / f"{i}.png"), random_image(rng, 32, 32))
        lines.append(f"{i}.png {i % 3}")
    (tmp_path / "l.txt").write_text("\n".join(lines) + "\n")
    assert main(["test", "--net", net, "--weights", weights, "--data", str(tmp_path / "l.txt"),
                 "--root", str(tmp_path), "--scales", "32"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "evaluating: 12/12 img" in err


def test_no_opencv_warnings_in_the_output(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OPENCV_LOG_LEVEL"}
    missing = str(tmp_path / "missing.png")

    def stderr_of(code):
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stderr

    assert "WARN" in stderr_of(f"import cv2; cv2.imread({missing!r})")  # what OpenCV prints by itself
    # the CLI entry point sets the level (vggtool.config.apply_process_defaults); a library user calls it
    assert "WARN" not in stderr_of(f"import vggtool.cli, cv2; cv2.imread({missing!r})")
    assert "WARN" not in stderr_of("import vggtool; vggtool.config.apply_process_defaults(); "
                                   f"import cv2; cv2.imread({missing!r})")
    assert "WARN" in stderr_of(f"import vggtool, cv2; cv2.imread({missing!r})")  # importing vggtool changes nothing
