"""The solver: Caffe's Solver + SGDSolver loop (src/caffe/solver.cpp, solvers/sgd_solver.cpp).

One iteration, in Caffe's fixed order:
  clear param diffs -> (test when due) -> iter_size forward/backward passes accumulating diffs ->
  check the loss and gradients are finite -> learning rate -> clip gradients (global L2 norm) ->
  normalise by iter_size -> regularise (L2 / L1, times decay_mult) -> update value per solver type ->
  apply (w -= diff) -> iter += 1 -> snapshot / signal handling.
`compute_gradients()` and `apply_update()` are separate so a multi-device wrapper can run several
replicas' forward/backward, sum their diffs into this solver's net and then call `apply_update()`.
"""
import math
import os
import time

import numpy as np

from .. import protoio
from ..atomic_files import remove_stale_temporaries
from ..backend import CPU, host_bool, host_float, to_numpy
from ..errors import VggtoolError
from ..net import Net
from ..proto import caffe_pb2
from . import lr_policy, snapshot
from .glog import GLog, fmt
from ..upgrade import upgrade_solver
from .sgd import RULES


def _copy(message):
    out = type(message)()
    out.CopyFrom(message)
    return out


class TrainingDiverged(VggtoolError):
    """The loss or a gradient became NaN/inf; no snapshot of the bad weights is written."""


# what a signal asks the solver to do (Caffe's SolverAction)
NONE, STOP, SNAPSHOT = "none", "stop", "snapshot"


def _resolve_net_path(path, solver_path, field):
    """Caffe resolves net paths against the cwd; we also accept them relative to the solver's folder."""
    if os.path.exists(path) or solver_path is None:
        if not os.path.exists(path):
            raise VggtoolError(f"solver field '{field}': net file '{path}' not found")
        return path
    beside = os.path.join(os.path.dirname(os.path.abspath(solver_path)), path)
    if os.path.exists(beside):
        return beside
    raise VggtoolError(f"{solver_path}: {field}: net file '{path}' not found (looked relative to the current "
                       f"directory and to the solver file's folder)")


def check_param(param, source):
    """Refuse settings Caffe would abort on (or that cannot train), naming the field."""
    if param.base_lr <= 0:
        raise VggtoolError(f"{source}: base_lr must be > 0, got {param.base_lr}")
    if param.type not in RULES:
        raise VggtoolError(f"{source}: unknown solver type '{param.type}' (known: {', '.join(RULES)})")
    lr_policy.check_policy(param, source)
    if param.regularization_type not in ("L1", "L2"):
        raise VggtoolError(f"{source}: unknown regularization_type '{param.regularization_type}' (L1 or L2)")
    if param.iter_size < 1:
        raise VggtoolError(f"{source}: iter_size must be >= 1, got {param.iter_size}")
    if param.average_loss < 1:
        raise VggtoolError(f"{source}: average_loss must be >= 1, got {param.average_loss}")
    if param.max_iter < 0:
        raise VggtoolError(f"{source}: max_iter must be >= 0, got {param.max_iter}")
    if param.snapshot_format != caffe_pb2.SolverParameter.BINARYPROTO:
        raise VggtoolError(f"{source}: snapshot_format HDF5 is not supported; use BINARYPROTO")


class Solver:
    """pycaffe-like: `.net`, `.test_nets`, `.iter`, `.step(n)`, `.solve(resume=None)`, `.snapshot()`,
    `.restore(path)`."""

    train_batch_divisor = 1  # replicas sharing each train batch (vggtool.solvers.parallel sets it)
    net_class = Net  # the class of the train and test nets (vggtool.pycaffe builds its own Net)

    def __init__(self, param, *, source=None, device=CPU, dtype=np.float32, log=None, seed=None):
        if not isinstance(param, caffe_pb2.SolverParameter):
            source = str(param)
            param = protoio.read_solver_param(param)
        else:
            param = upgrade_solver(_copy(param))  # the deprecated solver_type enum -> type
        self.param = param
        self.source = source or "solver"
        self.log = log if log is not None else GLog()
        check_param(param, self.source)
        self.rule = RULES[param.type](param)
        self.rule.check(self.source)
        self.device = device
        if seed is None:
            seed = param.random_seed if param.random_seed >= 0 else \
                int(np.random.SeedSequence().entropy % (2**31))
        self.seed = int(seed)
        self.iter = 0
        self.current_step = 0
        self.plateau = lr_policy.Plateau(param)
        self.requested_action = NONE  # set by a signal handler; read after each iteration
        self.requested_early_exit = False
        self.last_test_scores = {}
        self.log.info("solver.cpp:45", f"Initializing solver from parameters: (type {param.type}, "
                                       f"base_lr {fmt(param.base_lr)}, lr_policy {param.lr_policy}, "
                                       f"random_seed {self.seed})")
        self.net = self._init_train_net(dtype)
        self.test_nets = self._init_test_nets(dtype)
        self._check_plateau()
        self.prefix = param.snapshot_prefix or (os.path.splitext(self.source)[0] if source else "snapshot")
        if param.snapshot:
            snapshot.check_prefix_writable(self.prefix)
        for path in remove_stale_temporaries(self.prefix + "_iter_"):  # what a killed run left unfinished
            self.log.info("solver.cpp:1", f"Removed the unfinished temporary file {path} of a killed run")
        self.history = self._zero_history()
        self.log.info("solver.cpp:57", "Solver scaffolding done.")

    # -- construction ------------------------------------------------------------------------------------
    def _net_from(self, kind, dtype, phase, state):
        """Build a net from a path (resolved) or an inline NetParameter."""
        kind_field, value = kind
        if isinstance(value, caffe_pb2.NetParameter):
            net_param = caffe_pb2.NetParameter()
            net_param.CopyFrom(value)
            label = f"{self.source}:{kind_field}"
        else:
            path = _resolve_net_path(value, self.source if self.source != "solver" else None, kind_field)
            net_param = protoio.read_net_param(path)
            label = path
        # the solver's state replaces the net's own (Caffe: net_state merged from the solver)
        merged = caffe_pb2.NetState()
        merged.CopyFrom(net_param.state)
        merged.MergeFrom(state)
        merged.phase = phase
        net_param.state.CopyFrom(merged)
        return self.net_class(net_param, phase=phase, stages=tuple(merged.stage), level=merged.level,
                   device=self.device, dtype=dtype, seed=self.seed, source=label,
                   batch_divisor=self.train_batch_divisor if phase == caffe_pb2.TRAIN else 1, log=self.log)

    def _init_train_net(self, dtype):
        p = self.param
        given = [(f, getattr(p, f)) for f in ("train_net_param", "train_net", "net_param", "net") if p.HasField(f)]
        if len(given) != 1:
            raise VggtoolError(f"{self.source}: give exactly one of net, net_param, train_net, train_net_param "
                               f"(found {len(given)}: {', '.join(f for f, _ in given) or 'none'})")
        self.log.info("solver.cpp:88", f"Creating training net from {given[0][0]}")
        net = self._net_from(given[0], dtype, caffe_pb2.TRAIN, p.train_state)
        if not net.learnable_params:
            self.log.warning("solver.cpp:88", f"training net '{net.name}' has no learnable parameters")
        return net

    def _init_test_nets(self, dtype):
        p = self.param
        sources = [("test_net_param", n) for n in p.test_net_param] + [("test_net", n) for n in p.test_net]
        generic = None
        if p.HasField("net_param"):
            generic = ("net_param", p.net_param)
        elif p.HasField("net"):
            generic = ("net", p.net)
        n_specific = len(sources)
        if generic is not None:
            if len(p.test_iter) < n_specific:
                raise VggtoolError(f"{self.source}: test_iter must be given for each test network "
                                   f"({n_specific} test nets, {len(p.test_iter)} test_iter)")
            sources += [generic] * (len(p.test_iter) - n_specific)
        elif len(p.test_iter) != n_specific:
            raise VggtoolError(f"{self.source}: test_iter must be given for each test network "
                               f"({n_specific} test nets, {len(p.test_iter)} test_iter)")
        if p.test_state and len(p.test_state) != len(sources):
            raise VggtoolError(f"{self.source}: test_state must be unspecified or given once per test net "
                               f"({len(sources)} test nets, {len(p.test_state)} test_state)")
        if sources and p.test_interval <= 0:
            raise VggtoolError(f"{self.source}: test_interval must be > 0 when test nets are defined")
        nets = []
        for i, src in enumerate(sources):
            state = p.test_state[i] if p.test_state else caffe_pb2.NetState()
            self.log.info("solver.cpp:190", f"Creating test net (#{i}) specified by {src[0]}")
            net = self._net_from(src, dtype, caffe_pb2.TEST, state)
            self._share_trained_layers(net)
            nets.append(net)
        return nets

    def _share_trained_layers(self, test_net):
        """Test nets use the train net's weights (Caffe's ShareTrainedLayersWith), by layer name."""
        for name, layer in test_net.layer_dict.items():
            src = self.net.layer_dict.get(name)
            if src is None or not layer.blobs:
                continue
            if len(src.blobs) != len(layer.blobs):
                raise VggtoolError(f"layer '{name}' has {len(src.blobs)} parameter blob(s) in the train net but "
                                   f"{len(layer.blobs)} in test net '{test_net.source}'")
            for k, (a, b) in enumerate(zip(src.blobs, layer.blobs)):
                if a.shape != b.shape:
                    raise VggtoolError(f"layer '{name}' param {k}: shape {a.shape_string()} in the train net but "
                                       f"{b.shape_string()} in test net '{test_net.source}'")
                b.share_data(a)

    def _check_plateau(self):
        p = self.param
        if p.lr_policy != "plateau":
            return
        if not 0 <= p.plateau_test_net < len(self.test_nets):
            raise VggtoolError(f"{self.source}: lr_policy 'plateau' watches test net #{p.plateau_test_net} but "
                               f"the solver defines {len(self.test_nets)} test net(s)")
        net = self.test_nets[p.plateau_test_net]
        if p.plateau_output not in net.outputs:
            raise VggtoolError(f"{self.source}: plateau_output '{p.plateau_output}' is not an output of test net "
                               f"#{p.plateau_test_net} (outputs: {', '.join(net.outputs) or 'none'})")

    def _zero_history(self):
        xp = self.net.xp
        with self.device:
            return [xp.zeros(lp.blob.shape, dtype=self.net.dtype)
                    for _ in range(self.rule.history_per_param) for lp in self.net.learnable_params]

    def _scratch(self, shape):
        """Two work arrays of `shape`, views of buffers sized for the largest parameter (allocated once)."""
        count = math.prod(shape)
        if getattr(self, "_scratch_bufs", None) is None or self._scratch_bufs[0].size < count:
            biggest = max(lp.blob.count for lp in self.net.learnable_params)
            with self.device:
                self._scratch_bufs = [self.net.xp.empty(max(biggest, count), dtype=self.net.dtype) for _ in range(2)]
        return [b[:count].reshape(shape) for b in self._scratch_bufs]

    def param_history(self, i):
        n = len(self.net.learnable_params)
        return [self.history[i + j * n] for j in range(self.rule.history_per_param)]

    # -- gradients ---------------------------------------------------------------------------------------
    def forward_backward_micro(self, k, net=None, sample_offset=0):
        """One forward/backward pass (micro-batch k of this iteration) of `net` (default: the train net; a
        multi-device wrapper passes its replicas and their first sample's index in the whole batch); diffs
        accumulate. Returns the loss (device scalar). Per-sample random draws depend on
        (seed, iter * iter_size + k, sample index)."""
        net = self.net if net is None else net
        net.iteration = self.iter * self.param.iter_size + k
        net.sample_offset = sample_offset
        return net.forward_backward()

    def compute_gradients(self):
        """Clear diffs and run iter_size passes; return the mean loss (device scalar). A multi-device
        wrapper overrides this: replicas' passes, their diffs summed into self.net, then apply_update()."""
        self.net.clear_param_diffs()
        loss = 0.0
        for k in range(self.param.iter_size):
            loss = loss + self.forward_backward_micro(k)
        return loss / self.param.iter_size

    def check_finite(self, loss):
        """Note on the device, without waiting for it, the first iteration whose loss or gradients are not
        finite; raise_if_diverged reads that note where the loop reads the device anyway (display), before a
        snapshot, a test and at the end of a step, so the weights that diverged are never saved."""
        xp = self.net.xp
        with self.device:
            loss64 = xp.asarray(loss, dtype=np.float64)
            total = loss64
            for lp in self.net.learnable_params:
                total = total + xp.sum(lp.blob.diff, dtype=np.float64)
            note = xp.stack([xp.asarray(self.iter, dtype=np.int64), (~xp.isfinite(loss64)).astype(np.int64)])
            first = getattr(self, "_divergence", None)
            fresh = ~xp.isfinite(total) if first is None else (~xp.isfinite(total)) & (first[0] < 0)
            self._divergence = xp.where(fresh, note, xp.asarray([-1, 0]) if first is None else first)

    def raise_if_diverged(self):
        """Stop with the first iteration and layer where NaN/inf appeared (data first, then diffs)."""
        note = getattr(self, "_divergence", None)
        if note is None:
            return
        bad_iter, loss_bad = (int(v) for v in to_numpy(note))
        if bad_iter < 0:
            return
        what = "loss" if loss_bad else "gradient"
        layer = self.net.first_nonfinite_layer() or self.net.first_nonfinite_layer(diff=True)
        where = f" (first non-finite values in layer '{layer}')" if layer else ""
        raise TrainingDiverged(f"iteration {bad_iter}: the {what} is not finite{where}; training stopped. "
                               f"No snapshot of these weights was written; lower base_lr or check the data.")

    # -- the update ----------------------------------------------------------------------------------------
    def learning_rate(self):
        p = self.param
        if p.lr_policy == "multistep":
            step = lr_policy.advance_multistep(p, self.iter, self.current_step)
            if step != self.current_step:
                self.current_step = step
                self.log.info("sgd_solver.cpp:50", f"MultiStep Status: Iteration {self.iter}, step = {step}")
        return lr_policy.learning_rate(p, self.iter, self.current_step, self.plateau.drops)

    def clip_gradients(self):
        clip = self.param.clip_gradients
        if clip < 0:
            return
        xp = self.net.xp
        with self.device:  # the sum on the device; one value comes back (Caffe too reads the norm each time)
            sumsq = sum(xp.vdot(lp.blob.diff.ravel(), lp.blob.diff.ravel()) for lp in self.net.learnable_params)
        norm = math.sqrt(host_float(sumsq))
        if norm > clip:
            scale = clip / norm
            self.log.info("sgd_solver.cpp:99", f"Gradient clipping: scaling down gradients (L2 norm {fmt(norm)} > "
                                               f"{fmt(clip)}) by scale factor {fmt(scale)}")
            for lp in self.net.learnable_params:
                d = lp.blob.diff
                d *= scale

    def apply_update(self):
        """Everything after the gradients: rate, clip, normalise, regularise, update rule, w -= diff."""
        p = self.param
        rate = self.learning_rate()
        if p.display and self.iter % p.display == 0:
            self.log.info("sgd_solver.cpp:112", f"Iteration {self.iter}, lr = {fmt(rate)}")
        self.clip_gradients()
        xp = self.net.xp
        with self.device:
            for i, lp in enumerate(self.net.learnable_params):
                if lp.lr_mult == 0:
                    continue  # frozen: the weights cannot move (Caffe computes a zero update)
                g = lp.blob.diff
                w = lp.blob.data
                if p.iter_size > 1:
                    g *= 1.0 / p.iter_size
                tmp = self._scratch(g.shape)
                decay = p.weight_decay * lp.decay_mult
                if decay:
                    if p.regularization_type == "L2":
                        xp.multiply(w, decay, out=tmp[0])
                    else:
                        xp.sign(w, out=tmp[0])
                        tmp[0] *= decay
                    g += tmp[0]
                self.rule.update(g, self.param_history(i), rate * lp.lr_mult, self.iter, tmp)
                w -= g

    # -- the loop ------------------------------------------------------------------------------------------
    def step(self, iters):
        """Run `iters` iterations (Caffe's Solver::Step). A snapshot due at iteration k (Caffe writes it
        right after the update that reached k) is written once the loss and gradients of iteration k are
        known to be finite, so the weights that diverge are never saved."""
        p = self.param
        stop_iter = self.iter + int(iters)
        losses = []
        last_display, timer = self.iter, time.perf_counter()
        snapshot_due = False
        while self.iter < stop_iter:
            if p.test_interval and self.iter % p.test_interval == 0 and (self.iter > 0 or p.test_initialization):
                self.raise_if_diverged()
                self.test_all()
                if self.requested_early_exit:
                    break
            display = p.display and self.iter % p.display == 0
            with np.errstate(over="ignore", invalid="ignore"):  # NaN/inf are reported by check_finite
                loss = self.compute_gradients()
            self.check_finite(loss)
            if snapshot_due or display:
                self.raise_if_diverged()
            if snapshot_due:
                self.snapshot()
                snapshot_due = False
            losses.append(loss)  # device scalars: read only for a display (Caffe's smoothed loss)
            losses = losses[-p.average_loss:]
            if display:
                lapse = time.perf_counter() - timer
                per_s = (self.iter - last_display) / (lapse or 1)
                smoothed = host_float(sum(losses) / len(losses))
                self.log.info("solver.cpp:239", f"Iteration {self.iter} ({fmt(per_s)} iter/s, {fmt(lapse)}s/"
                                                f"{p.display} iters), loss = {fmt(smoothed)}")
                timer, last_display = time.perf_counter(), self.iter
                self._log_outputs(self.net, "Train", {})
            with np.errstate(over="ignore", invalid="ignore"):  # overflowing weights: caught next iteration
                self.apply_update()
            self.iter += 1
            action, self.requested_action = self.requested_action, NONE
            snapshot_due = bool(p.snapshot and self.iter % p.snapshot == 0) or action == SNAPSHOT
            if action == STOP:
                self.requested_early_exit = True
                break
        self.raise_if_diverged()
        self.smoothed_loss = host_float(sum(losses) / len(losses)) if losses else None
        if snapshot_due:
            self.checked_snapshot()

    def solve(self, resume=None):
        """Caffe's Solver::Solve: optionally restore, run to max_iter, final snapshot and test."""
        p = self.param
        self.log.info("solver.cpp:289", f"Solving {self.net.name}")
        self.log.info("solver.cpp:290", f"Learning Rate Policy: {p.lr_policy}")
        self.requested_early_exit = False
        if resume:
            self.log.info("solver.cpp:296", f"Restoring previous solver status from {resume}")
            self.restore(resume)
        self.step(p.max_iter - self.iter)
        self.log_skipped_records(self.net, "Train net, end of training")
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
            self.checked_snapshot()
        if self.requested_early_exit:
            self.log.info("solver.cpp:311", "Optimization stopped early.")
            return
        if p.display and self.iter % p.display == 0:
            loss = self.final_loss()
            self.log.info("solver.cpp:327", f"Iteration {self.iter}, loss = {fmt(loss)}")
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        self.log.info("solver.cpp:332", "Optimization Done.")

    def final_loss(self):
        """The loss shown after the last iteration (a forward pass on the next batch)."""
        self.net.iteration = self.iter * self.param.iter_size
        return host_float(self.net.forward_from_to())

    # -- testing -------------------------------------------------------------------------------------------
    def test_all(self):
        for i in range(len(self.test_nets)):
            if self.requested_early_exit:
                break
            scores = self.test(i)
            if (scores is not None and self.param.lr_policy == "plateau"
                    and i == self.param.plateau_test_net):
                self._observe_plateau(scores)

    def test(self, i):
        """Run test net i for test_iter[i] batches; log and return {output: mean value (list if >1 value)}."""
        p = self.param
        net = self.test_nets[i]
        self.log.info("solver.cpp:347", f"Iteration {self.iter}, Testing net (#{i})")
        sums = {name: None for name in net.outputs}
        loss = 0.0
        first_batch = self.test_round() * p.test_iter[i]
        net.restore_batch_positions([(0, None)] * len(net.layers))  # no carry-over from an earlier round
        for k in range(p.test_iter[i]):
            action = self.requested_action
            if action == STOP:
                self.requested_action = NONE
                self.requested_early_exit = True
                self.log.info("solver.cpp:396", "Test interrupted.")
                return None
            net.iteration = first_batch + k
            net.sample_offset = 0
            batch_loss = net.forward_from_to()
            if p.test_compute_loss:
                loss += float(batch_loss)
            for name in net.outputs:
                v = to_numpy(net.blobs[name].data).astype(np.float64).ravel()
                sums[name] = v.copy() if sums[name] is None else sums[name] + v
        if p.test_compute_loss:
            self.log.info("solver.cpp:401", f"Test loss: {fmt(loss / p.test_iter[i])}")
        scores = {}
        for name in net.outputs:
            means = sums[name] / p.test_iter[i] if sums[name] is not None else np.zeros(0)
            scores[name] = float(means[0]) if means.size == 1 else list(means)
        self.last_test_scores[i] = scores
        self._log_outputs(net, "Test", {n: np.atleast_1d(scores[n]) for n in net.outputs})
        self.log_skipped_records(net, f"Test net (#{i})")
        return scores

    def log_skipped_records(self, net, what):
        """Warn with the data layers' counts of corrupt records skipped (none: nothing logged)."""
        for layer in net.layers:
            line = getattr(layer, "skipped_summary", lambda: None)()
            if line:
                self.log.warning("data.py:1", f"{what}: {line}")

    def test_round(self):
        """Index of the test round at this iteration (rounds at multiples of test_interval, the first at 0
        with test_initialization, else at test_interval). Round r reads test batches r * test_iter ...
        (r + 1) * test_iter - 1, as Caffe's test data cursor walks on; the batches follow from `iter`
        alone, so a resumed run tests on the same images as a straight one."""
        p = self.param
        if not p.test_interval:
            return 0
        r = self.iter // p.test_interval
        return r if p.test_initialization else max(0, r - 1)

    def _log_outputs(self, net, kind, values):
        index = 0
        for name in net.outputs:
            vals = values.get(name)
            if vals is None:
                vals = to_numpy(net.blobs[name].data).ravel()
            weight = net.blob_loss_weights.get(name, 0.0)
            for v in vals:
                extra = f" (* {fmt(weight)} = {fmt(weight * v)} loss)" if weight else ""
                where = "solver.cpp:258" if kind == "Train" else "solver.cpp:414"
                self.log.info(where, f"    {kind} net output #{index}: {name} = {fmt(v)}{extra}")
                index += 1

    def _observe_plateau(self, scores):
        p = self.param
        value = scores.get(p.plateau_output)
        if isinstance(value, list):
            raise VggtoolError(f"plateau_output '{p.plateau_output}' has {len(value)} values; it must be a scalar")
        before = lr_policy.learning_rate(p, self.iter, self.current_step, self.plateau.drops)
        if self.plateau.observe(value):
            after = lr_policy.learning_rate(p, self.iter, self.current_step, self.plateau.drops)
            self.log.info("sgd_solver.cpp:60", f"Plateau: {p.plateau_output} = {fmt(value)} did not improve on "
                                               f"{fmt(self.plateau.best)} for {p.plateau_patience} test round(s): "
                                               f"lr {fmt(before)} -> {fmt(after)} (drop {self.plateau.drops}/"
                                               f"{p.plateau_max_drops})")

    # -- snapshots -----------------------------------------------------------------------------------------
    def checked_snapshot(self):
        """snapshot() after a forward pass shows the loss of these weights is finite (at the end of a step,
        where no next iteration has checked them). The forward leaves the data where it was."""
        nets = getattr(self, "replicas", None) or [self.net]
        positions = [net.batch_positions() for net in nets]
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                loss = self.final_loss()
        finally:
            for net, saved in zip(nets, positions):
                net.restore_batch_positions(saved)
        if not math.isfinite(loss):
            layer = self.net.first_nonfinite_layer()
            where = f" (first non-finite values in layer '{layer}')" if layer else ""
            raise TrainingDiverged(f"iteration {self.iter}: the loss is not finite{where}; training stopped. "
                                   f"No snapshot of these weights was written; lower base_lr or check the data.")
        return self.snapshot()

    def snapshot(self):
        """Write <prefix>_iter_N.caffemodel and .solverstate atomically (refusing non-finite weights)."""
        xp = self.net.xp
        for lp in self.net.learnable_params:
            if not host_bool(xp.isfinite(lp.blob.data).all()):
                raise TrainingDiverged(f"iteration {self.iter}: weights of layer '{lp.layer}' are not finite; "
                                       f"no snapshot written (the last good snapshot is kept)")
        snapshot.check_prefix_writable(self.prefix)
        model = snapshot.snapshot_filename(self.prefix, self.iter, ".caffemodel")
        self.log.info("solver.cpp:464", f"Snapshotting to binary proto file {model}")
        # The model first, then the state that names it, each renamed into place only when complete and
        # synced: a process killed at any moment leaves every .solverstate with its whole .caffemodel.
        self.net.save(model, write_diff=self.param.snapshot_diff)
        state = snapshot.snapshot_filename(self.prefix, self.iter, ".solverstate")
        self.log.info("sgd_solver.cpp:284", f"Snapshotting solver state to binary proto file {state}")
        snapshot.write_state(state, self.iter, model, self.history, self.current_step, self.plateau)
        return model, state

    def restore(self, path):
        """Resume from a .solverstate: weights (learned_net), history, iteration, multistep and plateau state."""
        path = str(path)
        state = snapshot.read_state(path)
        history = snapshot.history_arrays(state, path)
        if len(history) != len(self.history):
            raise VggtoolError(f"{path}: holds {len(history)} history blob(s) but this {self.param.type} solver "
                               f"and net need {len(self.history)} (a state of another net or solver type?)")
        for i, ((shape, values), h) in enumerate(zip(history, self.history)):
            if values.size != h.size:
                raise VggtoolError(f"{path}: history blob {i} has shape {shape}, the net's parameter has "
                                   f"{tuple(h.shape)} (a state of another net?)")
        if state.learned_net:
            self.net.copy_from(snapshot.resolve_learned_net(state.learned_net, path))
        xp = self.net.xp
        for (shape, values), h in zip(history, self.history):
            h[...] = xp.asarray(values.reshape(h.shape), dtype=h.dtype)
        self.iter = int(state.iter)
        self.current_step = int(state.current_step)
        self.plateau.restore(state)


def get_solver(path, **kwargs):
    """A Solver from a solver prototxt path or SolverParameter (pycaffe's caffe.get_solver)."""
    return Solver(path, **kwargs)
