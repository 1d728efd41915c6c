"""`vggtool train`: Caffe's `caffe train` (train from a solver prototxt, fine-tune, resume)."""
import signal

from .. import backend
from ..io import prototxt
from ..solvers import parallel
from ..errors import VggtoolError
from ..solvers import NONE, SNAPSHOT, STOP, Solver
from ..solvers.finetune import copy_weights
from ..solvers.glog import GLog
from ..vgg.initialisation import INIT_FROM_A_LAYERS

HELP = "train a net from a solver prototxt (Caffe's `caffe train`)"

EFFECTS = {"stop": STOP, "snapshot": SNAPSHOT, "none": NONE}


def add_arguments(parser):
    parser.add_argument("--solver", required=True, help="the solver .prototxt")
    parser.add_argument("--weights", default=None,
                        help="fine-tune from these .caffemodel(s), comma separated (copied by layer name)")
    parser.add_argument("--weights-layers", "--weights_layers", dest="weights_layers", default=None,
                        help="copy only these layers from --weights (comma separated)")
    parser.add_argument("--init-from-a", "--init_from_a", dest="init_from_a", action="store_true",
                        help="the paper's initialisation of nets B..E from net A: copy only "
                             + ",".join(INIT_FROM_A_LAYERS) + " from --weights")
    parser.add_argument("--snapshot", default=None, help="resume from this .solverstate")
    parser.add_argument("--gpu", default=None,
                        help="GPU id(s) to train on: 0, 0,1,2,3 or all (one replica per GPU; default: the CPU)")
    parser.add_argument("--devices", default=None,
                        help="devices, e.g. gpu:0,gpu:1, cpu or cpu:4 (4 CPU replicas: the multi-device logic "
                             "without GPUs)")
    parser.add_argument("--mpi", action="store_true",
                        help="use MPI even if no launcher is detected (detected from OMPI_COMM_WORLD_SIZE, "
                             "PMI_SIZE, PMIX_SIZE or MV2_COMM_WORLD_SIZE); each rank takes its share of every "
                             "batch, rank 0 logs and snapshots")
    parser.add_argument("--iterations", type=int, default=None, help="override the solver's max_iter")
    parser.add_argument("--sigint_effect", "--sigint-effect", dest="sigint_effect", default="stop",
                        choices=sorted(EFFECTS), help="what Ctrl-C does (default: stop, after a snapshot)")
    parser.add_argument("--sighup_effect", "--sighup-effect", dest="sighup_effect", default="snapshot",
                        choices=sorted(EFFECTS), help="what SIGHUP does (default: snapshot and go on)")
    parser.add_argument("--level", type=int, default=0, help="the train net state's level")
    parser.add_argument("--stage", default="", help="the train net state's stages, comma separated")
    parser.add_argument("--log", default=None, help="also append the log to this file")


def run(args):
    comm = parallel.mpi_comm(force=args.mpi)
    with parallel.abort_on_failure(comm):
        return _train(args, comm)


def _train(args, comm):
    if args.snapshot and (args.weights or args.init_from_a or args.weights_layers):
        raise VggtoolError("give a snapshot to resume training or weights to fine-tune, but not both "
                           "(--snapshot with --weights)")
    only = None
    if args.init_from_a and args.weights_layers:
        raise VggtoolError("--init-from-a already names the layers; do not combine it with --weights-layers")
    if args.init_from_a:
        only = INIT_FROM_A_LAYERS
    elif args.weights_layers:
        only = tuple(s.strip() for s in args.weights_layers.split(",") if s.strip())
    if only is not None and not args.weights:
        raise VggtoolError("--weights-layers / --init-from-a need --weights W.caffemodel")
    devices = backend.parse_devices(args.gpu, args.devices)
    rank = comm.Get_rank() if comm else 0
    param = prototxt.read_solver_param(args.solver)
    if args.iterations is not None:
        if args.iterations < 0:
            raise VggtoolError(f"--iterations must be >= 0, got {args.iterations}")
        param.max_iter = args.iterations
    if args.level:
        param.train_state.level = args.level
    param.train_state.stage.extend(s for s in args.stage.split(",") if s)
    log = GLog(args.log) if rank == 0 else GLog(stream=False)  # only rank 0 logs
    try:
        if len(devices) == 1 and comm is None:
            solver = Solver(param, source=args.solver, device=devices[0], log=log)
        else:
            solver = parallel.ParallelSolver(param, source=args.solver, devices=devices, comm=comm, log=log)
        weights = [w for w in (args.weights.split(",") if args.weights else []) if w] + list(param.weights)
        for w in weights if rank == 0 else ():  # other ranks receive the weights from rank 0
            copy_weights(solver, w, only, log)
        with _signals(solver, args):
            solver.solve(resume=args.snapshot)
    finally:
        log.close()
    return 0


class _signals:
    """Route SIGINT/SIGHUP to the solver's requested action for the duration of training."""

    def __init__(self, solver, args):
        self.solver = solver
        self.effects = {signal.SIGINT: EFFECTS[args.sigint_effect]}
        if hasattr(signal, "SIGHUP"):
            self.effects[signal.SIGHUP] = EFFECTS[args.sighup_effect]
        self.saved = {}

    def _handle(self, signum, frame):
        self.solver.requested_action = self.effects.get(signum, NONE)

    def __enter__(self):
        # Under MPI only rank 0 acts on signals (the launcher forwards them to every rank); it broadcasts
        # the action, so the other ranks ignore them.
        follower = getattr(self.solver, "rank", 0) != 0
        for sig, effect in self.effects.items():
            try:
                # 'none' leaves the signal without effect, as in Caffe
                self.saved[sig] = signal.signal(sig, signal.SIG_IGN if follower else self._handle)
            except ValueError:  # not the main thread: keep Python's defaults
                pass
        return self

    def __exit__(self, *exc):
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)
        return False
