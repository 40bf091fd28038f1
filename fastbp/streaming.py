"""Training from a file in bounded memory: shuffled chunks through a fixed-size row buffer.

Each epoch visits the source's chunks in an order drawn from the trainer's shuffle
RNG (row groups / memmap slices; CSV blocks stay in file order), transforms each
chunk, and fills a buffer of `buffer_rows` rows (a whole number of batches). A
full buffer is trained in a random row order by the same compiled epoch kernel
as in-memory data; the last, partial buffer ends the epoch. Memory is the buffer,
one chunk, and the validation sample - never the file. Validation rows (chosen by
a stateless hash of the row number) are skipped here.
"""
import numpy as np

from .preprocess import holdout_mask


class StreamStats:
    """What the loader held at most, for tests and reports."""

    def __init__(self):
        self.max_buffer_rows = 0
        self.max_chunk_rows = 0
        self.rows_per_epoch = 0


def fit_source(trainer, source, prep, train_rows, buffer_rows=262_144, val_split=0.0, seed=0, validation=None,
               callbacks=None, verbose=None, stats=None):
    """Train `trainer` for its `epochs` on `source` (columns mapped by the fitted `prep`).

    train_rows: the training rows per epoch (from Preprocessor.fit), so every buffer's size,
    and so its row order, is known before it is filled. Under MPI each rank then transforms
    and copies only the buffer rows of its slices of each batch.
    """
    batch = trainer.batch_size
    buffer_rows = max(batch, int(buffer_rows) // batch * batch)
    dtype = trainer.params.dtype
    Xbuf = np.empty((min(buffer_rows, max(train_rows, 1)), prep.n_inputs), dtype=dtype)
    Ybuf = np.empty((len(Xbuf), 1), dtype=dtype)
    no_weights = np.empty(0, dtype=dtype)
    columns = prep.features + [prep.target]
    stats = stats if stats is not None else StreamStats()
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
        for start, chunk in source.chunks(columns, order):
            n = len(chunk[prep.target])
            stats.max_chunk_rows = max(stats.max_chunk_rows, n)
            kept = np.flatnonzero(~holdout_mask(seed, np.arange(start, start + n), val_split))
            if need is None:  # one process: transform the whole chunk at once
                X, y = prep.transform({c: v[kept] for c, v in chunk.items()}, start)
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
                    sub = kept[pos:pos + take][mine]
                    Xs, ys = prep.transform({c: v[sub] for c, v in chunk.items()}, start)
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
            del chunk
        if rows != train_rows:
            raise ValueError(f"read {rows + filled} training rows, but the first pass counted {train_rows}; "
                             "was the file changed during training?")
        stats.rows_per_epoch = rows
        return total / rows, rows

    if train_rows < 1:
        raise ValueError("no training rows were read from the data")
    return trainer._fit_loop(run_epoch, validation, callbacks, verbose)
