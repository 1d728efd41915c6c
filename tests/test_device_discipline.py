"""backend.Device nests like CuPy's device contexts, and a training iteration without a display brings
nothing to the host (every device-to-host conversion goes through backend.to_numpy, which counts)."""
import threading
import types

import numpy as np
import pytest

from vggtool import backend
from vggtool.backend import Device, count_transfers, to_numpy
from vggtool.proto import caffe_pb2
from vggtool.io.prototxt import parse_net_text
from vggtool.solvers import Solver
from vggtool.solvers.glog import GLog


class FakeCuda:
    """CUDA's current device (per thread, as in the runtime) and cupy.cuda.Device contexts that save and
    restore it; counts the contexts not yet exited."""

    def __init__(self):
        self.local = threading.local()
        self.open = 0
        fake = self

        class DeviceContext:
            def __init__(self, index):
                self.index = index

            def __enter__(self):
                self.saved = fake.current()
                fake.local.current = self.index
                fake.open += 1

            def __exit__(self, *exc):
                fake.local.current = self.saved
                fake.open -= 1

        self.module = types.SimpleNamespace(cuda=types.SimpleNamespace(Device=DeviceContext))

    def current(self):
        return getattr(self.local, "current", 7)  # 7: whatever was current before vggtool ran


@pytest.fixture
def fake_cuda(monkeypatch):
    fake = FakeCuda()
    monkeypatch.setattr(backend, "_cupy", fake.module)
    return fake


def test_nested_device_contexts_restore_each_level(fake_cuda):
    d0, d1 = Device("gpu", 0), Device("gpu", 1)
    with d0:
        assert fake_cuda.current() == 0
        with d1:
            with d0:  # the same Device again (Net.forward -> Dropout -> Blob.reshape)
                assert fake_cuda.current() == 0
                with d0:
                    assert fake_cuda.open == 4
                assert fake_cuda.current() == 0
            assert fake_cuda.current() == 1
        assert fake_cuda.current() == 0
    assert fake_cuda.current() == 7 and fake_cuda.open == 0


def test_device_contexts_of_two_threads_do_not_mix(fake_cuda):
    d0 = Device("gpu", 0)
    entered, other_done, seen = threading.Event(), threading.Event(), {}

    def first():
        with d0:
            entered.set()
            other_done.wait(5)
        seen["first"] = fake_cuda.current()

    def second():
        entered.wait(5)
        fake_cuda.local.current = 3
        d0.__enter__()
        other_done.set()  # the first thread exits while this one is still inside
        threading.Event().wait(0.05)
        d0.__exit__(None, None, None)
        seen["second"] = fake_cuda.current()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == {"first": 7, "second": 3} and fake_cuda.open == 0


def test_to_numpy_counts_every_call():
    with count_transfers() as c:
        to_numpy(np.ones(3))
        backend.host_float(np.float32(2.5))
        assert backend.host_bool(np.array([True]))
    assert c.count == 3


NET = """
name: "sync"
layer { name: "d" type: "DummyData" top: "x" top: "label"
  dummy_data_param { shape { dim: 6 dim: 2 dim: 7 dim: 7 } shape { dim: 6 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "conv"
  convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool" top: "ip1"
  inner_product_param { num_output: 8 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "ip2" type: "InnerProduct" bottom: "pool" top: "ip2"
  inner_product_param { num_output: 8 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "max" type: "Eltwise" bottom: "ip1" bottom: "ip2" bottom: "ip1" top: "max" eltwise_param { operation: MAX } }
layer { name: "relu" type: "ReLU" bottom: "max" top: "max" }
layer { name: "drop" type: "Dropout" bottom: "max" top: "max" dropout_param { dropout_ratio: 0.5 } }
layer { name: "ip3" type: "InnerProduct" bottom: "max" top: "ip3"
  inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip3" bottom: "label" top: "loss"
  loss_param { ignore_label: 3 normalization: VALID } }
layer { name: "acc" type: "Accuracy" bottom: "ip3" bottom: "label" top: "acc" }
"""


def make_solver(display, device=backend.CPU):
    p = caffe_pb2.SolverParameter()
    p.net_param.CopyFrom(parse_net_text(NET, "<sync net>"))
    p.base_lr, p.momentum, p.weight_decay, p.lr_policy = 0.01, 0.9, 1e-4, "fixed"
    p.display, p.average_loss, p.max_iter, p.random_seed = display, 3, 100, 5
    return Solver(p, device=device, log=GLog(stream=False))


def test_an_iteration_without_display_reads_nothing_from_the_device():
    solver = make_solver(display=0)
    solver.step(1)
    with count_transfers() as body:  # the loop's body, as step() runs it
        loss = solver.compute_gradients()
        solver.check_finite(loss)
        solver.apply_update()
    assert body.count == 0
    with count_transfers() as one:
        solver.step(1)
    with count_transfers() as six:
        solver.step(6)
    assert six.count == one.count <= 2  # only the end of a step reads (divergence note, smoothed loss)
    assert np.isfinite(solver.smoothed_loss)


def test_a_display_iteration_reads_the_smoothed_loss_and_outputs():
    solver = make_solver(display=1)
    with count_transfers() as c:
        solver.step(2)
    assert c.count >= 2 * 3  # per iteration: divergence note, smoothed loss, the outputs


@pytest.mark.gpu
def test_an_iteration_without_display_does_not_synchronize_the_gpu():
    import cupyx

    solver = make_solver(display=0, device=backend.gpu(0))
    solver.step(1)
    backend.gpu(0).synchronize()
    with cupyx.allow_synchronize(False):  # raises on any device synchronisation (a host read included)
        loss = solver.compute_gradients()
        solver.check_finite(loss)
        solver.apply_update()
    backend.gpu(0).synchronize()
