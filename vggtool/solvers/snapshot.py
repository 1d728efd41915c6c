"""Snapshots: `<prefix>_iter_N.caffemodel` + `<prefix>_iter_N.solverstate` (Caffe's SolverState), written
atomically, and a solver restored from them with clear errors. The bytes are vggtool.io.wire's."""
import math
import os

import numpy as np

from ..backend import host_bool
from ..errors import VggtoolError
from ..io import wire
from ..io.files import find_beside


class TrainingDiverged(VggtoolError):
    """The loss or a gradient became NaN/inf; no snapshot of the bad weights is written."""


def snapshot_filename(prefix, it, extension):
    return f"{prefix}_iter_{it}{extension}"


def check_prefix_writable(prefix):
    """Caffe's CheckSnapshotWritePermissions: fail before training, not at the first snapshot."""
    folder = os.path.dirname(os.path.abspath(prefix + "_iter_0"))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise VggtoolError(f"cannot write to snapshot prefix '{prefix}': make sure that the directory "
                           f"'{folder}' exists and is writable")


def write_state(path, it, learned_net, history, current_step, plateau):
    state = wire.solver_state(it, learned_net, current_step, history)
    plateau.save(state)
    wire.write_binary_proto(path, state)


def read_state(path):
    if not os.path.exists(path):
        raise VggtoolError(f"{path}: solver state file not found")
    return wire.read_solverstate(path)


def history_arrays(state, path):
    """The history blobs as (shape, flat float values) pairs, checked for consistency."""
    return wire.history_arrays(state, path)


def resolve_learned_net(learned_net, state_path):
    """Caffe stores the .caffemodel path as written (cwd-relative); also look beside the .solverstate."""
    found = find_beside(learned_net, state_path, keep_folders=False)
    if found is None:
        raise VggtoolError(f"{state_path}: its weights file '{learned_net}' was not found (looked in the "
                           f"current directory and beside the .solverstate)")
    return found


def checked_snapshot(solver):
    """solver.snapshot() after a forward pass shows the loss of these weights is finite (at the end of a
    step, where no next iteration has checked them). The forward leaves the data where it was (on every
    replica of a multi-device solver)."""
    nets = getattr(solver, "replicas", None) or [solver.net]
    positions = [net.batch_positions() for net in nets]
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            loss = solver.final_loss()
    finally:
        for net, saved in zip(nets, positions):
            net.restore_batch_positions(saved)
    if not math.isfinite(loss):
        layer = solver.net.first_nonfinite_layer()
        where = f" (first non-finite values in layer '{layer}')" if layer else ""
        raise TrainingDiverged(f"iteration {solver.iter}: the loss is not finite{where}; training stopped. "
                               f"No snapshot of these weights was written; lower base_lr or check the data.")
    return solver.snapshot()


def write_snapshot(solver):
    """Write the solver's <prefix>_iter_N.caffemodel and .solverstate (refusing non-finite weights);
    returns their paths."""
    net = solver.net
    xp = net.xp
    for lp in net.learnable_params:
        if not host_bool(xp.isfinite(lp.blob.data).all()):
            raise TrainingDiverged(f"iteration {solver.iter}: weights of layer '{lp.layer}' are not finite; "
                                   f"no snapshot written (the last good snapshot is kept)")
    check_prefix_writable(solver.prefix)
    model = snapshot_filename(solver.prefix, solver.iter, ".caffemodel")
    solver.log.info("solver.cpp:464", f"Snapshotting to binary proto file {model}")
    # The model first, then the state that names it, each renamed into place only when complete and
    # synced: a process killed at any moment leaves every .solverstate with its whole .caffemodel.
    net.save(model, write_diff=solver.param.snapshot_diff)
    state = snapshot_filename(solver.prefix, solver.iter, ".solverstate")
    solver.log.info("sgd_solver.cpp:284", f"Snapshotting solver state to binary proto file {state}")
    write_state(state, solver.iter, model, solver.history, solver.current_step, solver.plateau)
    return model, state


def restore(solver, path):
    """Resume `solver` from a .solverstate: weights (learned_net), history, iteration, multistep and
    plateau state. Everything is checked before anything is changed."""
    path = str(path)
    state = read_state(path)
    history = history_arrays(state, path)
    if len(history) != len(solver.history):
        raise VggtoolError(f"{path}: holds {len(history)} history blob(s) but this {solver.param.type} solver "
                           f"and net need {len(solver.history)} (a state of another net or solver type?)")
    for i, ((shape, values), h) in enumerate(zip(history, solver.history)):
        if values.size != h.size:
            raise VggtoolError(f"{path}: history blob {i} has shape {shape}, the net's parameter has "
                               f"{tuple(h.shape)} (a state of another net?)")
    if state.learned_net:
        solver.net.copy_from(resolve_learned_net(state.learned_net, path))
    xp = solver.net.xp
    for (shape, values), h in zip(history, solver.history):
        h[...] = xp.asarray(values.reshape(h.shape), dtype=h.dtype)
    solver.iter = int(state.iter)
    solver.current_step = int(state.current_step)
    solver.plateau.restore(state)
