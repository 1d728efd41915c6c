"""Files a cluster group can read: snapshots, models, databases, score files and binaryprotos get
0666 & ~umask (LMDB files Caffe's 0664 & ~umask, folders 0777 & ~umask), as Caffe's do, and the
temporary files of a killed writer are recognisable and removed by the next writer."""
import os
import stat
import subprocess
import sys

import cv2
import numpy as np
import pytest
from google.protobuf import text_format

from data_prep.cli import main as data_prep
from vggtool import atomic_files
from vggtool.io import prototxt, wire
from vggtool.vgg import evaluate as ev
from vggtool.io.wire import array_to_proto
from vggtool.vgg.extract import save_lmdb
from vggtool.proto import caffe_pb2
from vggtool.solvers import Solver
from vggtool.solvers.glog import GLog

NET = """
layer { name: "d" type: "DummyData" top: "x" top: "y"
  dummy_data_param { shape { dim: 4 dim: 5 } shape { dim: 4 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "s"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "y" top: "loss" }
"""


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def no_temporaries(folder):
    return [n for n in os.listdir(folder) if atomic_files.is_temporary(n)] == []


def test_written_files_follow_the_umask(tmp_path, umask):
    file_mode, lmdb_mode, dir_mode = 0o666 & ~umask, 0o664 & ~umask, 0o777 & ~umask
    assert atomic_files.current_umask() == umask
    # snapshot pair of a training run
    param = text_format.Merge(f'base_lr: 0.1 lr_policy: "fixed" max_iter: 2 snapshot: 2 random_seed: 1 '
                              f'snapshot_after_train: false snapshot_prefix: "{tmp_path}/snap"',
                              caffe_pb2.SolverParameter())
    param.net_param.CopyFrom(prototxt.parse_net_text(NET))
    Solver(param, log=GLog(stream=False)).solve()
    for ext in (".caffemodel", ".solverstate"):
        assert mode(tmp_path / f"snap_iter_2{ext}") == file_mode, ext
    # a score file, a binaryproto, a text prototxt
    ev.save_scores(str(tmp_path / "scores.npz"), np.eye(3), [0, 1, 2], ["a", "b", "c"])
    wire.write_binary_proto(str(tmp_path / "mean.binaryproto"), array_to_proto(np.ones((1, 3, 2, 2))))
    prototxt.write_text_proto(str(tmp_path / "solver.prototxt"), param)
    for name in ("scores.npz", "mean.binaryproto", "solver.prototxt"):
        assert mode(tmp_path / name) == file_mode, name
    # pycaffe's HDF5 weights (h5py writes the temporary file by name)
    from vggtool.pycaffe import Net as PycaffeNet
    PycaffeNet(prototxt.parse_net_text(NET), "test").save_hdf5(str(tmp_path / "weights.h5"))
    assert mode(tmp_path / "weights.h5") == file_mode
    # LMDBs: convert_imageset's and extract's, and compute_image_mean's binaryproto of one
    images = tmp_path / "png"
    images.mkdir()
    for i in range(2):
        cv2.imwrite(str(images / f"{i}.png"), np.full((4, 5, 3), 40 * i, np.uint8))
    (tmp_path / "list.txt").write_text("0.png 0\n1.png 1\n")
    assert data_prep(["convert_imageset", str(images), str(tmp_path / "list.txt"), str(tmp_path / "db")]) == 0
    assert data_prep(["compute_image_mean", str(tmp_path / "db"), str(tmp_path / "m.binaryproto")]) == 0
    assert mode(tmp_path / "m.binaryproto") == file_mode
    save_lmdb(str(tmp_path / "features"), np.ones((2, 3)), [0, 1], ["a", "b"])
    for db in ("db", "features"):
        assert mode(tmp_path / db) == dir_mode, db
        for name in ("data.mdb", "lock.mdb"):
            assert mode(tmp_path / db / name) == lmdb_mode, (db, name)
    assert no_temporaries(tmp_path)


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_are_recognised_and_removed(tmp_path):
    target = str(tmp_path / "snap_iter_4.caffemodel")
    start = atomic_files.temporary_prefix(target)
    assert start.startswith(".tmp-snap_iter_4.caffemodel~") and start.endswith(f"~{os.getpid()}~")
    dead = start.replace(f"~{os.getpid()}~", f"~{dead_pid()}~")
    other_host = ".tmp-snap_iter_4.caffemodel~some-other-host~1~abc"
    for name in (dead + "abc", other_host, start + "mine", "snap_iter_2.caffemodel"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / (dead + "db")).mkdir()  # a killed conversion's LMDB folder
    (tmp_path / (dead + "db") / "data.mdb").write_bytes(b"x")
    removed = atomic_files.remove_stale_temporaries(str(tmp_path / "snap"))
    assert sorted(os.path.basename(p) for p in removed) == sorted([dead + "abc", dead + "db"])
    left = sorted(os.listdir(tmp_path))
    assert left == sorted([other_host, start + "mine", "snap_iter_2.caffemodel"])
    # a temporary never looks like a snapshot to a glob for the final names
    assert sorted(p.name for p in tmp_path.glob("snap_iter_*.caffemodel")) == ["snap_iter_2.caffemodel"]
    # the next training run with this prefix removes what a killed run left
    (tmp_path / (dead + "xyz")).write_bytes(b"x")
    param = text_format.Merge(f'base_lr: 0.1 lr_policy: "fixed" max_iter: 1 snapshot: 1 snapshot_prefix: "{tmp_path}/snap"',
                              caffe_pb2.SolverParameter())
    param.net_param.CopyFrom(prototxt.parse_net_text(NET))
    Solver(param, log=GLog(stream=False))
    assert not (tmp_path / (dead + "xyz")).exists() and (tmp_path / other_host).exists()


def test_a_failed_write_leaves_neither_target_nor_temporary(tmp_path):
    def chunks():
        yield b"half"
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        atomic_files.atomic_write_chunks(str(tmp_path / "m.caffemodel"), chunks())
    assert os.listdir(tmp_path) == []
