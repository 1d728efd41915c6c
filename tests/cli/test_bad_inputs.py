"""A catalogue of bad inputs over every command: each ends with one clear error line naming the file, flag,
layer or blob, exit code 1, no traceback, and no file of the working folder changed or added.

The cases share one folder of small, good and damaged files (built once). Most run in-process through
the CLIs' main(); those that could kill the process (damaged LMDBs: SIGBUS, SIGSEGV) run in a subprocess,
where a signal shows as a negative return code.
"""
import hashlib
import os
import shutil
import stat
import subprocess
import sys

import cv2
import lmdb
import numpy as np
import pytest

from data_prep.cli import main as data_prep_main
from vggtool import Net
from vggtool.io.wire import array_to_proto
from vggtool.cli import main as vggtool_main
from vggtool.data.datum import array_to_datum, record_key
from vggtool.vgg.evaluate import save_scores
from vggtool.proto import caffe_pb2
from vggtool.io.wire import write_binary_proto

DEPLOY = """name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 24 dim: 24 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc8" type: "InnerProduct" bottom: "pool1" top: "fc8"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "prob" type: "Softmax" bottom: "fc8" top: "prob" }
"""

CONV_ONLY = DEPLOY.split('layer { name: "fc8"')[0]

TRAIN_VAL = """name: "small_tv"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { crop_size: 24 mirror: true smallest_side_min: 26 smallest_side_max: 30 MEAN }
  data_param { source: "SOURCE" batch_size: 2 backend: LMDB } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { crop_size: 24 test_smallest_side: 28 MEAN }
  data_param { source: "SOURCE" batch_size: 2 backend: LMDB } }
layer { name: "fc8" type: "InnerProduct" bottom: "data" top: "fc8"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc8" bottom: "label" top: "loss" }
"""

DUMMY_NET = """name: "dummy"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 4 dim: 5 } shape { dim: 4 }
    data_filler { type: "uniform" min: -1 max: 1 } data_filler { type: "constant" value: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""

SOLVER = """net: "{net}"
base_lr: 0.01
lr_policy: "fixed"
display: 1
max_iter: 2
snapshot: 2
snapshot_prefix: "{prefix}"
random_seed: 3
"""


def input_net(*dims):
    shape = " ".join(f"dim: {d}" for d in dims)
    return f'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {shape} }} }} }}\n'


def write_lmdb(path, images):
    env = lmdb.open(str(path), map_size=1 << 24, subdir=True)
    with env.begin(write=True) as txn:
        for i, image in enumerate(images):
            txn.put(record_key(i, f"img{i}.png"), array_to_datum(image, i % 3).SerializeToString())
    env.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The shared folder of good and damaged inputs (built once; every case must leave it unchanged)."""
    w = tmp_path_factory.mktemp("bad_inputs")
    rng = np.random.default_rng(0)
    (w / "img").mkdir()
    names = []
    for i in range(6):
        cv2.imwrite(str(w / "img" / f"{i}.png"), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
        names.append(f"{i}.png {i % 3}")
    (w / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (w / "list.txt").write_text("\n".join(names) + "\n")
    (w / "list_badlabel.txt").write_text("0.png 0\n1.png one\n")
    (w / "list_broken.txt").write_text("0.png 0\nbroken.png 1\n")
    assert data_prep_main(["convert_imageset", str(w / "img"), str(w / "list.txt"), str(w / "db")]) == 0
    # A truncated copy (SIGBUS when its missing pages are read) and one with pages overwritten.
    shutil.copytree(w / "db", w / "trunc_db")
    data = w / "trunc_db" / "data.mdb"
    os.truncate(data, 3 * 4096)
    shutil.copytree(w / "db", w / "over_db")
    with open(w / "over_db" / "data.mdb", "r+b") as f:
        f.seek(2 * 4096)
        f.write(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    write_lmdb(w / "db5", [rng.integers(0, 256, (32, 32, 5), dtype=np.uint8) for _ in range(4)])

    # nets and weights
    (w / "deploy.prototxt").write_text(DEPLOY)
    Net(str(w / "deploy.prototxt"), phase="TEST", seed=1).save(str(w / "deploy.caffemodel"))
    (w / "conv_only.prototxt").write_text(CONV_ONLY)
    (w / "empty.prototxt").write_text("")
    (w / "syntax.prototxt").write_text('layer { name: "data" type: "Input" top: "data" \n')
    (w / "huge.prototxt").write_text(input_net(300000, 300000))
    (w / "axes33.prototxt").write_text(input_net(*[1] * 33))
    (w / "negdim.prototxt").write_text(input_net(1, -3, 4, 4))
    (w / "garbage.caffemodel").write_bytes(np.random.default_rng(2).integers(0, 256, 3000, np.uint8).tobytes())
    (w / "garbage.prototxt").write_bytes((w / "garbage.caffemodel").read_bytes())
    bad_mean = caffe_pb2.BlobProto()
    bad_mean.shape.dim.extend([1, 3, 28, 28])
    bad_mean.data.extend([1.0] * 10)
    write_binary_proto(w / "mean_short.binaryproto", bad_mean)
    write_binary_proto(w / "mean_good.binaryproto", array_to_proto(np.zeros((1, 3, 1, 1), np.float32)))
    for name, source, mean in (("tv", "db", ""), ("tv_trunc", "trunc_db", ""), ("tv_over", "over_db", ""),
                               ("tv_db5", "db5", ""), ("tv_mean", "db", f'mean_file: "{w}/mean_short.binaryproto"')):
        text = TRAIN_VAL.replace("SOURCE", str(w / source)).replace("MEAN", mean)
        (w / f"{name}.prototxt").write_text(text)
    Net(str(w / "tv.prototxt"), phase="TEST", seed=1).save(str(w / "tv.caffemodel"))
    Net(str(w / "tv_db5.prototxt"), phase="TEST", seed=1).save(str(w / "tv_db5.caffemodel"))

    # a short training run: log, snapshot, solver state
    (w / "dummy.prototxt").write_text(DUMMY_NET)
    (w / "solver.prototxt").write_text(SOLVER.format(net=w / "dummy.prototxt", prefix=w / "snap"))
    assert vggtool_main(["train", "--solver", str(w / "solver.prototxt"), "--log", str(w / "train.log")]) == 0
    for name, net in (("empty", "empty"), ("huge", "huge"), ("trunc", "tv_trunc"), ("mean", "tv_mean")):
        (w / f"solver_{name}.prototxt").write_text(SOLVER.format(net=w / f"{net}.prototxt", prefix=w / "x"))
    state = caffe_pb2.SolverState()
    state.ParseFromString((w / "snap_iter_2.solverstate").read_bytes())
    with open(w / "huge.caffemodel", "wb") as f:  # sparse: 3 GiB on paper, nothing on disk
        f.truncate(3 << 30)
    os.mkfifo(w / "fifo.caffemodel")
    for name, target in (("devzero", "/dev/zero"), ("huge", str(w / "huge.caffemodel")),
                         ("fifo", str(w / "fifo.caffemodel"))):
        state.learned_net = target
        (w / f"state_{name}.solverstate").write_bytes(state.SerializeToString())
    good_state = (w / "snap_iter_2.solverstate").read_bytes()
    (w / "state_truncated.solverstate").write_bytes(good_state[:len(good_state) // 2])

    # score and feature files
    save_scores(w / "scores.npz", np.full((4, 3), 1 / 3), np.arange(4) % 3, [f"k{i}" for i in range(4)])
    (w / "not_scores.npz").write_text("just text\n")
    (w / "folder_out").mkdir()
    (w / "a_file").write_text("a file where a folder is expected\n")
    (w / "voc" / "Annotations").mkdir(parents=True)
    (w / "voc" / "Annotations" / "a.xml").write_text("<annotation><object><name>cat</name></object>")
    (w / "voc" / "ids.txt").write_text("a\n")
    return w


def snapshot_tree(root):
    """{relative path: content hash (or type for non-regular files; size + mtime for huge sparse files)}."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            if stat.S_ISDIR(st.st_mode):
                out[rel] = "dir"
            elif not stat.S_ISREG(st.st_mode):
                out[rel] = f"special {stat.S_IFMT(st.st_mode)}"
            elif st.st_size > 1 << 24:
                out[rel] = f"big {st.st_size} {st.st_mtime_ns}"
            else:
                with open(path, "rb") as f:
                    out[rel] = hashlib.sha256(f.read()).hexdigest()
    return out


# (tool, argv with {w} for the folder, expected substring of the error line); "sub:" runs in a subprocess.
V, D = "vggtool", "data_prep"
CASES = [
    # -- vggtool train
    (V, "train --solver {w}/missing.prototxt", "missing.prototxt"),
    (V, "train --solver {w}/solver_empty.prototxt", "has no layers"),
    (V, "train --solver {w}/syntax.prototxt", "syntax.prototxt:"),
    (V, "train --solver {w}/deploy.caffemodel", "deploy.caffemodel"),
    (V, "train --solver {w}/solver_huge.prototxt", "blob 'data': shape 300000 x 300000"),
    (V, "train --solver {w}/solver_mean.prototxt", "mean_short.binaryproto"),
    (V, "train --solver {w}/solver.prototxt --snapshot {w}/state_devzero.solverstate", "/dev/zero"),
    (V, "train --solver {w}/solver.prototxt --snapshot {w}/state_huge.solverstate", "huge.caffemodel"),
    (V, "train --solver {w}/solver.prototxt --snapshot {w}/state_fifo.solverstate", "fifo.caffemodel"),
    (V, "train --solver {w}/solver.prototxt --snapshot {w}/state_truncated.solverstate", "state_truncated"),
    (V, "train --solver {w}/solver.prototxt --weights {w}/garbage.caffemodel", "garbage.caffemodel"),
    (V, "train --solver {w}/solver.prototxt --snapshot {w}/missing.solverstate", "missing.solverstate"),
    (V, "train --solver {w}/solver.prototxt --iterations -1", "--iterations"),
    (V, "train --solver {w}/solver.prototxt --devices cpu:0", "--devices"),
    (V, "train --solver {w}/solver.prototxt --gpu x", "--gpu"),
    ("sub:" + V, "train --solver {w}/solver_trunc.prototxt", "trunc_db"),
    # -- vggtool test
    (V, "test --net {w}/empty.prototxt --weights {w}/deploy.caffemodel", "has no layers"),
    (V, "test --net {w}/deploy.prototxt --weights {w}/missing.caffemodel", "--weights"),
    (V, "test --net {w}/deploy.prototxt --weights {w}/garbage.caffemodel --data {w}/db", "garbage.caffemodel"),
    (V, "test --net {w}/deploy.prototxt --weights /dev/zero --data {w}/db", "/dev/zero"),
    (V, "test --net {w}/garbage.prototxt --weights {w}/deploy.caffemodel --data {w}/db", "garbage.prototxt"),
    (V, "test --net {w}/huge.prototxt --weights {w}/deploy.caffemodel", "layer 'data' (Input)"),
    (V, "test --net {w}/tv_mean.prototxt --weights {w}/tv.caffemodel", "mean_short.binaryproto"),
    (V, "test --net {w}/tv_db5.prototxt --weights {w}/tv_db5.caffemodel --iterations 1", "5 channels"),
    (V, "test --net {w}/deploy.prototxt --weights {w}/deploy.caffemodel --data {w}/db --mean-file "
        "{w}/mean_short.binaryproto", "mean_short.binaryproto"),
    (V, "test --net {w}/deploy.prototxt --weights {w}/deploy.caffemodel --data {w}/nowhere", "--data"),
    (V, "test --net {w}/deploy.prototxt --weights {w}/deploy.caffemodel --data {w}/db --out {w}/no/s.npz", "--out"),
    (V, "test --net {w}/deploy.prototxt --weights {w}/deploy.caffemodel --data {w}/db --out {w}/folder_out",
     "--out"),
    (V, "test --net {w}/deploy.prototxt --weights {w}/deploy.caffemodel --data {w}/db --scales 0", "--scales"),
    (V, "test --net {w}/tv.prototxt --weights {w}/tv.caffemodel --iterations 0", "--iterations"),
    ("sub:" + V, "test --net {w}/tv_trunc.prototxt --weights {w}/tv.caffemodel", "trunc_db"),
    ("sub:" + V, "test --net {w}/tv_over.prototxt --weights {w}/tv.caffemodel", "over_db"),
    ("sub:" + V, "test --net {w}/deploy.prototxt --weights {w}/deploy.caffemodel --data {w}/trunc_db", "trunc_db"),
    # -- vggtool time
    (V, "time --net {w}/huge.prototxt", "blob 'data': shape 300000 x 300000"),
    (V, "time --net {w}/axes33.prototxt", "at most 32"),
    (V, "time --net {w}/negdim.prototxt", "layer 'data' (Input): blob 'data': negative dimension"),
    (V, "time --net {w}/empty.prototxt", "has no layers"),
    (V, "time --net {w}/deploy.prototxt --iterations 0", "--iterations"),
    (V, "time --net {w}/tv_db5.prototxt --iterations 1", "5 channels"),
    (V, "time --net {w}/deploy.prototxt --weights {w}/garbage.caffemodel", "garbage.caffemodel"),
    # -- vggtool classify
    (V, "classify --net {w}/deploy.prototxt --weights {w}/deploy.caffemodel {w}/img/missing.png", "missing.png"),
    (V, "classify --net {w}/deploy.prototxt --weights {w}/deploy.caffemodel --labels {w}/nolabels.txt "
        "{w}/img/0.png", "--labels"),
    (V, "classify --net {w}/deploy.prototxt --weights {w}/garbage.caffemodel {w}/img/0.png", "garbage.caffemodel"),
    (V, "classify --net {w}/deploy.prototxt --weights {w}/deploy.caffemodel --mean-file "
        "{w}/mean_short.binaryproto {w}/img/0.png", "mean_short.binaryproto"),
    (V, "classify --net {w}/deploy.prototxt --weights {w}/deploy.caffemodel --mean-value 1,2 {w}/img/0.png",
     "channel"),
    # -- vggtool extract
    (V, "extract --net {w}/deploy.prototxt --weights {w}/deploy.caffemodel --layer fc8 --data {w}/db "
        "--out {w}/no/f.npz", "--out"),
    (V, "extract --net {w}/deploy.prototxt --weights {w}/deploy.caffemodel --layer nosuch --data {w}/db "
        "--out {w}/f.npz", "nosuch"),
    (V, "extract --net {w}/deploy.prototxt --weights {w}/deploy.caffemodel --layer fc8 --data {w}/nowhere "
        "--out {w}/f.npz", "--data"),
    (V, "extract --net {w}/deploy.prototxt --weights {w}/deploy.caffemodel --layer fc8 --data {w}/db "
        "--out {w}/f.npz --batch 0", "--batch"),
    ("sub:" + V, "extract --net {w}/deploy.prototxt --weights {w}/deploy.caffemodel --layer fc8 "
                 "--data {w}/over_db --out {w}/f.npz", "over_db"),
    # -- vggtool fuse
    (V, "fuse {w}/scores.npz {w}/missing.npz", "missing.npz"),
    (V, "fuse {w}/scores.npz {w}/not_scores.npz", "not_scores.npz"),
    (V, "fuse {w}/scores.npz --out {w}/folder_out", "folder_out"),
    (V, "fuse {w}/scores.npz --out {w}/no/fused.npz", "--out"),
    # -- vggtool svm
    (V, "svm --features {w}/missing.npz --test-features {w}/missing.npz", "missing.npz"),
    (V, "svm --features {w}/scores.npz --test-features {w}/scores.npz", "scores.npz"),
    (V, "svm --features {w}/not_scores.npz --protocol caltech", "not_scores.npz"),
    (V, "svm --features {w}/scores.npz --protocol caltech", "scores.npz"),
    (V, "extract --net {w}/deploy.prototxt --weights {w}/deploy.caffemodel --layer fc8 --data {w}/db5 "
        "--out {w}/f.npz", "image '00000000_img0.png' has 5 channel(s)"),
    # -- vggtool localize
    (V, "localize --net {w}/deploy.prototxt --weights {w}/deploy.caffemodel --weights {w}/deploy.caffemodel "
        "--data {w}/db", "--weights"),
    (V, "localize --net {w}/deploy.prototxt --weights {w}/deploy.caffemodel --data {w}/db --threshold 2",
     "--threshold"),
    (V, "localize --net {w}/deploy.prototxt --weights {w}/deploy.caffemodel --data {w}/db --scores "
        "{w}/scores.npz --out {w}/no/boxes.npz", "--out"),
    # -- vggtool plot
    (V, "plot {w}/missing.log --out {w}/c.png", "missing.log"),
    (V, "plot {w}/train.log --out {w}/c.xyz", "unsupported image type '.xyz'"),
    (V, "plot {w}/solver.prototxt --out {w}/c.png", "solver.prototxt"),
    (V, "plot {w}/train.log --out {w}/no/c.png", "--out"),
    (V, "plot {w}/train.log --out {w}/folder_out", "folder_out"),
    # -- vggtool convolutionalize
    (V, "convolutionalize --net {w}/missing.prototxt --weights {w}/deploy.caffemodel --out-net {w}/c.prototxt "
        "--out-weights {w}/c.caffemodel", "--net"),
    (V, "convolutionalize --net {w}/deploy.prototxt --weights {w}/garbage.caffemodel --out-net {w}/c.prototxt "
        "--out-weights {w}/c.caffemodel", "garbage.caffemodel"),
    (V, "convolutionalize --net {w}/deploy.prototxt --weights {w}/deploy.caffemodel --out-net {w}/no/c.prototxt "
        "--out-weights {w}/c.caffemodel", "--out-net"),
    (V, "convolutionalize --net {w}/conv_only.prototxt --weights {w}/deploy.caffemodel --out-net "
        "{w}/c.prototxt --out-weights {w}/c.caffemodel", "no InnerProduct"),
    # -- vggtool demo, device_query
    (V, "demo --out {w}/a_file", "--out"),
    (V, "demo --out {w}/demo_run --iterations 0", "--iterations"),
    (V, "demo --out {w}/demo_run --devices cpu:0", "--devices"),
    (V, "device_query --gpu 99", "GPU"),
    (V, "device_query --gpu x", "--gpu"),
    # -- data_prep convert_imageset
    (D, "convert_imageset {w}/noroot {w}/list.txt {w}/new_db", "image root folder not found"),
    (D, "convert_imageset {w}/img {w}/nolist.txt {w}/new_db", "nolist.txt"),
    (D, "convert_imageset {w}/img {w}/list.txt {w}/no/new_db", "does not exist"),
    (D, "convert_imageset {w}/img {w}/list.txt {w}/img --overwrite", "not an LMDB"),
    (D, "convert_imageset {w}/img {w}/list.txt {w}/a_file --overwrite", "a_file"),
    (D, "convert_imageset {w}/img {w}/list.txt {w}/db", "already exists"),
    (D, "convert_imageset {w}/img {w}/list.txt {w}/new_db --encoded --encode_type gif", "--encode_type"),
    (D, "convert_imageset {w}/img {w}/list.txt {w}/new_db --resize_height 5", "--resize_height"),
    (D, "convert_imageset {w}/img {w}/list_badlabel.txt {w}/new_db", "list_badlabel.txt:2"),
    (D, "convert_imageset {w}/img {w}/list_broken.txt {w}/new_db --strict", "broken.png"),
    # -- data_prep compute_image_mean, compute_color_stats
    (D, "compute_image_mean {w}/db {w}/folder_out", "folder_out"),
    (D, "compute_image_mean {w}/db {w}/no/mean.binaryproto", "does not exist"),
    (D, "compute_image_mean {w}/nowhere {w}/mean.binaryproto", "nowhere"),
    (D, "compute_image_mean {w}/img {w}/mean.binaryproto", "not an LMDB"),
    (D, "compute_image_mean {w}/db {w}/mean.binaryproto --backend leveldb", "--backend"),
    ("sub:" + D, "compute_image_mean {w}/trunc_db {w}/mean.binaryproto", "truncated"),
    ("sub:" + D, "compute_image_mean {w}/over_db {w}/mean.binaryproto", "over_db"),
    (D, "compute_color_stats {w}/db5 {w}/pca.binaryproto", "3-channel"),
    (D, "compute_color_stats {w}/db {w}/folder_out", "folder_out"),
    ("sub:" + D, "compute_color_stats {w}/trunc_db {w}/pca.binaryproto", "trunc_db"),
    # -- data_prep convert_voc, digits
    (D, "convert_voc {w}/voc/nothing {w}/img {w}/voc/ids.txt {w}/voc_db", "annotation folder not found"),
    (D, "convert_voc {w}/voc/Annotations {w}/img {w}/voc/ids.txt {w}/voc_db", "a.xml"),
    (D, "convert_voc {w}/voc/Annotations {w}/img {w}/voc/noids.txt {w}/voc_db", "noids.txt"),
    (D, "digits {w}/digits_out --size 4", "--size"),
    (D, "digits {w}/digits_out --val_fraction 1.5", "--val_fraction"),
    (D, "digits {w}/a_file", "a_file"),
    # -- vggtool draw, export, convert, reproduce; data_prep image_folder, scaled_digits
    (V, "draw {w}/missing.prototxt {w}/net.png", "missing.prototxt"),
    (V, "draw {w}/deploy.prototxt {w}/no/net.png", "does not exist"),
    (V, "draw {w}/deploy.prototxt {w}/net.xyz", "unsupported image type"),
    (V, "draw {w}/deploy.prototxt {w}/folder_out", "folder_out"),
    (V, "export --net {w}/tv.prototxt --weights {w}/tv.caffemodel --onnx {w}/m.onnx", "loss"),
    (V, "export --net {w}/deploy.prototxt --weights {w}/garbage.caffemodel --onnx {w}/m.onnx", "garbage.caffemodel"),
    (V, "export --net {w}/missing.prototxt --weights {w}/deploy.caffemodel --onnx {w}/m.onnx", "missing.prototxt"),
    (V, "convert --net {w}/deploy.prototxt --from {w}/list.txt --to {w}/m.safetensors", "list.txt"),
    (V, "convert --net {w}/deploy.prototxt --from {w}/missing.safetensors --to {w}/m.caffemodel", "missing.safetensors"),
    (V, "reproduce --out {w}/a_file --quick", "a_file"),
    (V, "reproduce --out {w}/no/run --quick", "does not exist"),
    (V, "reproduce --out {w}/run --seeds 0", "--seeds"),
    (D, "image_folder {w}/nowhere {w}/if_db", "nowhere"),
    (D, "image_folder {w}/folder_out {w}/if_db", "folder_out"),
    (D, "scaled_digits {w}/a_file", "a_file"),
    (D, "scaled_digits {w}/sd --seed -1", "--seed"),
    (D, "scaled_digits {w}/sd --canvas 2", "--canvas"),
]

SUBPROCESS_MAIN = ("import sys\nfrom {module} import main\nsys.exit(main(sys.argv[1:]))")


def run_case(tool, argv, capsys):
    """(exit code, stderr) of one command, in-process or (tool 'sub:...') in a subprocess."""
    if tool.startswith("sub:"):
        module = "vggtool.cli" if tool == "sub:" + V else "data_prep.cli"
        proc = subprocess.run([sys.executable, "-c", SUBPROCESS_MAIN.format(module=module), *argv],
                              capture_output=True, text=True, timeout=120)
        return proc.returncode, proc.stderr
    main = vggtool_main if tool == V else data_prep_main
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("tool,command,expected", CASES, ids=[f"{t.replace(':', '-')} {c.split()[0]} #{i}"
                                                              for i, (t, c, _) in enumerate(CASES)])
def test_bad_input_one_message_nothing_changed(world, capsys, tool, command, expected):
    argv = command.format(w=world).split()
    before = snapshot_tree(world)
    rc, err = run_case(tool, argv, capsys)
    after = snapshot_tree(world)
    prog = tool.split(":")[-1]
    assert rc == 1, f"exit {rc} (a negative code is a signal)\n{err}"
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if f"{prog} {argv[0]}: error:" in line]
    assert len(errors) == 1, err
    assert err.strip().splitlines()[-1] == errors[0], err  # the error is the last word
    assert expected in errors[0], errors[0]
    assert after == before, {k: (before.get(k), after.get(k)) for k in set(before) | set(after)
                             if before.get(k) != after.get(k)}


def test_catalogue_is_large_and_covers_every_command():
    commands = {(t.split(":")[-1], c.split()[0]) for t, c, _ in CASES}
    from data_prep.cli import TOOLS
    from vggtool.cli import COMMANDS

    assert commands == {(V, c) for c in COMMANDS} | {(D, c) for c in TOOLS}
    assert len(CASES) >= 60
