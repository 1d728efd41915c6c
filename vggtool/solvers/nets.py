"""The solver's nets, as Caffe's Solver::InitTrainNet / InitTestNets find them: exactly one train net
field, test nets from test_net / test_net_param or else the generic net once per test_iter, the
solver's train_state / test_state merged into each net's own, net paths resolved beside the solver
file, and the test nets sharing the train net's weights."""
from ..errors import VggtoolError
from ..io import prototxt
from ..io.files import find_beside
from ..net.weights import share_trained_layers
from ..proto import caffe_pb2


def resolve_net_path(path, solver_path, field):
    """Caffe resolves net paths against the cwd; we also accept them relative to the solver's folder."""
    found = find_beside(path, solver_path)
    if found is not None:
        return found
    if solver_path is None:
        raise VggtoolError(f"solver field '{field}': net file '{path}' not found")
    raise VggtoolError(f"{solver_path}: {field}: net file '{path}' not found (looked relative to the current "
                       f"directory and to the solver file's folder)")


def net_from(solver, kind, dtype, phase, state):
    """Build a net of `solver.net_class` from (field, path or inline NetParameter)."""
    kind_field, value = kind
    if isinstance(value, caffe_pb2.NetParameter):
        net_param = caffe_pb2.NetParameter()
        net_param.CopyFrom(value)
        label = f"{solver.source}:{kind_field}"
    else:
        path = resolve_net_path(value, solver.source if solver.source != "solver" else None, kind_field)
        net_param = prototxt.read_net_param(path)
        label = path
    # the solver's state replaces the net's own (Caffe: net_state merged from the solver)
    merged = caffe_pb2.NetState()
    merged.CopyFrom(net_param.state)
    merged.MergeFrom(state)
    merged.phase = phase
    net_param.state.CopyFrom(merged)
    train = phase == caffe_pb2.TRAIN
    return solver.net_class(net_param, phase=phase, stages=tuple(merged.stage), level=merged.level,
                            device=solver.device, dtype=dtype, seed=solver.seed, source=label,
                            batch_divisor=solver.train_batch_divisor if train else 1,
                            batch_shares=solver.train_batch_shares if train else 1, log=solver.log)


def build_train_net(solver, dtype):
    p = solver.param
    given = [(f, getattr(p, f)) for f in ("train_net_param", "train_net", "net_param", "net") if p.HasField(f)]
    if len(given) != 1:
        raise VggtoolError(f"{solver.source}: give exactly one of net, net_param, train_net, train_net_param "
                           f"(found {len(given)}: {', '.join(f for f, _ in given) or 'none'})")
    solver.log.info("solver.cpp:88", f"Creating training net from {given[0][0]}")
    net = net_from(solver, given[0], dtype, caffe_pb2.TRAIN, p.train_state)
    if solver.pool_train_memory:  # a training step's diffs, caches and workspace share bytes (settings.share_memory)
        net.share_memory()
    if not net.learnable_params:
        solver.log.warning("solver.cpp:88", f"training net '{net.name}' has no learnable parameters")
    return net


def test_net_sources(param, source):
    """[(field, path or NetParameter)] of the test nets, checked against test_iter and test_state."""
    p = param
    sources = [("test_net_param", n) for n in p.test_net_param] + [("test_net", n) for n in p.test_net]
    generic = None
    if p.HasField("net_param"):
        generic = ("net_param", p.net_param)
    elif p.HasField("net"):
        generic = ("net", p.net)
    n_specific = len(sources)
    if generic is not None:
        if len(p.test_iter) < n_specific:
            raise VggtoolError(f"{source}: test_iter must be given for each test network "
                               f"({n_specific} test nets, {len(p.test_iter)} test_iter)")
        sources += [generic] * (len(p.test_iter) - n_specific)
    elif len(p.test_iter) != n_specific:
        raise VggtoolError(f"{source}: test_iter must be given for each test network "
                           f"({n_specific} test nets, {len(p.test_iter)} test_iter)")
    if p.test_state and len(p.test_state) != len(sources):
        raise VggtoolError(f"{source}: test_state must be unspecified or given once per test net "
                           f"({len(sources)} test nets, {len(p.test_state)} test_state)")
    if sources and p.test_interval <= 0:
        raise VggtoolError(f"{source}: test_interval must be > 0 when test nets are defined")
    return sources


def build_test_nets(solver, dtype):
    p = solver.param
    nets = []
    for i, src in enumerate(test_net_sources(p, solver.source)):
        state = p.test_state[i] if p.test_state else caffe_pb2.NetState()
        solver.log.info("solver.cpp:190", f"Creating test net (#{i}) specified by {src[0]}")
        net = net_from(solver, src, dtype, caffe_pb2.TEST, state)
        # Test nets use the train net's weights (Caffe's ShareTrainedLayersWith), by layer name.
        share_trained_layers(net, solver.net, target_what=f"in test net '{net.source}'",
                             source_what="the train net")
        net.debug_info = bool(p.debug_info)  # Caffe's InitTestNets
        nets.append(net)
    return nets
