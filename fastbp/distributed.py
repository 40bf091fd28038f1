"""Data-parallel steps over a communicator (fastbp.comm): the trainer's per-batch loop when size > 1.

Synchronous mode gives the parameters of one process to rounding; local SGD
(sync_every > 1) trades that for fewer collectives.
"""
import math

import numpy as np

from . import kernels
from .config import resolve_n_threads, thread_limits
from .losses import elements_per_row
from .optim import update_all
from .passes import workspace


def rank_steps(trainer, max_rows, hyper):
    """The step-taker for ranks that each hold their own rows: synchronous, or local SGD (sync_every > 1)."""
    if trainer.sync_every > 1:
        return LocalSteps(trainer, hyper)
    return SynchronousSteps(trainer, max_rows, hyper, own_data=True)


class SynchronousSteps:
    """One synchronous step per global batch: each rank computes the gradient of its rows (compiled),
    one Allreduce sums gradient and loss, every rank applies the same update.

    `batch_weight` is the step's weight summed over all ranks when every rank knows it (the same
    global batch everywhere), or None when ranks hold their own rows: each rank's weight then
    travels in the same Allreduce and the summed gradient is scaled afterwards; a rank with no rows
    left passes rows=0 and still joins. With own_data, dropout masks also depend on the rank (its
    row numbers are local, so they would repeat across ranks).
    """

    def __init__(self, trainer, max_rows, hyper, own_data=False):
        self.trainer, self.hyper = trainer, hyper
        P = trainer.params.size
        if getattr(trainer, "_dist_ws", (0,))[0] < max_rows:
            trainer._dist_ws = (max_rows, *workspace(trainer.layout.sizes, trainer._act_codes, max_rows,
                                                     trainer.params.dtype),
                                np.empty(P + 2, dtype=trainer.params.dtype))
        self.ws = trainer._dist_ws
        self.dropout_seed = _rank_dropout_seed(trainer, own_data)
        self.n_threads = resolve_n_threads(trainer.n_threads)
        self.epr = elements_per_row(trainer._loss_code, trainer.layout.n_out)
        self.total, self.total_weight = 0.0, 0.0

    def __enter__(self):
        self._limits = thread_limits(self.n_threads, 1)
        self._limits.__enter__()
        return self

    def __exit__(self, *exc):
        return self._limits.__exit__(*exc)

    def step(self, X, Y, weights, order, start, rows, batch_weight=None):
        """Take one step on rows order[start:start+rows] of this rank; False if the loss is not finite."""
        tr = self.trainer
        capacity, acts, zs, deltas, buf = self.ws
        P = tr.params.size
        grad = buf[:P]
        dtype = tr.params.dtype.type
        t = int(tr._opt_step[0]) + 1
        buf[P:] = 0
        if rows > 0:
            if batch_weight is None:  # the gradient is scaled by the summed weight after the Allreduce
                buf[P + 1] = float(weights[order[start:start + rows]].sum()) if weights.size else float(rows)
                scale = 1.0 / self.epr
            else:
                scale = 1.0 / (batch_weight * self.epr)
            buf[P] = kernels.batch_gradient(
                tr.params, grad, tr.layout.sizes, tr.layout.w_offsets, tr._act_codes, tr._loss_code,
                dtype(tr.huber_delta), acts, zs, deltas, capacity, X, Y, weights, order, start, rows,
                dtype(scale), min(self.n_threads, rows), dtype(0.0), tr._dropout, self.dropout_seed, dtype(0.0),
                tr._optimizer.code, tr._opt_state, t, self.hyper, False)
        else:
            grad[:] = 0
        tr._comm.allreduce_sum(buf)  # the one collective per step: gradient, loss (and weight) together
        if batch_weight is None:
            batch_weight = float(buf[P + 1])
            if batch_weight <= 0:
                return True  # only zero-weight rows in this step, on every rank: nothing to learn
            grad *= dtype(1.0 / batch_weight)
        if not math.isfinite(buf[P]):
            return False
        coef = 1.0
        if tr.clip_grad_norm:
            coef = min(1.0, tr.clip_grad_norm / (float(np.linalg.norm(grad.astype(np.float64))) + 1e-6))
        update_all(tr._optimizer.code, tr.params, grad, tr._opt_state, t, self.hyper, dtype(coef))
        tr._opt_step[0] = t
        self.total += float(buf[P])
        self.total_weight += batch_weight
        return True

    def mean_loss(self):
        return self.total / (self.total_weight * self.epr) if self.total_weight else 0.0


def average_parameters(trainer, weight=1.0):
    """Set every rank's parameters to the weighted mean over the ranks (local SGD's sync).

    weight: this rank's share, e.g. the steps it took since the last sync (0 = it only receives).
    """
    buf = np.empty(trainer.params.size + 1, dtype=np.float64)
    buf[:-1] = trainer.params
    buf[:-1] *= weight
    buf[-1] = weight
    trainer._comm.allreduce_sum(buf)
    if buf[-1] > 0:
        trainer.params[:] = buf[:-1] / buf[-1]


class LocalSteps:
    """Local SGD: each rank steps on its own batch; parameters are averaged (weighted by the steps
    each rank took) every sync_every steps and at the end. Every rank must call step() equally often.
    own_data: the rows are numbered locally on each rank (dropout keys then include the rank)."""

    def __init__(self, trainer, hyper, own_data=True):
        self.trainer, self.hyper, self.own_data = trainer, hyper, own_data
        self.count, self.taken = 0, 0
        self.loss_rows = np.zeros(2)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None and self.count % self.trainer.sync_every:
            average_parameters(self.trainer, self.taken)

    def step(self, X, Y, weights, order, start, rows, batch_weight=None):
        """Always True: a rank whose loss is NaN keeps stepping in lockstep (a diverging batch is not
        applied), so no rank is left waiting in a collective; the NaN reaches every rank through
        mean_loss at the end of the epoch."""
        if rows > 0:
            loss = train_local_steps(self.trainer, X, Y, weights, order[start:start + rows], rows, self.hyper,
                                     self.own_data)
            self.loss_rows += (loss * rows, rows)
            self.taken += 1
        self.count += 1
        if self.count % self.trainer.sync_every == 0:
            average_parameters(self.trainer, self.taken)
            self.taken = 0
        return True

    def mean_loss(self):
        self.trainer._comm.allreduce_sum(self.loss_rows)
        return self.loss_rows[0] / self.loss_rows[1] if self.loss_rows[1] else 0.0


def local_data_epochs(trainer, X, Y, weights):
    """run_epoch for Trainer.fit(local_data=True): each rank holds its own rows. Each epoch every
    rank shuffles its rows (a per-rank generator seeded from the shared one, which stays in step);
    step s averages the gradients of every rank's s-th batch of ceil(batch_size / ranks) rows, and
    ranks with fewer rows join the remaining steps with none."""
    comm = trainer._comm
    sizes = comm.allgather(len(X))
    local_batch = -(-trainer.batch_size // comm.size)
    n_steps = max(-(-n // local_batch) for n in sizes)

    def run_epoch(hyper):
        rng = np.random.default_rng([int(trainer._shuffle_rng.integers(2 ** 63)), comm.rank])
        order = rng.permutation(len(X)) if trainer.shuffle else np.arange(len(X))
        with rank_steps(trainer, local_batch, hyper) as steps:
            for s in range(n_steps):
                start = min(s * local_batch, len(X))
                if not steps.step(X, Y, weights, order, start, min(local_batch, len(X) - start)):
                    return float("nan"), sum(sizes)
        return steps.mean_loss(), sum(sizes)

    return run_epoch


def train_rows_distributed(trainer, X, Y, weights, order, hyper):
    """Every rank walks the same global batches of the same data and computes its slice of each.

    With sync_every = K > 1 ("local SGD", approximate): each rank steps on its own slice's mean
    gradient, and the parameters are averaged over the ranks every K batches and at the end.
    """
    if trainer.sync_every > 1:
        return _train_rows_local_sgd(trainer, X, Y, weights, order, hyper)
    comm = trainer._comm
    batch = min(trainer.batch_size, len(order))
    order = np.ascontiguousarray(order, dtype=np.int64)
    with SynchronousSteps(trainer, -(-batch // comm.size), hyper) as steps:
        for start in range(0, len(order), batch):
            m = min(batch, len(order) - start)
            weight = float(weights[order[start:start + m]].sum()) if weights.size else float(m)
            if weight <= 0:
                continue
            r0, r1 = start + comm.rank * m // comm.size, start + (comm.rank + 1) * m // comm.size
            if not steps.step(X, Y, weights, order, r0, r1 - r0, weight):
                return float("nan")
    return steps.mean_loss()


def _train_rows_local_sgd(trainer, X, Y, weights, order, hyper):
    """Each rank trains on its slice of every global batch, in local batches of ceil(batch / ranks)
    rows; all ranks take the same number of steps (a rank whose slices ran out idles), so their
    parameter averages line up."""
    comm, size = trainer._comm, trainer._comm.size
    batch = min(trainer.batch_size, len(order))
    starts = range(0, len(order), batch)

    def slice_of(rank, s):
        m = min(batch, len(order) - s)
        return s + rank * m // size, s + (rank + 1) * m // size

    mine = np.concatenate([order[slice(*slice_of(comm.rank, s))] for s in starts])
    local_batch = -(-batch // size)
    n_steps = max(-(-sum(b - a for a, b in (slice_of(r, s) for s in starts)) // local_batch) for r in range(size))
    with LocalSteps(trainer, hyper, own_data=False) as steps:
        for step in range(n_steps):
            first = min(step * local_batch, len(mine))
            steps.step(X, Y, weights, mine, first, min(local_batch, len(mine) - first))
    return steps.mean_loss()


def train_local_steps(trainer, X, Y, weights, rows, local_batch, hyper, own_data=False):
    """Steps of this rank alone over X[rows] in batches of local_batch; returns their mean loss.
    own_data: the rows are this rank's own (numbered locally), so the rank is mixed into dropout keys."""
    saved, trainer.batch_size = trainer.batch_size, local_batch
    try:
        return trainer._train_rows_single(X, Y, weights, rows, hyper, _rank_dropout_seed(trainer, own_data))
    finally:
        trainer.batch_size = saved


def _rank_dropout_seed(trainer, own_data):
    return trainer._dropout_seed + (trainer._comm.rank * 0x9E3779B9 if own_data else 0)
