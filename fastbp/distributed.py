"""Data-parallel epochs over a communicator (fastbp.comm): the trainer's per-batch loop when size > 1.

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


def train_rows_distributed(trainer, X, Y, weights, order, hyper):
    """Synchronous data parallelism: every rank walks the same global batches, computes the gradient
    of its slice of each (compiled), one Allreduce sums gradient and loss, every rank takes the same step.

    With sync_every = K > 1 ("local SGD", approximate): each rank steps on its own slice's mean
    gradient, and the parameters are averaged over the ranks every K batches and at the end.
    """
    if trainer.sync_every > 1:
        return _train_rows_local_sgd(trainer, X, Y, weights, order, hyper)
    comm, P = trainer._comm, trainer.params.size
    batch = min(trainer.batch_size, len(order))
    local = -(-batch // comm.size)
    if getattr(trainer, "_dist_ws", (0,))[0] < local:
        trainer._dist_ws = (local, *workspace(trainer.layout.sizes, trainer._act_codes, local, trainer.params.dtype),
                            np.empty(P + 1, dtype=trainer.params.dtype))
    _, acts, zs, deltas, buf = trainer._dist_ws
    grad = buf[:P]
    dtype = trainer.params.dtype.type
    n_threads = resolve_n_threads(trainer.n_threads)
    epr = elements_per_row(trainer._loss_code, trainer.layout.n_out)
    order = np.ascontiguousarray(order, dtype=np.int64)
    total, total_weight = 0.0, 0.0
    with thread_limits(n_threads, 1):
        for start in range(0, len(order), batch):
            m = min(batch, len(order) - start)
            weight = float(weights[order[start:start + m]].sum()) if weights.size else float(m)
            if weight <= 0:
                continue
            r0, r1 = start + comm.rank * m // comm.size, start + (comm.rank + 1) * m // comm.size
            t = int(trainer._opt_step[0]) + 1
            if r1 > r0:
                buf[P] = kernels.batch_gradient(
                    trainer.params, grad, trainer.layout.sizes, trainer.layout.w_offsets, trainer._act_codes,
                    trainer._loss_code, dtype(trainer.huber_delta), acts, zs, deltas, local, X, Y, weights, order, r0,
                    r1 - r0, dtype(1.0 / (weight * epr)), min(n_threads, r1 - r0), dtype(0.0), trainer._dropout,
                    trainer._dropout_seed, dtype(0.0), trainer._optimizer.code, trainer._opt_state, t, hyper, False)
            else:
                buf[:] = 0
            comm.allreduce_sum(buf)  # the one collective per batch: gradient and loss together
            if not math.isfinite(buf[P]):
                return float("nan")
            coef = 1.0
            if trainer.clip_grad_norm:
                coef = min(1.0, trainer.clip_grad_norm / (float(np.linalg.norm(grad.astype(np.float64))) + 1e-6))
            update_all(trainer._optimizer.code, trainer.params, grad, trainer._opt_state, t, hyper, dtype(coef))
            trainer._opt_step[0] = t
            total += float(buf[P])
            total_weight += weight
    return total / (total_weight * epr) if total_weight else 0.0

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
        saved, trainer.batch_size = trainer.batch_size, local_batch
        try:
            loss = trainer._train_rows_single(X, Y, weights, rows, hyper)
        finally:
            trainer.batch_size = saved
        loss_sum += (loss * len(rows), len(rows))
        comm.allreduce_sum(trainer.params)
        trainer.params /= size
    comm.allreduce_sum(loss_sum)
    return loss_sum[0] / loss_sum[1] if loss_sum[1] else 0.0
