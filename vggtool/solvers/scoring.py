"""A test round of the solver (Caffe's Solver::Test): test_iter batches of a test net, its outputs
averaged over them, and the lines Caffe logs for a net's outputs (Train and Test)."""
import numpy as np

from ..backend import to_numpy
from .glog import fmt


def run_batches(solver, net, batches, first_batch, stop, none):
    """Forward `batches` batches of `net` from batch `first_batch`; (per-output sums of the values, summed
    loss), or None when a signal asked to stop (`stop`; the request is then reset to `none`).

    The sums stay on the net's device, in float64 and added batch by batch as Caffe adds them on the host,
    and come to the host in one transfer at the end of the round (not one per output and batch)."""
    xp = net.device.xp
    sums = {name: None for name in net.outputs}
    with net.device:
        loss = xp.zeros((), dtype=xp.float64)
    net.restore_batch_positions([(0, None)] * len(net.layers))  # no carry-over from an earlier round
    for k in range(batches):
        if solver.requested_action == stop:
            solver.requested_action = none
            solver.requested_early_exit = True
            solver.log.info("solver.cpp:396", "Test interrupted.")
            return None
        net.iteration = first_batch + k
        net.sample_offset = 0
        batch_loss = net.forward_from_to()
        with net.device:
            if solver.param.test_compute_loss:
                loss = loss + batch_loss
            for name in net.outputs:
                v = net.blobs[name].data.astype(xp.float64).ravel()  # a copy: the next batch overwrites data
                sums[name] = v if sums[name] is None else sums[name] + v
    if batches == 0:
        return sums, 0.0
    return _to_host(net, sums, loss)


def _to_host(net, sums, loss):
    """(sums as NumPy arrays, loss as a float) from their device values, in one device-to-host transfer."""
    xp = net.device.xp
    names = list(sums)
    with net.device:
        flat = to_numpy(xp.concatenate([loss.reshape(1)] + [sums[name] for name in names]))
    host, start = {}, 1
    for name in names:
        size = sums[name].size
        host[name] = flat[start:start + size]
        start += size
    return host, float(flat[0])


def mean_scores(outputs, sums, batches):
    """{output: mean value (a list when the output holds more than one value)}."""
    scores = {}
    for name in outputs:
        means = sums[name] / batches if sums[name] is not None else np.zeros(0)
        scores[name] = float(means[0]) if means.size == 1 else list(means)
    return scores


def output_lines(net, kind, values):
    """(glog place, text) of Caffe's `    Train/Test net output #i: name = v (* w = l loss)` lines; values:
    {output: values}, the blob's own data for outputs not given."""
    index = 0
    for name in net.outputs:
        vals = values.get(name)
        if vals is None:
            vals = to_numpy(net.blobs[name].data).ravel()
        weight = net.blob_loss_weights.get(name, 0.0)
        for v in vals:
            extra = f" (* {fmt(weight)} = {fmt(weight * v)} loss)" if weight else ""
            where = "solver.cpp:258" if kind == "Train" else "solver.cpp:414"
            yield where, f"    {kind} net output #{index}: {name} = {fmt(v)}{extra}"
            index += 1
