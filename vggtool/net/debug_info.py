"""Caffe's debug_info lines (NetParameter / SolverParameter `debug_info`): after each layer's forward the
mean absolute value of its tops' data and its parameters' data, after each backward that of the bottom
diffs it wrote and its parameter diffs, and after a whole backward the L1 and L2 norms of all parameters.

Each value is read right after the layer that wrote it, so it is right in a net whose memory is pooled
(vggtool.net.pool), where an intermediate blob's diff lives only during the backward. Every value is one
number brought to the host: debug_info is slow, as in Caffe. A Solver turns it on for the train net's
iterations that display and for its test nets (Caffe's Solver::Step and InitTestNets).
"""
import math

import numpy as np

from ..backend import host_float


def _log(net):
    if net.log is None:
        from ..solvers.glog import GLog

        net.log = GLog()
    return net.log


def _mean_abs(xp, array):
    return host_float(xp.abs(array).sum(dtype=np.float64)) / max(array.size, 1)


def forward(net, i):
    """Caffe's ForwardDebugInfo for layer i: '[Forward] Layer L, top blob B data: v' and per parameter."""
    from ..solvers.glog import fmt

    log, xp, name = _log(net), net.xp, net.layer_names[i]
    for top, blob_name in zip(net.top_vecs[i], net.top_names[name]):
        log.info("net.cpp:593", f"    [Forward] Layer {name}, top blob {blob_name} data: {fmt(_mean_abs(xp, top.data))}")
    for k, blob in enumerate(net.layers[i].blobs):
        log.info("net.cpp:605", f"    [Forward] Layer {name}, param blob {_param_name(net, i, k)} data: "
                                f"{fmt(_mean_abs(xp, blob.data))}")


def backward(net, i):
    """Caffe's BackwardDebugInfo for layer i: the bottoms it propagated to, the parameters it learns."""
    from ..solvers.glog import fmt

    log, xp, name = _log(net), net.xp, net.layer_names[i]
    for j, (bottom, blob_name) in enumerate(zip(net.bottom_vecs[i], net.bottom_names[name])):
        if net.bottom_need_backward[i][j]:
            log.info("net.cpp:621", f"    [Backward] Layer {name}, bottom blob {blob_name} diff: "
                                    f"{fmt(_mean_abs(xp, bottom.diff))}")
    layer = net.layers[i]
    for k, blob in enumerate(layer.blobs):
        if layer.param_propagate_down[k]:
            log.info("net.cpp:632", f"    [Backward] Layer {name}, param blob {k} diff: {fmt(_mean_abs(xp, blob.diff))}")


def all_params(net):
    """Caffe's closing line of Net::Backward: L1 and L2 norms of every parameter's data and diff, each
    shared parameter once (at its owner)."""
    from ..solvers.glog import fmt

    xp = net.xp
    sums = np.zeros(4)
    seen = set()
    for layer in net.layers:
        for blob in layer.blobs:
            if id(blob) in seen or id(blob._data_buf) in seen:
                continue
            seen.update((id(blob), id(blob._data_buf)))
            for j, array in enumerate((blob.data, blob.diff)):
                flat = array.reshape(-1)
                sums[j] += host_float(xp.abs(flat).sum(dtype=np.float64))
                sums[2 + j] += host_float(xp.vdot(flat, flat))
    _log(net).error("net.cpp:721", f"    [Backward] All net params (data, diff): L1 norm = ({fmt(sums[0])}, "
                                   f"{fmt(sums[1])}); L2 norm = ({fmt(math.sqrt(sums[2]))}, {fmt(math.sqrt(sums[3]))})")


def _param_name(net, i, k):
    """Caffe's param display name: the ParamSpec's name if it has one, else the parameter's index."""
    specs = net.layers[i].param.param
    return specs[k].name if k < len(specs) and specs[k].name else str(k)
