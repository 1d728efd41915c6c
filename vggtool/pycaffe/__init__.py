"""pycaffe on vggtool: `import vggtool.pycaffe as caffe` runs pycaffe scripts unchanged.

The names of BVLC Caffe's python/caffe package, with pycaffe's behaviour: caffe.Net, the solvers,
caffe.io, Classifier, Detector, NetSpec (layers, params, to_proto), coord_map and draw, set_mode_cpu /
set_mode_gpu / set_device / set_random_seed, layer_type_list, Timer. See README "From pycaffe" for
what differs and what is missing.
"""
from ..net import TEST, TRAIN  # noqa: F401
from . import coord_map, draw, io, proto  # noqa: F401
from ._net import Net  # noqa: F401
from ._runtime import (NCCL, Timer, has_nccl, init_log, layer_type_list, log, set_device,  # noqa: F401
                       set_mode_cpu, set_mode_gpu, set_multiprocess, set_random_seed, set_solver_count,
                       set_solver_rank, solver_count, solver_rank)
from ._solver import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver, RMSPropSolver,  # noqa: F401
                      SGDSolver, get_solver)
from .classifier import Classifier  # noqa: F401
from .detector import Detector  # noqa: F401
from .net_spec import NetSpec, layers, params, to_proto  # noqa: F401

__version__ = "1.0.0"  # the Caffe version whose Python interface this follows
