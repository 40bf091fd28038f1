"""Training from a file in bounded memory: shuffled chunks through a fixed-size row buffer.

Each epoch visits the source's chunks in an order drawn from the trainer's shuffle
RNG (row groups / memmap slices; CSV blocks stay in file order), transforms each
chunk, and fills a buffer of `buffer_rows` rows (a whole number of batches). A
full buffer is trained in a random row order by the same compiled epoch kernel
as in-memory data; the last, partial buffer ends the epoch. Memory is the buffer,
one chunk, and the validation sample - never the file. Validation rows (chosen by
a stateless hash of the row number) are skipped here.

Under MPI there are two ways to share a file between ranks (`shard`):
- "rows": every rank walks the same global batches as one process would and
  transforms only its slice of each; the parameters equal one process's, but every
  rank reads every chunk (of a memory-mapped .npy, only its rows).
- "chunks": each epoch's shuffled chunk order is dealt out round-robin, so each rank
  reads only its own chunks (.npy slices, Parquet row groups) into its own buffer;
  step s averages the gradients of every rank's s-th local batch. A valid
  data-parallel run, but its batches differ from one process's (not bit-equal).
"auto" picks "chunks" for Parquet and "rows" for the others (arrays keep the result
of one process; ranks on one machine share the mapped pages of a .npy; CSV cannot be
split without reading all of it).
"""
import numpy as np

from .distributed import rank_steps
from .preprocess import holdout_mask
from .sources import chunk_readers

SHARD_MODES = ("auto", "rows", "chunks")


class StreamStats:
    """What the loader held at most, for tests and reports."""

    def __init__(self):
        self.max_buffer_rows = 0
        self.max_chunk_rows = 0
        self.rows_per_epoch = 0
        self.chunks_read = []  # this rank's chunk numbers in the last epoch


def fit_source(trainer, source, prep, train_rows, buffer_rows=262_144, val_split=0.0, seed=0, validation=None,
               callbacks=None, verbose=None, stats=None, shard="auto"):
    """Train `trainer` for its `epochs` on `source` (columns mapped by the fitted `prep`).

    train_rows: the training rows per epoch (from Preprocessor.fit), so every buffer's size,
    and so its row order, is known before it is filled. Under MPI, `shard` says how ranks
    split the file (see the module notes).
    """
    if train_rows < 1:
        raise ValueError("no training rows were read from the data")
    stats = stats if stats is not None else StreamStats()
    if shard_mode(shard, source, trainer._comm.size) == "chunks":
        run_epoch = _chunk_sharded_epochs(trainer, source, prep, train_rows, buffer_rows, val_split, seed, stats)
    else:
        run_epoch = _row_exact_epochs(trainer, source, prep, train_rows, buffer_rows, val_split, seed, stats)
    return trainer._fit_loop(run_epoch, validation, callbacks, verbose)


def shard_mode(shard, source, ranks):
    """The mode ("rows" or "chunks") that `shard` means for this source and rank count; errors say why not."""
    if shard not in SHARD_MODES:
        raise ValueError(f"shard must be one of {', '.join(SHARD_MODES)}, got {shard!r}")
    if shard == "chunks" and source.chunk_starts is None:
        raise ValueError(f"{source.path!r}: a CSV file cannot be split into chunks without reading all of it; "
                         "convert it to Parquet (or .npy) to shard it, or use shard 'rows'")
    if ranks == 1:
        return "rows"
    if shard == "chunks" and source.n_chunks < ranks:
        raise ValueError(f"{source.path!r} has {source.n_chunks} chunk(s) for {ranks} ranks; write it in smaller "
                         "row groups (or pass smaller --chunk-rows for .npy), or use shard 'rows'")
    if shard == "auto":
        chunked = source.shard_by_chunks and source.n_chunks >= ranks
        return "chunks" if chunked else "rows"
    return shard


def _read_training_rows(source, prep, columns, order, val_split, seed, stats, dtype):
    """(start row, X, y) of the training rows of each chunk, in the given chunk order."""
    for start, n, read in chunk_readers(source, columns, order):
        stats.max_chunk_rows = max(stats.max_chunk_rows, n)
        kept = np.flatnonzero(~holdout_mask(seed, np.arange(start, start + n), val_split))
        X, y = prep.transform(read(kept), start, dtype=dtype)
        del read  # the chunk goes before the next one is read
        yield start, X, y


def _chunk_sharded_epochs(trainer, source, prep, train_rows, buffer_rows, val_split, seed, stats):
    """run_epoch for shard="chunks": each rank trains on its own chunks; see the module notes."""
    comm = trainer._comm
    ranks = comm.size
    starts = source.chunk_starts
    # training rows per chunk, from the stateless hold-out hash: every rank knows every rank's
    # row count, so all agree on the number of steps without talking
    counts = np.array([int((~holdout_mask(seed, np.arange(a, b), val_split)).sum())
                       for a, b in zip(starts[:-1], starts[1:])])
    if counts.sum() != train_rows:
        raise ValueError(f"the file has {counts.sum()} training rows now, but the first pass counted {train_rows}; "
                         "was the file changed during training?")
    local_batch = -(-trainer.batch_size // ranks)
    buffer_rows = max(local_batch, int(buffer_rows) // local_batch * local_batch)
    dtype = trainer.params.dtype
    Xbuf = np.empty((min(buffer_rows, train_rows), prep.n_inputs), dtype=dtype)
    Ybuf = np.empty((len(Xbuf), 1), dtype=dtype)
    no_weights = np.empty(0, dtype=dtype)
    columns = prep.features + [prep.target]

    def run_epoch(hyper):
        order = trainer._shuffle_rng.permutation(source.n_chunks) if trainer.shuffle else np.arange(source.n_chunks)
        # rows within a rank's buffer are shuffled by a per-rank generator, so the shared one stays in step
        buffer_rng = np.random.default_rng([int(trainer._shuffle_rng.integers(2 ** 63)), comm.rank])
        rows_of = [int(counts[order[r::ranks]].sum()) for r in range(ranks)]
        n_steps = max(-(-n // local_batch) for n in rows_of)
        mine = order[comm.rank::ranks]
        stats.chunks_read = [int(k) for k in mine]
        steps = rank_steps(trainer, local_batch, hyper)
        step = 0
        with steps:
            def train_buffer(size):
                nonlocal step
                stats.max_buffer_rows = max(stats.max_buffer_rows, size)
                perm = buffer_rng.permutation(size) if trainer.shuffle else np.arange(size)
                for s in range(0, size, local_batch):
                    m = min(local_batch, size - s)
                    if not steps.step(Xbuf, Ybuf, no_weights, perm, s, m):
                        return False
                    step += 1
                return True

            filled, rows = 0, 0
            for _, X, y in _read_training_rows(source, prep, columns, mine, val_split, seed, stats, dtype):
                if rows + filled + len(y) > rows_of[comm.rank]:
                    raise ValueError("the data has more training rows than its first pass counted; "
                                     "was the file changed during training?")
                pos = 0
                while pos < len(y):
                    take = min(len(Xbuf) - filled, len(y) - pos)
                    Xbuf[filled:filled + take] = X[pos:pos + take]
                    Ybuf[filled:filled + take, 0] = y[pos:pos + take]
                    filled, pos = filled + take, pos + take
                    if filled == len(Xbuf):
                        if not train_buffer(filled):
                            return float("nan"), train_rows
                        rows, filled = rows + filled, 0
            if rows + filled != rows_of[comm.rank]:
                raise ValueError(f"read {rows + filled} training rows of this rank's chunks, but the first pass "
                                 f"counted {rows_of[comm.rank]}; was the file changed during training?")
            if filled and not train_buffer(filled):
                return float("nan"), train_rows
            while step < n_steps:  # this rank's chunks are used up: it joins the others' remaining steps
                if not steps.step(Xbuf, Ybuf, no_weights, np.arange(1), 0, 0):
                    return float("nan"), train_rows
                step += 1
        stats.rows_per_epoch = train_rows
        return steps.mean_loss(), train_rows

    return run_epoch


def _row_exact_epochs(trainer, source, prep, train_rows, buffer_rows, val_split, seed, stats):
    """run_epoch for one process and for shard="rows" (equal to one process under MPI)."""
    batch = trainer.batch_size
    buffer_rows = max(batch, int(buffer_rows) // batch * batch)
    dtype = trainer.params.dtype
    Xbuf = np.empty((min(buffer_rows, max(train_rows, 1)), prep.n_inputs), dtype=dtype)
    Ybuf = np.empty((len(Xbuf), 1), dtype=dtype)
    no_weights = np.empty(0, dtype=dtype)
    columns = prep.features + [prep.target]
    comm = trainer._comm

    def plan(first_row):
        """(size, row order, rows this rank needs or None) of the buffer starting at this epoch row."""
        n = min(buffer_rows, train_rows - first_row)
        perm = trainer._shuffle_rng.permutation(n) if trainer.shuffle else np.arange(n)
        if comm.size == 1:
            return n, perm, None
        need = np.zeros(n, dtype=bool)
        for s in range(0, n, batch):
            m = min(batch, n - s)
            need[perm[s + comm.rank * m // comm.size:s + (comm.rank + 1) * m // comm.size]] = True
        return n, perm, need

    def run_epoch(hyper):
        order = None
        if source.shuffleable and trainer.shuffle and source.n_chunks:
            order = trainer._shuffle_rng.permutation(source.n_chunks)
        total, rows, filled = 0.0, 0, 0
        size, perm, need = plan(0)
        for start, n, read in chunk_readers(source, columns, order):
            stats.max_chunk_rows = max(stats.max_chunk_rows, n)
            kept = np.flatnonzero(~holdout_mask(seed, np.arange(start, start + n), val_split))
            if need is None:  # one process: transform the whole chunk at once
                X, y = prep.transform(read(kept), start, dtype=dtype)
            pos = 0
            while pos < len(kept):
                if rows + filled >= train_rows:
                    raise ValueError("the data has more training rows than its first pass counted; "
                                     "was the file changed during training?")
                take = min(size - filled, len(kept) - pos)
                if need is None:
                    Xbuf[filled:filled + take] = X[pos:pos + take]
                    Ybuf[filled:filled + take, 0] = y[pos:pos + take]
                else:
                    mine = np.flatnonzero(need[filled:filled + take])
                    # only this rank's rows of the chunk: a memory-mapped .npy reads just those
                    Xs, ys = prep.transform(read(kept[pos:pos + take][mine]), start, dtype=dtype)
                    Xbuf[filled + mine] = Xs
                    Ybuf[filled + mine, 0] = ys
                filled += take
                pos += take
                if filled == size:
                    stats.max_buffer_rows = max(stats.max_buffer_rows, size)
                    loss = trainer._train_rows(Xbuf[:size], Ybuf[:size], no_weights, perm, hyper)
                    if not np.isfinite(loss):
                        return float("nan"), rows
                    total += loss * size
                    rows += size
                    filled = 0
                    if rows < train_rows:
                        size, perm, need = plan(rows)
            del read  # the chunk goes before the next one is read
        if rows != train_rows:
            raise ValueError(f"read {rows + filled} training rows, but the first pass counted {train_rows}; "
                             "was the file changed during training?")
        stats.rows_per_epoch = rows
        return total / rows, rows

    return run_epoch
