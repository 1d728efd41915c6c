"""Snapshots: `<prefix>_iter_N.caffemodel` + `<prefix>_iter_N.solverstate` (Caffe's SolverState), written
atomically; and reading them back with clear errors."""
import os


from .. import protoio
from ..blob import array_to_proto, proto_shape, proto_values
from ..errors import VggtoolError
from ..proto import caffe_pb2


def snapshot_filename(prefix, it, extension):
    return f"{prefix}_iter_{it}{extension}"


def check_prefix_writable(prefix):
    """Caffe's CheckSnapshotWritePermissions: fail before training, not at the first snapshot."""
    folder = os.path.dirname(os.path.abspath(prefix + "_iter_0"))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise VggtoolError(f"cannot write to snapshot prefix '{prefix}': make sure that the directory "
                           f"'{folder}' exists and is writable")


def write_state(path, it, learned_net, history, current_step, plateau):
    state = caffe_pb2.SolverState()
    state.iter = it
    state.learned_net = learned_net
    state.current_step = current_step
    for h in history:
        array_to_proto(h, state.history.add())
    plateau.save(state)
    protoio.write_binary_proto(path, state)


def read_state(path):
    if not os.path.exists(path):
        raise VggtoolError(f"{path}: solver state file not found")
    state = caffe_pb2.SolverState()
    protoio.read_binary_proto(path, state, "solverstate")
    if not state.HasField("iter"):
        raise VggtoolError(f"{path}: not a solver state (no 'iter' field): corrupt or not a .solverstate file")
    return state


def history_arrays(state, path):
    """The history blobs as (shape, flat float values) pairs, checked for consistency."""
    out = []
    for i, blob in enumerate(state.history):
        shape = proto_shape(blob)
        values = proto_values(blob)
        n = 1
        for d in shape:
            n *= d
        if values.size != n:
            raise VggtoolError(f"{path}: history blob {i} holds {values.size} values but its shape {shape} "
                               f"needs {n} (truncated or corrupt file?)")
        out.append((shape, values))
    return out


def resolve_learned_net(learned_net, state_path):
    """Caffe stores the .caffemodel path as written (cwd-relative); also look beside the .solverstate."""
    if os.path.exists(learned_net):
        return learned_net
    beside = os.path.join(os.path.dirname(os.path.abspath(state_path)), os.path.basename(learned_net))
    if os.path.exists(beside):
        return beside
    raise VggtoolError(f"{state_path}: its weights file '{learned_net}' was not found (looked in the "
                       f"current directory and beside the .solverstate)")
