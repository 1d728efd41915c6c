"""Bounded fuzzing of the loaders: mutated prototxt, .caffemodel, .solverstate, .binaryproto and Datum bytes
(fixed seed) in one subprocess (tests/fuzz_loaders.py). Nothing but VggtoolError may escape: no
MemoryError, no raw IndexError/KeyError/TypeError/ValueError/DecodeError, no signal, no hang."""
import collections
import os
import subprocess
import sys

from repo_paths import TESTS as HERE  # noqa: E402 - fuzz_loaders.py is beside the shared helpers
SEED = 20140904  # the VGG paper's arXiv date
PER_KIND = 300  # x 5 kinds = 1,500 inputs


def test_mutated_inputs_raise_only_vggtool_errors(tmp_path):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", VGGTOOL_DATA_THREADS="1")
    try:
        proc = subprocess.run([sys.executable, os.path.join(HERE, "fuzz_loaders.py"), str(tmp_path), str(SEED),
                               str(PER_KIND)], capture_output=True, text=True, timeout=240, env=env)
    except subprocess.TimeoutExpired as e:
        done = (e.stdout or b"").decode(errors="replace").strip().splitlines()
        raise AssertionError(f"the fuzz driver hung after {len(done)} inputs; the last answered: "
                             f"{done[-1] if done else '-'}") from None
    lines = proc.stdout.strip().splitlines()
    last = lines[-1] if lines else ""
    assert proc.returncode == 0, f"driver exit {proc.returncode} (negative: a signal) after {last!r}\n" \
                                 f"{proc.stderr[-3000:]}"
    assert last == f"DONE {5 * PER_KIND}", last
    results = [line.split(" ", 4) for line in lines[:-1]]
    assert len(results) == 5 * PER_KIND
    escapes = [line for line, r in zip(lines, results) if r[3] not in ("OK", "VggtoolError")]
    assert not escapes, "\n".join(escapes[:20]) + "\n" + proc.stderr[-3000:]
    # The fuzzing reaches past the parsers: every kind has inputs that load and inputs that are refused.
    outcomes = collections.Counter((r[0], r[3]) for r in results)
    for kind in ("prototxt", "caffemodel", "solverstate", "binaryproto", "datum"):
        assert outcomes[(kind, "OK")] > 0 and outcomes[(kind, "VggtoolError")] > 0, outcomes
    assert {r[2] for r in results} == {"bit_flips", "truncation", "insertion", "field_change"}
