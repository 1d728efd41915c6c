"""`vggtool train`: Caffe's `caffe train` (train from a solver prototxt, fine-tune, resume)."""
import signal

from .. import backend, protoio
from ..errors import VggtoolError
from ..solvers import NONE, SNAPSHOT, STOP, Solver
from ..solvers.glog import GLog

HELP = "train a net from a solver prototxt (Caffe's `caffe train`)"

# The paper initialises the deeper nets B..E from net A's first four conv layers and last three FC layers.
INIT_FROM_A_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv3_2", "fc6", "fc7", "fc8")
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
    parser.add_argument("--gpu", default=None, help="GPU id to train on (default: the CPU)")
    parser.add_argument("--devices", default=None, help="devices, e.g. gpu:0 or cpu (one device for now)")
    parser.add_argument("--iterations", type=int, default=None, help="override the solver's max_iter")
    parser.add_argument("--sigint_effect", "--sigint-effect", dest="sigint_effect", default="stop",
                        choices=sorted(EFFECTS), help="what Ctrl-C does (default: stop, after a snapshot)")
    parser.add_argument("--sighup_effect", "--sighup-effect", dest="sighup_effect", default="snapshot",
                        choices=sorted(EFFECTS), help="what SIGHUP does (default: snapshot and go on)")
    parser.add_argument("--level", type=int, default=0, help="the train net state's level")
    parser.add_argument("--stage", default="", help="the train net state's stages, comma separated")
    parser.add_argument("--log", default=None, help="also append the log to this file")


def _device(args):
    devices = backend.parse_devices(args.gpu, args.devices)
    if len(devices) > 1:
        raise VggtoolError(f"multi-device training ({len(devices)} devices requested): see the multi-device "
                           "training section of the README (vggtool.parallel); `vggtool train` runs on one "
                           "device")
    return devices[0]


def run(args):
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
    device = _device(args)
    param = protoio.read_solver_param(args.solver)
    if args.iterations is not None:
        if args.iterations < 0:
            raise VggtoolError(f"--iterations must be >= 0, got {args.iterations}")
        param.max_iter = args.iterations
    if args.level:
        param.train_state.level = args.level
    param.train_state.stage.extend(s for s in args.stage.split(",") if s)
    log = GLog(args.log)
    try:
        solver = Solver(param, source=args.solver, device=device, log=log)
        weights = [w for w in (args.weights.split(",") if args.weights else []) if w] + list(param.weights)
        for w in weights:
            _copy_weights(solver, w, only, log)
        with _signals(solver, args):
            solver.solve(resume=args.snapshot)
    finally:
        log.close()
    return 0


def _copy_weights(solver, path, only, log):
    log.info("solver.cpp:72", f"Finetuning from {path}")
    source = protoio.read_net_param(path, is_text=False)
    if only is not None:
        names = {layer.name for layer in source.layer if len(layer.blobs)}
        absent = [n for n in only if n not in names]
        if absent:
            raise VggtoolError(f"{path}: has no parameter layer(s) named {', '.join(absent)} (asked for by "
                               f"--weights-layers / --init-from-a)")
    report = solver.net.copy_from(source, only=only)
    for line in report.lines():
        log.info("net.cpp:1137", line)
    kept = [name for name, layer in solver.net.layer_dict.items() if layer.blobs and name not in report.copied]
    if kept:
        log.info("net.cpp:1137", f"Not copied (keep their initialisation): {', '.join(kept)}")
    for net in solver.test_nets:  # layers only the test nets have (shared ones already hold the values)
        net.copy_from(source, only=only)


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
        for sig, effect in self.effects.items():
            try:
                # 'none' leaves the signal without effect, as in Caffe
                self.saved[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: keep Python's defaults
                pass
        return self

    def __exit__(self, *exc):
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)
        return False
