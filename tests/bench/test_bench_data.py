"""bench/bench_data.py --quick: both pipelines run on the same LMDB, do the same work (their batches are
equal bit for bit) and every thread count gets images/s and CPU time from both, and the ratio line."""
import os
import sys

from repo_paths import REPO  # noqa: E402
sys.path.insert(0, os.path.join(REPO, "bench"))
import bench_data  # noqa: E402


def test_quick_run_measures_both_and_their_ratio(capsys):
    identical, rates, cpus = bench_data.main(["--quick", "--threads", "1,3"])
    out = capsys.readouterr().out
    assert identical and "equals the Data layer's bit for bit: yes" in out
    for who in ("vggtool", "reference"):
        for threads in (1, 3):
            assert len(rates[who, threads]) == 1 and rates[who, threads][0] > 0
            assert cpus[who, threads][0] > 0
    rows = [line.split("|") for line in out.splitlines() if line.strip().startswith(("1 |", "3 |"))]
    assert len(rows) == 4  # images/s and CPU time, each for 1 and 3 threads
    assert all(float(row[3].split()[0]) > 0 for row in rows)  # the ratio column
    assert "load average" in out and "foreign load" in out
