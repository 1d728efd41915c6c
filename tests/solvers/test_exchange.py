"""Choosing how GPU replicas exchange gradients: NCCL when it starts, else copies, and a failed NCCL start
is logged with its reason (fakes stand in for GPUs and NCCL here; test_parallel covers the CPU path)."""
import types

import numpy as np

from vggtool.backend import Device
from vggtool.solvers.exchange import CopyExchange, NcclExchange, local_exchange


class FakeLog:
    def __init__(self):
        self.lines = []

    def warning(self, where, message):
        self.lines.append(message)


def gpu_nets(n=2):
    blob = types.SimpleNamespace(count=12, shape=(3, 4))
    return [types.SimpleNamespace(device=Device("gpu", i), dtype=np.float32,
                                  learnable_params=[types.SimpleNamespace(blob=blob)]) for i in range(n)]


def fake_nccl(init_all):
    return types.SimpleNamespace(available=True, NCCL_FLOAT32="f32", NCCL_FLOAT64="f64",
                                 NcclCommunicator=types.SimpleNamespace(initAll=init_all))


def test_a_failing_nccl_start_is_logged_with_its_reason():
    def init_all(ids):
        raise RuntimeError("NCCL_ERROR_UNHANDLED_CUDA_ERROR: unhandled cuda error")

    log = FakeLog()
    exchange = local_exchange(gpu_nets(), log=log, nccl=fake_nccl(init_all))
    assert type(exchange) is CopyExchange
    assert len(log.lines) == 1
    assert "NCCL failed to start (RuntimeError: NCCL_ERROR_UNHANDLED_CUDA_ERROR" in log.lines[0]
    assert "device-to-device copies" in log.lines[0]


def test_nccl_that_starts_is_used_and_holds_no_staging_buffer():
    seen = []
    log = FakeLog()
    exchange = local_exchange(gpu_nets(3), log=log, nccl=fake_nccl(lambda ids: seen.append(ids) or ["c"] * 3))
    assert type(exchange) is NcclExchange and seen == [[0, 1, 2]]
    assert exchange.staging is None and exchange.dtype == "f32"  # no buffer the size of the largest param
    assert log.lines == []


def test_cpu_replicas_never_look_for_nccl():
    nets = gpu_nets()
    for net in nets:
        net.device = Device("cpu")
    log = FakeLog()

    def init_all(ids):
        raise AssertionError("NCCL asked for CPU replicas")

    assert type(local_exchange(nets, share_cpu_weights=False, log=log, nccl=fake_nccl(init_all))) is CopyExchange
    assert log.lines == []


def test_two_replicas_on_one_gpu_use_copies_and_say_why():
    nets = gpu_nets()
    for net in nets:
        net.device = Device("gpu", 0)

    def init_all(ids):
        raise AssertionError("NCCL asked to put one GPU in a communicator twice")

    log = FakeLog()
    assert type(local_exchange(nets, log=log, nccl=fake_nccl(init_all))) is CopyExchange
    assert log.lines == ["NCCL needs distinct GPUs (replicas on GPUs 0, 0); summing the 2 GPUs' gradients by "
                         "device-to-device copies instead"]
