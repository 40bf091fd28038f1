"""Data-parallel steps over a communicator (fastbp.parallel.comm), through the engine's public steps.

Synchronous mode gives the parameters of one process to rounding; local SGD
(sync_every > 1) trades that for fewer collectives. Loss and weight totals are
summed over the ranks in float64 once per call, so histories match one process.
"""
import math

import numpy as np

from ..core.errors import InputError
from .comm import checksum


class DistributedRows:
    """The engine's step-taker under a communicator with size > 1 (Engine(distributed=...)): every rank
    walks the same global batches of the same data and computes its slice of each."""

    def __init__(self, engine, sync_every=1):
        self.engine, self.sync_every = engine, sync_every

    def train_rows(self, X, Y, weights, order, hyper):
        if self.sync_every > 1:
            return self._local_sgd(X, Y, weights, order, hyper)
        engine, comm = self.engine, self.engine.comm
        batch = min(engine.batch_size, len(order))
        order = np.ascontiguousarray(order, dtype=np.int64)
        steps = SynchronousSteps(engine, hyper)
        for start in range(0, len(order), batch):
            m = min(batch, len(order) - start)
            weight = rows_weight(weights, order, start, m)
            if weight <= 0:
                continue
            r0, r1 = start + comm.rank * m // comm.size, start + (comm.rank + 1) * m // comm.size
            if not steps.step(X, Y, weights, order, r0, r1 - r0, weight):
                return float("nan")
        return steps.finish()

    def _local_sgd(self, X, Y, weights, order, hyper):
        """Each rank trains on its slice of every global batch, in local batches of ceil(batch / ranks)
        rows; all ranks take the same number of steps (a rank whose slices ran out idles), so their
        parameter averages line up."""
        engine = self.engine
        rank, size = engine.comm.rank, engine.comm.size
        batch = min(engine.batch_size, len(order))
        starts = range(0, len(order), batch)

        def slice_of(r, s):
            m = min(batch, len(order) - s)
            return s + r * m // size, s + (r + 1) * m // size

        mine = np.concatenate([order[slice(*slice_of(rank, s))] for s in starts])
        local_batch = -(-batch // size)
        n_steps = max(-(-sum(b - a for a, b in (slice_of(r, s) for s in starts)) // local_batch)
                      for r in range(size))
        steps = LocalSteps(engine, hyper, self.sync_every, own_data=False)
        for step in range(n_steps):
            first = min(step * local_batch, len(mine))
            steps.step(X, Y, weights, mine, first, min(local_batch, len(mine) - first))
        return steps.finish()


def rank_steps(engine, hyper, sync_every):
    """The step-taker for ranks that each hold their own rows: synchronous, or local SGD (sync_every > 1)."""
    if sync_every > 1:
        return LocalSteps(engine, hyper, sync_every)
    return SynchronousSteps(engine, hyper, own_data=True)


class SynchronousSteps:
    """One synchronous step per global batch: each rank computes the gradient of its rows (compiled),
    one Allreduce sums gradient and loss, every rank applies the same update.

    `batch_weight` is the step's weight summed over all ranks when every rank knows it (the same
    global batch everywhere), or None when ranks hold their own rows: each rank's weight then
    travels in the same Allreduce and the summed gradient is scaled afterwards; a rank with no rows
    left passes rows=0 and still joins. With own_data, dropout masks also depend on the rank (its
    row numbers are local, so they would repeat across ranks).
    """

    def __init__(self, engine, hyper, own_data=False):
        self.engine, self.hyper = engine, hyper
        P, R = engine.params.size, engine.n_table_rows
        # gradient, embedding rows looked up, loss, weight: one Allreduce
        self.buf = np.empty(P + R + 2, dtype=engine.params.dtype)
        self.dropout_seed = rank_dropout_seed(engine, own_data)
        self.totals = np.zeros(2)  # this rank's loss and weight sums, float64

    def step(self, X, Y, weights, order, start, rows, batch_weight=None):
        """Take one step on rows order[start:start+rows] of this rank; False if the loss is not finite."""
        engine = self.engine
        buf = self.buf
        P = engine.params.size
        grad, touched = buf[:P], buf[P:-2]
        loss_at, weight_at = buf.size - 2, buf.size - 1  # after the gradient and the marks
        epr = engine.net.loss_elements
        buf[P:] = 0
        loss = 0.0
        local_weight = 0.0
        if rows > 0:
            local_weight = rows_weight(weights, order, start, rows)
            one = engine.params.dtype.type(1.0)
            if batch_weight is None:  # the gradient is scaled by the summed weight after the Allreduce
                buf[weight_at] = local_weight
                scale = one / epr
            else:  # rounded as one process rounds it
                scale = one / engine.params.dtype.type(batch_weight * epr)
            loss = float(engine.batch_gradient(grad, X, Y, weights, order, start, rows, scale, self.hyper,
                                               self.dropout_seed, touched))
            buf[loss_at] = loss
        else:
            grad[:] = 0
        engine.comm.allreduce_sum(buf)  # the one collective per step: gradient, loss (and weight) together
        if batch_weight is None:
            batch_weight = float(buf[weight_at])
            if batch_weight <= 0:
                return True  # only zero-weight rows in this step, on every rank: nothing to learn
            grad *= engine.params.dtype.type(1.0 / batch_weight)
        if not math.isfinite(buf[loss_at]):
            return False
        coef = 1.0
        if engine.reg.clip_norm > 0:
            coef = min(1.0, engine.reg.clip_norm / (float(np.linalg.norm(grad.astype(np.float64))) + 1e-6))
        engine.apply_gradient(grad, self.hyper, coef, touched)
        self.totals += (loss, local_weight)
        return True

    def finish(self):
        """The mean loss of the steps taken, over every rank (summed in float64)."""
        totals = self.engine.comm.allreduce_sum(self.totals.copy())
        return totals[0] / (totals[1] * self.engine.net.loss_elements) if totals[1] else 0.0



def average_parameters(engine, weight=1.0):
    """Set every rank's parameters to the weighted mean over the ranks (local SGD's sync).

    weight: this rank's share, e.g. the steps it took since the last sync (0 = it only receives).
    """
    buf = np.empty(engine.params.size + 1, dtype=np.float64)
    buf[:-1] = engine.params
    buf[:-1] *= weight
    buf[-1] = weight
    engine.comm.allreduce_sum(buf)
    if buf[-1] > 0:
        engine.params[:] = buf[:-1] / buf[-1]


class LocalSteps:
    """Local SGD: each rank steps on its own batch; parameters are averaged (weighted by the steps
    each rank took) every sync_every steps and at the end (finish). Every rank must call step()
    equally often. own_data: the rows are numbered locally on each rank (dropout keys then include the rank)."""

    def __init__(self, engine, hyper, sync_every, own_data=True):
        self.engine, self.hyper, self.sync_every = engine, hyper, sync_every
        self.dropout_seed = rank_dropout_seed(engine, own_data)
        self.count, self.taken = 0, 0
        self.loss_rows = np.zeros(2)

    def step(self, X, Y, weights, order, start, rows, batch_weight=None):
        """Always True: a rank whose loss is NaN keeps stepping in lockstep (a diverging batch is not
        applied), so no rank is left waiting in a collective; the NaN reaches every rank through
        finish() at the end of the epoch."""
        if rows > 0:
            loss, _ = self.engine.train_rows_here(X, Y, weights, order[start:start + rows], self.hyper, rows,
                                                  self.dropout_seed)
            self.loss_rows += (loss * rows, rows)
            self.taken += 1
        self.count += 1
        if self.count % self.sync_every == 0:
            average_parameters(self.engine, self.taken)
            self.taken = 0
        return True

    def finish(self):
        if self.count % self.sync_every:
            average_parameters(self.engine, self.taken)
            self.taken = 0
        self.engine.comm.allreduce_sum(self.loss_rows)
        return self.loss_rows[0] / self.loss_rows[1] if self.loss_rows[1] else 0.0


def local_data_epochs(engine, X, Y, weights, sync_every):
    """The epoch source of Trainer.fit(local_data=True): each rank holds its own rows. Each epoch every
    rank shuffles its rows (a per-rank generator seeded from the shared one, which stays in step);
    step s averages the gradients of every rank's s-th batch of ceil(batch_size / ranks) rows, and
    ranks with fewer rows join the remaining steps with none."""
    comm = engine.comm
    sizes = comm.allgather(len(X))
    local_batch = -(-engine.batch_size // comm.size)
    n_steps = max(-(-n // local_batch) for n in sizes)

    def run_epoch(hyper):
        rng = np.random.default_rng([int(engine.state.shuffle_rng.integers(2 ** 63)), comm.rank])
        order = rng.permutation(len(X)) if engine.shuffle else np.arange(len(X))
        steps = rank_steps(engine, hyper, sync_every)
        for s in range(n_steps):
            start = min(s * local_batch, len(X))
            if not steps.step(X, Y, weights, order, start, min(local_batch, len(X) - start)):
                return float("nan"), sum(sizes)
        return steps.finish(), sum(sizes)

    return run_epoch


def rows_weight(weights, order, start, rows):
    """The summed weight of rows order[start:start+rows], in float64 as the compiled epoch sums it."""
    return float(weights[order[start:start + rows]].sum(dtype=np.float64)) if weights.size else float(rows)


def rank_dropout_seed(engine, own_data):
    return engine.reg.dropout_seed + (engine.comm.rank * 0x9E3779B9 if own_data else 0)


def check_ranks_share_data(comm, *arrays):
    """Under MPI every rank must pass the same rows (each computes its slice of every global batch);
    ranks with different data would walk different batch counts and wait on each other forever."""
    def fingerprint(a):
        if a is None or isinstance(a, tuple):
            return None if a is None else tuple(fingerprint(b) for b in a)
        a = np.asarray(a) if not hasattr(a, "shape") else a
        rows = np.unique(np.linspace(0, a.shape[0] - 1, 64).astype(np.int64)) if a.shape[0] else []
        return a.shape, checksum(np.asarray(a[rows]))
    prints = comm.allgather(fingerprint(arrays))
    if any(p != prints[0] for p in prints):
        differ = [r for r, p in enumerate(prints) if p != prints[0]]
        raise InputError(f"MPI ranks {differ} passed different training data than rank 0 (shapes or sampled "
                         "rows differ): every rank must call fit with the same X, y, weights and validation "
                         "data; each rank then computes its own slice of every batch")


def check_ranks_agree(comm, params, epoch):
    sums = comm.allgather(checksum(params))
    if len(set(sums)) > 1:
        raise RuntimeError(f"parameters differ across MPI ranks after epoch {epoch} (checksums {sums}); every "
                           "rank must see the same data, seed and options")


def labels_of_all_ranks(comm, labels):
    """The distinct labels over every rank (each rank may hold other rows), one array, the same everywhere.
    labels: this rank's, as inputs.label_column gives them."""
    if labels.ndim != 1:
        return labels  # multilabel columns are used as given
    local = np.unique(labels).tolist()
    return np.array([label for part in comm.allgather(local) for label in part])
