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


class SynchronousSteps:
    """One synchronous step per global batch: each rank computes the gradient of its rows (compiled),
    one Allreduce sums gradient and loss, every rank applies the same update.

    Ranks may hold different data (shards of a file): a rank with no rows left in a step passes
    rows=0 and still joins the Allreduce; `batch_weight` is the step's weight summed over all ranks.
    """

    def __init__(self, trainer, max_rows, hyper):
        self.trainer, self.hyper = trainer, hyper
        P = trainer.params.size
        if getattr(trainer, "_dist_ws", (0,))[0] < max_rows:
            trainer._dist_ws = (max_rows, *workspace(trainer.layout.sizes, trainer._act_codes, max_rows,
                                                     trainer.params.dtype),
                                np.empty(P + 1, dtype=trainer.params.dtype))
        self.ws = trainer._dist_ws
        self.n_threads = resolve_n_threads(trainer.n_threads)
        self.epr = elements_per_row(trainer._loss_code, trainer.layout.n_out)
        self.total, self.total_weight = 0.0, 0.0

    def __enter__(self):
        self._limits = thread_limits(self.n_threads, 1)
        self._limits.__enter__()
        return self

    def __exit__(self, *exc):
        return self._limits.__exit__(*exc)

    def step(self, X, Y, weights, order, start, rows, batch_weight):
        """Take one step on rows order[start:start+rows] of this rank; False if the loss is not finite."""
        tr = self.trainer
        capacity, acts, zs, deltas, buf = self.ws
        P = tr.params.size
        grad = buf[:P]
        dtype = tr.params.dtype.type
        t = int(tr._opt_step[0]) + 1
        if rows > 0:
            buf[P] = kernels.batch_gradient(
                tr.params, grad, tr.layout.sizes, tr.layout.w_offsets, tr._act_codes, tr._loss_code,
                dtype(tr.huber_delta), acts, zs, deltas, capacity, X, Y, weights, order, start, rows,
                dtype(1.0 / (batch_weight * self.epr)), min(self.n_threads, rows), dtype(0.0), tr._dropout,
                tr._dropout_seed, dtype(0.0), tr._optimizer.code, tr._opt_state, t, self.hyper, False)
        else:
            buf[:] = 0
        tr._comm.allreduce_sum(buf)  # the one collective per step: gradient and loss together
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
    comm, size = trainer._comm, trainer._comm.size
    batch = min(trainer.batch_size, len(order))
    # each rank trains on its slice of every global batch, as its own (smaller) batch
    mine = np.concatenate([order[s + comm.rank * min(batch, len(order) - s) // size:
                                 s + (comm.rank + 1) * min(batch, len(order) - s) // size]
                           for s in range(0, len(order), batch)])
    local_batch = -(-batch // size)
    n_steps = -(-len(mine) // local_batch)
    loss_sum = np.zeros(2)
    for first in range(0, n_steps, trainer.sync_every):
        rows = mine[first * local_batch:(first + trainer.sync_every) * local_batch]
        loss = train_local_steps(trainer, X, Y, weights, rows, local_batch, hyper)
        loss_sum += (loss * len(rows), len(rows))
        average_parameters(trainer)
    comm.allreduce_sum(loss_sum)
    return loss_sum[0] / loss_sum[1] if loss_sum[1] else 0.0


def train_local_steps(trainer, X, Y, weights, rows, local_batch, hyper):
    """Steps of this rank alone over X[rows] in batches of local_batch; returns their mean loss."""
    saved, trainer.batch_size = trainer.batch_size, local_batch
    try:
        return trainer._train_rows_single(X, Y, weights, rows, hyper)
    finally:
        trainer.batch_size = saved
