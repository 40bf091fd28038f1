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


def fit_source(trainer, source, prep, buffer_rows=262_144, val_split=0.0, seed=0, validation=None,
               callbacks=None, verbose=None, stats=None):
    """Train `trainer` for its `epochs` on `source` (columns mapped by the fitted `prep`)."""
    batch = trainer.batch_size
    buffer_rows = max(batch, int(buffer_rows) // batch * batch)
    dtype = trainer.params.dtype
    Xbuf = np.empty((buffer_rows, prep.n_inputs), dtype=dtype)
    Ybuf = np.empty((buffer_rows, 1), dtype=dtype)
    no_weights = np.empty(0, dtype=dtype)
    columns = prep.features + [prep.target]
    stats = stats if stats is not None else StreamStats()

    def run_epoch(hyper):
        order = None
        if source.shuffleable and trainer.shuffle and source.n_chunks:
            order = trainer._shuffle_rng.permutation(source.n_chunks)
        filled = 0
        total, rows = 0.0, 0

        def train_buffer(n):
            nonlocal total, rows
            stats.max_buffer_rows = max(stats.max_buffer_rows, n)
            perm = trainer._shuffle_rng.permutation(n) if trainer.shuffle else np.arange(n)
            loss = trainer._train_rows(Xbuf[:n], Ybuf[:n], no_weights, perm, hyper)
            total += loss * n
            rows += n
            return np.isfinite(loss)

        for start, chunk in source.chunks(columns, order):
            n = len(chunk[prep.target])
            stats.max_chunk_rows = max(stats.max_chunk_rows, n)
            keep = ~holdout_mask(seed, np.arange(start, start + n), val_split)
            X, y = prep.transform({c: v[keep] for c, v in chunk.items()}, start)
            del chunk
            pos = 0
            while pos < len(X):
                take = min(buffer_rows - filled, len(X) - pos)
                Xbuf[filled:filled + take] = X[pos:pos + take]
                Ybuf[filled:filled + take, 0] = y[pos:pos + take]
                filled += take
                pos += take
                if filled == buffer_rows:
                    if not train_buffer(filled):
                        return float("nan"), rows
                    filled = 0
        if filled and not train_buffer(filled):
            return float("nan"), rows
        if rows == 0:
            raise ValueError("no training rows were read from the data")
        stats.rows_per_epoch = rows
        return total / rows, rows

    return trainer._fit_loop(run_epoch, validation, callbacks, verbose)
