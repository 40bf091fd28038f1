"""The training engine: compiled steps on a TrainingState, and the one epoch loop.

An Engine is built for a run from the model (Net), its regularization, the optimizer
settings and the run settings (batch size, shuffle, threads, communicator). Epoch
sources - in-memory rows here, file rows (fastbp.files.streaming), MPI data
(fastbp.parallel) - are callables run_epoch(hyper) -> (mean loss, rows) that train
through the engine's public step methods; `run` drives them: schedule, divergence,
validation, callbacks. Nothing crosses back into Python per batch.
"""
import contextlib
import math
import sys
import threading
import time

import numpy as np

from ..core import kernels
from ..core.bundles import TABLE_ROWS, make_batch
from ..core.compile import announced_compiles
from ..core.threads import ThreadChooser, resolve_n_threads, thread_limits, threads_for
from ..core.layout import flops_per_row
from ..core.errors import InputError, InputTypeError, warn
from ..core.optim import update_all
from . import full_data, metrics
from .callbacks import Callback, EpochLogger, ProgressBar, on_terminal


class TrainingDiverged(FloatingPointError):
    """The training loss became NaN or infinite; parameters were restored to the last finite epoch."""


class SingleProcess:
    """The communicator of a run in one process (fastbp.parallel.comm has MPI's)."""
    rank, size = 0, 1

    def allreduce_sum(self, buf):
        return buf

    def bcast(self, buf, root=0):
        return buf

    def allgather(self, value):
        return [value]

    def barrier(self):
        pass


class Engine:
    """distributed: None, or a factory engine -> object with train_rows(X, Y, weights, order, hyper) that
    takes the steps under a communicator (fastbp.parallel). target_scale: the scale of a regression target the
    model learns standardized, so validation errors (rmse, mae) are reported on the target's own scale."""

    def __init__(self, state, net, regularization, optimizer, batch_size, shuffle=True, n_threads=None, comm=None,
                 distributed=None, target_scale=1.0):
        self.state, self.net, self.reg, self.optimizer = state, net, regularization, optimizer
        self.batch_size, self.shuffle = batch_size, shuffle
        self.n_threads = resolve_n_threads(n_threads)
        self.comm = comm if comm is not None else SingleProcess()
        self._workspaces = {}
        self._thread_chooser = ThreadChooser()
        self._distributed = distributed(self) if distributed is not None and self.comm.size > 1 else None
        self.target_scale = float(target_scale)

    @property
    def params(self):
        return self.state.params

    def workspace(self, capacity, purpose="train"):
        """The run's workspace and table marks for at least `capacity` rows (one per purpose, grown when needed)."""
        ws, marks = self._workspaces.get(purpose, (None, None))
        if ws is None or ws.capacity < capacity * self.net.members:
            ws, marks = self._workspaces[purpose] = (full_data.workspace(self.net, capacity, self.params.dtype),
                                                     full_data.table_marks(self.net, capacity, self.params.dtype))
        return ws, marks

    # ------------------------------------------------------------------ steps
    def hyper(self, epoch):
        """Epoch `epoch`'s hyper-parameters from the schedule (validated: a schedule may be user code)."""
        schedule = self.state.schedule
        lr = schedule.lr(epoch, self.optimizer.lr)
        if not (isinstance(lr, (int, float, np.floating)) and math.isfinite(lr) and lr > 0):
            raise InputError(f"the lr_schedule gave lr={lr!r} for epoch {epoch + 1}; it must be a positive number")
        momentum = schedule.momentum(epoch)
        return self.optimizer.hyper(lr=float(lr), momentum=momentum), float(lr)

    def train_rows(self, X, Y, weights, order, hyper):
        """Mini-batches over rows `order` of X (an epoch, or one streamed buffer); the mean loss.
        Under a communicator the distributed strategy takes the steps."""
        if self._distributed is not None:
            return self._distributed.train_rows(X, Y, weights, order, hyper)
        return self.train_rows_here(X, Y, weights, order, hyper)[0]

    def train_rows_here(self, X, Y, weights, order, hyper, batch_size=None, dropout_seed=None):
        """This process alone, one compiled call per segment of the ThreadChooser: (weighted mean loss, mean of
        batch losses by rows).
        batch_size / dropout_seed override the run's (local SGD's smaller batches, per-rank masks)."""
        batch_size = min(batch_size or self.batch_size, len(order))
        if batch_size == 0:
            return 0.0, 0.0
        ws, marks = self.workspace(batch_size)
        reg = self._regularization(dropout_seed)
        groups = self.threads_for_rows(batch_size)
        totals = np.zeros(3)  # loss sum, weight sum, sum of batch means x rows (kernels.train_epoch)
        batch = make_batch(X, Y, weights, order)
        n_batches = -(-len(order) // batch_size)
        with thread_limits(groups), announced_compiles(f"{kernels.build_name(self.net)} training"):
            for first, count, _ in self._thread_chooser.segments(n_batches, groups):
                segment = batch._replace(order=batch.order[first * batch_size:(first + count) * batch_size])
                kernels.train_epoch(totals, self.params, self.net, kernels.extras_of(self.net), ws, marks, reg,
                                    self.state.optimizer, hyper, segment, batch_size, groups)
                if not math.isfinite(totals[0]):
                    return math.nan, math.nan
        loss_sum, weight_sum, by_rows_sum = totals
        if weight_sum == 0:
            return 0.0, 0.0
        elements = self.net.loss_elements
        return loss_sum / (weight_sum * elements), by_rows_sum / (len(order) * elements)

    @property
    def n_table_rows(self):
        """Rows of every embedding table together: the length of the `touched` marks."""
        return int(self.net.tables[:, TABLE_ROWS].sum())

    def batch_gradient(self, grad, X, Y, weights, order, start, rows, scale, hyper, dropout_seed=None,
                       touched=None):
        """The gradient of scale * (loss sum of rows order[start:start+rows]) into `grad`, no step; the loss sum.
        touched (n_table_rows, model dtype, zeroed by the caller): the embedding table rows the batch looked up
        are marked non-zero there (apply_gradient steps those)."""
        ws, marks = self.workspace(rows, "gradient")
        ws = ws._replace(grad=grad)
        if touched is not None:
            marks = marks._replace(touched=touched)
        zero = self.params.dtype.type(0.0)
        threads = self.threads_for_rows(rows)
        with thread_limits(threads):
            return kernels.batch_gradient(self.params, self.net, kernels.extras_of(self.net), ws, marks,
                                          self._regularization(dropout_seed),
                                          self.state.optimizer, hyper,
                                          make_batch(X, Y, weights, order), start, rows,
                                          self.params.dtype.type(scale), min(threads, rows), zero, False)

    def threads_for_rows(self, rows):
        """Threads a training batch of `rows` rows pays for (config.threads_for)."""
        return threads_for(self.n_threads, rows * flops_per_row(self.net.sizes, members=self.net.members))

    def _regularization(self, dropout_seed):
        """The run's regularization, with another dropout seed when given (per-rank masks)."""
        return self.reg if dropout_seed is None else self.reg._replace(dropout_seed=int(dropout_seed))

    def apply_gradient(self, grad, hyper, coef=1.0, touched=None):
        """One optimizer step from coef * grad (parallel blocks) on the layers and on the embedding table rows
        marked in `touched` (batch_gradient's marks, summed over the ranks); advances the step counter."""
        if touched is None:
            touched = np.zeros(self.n_table_rows, dtype=self.params.dtype)
        with thread_limits(self.n_threads):
            update_all(self.state.optimizer, hyper, self.params, grad, self.params.dtype.type(coef), self.net,
                       touched)
        self.state.optimizer.step[0] += 1

    # ------------------------------------------------------------------ evaluation
    def logits(self, X):
        return full_data.forward(self.params, self.net, X, self.n_threads)

    def metric_part(self, X, Y, weights=None, roc_auc=True):
        return metrics.metric_part(self.net.loss_code, self.params.dtype.type(self.net.huber_delta), self.logits(X),
                                   Y, weights, roc_auc)

    def validation_metrics(self, X, Y, weights=None, is_local=False):
        """Metrics of the validation data; under a communicator each rank evaluates a slice (or,
        is_local, its own validation rows) and the parts combine."""
        comm = self.comm
        if comm.size == 1:
            return metrics.finish(self.metric_part(X, Y, weights), self.target_scale)
        lo, hi = (0, len(X)) if is_local else (comm.rank * len(X) // comm.size, (comm.rank + 1) * len(X) // comm.size)
        part = self.metric_part(X[lo:hi], Y[lo:hi], None if weights is None else weights[lo:hi]) if hi > lo else None
        return metrics.finish(metrics.combine(comm.allgather(part)), self.target_scale)

    # ------------------------------------------------------------------ the epoch loop
    def run(self, run_epoch, epochs, owner, validation=None, callbacks=(), verbose=0, on_divergence="raise",
            validation_is_local=False, after_epoch=None, between_epochs=None):
        """`epochs` epochs of run_epoch(hyper) -> (mean loss, rows): schedule, divergence, validation,
        callbacks (called with `owner`, which they may stop by setting owner.stop_training).
        after_epoch(epoch) runs after each finished epoch (e.g. the MPI agreement check); between_epochs() after its
        callbacks, where the state is whole (ModelLock.between_epochs)."""
        state = self.state
        callbacks = _with_display(callbacks, verbose if self.comm.rank == 0 else 0)
        log_keys = ["epoch", "loss", "lr", "seconds", "samples_per_s"]
        if validation is not None:
            log_keys += [f"val_{name}" for name in metrics.names(self.net.loss_code, int(self.net.sizes[-1]))]
        for cb in callbacks:
            cb.check_logs(log_keys)
        state.schedule.start(epochs, len(state.history))
        owner.stop_training = False
        for cb in callbacks:
            cb.on_train_begin(owner)
        try:
            for _ in range(epochs):
                epoch = len(state.history)
                hyper, lr = self.hyper(epoch)
                if hyper.momentum > 0:
                    state.ensure_state(self.optimizer.state_names(schedule_momentum=True))
                backup = state.snapshot()
                try:
                    start = time.perf_counter()
                    loss, n = run_epoch(hyper)
                    seconds = time.perf_counter() - start
                    if not math.isfinite(loss):
                        state.restore(backup)
                        message = (f"training diverged in epoch {epoch + 1}: the loss became NaN or infinite. "
                                   f"Parameters are restored to the end of the last finite epoch. Try a lower "
                                   f"learning rate (lr={lr:g}), clip_grad_norm, standardized features, or float64.")
                        if on_divergence == "raise":
                            raise TrainingDiverged(message)
                        warn(message, RuntimeWarning)
                        break
                    logs = {"epoch": epoch + 1, "loss": float(loss), "lr": lr, "seconds": seconds,
                            "samples_per_s": n / seconds if seconds > 0 else float("inf")}
                    if validation is not None:
                        logs.update({f"val_{k}": v for k, v in
                                     self.validation_metrics(*validation, is_local=validation_is_local).items()})
                    if after_epoch is not None:
                        after_epoch(epoch + 1)
                    state.schedule.observe(logs)
                    state.history.append(logs)
                except TrainingDiverged:
                    raise
                except BaseException:
                    # Ctrl-C, a failing reader or a bug before the epoch is recorded: back to its start,
                    # RNG and schedule included, so a checkpoint written now resumes bit-identically
                    state.restore(backup)
                    raise
                for cb in callbacks:
                    cb.on_epoch_end(owner, epoch + 1, logs)
                if between_epochs is not None:
                    between_epochs()
                if owner.stop_training:
                    break
        finally:
            for cb in callbacks:
                cb.on_train_end(owner)

    def in_memory_epochs(self, X, Y, weights):
        """The epoch source of rows held in memory: a fresh shuffle per epoch from the state's RNG."""
        n = X.shape[0]

        def run_epoch(hyper):
            order = self.state.shuffle_rng.permutation(n) if self.shuffle else np.arange(n)
            return self.train_rows(X, Y, weights, order, hyper), n

        return run_epoch


class ModelLock:
    """One model read from any thread while it trains in one: fit holds the lock for its whole run and hands it
    to the readers waiting (save, pickle, predict, summary...) only between epochs, so they see the state at the
    end of the last whole epoch, never parameters from the middle of one with the history of another. A second
    concurrent fit is refused (the state would interleave silently)."""

    def __init__(self):
        self._lock = threading.Condition(threading.RLock())  # reentrant: fit's callbacks may save or predict
        self._counts = threading.Lock()
        self._fitting = False
        self._arrived = self._served = 0  # readers that asked, and those let in

    @contextlib.contextmanager
    def training(self):
        with self._counts:
            if self._fitting:
                raise RuntimeError("fit is already running on this model; a model trains in one thread at a time "
                                   "(use one Trainer per thread)")
            self._fitting = True
        try:
            with self._lock:
                yield
        finally:
            self._fitting = False

    @contextlib.contextmanager
    def reading(self):
        with self._counts:
            self._arrived += 1
        with self._lock:  # waits for the end of the epoch when fit runs in another thread
            with self._counts:
                self._served += 1
            self._lock.notify_all()
            yield

    def between_epochs(self):
        """Called by the training thread where the state is whole: the readers that arrived until now go first
        (later ones wait for the next epoch's end, so readers in a loop cannot hold training up)."""
        with self._counts:
            arrived = self._arrived
        self._lock.wait_for(lambda: self._served >= arrived)

    # a copied or unpickled model gets a lock of its own, free: no fit runs on it yet
    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__()


def _with_display(callbacks, verbose):
    callbacks = list(callbacks or [])
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise InputTypeError(f"callbacks must be fastbp.Callback instances, got {cb!r}")
    if verbose == 1:
        callbacks.append(ProgressBar() if on_terminal(sys.stderr) else EpochLogger(file=sys.stderr))
    elif verbose == 2:
        callbacks.append(EpochLogger())
    return callbacks
