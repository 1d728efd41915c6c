"""pycaffe's solvers: SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver, AdaDeltaSolver, AdamSolver
and get_solver, on vggtool's Solver. As in Caffe, the class decides the update rule (caffe.AdamSolver
runs Adam whatever the file's `type` says); get_solver picks the class from `type`."""
from ..io import prototxt
from ..net.weights import share_trained_layers
from ..proto import caffe_pb2
from ..solvers import lr_policy
from ..solvers.solver import Solver
from . import _runtime
from ._net import Net


class _Callback:
    def __init__(self, on_start, on_gradients_ready):
        self.on_start = on_start
        self.on_gradients_ready = on_gradients_ready


class SGDSolver(Solver):
    """caffe.SGDSolver(solver_file): .net, .test_nets, .iter, .lr, .param, step(n), solve(resume_file),
    snapshot(), restore(state_file), share_weights(net), add_callback(on_start, on_gradients_ready),
    apply_update()."""

    net_class = Net
    rule_type = "SGD"
    # Caffe keeps every blob's data and diff after a step, and pycaffe scripts read them
    # (solver.net.blobs['conv1'].data): no pooled train net unless settings.share_memory is 'on'
    pool_train_memory = False

    def __init__(self, filename, **engine_kwargs):
        if isinstance(filename, caffe_pb2.SolverParameter):
            param, source = filename, engine_kwargs.pop("source", None)
        else:
            source = str(filename)
            _runtime_check(source)
            param = prototxt.read_solver_param(source)
        if self.rule_type is not None:
            param.type = self.rule_type
        self._callbacks = []
        if "seed" not in engine_kwargs and param.random_seed < 0:
            engine_kwargs["seed"] = _runtime.next_seed()  # Caffe: the file's random_seed wins
        engine_kwargs.setdefault("device", _runtime.current_device())
        super().__init__(param, source=source, **engine_kwargs)

    @property
    def lr(self):
        """The learning rate of the current iteration (SGDSolver::GetLearningRate)."""
        step = self.current_step
        if self.param.lr_policy == "multistep":
            step = lr_policy.advance_multistep(self.param, self.iter, step)
        return lr_policy.learning_rate(self.param, self.iter, step, self.plateau.drops)

    def add_callback(self, on_start, on_gradients_ready=None):
        """Call on_start() before each iteration's forward/backward and on_gradients_ready() before its
        update (Caffe's Solver::Callback). A caffe.NCCL object is accepted and does nothing (no NCCL)."""
        if isinstance(on_start, _runtime.NCCL):
            return
        self._callbacks.append(_Callback(on_start, on_gradients_ready))

    def compute_gradients(self):
        for cb in self._callbacks:
            cb.on_start()
        return super().compute_gradients()

    def apply_update(self):
        for cb in self._callbacks:
            if cb.on_gradients_ready is not None:
                cb.on_gradients_ready()
        return super().apply_update()

    def share_weights(self, net):
        """Make `net` use this solver's train-net weights, by layer name."""
        share_trained_layers(net, self.net)

    def solve(self, resume_file=None):
        return super().solve(resume=resume_file)


class NesterovSolver(SGDSolver):
    rule_type = "Nesterov"


class AdaGradSolver(SGDSolver):
    rule_type = "AdaGrad"


class RMSPropSolver(SGDSolver):
    rule_type = "RMSProp"


class AdaDeltaSolver(SGDSolver):
    rule_type = "AdaDelta"


class AdamSolver(SGDSolver):
    rule_type = "Adam"


_BY_TYPE = {cls.rule_type: cls for cls in (SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver,
                                           AdaDeltaSolver, AdamSolver)}


def get_solver(filename):
    """The solver of the class the file's `type` names (Caffe's SolverRegistry::CreateSolver)."""
    _runtime_check(str(filename))
    param = prototxt.read_solver_param(str(filename))
    cls = _BY_TYPE.get(param.type)
    if cls is None:
        from ..errors import VggtoolError

        raise VggtoolError(f"{filename}: unknown solver type '{param.type}' (known: {', '.join(_BY_TYPE)})")
    return cls(filename)


def _runtime_check(path):
    import os

    if not os.path.isfile(path):
        raise _runtime.PycaffeError(f"Could not open file {path}")
