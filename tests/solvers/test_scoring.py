"""A test round (Solver::Test) keeps its per-batch outputs on the device and reads them once per round."""
import numpy as np

from vggtool import backend
from vggtool.backend import count_transfers, to_numpy
from vggtool.io.prototxt import parse_net_text
from vggtool.proto import caffe_pb2
from vggtool.solvers import Solver
from vggtool.solvers.glog import GLog, fmt

# Refilled Gaussian data: every test batch differs, so the mean is over K different values.
NET = """
name: "scored"
layer { name: "d" type: "DummyData" top: "x" dummy_data_param { shape { dim: 5 dim: 6 }
  data_filler { type: "gaussian" std: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "ip2" type: "InnerProduct" bottom: "x" top: "ip2"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "ip2" top: "loss" }
layer { name: "both" type: "Concat" bottom: "ip" bottom: "ip2" top: "both" }
"""


def make_solver(test_iter, dtype, device=backend.CPU):
    p = caffe_pb2.SolverParameter()
    p.net_param.CopyFrom(parse_net_text(NET, "<scored net>"))
    p.base_lr, p.lr_policy, p.max_iter, p.random_seed = 0.01, "fixed", 10, 3
    p.test_iter.append(test_iter)
    p.test_interval = 1000
    return Solver(p, device=device, dtype=dtype, log=GLog(stream=False))


def batch_by_batch(net, batches):
    """The round's sums as a host loop makes them: each batch's values read and added in float64."""
    net.restore_batch_positions([(0, None)] * len(net.layers))
    sums, loss = {}, 0.0
    for k in range(batches):
        net.iteration, net.sample_offset = k, 0
        loss += backend.host_float(net.forward_from_to())
        for name in net.outputs:
            v = to_numpy(net.blobs[name].data).astype(np.float64).ravel()
            sums[name] = v.copy() if name not in sums else sums[name] + v
    return {name: sums[name] / batches for name in net.outputs}, loss / batches


def test_a_test_round_reads_the_device_once_whatever_its_length(engine):
    counts, rounds = {}, {}
    for batches in (2, 7):
        solver = make_solver(batches, engine["dtype"], engine["device"])
        solver.param.test_compute_loss = True
        lines = []
        solver.log.info = lambda where, message: lines.append(message)
        with count_transfers() as c:
            scores = solver.test(0)
        counts[batches], rounds[batches] = c.count, scores["both"]
        means, loss = batch_by_batch(make_solver(batches, engine["dtype"], engine["device"]).test_nets[0], batches)
        assert set(scores) == {"loss", "both"}
        assert scores["loss"] == means["loss"][0]  # the same float64 additions, in the same order
        np.testing.assert_array_equal(scores["both"], means["both"])
        assert len(scores["both"]) == 5 * 6
        assert f"Test loss: {fmt(loss)}" in lines
    # one read for the sums and the loss together; the log lines print those host values
    assert counts[2] == counts[7] == 1, counts
    assert not np.array_equal(rounds[2], rounds[7])  # the batches differ: the means are over different values
