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

from ..atomic_files import remove_stale_temporaries
from ..backend import CPU, host_float, to_numpy
from ..errors import VggtoolError
from ..io import prototxt
from ..io.upgrade import upgrade_solver
from ..layers import kernels
from ..net import Net
from ..proto import caffe_pb2
from . import lr_policy, nets, scoring, snapshot
from .glog import GLog, fmt
from . import sgd
from .sgd import RULES, UPDATE_CHUNK
from .snapshot import TrainingDiverged


def _copy(message):
    out = type(message)()
    out.CopyFrom(message)
    return out


# what a signal asks the solver to do (Caffe's SolverAction)
NONE, STOP, SNAPSHOT = "none", "stop", "snapshot"


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
    train_batch_shares = 1  # replicas' shares in each train net's batch (a lane run as one pass: parallel)
    net_class = Net  # the class of the train and test nets (vggtool.pycaffe builds its own Net)
    # the train net shares its memory (settings.share_memory 'auto'; vggtool.net.pool): after a step an
    # intermediate blob's data and diff are not kept. pycaffe's solvers turn this off (Caffe keeps them).
    pool_train_memory = True

    def __init__(self, param, *, source=None, device=CPU, dtype=np.float32, log=None, seed=None):
        if not isinstance(param, caffe_pb2.SolverParameter):
            source = str(param)
            param = prototxt.read_solver_param(param)
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
    def _init_train_net(self, dtype):
        return nets.build_train_net(self, dtype)

    def _init_test_nets(self, dtype):
        return nets.build_test_nets(self, dtype)

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
        """Two work arrays of `shape`, views of buffers of at most UPDATE_CHUNK elements (allocated once)."""
        count = math.prod(shape)
        if getattr(self, "_scratch_bufs", None) is None or self._scratch_bufs[0].size < count:
            biggest = min(UPDATE_CHUNK, max(lp.blob.count for lp in self.net.learnable_params))
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
        diffs = [lp.blob.diff for lp in self.net.learnable_params]
        with self.device:
            loss64 = xp.asarray(loss, dtype=np.float64)
            if diffs and kernels.usable(*diffs):  # one C pass per diff, no float64 sum (CPU)
                total = loss64 if all(kernels.all_finite(d) for d in diffs) else np.float64(np.nan)
            else:  # the sum is finite exactly when every value is: it stays on the device
                total = loss64
                for d in diffs:
                    total = total + xp.sum(d, dtype=np.float64)
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
                sgd.update_in_chunks(xp, self.rule, lp.blob.data, lp.blob.diff, self.param_history(i),
                                     decay=p.weight_decay * lp.decay_mult, l1=p.regularization_type != "L2",
                                     iter_size=p.iter_size, local_rate=rate * lp.lr_mult, it=self.iter,
                                     scratch=self._scratch)

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
        with self.net.blas_on_one_thread():  # the whole iteration: tests, passes and update
            while self.iter < stop_iter:
                if p.test_interval and self.iter % p.test_interval == 0 and (self.iter > 0 or p.test_initialization):
                    self.raise_if_diverged()
                    self.test_all()
                    if self.requested_early_exit:
                        break
                display = p.display and self.iter % p.display == 0
                self.net.debug_info = bool(display and p.debug_info)  # Caffe's Step: the displayed iterations
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
        result = scoring.run_batches(self, net, p.test_iter[i], self.test_round() * p.test_iter[i], STOP, NONE)
        if result is None:
            return None
        sums, loss = result
        if p.test_compute_loss:
            self.log.info("solver.cpp:401", f"Test loss: {fmt(loss / p.test_iter[i])}")
        scores = scoring.mean_scores(net.outputs, sums, p.test_iter[i])
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
        for where, line in scoring.output_lines(net, kind, values):
            self.log.info(where, line)

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
        where no next iteration has checked them); see snapshot.checked_snapshot."""
        return snapshot.checked_snapshot(self)

    def snapshot(self):
        """Write <prefix>_iter_N.caffemodel and .solverstate atomically (refusing non-finite weights)."""
        return snapshot.write_snapshot(self)

    def restore(self, path):
        """Resume from a .solverstate: weights (learned_net), history, iteration, multistep and plateau state."""
        snapshot.restore(self, path)


def get_solver(path, **kwargs):
    """A Solver from a solver prototxt path or SolverParameter (pycaffe's caffe.get_solver)."""
    return Solver(path, **kwargs)
