"""Train one cell in-process: solver/mini/<net>.prototxt (the one recipe) on netdefs/mini/<net>/, with the
run's data paths, seed, stage (training scale) and budget filled in; the paper's initialisation from A
through `vggtool train --init-from-a`'s layer list and copy; Caffe's log in a file; the weights saved."""
import json
import math
import os
import time
from pathlib import Path

from ... import atomic_files
from ...io import prototxt
from ...io.files import checkout_file
from ...errors import VggtoolError
from ...proto import caffe_pb2
from ...solvers import Solver
from ...solvers.finetune import copy_weights
from ...solvers.glog import GLog
from ...solvers.solver import TrainingDiverged
from ..initialisation import INIT_FROM_A_LAYERS

TEST_BATCH = 48  # the held-out batch of netdefs/mini (MINI["test"] in tools/make_netdefs.py), at most


def source_file(*parts):
    return checkout_file(*parts, command="`vggtool reproduce`")


def deploy_path(net):
    return source_file("netdefs", "mini", net, "deploy.prototxt")


def holdout_batches(count):
    """(batch, test_iter) covering `count` held-out images with batches of at most TEST_BATCH."""
    k = max(1, math.ceil(count / TEST_BATCH))
    return max(1, count // k), k


def solver_param(cell, data, budget, holdout_count):
    """The SolverParameter of `cell`: the recipe file with the net inline and the run's settings."""
    solver_file = source_file("solver", "mini", f"{cell.net}.prototxt")
    param = prototxt.read_solver_param(str(solver_file))
    # from_a: He weights under the layers copied from A (N(0, 0.1^2) there left D and E at chance; plan.py)
    variant = "train_val.prototxt" if cell.init == "gaussian" else "train_val_msra.prototxt"
    net_file = source_file("netdefs", "mini", cell.net, variant)
    net = prototxt.read_net_param(str(net_file))
    batch, test_iter = holdout_batches(holdout_count)
    for layer in net.layer:
        if layer.type == "Data":
            layer.data_param.source = str(Path(data) / layer.data_param.source)
            layer.transform_param.mean_file = str(Path(data) / layer.transform_param.mean_file)
            if any(rule.phase == caffe_pb2.TEST for rule in layer.include):
                layer.data_param.batch_size = batch
    param.ClearField("net")
    param.net_param.CopyFrom(net)
    del param.test_iter[:]
    param.test_iter.append(test_iter)
    param.max_iter = budget.iterations
    param.test_interval = budget.test_interval
    param.random_seed = cell.seed
    if cell.scale != "s36":  # s36 is the nets' default stage
        param.train_state.stage.append(cell.scale)
        param.test_state.add().stage.append(cell.scale)
    return param


def train_cell(cell, data, budget, holdout_count, model_path, log_path, a_weights=None):
    """Train `cell`, save its weights to `model_path` and return its record (status, cost, last lr)."""
    if cell.init == "from_a" and a_weights is None:
        raise VggtoolError(f"{cell.name}: initialisation from A needs A's weights")
    param = solver_param(cell, data, budget, holdout_count)
    if os.path.exists(log_path):
        os.unlink(log_path)
    log = GLog(str(log_path), stream=False)
    wall, cpu = time.perf_counter(), time.process_time()
    record = {"cell": cell.name, "net": cell.net, "scale": cell.scale, "init": cell.init, "seed": cell.seed,
              "iterations": budget.iterations}
    try:
        solver = Solver(param, source=f"solver/mini/{cell.net}.prototxt", log=log)
        if cell.init == "from_a":
            copy_weights(solver, str(a_weights), INIT_FROM_A_LAYERS, log)
        solver.solve()
        solver.net.save(str(model_path))
        record.update(status="ok", lr_drops=int(solver.plateau.drops),
                      final_lr=float(solver.learning_rate()), final_loss=solver.smoothed_loss,
                      final_holdout=solver.last_test_scores.get(0, {}))
    except TrainingDiverged as e:  # kept in the report as a failed cell, not hidden
        record.update(status="diverged", message=str(e))
    finally:
        log.close()
    record.update(wall_s=time.perf_counter() - wall, cpu_s=time.process_time() - cpu)
    return record


def save_record(path, record):
    atomic_files.atomic_write_bytes(str(path), json.dumps(record, indent=1).encode())


def load_record(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)
