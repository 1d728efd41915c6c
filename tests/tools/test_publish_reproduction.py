"""tools/publish_reproduction.py: a finished run's REPORT.md and plots land in docs/ with rewritten links;
an unfinished run (no results.json) or a missing plot is refused."""
import os
import sys

import pytest

from repo_paths import REPO  # noqa: E402
sys.path.insert(0, os.path.join(REPO, "tools"))
from publish_reproduction import publish  # noqa: E402


def _run(tmp_path, finished=True, plots=("a.png", "b.png")):
    run = tmp_path / "run"
    run.mkdir()
    (run / "REPORT.md").write_text("# R\n\n![curves](a.png)\n\ntext a.png\n\n![depth](b.png)\n", encoding="utf-8")
    for name in plots:
        (run / name).write_bytes(b"\x89PNG" + name.encode())
    if finished:
        (run / "results.json").write_text("{}")
    return run


def test_publish_copies_report_and_plots(tmp_path):
    docs = tmp_path / "docs"
    assert publish(str(_run(tmp_path)), str(docs)) == ["a.png", "b.png"]
    text = (docs / "reproduction.md").read_text(encoding="utf-8")
    assert "![curves](reproduction/a.png)" in text and "![depth](reproduction/b.png)" in text
    assert "text a.png" in text  # only image links are rewritten
    assert (docs / "reproduction" / "b.png").read_bytes() == b"\x89PNGb.png"


def test_publish_refuses_unfinished_run_or_missing_plot(tmp_path):
    with pytest.raises(SystemExit, match="has the run finished"):
        publish(str(_run(tmp_path, finished=False)), str(tmp_path / "docs"))
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(SystemExit, match="b.png: the report links it but it is missing"):
        publish(str(_run(other, plots=("a.png",))), str(tmp_path / "docs2"))


def test_publish_under_another_name_leaves_the_main_page(tmp_path):
    docs = tmp_path / "docs"
    publish(str(_run(tmp_path)), str(docs))
    (tmp_path / "second").mkdir()
    publish(str(_run(tmp_path / "second", plots=("a.png", "b.png"))), str(docs), name="reproduction_rerun")
    text = (docs / "reproduction_rerun.md").read_text(encoding="utf-8")
    assert "![curves](reproduction_rerun/a.png)" in text
    assert (docs / "reproduction_rerun" / "a.png").exists() and (docs / "reproduction.md").exists()
