"""kill -9 at random moments of a training run that snapshots every iteration: only complete files exist
under final names (every .caffemodel and .solverstate parses, each state has its model, of its iteration),
and `vggtool train --snapshot <latest>.solverstate` resumes and finishes with the weights of a run that was
never interrupted."""
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
from google.protobuf import text_format

from vggtool import Net
from vggtool.io import prototxt
from vggtool.atomic_files import is_temporary
from vggtool.proto import caffe_pb2
from vggtool.solvers import Solver
from vggtool.solvers.glog import GLog
from vggtool.solvers.snapshot import history_arrays, read_state

from repo_paths import REPO  # noqa: E402
ROOT = REPO
# Wide enough that a snapshot takes a while to write (so kills land inside writes), small enough to be quick.
NET = """
name: "killed"
layer { name: "d" type: "DummyData" top: "x" top: "y"
  dummy_data_param { shape { dim: 8 dim: 64 } shape { dim: 8 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 2 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h"
  inner_product_param { num_output: 256 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "h" top: "h" }
layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "s"
  inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "y" top: "loss" }
"""
SOLVER = ('base_lr: 0.01 momentum: 0.9 lr_policy: "fixed" max_iter: 1000000 snapshot: 1 random_seed: 7 '
          'display: 0 snapshot_after_train: true snapshot_prefix: "{prefix}"')
KILLS = 4
SNAPSHOT = re.compile(r"^snap_iter_(\d+)\.(caffemodel|solverstate)$")


def train(args, cwd):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "vggtool", "train", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def snapshots(folder):
    """{iteration: set of extensions} of the files under final snapshot names."""
    found = {}
    for name in os.listdir(folder):
        m = SNAPSHOT.match(name)
        if m:
            found.setdefault(int(m.group(1)), set()).add(m.group(2))
    return found


def check_complete(folder, net_param):
    """Every final name holds a complete, consistent file; returns the newest iteration with a state."""
    found = snapshots(folder)
    assert found, "no snapshot was written before the kill"
    newest = max(found)
    for it, kinds in found.items():
        # the model is written (and renamed) first: a state never exists without its model; a model
        # without its state only for the iteration being written when the process died
        assert "caffemodel" in kinds, f"iteration {it}: a .solverstate without its .caffemodel"
        assert kinds == {"caffemodel", "solverstate"} or it == newest, f"iteration {it}: {kinds}"
    # parse them all (cheap): weights of the net's shapes, a state of its iteration naming its model
    for it, kinds in found.items():
        model = os.path.join(folder, f"snap_iter_{it}.caffemodel")
        param = caffe_pb2.NetParameter()
        param.ParseFromString(open(model, "rb").read())
        assert [len(l.blobs) for l in param.layer if l.blobs] == [2, 2], model
        if "solverstate" in kinds:
            path = os.path.join(folder, f"snap_iter_{it}.solverstate")
            state = read_state(path)
            assert state.iter == it and os.path.basename(state.learned_net) == os.path.basename(model)
            assert len(history_arrays(state, path)) == 4
    # the newest state's model really loads into the net
    latest = max(it for it, kinds in found.items() if "solverstate" in kinds)
    Net(net_param, os.path.join(folder, f"snap_iter_{latest}.caffemodel"), phase="TRAIN")
    return latest


def test_kill_9_leaves_complete_snapshots_and_the_run_resumes(tmp_path):
    prefix = str(tmp_path / "snap")
    param = text_format.Merge(SOLVER.format(prefix=prefix), caffe_pb2.SolverParameter())
    param.net_param.CopyFrom(prototxt.parse_net_text(NET))
    solver_path = str(tmp_path / "solver.prototxt")
    prototxt.write_text_proto(solver_path, param)
    rng = np.random.default_rng(2024)
    resume, latest, temporaries_seen = [], 0, 0
    for kill in range(KILLS):
        proc = train(["--solver", solver_path, *resume], tmp_path)
        start, before = time.monotonic(), latest
        # wait for this run's first complete snapshot, then kill it at a random moment a little later
        while not any(it > before and "solverstate" in k for it, k in snapshots(tmp_path).items()):
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            assert time.monotonic() - start < 60, "no snapshot within 60 s"
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL
        temporaries_seen += sum(is_temporary(n) for n in os.listdir(tmp_path))
        latest = check_complete(tmp_path, param.net_param)
        assert latest > before  # each resumed run got further
        resume = ["--snapshot", str(tmp_path / f"snap_iter_{latest}.solverstate")]
    # the last resume runs to the end; it removed the killed runs' temporaries when it started
    final = latest + 5
    proc = train(["--solver", solver_path, *resume, "--iterations", str(final)], tmp_path)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 0, err[-2000:]
    assert f"Snapshotting to binary proto file {prefix}_iter_{final}.caffemodel" in err
    assert not [n for n in os.listdir(tmp_path) if is_temporary(n)]
    check_complete(tmp_path, param.net_param)
    # resuming is exact: the same weights as one uninterrupted run of `final` iterations
    param.max_iter, param.snapshot, param.snapshot_after_train = final, 0, False
    straight = Solver(param, log=GLog(stream=False))
    straight.step(final)
    resumed = Net(param.net_param, f"{prefix}_iter_{final}.caffemodel", phase="TRAIN")
    for a, b in zip(straight.net.learnable_params, resumed.learnable_params):
        np.testing.assert_array_equal(np.asarray(a.blob.data), np.asarray(b.blob.data))
    print(f"{KILLS} kills; temporaries under way at a kill: {temporaries_seen}")


SLOW_WRITER = """
import sys, time
from vggtool.atomic_files import atomic_write_chunks

def chunks():
    for i in range(200):
        yield bytes([i]) * 4096
        if i == 10:
            print("half written", flush=True)
            time.sleep(60)  # killed here, in the middle of the write
atomic_write_chunks(sys.argv[1], chunks())
"""


def test_kill_9_inside_a_write_leaves_the_old_file(tmp_path):
    """Deterministically killed half way through writing a file: the old file is untouched under the final
    name, the half-written one is a recognisable temporary, and the next writer there removes it."""
    from vggtool.atomic_files import remove_stale_temporaries

    target = tmp_path / "model.caffemodel"
    target.write_bytes(b"the complete old model")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(target)], env=env, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline() == "half written\n"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert target.read_bytes() == b"the complete old model"
    left = [n for n in os.listdir(tmp_path) if n != target.name]
    assert len(left) == 1 and is_temporary(left[0]) and f"~{proc.pid}~" in left[0]
    assert 0 < os.path.getsize(tmp_path / left[0]) < 200 * 4096  # the part written before the kill
    assert remove_stale_temporaries(str(target)) == [str(tmp_path / left[0])]
    assert os.listdir(tmp_path) == [target.name]
