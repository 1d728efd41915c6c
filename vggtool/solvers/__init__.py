"""Training: Caffe's solvers (SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam), learning-rate policies
(Caffe's seven plus "plateau"), snapshots and resume, logs in Caffe's format.

`get_solver(path)` returns a pycaffe-like solver: `.step(n)`, `.solve()`, `.net`, `.test_nets`, `.iter`.
"""
from .lr_policy import POLICIES, Plateau, learning_rate  # noqa: F401
from .sgd import RULES  # noqa: F401
from .solver import NONE, SNAPSHOT, STOP, Solver, TrainingDiverged, get_solver  # noqa: F401
